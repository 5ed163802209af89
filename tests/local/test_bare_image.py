"""A bare OS image (ubuntu-2204-lts): its python3 lacks the trainer's packages, so the default
template's startup script takes its install path, and fails (pip, offline, read-only image)
with guest attribute ferry/setup. Such a VM boots only inside bubblewrap."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml

from infra.local.testing import instance_resource, local_cloud, wait_operation
from infra.local.vm.sandbox import bwrap

ROOT = Path(__file__).resolve().parents[2]
UBUNTU = "projects/ubuntu-os-cloud/global/images/family/ubuntu-2204-lts"
ZONE = "us-central1-a"


def _startup_script() -> str:
    return yaml.safe_load((ROOT / "infra" / "templates" / "default.yaml").read_text())["startup_script"]


def _guest(instances, name: str) -> dict:
    from google.api_core import exceptions as gexc

    try:
        ga = instances.get_guest_attributes(request={"project": "ferry-local", "zone": ZONE, "instance": name,
                                                     "query_path": "ferry/"})
    except gexc.NotFound:
        return {}
    return {f"{e.namespace}/{e.key}": e.value for e in ga.query_value.items}


@pytest.mark.skipif(bwrap() is None, reason="bubblewrap is not available here")
def test_bare_image_takes_the_install_path(tmp_path):
    import os

    from google.cloud import compute_v1

    with local_cloud(tmp_path / "home") as cloud:
        instances = compute_v1.InstancesClient(**cloud.compute_options())
        op = instances.insert(project="ferry-local", zone=ZONE, instance_resource=instance_resource(
            "bare-1", image=UBUNTU, metadata={"startup-script": _startup_script()}))
        assert not wait_operation(cloud, op).error.errors
        deadline = time.monotonic() + 60
        attrs: dict = {}
        while "ferry/setup" not in attrs and time.monotonic() < deadline:
            time.sleep(0.2)
            attrs = _guest(instances, "bare-1")
        if os.getuid() == 0:
            assert attrs.get("ferry/setup") == "failed: pip install", attrs
        else:
            assert attrs.get("ferry/setup") == "failed: installing packages", attrs
        assert attrs.get("ferry/setup-log", "").strip()  # the failing step's output, for the runner to show
        inst = instances.get(project="ferry-local", zone=ZONE, instance="bare-1")
        assert inst.disks[0].source.endswith("/disks/bare-1") or inst.disks[0].boot
        wait_operation(cloud, instances.delete(project="ferry-local", zone=ZONE, instance="bare-1"))


def test_bare_image_refuses_to_boot_unsandboxed(tmp_path, monkeypatch):
    """Without bubblewrap its startup script would run as this machine's user (root in CI) and
    pip install here: the instance does not come up, and the operation says why."""
    from google.cloud import compute_v1

    monkeypatch.setenv("FERRY_LOCAL_SANDBOX", "none")  # the service's VMs get no sandbox
    with local_cloud(tmp_path / "home") as cloud:
        instances = compute_v1.InstancesClient(**cloud.compute_options())
        op = instances.insert(project="ferry-local", zone=ZONE, instance_resource=instance_resource(
            "bare-2", image=UBUNTU, metadata={"startup-script": "#!/bin/bash\ntouch /tmp/ferry-bare-must-not-run\n"}))
        done = wait_operation(cloud, op)
        errors = [e.message for e in done.error.errors]
        assert errors and "bubblewrap" in errors[0], errors
        assert instances.get(project="ferry-local", zone=ZONE, instance="bare-2").status == "TERMINATED"
        # a Deep Learning VM image still boots without the sandbox
        op = instances.insert(project="ferry-local", zone=ZONE, instance_resource=instance_resource("dlvm-1"))
        assert not wait_operation(cloud, op).error.errors
