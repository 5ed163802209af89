"""Shared fixtures for infra tests: an isolated FERRY_HOME and no stray Google settings."""

from __future__ import annotations

import pytest


@pytest.fixture
def isolated_env(tmp_path, monkeypatch):
    """A private FERRY_HOME, no GCP project/zone/bucket from the environment or gcloud."""
    home = tmp_path / "ferry-home"
    home.mkdir()
    monkeypatch.setenv("FERRY_HOME", str(home))
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud"))  # no gcloud config
    for var in ("GOOGLE_CLOUD_PROJECT", "CLOUDSDK_CORE_PROJECT", "CLOUDSDK_COMPUTE_ZONE", "FERRY_ZONE",
                "FERRY_BUCKET", "FERRY_BACKEND"):
        monkeypatch.delenv(var, raising=False)
    # Application Default Credentials that do not exist: google.auth.default fails at once.
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "no-such-key.json"))
    return home
