"""`python cli.py run` end to end on the local backend: real HTTP (Compute Engine, Cloud
Storage), real SSH to real local VMs, the real runner and trainer. No mocks.

Each test has its own FERRY_HOME and local cloud (stopped after, no process left)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DATA = os.environ.get("FERRY_DATA_SOURCE")


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # pytest's importlib mode: no sys.path magic
from runhelp import (SELFTEST, cli, cli_bg, cloud, env_of, jget, run_ids, running_run, settings, text,  # noqa: E402,F401
                     vms, wait_for)


def test_selftest_run_deletes_its_vm_and_keeps_literal_values(cloud, tmp_path):
    nasty = "'; touch pwned #`touch pwned2`$(touch pwned3)\"; rm -rf ~ ${HOME}"
    r = cli(cloud, "run", SELFTEST, "--set", f"message={nasty}", "--set", "epochs=3", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    run_id = run_ids(cloud.bucket)[0]
    p = f"runs/{run_id}/"
    assert text(cloud.bucket, p + "artifacts/message.txt") == nasty
    assert f"message={nasty!r}" in r.stdout  # streamed to the terminal
    assert jget(cloud.bucket, p + "status.json")["state"] == "succeeded"
    m = jget(cloud.bucket, p + "manifest.json")
    assert m["params"]["message"] == nasty and m["code_hash"] and m["vm_created_by_run"] and m["vm_deleted"]
    assert m["cost_estimate"] >= 0 and m["ferry_version"]
    assert not list(cloud.home.rglob("pwned*")) and not list(tmp_path.rglob("pwned*"))
    assert vms() == {}
    assert "succeeded" in r.stderr and "best test accuracy 83.33%" in r.stderr
    assert r.stderr.count("backend: local (no GCP project configured") == 1  # said once, first line
    assert r.stderr.startswith("backend: local")

    # runs lists it; pull brings a report home; logs prints the complete log
    r = cli(cloud, "--json", "runs")
    rows = json.loads(r.stdout)
    assert rows[0]["run_id"] == run_id and rows[0]["state"] == "succeeded"
    assert abs(rows[0]["best_accuracy"] - 0.8333) < 1e-3
    r = cli(cloud, "pull", "latest", "--to", str(tmp_path / "pulled"))
    assert r.returncode == 0, r.stderr
    md = (tmp_path / "pulled" / "report.md").read_text()
    assert "83.33%" in md and (tmp_path / "pulled" / "plots" / "loss.png").exists()
    assert (tmp_path / "pulled" / "report.html").exists()
    r = cli(cloud, "logs", run_id)
    assert r.stdout.splitlines()[-1] == "selftest end: exit 0"


def test_failing_job_is_exit_1_with_log_and_no_vm(cloud):
    r = cli(cloud, "run", SELFTEST, "--set", "exit_code=3")
    assert r.returncode == 1, r.stderr
    assert "failed" in r.stderr
    run_id = run_ids(cloud.bucket)[0]
    status = jget(cloud.bucket, f"runs/{run_id}/status.json")
    assert status["state"] == "failed" and status["exit_code"] == 3
    assert "selftest end: exit 3" in text(cloud.bucket, f"runs/{run_id}/logs/output.log")
    assert vms() == {}


def test_existing_vm_is_left_up_and_unchanged_code_is_not_resent(cloud):
    from infra import provision

    vm = provision.up(settings(), template="cpu", name="ferry-test-keep")
    for i in range(2):
        r = cli(cloud, "run", SELFTEST)
        assert r.returncode == 0, r.stderr
        assert "using VM ferry-test-keep" in r.stderr
    assert "ferry-test-keep" in vms()
    ids = run_ids(cloud.bucket)
    first, second = (jget(cloud.bucket, f"runs/{i}/manifest.json") for i in reversed(ids[:2]))
    assert first["sync"]["mode"] == "archive" and first["sync"]["bytes"] > 0
    assert second["sync"] == {"mode": "none", "files": 0, "bytes": 0}
    assert first["code_hash"] == second["code_hash"] and second["vm"] == vm.name
    assert not second["vm_created_by_run"]
    assert second["price_per_hour"] > 0 and second["cost_estimate"] > 0  # the job's time on a VM it did not create
    provision.delete(settings(), vm.name, vm.zone)


def test_run_on_a_vm_up_asks_no_compute_api_and_a_stale_pin_falls_back(cloud):
    """A VM brought up from this machine is used through its pinned host key alone: the run
    makes no Compute Engine call. Deleted behind ferry's back, the pin is stale: the run asks
    the API, finds no VM up, and provisions its own."""
    from google.cloud import compute_v1

    from infra import provision
    from infra.local.testing import wait_operation

    vm = provision.up(settings(), template="cpu", name="ferry-test-pinned")
    cloud.control.clear_requests()
    r = cli(cloud, "run", SELFTEST)
    assert r.returncode == 0 and "using VM ferry-test-pinned" in r.stderr, r.stderr
    assert [q for q in cloud.control.requests() if q["service"] == "compute"] == []

    instances = compute_v1.InstancesClient(**cloud.compute_options())
    wait_operation(cloud, instances.delete(project="ferry-local", zone=vm.zone, instance=vm.name))
    r = cli(cloud, "run", SELFTEST)
    assert r.returncode == 0, r.stderr
    assert "provisioning a VM" in r.stderr and "ferry-test-pinned" not in r.stderr
    assert vms() == {}


def test_keep_leaves_the_vm_as_yours_and_the_next_run_uses_it(cloud):
    from infra import provision

    r = cli(cloud, "run", SELFTEST, "--keep")
    assert r.returncode == 0, r.stderr
    kept = vms()
    assert len(kept) == 1
    (name, vm), = kept.items()
    assert vm.status == "RUNNING" and "ferry-run" not in vm.labels  # yours, like a VM from `up`
    r = cli(cloud, "run", SELFTEST)
    assert r.returncode == 0 and f"using VM {name}" in r.stderr, r.stderr
    assert set(vms()) == {name}
    provision.delete(settings(), name, vm.zone)


def test_ssh_dropped_mid_run_the_job_goes_on_and_the_log_is_complete(cloud):
    # Long enough (~8 s) that the drop lands mid-run even on a loaded machine.
    proc = cli_bg(cloud, "run", SELFTEST, "--set", "epochs=160", "--set", "sleep=0.05", "--set", "lines=2000")
    run_id = running_run(cloud, proc)
    vm = jget(cloud.bucket, f"runs/{run_id}/manifest.json")["vm"]
    cloud.control.drop_ssh("us-central1-a", vm)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "SSH connection lost" in err
    log = text(cloud.bucket, f"runs/{run_id}/logs/output.log")
    expected = [f"epoch {e} " for e in range(160)]
    got = [l for l in log.splitlines() if l.startswith("epoch ")]
    assert [g[: len(e)] for g, e in zip(got, expected)] == expected and len(got) == 160
    assert [l for l in log.splitlines() if l.startswith("line ")] == [f"line {i}" for i in range(2000)]
    assert out == log  # the terminal got every line exactly once, in order
    assert vms() == {}


def test_ctrl_c_cancels_the_job_and_deletes_the_vm(cloud):
    proc = cli_bg(cloud, "run", SELFTEST, "--set", "epochs=10000", "--set", "sleep=0.05")
    run_id = running_run(cloud, proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    status = jget(cloud.bucket, f"runs/{run_id}/status.json")
    assert status["state"] == "cancelled"
    log = text(cloud.bucket, f"runs/{run_id}/logs/output.log")
    assert "epoch 2 " in log and "[ferry] cancelled" in log
    assert vms() == {}


def test_preempted_spot_vm_flushes_and_is_exit_3(cloud):
    from infra import provision

    vm = provision.up(settings(), template="spot", name="ferry-test-spot")
    assert vm.spot
    proc = cli_bg(cloud, "run", SELFTEST, "--vm", vm.name, "--set", "epochs=10000", "--set", "sleep=0.05")
    run_id = running_run(cloud, proc)
    cloud.control.preempt(vm.zone, vm.name, grace_s=5)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 3, err
    status = jget(cloud.bucket, f"runs/{run_id}/status.json")
    assert status["state"] == "preempted"
    log = text(cloud.bucket, f"runs/{run_id}/logs/output.log")
    assert "[ferry] preempted" in log and out == log
    provision.delete(settings(), vm.name, vm.zone)


@pytest.mark.parametrize("evil", ["../x", "{tmp}/x"])
def test_pull_refuses_names_escaping_the_folder(cloud, tmp_path, evil):
    rid = "selftest-20250101-000000-evil"
    cloud.bucket.blob(f"runs/{rid}/status.json").upload_from_string(json.dumps({"state": "succeeded"}))
    cloud.bucket.blob(f"runs/{rid}/" + evil.format(tmp=tmp_path)).upload_from_string("owned")
    dest = tmp_path / "a" / "b"
    r = cli(cloud, "pull", rid, "--to", str(dest))
    assert r.returncode == 3 and "escape" in r.stderr, r.stderr
    assert not dest.exists() and not (tmp_path / "a" / "x").exists() and not (tmp_path / "x").exists()


def test_bad_input_is_exit_2_before_anything_is_created(cloud):
    for args, needle in ((["run", "mnist-n"], "mnist-nn"), (["run", "mnist-nn", "--set", "epochs=zero"], "whole number"),
                         (["run", "mnist-nn", "--set", "speed=3"], "unknown parameter"),
                         (["run", "selftest", "--vm", "no-such-vm"], "unknown VM 'no-such-vm'")):
        r = cli(cloud, *args)
        # one line (an unknown VM needs the cloud to tell, which first says which backend it asked)
        lines = [l for l in r.stderr.strip().splitlines() if not l.startswith("backend: local")]
        assert r.returncode == 2 and needle in r.stderr and len(lines) == 1 and lines[0].startswith("error: ")
    assert vms() == {} and run_ids(cloud.bucket) == []


@pytest.mark.slow
@pytest.mark.skipif(not DATA or not Path(DATA, "mnist").is_dir(), reason="FERRY_DATA_SOURCE with mnist/ not set")
def test_mnist_nn_on_real_data(cloud, tmp_path):
    r = cli(cloud, "run", "mnist-nn", "--set", "epochs=3", "--set", "mode=minibatch", timeout=240)
    assert r.returncode == 0, r.stderr
    run_id = run_ids(cloud.bucket)[0]
    p = f"runs/{run_id}/"
    assert jget(cloud.bucket, "datasets/mnist/manifest.json")["files"] == 4
    metrics = [json.loads(l) for l in text(cloud.bucket, p + "metrics.jsonl").splitlines()]
    assert [m["epoch"] for m in metrics] == [0, 1, 2] and max(m["test_accuracy"] for m in metrics) > 0.85
    log = text(cloud.bucket, p + "logs/output.log")
    assert all(f"epoch {e}:" in log for e in range(3)) and "NN on MNIST" in log
    assert r.stdout == log
    assert vms() == {}
    r = cli(cloud, "pull", run_id, "--to", str(tmp_path / "pulled"))
    assert r.returncode == 0, r.stderr
    md = (tmp_path / "pulled" / "report.md").read_text()
    assert "![accuracy](plots/accuracy.png)" in md and "Best test accuracy" in md


@pytest.mark.slow
@pytest.mark.skipif(not DATA or not Path(DATA, "15scene").is_dir(), reason="FERRY_DATA_SOURCE with 15scene/ not set")
def test_q6_report_has_the_course_table(cloud, tmp_path):
    r = cli(cloud, "run", "q6", "--set", "mode=minibatch", "--set", "train_samples=3000", "--set", "test_samples=1000",
            "--set", "train_per_class=20", "--set", "test_per_class=20", timeout=280)
    assert r.returncode == 0, r.stderr
    r = cli(cloud, "pull", "latest", "--to", str(tmp_path / "q6"))
    assert r.returncode == 0, r.stderr
    md = (tmp_path / "q6" / "report.md").read_text()
    for cond in ("NN on MNIST", "NN+SVM on MNIST", "NN on SceneRec", "NN+SVM on SceneRec"):
        assert f"{cond}: " in md and f"| {cond} | " in md
    assert "Epoch 0 loss: " in md and "Epoch 9 loss: " in md and "—" not in md.split("## Q6")[1].split("## Plots")[0]
    assert "Mode: `minibatch`" in md
