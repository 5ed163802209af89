"""Fixtures of the local Cloud Storage conformance suite: third-party clients against a running
local cloud (one per test module). `FERRY_CONFORMANCE_STORAGE_URL=http://host:port` runs the suite
against another server instead (to compare emulators)."""

from __future__ import annotations

import os

import pytest

from infra.local.testing import local_cloud


@pytest.fixture(scope="module")
def storage_url(tmp_path_factory):
    url = os.environ.get("FERRY_CONFORMANCE_STORAGE_URL")
    if url:
        yield url.rstrip("/")
        return
    with local_cloud(tmp_path_factory.mktemp("ferry-home") / "home", vm_runtime="none") as cloud:
        yield cloud.endpoints.storage


@pytest.fixture(scope="module")
def gcs(storage_url):
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    return storage.Client(project="ferry-local", credentials=AnonymousCredentials(),
                          client_options={"api_endpoint": storage_url})
