"""The `filter` of jobs.list and tasks.list (Google's AIP-160 list filters, the part Batch uses)
and the `orderBy` of jobs.list.

    status.state="RUNNING" AND labels.env=prod       jobs
    name:"projects/p/locations/l/jobs/sweep-*"        jobs (`*`: any text)
    State=RUNNING                                     tasks (the reference's own example)

Comparisons: =, !=, :, <, <=, >, >= on a dotted field (camelCase or snake_case); AND (or a
space), OR, NOT / -, parentheses. A filter it cannot read is 400 INVALID_ARGUMENT.
"""

from __future__ import annotations

import fnmatch
import re

from infra.local.batch.errors import invalid_argument

_TOKEN = re.compile(r'\s*(?:(\()|(\))|("(?:[^"\\]|\\.)*")|(<=|>=|!=|=|:|<|>)|([^\s()=!<>:"]+))')
ORDER_BY = {"name": "name", "create_time": "createTime", "createTime": "createTime"}


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


def _tokens(text: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    text = text.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise ValueError(f"unexpected character at {pos}")
        pos = m.end()
        lp, rp, quoted, op, word = m.groups()
        if lp:
            out.append(("(", lp))
        elif rp:
            out.append((")", rp))
        elif quoted is not None:
            out.append(("value", re.sub(r'\\(.)', r'\1', quoted[1:-1])))
        elif op:
            out.append(("op", op))
        elif word in ("AND", "OR", "NOT"):
            out.append((word, word))
        else:
            out.append(("value", word))
    return out


def _lookup(view: dict, path: str, kind: str):
    if kind == "tasks" and path.lower() == "state":
        path = "status.state"
    node = view
    parts = path.split(".")
    for i, part in enumerate(parts):
        if not isinstance(node, dict):
            return None
        if i and parts[i - 1] == "labels":
            node = node.get(part)
        else:
            node = node.get(part, node.get(_camel(part)))
        if node is None:
            return None
    return node


def _compare(actual, op: str, wanted: str) -> bool:
    if op == ":" and isinstance(actual, (dict, list)):
        return wanted == "*" or wanted in actual
    if actual is None or isinstance(actual, (dict, list)):
        return op == "!="
    value = str(actual).lower() if isinstance(actual, bool) else str(actual)
    if op in ("=", ":"):
        return fnmatch.fnmatchcase(value, wanted) if "*" in wanted else value == wanted
    if op == "!=":
        return value != wanted
    try:
        a, b = float(value), float(wanted)
    except ValueError:
        a, b = value, wanted
    return {"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[op]


class _Parser:
    def __init__(self, tokens, kind):
        self.tokens, self.pos, self.kind = tokens, 0, kind

    def peek(self):
        return self.tokens[self.pos][0] if self.pos < len(self.tokens) else None

    def take(self, kind=None):
        if self.pos >= len(self.tokens) or (kind and self.tokens[self.pos][0] != kind):
            raise ValueError(f"expected {kind or 'more'}")
        tok = self.tokens[self.pos]
        self.pos += 1
        return tok

    def expr(self):
        terms = [self.conj()]
        while self.peek() == "OR":
            self.take()
            terms.append(self.conj())
        return lambda v: any(t(v) for t in terms)

    def conj(self):
        terms = [self.unary()]
        while self.peek() not in (None, ")", "OR"):
            if self.peek() == "AND":
                self.take()
            terms.append(self.unary())
        return lambda v: all(t(v) for t in terms)

    def unary(self):
        kind = self.peek()
        if kind == "NOT":
            self.take()
            inner = self.unary()
            return lambda v: not inner(v)
        if kind == "(":
            self.take()
            inner = self.expr()
            self.take(")")
            return inner
        _, name = self.take("value")
        negate = name.startswith("-") and len(name) > 1
        name = name[1:] if negate else name
        _, op = self.take("op")
        _, wanted = self.take("value")
        k = self.kind
        test = lambda v: _compare(_lookup(v, name, k), op, wanted)
        return (lambda v: not test(v)) if negate else test


def compile_filter(text: str | None, kind: str):
    """A predicate on a resource view (a Job's or a Task's JSON); BatchError 400 if unreadable."""
    if not text or not text.strip():
        return lambda v: True
    try:
        parser = _Parser(_tokens(text), kind)
        pred = parser.expr()
        if parser.pos != len(parser.tokens):
            raise ValueError("unexpected text after the expression")
    except ValueError as e:
        raise invalid_argument(f"Invalid filter \"{text}\": {e}.", "filter") from None
    return pred


def sort_key(order_by: str | None):
    """orderBy -> (key function or None, reverse)."""
    if not order_by or not order_by.strip():
        return None, False
    parts = order_by.split()
    if len(parts) > 2 or parts[0] not in ORDER_BY or (len(parts) == 2 and parts[1].lower() not in ("asc", "desc")):
        raise invalid_argument(f"Invalid order_by \"{order_by}\": supported are \"name\", \"name desc\", "
                               "\"create_time\", and \"create_time desc\".", "order_by")
    field = ORDER_BY[parts[0]]
    return (lambda v: v.get(field) or ""), len(parts) == 2 and parts[1].lower() == "desc"
