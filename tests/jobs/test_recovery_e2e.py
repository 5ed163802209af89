"""Spot runs that survive preemption, end to end on the local backend: real VMs, preemption
through the control interface (the metadata server's notice, then the VM stopped), the real
runner, checkpoints through the bucket, a new VM resuming. No mocks."""

from __future__ import annotations

import json
import os
import re
import sys
import zipfile
import io
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # pytest's importlib mode: no sys.path magic
from runhelp import SELFTEST, cli, cli_bg, cloud, jget, run_ids, text, vms, wait_for  # noqa: E402,F401

DATA = os.environ.get("FERRY_DATA_SOURCE")


def status(cloud, run_id):
    return jget(cloud.bucket, f"runs/{run_id}/status.json")


def metrics(cloud, run_id):
    return [json.loads(line) for line in text(cloud.bucket, f"runs/{run_id}/metrics.jsonl").splitlines()]


def the_run(cloud, proc):
    def found():
        if proc.poll() is not None:
            raise AssertionError(f"run ended early: {proc.stderr.read()}")
        ids = run_ids(cloud.bucket)
        return ids[0] if ids else None
    return wait_for(found, 60, "the run's record")


def preempt_after(cloud, proc, run_id, segment: int, epochs_done: int, timeout=90):
    """Preempt segment `segment`'s VM once the bucket shows `epochs_done` epochs of the job."""
    def ready():
        if proc.poll() is not None:
            raise AssertionError(f"run ended early: {proc.stderr.read()}")
        st = status(cloud, run_id)
        segs = st.get("segments") or []
        if st["state"] != "running" or len(segs) != segment + 1 or segs[-1].get("ended"):
            return None
        done = len(metrics(cloud, run_id))
        return segs[-1] if done >= epochs_done else None
    seg = wait_for(ready, timeout, f"segment {segment} to reach epoch {epochs_done}")
    cloud.control.preempt(seg["zone"], seg["vm"], grace_s=3)
    return seg


def test_spot_selftest_preempted_twice_finishes_as_one_run(cloud):
    proc = cli_bg(cloud, "run", SELFTEST, "--spot", "--set", "epochs=30", "--set", "sleep=0.15")
    run_id = the_run(cloud, proc)
    first = preempt_after(cloud, proc, run_id, 0, 5)
    second = preempt_after(cloud, proc, run_id, 1, 15)
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err
    st = status(cloud, run_id)
    assert st["state"] == "succeeded"
    segs = st["segments"]
    assert [s["ended_by"] for s in segs] == ["preempted", "preempted", "succeeded"]
    assert [s["vm"] for s in segs[:2]] == [first["vm"], second["vm"]] and len({s["vm"] for s in segs}) == 3
    assert all(s["spot"] and s["cost"] >= 0 and s["on_demand_per_hour"] > s["price_per_hour"] for s in segs)
    assert segs[1]["resumed_from"] and segs[2]["resumed_from"] > segs[1]["resumed_from"]
    # one metrics line per epoch, none missing, none twice
    assert [m["epoch"] for m in metrics(cloud, run_id)] == list(range(30))
    log = text(cloud.bucket, f"runs/{run_id}/logs/output.log")
    for e in range(30):
        assert len(re.findall(rf"^epoch {e} loss", log, re.M)) == 1, (e, log)
    assert log.count("=== segment 2:") == 1 and log.count("=== segment 3:") == 1
    assert log.count("[ferry] preempted") == 2
    assert out == log  # what the terminal saw is the run's one log
    assert "recovered 2 time(s)" in err and "on demand" in err
    # the bucket keeps every checkpoint; the manifest counts the recoveries and the whole cost
    ckpts = [b.name for b in cloud.bucket.list_blobs(prefix=f"runs/{run_id}/checkpoints/")]
    assert len(ckpts) == 30
    m = jget(cloud.bucket, f"runs/{run_id}/manifest.json")
    assert m["recoveries"] == 2 and m["cost_estimate"] == pytest.approx(sum(s["cost"] for s in segs), abs=1e-6)
    assert vms() == {}


