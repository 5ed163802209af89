#!/usr/bin/env python3
"""Benchmark `python cli.py run` on the local backend (no timing is asserted anywhere).

    .venv/bin/python bench/run.py [--repeat N]

Prints, each as a median over N runs of the trivial `selftest` job:
  * overhead of `run` = wall time of the whole command minus the job's own time
    (status.json started -> ended), with a fresh VM and with a VM already up;
  * latency of a printed line: from the job's print (a timestamp in the line) to the
    terminal (the `run` process's stdout) and to the bucket (logs/output.log);
  * bytes sent by the first sync of the code and by a second sync of the unchanged tree;
  * bytes uploaded for the log and the metrics of a job that prints steadily for --steady
    seconds (default 60), per byte of their final size (target <= 1.2x; re-sending the whole
    file every 2 s, as the runner once did, grows with the square of the length).
Targets (issue 5): overhead < 3 s fresh / < 1 s with a VM up; line on the terminal < 1 s,
in the bucket < 10 s.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def env_for(home: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("GOOGLE_CLOUD_PROJECT", "CLOUDSDK_CORE_PROJECT", "FERRY_BACKEND",
                                                            "FERRY_BUCKET", "STORAGE_EMULATOR_HOST")}
    env["FERRY_HOME"] = str(home)
    return env


def job_seconds(bucket, run_id: str) -> float:
    from jobs import runs

    st = json.loads(bucket.blob(f"runs/{run_id}/status.json").download_as_bytes())
    return runs.duration_s(st)


def one_run(home: Path, bucket, *sets: str) -> tuple[float, float, str]:
    from jobs import runs

    args = [sys.executable, str(REPO / "cli.py"), "run", "selftest"]
    for s in sets:
        args += ["--set", s]
    t = time.perf_counter()
    r = subprocess.run(args, env=env_for(home), capture_output=True, text=True, cwd=home)
    wall = time.perf_counter() - t
    if r.returncode != 0:
        raise SystemExit(f"run failed: {r.stderr}")
    run_id = runs.latest(bucket)
    return wall, job_seconds(bucket, run_id), run_id


def latencies(home: Path, bucket, epochs: int = 8) -> tuple[list[float], list[float]]:
    """Per epoch line: print -> terminal, print -> bucket."""
    from jobs import runs

    args = [sys.executable, str(REPO / "cli.py"), "run", "selftest", "--set", f"epochs={epochs}", "--set", "sleep=0.7"]
    proc = subprocess.Popen(args, env=env_for(home), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=home)
    seen_bucket: dict[int, float] = {}
    stop = threading.Event()

    def watch_bucket():
        run_id = None
        while not stop.is_set():
            try:
                run_id = run_id or runs.latest(bucket)
                if run_id:
                    log = bucket.blob(f"runs/{run_id}/logs/output.log").download_as_bytes().decode()
                    now = time.time()
                    for line in log.splitlines():
                        if line.startswith("epoch "):
                            e = int(line.split()[1])
                            if e not in seen_bucket:
                                seen_bucket[e] = now - float(line.rsplit("t=", 1)[1])
            except Exception:
                pass
            time.sleep(0.05)

    before = runs.latest(bucket)
    th = threading.Thread(target=watch_bucket, daemon=True)
    terminal = []
    for line in proc.stdout:
        if line.startswith("epoch "):
            terminal.append(time.time() - float(line.rsplit("t=", 1)[1]))
            if not th.is_alive() and runs.latest(bucket) != before:
                th.start()
    proc.wait()
    time.sleep(0.5)
    stop.set()
    return terminal, list(seen_bucket.values())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--steady", type=float, default=60.0, help="seconds of the steadily printing job")
    args = ap.parse_args()
    from infra import clients, provision
    from infra.local.testing import local_cloud
    from infra.settings import resolve

    with tempfile.TemporaryDirectory(prefix="ferry-bench-") as tmp:
        home = Path(tmp) / "home"
        os.environ["FERRY_HOME"] = str(home)
        for var in ("GOOGLE_CLOUD_PROJECT", "FERRY_BACKEND", "FERRY_BUCKET", "STORAGE_EMULATOR_HOST"):
            os.environ.pop(var, None)
        clients.reset_cache()
        with local_cloud(home) as cloud:
            client = cloud.storage_client()
            bucket = client.lookup_bucket("ferry-local") or client.create_bucket("ferry-local")
            one_run(home, bucket, "epochs=0")  # warm-up: imports, page cache
            fresh = [one_run(home, bucket, "epochs=0") for _ in range(args.repeat)]
            settings = resolve()
            vm = provision.up(settings, template="cpu", name="ferry-bench-vm")
            warm = [one_run(home, bucket, "epochs=0") for _ in range(args.repeat + 1)]
            first = json.loads(bucket.blob(f"runs/{warm[0][2]}/manifest.json").download_as_bytes())["sync"]
            second = json.loads(bucket.blob(f"runs/{warm[1][2]}/manifest.json").download_as_bytes())["sync"]
            term, buck = latencies(home, bucket)
            epochs = max(1, int(args.steady / 0.1))
            _, _, steady_id = one_run(home, bucket, f"epochs={epochs}", "sleep=0.1", "lines=2000")
            steady = json.loads(bucket.blob(f"runs/{steady_id}/status.json").download_as_bytes())
            sizes = {name: bucket.get_blob(f"runs/{steady_id}/{name}").size for name in ("logs/output.log", "metrics.jsonl")}
            provision.delete(settings, vm.name, vm.zone)

    def med(xs):
        return statistics.median(xs) if xs else float("nan")

    print(f"overhead of run, fresh VM:   {med([w - j for w, j, _ in fresh]):.2f} s  (wall {med([w for w, _, _ in fresh]):.2f} s, n={len(fresh)})")
    print(f"overhead of run, VM up:      {med([w - j for w, j, _ in warm[1:]]):.2f} s  (wall {med([w for w, _, _ in warm[1:]]):.2f} s, n={len(warm) - 1})")
    print(f"line -> terminal:            median {med(term) * 1000:.0f} ms, max {max(term) * 1000:.0f} ms (n={len(term)})")
    print(f"line -> bucket:              median {med(buck):.2f} s, max {max(buck):.2f} s (n={len(buck)})")
    print(f"first sync:                  {first['bytes']} bytes ({first['files']} files, {first['mode']})")
    print(f"second sync (unchanged):     {second['bytes']} bytes ({second['mode']})")
    for name, size in sizes.items():
        sent = steady.get("uploaded_bytes", {}).get(name, 0)
        print(f"uploaded / final, {name:<15} {sent / max(size, 1):.2f}x  ({sent} of {size} bytes, {args.steady:.0f} s of steady output)")


if __name__ == "__main__":
    main()
