"""Every way out of `run` ends with 0 VMs it created and its record final: SIGTERM / SIGHUP,
a detached run nobody follows, a runner killed mid-job, a VM deleted under the job, the local
cloud itself dying. Real processes on the local backend; no mocks of ferry."""

from __future__ import annotations

import os
import signal
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # pytest's importlib mode: no sys.path magic
from runhelp import SELFTEST, cli, cli_bg, cloud, jget, run_ids, running_run, text, vms, wait_for  # noqa: E402,F401

ZONE = "us-central1-a"


def vm_disk(cloud, vm: str):
    return cloud.home / "local" / "compute" / "vms" / "ferry-local" / ZONE / vm


def manifest(cloud, run_id):
    return jget(cloud.bucket, f"runs/{run_id}/manifest.json")


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_sigterm_and_sighup_mid_job_cancel_the_run_and_delete_its_vm(cloud, sig, code):
    proc = cli_bg(cloud, "run", SELFTEST, "--set", "epochs=10000", "--set", "sleep=0.05")
    run_id = running_run(cloud, proc)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert jget(cloud.bucket, f"runs/{run_id}/status.json")["state"] == "cancelled"
    assert "[ferry] cancelled" in text(cloud.bucket, f"runs/{run_id}/logs/output.log")
    assert vms() == {}
    assert "Traceback" not in err


def test_sigterm_while_the_vm_is_being_created_leaves_nothing(cloud):
    cloud.control.fault("slow_operations", delay_s=1.0)
    proc = cli_bg(cloud, "run", SELFTEST)
    wait_for(lambda: cloud.control.instances(), 30, "the VM to appear")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    cloud.control.clear_faults()
    run_id = run_ids(cloud.bucket)[0]
    assert jget(cloud.bucket, f"runs/{run_id}/status.json")["state"] == "cancelled"
    assert vms() == {} and not cloud.control.instances()


def test_a_detached_runs_vm_deletes_itself_when_the_job_ends(cloud):
    cloud.control.clear_requests()
    r = cli(cloud, "run", SELFTEST, "--detach", "--set", "epochs=6", "--set", "sleep=0.3")
    assert r.returncode == 0, r.stderr
    assert "deletes itself" in r.stderr
    run_id = run_ids(cloud.bucket)[0]
    vm = manifest(cloud, run_id)["vm"]
    assert vm in vms()
    wait_for(lambda: jget(cloud.bucket, f"runs/{run_id}/status.json")["state"] == "succeeded", 60, "the job to end")
    ended = time.monotonic()
    wait_for(lambda: not cloud.control.instances(), 30, "the VM to delete itself")
    assert time.monotonic() - ended < 30
    deletes = [q for q in cloud.control.requests() if q["method"] == "DELETE" and q["path"].endswith(f"/instances/{vm}")]
    assert deletes  # through the Compute Engine API, with the VM's own token


def test_a_run_vm_the_api_will_not_delete_powers_itself_off_and_cleanup_deletes_it(cloud):
    r = cli(cloud, "run", SELFTEST, "--detach", "--set", "epochs=2", "--set", "sleep=0.3")
    assert r.returncode == 0, r.stderr
    run_id = run_ids(cloud.bucket)[0]
    vm = manifest(cloud, run_id)["vm"]
    cloud.control.fault("http_error", status=403, method="DELETE", path=f"/instances/{vm}", count=1)
    wait_for(lambda: vms().get(vm) and vms()[vm].status == "TERMINATED", 60, "the VM to power itself off")
    cloud.control.clear_faults()
    r = cli(cloud, "cleanup", "--yes")
    assert r.returncode == 0 and f"{vm}: deleted" in r.stdout, r.stderr
    assert vms() == {}


def test_a_killed_runner_is_noticed_salvaged_and_the_vm_deleted(cloud):
    proc = cli_bg(cloud, "run", SELFTEST, "--set", "epochs=10000", "--set", "sleep=0.05")
    run_id = running_run(cloud, proc)
    vm = manifest(cloud, run_id)["vm"]
    pid = int((vm_disk(cloud, vm) / "ferry" / "runs" / run_id / "runner.pid").read_text())
    os.kill(pid, signal.SIGKILL)  # the OOM killer
    killed = time.monotonic()
    out, err = proc.communicate(timeout=90)
    assert proc.returncode == 3, err
    assert time.monotonic() - killed < 60
    assert "runner on the VM died" in err
    status = jget(cloud.bucket, f"runs/{run_id}/status.json")
    assert status["state"] == "lost" and status.get("salvaged")
    log = text(cloud.bucket, f"runs/{run_id}/logs/output.log")
    assert log.startswith(out) and len(log) >= len(out)  # every line shown (and any after it) is saved
    epochs = [int(l.split()[1]) for l in log.splitlines() if l.startswith("epoch ")]
    assert epochs == list(range(len(epochs))) and len(epochs) > 2
    assert vms() == {}


