#!/usr/bin/env python3
"""Benchmark `python cli.py sweep` on the local backend (no timing is asserted anywhere).

    .venv/bin/python bench/sweep.py [--tasks N] [--parallel P] [--sequential K] [--quick]
                                    [--sizes 10,50,200] [--repeat R] [--epochs E] [--sleep S] [-v]

Starts the local cloud (its local Cloud Batch included) in its own temporary FERRY_HOME
(timing profile from FERRY_LOCAL_TIMING, default `fast`) and prints:
  1. throughput: one sweep of N (default 12) tasks of a ~2 s selftest job (`--set epochs=10
     --set sleep=0.2 --set message=m0,...`), --parallel P (default 4), against N sequential
     `cli.py run selftest` runs with the same parameters (each on a fresh VM, as every sweep
     task is): wall times, the ratio (ideal P x) and the sweep's wall time against its ideal
     (waves x the job's own time); with where the sweep's time went (staging and submit, Batch
     job created -> final, final -> the command's exit). The sweep gets --yes (12 tasks x the
     template's 4 h limit pass the $25 confirmation, even on the local backend). --sequential
     K makes only K of the sequential runs and extrapolates their mean to N (said so);
     --quick: 6 tasks, --parallel 3, 3 sequential runs.
  2. scheduling overhead per task, from the Batch API's task status events (the official
     google-cloud-batch client on the local Batch, tasks of the sweep's `group0`) and the
     task's records in the bucket (status.json `started`/`ended`, the `t=` stamp of its first
     epoch line in logs/output.log): medians of ASSIGNED -> RUNNING (the VM runs -> Batch sees
     the script start), RUNNING -> the runner's `started` (code fetched, runner up, job
     launched), RUNNING -> the first epoch line (less the job's own first epoch, one sleep),
     the job's own run time (started -> ended) and `ended` -> SUCCEEDED, RUNNING -> SUCCEEDED
     and ASSIGNED -> SUCCEEDED less the job's own time; the job's SCHEDULED -> ASSIGNED for the
     first wave, and the hand-over of a slot (a task's SUCCEEDED -> the next waiting task's
     ASSIGNED: a new VM each time); with -v each task's timeline. A task that failed or was
     retried: its Batch events, status.json, log tail and its VM's console (copied while the
     sweep runs: Batch deletes a task's VM, and so its console, when the task ends).
  3. `cli.py --json sweep status ID` and `cli.py sweep pull ID --to DIR` against the number of
     tasks: sweep records fabricated in the bucket (a copy of the real sweep's manifest with N
     tasks, and for each task a copy of every object a real task has, as the runner wrote
     them: status.json, summary.json, metrics.jsonl, logs/output.log, checkpoints/...) for N in
     --sizes (default 10, 50, 200), whose manifest names a Batch job that does not exist (so
     `status` has no Batch state to show; whether it copes is printed); seconds, ms per task,
     and the marginal ms per task between sizes (the process start is in the first); pull split
     into download (to its `pulled N objects` line) and report; the plain-text `sweep status`
     of the first fabricated sweep is run once too (does it cope without a Batch job); the real
     sweep (Batch job present) as a reference row. The best of --repeat (default 2) runs.
Targets: the sweep approaches P x the sequential runs (it may pass P: each sequential run pays
its own VM, SSH and sync overhead in series, which the sweep's tasks overlap); `sweep status`
and `sweep pull` flat in ms per task (the marginal cost per task not growing with N).
Default run: about 2.5 minutes on 2 cores (--quick: under 1 minute).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

CLOUD_VARS = ("GOOGLE_CLOUD_PROJECT", "CLOUDSDK_CORE_PROJECT", "FERRY_BACKEND", "FERRY_BUCKET", "STORAGE_EMULATOR_HOST")
EPOCH0_RE = re.compile(r"^epoch 0 .*t=(\d+(?:\.\d+)?)\s*$", re.MULTILINE)


def env_for(home: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in CLOUD_VARS}
    env["FERRY_HOME"] = str(home)
    return env


def cli(home: Path, *args: str, timeout: float = 600) -> tuple[subprocess.CompletedProcess, float, float, float]:
    """-> (result, wall seconds, start time.time(), end time.time())."""
    t0, p0 = time.time(), time.perf_counter()
    r = subprocess.run([sys.executable, str(REPO / "cli.py"), *args], cwd=home, env=env_for(home),
                       capture_output=True, text=True, timeout=timeout, check=False)
    return r, time.perf_counter() - p0, t0, time.time()


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else float("nan")


def f2(x, unit: str = " s") -> str:
    return "   n/a" if x is None or math.isnan(x) else f"{x:6.2f}{unit}"


def jget(bucket, name):
    from jobs import runs

    return runs.get_json(bucket, name)


def ts(value) -> float | None:
    from infra.times import parse_time

    t = parse_time(value)
    return t.timestamp() if t else None


def tail(text: str, n: int = 8) -> str:
    return "\n".join("    " + line for line in text.strip().splitlines()[-n:])


# --------------------------------------------------------------------------- 1. throughput
class Consoles:
    """Copies of the task VMs' console logs (startup.log) while the sweep runs: a task VM and
    its log are deleted when its task ends, so a failed task's console is kept only here."""

    def __init__(self, home: Path):
        self.home = home
        self.logs: dict[str, bytes] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self):
        root = self.home / "local" / "compute" / "vms"  # PROJECT/ZONE/VM/startup.log (infra/local/service.py)
        while not self.stop.is_set():
            try:
                paths = list(root.glob("*/*/*/startup.log"))
            except OSError:  # a VM's folder removed under the walk
                paths = []
            for path in paths:
                try:
                    self.logs[path.parent.name] = path.read_bytes()
                except OSError:
                    pass
            self.stop.wait(0.25)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(5)

    def of_task(self, index: int) -> list[tuple[str, list[str]]]:
        return [(name, data.decode(errors="replace").strip().splitlines()[-12:])
                for name, data in sorted(self.logs.items()) if f"-group0-{index}-" in name]


