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
        if p.pattern and not re.fullmatch(p.pattern, text):
            raise UsageError(f"{where}: not of the form {p.help or p.pattern}")
        return text
    if p.type == "epoch-list":
        spec = text.strip().lower()
        if not re.fullmatch(r"none|all|(last|\d+)(,(last|\d+))*", spec.replace(" ", "")):
            raise UsageError(f"{where}: expected none, all, last, or epochs from 0 like 0,last or 0,4,9")
        return spec.replace(" ", "")
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
    given = set()
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
        given.add(key)
    _check_together(job, values, given)
    return values


def _epoch_list(spec: str, epochs: int) -> list[int]:
    if spec == "none":
        return []
    if spec == "all":
        return list(range(epochs))
    return sorted({epochs - 1 if part == "last" else int(part) for part in spec.split(",")})


def _check_together(job: Job, values: dict, given: set) -> None:
    """Rules between parameters: `requires`, and epoch lists within the job's epochs."""
    for name, p in job.params.items():
        value = values.get(name)
        if value is None:
            continue
        for other, wanted in p.requires:
            if values.get(other) != wanted:
                raise UsageError(f"--set {name}={_text(value)}: only with {other}={wanted} "
                                 f"(here {other}={values.get(other)})")
        if p.type == "epoch-list":
            epochs = values.get("epochs")
            if not isinstance(epochs, int):
                continue
            chosen = _epoch_list(value, epochs)
            late = [e for e in chosen if e >= epochs]
            if late:
                raise UsageError(f"--set {name}={value}: epoch {late[0]} is not in 0..{epochs - 1} "
                                 f"(epochs={epochs}; epochs count from 0)")
            if len(chosen) < p.min_items:
                raise UsageError(f"--set {name}={value}: {job.name} needs at least {p.min_items} epoch(s) here",
                                 hint="e.g. 0,last")


def _text(value) -> str:
    if isinstance(value, float) and value.is_integer():
        return repr(value)
    return str(value)


def argv(job: Job, values: dict, paths: dict) -> list[str]:
    """The job's command as an argv list: placeholders filled once, flags appended. A job with
    a `shell:` command is `bash -c SCRIPT NAME`: in its script every value is filled in
    shlex-quoted, so a value is still never shell syntax (its parameters have no flags)."""
    import shlex

    known = {name: _text(v) for name, v in values.items() if v is not None}
    known.update({k: str(paths[k]) for k in PATH_PLACEHOLDERS if k in paths})

    def fill(element: str, quote=lambda t: t) -> str:
        def sub(m):
            name = m.group(1)
            if name not in known:
                raise UsageError(f"job {job.name}: command uses {{{name}}}, which has no value")
            return quote(known[name])

        return _PLACEHOLDER.sub(sub, element)  # one pass: values are never re-expanded

    flags = []
    for name, p in job.params.items():
        value = values.get(name)
        if not p.flag or value is None:
            continue
        if p.type == "bool":
            if value:
                flags.append(p.flag)
            continue
        flags += [p.flag, _text(value)]
    if getattr(job, "shell", False):
        script = fill(job.command[2], shlex.quote)
        return [job.command[0], job.command[1], script, *job.command[3:]]
    return [fill(a) for a in job.command] + flags