def test_a_vm_deleted_under_the_job_is_lost_not_failed(cloud):
    from google.cloud import compute_v1

    from infra.local.testing import wait_operation

    client = compute_v1.InstancesClient(**cloud.compute_options())
    for _ in range(3):
        proc = cli_bg(cloud, "run", SELFTEST, "--set", "epochs=10000", "--set", "sleep=0.05")
        run_id = running_run(cloud, proc)
        vm = manifest(cloud, run_id)["vm"]
        wait_operation(cloud, client.delete(project="ferry-local", zone=ZONE, instance=vm))
        _, err = proc.communicate(timeout=90)
        assert proc.returncode == 3, err  # never 1: the job did not fail
        assert jget(cloud.bucket, f"runs/{run_id}/status.json")["state"] == "lost"
        assert vms() == {}


def test_the_local_cloud_dying_mid_run_is_said_within_30_s(cloud):
    proc = cli_bg(cloud, "run", SELFTEST, "--set", "epochs=10000", "--set", "sleep=0.05")
    run_id = running_run(cloud, proc)
    os.kill(cloud.endpoints.pid, signal.SIGKILL)  # the host reboots under every VM
    died = time.monotonic()
    _, err = proc.communicate(timeout=120)
    took = time.monotonic() - died
    assert proc.returncode == 3, err
    assert took < 75, took  # 30 s to decide, then a bounded teardown
    errors = [l for l in err.splitlines() if l.startswith("error:")]
    assert len(errors) == 1 and "unreachable" in errors[0] and f"logs {run_id} --follow" in errors[0], err
    assert "Traceback" not in err and "RetryError" not in err


def test_a_vm_that_cannot_write_the_bucket_fails_the_run_in_seconds_saying_why(cloud):
    """The VM's service account may read Cloud Storage only (devstorage.read_only): the runner
    finds out before the job starts and the run ends at once with the reason, not after 30 min."""
    from google.cloud import compute_v1

    from infra import keys, render, templates
    from infra.local.testing import wait_operation
    from infra.settings import owner

    spec = templates.load("cpu")
    _, pub = keys.ensure_key(cloud.home)
    body = render.body(spec, name="ferry-readonly", zone=ZONE, owner=owner(), ssh_keys=keys.ssh_keys_metadata(pub))
    body["serviceAccounts"][0]["scopes"] = ["https://www.googleapis.com/auth/devstorage.read_only"]
    client = compute_v1.InstancesClient(**cloud.compute_options())
    wait_operation(cloud, client.insert(project="ferry-local", zone=ZONE, instance_resource=render.instance(body)))
    t0 = time.monotonic()
    r = cli(cloud, "run", SELFTEST, "--vm", "ferry-readonly", timeout=120)
    assert r.returncode == 3, r.stderr
    assert time.monotonic() - t0 < 30
    assert "cannot write to gs://ferry-local/runs/" in r.stderr and "insufficient" in r.stderr, r.stderr
    run_id = run_ids(cloud.bucket)[0]
    status = jget(cloud.bucket, f"runs/{run_id}/status.json")
    assert status["state"] == "failed" and status["started"] is None  # the job never ran
    assert "ferry-readonly" in vms()  # not ferry's run VM: left as it was


def test_a_run_killed_while_provisioning_leaves_a_vm_that_powers_itself_off(cloud):
    """kill -9 is the one way out `run` cannot catch: the VM it made, never claimed by a runner,
    powers itself off after its idle timeout (nothing bills) and `cleanup` deletes it."""
    proc = cli_bg(cloud, "run", SELFTEST)
    wait_for(lambda: cloud.control.instances() and cloud.control.instances()[0]["status"] == "RUNNING", 30,
             "the VM to run")
    cloud.control.fault("slow_calls", service="storage", method="POST", delay_s=60, count=1)  # hold `syncing`
    time.sleep(0.5)
    proc.kill()
    proc.communicate(timeout=30)
    cloud.control.clear_faults()
    vm = cloud.control.instances()[0]["name"]
    wait_for(lambda: vms().get(vm) and vms()[vm].status == "TERMINATED", 60, "the idle VM to power off")
    r = cli(cloud, "cleanup", "--yes")
    assert r.returncode == 0 and f"{vm}: deleted" in r.stdout, r.stderr
    assert vms() == {}
