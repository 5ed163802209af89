"""The HTTP wire format of the local Cloud Storage: the JSON API (`/storage/v1`, `/upload/storage/v1`,
`/download/storage/v1`) and the XML API (`/BUCKET/OBJECT`, incl. multipart uploads), mapped onto
`store.Store`. Errors answer GCS's JSON body `{"error": {"code", "message", "errors": [...]}}`."""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import re
import secrets
import shutil
import threading
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlparse
from xml.etree import ElementTree

import google_crc32c

from infra.local.storage.store import Conditions, StorageError, no_bucket

_JSON = re.compile(r"^/(?:(?P<api>upload|download)/)?storage/v1(?P<rest>/.*)$")
_ROUTES = [  # (method, pattern over the path after /storage/v1, handler)
    ("GET", r"/b", "list_buckets"), ("POST", r"/b", "insert_bucket"),
    ("GET", r"/b/(?P<b>[^/]+)", "get_bucket"), ("PATCH", r"/b/(?P<b>[^/]+)", "patch_bucket"),
    ("PUT", r"/b/(?P<b>[^/]+)", "patch_bucket"), ("DELETE", r"/b/(?P<b>[^/]+)", "delete_bucket"),
    ("GET", r"/b/(?P<b>[^/]+)/o", "list_objects"), ("POST", r"/b/(?P<b>[^/]+)/o", "upload"),
    ("PUT", r"/b/(?P<b>[^/]+)/o", "upload_chunk"), ("DELETE", r"/b/(?P<b>[^/]+)/o", "cancel_upload"),
    ("POST", r"/b/(?P<b>[^/]+)/o/(?P<o>[^/]+)/compose", "compose"),
    ("POST", r"/b/(?P<b>[^/]+)/o/(?P<o>[^/]+)/(?P<verb>copyTo|rewriteTo)/b/(?P<b2>[^/]+)/o/(?P<o2>[^/]+)", "copy"),
    ("POST", r"/b/(?P<b>[^/]+)/o/(?P<o>[^/]+)/moveTo/o/(?P<o2>[^/]+)", "move"),
    ("GET", r"/b/(?P<b>[^/]+)/o/(?P<o>[^/]+)", "get_object"),
    ("PATCH", r"/b/(?P<b>[^/]+)/o/(?P<o>[^/]+)", "patch_object"),
    ("PUT", r"/b/(?P<b>[^/]+)/o/(?P<o>[^/]+)", "update_object"),
    ("DELETE", r"/b/(?P<b>[^/]+)/o/(?P<o>[^/]+)", "delete_object"),
]
_ROUTES = [(m, re.compile(f"^{p}$"), h) for m, p, h in _ROUTES]
_BLANK_LINE = re.compile(rb"\r?\n\r?\n")
_S3 = "http://s3.amazonaws.com/doc/2006-03-01/"
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def _int(q: dict, key: str) -> int | None:
    v = q.get(key)
    return int(v) if v not in (None, "") else None