def run_sweep(home: Path, args, messages: list[str]) -> dict | None:
    r, wall, t0, t1 = cli(home, "sweep", "selftest", "--set", f"epochs={args.epochs}", "--set", f"sleep={args.sleep}",
                          "--set", "message=" + ",".join(messages), "--parallel", str(args.parallel), "--yes", timeout=args.timeout)
    m = re.search(r"ferry: sweep (\S+): ", r.stderr)
    if r.returncode != 0:
        print(f"  sweep failed (exit {r.returncode}):\n{tail(r.stderr, 15)}", flush=True)
    if not m:
        return None
    return {"id": m.group(1), "wall": wall, "t0": t0, "t1": t1, "stderr": r.stderr, "rc": r.returncode}


def run_sequential(home: Path, bucket, args, messages: list[str]) -> list[tuple[float, float | None]]:
    """[(wall, the job's own seconds)] of `run selftest` one after another."""
    from jobs import runs

    out = []
    for msg in messages:
        r, wall, _, _ = cli(home, "run", "selftest", "--set", f"epochs={args.epochs}", "--set", f"sleep={args.sleep}",
                            "--set", f"message={msg}", timeout=args.timeout)
        if r.returncode != 0:
            print(f"  run {msg} failed (exit {r.returncode}):\n{tail(r.stderr)}", flush=True)
            continue
        st = jget(bucket, f"runs/{runs.latest(bucket)}/status.json")
        out.append((wall, runs.duration_s(st)))
    return out


