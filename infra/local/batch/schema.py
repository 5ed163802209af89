"""Cloud Batch v1's official schema, from the discovery document google-api-python-client ships
(`batch.v1.json`, loaded once): which fields a request may hold, of which JSON type, with which
enum values; a request body comes out in proto3's canonical JSON (camelCase names, enums by
name, int64 as strings, durations as "<seconds>s").

    job = parse(body, "Job", "job")        # raises BatchError 400 as Google's front end does
    encode(resource, "Job", enums_as_int)  # enums as numbers for `$alt=json;enum-encoding=int`
    violations(resource, "Job")            # [] when a response conforms (for tests)

Enum numbers are the enum's position in the document's list; tests/local/test_batch.py checks
they are the proto numbers of the installed google-cloud-batch.
"""

from __future__ import annotations

import functools
import json
import re

from infra.local import http

from infra.local.batch.errors import invalid_payload

_INT_RE = re.compile(r"-?[0-9]+")
_DURATION_RE = re.compile(r"(-?)([0-9]+)(?:\.([0-9]{0,9}))?s")
MAX_DURATION_S = 315_576_000_000


@functools.lru_cache(maxsize=1)
def document() -> dict:
    return http.discovery("batch")


def schemas() -> dict:
    return document()["schemas"]


_snake = http.snake


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


def _resolve(spec: dict) -> tuple[dict, str | None]:
    name = None
    while "$ref" in spec:
        name = spec["$ref"]
        spec = schemas()[name]
    return spec, name


def _type_name(spec: dict) -> str:
    t, fmt = spec.get("type"), spec.get("format")
    if t == "string" and fmt in ("int64", "uint64"):
        return "TYPE_INT64" if fmt == "int64" else "TYPE_UINT64"
    if fmt == "google-duration":
        return "type.googleapis.com/google.protobuf.Duration"
    if fmt == "google-datetime":
        return "type.googleapis.com/google.protobuf.Timestamp"
    return {"string": "TYPE_STRING", "integer": "TYPE_INT32", "boolean": "TYPE_BOOL",
            "number": "TYPE_DOUBLE"}.get(t, "TYPE_MESSAGE")


def _shown(value) -> str:
    return f'"{value}"' if isinstance(value, str) else json.dumps(value)[:80]


def _bad_value(path: str, spec: dict, value, enum_of: str | None = None):
    kind = f"type.googleapis.com/google.cloud.batch.v1.{enum_of}" if enum_of else _type_name(spec)
    return invalid_payload(f"Invalid value at '{path}' ({kind}), {_shown(value)}", path)


def duration_seconds(text: str) -> float:
    m = _DURATION_RE.fullmatch(text)
    if not m:
        raise ValueError(text)
    value = int(m.group(2)) + (int((m.group(3) or "0").ljust(9, "0")) / 1e9)
    return -value if m.group(1) else value


def render_duration(seconds: float) -> str:
    """proto3 JSON of a Duration: "12s", "1.500s" (0, 3, 6 or 9 fractional digits)."""
    whole = int(seconds)
    nanos = round((seconds - whole) * 1e9)
    if nanos >= 1_000_000_000:
        whole, nanos = whole + 1, nanos - 1_000_000_000
    if not nanos:
        return f"{whole}s"
    frac = f"{nanos:09d}"
    for digits in (3, 6, 9):
        if frac[digits:] == "0" * (9 - digits):
            return f"{whole}.{frac[:digits]}s"
    return f"{whole}.{frac}s"


def _parse(value, spec: dict, path: str, owner: str):
    spec, ref = _resolve(spec) if "$ref" in spec else (spec, None)
    owner = ref or owner
    t = spec.get("type")
    if t == "object" or "properties" in spec:
        if not isinstance(value, dict):
            raise invalid_payload(f"Invalid JSON payload received. Expected an object for '{path}', "
                                  f"got {json.dumps(value)[:80]}.", path)
        props = spec.get("properties")
        extra = spec.get("additionalProperties")
        out = {}
        for key, item in value.items():
            if props is not None:
                name = key if key in props else _camel(key) if _camel(key) in props else None
                if name is None:
                    raise invalid_payload(f"Invalid JSON payload received. Unknown name \"{key}\" at '{path}': "
                                          "Cannot find field.", path)
                if item is None:
                    continue
                sub = props[name]
                where = f"{path}.{_snake(name)}"
                if "enum" in sub:
                    out[name] = _enum(item, sub, where, f"{owner}.{name[:1].upper()}{name[1:]}")
                else:
                    out[name] = _parse(item, sub, where, owner)
            elif extra is not None:
                if item is None:
                    continue
                out[key] = _parse(item, extra, f"{path}[{key}]", owner)
            else:
                raise invalid_payload(f"Invalid JSON payload received. Unknown name \"{key}\" at '{path}': "
                                      "Cannot find field.", path)
        return out
    if t == "array":
        if not isinstance(value, list):
            raise invalid_payload(f"Invalid JSON payload received. Expected a list for '{path}', "
                                  f"got {json.dumps(value)[:80]}.", path)
        items = spec.get("items", {})
        if "enum" in items:
            return [_enum(v, items, f"{path}[{i}]", owner) for i, v in enumerate(value)]
        return [_parse(v, items, f"{path}[{i}]", owner) for i, v in enumerate(value)]
    return _scalar(value, spec, path)