def test_resume_a_cancelled_run_and_refusals(cloud):
    import signal

    proc = cli_bg(cloud, "run", SELFTEST, "--set", "epochs=20", "--set", "sleep=0.2")
    run_id = the_run(cloud, proc)
    wait_for(lambda: len(metrics(cloud, run_id)) >= 4, 60, "4 epochs")
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=60)
    assert status(cloud, run_id)["state"] == "cancelled" and vms() == {}
    before = text(cloud.bucket, f"runs/{run_id}/logs/output.log")

    r = cli(cloud, "resume", run_id, timeout=120)
    assert r.returncode == 0, r.stderr
    st = status(cloud, run_id)
    assert st["state"] == "succeeded" and [s["ended_by"] for s in st["segments"]] == ["cancelled", "succeeded"]
    assert [m["epoch"] for m in metrics(cloud, run_id)] == list(range(20))
    log = text(cloud.bucket, f"runs/{run_id}/logs/output.log")
    assert log.startswith(before) and r.stdout == log[len(before):]  # only what is new is printed
    assert vms() == {}

    # a finished run, an unknown one, a job without checkpoints: one line, exit 2, nothing changed
    for args, needle in (([run_id], "a finished run cannot be resumed"),
                         (["selftest-20250101-000000-abcd"], "unknown run"),
                         (["nonsense"], "not a run id")):
        r = cli(cloud, "resume", *args)
        lines = [line for line in r.stderr.strip().splitlines() if not line.startswith("backend: local")]
        assert r.returncode == 2 and needle in r.stderr and len(lines) == 1, r.stderr
    assert status(cloud, run_id)["state"] == "succeeded"


def _fake_stopped_run(cloud, run_id, *, code_hash="abc", ckpt_params=None, corrupt_newest=False):
    from trainer import checkpoint

    p = f"runs/{run_id}/"
    cloud.bucket.blob(p + "manifest.json").upload_from_string(json.dumps(
        {"run_id": run_id, "job": "selftest", "params": {"message": "hello", "epochs": 3}, "code_hash": code_hash,
         "argv": ["python3", "x"], "template": "default"}))
    cloud.bucket.blob(p + "status.json").upload_from_string(json.dumps({"state": "preempted"}))
    for step in (1, 2):
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            zf.writestr("meta.json", json.dumps({
                "format": checkpoint.FORMAT, "step": step, "state": {"epoch": step - 1},
                "identity": {"job": "selftest", "params": ckpt_params or {"message": "hello", "epochs": 3},
                             "code_hash": code_hash}}))
        data = buf.getvalue()
        if corrupt_newest and step == 2:
            data = data[:-30]
        cloud.bucket.blob(p + f"checkpoints/{checkpoint.name(step)}").upload_from_string(data)


def test_resume_refuses_checkpoints_of_other_code_or_parameters(cloud):
    cases = ((dict(ckpt_params={"message": "hello", "epochs": 5}), "epochs=5 (checkpoint) vs epochs=3 (run)"),
             (dict(code_hash="abc"), "the code here is now"),
             (dict(corrupt_newest=True, code_hash="abc"), "falling back to ckpt-000001.ckpt"))
    for i, (kw, needle) in enumerate(cases):
        run_id = f"selftest-20250101-00000{i}-abcd"
        _fake_stopped_run(cloud, run_id, **kw)
        r = cli(cloud, "resume", run_id, "--dry-run")
        assert needle in r.stderr, r.stderr
        assert r.returncode == 2, r.stderr
        assert status(cloud, run_id)["state"] == "preempted"
    assert vms() == {}


