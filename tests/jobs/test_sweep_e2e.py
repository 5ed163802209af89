"""`sweep` end to end on the local backend: the official google-cloud-batch client against the
local Cloud Batch, whose tasks run on real local VMs; the real runner in each task. No mocks."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # pytest's importlib mode: no sys.path magic
from runhelp import cli, cli_bg, cloud, jget, text, vms, wait_for  # noqa: E402,F401

DATA = os.environ.get("FERRY_DATA_SOURCE")


def sweep_ids(cloud):
    from jobs import sweep

    return sweep.list_sweep_ids(cloud.bucket)


def task_status(cloud, sid, i):
    return jget(cloud.bucket, f"sweeps/{sid}/tasks/{i}/status.json")


def max_running(tasks) -> int:
    """The most tasks RUNNING at one moment, from their status events."""
    spans = []
    for task in tasks:
        events = sorted(task.status.status_events, key=lambda e: e.event_time.timestamp())
        start = None
        for e in events:
            state = getattr(e.task_state, "name", str(e.task_state))
            if state == "RUNNING" and start is None:
                start = e.event_time.timestamp()
            elif state in ("SUCCEEDED", "FAILED") and start is not None:
                spans.append((start, e.event_time.timestamp()))
                start = None
    points = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans], key=lambda p: (p[0], p[1]))
    now = best = 0
    for _, d in points:
        now += d
        best = max(best, now)
    return best


def test_six_task_sweep_three_at_once_and_its_report(cloud, tmp_path):
    from google.cloud import batch_v1  # noqa: F401

    from infra import clients
    from runhelp import settings

    r = cli(cloud, "sweep", SELFTEST_JOB, "--set", "epochs=2,3", "--set", "sleep=0,0.1,0.2", "--parallel", "3",
            timeout=300)
    assert r.returncode == 0, r.stderr
    sid, = sweep_ids(cloud)
    manifest = jget(cloud.bucket, f"sweeps/{sid}/manifest.json")
    assert len(manifest["tasks"]) == 6 and manifest["grid"] == {"epochs": ["2", "3"], "sleep": ["0", "0.1", "0.2"]}
    for i in range(6):
        st = task_status(cloud, sid, i)
        assert st["state"] == "succeeded", st
        lines = text(cloud.bucket, f"sweeps/{sid}/tasks/{i}/metrics.jsonl").splitlines()
        assert len(lines) == manifest["tasks"][i]["params"]["epochs"]
    client = clients.batch(settings())
    tasks = list(client.list_tasks(parent=f"{manifest['batch_job']}/taskGroups/group0"))
    assert len(tasks) == 6 and max_running(tasks) <= 3
    assert vms() == {}

    cloud.control.clear_requests()
    r = cli(cloud, "sweep", "status", sid, "--json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)["tasks"]
    assert [row["state"] for row in rows] == ["succeeded"] * 6
    best = {1.0 - 1 / (2 * int(manifest["tasks"][row["index"]]["params"]["epochs"])) for row in rows}
    assert {round(row["best_accuracy"], 4) for row in rows} == {round(b, 4) for b in best}  # from the rows alone
    storage = [q for q in cloud.control.requests() if q["service"] == "storage"]
    assert len(storage) <= 4, [q["path"] for q in storage]  # bucket, manifest, one listing: not 2 reads per task
    dest = tmp_path / "pulled"
    r = cli(cloud, "sweep", "pull", sid, "--to", str(dest))
    assert r.returncode == 0, r.stderr
    md = (dest / "report.md").read_text()
    assert "75.00" in md and "83.33" in md  # selftest's best accuracy: 1 - 1/(2 epochs)
    assert not list(dest.rglob("checkpoints")) and not (dest / "code.tar.gz").exists()

    r = cli(cloud, "sweeps")
    assert sid in r.stdout
    r = cli(cloud, "sweep", "logs", sid, "1")
    assert r.returncode == 0 and "selftest end: exit 0" in r.stdout
    for args, needle in ((["logs", sid, "9"], "no task 9"), (["status", "selftest-20250101-000000-abcd"], "unknown sweep"),
                         (["cancel", "nonsense"], "not a sweep id")):
        r = cli(cloud, "sweep", *args)
        assert r.returncode == 2 and needle in r.stderr, r.stderr


SELFTEST_JOB = "selftest"


def test_preempted_task_is_retried_and_resumes_from_its_checkpoint(cloud):
    proc = cli_bg(cloud, "sweep", SELFTEST_JOB, "--spot", "--set", "epochs=25", "--set", "message=a,b",
                  "--set", "sleep=0.15")
    sid = wait_for(lambda: (ids := sweep_ids(cloud)) and ids[0], 60, "the sweep")

    def running_a_while():
        st = task_status(cloud, sid, 0)
        return st.get("state") == "running" and len(text(cloud.bucket, f"sweeps/{sid}/tasks/0/metrics.jsonl").splitlines()) >= 4
    wait_for(running_a_while, 120, "task 0 to run 4 epochs")
    cloud.control.preempt_batch_task("us-central1", f"ferry-{sid}", 0)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    st = task_status(cloud, sid, 0)
    assert st["state"] == "succeeded" and len(st["segments"]) == 2, st
    assert st["segments"][1]["resumed_from"]
    lines = [json.loads(x) for x in text(cloud.bucket, f"sweeps/{sid}/tasks/0/metrics.jsonl").splitlines()]
    assert [m["epoch"] for m in lines] == list(range(25))
    log = text(cloud.bucket, f"sweeps/{sid}/tasks/0/logs/output.log")
    assert all(len(re.findall(rf"^epoch {e} loss", log, re.M)) == 1 for e in range(25))
    assert vms() == {}


def test_cancel_leaves_no_vm_and_dry_run_calls_nothing(cloud):
    cloud.control.clear_requests()
    r = cli(cloud, "sweep", SELFTEST_JOB, "--set", "epochs=2,3", "--dry-run")
    assert r.returncode == 0, r.stderr
    assert '"taskCount": "2"' in r.stdout and "RETRY_TASK" in r.stdout and "50001" in r.stdout
    assert '"taskCountPerNode": "1"' in r.stdout  # one task per VM (and so per GPU)
    mutating = [q for q in cloud.control.requests() if q.get("method") not in ("GET", None)
                and q.get("service") in ("batch", "compute", "storage")]
    assert mutating == [] and sweep_ids(cloud) == []

    r = cli(cloud, "sweep", SELFTEST_JOB, "--set", "epochs=400,401", "--set", "sleep=0.2", "--detach")
    assert r.returncode == 0, r.stderr
    sid, = sweep_ids(cloud)
    wait_for(lambda: any(v.status == "RUNNING" for v in vms().values()), 60, "a task VM")
    r = cli(cloud, "sweep", "cancel", sid, timeout=180)
    assert r.returncode == 0 and "cancelled" in r.stderr, r.stderr
    wait_for(lambda: vms() == {}, 60, "no VMs")


def test_bad_grids_submit_nothing(cloud):
    for args, needle in ((["--set", "sleep=5..1"], "empty range"), (["--set", "epochs="], "empty value"),
                         (["--set", "speed=1"], "unknown parameter"), (["--set", "epochs=x,2"], "whole number"),
                         (["--parallel", "0"], "--parallel 0"), (["--set", "epochs=0..2000"], "at most 1000"),
                         (["--set", "epochs=1,1"], "listed twice")):
        r = cli(cloud, "sweep", SELFTEST_JOB, *args)
        lines = [line for line in r.stderr.strip().splitlines() if not line.startswith("backend: local")]
        assert r.returncode == 2 and needle in r.stderr and len(lines) == 1, (args, r.stderr)
    assert sweep_ids(cloud) == [] and vms() == {}


@pytest.mark.slow
@pytest.mark.skipif(not DATA or not Path(DATA, "mnist").is_dir(), reason="FERRY_DATA_SOURCE with mnist/ not set")
def test_q6_sweep_over_three_seeds_reports_mean_and_spread(cloud, tmp_path):
    r = cli(cloud, "sweep", "q6", "--set", "seed=0..2", "--set", "epochs=2", "--set", "train_samples=600",
            "--set", "test_samples=200", "--set", "train_per_class=6", "--set", "test_per_class=3",
            "--set", "image_size=16", "--parallel", "3", timeout=600)
    assert r.returncode == 0, r.stderr
    sid, = sweep_ids(cloud)
    r = cli(cloud, "sweep", "pull", sid, "--to", str(tmp_path / "q6"))
    assert r.returncode == 0, r.stderr
    md = (tmp_path / "q6" / "report.md").read_text()
    assert "±" in md and "NN+SVM on SceneRec" in md and "significant" in md
    assert vms() == {}