def _conditions(q: dict, prefix: str = "") -> Conditions:
    def key(k):
        return prefix + k[0].upper() + k[1:] if prefix else k
    return Conditions(_int(q, key("ifGenerationMatch")), _int(q, key("ifGenerationNotMatch")),
                      _int(q, key("ifMetagenerationMatch")), _int(q, key("ifMetagenerationNotMatch")))


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    # -- plumbing ----------------------------------------------------------------------------
    @property
    def store(self):
        return self.server.store

    def log_message(self, format, *args):
        pass

    def _dispatch(self, method: str) -> None:
        srv = self.server
        parsed = urlparse(self.path)
        self.q = {k: v[-1] for k, v in parse_qs(parsed.query, keep_blank_values=True).items()}
        if srv.request_log is not None:
            srv.request_log.add("storage", method, parsed.path, parsed.query)
        self._body = None
        try:
            refused = srv.authorize(self.headers.get("Authorization"), method) if srv.authorize is not None else None
            if refused is not None:
                self.body()
                raise StorageError(*refused)
            if srv.faults:
                delay = srv.faults.call_delay("storage", method, parsed.path)
                if delay:
                    time.sleep(delay)
                status = srv.faults.http_error("storage", method, parsed.path)
                if status:
                    self.body()
                    raise StorageError(status, "rateLimitExceeded" if status == 429 else "backendError",
                                       "Injected failure (local fault).")
            m = _JSON.match(parsed.path)
            if m:
                self.api = m.group("api")
                for meth, pattern, handler in _ROUTES:
                    r = pattern.match(m.group("rest"))
                    if r and meth == method:
                        args = {k: unquote(v) for k, v in r.groupdict().items()}
                        return getattr(self, handler)(**args)
                raise StorageError(404, "notFound", f"Not Found: {method} {parsed.path}")
            return self._xml(method, parsed.path)
        except StorageError as e:
            self.body()
            if e.code == 304:
                return self._send(304, b"")
            self._error(e)
        except (ValueError, KeyError) as e:
            self.body()
            self._error(StorageError(400, "invalid", f"Invalid request: {e}"))

    def body(self) -> bytes:
        if self._body is None:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                out = bytearray()
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass
                        break
                    out += self.rfile.read(size)
                    self.rfile.readline()
                self._body = bytes(out)
            else:
                self._body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        return self._body

    def body_to_file(self, data: bytes | None = None) -> Path:
        path = self.store.new_upload_file()
        path.write_bytes(self.body() if data is None else data)
        return path

    def _send(self, status: int, body: bytes = b"", ctype: str | None = None, headers: dict | None = None) -> None:
        self.send_response(status)
        if ctype:
            self.send_header("Content-Type", ctype)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if status not in (204, 304):
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, obj, status: int = 200, headers: dict | None = None) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json; charset=UTF-8", headers)

    def _error(self, e: StorageError) -> None:
        self._json({"error": {"code": e.code, "message": e.message,
                              "errors": [{"message": e.message, "domain": "global", "reason": e.reason}]}}, e.code)

    def _resource(self, res: dict) -> dict:
        base = self.server.url
        qname = quote(res["name"], safe="")
        return {**res, "selfLink": f"{base}/storage/v1/b/{res['bucket']}/o/{qname}",
                "mediaLink": f"{base}/download/storage/v1/b/{res['bucket']}/o/{qname}"
                             f"?generation={res['generation']}&alt=media"}

    do_GET = lambda self: self._dispatch("GET")  # noqa: E731
    do_HEAD = lambda self: self._dispatch("HEAD")  # noqa: E731
    do_POST = lambda self: self._dispatch("POST")  # noqa: E731
    do_PUT = lambda self: self._dispatch("PUT")  # noqa: E731
    do_PATCH = lambda self: self._dispatch("PATCH")  # noqa: E731
    do_DELETE = lambda self: self._dispatch("DELETE")  # noqa: E731

    # -- buckets -----------------------------------------------------------------------------
    def list_buckets(self):
        items = self.store.list_buckets(self.q.get("prefix", ""))
        self._json({"kind": "storage#buckets", "items": items})

    def insert_bucket(self):
        body = json.loads(self.body() or b"{}")
        self._json(self.store.create_bucket(body.get("name", ""), self.q.get("project", ""), body))

    def get_bucket(self, b):
        self._json(self.store.get_bucket(b))

    def patch_bucket(self, b):
        self._json(self.store.patch_bucket(b, json.loads(self.body() or b"{}")))

    def delete_bucket(self, b):
        self.store.delete_bucket(b)
        self._send(204)

    # -- objects -----------------------------------------------------------------------------
    def list_objects(self, b):
        q = self.q
        items, prefixes, token = self.store.list_objects(
            b, q.get("prefix", ""), q.get("delimiter", ""), _int(q, "maxResults") or 1000, q.get("pageToken"),
            q.get("startOffset", ""), q.get("endOffset", ""), q.get("includeTrailingDelimiter") == "true",
            q.get("matchGlob", ""))
        out = {"kind": "storage#objects", "items": [self._resource(r) for r in items], "prefixes": prefixes}
        if token:
            out["nextPageToken"] = token
        self._json(out)

    def upload(self, b):
        if "upload_id" in self.q:  # a resumable session URI takes PUT or POST
            return self.upload_chunk(b)
        kind = self.q.get("uploadType", "media" if self.api == "upload" else "")
        if kind == "media":
            name = self.q.get("name")
            meta = {"contentType": self.headers.get("Content-Type"), "contentEncoding": self.q.get("contentEncoding")}
            data = self.body_to_file()
        elif kind == "multipart":
            meta, content = self._multipart()
            name = self.q.get("name") or meta.get("name")
            data = self.body_to_file(content)
        elif kind == "resumable":
            meta = json.loads(self.body() or b"{}")
            meta.setdefault("contentType", self.headers.get("X-Upload-Content-Type"))
            name = self.q.get("name") or meta.get("name")
            if not name:
                raise StorageError(400, "required", "Required")
            upload_id = secrets.token_urlsafe(16)
            _conditions(self.q).check(self.store._objects.get(b, {}).get(name) if b in self.store._buckets else None)
            self.server.uploads[upload_id] = {"bucket": b, "name": name, "meta": meta, "q": dict(self.q),
                                              "path": self.store.new_upload_file(), "size": 0}
            loc = f"{self.server.url}/upload/storage/v1/b/{b}/o?uploadType=resumable&upload_id={upload_id}"
            return self._send(200, b"", headers={"Location": loc, "X-GUploader-UploadID": upload_id})
        else:
            raise StorageError(400, "invalid", f"Unsupported uploadType: {kind!r}")
        if not name:
            raise StorageError(400, "required", "Required")
        res = self.store.put_object(b, name, data, meta, _conditions(self.q))
        self._json(self._resource(res))

    def _multipart(self) -> tuple[dict, bytes]:
        m = re.search(r'boundary="?([^";]+)"?', self.headers.get("Content-Type", ""))
        if not m:
            raise StorageError(400, "invalid", "Missing multipart boundary.")
        sep = b"--" + m.group(1).encode()
        parts = [p for p in self.body().split(sep)[1:] if not p.startswith(b"--")]
        _, meta = _BLANK_LINE.split(parts[0], 1)
        heads, content = _BLANK_LINE.split(parts[1], 1)
        content = content[:-2] if content.endswith(b"\r\n") else content[:-1] if content.endswith(b"\n") else content
        meta = json.loads(meta.strip() or b"{}")
        ct = re.search(rb"(?im)^content-type:\s*(\S+)", heads)
        if ct and not meta.get("contentType"):
            meta["contentType"] = ct.group(1).decode()
        return meta, content

    def upload_chunk(self, b):
        upload_id = self.q.get("upload_id", "")
        up = self.server.uploads.get(upload_id)
        if up is None:
            raise StorageError(404, "notFound", "No such upload.")
        data = self.body()
        cr = self.headers.get("Content-Range", "")
        m = re.match(r"bytes (?:(\d+)-(\d+)|\*)/(\d+|\*)", cr)
        if data:
            with open(up["path"], "ab") as f:
                f.write(data)
            up["size"] += len(data)
        total = m.group(3) if m else str(up["size"])
        if total == "*" or int(total) > up["size"]:
            headers = {"Range": f"bytes=0-{up['size'] - 1}"} if up["size"] else {}
            return self._send(308, b"", headers=headers)
        del self.server.uploads[upload_id]
        res = self.store.put_object(up["bucket"], up["name"], up["path"], up["meta"], _conditions(up["q"]))
        self._json(self._resource(res))

    def cancel_upload(self, b):
        up = self.server.uploads.pop(self.q.get("upload_id", ""), None)
        if up is None:
            raise StorageError(404, "notFound", "No such upload.")
        up["path"].unlink(missing_ok=True)
        self._send(499, b"")

    def get_object(self, b, o):
        res = self.store.get_object(b, o, _int(self.q, "generation"), _conditions(self.q))
        if self.q.get("alt") == "media" or self.api == "download":
            return self._media(res)
        self._json(self._resource(res))

    def _media(self, res: dict, xml: bool = False) -> None:
        with self.store.open_content(res) as f:
            data = f.read()
        headers = {"X-Goog-Generation": res["generation"], "X-Goog-Metageneration": res["metageneration"],
                   "X-Goog-Stored-Content-Length": res["size"], "ETag": f'"{res["md5Hash"]}"',
                   "Last-Modified": time.strftime("%a, %d %b %Y %H:%M:%S GMT",
                                                  time.gmtime(int(res["generation"]) / 1e6))}
        encoding = res.get("contentEncoding")
        if encoding:
            headers["X-Goog-Stored-Content-Encoding"] = encoding
        accepts_gzip = "gzip" in self.headers.get("Accept-Encoding", "")
        if encoding == "gzip" and not accepts_gzip:  # decompressive transcoding
            data = gzip.decompress(data) if data else data
        else:
            headers["X-Goog-Hash"] = f"crc32c={res['crc32c']},md5={res['md5Hash']}"
            if encoding:
                headers["Content-Encoding"] = encoding
        for k in ("contentDisposition", "contentLanguage", "cacheControl"):
            if res.get(k):
                headers[re.sub(r"([A-Z])", r"-\1", k).title()] = res[k]
        for k, v in (res.get("metadata") or {}).items():
            headers[f"X-Goog-Meta-{k}"] = v
        status, rng = 200, self.headers.get("Range", "").strip()
        m = _RANGE.match(rng.replace(" ", ""))
        if m and (m.group(1) or m.group(2)) and not (encoding == "gzip" and not accepts_gzip):
            size = len(data)
            if m.group(1):
                start = int(m.group(1))
                end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
                if start >= size or end < start:
                    headers.pop("X-Goog-Hash", None)
                    return self._send(416, b"", headers={**headers, "Content-Range": f"bytes */{size}"}) if xml else \
                        self._json({"error": {"code": 416, "message": "Request range not satisfiable",
                                              "errors": [{"message": "Request range not satisfiable",
                                                          "domain": "global", "reason": "requestedRangeNotSatisfiable"}]}},
                                   416, {"Content-Range": f"bytes */{size}"})
            else:
                start, end = max(0, size - int(m.group(2))), size - 1
            status, data = 206, data[start:end + 1]
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        headers["Accept-Ranges"] = "bytes"
        self._send(status, data, res["contentType"], headers)

    def patch_object(self, b, o, replace: bool = False):
        body = json.loads(self.body() or b"{}")
        res = self.store.patch_object(b, o, body, _conditions(self.q), replace, _int(self.q, "generation"))
        self._json(self._resource(res))

    def update_object(self, b, o):
        self.patch_object(b, o, replace=True)

    def delete_object(self, b, o):
        self.store.delete_object(b, o, _int(self.q, "generation"), _conditions(self.q))
        self._send(204)

    def copy(self, b, o, verb, b2, o2):
        meta = json.loads(self.body() or b"{}")
        res = self.store.copy_object(b, o, b2, o2, meta, _int(self.q, "sourceGeneration"),
                                     _conditions(self.q), _conditions(self.q, "ifSource"))
        if verb == "copyTo":
            return self._json(self._resource(res))
        self._json({"kind": "storage#rewriteResponse", "totalBytesRewritten": res["size"], "objectSize": res["size"],
                    "done": True, "resource": self._resource(res)})

    def move(self, b, o, o2):
        res = self.store.move_object(b, o, o2, _conditions(self.q), _conditions(self.q, "ifSource"))
        self._json(self._resource(res))

    def compose(self, b, o):
        body = json.loads(self.body() or b"{}")
        sources = [(s["name"], int(s["generation"]) if s.get("generation") else None)
                   for s in body.get("sourceObjects", [])]
        res = self.store.compose(b, o, sources, body.get("destination") or {}, _conditions(self.q))
        self._json(self._resource(res))

    # -- XML API -----------------------------------------------------------------------------
    def _xml_error(self, e: StorageError) -> None:
        code = {404: "NoSuchKey", 412: "PreconditionFailed", 409: "BucketNotEmpty"}.get(e.code, "InvalidArgument")
        body = (f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}</Code>"
                f"<Message>{e.message}</Message></Error>").encode()
        self._send(e.code, body, "application/xml; charset=UTF-8")

    def _xml(self, method: str, path: str) -> None:
        bucket, _, name = path.lstrip("/").partition("/")
        bucket, name = unquote(bucket), unquote(name)
        h = self.headers
        cond = Conditions(_int({"g": h.get("x-goog-if-generation-match")}, "g"),
                          metageneration_match=_int({"m": h.get("x-goog-if-metageneration-match")}, "m"))
        try:
            if not bucket:
                raise StorageError(400, "invalid", "Bucket name required.")
            if not name:
                self.store.get_bucket(bucket)
                if method == "GET":
                    return self._xml_list(bucket)
                return self._send(200, b"")
            if method == "POST" and "uploads" in self.q:
                self.store.get_bucket(bucket)
                upload_id = secrets.token_urlsafe(16)
                meta = {"contentType": h.get("Content-Type")}
                meta["metadata"] = {k[len("x-goog-meta-"):]: v for k, v in h.items()
                                    if k.lower().startswith("x-goog-meta-")} or None
                self.server.uploads[upload_id] = {"bucket": bucket, "name": name, "meta": meta, "parts": {},
                                                  "lock": threading.Lock()}
                return self._send(200, (f"<?xml version='1.0' encoding='UTF-8'?><InitiateMultipartUploadResult xmlns=\"{_S3}\">"
                                        f"<Bucket>{bucket}</Bucket><Key>{_x(name)}</Key><UploadId>{upload_id}"
                                        f"</UploadId></InitiateMultipartUploadResult>").encode(), "application/xml")
            if "uploadId" in self.q:
                return self._xml_mpu(method, self.q["uploadId"], cond)
            if method in ("GET", "HEAD"):
                res = self.store.get_object(bucket, name, _int(self.q, "generation"), cond)
                return self._media(res, xml=True)
            if method == "PUT":
                meta = {"contentType": h.get("Content-Type"), "contentEncoding": h.get("Content-Encoding"),
                        "metadata": {k[len("x-goog-meta-"):]: v for k, v in h.items()
                                     if k.lower().startswith("x-goog-meta-")} or None}
                res = self.store.put_object(bucket, name, self.body_to_file(), meta, cond)
                return self._send(200, b"", headers={"ETag": f'"{res["md5Hash"]}"', "X-Goog-Generation": res["generation"]})
            if method == "DELETE":
                self.store.delete_object(bucket, name, _int(self.q, "generation"), cond)
                return self._send(204)
            raise StorageError(405, "invalid", "Method not allowed.")
        except StorageError as e:
            self.body()
            self._xml_error(e)

    def _xml_mpu(self, method: str, upload_id: str, cond: Conditions) -> None:
        up = self.server.uploads.get(upload_id)
        if up is None or "parts" not in up:
            raise StorageError(404, "notFound", "The requested upload was not found.")
        if method == "PUT":
            n = int(self.q["partNumber"])
            path = self.body_to_file()
            data = path.read_bytes()
            etag = f'"{hashlib.md5(data).hexdigest()}"'
            hashes = (f"crc32c={base64.b64encode(google_crc32c.Checksum(data).digest()).decode()},"
                      f"md5={base64.b64encode(hashlib.md5(data).digest()).decode()}")
            with up["lock"]:
                old = up["parts"].get(n)
                up["parts"][n] = (path, etag)
            if old:
                old[0].unlink(missing_ok=True)
            return self._send(200, b"", headers={"ETag": etag, "X-Goog-Hash": hashes})
        if method == "DELETE":
            self.server.uploads.pop(upload_id, None)
            for path, _ in up["parts"].values():
                path.unlink(missing_ok=True)
            return self._send(204)
        if method == "POST":
            root = ElementTree.fromstring(self.body())
            wanted = [int(el.text) for el in root.iter() if el.tag.endswith("PartNumber")]
            missing = [n for n in wanted if n not in up["parts"]]
            if missing or wanted != sorted(wanted):
                raise StorageError(400, "invalid", "One or more of the specified parts could not be found.")
            out = self.store.new_upload_file()
            with open(out, "wb") as f:
                for n in wanted:
                    with open(up["parts"][n][0], "rb") as part:
                        shutil.copyfileobj(part, f)
            res = self.store.put_object(up["bucket"], up["name"], out, up["meta"], cond)
            self.server.uploads.pop(upload_id, None)
            for path, _ in up["parts"].values():
                path.unlink(missing_ok=True)
            return self._send(200, (f"<?xml version='1.0' encoding='UTF-8'?><CompleteMultipartUploadResult xmlns=\"{_S3}\">"
                                    f"<Bucket>{up['bucket']}</Bucket><Key>{_x(up['name'])}</Key>"
                                    f"<ETag>\"{res['md5Hash']}\"</ETag></CompleteMultipartUploadResult>").encode(),
                              "application/xml", {"X-Goog-Generation": res["generation"]})
        raise StorageError(405, "invalid", "Method not allowed.")

    def _xml_list(self, bucket: str) -> None:
        items, prefixes, token = self.store.list_objects(
            bucket, self.q.get("prefix", ""), self.q.get("delimiter", ""), _int(self.q, "max-keys") or 1000,
            self.q.get("marker") or None)
        body = "".join(f"<Contents><Key>{_x(r['name'])}</Key><Generation>{r['generation']}</Generation>"
                       f"<Size>{r['size']}</Size><ETag>\"{r['md5Hash']}\"</ETag></Contents>" for r in items)
        body += "".join(f"<CommonPrefixes><Prefix>{_x(p)}</Prefix></CommonPrefixes>" for p in prefixes)
        trunc = f"<IsTruncated>true</IsTruncated><NextMarker>{token}</NextMarker>" if token else "<IsTruncated>false</IsTruncated>"
        self._send(200, (f"<?xml version='1.0' encoding='UTF-8'?><ListBucketResult xmlns=\"{_S3}\"><Name>{bucket}</Name>"
                         f"{trunc}{body}</ListBucketResult>").encode(), "application/xml")


def _x(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


__all__ = ["Handler", "no_bucket"]
