"""The local Cloud Storage keeps every object name GCS accepts, as itself: names a file system
would refuse or normalise (`..` segments, `//`, a leading `/`) neither fail nor collide, and
none reaches outside the data directory."""

from __future__ import annotations

import threading

from google.auth.credentials import AnonymousCredentials
from google.cloud import storage

from infra.local.storage import StorageServer

NAMES = ["runs/x/../x", "../escape", "a//b", "a/b", "/abs/z", "abs/z", "s" * 300]


def test_object_names_are_stored_verbatim_and_stay_inside(tmp_path):
    data = tmp_path / "data"
    server = StorageServer(data)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        client = storage.Client(project="p", credentials=AnonymousCredentials(),
                                client_options={"api_endpoint": server.url})
        bucket = client.create_bucket("names")
        for name in NAMES:
            bucket.blob(name).upload_from_string(name.encode())
        assert sorted(b.name for b in client.list_blobs("names")) == sorted(NAMES)
        assert [bucket.blob(n).download_as_text() for n in NAMES] == NAMES
        bucket.blob("../escape").delete()
        assert "../escape" not in {b.name for b in client.list_blobs("names")}
        assert bucket.blob("runs/x/../x").download_as_text() == "runs/x/../x"
        outside = [p for p in tmp_path.rglob("*") if not p.is_relative_to(data)]
        assert outside == []
    finally:
        server.shutdown()
        server.server_close()
