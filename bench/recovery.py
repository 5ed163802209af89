#!/usr/bin/env python3
"""Benchmark spot recovery on the local backend (no timing is asserted anywhere).

    .venv/bin/python bench/recovery.py [--repeat N] [--epochs N] [--sleep S] [--after N]
                                       [--grace S] [--data-dir DIR] [--skip-trainer] [--skip-tf]

Starts the local cloud in its own FERRY_HOME (timing profile from FERRY_LOCAL_TIMING, default
`fast`) and prints, as medians over N runs (default 3):
  * recovery time: `cli.py run selftest --spot` is preempted through the local cloud's control
    interface once --after epochs (default 3) are in the bucket; the figure is from the notice
    (the preempt call) to the first `epoch K` line the `run` process prints after its
    `=== segment 2:` marker, K beyond the last epoch printed before the notice; with a
    breakdown from the timestamped progress lines (job stopped, preemption seen, old VM gone,
    new VM up, code sent, segment 2, job started, first epoch) and the epochs redone;
  * the wall time of the recovered run against an uninterrupted one with the same parameters
    (interleaved, same process: a ratio and the difference);
  * bytes per checkpoint: the mean size of runs/RUN/checkpoints/* in the bucket, and what the
    last segment's runner uploaded for its checkpoints per byte of their size;
  * checkpoint cost of the real trainer, from summary.json's `checkpoint` section: mnist-nn
    (stencil and minibatch, 3 epochs), scene-nn (the job's default 100 images per class, 3
    epochs) and tf-quickstart (2000/500 samples, 2 epochs; only if TensorFlow is installed):
    median seconds per checkpoint, its share of the median epoch, and its size. Data from
    --data-dir, else $FERRY_DATA_DIR, else ../shared/datasets beside the repository; a job
    whose data is absent is skipped with a message.
Targets: recovery (notice -> first resumed epoch) < 10 s with the fast profile; no epoch
redone; checkpoint well under 5% of an epoch.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

RECOVERY_TARGET_S = 10.0
CLOUD_VARS = ("GOOGLE_CLOUD_PROJECT", "CLOUDSDK_CORE_PROJECT", "FERRY_BACKEND", "FERRY_BUCKET", "STORAGE_EMULATOR_HOST")
EPOCH_RE = re.compile(r"^epoch (\d+) ")

# milestones of one recovery, in order: (key, label, stream, what the line starts with / contains)
MILESTONES = (
    ("stopped", "job stopped on the old VM", "out", "[ferry] preempted"),
    ("seen", "run sees the preemption", "err", "=== preempted on VM"),
    ("provisioning", "old VM gone, provisioning", "err", "provisioning a VM"),
    ("up", "new VM up", "err", "ferry: VM "),
    ("code", "code sent", "err", "ferry: code "),
    ("segment", "=== segment 2", "out", "[ferry] === segment 2:"),
    ("start", "job started (resumed)", "out", "selftest start:"),
)


def env_for(home: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in CLOUD_VARS}
    env["FERRY_HOME"] = str(home)
    return env


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else float("nan")


class Watched:
    """A `cli.py run` subprocess whose stdout and stderr lines are kept with their arrival time."""

    def __init__(self, home: Path, args: list[str]):
        self.t_start = time.time()
        self.proc = subprocess.Popen([sys.executable, str(REPO / "cli.py"), *args], cwd=home, env=env_for(home),
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1)
        self.lines: list[tuple[float, str, str]] = []  # (time.time(), "out"|"err", line)
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._read, args=(s, name), daemon=True)
                        for s, name in ((self.proc.stdout, "out"), (self.proc.stderr, "err"))]
        for t in self.threads:
            t.start()

    def _read(self, stream, name):
        for line in stream:
            now = time.time()
            with self.lock:
                self.lines.append((now, name, line.rstrip("\n")))

    def run_id(self) -> str | None:
        with self.lock:
            for _, name, line in self.lines:
                m = re.match(r"ferry: run (\S+): ", line) if name == "err" else None
                if m:
                    return m.group(1)
        return None

    def wait(self, timeout: float) -> tuple[int | None, float]:
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            rc = None
        for t in self.threads:
            t.join(5)
        return rc, time.time() - self.t_start

    def tail(self, n: int = 15) -> str:
        return "\n".join(f"    [{name}] {line}" for _, name, line in self.lines[-n:])


def jget(bucket, name):
    return json.loads(bucket.blob(name).download_as_bytes())


def selftest_args(args) -> list[str]:
    return ["run", "selftest", "--spot", "--set", f"epochs={args.epochs}", "--set", f"sleep={args.sleep}"]


def baseline(home: Path, args) -> float | None:
    w = Watched(home, selftest_args(args))
    rc, wall = w.wait(args.timeout)
    if rc != 0:
        print(f"  uninterrupted run failed (exit {rc}):\n{w.tail()}", flush=True)
        return None
    return wall


def recovered(home: Path, bucket, cloud, args) -> dict | None:
    """One preempted run -> its figures, or None (what was seen is printed)."""
    w = Watched(home, selftest_args(args))
    deadline = time.time() + args.timeout
    run_id = seg = None
    while time.time() < deadline and w.proc.poll() is None:
        run_id = run_id or w.run_id()
        if run_id:
            try:
                st = jget(bucket, f"runs/{run_id}/status.json")
                segs = st.get("segments") or []
                done = len(bucket.blob(f"runs/{run_id}/metrics.jsonl").download_as_bytes().splitlines())
                if st["state"] == "running" and len(segs) == 1 and not segs[0].get("ended") and done >= args.after:
                    seg = segs[0]
                    break
            except Exception:
                pass
        time.sleep(0.05)
    if seg is None:
        rc, _ = w.wait(5)
        print(f"  the run never reached {args.after} epochs in the bucket on its first VM (exit {rc}):\n{w.tail()}")
        return None
    t0 = time.time()
    try:
        cloud.control.preempt(seg["zone"], seg["vm"], **({} if args.grace is None else {"grace_s": args.grace}))
    except Exception as exc:
        rc, _ = w.wait(max(1.0, deadline - time.time()))
        print(f"  preempting {seg['vm']} failed: {exc.__class__.__name__}: {exc} (the run then exited {rc}):\n{w.tail()}")
        return None
    t_call = time.time() - t0
    rc, wall = w.wait(max(1.0, deadline - time.time()))
    if rc != 0:
        print(f"  the preempted run {run_id} did not succeed (exit {rc}):\n{w.tail(30)}", flush=True)
        return None

    lines = list(w.lines)
    epochs_before = [int(m.group(1)) for t, s, line in lines if s == "out" and t < t0 and (m := EPOCH_RE.match(line))]
    last_before = max(epochs_before, default=-1)
    marks: dict[str, float] = {}
    marker_i = None
    for i, (t, s, line) in enumerate(lines):
        if t < t0:
            continue
        for key, _, stream, needle in MILESTONES:
            if key in marks or stream != s:
                continue
            if key == "up" and not (line.startswith(needle) and " up in " in line):
                continue
            if key == "start" and marker_i is None:
                continue
            if line.startswith(needle) or (stream == "err" and needle in line):
                marks[key] = t - t0
                if key == "segment":
                    marker_i = i
    if marker_i is None:
        print(f"  run {run_id}: no `=== segment 2:` line after the notice:\n{w.tail(30)}")
        return None
    printed_before_marker = [int(m.group(1)) for _, s, line in lines[:marker_i] if s == "out" and (m := EPOCH_RE.match(line))]
    first = None
    for t, s, line in lines[marker_i + 1:]:
        m = EPOCH_RE.match(line) if s == "out" else None
        if m and int(m.group(1)) > last_before:
            first = (t - t0, int(m.group(1)))
            break
    if first is None:
        print(f"  run {run_id}: no epoch beyond {last_before} after `=== segment 2:`:\n{w.tail(30)}")
        return None
    marks["epoch"] = first[0]
    st = jget(bucket, f"runs/{run_id}/status.json")
    ckpts = list(bucket.list_blobs(prefix=f"runs/{run_id}/checkpoints/"))
    sizes = {b.name.rsplit("/", 1)[1]: b.size for b in ckpts}
    sent = {k.split("/", 1)[1]: v for k, v in (st.get("uploaded_bytes") or {}).items() if k.startswith("checkpoints/")}
    return {
        "run_id": run_id, "wall": wall, "t0_after_start": t0 - w.t_start, "preempt_call": t_call, "marks": marks,
        "last_before": last_before, "first_epoch": first[1],
        "redone": max(printed_before_marker, default=-1) + 1 - first[1],
        "segments": [s.get("ended_by") for s in st.get("segments") or []], "state": st.get("state"),
        "resumed_from": (st.get("segments") or [{}])[-1].get("resumed_from"),
        "ckpt_sizes": sizes, "ckpt_sent": sent,
    }


def trainer_runs(args, env: dict, out_root: Path) -> list[tuple[str, dict | str]]:
    """(label, summary.json's checkpoint section + median epoch seconds | why skipped)."""
    data = Path(args.data_dir or os.environ.get("FERRY_DATA_DIR") or REPO.parent / "shared" / "datasets").expanduser()
    jobs = [("mnist-nn stencil, 3 epochs", "mnist", ["mnist-nn", "--mode", "stencil", "--epochs", "3"]),
            ("mnist-nn minibatch, 3 epochs", "mnist", ["mnist-nn", "--mode", "minibatch", "--epochs", "3"]),
            ("scene-nn stencil, 100/class, 3 ep.", "15scene", ["scene-nn", "--epochs", "3"])]
    if not args.skip_tf:
        jobs.append(("tf-quickstart 2000/500, 2 epochs", "mnist",
                     ["tf-quickstart", "--train-samples", "2000", "--test-samples", "500", "--epochs", "2"]))
    results = []
    for i, (label, dataset, argv) in enumerate(jobs):
        if not (data / dataset).is_dir():
            results.append((label, f"skipped: no {dataset}/ in {data} (--data-dir or FERRY_DATA_DIR)"))
            continue
        if argv[0] == "tf-quickstart" and importlib.util.find_spec("tensorflow") is None:
            results.append((label, "skipped: TensorFlow is not installed"))
            continue
        out = out_root / f"trainer-{i}"
        t = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "trainer", *argv, "--data-dir", str(data), "--no-download", "--out", str(out)],
                           cwd=REPO, env=env, capture_output=True, text=True, timeout=args.timeout * 3)
        wall = time.perf_counter() - t
        if r.returncode != 0:
            last = (r.stderr.strip().splitlines() or ["(no stderr)"])[-1]
            results.append((label, f"failed (exit {r.returncode}): {last}"))
            continue
        summary = json.loads((out / "summary.json").read_text())
        ck = dict(summary.get("checkpoint") or {})
        epoch_s = summary.get("median_epoch_seconds")
        if epoch_s is None:
            recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]
            epoch_s = med([r.get("seconds") for r in recs])
        ck["epoch_seconds"], ck["wall"] = epoch_s, wall
        results.append((label, ck))
        print(f"  trainer: {label} done in {wall:.1f} s", flush=True)
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=15, help="selftest epochs (default 15)")
    ap.add_argument("--sleep", type=float, default=0.2, help="selftest seconds per epoch (default 0.2)")
    ap.add_argument("--after", type=int, default=3, help="preempt once this many epochs are in the bucket (default 3)")
    ap.add_argument("--grace", type=float, default=None,
                    help="seconds between the preemption notice and the VM's stop (default: the timing profile's)")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds allowed per run (default 120)")
    ap.add_argument("--data-dir", help="holds mnist/ and 15scene/ (default $FERRY_DATA_DIR, else ../shared/datasets)")
    ap.add_argument("--skip-trainer", action="store_true", help="no trainer runs (checkpoint cost)")
    ap.add_argument("--skip-tf", action="store_true", help="no tf-quickstart run")
    args = ap.parse_args()
    t_bench = time.perf_counter()
    user_env = dict(os.environ)  # the trainer runs with the caller's environment (its data cache)

    from infra import clients, provision
    from infra.local.compute.models import Timing
    from infra.local.testing import local_cloud
    from infra.settings import resolve

    timing = Timing.from_env()
    grace = timing.preempt_grace_s if args.grace is None else args.grace
    reps: list[dict] = []
    bases: list[float] = []
    with tempfile.TemporaryDirectory(prefix="ferry-bench-recovery-") as tmp:
        home = Path(tmp) / "home"
        os.environ["FERRY_HOME"] = str(home)
        for var in CLOUD_VARS:
            os.environ.pop(var, None)
        clients.reset_cache()
        with local_cloud(home) as cloud:
            client = cloud.storage_client()
            bucket = client.lookup_bucket("ferry-local") or client.create_bucket("ferry-local")
            subprocess.run([sys.executable, str(REPO / "cli.py"), "run", "selftest", "--set", "epochs=0"],
                           env=env_for(home), cwd=home, capture_output=True, timeout=args.timeout)  # warm-up
            for i in range(args.repeat):
                b = baseline(home, args)
                if b is not None:
                    bases.append(b)
                r = recovered(home, bucket, cloud, args)
                if r is not None:
                    reps.append(r)
                    print(f"  repeat {i + 1}: recovery {r['marks']['epoch']:.2f} s, recovered run {r['wall']:.2f} s, "
                          f"uninterrupted {b if b is not None else float('nan'):.2f} s  ({r['run_id']})", flush=True)
            left = [v.name for v in provision.list_vms(resolve())]
        os.environ.pop("FERRY_HOME", None)
        if user_env.get("FERRY_HOME"):
            os.environ["FERRY_HOME"] = user_env["FERRY_HOME"]
        trainer = [] if args.skip_trainer else trainer_runs(args, user_env, Path(tmp))

    print()
    print(f"local cloud: timing profile {timing.profile} (scale {timing.scale:g}), preemption grace {grace:g} s; "
          f"selftest epochs={args.epochs} sleep={args.sleep}, preempted after {args.after} epochs in the bucket")
    if reps:
        n = len(reps)
        rec = med([r["marks"]["epoch"] for r in reps])
        verdict = "meets" if rec < RECOVERY_TARGET_S else "MISSES"
        print(f"recovery, notice -> first resumed epoch line: {rec:.2f} s  (target < {RECOVERY_TARGET_S:.0f} s: {verdict}; "
              f"min {min(r['marks']['epoch'] for r in reps):.2f}, max {max(r['marks']['epoch'] for r in reps):.2f}, n={n})")
        print("  breakdown (median s after the notice | median s since the previous step):")
        prev = 0.0
        for key, label, _, _ in (*MILESTONES, ("epoch", "first resumed epoch line", "out", "")):
            at = med([r["marks"].get(key) for r in reps])
            missing = sum(key not in r["marks"] for r in reps)
            print(f"    {label:<30} {at:6.2f} s | +{at - prev:5.2f} s" + (f"  (not seen in {missing} of {n})" if missing else ""))
            if at == at:
                prev = at
        print(f"  preempt call returned in {med([r['preempt_call'] for r in reps]) * 1000:.0f} ms; "
              f"notice {med([r['t0_after_start'] for r in reps]):.1f} s after `run` started")
        print(f"  resumed at epoch {[r['first_epoch'] for r in reps]} after last epoch printed before the notice "
              f"{[r['last_before'] for r in reps]}; resumed from {[r['resumed_from'] for r in reps]}; "
              f"epochs redone: {[r['redone'] for r in reps]} (target 0)")
        print(f"  segments ended by: {reps[0]['segments']}; final state {[r['state'] for r in reps]}")
        walls = [r["wall"] for r in reps]
        if bases:
            print(f"wall time, recovered run:      {med(walls):.2f} s vs uninterrupted {med(bases):.2f} s: "
                  f"{med(walls) / med(bases):.2f}x, +{med(walls) - med(bases):.2f} s  (n={n}/{len(bases)})")
        else:
            print(f"wall time, recovered run:      {med(walls):.2f} s (no uninterrupted run succeeded)")
        sizes = [s for r in reps for s in r["ckpt_sizes"].values()]
        print(f"checkpoints in the bucket:     mean {statistics.mean(sizes):.0f} bytes per object "
              f"({len(sizes) / n:.0f} objects per run, min {min(sizes)}, max {max(sizes)}; selftest)" if sizes
              else "checkpoints in the bucket:     none")
        sent = sum(v for r in reps for v in r["ckpt_sent"].values())
        their = sum(r["ckpt_sizes"].get(k, 0) for r in reps for k in r["ckpt_sent"])
        count = sum(len(r["ckpt_sent"]) for r in reps)
        if count:
            print(f"  uploaded by the last segment's runner: {sent / count:.0f} bytes per checkpoint, "
                  f"{sent / max(their, 1):.2f}x their size ({count} checkpoints)")
    else:
        print(f"recovery: no preempted run succeeded (see above); target < {RECOVERY_TARGET_S:.0f} s")
        if bases:
            print(f"wall time, uninterrupted run:  {med(bases):.2f} s (n={len(bases)})")
    if left:
        print(f"VMs left behind: {left}")
    if args.skip_trainer:
        print("trainer checkpoint cost: skipped (--skip-trainer)")
    for label, ck in trainer:
        if isinstance(ck, str):
            print(f"checkpoint, {label:<36} {ck}")
            continue
        share = ck.get("share_of_epoch")
        parts = [f"{ck['median_seconds'] * 1000:.1f} ms" if ck.get("median_seconds") is not None else "? ms",
                 f"{share:.2%} of a {ck['epoch_seconds']:.2f} s epoch" if share is not None and ck.get("epoch_seconds")
                 else (f"{share:.2%} of an epoch" if share is not None else "share ?"),
                 f"{ck.get('bytes', 0) / 1e3:.1f} kB"]
        if "total_median_seconds" in ck:
            parts.append(f"with TF's own write {ck['total_median_seconds'] * 1000:.1f} ms"
                         + (f" = {ck['total_share_of_epoch']:.2%} of an epoch" if ck.get("total_share_of_epoch") is not None else ""))
        print(f"checkpoint, {label:<36} " + ", ".join(parts))
    print(f"(bench wall time {time.perf_counter() - t_bench:.0f} s)")


if __name__ == "__main__":
    main()
