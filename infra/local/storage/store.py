"""State and rules of the local Cloud Storage (no HTTP here; `wire.py` maps the APIs onto this).

On disk, under the data directory: `buckets/<bucket>/bucket.json`, and per object
`buckets/<bucket>/o/<sha256(name)[:2]>/<sha256(name)>.{json,bin}` (its resource, its content).
A write replaces one object's two files (content first, then the resource, each atomically):
its cost does not depend on how many objects exist. The sorted name index of each bucket is
kept in memory, rebuilt from the resource files at start.

Rules as GCS (https://cloud.google.com/storage/docs/json_api/v1): generations are microsecond
timestamps, unique; no object versioning (a replaced or deleted generation is gone: 404);
preconditions ifGenerationMatch / ifGenerationNotMatch / ifMetagenerationMatch /
ifMetagenerationNotMatch (0 = the object does not exist); list pagination over objects and
prefixes together, startOffset (inclusive) / endOffset (exclusive).
"""

from __future__ import annotations

import base64
import bisect
import hashlib
import json
import os
import re
import secrets
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import google_crc32c

BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$")


class StorageError(Exception):
    def __init__(self, code: int, reason: str, message: str):
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message


def no_bucket() -> StorageError:
    return StorageError(404, "notFound", "The specified bucket does not exist.")


def no_object(bucket: str, name: str) -> StorageError:
    return StorageError(404, "notFound", f"No such object: {bucket}/{name}")


def precondition_failed() -> StorageError:
    return StorageError(412, "conditionNotMet", "At least one of the pre-conditions you specified did not hold.")


