"""Fixtures for jobs/ tests: a temp FERRY_HOME, an in-process Cloud Storage server."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def ferry_home(tmp_path, monkeypatch):
    home = tmp_path / "ferry-home"
    home.mkdir()
    monkeypatch.setenv("FERRY_HOME", str(home))
    return home


@pytest.fixture
def gcs(monkeypatch, tmp_path):
    """The local cloud's Cloud Storage server alone, on 127.0.0.1 (no access token); yields
    (url, bucket "ferry-test")."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    from infra.local.storage import StorageServer

    server = StorageServer(tmp_path / "gcs")
    server.serve_in_background()
    url = server.url
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", url)
    client = storage.Client(project="ferry-local", credentials=AnonymousCredentials(), client_options={"api_endpoint": url})
    try:
        yield url, client.create_bucket("ferry-test")
    finally:
        server.shutdown()
        server.server_close()
