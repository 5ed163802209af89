"""Fixtures for jobs/ tests: a temp FERRY_HOME, an in-process Cloud Storage emulator."""

from __future__ import annotations

import socket

import pytest


@pytest.fixture(autouse=True)
def ferry_home(tmp_path, monkeypatch):
    home = tmp_path / "ferry-home"
    home.mkdir()
    monkeypatch.setenv("FERRY_HOME", str(home))
    return home


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def gcs(monkeypatch):
    """An in-memory gcp-storage-emulator on 127.0.0.1; yields (url, bucket)."""
    from gcp_storage_emulator.server import create_server
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    port = _free_port()
    server = create_server("127.0.0.1", port, in_memory=True, default_bucket="ferry-test")
    server.start()
    url = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", url)
    client = storage.Client(project="ferry-local", credentials=AnonymousCredentials(), client_options={"api_endpoint": url})
    try:
        yield url, client.bucket("ferry-test")
    finally:
        server.stop()
