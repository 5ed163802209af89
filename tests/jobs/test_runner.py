"""The on-VM runner as a subprocess against an in-process Cloud Storage emulator and a
real (local) metadata server: states, complete logs, flush on exit/SIGTERM/preemption."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jobs import catalog, datasets, params

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def metadata():
    from infra.local.vm.metadata import MetadataServer, MetadataState

    state = MetadataState("vm-1", "us-central1-a", "ferry-local", {})
    server = MetadataServer(state)
    server.start()
    yield state, server.host
    server.stop()


@pytest.fixture
def vm_home(tmp_path):
    home = tmp_path / "vm"
    code = home / "ferry" / "code"
    code.mkdir(parents=True)
    shutil.copy(REPO / "jobs" / "runner.py", code / "ferry_runner.py")
    shutil.copy(REPO / "jobs" / "selftest.py", code / "ferry_selftest.py")
    return home


def prepare(home: Path, run_id: str, overrides=(), datasets_=(), **extra) -> Path:
    job = catalog.get("selftest")
    values = params.resolve(job, overrides)
    run_dir = f"ferry/runs/{run_id}"
    argv = params.argv(job, values, {"out": f"{run_dir}/out", "data": "ferry/data", "code": "ferry/code", "run_id": run_id})
    (home / run_dir).mkdir(parents=True)
    p = {"run_id": run_id, "bucket": "ferry-test", "project": "ferry-local", "argv": argv, "datasets": list(datasets_),
         "upload_interval": 0.5, "heartbeat_interval": 1.0, "kill_grace": 2}
    p.update(extra)
    (home / run_dir / "params.json").write_text(json.dumps(p))
    return home / run_dir


def env_for(gcs_url, meta_host):
    env = dict(os.environ, STORAGE_EMULATOR_HOST=gcs_url, GCE_METADATA_HOST=meta_host)
    env.pop("PYTHONPATH", None)
    return env


def runner(home, *args, env, **kw):
    return subprocess.Popen([sys.executable, "ferry/code/ferry_runner.py", *args], cwd=home, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


def blob_text(bucket, name):
    return bucket.blob(name).download_as_bytes().decode()


def wait_for(pred, timeout=20.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError("timed out")


def test_success_uploads_complete_log_metrics_summary(gcs, metadata, vm_home):
    url, bucket = gcs
    run_dir = prepare(vm_home, "selftest-20250101-000000-aaaa", ["epochs=3", "lines=500"])
    p = runner(vm_home, "serve", str(run_dir.relative_to(vm_home)), env=env_for(url, metadata[1]))
    assert p.wait(30) == 0, p.stderr.read()
    status = json.loads(blob_text(bucket, "runs/selftest-20250101-000000-aaaa/status.json"))
    assert status["state"] == "succeeded" and status["exit_code"] == 0
    assert status["started"] and status["ended"] and status["host"]
    log = blob_text(bucket, "runs/selftest-20250101-000000-aaaa/logs/output.log")
    lines = log.splitlines()
    assert [l for l in lines if l.startswith("line ")] == [f"line {i}" for i in range(500)]
    assert "selftest to stderr" in log and lines[-1] == "selftest end: exit 0"
    metrics = blob_text(bucket, "runs/selftest-20250101-000000-aaaa/metrics.jsonl").splitlines()
    assert [json.loads(m)["epoch"] for m in metrics] == [0, 1, 2]
    assert json.loads(blob_text(bucket, "runs/selftest-20250101-000000-aaaa/summary.json"))["best_test_accuracy"] > 0
    assert blob_text(bucket, "runs/selftest-20250101-000000-aaaa/artifacts/message.txt") == "hello"
    assert json.loads((run_dir / "status.json").read_text())["state"] == "succeeded"


def test_failure_is_recorded(gcs, metadata, vm_home):
    url, bucket = gcs
    run_dir = prepare(vm_home, "selftest-20250101-000000-bbbb", ["exit_code=3"])
    p = runner(vm_home, "serve", str(run_dir), env=env_for(url, metadata[1]))
    assert p.wait(30) == 0
    status = json.loads(blob_text(bucket, "runs/selftest-20250101-000000-bbbb/status.json"))
    assert status["state"] == "failed" and status["exit_code"] == 3
    assert "selftest end: exit 3" in blob_text(bucket, "runs/selftest-20250101-000000-bbbb/logs/output.log")


def test_start_detaches_and_follow_streams_until_the_end(gcs, metadata, vm_home):
    url, bucket = gcs
    run_dir = prepare(vm_home, "selftest-20250101-000000-cccc", ["epochs=4", "sleep=0.2"])
    env = env_for(url, metadata[1])
    start = runner(vm_home, "start", "ferry/runs/selftest-20250101-000000-cccc", env=env)
    out, err = start.communicate(timeout=10)
    assert start.returncode == 0, err
    pid = int(out.decode().strip())
    follow = runner(vm_home, "follow", "ferry/runs/selftest-20250101-000000-cccc", env=env)
    out, _ = follow.communicate(timeout=30)
    assert follow.returncode == 0
    assert out.decode() == (run_dir / "output.log").read_text()
    assert "selftest end: exit 0" in out.decode()
    wait_for(lambda: not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z")
    # resume from an offset: only the rest
    follow = runner(vm_home, "follow", "ferry/runs/selftest-20250101-000000-cccc", "--offset", "10", env=env)
    assert follow.communicate(timeout=10)[0].decode() == (run_dir / "output.log").read_text()[10:]


@pytest.mark.parametrize("how,expected", [("cancel", "cancelled"), ("shutdown", "lost"), ("preempt", "preempted")])
def test_cancel_shutdown_and_preemption_flush_and_stop(gcs, metadata, vm_home, how, expected):
    """`cancel` is the user's; a bare SIGTERM is the VM shutting down under the job (deleted or
    stopped: lost, never "the job failed"); preemption is what the metadata server says."""
    url, bucket = gcs
    state, host = metadata
    rid = f"selftest-20250101-000000-{ {'cancel': 'dddd', 'shutdown': 'dddx', 'preempt': 'eeee'}[how]}"
    run_dir = prepare(vm_home, rid, ["epochs=1000", "sleep=0.05"])
    env = env_for(url, host)
    p = runner(vm_home, "serve", str(run_dir), env=env)
    wait_for(lambda: "epoch 5 " in (run_dir / "output.log").read_text() if (run_dir / "output.log").exists() else False)
    (run_dir / "runner.pid").write_text(str(p.pid))
    if how == "cancel":
        assert runner(vm_home, "cancel", str(run_dir), env=env).wait(10) == 0
    elif how == "shutdown":
        p.send_signal(signal.SIGTERM)
    else:
        state.update(preempted="TRUE")
    assert p.wait(20) == 0
    status = json.loads(blob_text(bucket, f"runs/{rid}/status.json"))
    assert status["state"] == expected, status
    log = blob_text(bucket, f"runs/{rid}/logs/output.log")
    assert log == (run_dir / "output.log").read_text()  # everything the job printed is in the bucket
    assert "epoch 5 " in log


def test_a_job_killed_by_the_vm_shutting_down_is_lost_not_failed(gcs, metadata, vm_home):
    """The VM's shutdown signals every process at once: the job may die before the runner
    hears its own SIGTERM. That is still the VM going away, not the job failing."""
    url, bucket = gcs
    rid = "selftest-20250101-000000-kill"
    run_dir = prepare(vm_home, rid, ["epochs=1000", "sleep=0.05"])
    p = runner(vm_home, "serve", str(run_dir), env=env_for(url, metadata[1]))
    wait_for(lambda: "epoch 3 " in (run_dir / "output.log").read_text() if (run_dir / "output.log").exists() else False)
    job = [int(x) for x in subprocess.run(["pgrep", "-f", "ferry_selftest.py"], capture_output=True, text=True).stdout.split()
           if int(x) != p.pid]
    for pid in job:
        os.kill(pid, signal.SIGTERM)
    time.sleep(0.3)
    p.send_signal(signal.SIGTERM)
    assert p.wait(20) == 0
    status = json.loads(blob_text(bucket, f"runs/{rid}/status.json"))
    assert status["state"] == "lost" and "shut down" in status["message"], status


def test_a_bucket_it_cannot_write_fails_the_run_in_seconds(metadata, vm_home, tmp_path):
    """The runner proves it can write the run's folder before the job starts."""
    rid = "selftest-20250101-000000-nobk"
    run_dir = prepare(vm_home, rid, ["epochs=3"])
    env = dict(env_for("http://127.0.0.1:9", metadata[1]))  # nothing listens there
    t0 = time.monotonic()
    p = runner(vm_home, "serve", str(run_dir), env=env)
    assert p.wait(60) == 0
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "failed" and "cannot write to gs://ferry-test/" in status["message"], status
    assert status["started"] is None  # the job never ran
    assert time.monotonic() - t0 < 30


