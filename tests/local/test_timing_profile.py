"""The local cloud's timing profiles: `fast` (default) and `gce` (Compute Engine's pace), chosen
by FERRY_LOCAL_TIMING / FERRY_LOCAL_TIME_SCALE in the service's environment; ferry itself meets
the gce profile end to end (scaled down)."""

from __future__ import annotations

import json
import time

import pytest

from infra.errors import CloudError
from infra.local.compute.models import Compute, Timing, TimingError
from infra.local.compute.responses import ComputeResponses
from infra.local.testing import instance_resource, local_cloud

SCALE = 0.05


def test_profiles_from_environment():
    assert Timing.from_env({}) == Timing()
    gce = Timing.from_env({"FERRY_LOCAL_TIMING": "gce", "FERRY_LOCAL_TIME_SCALE": "0.5"})
    assert (gce.profile, gce.scale) == ("gce", 0.5)
    assert (gce.provision_s, gce.stage_s, gce.guest_agent_s, gce.delete_s, gce.stop_s, gce.wait_max_s) == (
        5.0, 12.5, 15.0, 10.0, 15.0, 60.0)
    assert Timing.from_env({"FERRY_LOCAL_TIME_SCALE": "2"}).wait_max_s == 60.0
    for env, var in (({"FERRY_LOCAL_TIMING": "slow"}, "FERRY_LOCAL_TIMING"),
                     ({"FERRY_LOCAL_TIME_SCALE": "0"}, "FERRY_LOCAL_TIME_SCALE"),
                     ({"FERRY_LOCAL_TIME_SCALE": "fast"}, "FERRY_LOCAL_TIME_SCALE"),
                     ({"FERRY_LOCAL_TIME_SCALE": "inf"}, "FERRY_LOCAL_TIME_SCALE")):
        with pytest.raises(TimingError, match=var) as e:
            Timing.from_env(env)
        assert "valid" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("var,value", [("FERRY_LOCAL_TIMING", "slow"), ("FERRY_LOCAL_TIME_SCALE", "-1")])
def test_service_refuses_bad_values(tmp_path, monkeypatch, var, value):
    monkeypatch.setenv(var, value)
    with pytest.raises(CloudError) as e:
        with local_cloud(tmp_path / "home", vm_runtime="none"):
            pass
    text = f"{e.value} {getattr(e.value, 'hint', '')}"
    assert var in text and "valid" in text


def _body(name: str) -> dict:
    from google.cloud import compute_v1

    return json.loads(compute_v1.Instance.to_json(instance_resource(name)))


def test_wait_answers_at_the_hold_limit_or_when_done(tmp_path):
    """gce's zoneOperations.wait: DONE as soon as the operation is, else RUNNING at the hold."""
    compute = Compute(tmp_path, timing=Timing(provision_s=0.6, stage_s=0.0, wait_max_s=0.2, profile="gce"))
    responses = ComputeResponses(compute)
    try:
        op = compute.insert("ferry-local", "us-central1-a", _body("held"))
        p = {"project": "ferry-local", "zone": "us-central1-a", "op": op.name}
        t0 = time.monotonic()
        _, first = responses.wait_zone_operation(p, {}, None)
        held = time.monotonic() - t0
        assert first["status"] == "RUNNING" and 0.18 <= held < 0.5
        while True:
            _, answer = responses.wait_zone_operation(p, {}, None)
            if answer["status"] == "DONE":
                break
        assert time.monotonic() - t0 < 1.2  # answered when the operation finished, not at a hold's end
    finally:
        compute.close()


@pytest.fixture
def gce_cloud(tmp_path, monkeypatch):
    from infra import clients

    home = tmp_path / "home"
    monkeypatch.setenv("FERRY_LOCAL_TIMING", "gce")
    monkeypatch.setenv("FERRY_LOCAL_TIME_SCALE", str(SCALE))
    monkeypatch.setenv("FERRY_HOME", str(home))
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(home / "no-gcloud"))
    for var in ("GOOGLE_CLOUD_PROJECT", "CLOUDSDK_CORE_PROJECT", "CLOUDSDK_COMPUTE_ZONE", "FERRY_ZONE",
                "FERRY_BUCKET", "FERRY_BACKEND"):
        monkeypatch.delenv(var, raising=False)
    clients.reset_cache()
    with local_cloud(home) as cloud:
        yield cloud
    clients.reset_cache()


def test_ferry_meets_the_gce_profile(gce_cloud):
    from infra import provision
    from infra.settings import resolve

    gce = Timing.profile_named("gce", SCALE)
    # GCE's wait is best effort: let the first wait on the insert come back before DONE
    gce_cloud.control.fault("hold_wait", hold_s=0.3, count=1)
    settings = resolve()
    t0 = time.time()
    start = time.monotonic()
    vm = provision.up(settings, gpu="t4", name="paced")
    took_up = time.monotonic() - start
    assert vm.host_key.startswith("ssh-ed25519 ")
    # PROVISIONING + STAGING, then the guest agent's SSH server and host keys
    assert took_up >= gce.provision_s + gce.stage_s + gce.guest_agent_s - 0.05
    waits: dict[str, int] = {}
    for r in gce_cloud.control.requests(since=t0):
        if r["path"].endswith("/wait"):
            name = r["path"].rsplit("/", 2)[-2]
            waits[name] = waits.get(name, 0) + 1
    insert_op = next(iter(waits))  # the insert's operation is the first one waited for
    assert waits[insert_op] >= 2, waits
    guest = [r for r in gce_cloud.control.requests(since=t0) if "getGuestAttributes" in r["path"]]
    assert len(guest) >= 2  # polled while the guest agent had not published the host keys yet

    start = time.monotonic()
    assert provision.delete(settings, vm.name, vm.zone) is True
    assert time.monotonic() - start >= gce.delete_s - 0.05
    assert not gce_cloud.control.instances()
