"""A usable subset of Compute Engine's list `filter` syntax.

Supported: terms joined by spaces or `AND`, each optionally in parentheses:
`key = value`, `key != value`, `key:value` (equality; `key:*` = has the key), and the old
regular-expression form `key eq RE` / `key ne RE` (one term only, as on GCE).
Keys: `name`, `status`, `zone`, `machineType`, `labels.KEY`, `scheduling.provisioningModel`, ...
(dotted paths into the resource). Values may be quoted. `OR` is refused with a 400.
"""

from __future__ import annotations

import re

from infra.local.compute.exceptions import GceError

_TERM = re.compile(r'\(?\s*([A-Za-z][\w.\-]*)\s*(!=|=|:)\s*("(?:[^"\\]|\\.)*"|[^\s()]+)\s*\)?')
_REGEX = re.compile(r"^\s*([A-Za-z][\w.\-]*)\s+(eq|ne)\s+(.+?)\s*$")


def _invalid(expr: str) -> GceError:
    return GceError(400, f"Invalid list filter expression '{expr}'.", "invalid")


def _lookup(resource: dict, key: str):
    value = resource
    parts = key.split(".")
    for i, part in enumerate(parts):
        if not isinstance(value, dict):
            return None
        if part == "labels" and i + 1 < len(parts):  # label keys may contain dots? no; but '-' yes
            return (value.get("labels") or {}).get(".".join(parts[i + 1:]))
        value = value.get(part)
    return value


def _unquote(v: str) -> str:
    if len(v) >= 2 and v[0] == v[-1] == '"':
        return v[1:-1].replace('\\"', '"')
    return v


def _text(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value)
    return text.rsplit("/", 1)[-1] if text.startswith(("http://", "https://")) else text


def compile_filter(expr: str | None):
    """-> predicate(resource) -> bool; raises GceError(400) on syntax it does not support."""
    if not expr or not expr.strip():
        return lambda r: True
    m = _REGEX.match(expr)
    if m:
        key, op, pattern = m.group(1), m.group(2), _unquote(m.group(3).strip())
        try:
            rx = re.compile(pattern)
        except re.error:
            raise _invalid(expr) from None

        def regex_pred(r, key=key, op=op, rx=rx):
            hit = _text(_lookup(r, key)) is not None and rx.fullmatch(_text(_lookup(r, key))) is not None
            return hit if op == "eq" else not hit

        return regex_pred
    terms = []
    pos = 0
    rest = expr.strip()
    while pos < len(rest):
        while pos < len(rest) and rest[pos].isspace():
            pos += 1
        if rest.startswith("AND", pos) and (pos + 3 == len(rest) or rest[pos + 3].isspace()):
            pos += 3
            continue
        if rest.startswith("OR", pos) and (pos + 2 == len(rest) or rest[pos + 2].isspace()):
            raise _invalid(expr)
        if pos >= len(rest):
            break
        m = _TERM.match(rest, pos)
        if not m:
            raise _invalid(expr)
        terms.append((m.group(1), m.group(2), _unquote(m.group(3))))
        pos = m.end()
    if not terms:
        raise _invalid(expr)

    def pred(r):
        for key, op, want in terms:
            got = _text(_lookup(r, key))
            if op == ":" and want == "*":
                ok = got is not None
            elif op == "!=":
                ok = got != want
            else:
                ok = got == want
            if not ok:
                return False
        return True

    return pred