def test_datasets_are_staged_checked_and_skipped_when_present(gcs, metadata, vm_home, tmp_path):
    url, bucket = gcs
    src = tmp_path / "src" / "15scene"
    for split in ("train", "test"):
        (src / split / "Coast").mkdir(parents=True)
        (src / split / "Coast" / "image_0001.jpg").write_bytes(os.urandom(100))
    manifest = datasets.push(bucket, "15scene", tmp_path / "src", progress=lambda s: None)
    assert [o["name"] for o in manifest["objects"]] == ["train.tar", "test.tar"]
    assert datasets.present(bucket, "15scene")
    env = env_for(url, metadata[1])
    for rid in ("selftest-20250101-000000-ffff", "selftest-20250101-000000-gggg"):
        run_dir = prepare(vm_home, rid, ["epochs=1"], datasets_=["15scene"])
        assert runner(vm_home, "serve", str(run_dir), env=env).wait(30) == 0
        assert json.loads((run_dir / "status.json").read_text())["state"] == "succeeded"
    staged = vm_home / "ferry" / "data" / "15scene" / "test" / "Coast" / "image_0001.jpg"
    assert staged.read_bytes() == (src / "test" / "Coast" / "image_0001.jpg").read_bytes()
    log2 = (vm_home / "ferry/runs/selftest-20250101-000000-gggg/output.log").read_text()
    assert "already staged" in log2