def _rfc3339(us: int) -> str:
    return datetime.fromtimestamp(us / 1e6, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _digest(name: str) -> str:
    return hashlib.sha256(name.encode("utf-8")).hexdigest()


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


@dataclass
class Conditions:
    generation_match: int | None = None
    generation_not_match: int | None = None
    metageneration_match: int | None = None
    metageneration_not_match: int | None = None

    def check(self, current: dict | None) -> None:
        gen = int(current["generation"]) if current else 0
        meta = int(current["metageneration"]) if current else 0
        if self.generation_match is not None and self.generation_match != gen:
            raise precondition_failed()
        if self.generation_not_match is not None and self.generation_not_match == gen:
            raise StorageError(304, "notModified", "Not Modified")
        if self.metageneration_match is not None and self.metageneration_match != meta:
            raise precondition_failed()
        if self.metageneration_not_match is not None and self.metageneration_not_match == meta:
            raise StorageError(304, "notModified", "Not Modified")


_WRITABLE = ("contentType", "contentEncoding", "contentDisposition", "contentLanguage", "cacheControl",
             "metadata", "customTime", "storageClass")


class Store:
    """Buckets and objects. Thread-safe: one lock around index and resource changes; content is
    written to a temporary file before the lock is taken."""

    def __init__(self, root: Path, location: str = "US-CENTRAL1"):
        self.root = Path(root)
        self.location = location
        self.lock = threading.RLock()
        self._buckets: dict[str, dict] = {}
        self._objects: dict[str, dict[str, dict]] = {}  # bucket -> name -> resource
        self._names: dict[str, list[str]] = {}  # bucket -> sorted names
        self._last_gen = 0
        self._uploads_dir = self.root / "uploads"
        self._load()

    # -- persistence -------------------------------------------------------------------------
    def _bdir(self, bucket: str) -> Path:
        return self.root / "buckets" / bucket

    def _opath(self, bucket: str, name: str) -> Path:
        d = _digest(name)
        return self._bdir(bucket) / "o" / d[:2] / d

    def _load(self) -> None:
        (self.root / "buckets").mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self._uploads_dir, ignore_errors=True)
        self._uploads_dir.mkdir(parents=True, exist_ok=True)
        for bfile in (self.root / "buckets").glob("*/bucket.json"):
            b = json.loads(bfile.read_text())
            self._buckets[b["name"]] = b
            objs = {}
            for ofile in (bfile.parent / "o").glob("*/*.json"):
                try:
                    res = json.loads(ofile.read_text())
                except ValueError:
                    continue
                if ofile.with_suffix(".bin").exists():
                    objs[res["name"]] = res
                    self._last_gen = max(self._last_gen, int(res["generation"]))
            self._objects[b["name"]] = objs
            self._names[b["name"]] = sorted(objs)

    def _next_generation(self) -> int:
        self._last_gen = max(int(time.time() * 1e6), self._last_gen + 1)
        return self._last_gen

    def new_upload_file(self) -> Path:
        fd, path = tempfile.mkstemp(dir=self._uploads_dir)
        os.close(fd)
        return Path(path)

    # -- buckets -----------------------------------------------------------------------------
    def create_bucket(self, name: str, project: str, body: dict) -> dict:
        if not name or not BUCKET_NAME.match(name) or ".." in name:
            raise StorageError(400, "invalid", "Invalid bucket name: '%s'" % name)
        with self.lock:
            if name in self._buckets:
                raise StorageError(409, "conflict", "Your previous request to create the named bucket succeeded and you already own it.")
            now = self._next_generation()
            b = {"kind": "storage#bucket", "id": name, "name": name, "projectNumber": "0",
                 "metageneration": "1", "location": (body.get("location") or self.location).upper(),
                 "locationType": "region", "storageClass": body.get("storageClass") or "STANDARD",
                 "timeCreated": _rfc3339(now), "updated": _rfc3339(now), "etag": "CAE=",
                 "labels": body.get("labels") or {}, "versioning": {"enabled": False}}
            self._bdir(name).mkdir(parents=True, exist_ok=True)
            _write_atomic(self._bdir(name) / "bucket.json", json.dumps(b).encode())
            self._buckets[name], self._objects[name], self._names[name] = b, {}, []
            return b

    def get_bucket(self, name: str) -> dict:
        b = self._buckets.get(name)
        if b is None:
            raise no_bucket()
        return b

    def list_buckets(self, prefix: str = "") -> list[dict]:
        return [b for n, b in sorted(self._buckets.items()) if n.startswith(prefix)]

    def patch_bucket(self, name: str, body: dict) -> dict:
        with self.lock:
            b = dict(self.get_bucket(name))
            for k in ("labels", "versioning", "lifecycle", "cors", "storageClass", "retentionPolicy"):
                if k in body:
                    b[k] = body[k]
            b["metageneration"] = str(int(b["metageneration"]) + 1)
            b["updated"] = _rfc3339(self._next_generation())
            _write_atomic(self._bdir(name) / "bucket.json", json.dumps(b).encode())
            self._buckets[name] = b
            return b

    def delete_bucket(self, name: str) -> None:
        with self.lock:
            self.get_bucket(name)
            if self._names[name]:
                raise StorageError(409, "conflict", "The bucket you tried to delete is not empty.")
            shutil.rmtree(self._bdir(name), ignore_errors=True)
            del self._buckets[name], self._objects[name], self._names[name]

    # -- objects -----------------------------------------------------------------------------
    def get_object(self, bucket: str, name: str, generation: int | None = None,
                   conditions: Conditions | None = None) -> dict:
        self.get_bucket(bucket)
        res = self._objects[bucket].get(name)
        if conditions:
            conditions.check(res)
        if res is None or (generation is not None and int(res["generation"]) != generation):
            raise no_object(bucket, name)
        return res

    def content_path(self, bucket: str, name: str) -> Path:
        return self._opath(bucket, name).with_suffix(".bin")

    def open_content(self, res: dict):
        """The content of resource `res` (a file object), or 404 if it was replaced since."""
        try:
            f = open(self.content_path(res["bucket"], res["name"]), "rb")
        except FileNotFoundError:
            raise no_object(res["bucket"], res["name"]) from None
        return f

    def put_object(self, bucket: str, name: str, src: Path, meta: dict,
                   conditions: Conditions | None = None, component_count: int | None = None) -> dict:
        """Make the file `src` (moved, not copied) the content of object `name`."""
        if not name or len(name.encode("utf-8")) > 1024 or "\r" in name or "\n" in name:
            src.unlink(missing_ok=True)
            raise StorageError(400, "invalid", "The specified object name is not valid.")
        md5, crc = hashlib.md5(), google_crc32c.Checksum()
        size = 0
        with open(src, "rb") as f:
            while chunk := f.read(1 << 20):
                md5.update(chunk)
                crc.update(chunk)
                size += len(chunk)
        with self.lock:
            try:
                self.get_bucket(bucket)
                current = self._objects[bucket].get(name)
                if conditions:
                    conditions.check(current)
            except StorageError:
                src.unlink(missing_ok=True)
                raise
            gen = self._next_generation()
            res = {"kind": "storage#object", "id": f"{bucket}/{name}/{gen}", "name": name, "bucket": bucket,
                   "generation": str(gen), "metageneration": "1",
                   "contentType": meta.get("contentType") or "application/octet-stream",
                   "storageClass": "STANDARD", "size": str(size),
                   "md5Hash": base64.b64encode(md5.digest()).decode(),
                   "crc32c": base64.b64encode(crc.digest()).decode(),
                   "etag": base64.b64encode(gen.to_bytes(8, "big")).decode().rstrip("="),
                   "timeCreated": _rfc3339(gen), "updated": _rfc3339(gen)}
            for k in _WRITABLE:
                if meta.get(k) is not None and k != "contentType":
                    res[k] = meta[k]
            if component_count:
                res["componentCount"] = component_count
            path = self._opath(bucket, name)
            path.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, path.with_suffix(".bin"))
            _write_atomic(path.with_suffix(".json"), json.dumps(res).encode())
            if current is None:
                bisect.insort(self._names[bucket], name)
            self._objects[bucket][name] = res
            return res

    def patch_object(self, bucket: str, name: str, body: dict, conditions: Conditions | None = None,
                     replace: bool = False, generation: int | None = None) -> dict:
        with self.lock:
            res = dict(self.get_object(bucket, name, generation, conditions))
            for k in _WRITABLE:
                if k in body:
                    if k == "metadata" and not replace and body[k] is not None:
                        merged = {**res.get("metadata", {}), **body[k]}
                        res[k] = {mk: mv for mk, mv in merged.items() if mv is not None}
                    elif body[k] is None:
                        res.pop(k, None)
                    else:
                        res[k] = body[k]
                elif replace and k not in ("contentType", "storageClass"):
                    res.pop(k, None)
            res["metageneration"] = str(int(res["metageneration"]) + 1)
            res["updated"] = _rfc3339(self._next_generation())
            _write_atomic(self._opath(bucket, name).with_suffix(".json"), json.dumps(res).encode())
            self._objects[bucket][name] = res
            return res

    def delete_object(self, bucket: str, name: str, generation: int | None = None,
                      conditions: Conditions | None = None) -> None:
        with self.lock:
            self.get_object(bucket, name, generation, conditions)
            path = self._opath(bucket, name)
            path.with_suffix(".json").unlink(missing_ok=True)
            path.with_suffix(".bin").unlink(missing_ok=True)
            del self._objects[bucket][name]
            names = self._names[bucket]
            del names[bisect.bisect_left(names, name)]

    def copy_object(self, src_bucket: str, src_name: str, dst_bucket: str, dst_name: str, meta: dict | None,
                    src_generation: int | None = None, conditions: Conditions | None = None,
                    src_conditions: Conditions | None = None) -> dict:
        tmp = self.new_upload_file()
        with self.lock:
            src = self.get_object(src_bucket, src_name, src_generation, src_conditions)
            shutil.copyfile(self.content_path(src_bucket, src_name), tmp)
        merged = {k: src[k] for k in _WRITABLE if k in src}
        merged.update({k: v for k, v in (meta or {}).items() if k in _WRITABLE})
        return self.put_object(dst_bucket, dst_name, tmp, merged, conditions)

    def compose(self, bucket: str, name: str, sources: list[tuple[str, int | None]], meta: dict,
                conditions: Conditions | None = None) -> dict:
        if not 1 <= len(sources) <= 32:
            raise StorageError(400, "invalid", "The number of source components provided must be between 1 and 32.")
        tmp = self.new_upload_file()
        count = 0
        with self.lock, open(tmp, "wb") as out:
            for src_name, gen in sources:
                src = self.get_object(bucket, src_name, gen)
                count += int(src.get("componentCount", 1))
                with open(self.content_path(bucket, src_name), "rb") as f:
                    shutil.copyfileobj(f, out)
        return self.put_object(bucket, name, tmp, meta, conditions, component_count=count)

    def move_object(self, bucket: str, src_name: str, dst_name: str, conditions: Conditions | None = None,
                    src_conditions: Conditions | None = None) -> dict:
        with self.lock:
            src = self.get_object(bucket, src_name, None, src_conditions)
            res = self.copy_object(bucket, src_name, bucket, dst_name, None, conditions=conditions)
            self.delete_object(bucket, src_name, int(src["generation"]))
            return res

    def list_objects(self, bucket: str, prefix: str = "", delimiter: str = "", max_results: int = 1000,
                     page_token: str | None = None, start_offset: str = "", end_offset: str = "",
                     include_trailing_delimiter: bool = False, match_glob: str = "") -> tuple[list[dict], list[str], str | None]:
        """(objects, prefixes, next page token): at most `max_results` objects and prefixes together;
        `match_glob` (Cloud Storage's matchGlob: `*`, `**`, `?`, `[...]`, `{a,b}`) keeps the matching names."""
        self.get_bucket(bucket)
        glob = glob_regex(match_glob) if match_glob else None
        max_results = max(1, min(int(max_results or 1000), 1000))
        with self.lock:
            names, objs = self._names[bucket], self._objects[bucket]
            start = max(prefix, start_offset)
            if page_token:
                try:
                    start = max(start, base64.urlsafe_b64decode(page_token.encode()).decode())
                except (ValueError, UnicodeDecodeError):
                    raise StorageError(400, "invalid", "Invalid page token.") from None
            i = bisect.bisect_left(names, start)
            items, prefixes, last = [], [], None
            while i < len(names):
                n = names[i]
                if not n.startswith(prefix) or (end_offset and n >= end_offset):
                    break
                if glob is not None and not glob.fullmatch(n):
                    i += 1
                    continue
                if len(items) + len(prefixes) >= max_results:
                    return items, prefixes, base64.urlsafe_b64encode(n.encode()).decode()
                cut = n.find(delimiter, len(prefix)) if delimiter else -1
                if cut >= 0:
                    p = n[:cut + len(delimiter)]
                    prefixes.append(p)
                    if include_trailing_delimiter and n == p:
                        items.append(objs[n])
                    i = bisect.bisect_left(names, p + "\U0010ffff", i)
                    while i < len(names) and names[i].startswith(p):  # names beyond U+10FFFF sort
                        i += 1
                    continue
                items.append(objs[n])
                i += 1
            return items, prefixes, last

    def count(self) -> int:
        return sum(len(n) for n in self._names.values())


def glob_regex(pattern: str):
    """Cloud Storage's matchGlob as a compiled regex: `**` any characters, `*` and `?` within
    one path segment, `[abc]`/`[!abc]` a character class, `{a,b}` alternatives."""
    import re

    out, i, depth = [], 0, 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            end = pattern.find("]", i + 1)
            if end < 0:
                raise StorageError(400, "invalid", f"Invalid matchGlob: {pattern!r}")
            body = pattern[i + 1:end]
            out.append("[" + ("^" + re.escape(body[1:]) if body.startswith("!") else re.escape(body)) + "]")
            i = end + 1
            continue
        elif c == "{":
            depth += 1
            out.append("(?:")
        elif c == "}" and depth:
            depth -= 1
            out.append(")")
        elif c == "," and depth:
            out.append("|")
        else:
            out.append(re.escape(c))
        i += 1
    if depth:
        raise StorageError(400, "invalid", f"Invalid matchGlob: {pattern!r}")
    return re.compile("".join(out), re.S)
