"""Fixtures for the local cloud's tests: one service per test module, own FERRY_HOME."""

from __future__ import annotations

import pytest

from infra.local.testing import local_cloud

GPU_IMAGE = "projects/deeplearning-platform-release/global/images/family/common-cu129-ubuntu-2204-nvidia-580"


@pytest.fixture(scope="module")
def api_cloud(tmp_path_factory):
    """A local cloud without SSH servers (VM runtime `none`): for API behaviour only."""
    with local_cloud(tmp_path_factory.mktemp("ferry-home"), vm_runtime="none") as cloud:
        yield cloud


@pytest.fixture(scope="module")
def vm_cloud(tmp_path_factory):
    """A local cloud whose RUNNING instances are real SSH servers (asyncssh)."""
    with local_cloud(tmp_path_factory.mktemp("ferry-home"), vm_runtime="asyncssh") as cloud:
        yield cloud


@pytest.fixture(autouse=True)
def _no_leftover_faults(request):
    yield
    for name in ("api_cloud", "vm_cloud"):
        if name in request.fixturenames:
            request.getfixturevalue(name).control.clear_faults()
