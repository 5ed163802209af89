"""End to end on the local backend: the same code that talks to Google Cloud, over real HTTP
to the local Compute Engine and real SSH to its VMs. One local service for the module."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

import cli
from infra import clients, provision, ssh
from infra.errors import CloudError
from infra.local.testing import ferry_local_cloud
from infra.settings import resolve

ROOT = Path(__file__).resolve().parents[2]
MUTATING = ("POST", "PUT", "PATCH", "DELETE")


@pytest.fixture(scope="module")
def cloud(tmp_path_factory):
    with ferry_local_cloud(tmp_path_factory.mktemp("ferry-home")) as c:
        yield c


@pytest.fixture(autouse=True)
def clean(cloud):
    cloud.control.clear_faults()
    yield
    cloud.control.clear_faults()
    s = resolve()
    provision.delete_many(s, [(v.name, v.zone) for v in provision.list_vms(s)])
    assert not cloud.control.instances()


def run(capsys, *argv):
    rc = cli.run_cli(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def instances(cloud) -> list[dict]:
    return cloud.control.instances()


def mutating_compute_calls(cloud, since: float) -> list:
    return [r for r in cloud.control.requests(since=since)
            if r["method"] in MUTATING and "/compute/v1/" in r["path"] and not r["path"].endswith("/wait")]


def test_up_status_ssh_down_round_trip(cloud, capsys):
    t0 = time.monotonic()
    rc, out, err = run(capsys, "--json", "up", "--gpu", "k80", "--name", "walk")
    assert rc == 0, err
    vm = json.loads(out)
    assert (vm["name"], vm["gpu"], vm["machine_type"], vm["created"]) == ("walk", "k80", "n1-standard-4", True)
    assert "end of life" in err  # the K80 warning, on local it still runs
    assert vm["host_key"].startswith("ssh-ed25519 ") and vm["price_per_hour"] > 0
    auto = datetime.fromisoformat(vm["auto_delete_at"])
    assert timedelta(hours=3.9) < auto - datetime.now(timezone.utc) <= timedelta(hours=4)
    # SSH works with the pinned key ...
    v = provision.get(resolve(), "walk")
    assert v.host_key == vm["host_key"]
    assert ssh.connect(v).run("echo ok", hide=True, in_stream=False).stdout.strip() == "ok"
    # ... and a different host key is refused, never accepted
    other = provision.Vm(**{**v.__dict__, "host_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"})
    with pytest.raises(ssh.SshNotReady, match="host key mismatch|not found in known_hosts|refus"):
        ssh.probe(other, timeout=5)
    # status, in JSON and as a table
    rc, out, _ = run(capsys, "--json", "status")
    rows = json.loads(out)
    assert [r["name"] for r in rows] == ["walk"] and rows[0]["cost_so_far"] > 0 and rows[0]["owner"]
    rc, out, _ = run(capsys, "status")
    assert rc == 0 and "walk" in out and "auto-delete" in out
    # up again reuses it
    rc, out, _ = run(capsys, "--json", "up", "--gpu", "k80", "--name", "walk")
    assert rc == 0 and json.loads(out)["created"] is False and len(instances(cloud)) == 1
    # down, and down again
    rc, _, err = run(capsys, "down", "walk")  # asks first; no terminal here to answer
    assert rc == 2 and "delete VM walk" in err and "--yes" in err and len(instances(cloud)) == 1
    rc, out, _ = run(capsys, "down", "walk", "--yes")
    assert rc == 0 and "walk: deleted" in out
    rc, out, _ = run(capsys, "down", "walk")  # already gone: nothing to ask
    assert rc == 0 and "already gone" in out
    assert not instances(cloud)
    print(f"round trip {time.monotonic() - t0:.2f} s")


def test_stockout_fails_over_to_next_zone_and_honours_zones_available(cloud):
    s = resolve()
    cloud.control.fault("stockout", zone="us-central1-a")
    vm = provision.up(s, gpu="t4", name="so-1")
    assert vm.zone == "us-central1-b"
    cloud.control.fault("stockout", zone="us-central1-c", zones_available="us-east1-c")
    vm = provision.up(s.with_zone("us-central1-c"), gpu="t4", name="so-2")
    assert vm.zone == "us-east1-c"
    assert sorted(i["zone"].rsplit("/", 1)[-1] for i in instances(cloud)) == ["us-central1-b", "us-east1-c"]


def test_regional_quota_moves_to_another_region(cloud):
    cloud.control.fault("quota", region="us-central1", accelerator="nvidia-tesla-t4")
    messages = []
    vm = provision.up(resolve(), gpu="t4", name="quota-1", progress=messages.append)
    assert not vm.zone.startswith("us-central1-")
    assert any("QUOTA_EXCEEDED" in m and "another region" in m for m in messages)


def test_gpus_all_regions_stops_at_once(cloud, capsys):
    cloud.control.fault("quota", accelerator="nvidia-tesla-t4")  # no region: GPUS_ALL_REGIONS
    t = time.time()
    rc, out, err = run(capsys, "up", "--gpu", "t4", "--name", "quota-2")
    assert rc == 3
    line = [l for l in err.splitlines() if l.startswith("error:")][0]
    assert "GPUS_ALL_REGIONS" in line and "request an increase" in line
    inserts = [r for r in cloud.control.requests(since=t) if r["method"] == "POST" and r["path"].endswith("/instances")]
    assert len(inserts) == 1 and not instances(cloud)


def test_stockout_just_after_insert_is_detected_and_fails_over(cloud):
    cloud.control.fault("stockout_after_insert", zone="us-central1-a", after_s=0.1)
    messages = []
    vm = provision.up(resolve(), gpu="t4", name="late-so", progress=messages.append)
    assert vm.zone != "us-central1-a"
    assert any("STOCKOUT" in m for m in messages)
    assert [i["zone"].rsplit("/", 1)[-1] for i in instances(cloud)] == [vm.zone]  # the stopped one is deleted


def test_unknown_zone_is_usage_error_and_creates_nothing(cloud, capsys):
    t = time.time()
    rc, _, err = run(capsys, "--zone", "us-central1-z", "up", "--gpu", "t4")
    assert rc == 2 and "unknown zone 'us-central1-z'" in err and "us-central1-a" in err
    assert not mutating_compute_calls(cloud, t)


def test_ctrl_c_during_up_deletes_the_vm(cloud):
    def interrupt(message):
        if "RUNNING" in message or "answering SSH" in message:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        provision.up(resolve(), gpu="t4", name="ctrl-c", progress=interrupt)
    assert not instances(cloud)


def test_sigint_to_the_cli_during_up_leaves_nothing(cloud):
    cloud.control.fault("slow_operations", delay_s=1.0)
    proc = subprocess.Popen([sys.executable, "cli.py", "up", "--gpu", "t4", "--name", "sigint"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not instances(cloud) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert instances(cloud), "the VM never appeared"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert not instances(cloud)


def test_two_ups_at_once_make_one_vm(cloud):
    cmd = [sys.executable, "cli.py", "--json", "up", "--gpu", "t4", "--name", "twice"]
    procs = [subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    created = sorted(json.loads(out)["created"] for out, _ in results)
    assert created == [False, True]
    assert len(instances(cloud)) == 1


def test_dry_runs_make_no_mutating_call(cloud, capsys):
    s = resolve()
    provision.up(s, gpu="t4", name="keep-me")
    t = time.time()
    for argv in (["up", "--gpu", "t4", "--name", "dry", "--dry-run"], ["down", "--all", "--dry-run"],
                 ["down", "keep-me", "--dry-run"], ["cleanup", "--dry-run"], ["--json", "cleanup", "--dry-run"]):
        rc, out, err = run(capsys, *argv)
        assert rc == 0, (argv, err)
    assert not mutating_compute_calls(cloud, t)
    assert [i["name"] for i in instances(cloud)] == ["keep-me"]


def test_cleanup_deletes_only_what_no_live_run_owns(cloud, capsys):
    s = resolve()
    client = cloud.storage_client()
    bucket = client.bucket(s.bucket)
    if not bucket.exists():
        bucket = client.create_bucket(s.bucket)
    now = datetime.now(timezone.utc)
    bucket.blob("runs/live-run/status.json").upload_from_string(json.dumps({"state": "running", "heartbeat": now.isoformat()}))
    bucket.blob("runs/done-run/status.json").upload_from_string(json.dumps({"state": "succeeded", "heartbeat": now.isoformat()}))
    stale = (now - timedelta(minutes=10)).isoformat()
    bucket.blob("runs/stale-run/status.json").upload_from_string(json.dumps({"state": "running", "heartbeat": stale}))
    # `ferry run` may wait on the cloud for minutes while provisioning: the same rule as `runs` keeps it
    bucket.blob("runs/slow-run/status.json").upload_from_string(json.dumps({"state": "provisioning", "heartbeat": stale}))
    for name, run_id in (("vm-live", "live-run"), ("vm-done", "done-run"), ("vm-stale", "stale-run"),
                         ("vm-slow", "slow-run"), ("vm-new", "not-started-yet"), ("vm-user", None)):
        provision.up(s, gpu="t4", name=name, labels={"ferry-run": run_id} if run_id else None)
    rc, out, err = run(capsys, "--json", "cleanup", "--dry-run")
    assert rc == 0, err
    assert sorted(o["name"] for o in json.loads(out)["orphans"]) == ["vm-done", "vm-stale"]
    rc, out, err = run(capsys, "--json", "cleanup", "--yes")
    assert rc == 0, err
    assert sorted(json.loads(out)["deleted"]) == ["vm-done", "vm-stale"]
    assert sorted(i["name"] for i in instances(cloud)) == ["vm-live", "vm-new", "vm-slow", "vm-user"]


def test_down_all_needs_yes_without_a_terminal(cloud, capsys):
    provision.up(resolve(), gpu="t4", name="all-1")
    rc, _, err = run(capsys, "down", "--all")
    assert rc == 2 and "--yes" in err and len(instances(cloud)) == 1
    rc, out, _ = run(capsys, "--json", "down", "--all", "--yes")
    assert rc == 0 and json.loads(out)["vms"] == [{"name": "all-1", "result": "deleted"}]


def test_api_errors_escaping_a_command_are_one_line_exit_3(cloud, capsys):
    cloud.control.fault("http_error", status=403, count=5, method="GET", path="/aggregated/instances")
    rc, out, err = run(capsys, "status")
    assert rc == 3 and "Traceback" not in err
    assert len([l for l in err.splitlines() if l.startswith("error:")]) == 1


def test_h200_boots_from_hyperdisk_as_gce_requires(cloud):
    """A3 Ultra takes only Hyperdisk: the strict local Compute Engine refuses pd-balanced, as GCE
    does, and ferry maps the template's pd-balanced to hyperdisk-balanced there."""
    from google.cloud import compute_v1

    vm = provision.up(resolve().with_zone("us-central1-b"), gpu="h200", name="h200-1", max_hours=1)
    inst = compute_v1.InstancesClient(**cloud.compute_options()).get(project="ferry-local", zone=vm.zone, instance=vm.name)
    assert inst.machine_type.endswith("/a3-ultragpu-8g")
    disks = compute_v1.DisksClient(**cloud.compute_options()).get(project="ferry-local", zone=vm.zone, disk=vm.name)
    assert disks.type_.endswith("/hyperdisk-balanced")
