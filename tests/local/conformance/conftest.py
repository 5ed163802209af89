"""Fixtures of the local Cloud Storage conformance suite: third-party clients against a running
local cloud (one per test module). `FERRY_CONFORMANCE_STORAGE_URL=http://host:port` runs the suite
against another server instead (to compare emulators)."""

from __future__ import annotations

import os

import pytest

from infra.local.testing import local_cloud


@pytest.fixture(scope="module")
def storage_server(tmp_path_factory):
    """(url, access token or None) of the server under test."""
    url = os.environ.get("FERRY_CONFORMANCE_STORAGE_URL")
    if url:
        yield url.rstrip("/"), os.environ.get("FERRY_LOCAL_TOKEN")
        return
    with local_cloud(tmp_path_factory.mktemp("ferry-home") / "home", vm_runtime="none") as cloud:
        yield cloud.endpoints.storage, cloud.endpoints.token


@pytest.fixture(scope="module")
def storage_url(storage_server):
    return storage_server[0]


@pytest.fixture(scope="module")
def credentials(storage_server):
    """What a third-party client is given: the local cloud's token as an OAuth access token."""
    from google.auth.credentials import AnonymousCredentials
    from google.oauth2.credentials import Credentials

    return Credentials(token=storage_server[1]) if storage_server[1] else AnonymousCredentials()


@pytest.fixture(scope="module")
def auth(storage_server) -> dict:
    """Headers for raw HTTP calls."""
    return {"Authorization": f"Bearer {storage_server[1]}"} if storage_server[1] else {}


@pytest.fixture(scope="module")
def gcs(storage_url, credentials):
    from google.cloud import storage

    return storage.Client(project="ferry-local", credentials=credentials,
                          client_options={"api_endpoint": storage_url})
