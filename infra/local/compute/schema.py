"""Compute Engine v1's official schema, from the discovery document google-api-python-client
ships (loaded once, on first use): which fields a request body may hold, of which JSON type,
with which enum values; and `violations()` to check a response conforms.

    check_body(body, "Instance")          # raises GceError 400 as GCE does for a bad payload
    violations(resource, "Instance")      # [] when every key is a known field of the right type
"""

from __future__ import annotations

import functools
import json
import re

from infra.local import http

from infra.local.compute import exceptions as exc

_INT_RE = re.compile(r"-?[0-9]+")


@functools.lru_cache(maxsize=1)
def document() -> dict:
    return http.discovery("compute")


def schemas() -> dict:
    return document()["schemas"]


_snake = http.snake


def _resolve(spec: dict) -> dict:
    while "$ref" in spec:
        spec = schemas()[spec["$ref"]]
    return spec


def _type_name(spec: dict) -> str:
    t = spec.get("type")
    if t == "string" and spec.get("format") in ("int64", "uint64"):
        return "TYPE_INT64" if spec["format"] == "int64" else "TYPE_UINT64"
    return {"string": "TYPE_STRING", "integer": "TYPE_INT32", "boolean": "TYPE_BOOL",
            "number": "TYPE_DOUBLE"}.get(t, "TYPE_MESSAGE")


def _bad_value(path: str, spec: dict, value, enum_of: str | None = None) -> exc.GceError:
    kind = f"type.googleapis.com/compute.{enum_of}" if enum_of else _type_name(spec)
    shown = json.dumps(value) if not isinstance(value, str) else f'"{value}"'
    return exc.invalid_payload(f"Invalid value at '{path}' ({kind}), {shown}", path)


def _check(value, spec: dict, path: str, owner: str) -> None:
    spec = _resolve(spec) if "$ref" in spec else spec
    t = spec.get("type")
    if t == "object" or "properties" in spec:
        if not isinstance(value, dict):
            raise exc.invalid_payload(
                f"Invalid JSON payload received. Expected an object for '{path}', got {json.dumps(value)[:80]}.", path)
        props = spec.get("properties")
        extra = spec.get("additionalProperties")
        for key, item in value.items():
            if props is not None and key in props:
                sub = props[key]
                _check(item, sub, f"{path}.{_snake(key)}", f"{owner}.{key[:1].upper()}{key[1:]}")
            elif extra is not None:
                _check(item, extra, f"{path}[{key}]", owner)
            else:
                raise exc.invalid_payload(
                    f"Invalid JSON payload received. Unknown name \"{key}\" at '{path}': Cannot find field.", path)
        return
    if t == "array":
        if not isinstance(value, list):
            raise exc.invalid_payload(
                f"Invalid JSON payload received. Expected a list for '{path}', got {json.dumps(value)[:80]}.", path)
        for i, item in enumerate(value):
            _check(item, spec.get("items", {}), f"{path}[{i}]", owner)
        return
    if value is None:
        return
    if t == "string":
        if spec.get("format") in ("int64", "uint64"):
            if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, str) and _INT_RE.fullmatch(value))):
                raise _bad_value(path, spec, value)
        elif not isinstance(value, str):
            raise _bad_value(path, spec, value)
        if "enum" in spec and value not in spec["enum"]:
            raise _bad_value(path, spec, value, enum_of=owner)
    elif t == "integer":
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, str) and _INT_RE.fullmatch(value))):
            raise _bad_value(path, spec, value)
    elif t == "number":
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise _bad_value(path, spec, value)
    elif t == "boolean":
        if not isinstance(value, bool):
            raise _bad_value(path, spec, value)


def check_body(body, schema: str, where: str = "resource") -> None:
    """Raise GCE's 400 (Invalid JSON payload) when BODY is not a valid SCHEMA."""
    _check(body if body is not None else {}, schemas()[schema], where, schema)


def violations(value, schema: str, path: str = "") -> list[str]:
    """Where VALUE (a response) deviates from SCHEMA: unknown keys and wrong JSON types."""
    out: list[str] = []

    def walk(v, spec, p):
        spec = _resolve(spec)
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

    walk(value, schemas()[schema], path or schema)
    return out