def _enum(value, spec: dict, path: str, enum_of: str) -> str:
    names = spec["enum"]
    if isinstance(value, bool):
        raise _bad_value(path, spec, value, enum_of)
    if isinstance(value, int):
        if 0 <= value < len(names):
            return names[value]
        raise _bad_value(path, spec, value, enum_of)
    if isinstance(value, str) and value in names:
        return value
    raise _bad_value(path, spec, value, enum_of)


def _scalar(value, spec: dict, path: str):
    t, fmt = spec.get("type"), spec.get("format")
    if t == "string":
        if fmt in ("int64", "uint64"):
            if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, str) and _INT_RE.fullmatch(value))):
                raise _bad_value(path, spec, value)
            number = int(value)
            if fmt == "uint64" and number < 0:
                raise _bad_value(path, spec, value)
            return str(number)
        if not isinstance(value, str):
            raise _bad_value(path, spec, value)
        if fmt == "google-duration":
            try:
                seconds = duration_seconds(value)
            except ValueError:
                raise _bad_value(path, spec, value) from None
            if abs(seconds) > MAX_DURATION_S:
                raise _bad_value(path, spec, value)
            return render_duration(seconds) if seconds >= 0 else value
        return value
    if t == "integer":
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, str) and _INT_RE.fullmatch(value))):
            raise _bad_value(path, spec, value)
        number = int(value)
        if not -2**31 <= number < 2**31:
            raise _bad_value(path, spec, value)
        return number
    if t == "number":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _bad_value(path, spec, value)
        return value
    if t == "boolean":
        if not isinstance(value, bool):
            raise _bad_value(path, spec, value)
        return value
    return value


def parse(body, schema: str, where: str):
    """BODY (decoded JSON) as a SCHEMA in canonical JSON; BatchError 400 where Google refuses it."""
    return _parse(body if body is not None else {}, {"$ref": schema}, where, schema)


def encode(value, schema: str, enums_as_int: bool):
    """VALUE (canonical JSON of SCHEMA) with enums as numbers when ENUMS_AS_INT."""
    if not enums_as_int:
        return value

    def walk(v, spec):
        spec, _ = _resolve(spec)
        if isinstance(v, dict):
            props, extra = spec.get("properties"), spec.get("additionalProperties")
            out = {}
            for k, item in v.items():
                sub = props.get(k) if props is not None else extra
                out[k] = item if sub is None else walk_field(item, sub)
            return out
        return v

    def walk_field(v, sub):
        if "enum" in sub and isinstance(v, str) and v in sub["enum"]:
            return sub["enum"].index(v)
        if sub.get("type") == "array" and isinstance(v, list):
            items = sub.get("items", {})
            return [walk_field(x, items) for x in v]
        if "$ref" in sub or sub.get("type") == "object":
            return walk(v, sub)
        return v

    return walk(value, {"$ref": schema})


def violations(value, schema: str, path: str = "") -> list[str]:
    """Where VALUE (a response) deviates from SCHEMA: unknown keys, wrong JSON types, bad enums."""
    out: list[str] = []

    def walk(v, spec, p):
        spec, _ = _resolve(spec)
        t = spec.get("type")
        if t == "object" or "properties" in spec:
            if not isinstance(v, dict):
                return out.append(f"{p}: expected an object, got {type(v).__name__}")
            props, extra = spec.get("properties"), spec.get("additionalProperties")
            for k, item in v.items():
                if props is not None and k in props:
                    walk(item, props[k], f"{p}.{k}")
                elif extra is not None:
                    walk(item, extra, f"{p}[{k}]")
                elif k == "@type":
                    continue
                else:
                    out.append(f"{p}.{k}: not a field of the schema")
            return
        if t == "array":
            if not isinstance(v, list):
                return out.append(f"{p}: expected an array, got {type(v).__name__}")
            for i, item in enumerate(v):
                walk(item, spec.get("items", {}), f"{p}[{i}]")
            return
        want = {"string": str, "integer": int, "boolean": bool, "number": (int, float)}.get(t)
        if want is not None and (not isinstance(v, want) or (t in ("integer", "number") and isinstance(v, bool))):
            out.append(f"{p}: expected JSON {t}, got {type(v).__name__} {v!r}")
        elif t == "string" and "enum" in spec and v not in spec["enum"]:
            out.append(f"{p}: {v!r} is not one of the enum values")
        elif t == "string" and spec.get("format") in ("int64", "uint64") and not _INT_RE.fullmatch(v):
            out.append(f"{p}: {v!r} is not an int64 string")

    walk(value, {"$ref": schema}, path or schema)
    return out
