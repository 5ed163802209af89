"""fetch + verify against a tiny HTTP server on 127.0.0.1 and file:// archives (no internet)."""

import functools
import hashlib
import http.server
import threading
import zipfile

import numpy as np
import pytest

from trainer.datasets import mnist, sources
from trainer.errors import DataError


class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def serve(tmp_path):
    servers = []

    def start(folder):
        handler = functools.partial(Quiet, directory=str(folder))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/"

    yield start
    for s in servers:
        s.shutdown()


def test_fetch_mnist_verifies_and_places(real_data, serve, tmp_path):
    url = serve(real_data / "mnist")
    dest = tmp_path / "data"
    sources.fetch("mnist", dest, [url])
    assert sources.verify("mnist", dest).startswith("mnist-md5:")
    d = mnist.load(dest, download=False, cache_dir=None)
    assert d["fingerprint"]["canonical_mnist"]
    # label counts from the datasets README
    assert np.bincount(d["y_train"]).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert np.bincount(d["y_test"]).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_fetch_rejects_wrong_content_and_places_nothing(fake_mnist, serve, tmp_path):
    url = serve(fake_mnist / "mnist")  # well-formed IDX files, but not MNIST
    with pytest.raises(DataError, match="content MD5"):
        sources.fetch("mnist", tmp_path / "dest", [url])
    assert not (tmp_path / "dest" / "mnist").exists()
    assert not list((tmp_path / "dest").iterdir())  # the staging folder is gone too


def test_offline_failure_says_what_to_do(tmp_path):
    with pytest.raises(DataError) as e:
        sources.fetch("mnist", tmp_path / "data", ["http://127.0.0.1:9/"])
    assert "Offline?" in str(e.value) and "--data-dir" in str(e.value)
    with pytest.raises(DataError, match="downloading is off"):
        sources.ensure("mnist", tmp_path / "empty", download=False)


def test_scene_archive_placed_by_content(tmp_path, monkeypatch):
    blobs = {f"train/Coast/image_{i:04d}.jpg": f"jpeg {i}".encode() for i in range(3)}
    blobs["test/Coast/image_0009.jpg"] = b"jpeg 9"
    manifest = {rel: hashlib.sha256(b).hexdigest() for rel, b in blobs.items()}
    monkeypatch.setattr(sources, "scene_manifest", lambda: manifest)
    archive = tmp_path / "scenes.zip"
    with zipfile.ZipFile(archive, "w") as z:  # a different layout, plus an unrelated file
        for i, b in enumerate(blobs.values()):
            z.writestr(f"15-Scene/00/{i}.jpg", b)
        z.writestr("15-Scene/README.txt", b"hello")
    sources.fetch("15scene", tmp_path / "data", [archive.as_uri()])
    for rel, b in blobs.items():
        assert (tmp_path / "data" / "15scene" / rel).read_bytes() == b
    assert sources.verify("15scene", tmp_path / "data").startswith("15scene-manifest:")
    manifest["train/Coast/image_0099.jpg"] = "0" * 64
    with pytest.raises(DataError, match="1 of 5 15-scene files not in the archive"):
        sources.fetch("15scene", tmp_path / "data2", [archive.as_uri()])


def test_public_checksums_are_recorded():
    assert len(sources.scene_manifest()) == 4485
    assert set(sources.MNIST_FILES) == set(sources.mnist_gz_sha256())
    assert sources.data_root("x").name == "x"
