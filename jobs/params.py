"""Job parameters: `--set KEY=VALUE` parsing and validation, and the job's argv.

Values are validated before anything is provisioned. They reach the job as literal argv
elements: nothing here or on the VM passes them through a shell.
"""

from __future__ import annotations

import math
import re

from infra.errors import UsageError, unknown
from jobs.catalog import PATH_PLACEHOLDERS, Job, Param

_PLACEHOLDER = re.compile(r"\{([a-z_][a-z0-9_]*)\}")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _convert(job: Job, p: Param, text: str):
    where = f"--set {p.name}={text}"
    if "\x00" in text:
        raise UsageError(f"{where}: NUL bytes are not allowed")
    if p.type == "str":
        return text
    if p.type == "choice":
        if text not in p.choices:
            raise UsageError(f"{where}: not one of {', '.join(map(str, p.choices))}")
        return text
    if p.type == "bool":
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise UsageError(f"{where}: expected true or false")
    if p.type == "int":
        if p.default is None and text.lower() in ("none", "null", ""):
            return None
        if not re.fullmatch(r"[+-]?[0-9]+", text.strip()):
            raise UsageError(f"{where}: expected a whole number")
        value = int(text)
    else:  # float
        try:
            value = float(text)
        except ValueError:
            raise UsageError(f"{where}: expected a number") from None
        if not math.isfinite(value):
            raise UsageError(f"{where}: expected a finite number")
    if p.min is not None and value < p.min:
        raise UsageError(f"{where}: must be at least {p.min}")
    if p.max is not None and value > p.max:
        raise UsageError(f"{where}: must be at most {p.max}")
    return value


def resolve(job: Job, overrides) -> dict:
    """Defaults updated by `KEY=VALUE` strings; unknown keys and bad values are exit 2."""
    values = job.defaults()
    for item in overrides or ():
        if "=" not in item:
            raise UsageError(f"--set {item!r}: expected KEY=VALUE")
        key, text = item.split("=", 1)
        key = key.strip().replace("-", "_")
        if key not in job.params:
            if not job.params:
                raise UsageError(f"job {job.name!r} has no parameters (got --set {key}=...)")
            raise unknown(f"parameter of {job.name}", key, job.params)
        values[key] = _convert(job, job.params[key], text)
    return values


def _text(value) -> str:
    if isinstance(value, float) and value.is_integer():
        return repr(value)
    return str(value)


def argv(job: Job, values: dict, paths: dict) -> list[str]:
    """The job's command as an argv list: placeholders filled once, flags appended."""
    known = {name: _text(v) for name, v in values.items() if v is not None}
    known.update({k: str(paths[k]) for k in PATH_PLACEHOLDERS if k in paths})

    def fill(element: str) -> str:
        def sub(m):
            name = m.group(1)
            if name not in known:
                raise UsageError(f"job {job.name}: command uses {{{name}}}, which has no value")
            return known[name]

        return _PLACEHOLDER.sub(sub, element)  # one pass: values are never re-expanded

    out = [fill(a) for a in job.command]
    for name, p in job.params.items():
        value = values.get(name)
        if not p.flag or value is None:
            continue
        if p.type == "bool":
            if value:
                out.append(p.flag)
            continue
        out += [p.flag, _text(value)]
    return out