def test_no_capacity_for_spot_falls_back_to_on_demand(cloud):
    from infra import zones

    for zone in zones.known(True):  # every zone out of capacity once: the spot try in each meets it
        cloud.control.fault("stockout", zone=zone, count=1)
    r = cli(cloud, "run", SELFTEST, "--spot", "--fallback", "on-demand", "--set", "epochs=2", timeout=240)
    assert r.returncode == 0, r.stderr
    assert "no spot capacity" in r.stderr and "--fallback on-demand: creating an on-demand VM instead" in r.stderr
    st = status(cloud, run_ids(cloud.bucket)[0])
    assert st["state"] == "succeeded" and st["segments"][0]["spot"] is False
    assert vms() == {}
    r = cli(cloud, "run", SELFTEST, "--fallback", "on-demand")
    assert r.returncode == 2 and "only a spot run falls back" in r.stderr


@pytest.mark.slow
@pytest.mark.skipif(not DATA or not Path(DATA, "mnist").is_dir(), reason="FERRY_DATA_SOURCE with mnist/ not set")
def test_mnist_stencil_preempted_twice_equals_uninterrupted(cloud, tmp_path):
    sets = ["--set", "epochs=6", "--set", "train_samples=3000", "--set", "test_samples=500", "--set", "seed=3"]
    r = cli(cloud, "run", "mnist-nn", *sets, timeout=300)
    assert r.returncode == 0, r.stderr
    plain = run_ids(cloud.bucket)[0]
    # each epoch held to 1.5 s (results unchanged) so that the preemptions land mid-run
    proc = cli_bg(cloud, "run", "mnist-nn", "--spot", *sets, "--set", "pace=1.5")
    wait_for(lambda: len(run_ids(cloud.bucket)) == 2, 60, "the second run")
    run_id = [i for i in run_ids(cloud.bucket) if i != plain][0]
    preempt_after(cloud, proc, run_id, 0, 3, timeout=240)
    preempt_after(cloud, proc, run_id, 1, 5, timeout=240)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    st = status(cloud, run_id)
    assert st["state"] == "succeeded" and len(st["segments"]) == 3
    timing = {"seconds", "examples_per_s", "eval_seconds"}
    strip = lambda rows: [{k: v for k, v in r.items() if k not in timing} for r in rows]  # noqa: E731
    assert strip(metrics(cloud, plain)) == strip(metrics(cloud, run_id))
    from trainer import checkpoint

    def weights(rid):
        data = cloud.bucket.blob(f"runs/{rid}/checkpoints/{checkpoint.name(6)}").download_as_bytes()
        path = tmp_path / f"{rid}.ckpt"
        path.write_bytes(data)
        _, arrays, _ = checkpoint.read(path)
        return arrays["W"].tobytes(), arrays["b"].tobytes()
    assert weights(plain) == weights(run_id)
    log = text(cloud.bucket, f"runs/{run_id}/logs/output.log")
    assert all(len(re.findall(rf"\] epoch {e}:", log)) == 1 for e in range(6)) and out == log
    assert vms() == {}