# --------------------------------------------------------------------------- 2. scheduling
def task_timeline(batch_tasks, bucket, sweep_id: str) -> list[dict]:
    from google.api_core.exceptions import NotFound

    rows = []
    for task in batch_tasks:
        index = int(task.name.rsplit("/", 1)[-1])
        ev: dict[str, float] = {}
        retried = False
        for e in sorted(task.status.status_events, key=lambda e: e.event_time.timestamp()):
            state = getattr(e.task_state, "name", str(e.task_state))
            if state == "PENDING" and ev:
                retried = True
            ev.setdefault(state, e.event_time.timestamp())
            if state in ("SUCCEEDED", "FAILED"):
                ev[state] = e.event_time.timestamp()  # the last, for a retried task
        pre = f"sweeps/{sweep_id}/tasks/{index}/"
        st = jget(bucket, pre + "status.json") or {}
        try:
            log = bucket.blob(pre + "logs/output.log").download_as_bytes().decode(errors="replace")
        except NotFound:
            log = ""
        m = EPOCH0_RE.search(log)
        details = [f"{e.event_time.timestamp():.3f} {getattr(e.task_state, 'name', e.task_state)}: {e.description}"
                   for e in sorted(task.status.status_events, key=lambda e: e.event_time.timestamp())]
        rows.append({"index": index, "events": ev, "retried": retried, "started": ts(st.get("started")),
                     "batch_events": details, "status": st, "log_tail": log.strip().splitlines()[-6:],
                     "ended": ts(st.get("ended")), "state": st.get("state"),
                     "epoch0": float(m.group(1)) if m else None})
    return sorted(rows, key=lambda r: r["index"])


def diff(a, b):
    return None if a is None or b is None else b - a


def scheduling(rows: list[dict], job, parallel: int, sleep: float) -> dict:
    def of(fn):
        return [fn(r) for r in rows]

    def ev(r, k):
        return r["events"].get(k)

    out = {
        "assigned_running": of(lambda r: diff(ev(r, "ASSIGNED"), ev(r, "RUNNING"))),
        "running_started": of(lambda r: diff(ev(r, "RUNNING"), r["started"])),
        "running_epoch0": of(lambda r: None if r["epoch0"] is None or ev(r, "RUNNING") is None
                             else r["epoch0"] - sleep - ev(r, "RUNNING")),
        "started_epoch0": of(lambda r: None if r["epoch0"] is None or r["started"] is None
                             else r["epoch0"] - sleep - r["started"]),
        "job": of(lambda r: diff(r["started"], r["ended"])),
        "ended_succeeded": of(lambda r: diff(r["ended"], ev(r, "SUCCEEDED"))),
        "running_succeeded": of(lambda r: diff(ev(r, "RUNNING"), ev(r, "SUCCEEDED"))),
        "assigned_succeeded": of(lambda r: diff(ev(r, "ASSIGNED"), ev(r, "SUCCEEDED"))),
    }
    out["overhead"] = [None if a is None or j is None else a - j for a, j in zip(out["assigned_succeeded"], out["job"])]
    scheduled = None
    for e in job.status.status_events:
        if "to SCHEDULED" in e.description:
            scheduled = e.event_time.timestamp()
    assigned = sorted(t for r in rows if (t := ev(r, "ASSIGNED")) is not None)
    finished = sorted(t for r in rows if (t := ev(r, "SUCCEEDED") or ev(r, "FAILED")) is not None)
    out["first_wave"] = [a - scheduled for a in assigned[:parallel]] if scheduled else []
    # the (P+k)-th task to get a VM took the slot the k-th task to end gave back
    out["handover"] = [a - f for a, f in zip(assigned[parallel:], finished)]
    out["retried"] = sum(r["retried"] for r in rows)
    out["not_succeeded"] = [r["index"] for r in rows if r["state"] != "succeeded" or "SUCCEEDED" not in r["events"]]
    return out


# --------------------------------------------------------------------------- 3. status and pull vs N
def template_task(bucket, sweep_id: str, index: int) -> dict[str, tuple[bytes, str | None]]:
    pre = f"sweeps/{sweep_id}/tasks/{index}/"
    out = {}
    for blob in bucket.client.list_blobs(bucket, prefix=pre):
        out[blob.name[len(pre):]] = (blob.download_as_bytes(), blob.content_type)
    return out


