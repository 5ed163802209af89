"""Never leave money running, never touch what isn't ours: signals to `up`, an insert that
loses a race (409), `down` / `cleanup` / `logs --follow` and other owners' VMs, and operation
waits that GCE holds past the client's timeout. Local backend, real processes, no mocks."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

import cli
from infra import clients, interrupts, provision
from infra.local.testing import ferry_local_cloud, instance_resource, wait_operation
from infra.settings import owner, resolve

ROOT = Path(__file__).resolve().parents[2]
ZONE = "us-central1-a"


@pytest.fixture(scope="module")
def cloud(tmp_path_factory):
    with ferry_local_cloud(tmp_path_factory.mktemp("ferry-home"), vm_runtime="asyncssh") as c:
        yield c


def _instances_client(cloud):
    from google.cloud import compute_v1

    return compute_v1.InstancesClient(**cloud.compute_options())


@pytest.fixture(autouse=True)
def clean(cloud):
    cloud.control.clear_faults()
    interrupts.reset()
    yield
    cloud.control.clear_faults()
    interrupts.reset()
    client = _instances_client(cloud)  # every VM, whoever's: the raw API, not ferry's rules
    for inst in cloud.control.instances():
        wait_operation(cloud, client.delete(project="ferry-local", zone=inst["zone"], instance=inst["name"]))
    assert not cloud.control.instances()


def names(cloud) -> set:
    return {i["name"] for i in cloud.control.instances()}


def foreign(cloud, name: str, labels: dict | None = None, metadata: dict | None = None, zone: str = ZONE):
    """A VM someone else made (through the API directly, not through ferry)."""
    inst = instance_resource(name, zone, gpu=None, machine_type="n1-standard-1", metadata=metadata)
    inst.labels = dict(labels or {})
    wait_operation(cloud, _instances_client(cloud).insert(project="ferry-local", zone=zone, instance_resource=inst))


def run(capsys, *argv):
    rc = cli.run_cli(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def ferry_cli(*argv, **kw):
    return subprocess.Popen([sys.executable, "cli.py", *argv], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


# --------------------------------------------------------------------------- signals
@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_sigterm_and_sighup_during_up_delete_the_vm_and_exit_128_plus_signal(cloud, sig, code):
    cloud.control.fault("slow_operations", delay_s=1.0)
    proc = ferry_cli("up", "--gpu", "t4", "--name", f"sig{code}")
    deadline = time.monotonic() + 30
    while not names(cloud) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert names(cloud), "the VM never appeared"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert not names(cloud)
    assert "Traceback" not in err


def test_a_second_signal_does_not_abort_the_teardown(cloud):
    cloud.control.fault("slow_operations", delay_s=1.0)
    proc = ferry_cli("up", "--gpu", "t4", "--name", "twice-signalled")
    deadline = time.monotonic() + 30
    while not names(cloud) and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)  # while it deletes
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert not names(cloud)
    assert "please wait" in err


# --------------------------------------------------------------------------- inserts
def test_an_insert_refused_409_deletes_the_vm_that_won_the_race(cloud, capsys):
    """Between ferry looking for NAME and inserting it, someone else creates NAME: the insert
    is refused (409 alreadyExists) and nothing is deleted."""
    cloud.control.fault("slow_calls", delay_s=1.5, method="GET", path="/aggregated/instances", count=1)
    box = {}
    t = threading.Thread(target=lambda: box.update(r=run(capsys, "up", "--gpu", "t4", "--name", "raced")))
    t.start()
    time.sleep(0.5)  # ferry's lookup is being held; the other side creates the VM now
    foreign(cloud, "raced", labels={"managed-by": "ferry", "ferry-owner": "alice", "ferry-vm": "raced"})
    t.join(60)
    rc, _, err = box["r"]
    assert rc in (2, 3) and "alice" in err, err
    assert names(cloud) == {"raced"}  # the winner's VM is intact


def test_a_wait_held_past_the_client_timeout_is_still_running_not_a_failure(cloud):
    """GCE holds zoneOperations.wait up to ~2 minutes: a client timeout means "wait again"."""
    pacing = clients.LOCAL_PACING
    cloud.control.fault("hold_wait", hold_s=pacing.wait_call_s + 2, count=1)
    cloud.control.clear_requests()
    vm = provision.up(resolve(), gpu="t4", name="held")
    assert vm.created and names(cloud) == {"held"}
    waits = [r for r in cloud.control.requests() if r["path"].endswith("/wait")]
    assert len(waits) >= 2  # the first timed out on our side, the next one answered


# --------------------------------------------------------------------------- down, cleanup
def test_down_of_another_owners_vm_asks_first(cloud, capsys):
    foreign(cloud, "bobs-vm", labels={"managed-by": "ferry", "ferry-owner": "bob", "ferry-vm": "bobs-vm"})
    rc, _, err = run(capsys, "down", "bobs-vm")
    assert rc == 2 and "bob" in err and "--yes" in err and names(cloud) == {"bobs-vm"}
    rc, out, err = run(capsys, "down", "bobs-vm", "--yes")
    assert rc == 0 and "deleted" in out and not names(cloud), err


def test_down_never_deletes_a_vm_ferry_did_not_make(cloud, capsys):
    foreign(cloud, "prod-db", labels={"team": "data"})
    rc, _, err = run(capsys, "down", "prod-db", "--yes")
    assert rc == 2 and "not managed by ferry" in err and names(cloud) == {"prod-db"}


def _status(bucket, run_id, state, beat_age_s=0.0):
    beat = (datetime.now(timezone.utc) - timedelta(seconds=beat_age_s)).isoformat()
    bucket.blob(f"runs/{run_id}/status.json").upload_from_string(json.dumps({"state": state, "heartbeat": beat}))


def test_cleanup_judges_a_run_vm_by_its_own_bucket_and_leaves_other_owners(cloud, capsys):
    s = resolve()
    gcs = cloud.storage_client()
    mine = gcs.lookup_bucket(s.bucket) or gcs.create_bucket(s.bucket)
    team = gcs.lookup_bucket("team-bucket") or gcs.create_bucket("team-bucket")
    me = owner()
    _status(mine, "my-done", "succeeded")
    _status(team, "bobs-live", "running")       # alive: its record lives in the team's bucket
    _status(mine, "bobs-live", "succeeded")     # a stale namesake in my bucket must not decide
    _status(mine, "alices-done", "succeeded")
    ferry = {"managed-by": "ferry"}
    foreign(cloud, "vm-mine-done", labels={**ferry, "ferry-owner": me, "ferry-run": "my-done"},
            metadata={"ferry-run-bucket": s.bucket})
    foreign(cloud, "vm-bob-live", labels={**ferry, "ferry-owner": "bob", "ferry-run": "bobs-live"},
            metadata={"ferry-run-bucket": "team-bucket"})
    foreign(cloud, "vm-alice-done", labels={**ferry, "ferry-owner": "alice", "ferry-run": "alices-done"},
            metadata={"ferry-run-bucket": s.bucket})
    foreign(cloud, "vm-mine-unseen", labels={**ferry, "ferry-owner": me, "ferry-run": "no-record-anywhere"},
            metadata={"ferry-run-bucket": "a-bucket-that-does-not-exist"})

    rc, out, err = run(capsys, "--json", "cleanup", "--yes")
    assert rc == 0, err
    result = json.loads(out)
    assert result["deleted"] == ["vm-mine-done"]
    assert [o["name"] for o in result["not_deleted"]] == ["vm-mine-unseen"]  # reported, not deleted
    assert names(cloud) == {"vm-bob-live", "vm-alice-done", "vm-mine-unseen"}

    rc, out, err = run(capsys, "--json", "cleanup", "--all-owners", "--yes")
    assert rc == 0, err
    assert json.loads(out)["deleted"] == ["vm-alice-done"]
    assert names(cloud) == {"vm-bob-live", "vm-mine-unseen"}  # bob's run is alive in his bucket


# --------------------------------------------------------------------------- logs --follow
def test_logs_follow_never_deletes_the_vm_a_manifest_names_unless_it_is_that_runs(cloud, capsys):
    """Anyone who can write the bucket can write a manifest: it names a VM, the VM's own labels
    decide."""
    s = resolve()
    gcs = cloud.storage_client()
    bucket = gcs.lookup_bucket(s.bucket) or gcs.create_bucket(s.bucket)
    foreign(cloud, "prod-db", labels={"team": "data"})
    foreign(cloud, "other-run-vm", labels={"managed-by": "ferry", "ferry-owner": owner(), "ferry-run": "someone-else"})
    for rid, vm in (("selftest-20250101-000000-evl1", "prod-db"), ("selftest-20250101-000000-evl2", "other-run-vm")):
        prod = _instances_client(cloud).get(project="ferry-local", zone=ZONE, instance=vm)
        bucket.blob(f"runs/{rid}/manifest.json").upload_from_string(json.dumps(
            {"run_id": rid, "vm": vm, "zone": ZONE, "vm_id": str(prod.id), "vm_created_by_run": True}))
        _status(bucket, rid, "succeeded")
        bucket.blob(f"runs/{rid}/logs/output.log").upload_from_string("done\n")
        rc, out, err = run(capsys, "logs", rid, "--follow")
        assert rc == 0 and out == "done\n", err
        assert "not deleting" in err
    assert names(cloud) == {"prod-db", "other-run-vm"}


# --------------------------------------------------------------------------- organization policies
@pytest.mark.parametrize("policy,needle", [("disableGuestAttributesAccess", "guest attributes are disabled"),
                                           ("requireOsLogin", "OS Login")])
def test_an_org_policy_that_blocks_ssh_is_said_at_once_and_the_vm_deleted(cloud, capsys, policy, needle):
    """Guest attributes off (no host key to pin) or OS Login enforced (ssh-keys ignored): `up`
    says which at once, instead of waiting minutes for SSH with a hint naming neither."""
    cloud.control.set_policies(**{policy: True})
    try:
        t0 = time.monotonic()
        rc, _, err = run(capsys, "up", "--gpu", "t4", "--name", "policed")
        assert rc == 3 and needle in err, err
        assert time.monotonic() - t0 < 25
        assert not names(cloud)
    finally:
        cloud.control.set_policies(**{policy: False})