def test_a_growing_log_costs_its_final_size_in_uploads_not_size_times_syncs(gcs, metadata, vm_home):
    """The log and the metrics are appended in the bucket (compose), not re-sent whole every
    sync: bytes uploaded for them stay within 1.2x of their final size."""
    url, bucket = gcs
    rid = "selftest-20250101-000000-grow"
    run_dir = prepare(vm_home, rid, ["epochs=80", "sleep=0.05", "lines=3000"], upload_interval=0.1)
    p = runner(vm_home, "serve", str(run_dir), env=env_for(url, metadata[1]))
    assert p.wait(60) == 0, p.stderr.read()
    status = json.loads(blob_text(bucket, f"runs/{rid}/status.json"))
    assert status["state"] == "succeeded"
    log = blob_text(bucket, f"runs/{rid}/logs/output.log")
    assert log == (run_dir / "output.log").read_text()  # one complete object, byte for byte
    metrics = blob_text(bucket, f"runs/{rid}/metrics.jsonl")
    assert metrics == (run_dir / "out" / "metrics.jsonl").read_text()
    sent = status["uploaded_bytes"]
    assert sent["logs/output.log"] <= 1.2 * len(log.encode()), (sent, len(log))
    assert sent["metrics.jsonl"] <= 1.2 * len(metrics.encode()), (sent, len(metrics))
    assert not [b.name for b in bucket.client.list_blobs(bucket, prefix=f"runs/{rid}/.chunks/")]
