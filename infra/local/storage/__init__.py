"""Local Cloud Storage: ferry's own JSON + XML API server, backed by files, one content file and
one resource file per object (`store.py`: state and rules; `wire.py`: the HTTP APIs).

It replaced gcp-storage-emulator (patched), which rewrote one metadata file of every object on
each write (127 ms a write at 6,000 objects), ignored pagination, offsets, suffix ranges and
generations, answered 404 with an empty body and 501 to XML multipart uploads and moves; see
docs/local.md "Cloud Storage" for the comparison with fake-gcs-server and the suite
(tests/local/conformance/) that holds it to GCS's documented behaviour.

Kept from before: served threaded; `ifGenerationMatch` (and the other preconditions) enforced;
any object name GCS accepts is stored as itself (its files are named by a digest of it) and none
reaches outside the data directory; every call goes to `request_log.add("storage", method, path,
query)` and through the fault hooks `faults.call_delay(...)` / `faults.http_error(...)`.
Data persists under the directory given (ferry uses `<home>/local/storage`), never the cwd.
"""

from __future__ import annotations

import threading
from http.server import ThreadingHTTPServer
from pathlib import Path

from infra.local.storage.store import Store, StorageError
from infra.local.storage.wire import Handler

__all__ = ["StorageServer", "Store", "StorageError"]


class StorageServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, data_dir: Path, host: str = "127.0.0.1", port: int = 0, request_log=None, faults=None):
        data_dir = Path(data_dir).resolve()
        data_dir.mkdir(parents=True, exist_ok=True)
        self.store = Store(data_dir)
        self.uploads: dict[str, dict] = {}  # resumable and XML multipart uploads in progress
        self.request_log = request_log
        self.faults = faults
        self.authorize = None  # (Authorization header, method) -> None | (status, reason, message); None: all in
        super().__init__((host, port), Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def serve_in_background(self) -> threading.Thread:
        t = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True, name="storage")
        t.start()
        return t
