"""Local Cloud Storage: gcp-storage-emulator's JSON API, served threaded, with its gaps closed.

Gaps of gcp-storage-emulator and what we do:
- single-threaded HTTP server (one keep-alive client blocks every other): served here by a
  ThreadingHTTPServer; request bodies are read outside a lock, the emulator's in-memory index
  (not thread-safe) is driven under one lock.
- ignores generation preconditions: `ifGenerationMatch` is enforced here on object uploads
  (media, multipart, resumable start), downloads/gets and deletes: `0` = create only if absent,
  N = only if the live generation is N; otherwise 412 conditionNotMet, as GCS answers.
- stores object content at paths made from object names, so names GCS accepts but a file
  system does not (`runs/x/../y`, `a//b`, a leading `/`, over 255 bytes a segment) are refused
  or collide: content is kept here under a digest of the name (`_NameSafeStorage`).
- NOT closed: `compose` onto a destination that was reloaded fails; `ifMetagenerationMatch` and
  `ifGenerationNotMatch` are ignored; no object versioning.
Data persists under the directory given (ferry uses `<home>/local/storage`), never the cwd.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import threading
import time
from functools import partial
from http.server import ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

from gcp_storage_emulator import server as gse
from gcp_storage_emulator.storage import Storage

_OBJECT_PATH = re.compile(r"^(?:/download)?(?:/storage/v1)?/b/(?P<bucket>[^/]+)/o/(?P<object>[^/?]+)$")
_UPLOAD_PATH = re.compile(r"^(?:/upload)?(?:/storage/v1)?/b/(?P<bucket>[^/]+)/o$")


class _Handler(gse.RequestHandler):
    disable_nagle_algorithm = True
    protocol_version = "HTTP/1.1"  # keep-alive: Content-Length is always sent by the emulator

    def _dispatch(self, method: str) -> None:
        srv = self.server
        parsed = urlparse(self.path)
        query = parse_qs(parsed.query)
        if srv.request_log is not None:
            srv.request_log.add("storage", method, parsed.path, parsed.query)
        raw = gse._read_raw_data(self) or b""
        if "Transfer-Encoding" in self.headers:
            del self.headers["Transfer-Encoding"]
        if "Content-Length" in self.headers:
            del self.headers["Content-Length"]
        if raw:
            self.headers["Content-Length"] = str(len(raw))
        original, self.rfile = self.rfile, io.BytesIO(raw)
        try:
            delay = srv.faults.call_delay("storage", method, parsed.path) if srv.faults else 0.0
            if delay:
                time.sleep(delay)
            status = srv.faults.http_error("storage", method, parsed.path) if srv.faults else None
            if status:
                return self._error(status, "backendError", "Injected failure (local fault).")
            with srv.lock:
                if not self._preconditions_hold(method, parsed.path, query, raw):
                    return self._error(412, "conditionNotMet",
                                       "At least one of the pre-conditions you specified did not hold.")
                gse.Router(self).handle(method)
        finally:
            self.rfile = original

    def _error(self, status: int, reason: str, message: str) -> None:
        body = json.dumps({"error": {"code": status, "message": message,
                                     "errors": [{"message": message, "domain": "global", "reason": reason}]}}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _preconditions_hold(self, method: str, path: str, query: dict, raw: bytes) -> bool:
        want = (query.get("ifGenerationMatch") or [None])[0]
        if want is None:
            return True
        bucket = name = None
        m = _OBJECT_PATH.match(path)
        if m:
            bucket, name = m.group("bucket"), unquote(m.group("object"))
        else:
            m = _UPLOAD_PATH.match(path)
            if m and method == "POST":
                bucket = m.group("bucket")
                name = (query.get("name") or [None])[0] or self._body_name(raw)
        if not bucket or not name:
            return True
        current = (self.server.storage.objects.get(bucket) or {}).get(name)
        live = str(current["generation"]) if current else "0"
        return str(want) == live

    def _body_name(self, raw: bytes) -> str | None:
        ctype = self.headers.get("Content-Type", "")
        if ctype.startswith("application/json"):  # resumable start: the metadata is the body
            try:
                return json.loads(raw.decode() or "{}").get("name")
            except (ValueError, UnicodeDecodeError, AttributeError):
                return None
        m = re.search(r'boundary="?([^";]+)"?', ctype)
        if not m or not raw:
            return None
        for part in raw.split(b"--" + m.group(1).encode())[1:2]:
            _, _, body = part.partition(b"\r\n\r\n")
            try:
                return json.loads(body.strip().decode()).get("name")
            except (ValueError, UnicodeDecodeError):
                return None
        return None

    def do_GET(self):
        self._dispatch("GET")

    def do_POST(self):
        self._dispatch("POST")

    def do_PUT(self):
        self._dispatch("PUT")

    def do_PATCH(self):
        self._dispatch("PATCH")

    def do_DELETE(self):
        self._dispatch("DELETE")

    def log_message(self, format, *args):
        pass


class _NameSafeStorage(Storage):
    """Content of object NAME lives at `<bucket>/<sha256(NAME)>`: every name GCS allows is stored
    as itself, and no name can reach outside the data directory."""

    def _object_path(self, bucket_name, file_name):
        return f"{bucket_name}/{hashlib.sha256(file_name.encode('utf-8')).hexdigest()}"


class StorageServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, data_dir: Path, host: str = "127.0.0.1", port: int = 0, request_log=None, faults=None):
        data_dir = Path(data_dir).resolve()
        data_dir.mkdir(parents=True, exist_ok=True)
        self.storage = _NameSafeStorage(data_dir=str(data_dir))
        self.lock = threading.RLock()
        self.request_log = request_log
        self.faults = faults
        super().__init__((host, port), partial(_Handler, self.storage))

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def serve_in_background(self) -> threading.Thread:
        t = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True, name="storage")
        t.start()
        return t