def fabricate(bucket, settings, real_manifest: dict, template: dict, n: int) -> str:
    """A sweep record of N tasks, every task a copy of a real one (ids rewritten); its
    manifest names a Batch job that does not exist. -> the sweep id."""
    from jobs import sweep as sw

    sid = sw.new_sweep_id("selftest")
    old_sid = real_manifest["sweep_id"]
    old_run = f"{old_sid}-t0"  # the manifest's task 0 is the prototype of every task's parameters
    manifest = json.loads(json.dumps(real_manifest))
    manifest["sweep_id"] = sid
    manifest["batch_job"] = f"{sw._parent(settings)}/jobs/{sw.batch_job_id(sid)}"
    messages = [f"f{i}" for i in range(n)]
    manifest["grid"] = {**{k: v for k, v in manifest["grid"].items() if k != "message"}, "message": messages}
    proto = manifest["tasks"][0]
    tasks = []
    for i in range(n):
        t = json.loads(json.dumps(proto))
        t["index"] = i
        t["params"]["message"] = messages[i]
        runner = t["runner"]
        runner["run_id"] = f"{sid}-t{i}"
        runner["prefix"] = sw.task_prefix(sid, i)
        runner["argv"] = [messages[i] if a == proto["params"]["message"] else a.replace(old_run, runner["run_id"])
                          for a in runner["argv"]]
        tasks.append(t)
    manifest["tasks"] = tasks
    uploads = []
    for i in range(n):
        for rel, (data, ctype) in template.items():
            if rel == "status.json":
                st = json.loads(data)
                st["run_id"] = f"{sid}-t{i}"
                data = (json.dumps(st, indent=2, sort_keys=True) + "\n").encode()
            uploads.append((sw.task_prefix(sid, i) + rel, data, ctype))

    def put(item):
        name, data, ctype = item
        bucket.blob(name).upload_from_string(data, content_type=ctype or "application/octet-stream")

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(put, uploads))
    from jobs import runs

    runs.put_json(bucket, sw.sweep_prefix(sid) + "manifest.json", manifest)
    return sid


def time_status_pull(home: Path, sid: str, n: int, dest: Path, repeat: int, text_check: bool = False) -> dict:
    st_walls, pull_walls, notes = [], [], []
    for k in range(repeat):
        r, wall, _, _ = cli(home, "--json", "sweep", "status", sid, timeout=300)
        if r.returncode != 0:
            notes.append(f"status exit {r.returncode}: {tail(r.stderr, 4).strip()}")
        else:
            st_walls.append(wall)
            try:
                rows = json.loads(r.stdout)["tasks"]
                batch = {row["batch_state"] for row in rows}
                states = {row["state"] for row in rows}
                if len(rows) != n:
                    notes.append(f"status lists {len(rows)} tasks, not {n}")
                if k == 0:
                    notes.append(f"status: {len(rows)} rows, batch_state {sorted(map(str, batch))}, "
                                 f"state {sorted(map(str, states))}")
            except (ValueError, KeyError) as exc:
                notes.append(f"status output unreadable ({exc.__class__.__name__}: {exc}): {r.stdout[:200]!r}")
        if k == 0 and text_check:
            r, _, _, _ = cli(home, "sweep", "status", sid, timeout=300)
            first = (r.stdout.strip().splitlines() or ["(nothing)"])
            notes.append(f"text status: exit {r.returncode}, {len(first)} lines; e.g. {first[min(1, len(first) - 1)].strip()!r}"
                         + (f"; stderr {tail(r.stderr, 2).strip()!r}" if r.returncode else ""))
        target = dest / f"{sid}-{k}"
        rc, wall, pulled_at, err = pull_timed(home, sid, target)
        if rc != 0:
            notes.append(f"pull exit {rc}: {tail(err, 4).strip()}")
        else:
            pull_walls.append((wall, pulled_at))
            if not (target / "report.md").is_file():
                notes.append("pull: no report.md")
            elif k == 0:
                m = re.search(r"pulled (\d+) objects", err)
                notes.append(f"pull: {m.group(1) if m else '?'} objects, report.md + report.html")
    best = min(pull_walls) if pull_walls else None
    return {"n": n, "status": min(st_walls) if st_walls else None, "pull": best[0] if best else None,
            "pulled_at": best[1] if best else None, "notes": notes}


