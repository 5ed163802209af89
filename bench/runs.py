#!/usr/bin/env python3
"""`python cli.py runs` against the number of runs in the bucket (local backend).

    .venv/bin/python bench/runs.py [--levels 10,100,1000]

Fills a local cloud's bucket with run records as the runner writes them (status.json with the
listed figures in its metadata, a manifest, a summary, a log), then times `runs --limit N --json`
as a process at each level and counts its Cloud Storage requests from the local request log.
Baseline in the same process: the same runs listed the old way (manifest, status and summary
read per run, 8 threads) through `jobs.runs.record`. Target (issue 14): 1000 runs <= 1 s,
O(1) requests per page. Asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def fill(bucket, start: int, stop: int) -> None:
    from jobs import runs as records
    from trainer.report import ROW_KEY, row

    def one(i: int) -> None:
        rid = f"mnist-nn-2026{(i // 86400) % 12 + 1:02d}01-{i % 240000:06d}-b{i % 1000:03d}"
        st = {"state": "succeeded", "started": "2026-01-01T00:00:00Z", "ended": "2026-01-01T00:01:00Z",
              "heartbeat": "2026-01-01T00:01:00Z", "exit_code": 0}
        summary = {"best_test_accuracy": 0.9}
        records.put_json(bucket, f"runs/{rid}/status.json", st, metadata={ROW_KEY: row(st, "mnist-nn", "vm", summary)})
        records.put_json(bucket, f"runs/{rid}/manifest.json", {"job": "mnist-nn", "vm": "vm"})
        records.put_json(bucket, f"runs/{rid}/summary.json", summary)
        bucket.blob(f"runs/{rid}/logs/output.log").upload_from_string("epoch 0\n")

    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(one, range(start, stop)))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--levels", default="10,100,1000")
    args = ap.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    from infra.local.testing import local_cloud

    home = Path(tempfile.mkdtemp(prefix="bench-runs-")) / "home"
    env = {k: v for k, v in os.environ.items() if k not in ("GOOGLE_CLOUD_PROJECT", "FERRY_BACKEND", "FERRY_BUCKET")}
    env["FERRY_HOME"] = str(home)
    os.environ["FERRY_HOME"] = str(home)
    with local_cloud(home) as cloud:
        client = cloud.storage_client()
        bucket = client.lookup_bucket("ferry-local") or client.create_bucket("ferry-local")
        have = 0
        print(f"{'runs':>6} {'runs (s)':>9} {'requests':>9} {'old way (s)':>12} {'old requests':>13} {'ratio':>6}")
        for n in levels:
            fill(bucket, have, n)
            have = n
            cloud.control.clear_requests()
            t = time.perf_counter()
            r = subprocess.run([sys.executable, str(REPO / "cli.py"), "--json", "runs", "--limit", str(n)], env=env,
                               capture_output=True, text=True, cwd=home)
            wall = time.perf_counter() - t
            listed = len(json.loads(r.stdout)) if r.returncode == 0 else f"error {r.stderr.strip()[-80:]}"
            calls = len([q for q in cloud.control.requests() if q["service"] == "storage"])
            from jobs import runs as records

            ids = records.list_run_ids(bucket)[:n]
            cloud.control.clear_requests()
            t = time.perf_counter()
            with ThreadPoolExecutor(max_workers=8) as pool:
                list(pool.map(lambda i: records.record(bucket, i), ids))
            old = time.perf_counter() - t
            old_calls = len([q for q in cloud.control.requests() if q["service"] == "storage"])
            print(f"{n:>6} {wall:>9.2f} {calls:>9} {old:>12.2f} {old_calls:>13} {old / wall:>5.1f}x   (listed {listed})")
    print("runs (s): the whole `runs` process (interpreter start included); old way: reading 3 objects per run "
          "in-process, without the interpreter start. Target: 1000 runs <= 1 s.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