def test_replacement_preempted_while_it_is_set_up_and_a_lost_vm(cloud):
    """The new VM is taken back the moment it runs (during SSH wait or sync): still one run,
    every epoch once. Then an on-demand run whose VM is deleted under it (lost), --recover 1."""
    from infra import provision
    from runhelp import settings

    proc = cli_bg(cloud, "run", SELFTEST, "--spot", "--set", "epochs=16", "--set", "sleep=0.15")
    run_id = the_run(cloud, proc)
    preempt_after(cloud, proc, run_id, 0, 3)
    second = f"ferry-{run_id}-2"
    vm = wait_for(lambda: (v := vms().get(second)) is not None and v.status == "RUNNING" and v, 60, "the replacement")
    cloud.control.preempt(vm.zone, second, grace_s=0)
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err
    st = status(cloud, run_id)
    assert st["state"] == "succeeded" and [m["epoch"] for m in metrics(cloud, run_id)] == list(range(16))
    # taken back while `up` watched it settle: like a stockout, `up` itself tries the next zone;
    # later (SSH wait, sync): a new segment on the next VM
    assert st["segments"][0]["ended_by"] == "preempted" and st["segments"][-1]["ended_by"] == "succeeded"
    assert st["segments"][-1]["vm"] in (second, f"ferry-{run_id}-3"), err
    log = text(cloud.bucket, f"runs/{run_id}/logs/output.log")
    assert all(len(re.findall(rf"^epoch {e} loss", log, re.M)) == 1 for e in range(16)) and out == log
    assert vms() == {}

    proc = cli_bg(cloud, "run", SELFTEST, "--recover", "1", "--set", "epochs=40", "--set", "sleep=0.15")
    wait_for(lambda: len(run_ids(cloud.bucket)) == 2, 60, "the second run")
    lost = [i for i in run_ids(cloud.bucket) if i != run_id][0]
    wait_for(lambda: len(metrics(cloud, lost)) >= 3, 60, "3 epochs")
    seg = status(cloud, lost)["segments"][0]
    provision.delete(settings(), seg["vm"], seg["zone"], provision.Proof(run_id=lost))  # the VM vanishes
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err
    st = status(cloud, lost)
    assert [s["ended_by"] for s in st["segments"]] == ["lost", "succeeded"] and not st["segments"][0]["spot"]
    assert [m["epoch"] for m in metrics(cloud, lost)] == list(range(40))
    assert vms() == {}


@pytest.mark.slow
@pytest.mark.skipif(not DATA or not Path(DATA, "mnist").is_dir(), reason="FERRY_DATA_SOURCE with mnist/ not set")
def test_tf_quickstart_preempted_resumes_with_the_same_metrics(cloud):
    pytest.importorskip("tensorflow")
    sets = ["--set", "epochs=4", "--set", "train_samples=2000", "--set", "test_samples=300", "--set", "deterministic=true"]
    r = cli(cloud, "run", "tf-quickstart", *sets, timeout=300)
    assert r.returncode == 0, r.stderr
    plain = run_ids(cloud.bucket)[0]
    proc = cli_bg(cloud, "run", "tf-quickstart", "--spot", *sets)
    wait_for(lambda: len(run_ids(cloud.bucket)) == 2, 60, "the second run")
    run_id = [i for i in run_ids(cloud.bucket) if i != plain][0]
    preempt_after(cloud, proc, run_id, 0, 1, timeout=240)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    st = status(cloud, run_id)
    assert st["state"] == "succeeded" and len(st["segments"]) == 2 and st["segments"][1]["resumed_from"]
    strip = lambda rows: [{k: v for k, v in r.items() if k not in ("seconds", "examples_per_s", "eval_seconds")} for r in rows]  # noqa: E731
    assert strip(metrics(cloud, plain)) == strip(metrics(cloud, run_id))
    assert "resumed from" in out and vms() == {}


def test_a_resume_that_cannot_get_a_vm_leaves_the_run_resumable(cloud):
    from infra import zones

    proc = cli_bg(cloud, "run", SELFTEST, "--spot", "--recover", "0", "--set", "epochs=40", "--set", "sleep=0.15")
    run_id = the_run(cloud, proc)
    preempt_after(cloud, proc, run_id, 0, 3)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 3 and f"python cli.py resume {run_id}" in err, err
    assert status(cloud, run_id)["state"] == "preempted"
    for zone in zones.known(True):
        cloud.control.fault("stockout", zone=zone)
    r = cli(cloud, "resume", run_id, timeout=180)
    assert r.returncode == 3, r.stderr
    st = status(cloud, run_id)
    assert st["state"] == "preempted" and "resume" in st["message"], st  # not `failed`: still resumable
    cloud.control.clear_faults()
    r = cli(cloud, "resume", run_id, timeout=180)
    assert r.returncode == 0, r.stderr
    assert [m["epoch"] for m in metrics(cloud, run_id)] == list(range(40)) and vms() == {}