def pull_timed(home: Path, sid: str, target: Path) -> tuple[int, float, float | None, str]:
    """`sweep pull` -> (exit, wall, seconds until its `pulled N objects` line (the rest is the
    report), stderr)."""
    p0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, str(REPO / "cli.py"), "sweep", "pull", sid, "--to", str(target)],
                            cwd=home, env=env_for(home), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    pulled_at, err = None, []
    for line in proc.stderr:
        err.append(line)
        if pulled_at is None and line.startswith("ferry: pulled "):
            pulled_at = time.perf_counter() - p0
    rc = proc.wait(timeout=300)
    return rc, time.perf_counter() - p0, pulled_at, "".join(err)


# --------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", type=int, help="tasks in the sweep (default 12; --quick 6)")
    ap.add_argument("--parallel", type=int, help="the sweep's --parallel (default 4; --quick 3)")
    ap.add_argument("--sequential", type=int, help="sequential `run`s actually made, extrapolated to --tasks "
                                                   "(default: --tasks; --quick 3)")
    ap.add_argument("--quick", action="store_true", help="6 tasks, parallel 3, 3 sequential runs extrapolated")
    ap.add_argument("--sizes", default=None, help="task counts of the fabricated sweeps (default 10,50,200; --quick 10,50; '' none)")
    ap.add_argument("--repeat", type=int, default=2, help="runs of status and pull per size (the best; default 2)")
    ap.add_argument("--epochs", type=int, default=10, help="selftest epochs (default 10)")
    ap.add_argument("--sleep", type=float, default=0.2, help="selftest seconds per epoch (default 0.2)")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds allowed per command (default 600)")
    ap.add_argument("-v", "--verbose", action="store_true", help="each task's timeline too")
    args = ap.parse_args()
    args.tasks = args.tasks or (6 if args.quick else 12)
    args.parallel = args.parallel or (3 if args.quick else 4)
    args.sequential = min(args.tasks, args.sequential if args.sequential is not None else (3 if args.quick else args.tasks))
    sizes = [int(x) for x in (args.sizes if args.sizes is not None else ("10,50" if args.quick else "10,50,200")).split(",")
             if x.strip()]
    t_bench = time.perf_counter()

    from infra import clients, provision
    from infra.local.compute.models import Timing
    from infra.local.testing import local_cloud
    from infra.settings import resolve

    timing = Timing.from_env()
    messages = [f"m{i}" for i in range(args.tasks)]
    with tempfile.TemporaryDirectory(prefix="ferry-bench-sweep-") as tmp:
        home = Path(tmp) / "home"
        os.environ["FERRY_HOME"] = str(home)
        for var in CLOUD_VARS:
            os.environ.pop(var, None)
        clients.reset_cache()
        with local_cloud(home) as cloud:
            client = cloud.storage_client()
            bucket = client.lookup_bucket("ferry-local") or client.create_bucket("ferry-local")
            settings = resolve()
            cli(home, "run", "selftest", "--set", "epochs=0", timeout=args.timeout)  # warm-up: imports, page cache

            # 1. the sweep, then the sequential runs
            print(f"sweep of {args.tasks} tasks, --parallel {args.parallel} ...", flush=True)
            with Consoles(home) as consoles:
                sw_run = run_sweep(home, args, messages)
            print(f"{args.sequential} sequential runs ...", flush=True)
            seq = run_sequential(home, bucket, args, messages[:args.sequential])

            manifest = rows = sched = job = None
            if sw_run:
                manifest = jget(bucket, f"sweeps/{sw_run['id']}/manifest.json")
                batch = cloud.batch_client()
                job = batch.get_job(name=manifest["batch_job"])
                tasks = list(batch.list_tasks(parent=f"{manifest['batch_job']}/taskGroups/group0"))
                rows = task_timeline(tasks, bucket, sw_run["id"])
                sched = scheduling(rows, job, args.parallel, args.sleep)

            # 3. status and pull against N
            scale = []
            if sw_run:
                print(f"status and pull of fabricated sweeps of {', '.join(map(str, sizes))} tasks ...", flush=True)
                ok = [r["index"] for r in rows if r["index"] not in sched["not_succeeded"]] or [0]
                template = template_task(bucket, sw_run["id"], ok[0])
                scale.append({**time_status_pull(home, sw_run["id"], args.tasks, Path(tmp) / "pulled", args.repeat),
                              "label": "real sweep, Batch job present"})
                for n in sizes:
                    t = time.perf_counter()
                    sid = fabricate(bucket, settings, manifest, template, n)
                    made = time.perf_counter() - t
                    res = time_status_pull(home, sid, n, Path(tmp) / "pulled", args.repeat, text_check=n == sizes[0])
                    res["label"] = "fabricated, no Batch job"
                    res["made"] = made
                    scale.append(res)
            left = [v.name for v in provision.list_vms(settings)]

    # ------------------------------------------------------------------ the figures
    print()
    print(f"local cloud: timing profile {timing.profile} (scale {timing.scale:g}); selftest epochs={args.epochs} "
          f"sleep={args.sleep} (~{args.epochs * args.sleep:.1f} s of job), {os.cpu_count()} CPUs")
    if sw_run and sw_run["rc"] != 0:
        print(f"NOTE: the sweep command exited {sw_run['rc']} (see above and the failed tasks under 2.)")
    if sw_run and seq:
        seq_walls = [w for w, _ in seq]
        seq_total = sum(seq_walls) if len(seq) == args.tasks else statistics.mean(seq_walls) * args.tasks
        est = "" if len(seq) == args.tasks else f"  (EXTRAPOLATED: mean of {len(seq)} runs x {args.tasks})"
        job_s = med([j for _, j in seq])
        waves = -(-args.tasks // args.parallel)
        ratio = seq_total / sw_run["wall"]
        print(f"1. {args.tasks} tasks: sweep --parallel {args.parallel}: {sw_run['wall']:.1f} s; "
              f"{args.tasks} sequential runs: {seq_total:.1f} s{est}")
        print(f"   speed-up {ratio:.2f}x (ideal {args.parallel}x: {ratio / args.parallel:.0%} of it); "
              f"one sequential run {med(seq_walls):.2f} s wall, its job {job_s:.2f} s "
              f"(overhead {med(seq_walls) - job_s:.2f} s)")
        if ratio > args.parallel:
            print(f"   (above {args.parallel}x: each sequential run pays its own VM, SSH and sync overhead in series; "
                  f"the sweep's tasks overlap theirs)")
        sweep_jobs = med(sched["job"]) if sched else float("nan")
        ideal = waves * sweep_jobs
        print(f"   sweep vs its ideal ({waves} waves x the job's own {sweep_jobs:.2f} s = {ideal:.1f} s): "
              f"{sw_run['wall'] / ideal:.2f}x, +{sw_run['wall'] - ideal:.1f} s")
        if job is not None:
            created = job.create_time.timestamp()
            final = max((e.event_time.timestamp() for e in job.status.status_events), default=None)
            print(f"   where the sweep's time went: staging + submit {created - sw_run['t0']:.2f} s, Batch job created "
                  f"-> {getattr(job.status.state, 'name', job.status.state)} {final - created:.2f} s, "
                  f"final -> command exit {sw_run['t1'] - final:.2f} s (`watch` polls every 2 s)")
    elif not sw_run:
        print("1. the sweep failed (see above): no throughput figures")
    else:
        print(f"1. sweep --parallel {args.parallel}: {sw_run['wall']:.1f} s; no sequential run succeeded")

    if sched:
        n = len(rows)
        print(f"2. scheduling per task (medians over {n} tasks; Batch status events + the task's status.json and log):")
        lines = (
            ("ASSIGNED -> RUNNING", "assigned_running", "VM up -> Batch sees the task script start"),
            ("RUNNING -> runner `started`", "running_started", "code fetched, runner up, job launched"),
            ("RUNNING -> first epoch line", "running_epoch0", f"less the job's first epoch ({args.sleep:g} s)"),
            ("  `started` -> first epoch line", "started_epoch0", "the job's own start-up"),
            ("job's own run time", "job", "status.json started -> ended"),
            ("`ended` -> SUCCEEDED", "ended_succeeded", "final upload, script exit, Batch sees it"),
            ("RUNNING -> SUCCEEDED", "running_succeeded", ""),
            ("ASSIGNED -> SUCCEEDED - job", "overhead", "scheduling overhead per task, VM creation excluded"),
            ("job SCHEDULED -> ASSIGNED", "first_wave", f"first wave ({args.parallel}): VM creation"),
            ("slot hand-over", "handover", "a task's end -> the next task's ASSIGNED (a new VM)"),
        )
        for label, key, note in lines:
            xs = [x for x in sched[key] if x is not None]
            rng = f"[{min(xs):.2f} .. {max(xs):.2f}]" if xs else ""
            print(f"   {label:<32} {f2(med(xs))}  {rng:<16} n={len(xs):<3} {note}")
        if args.verbose:
            print("   per task (s after the job's creation): ASSIGNED RUNNING started epoch0 ended SUCCEEDED")
            t0 = job.create_time.timestamp()
            for r in rows:
                marks = (r["events"].get("ASSIGNED"), r["events"].get("RUNNING"), r["started"], r["epoch0"], r["ended"],
                         r["events"].get("SUCCEEDED") or r["events"].get("FAILED"))
                print(f"   {r['index']:>4} " + " ".join("     -" if m is None else f"{m - t0:6.2f}" for m in marks))
        if sched["retried"] or sched["not_succeeded"]:
            print(f"   retried tasks: {sched['retried']}; not succeeded: {sched['not_succeeded']}")
        for r in rows:
            if r["index"] in sched["not_succeeded"] or r["retried"]:
                st = r["status"]
                print(f"   task {r['index']}: status.json state={st.get('state')} exit_code={st.get('exit_code')} "
                      f"message={st.get('message')!r} started={st.get('started')} ended={st.get('ended')}")
                for line in r["batch_events"]:
                    print(f"     batch {line}")
                for line in r["log_tail"]:
                    print(f"     log | {line}")
                for vm, lines in consoles.of_task(r["index"]):
                    print(f"     console of {vm}:")
                    for line in lines:
                        print(f"       {line}")
    print("3. `--json sweep status` and `sweep pull` against the number of tasks:")
    if not scale:
        print("   (no sweep to copy: skipped)")
    prev = None
    for res in scale:
        n = res["n"]
        cells = []
        for key in ("status", "pull"):
            v = res[key]
            if v is None:
                cells.append(f"{key} FAILED")
                continue
            marg = ""
            if prev is not None and prev.get(key) is not None and n > prev["n"]:
                marg = f", +{(v - prev[key]) / (n - prev['n']) * 1000:.1f} ms/task marginal"
            split = ""
            if key == "pull" and res.get("pulled_at") is not None:
                split = f" (download {res['pulled_at']:.2f} s, report {v - res['pulled_at']:.2f} s)"
            cells.append(f"{key} {v:5.2f} s = {v / n * 1000:6.1f} ms/task{marg}{split}")
        made = f" (made in {res['made']:.1f} s)" if "made" in res else ""
        print(f"   N={n:<4} {res['label']}{made}: " + "; ".join(cells))
        for note in res["notes"]:
            print(f"          {note}")
        if res["label"].startswith("fabricated"):
            prev = res
    if left:
        print(f"VMs left behind: {left}")
    print(f"(bench wall time {time.perf_counter() - t_bench:.0f} s)")


if __name__ == "__main__":
    main()
