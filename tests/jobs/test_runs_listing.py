"""`runs` in O(1) requests per page: status.json carries the row in its metadata, which the
listing returns (matchGlob), so 1000 runs cost two listing calls, not three reads each."""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # pytest's importlib mode: no sys.path magic
from runhelp import cli, cloud  # noqa: E402,F401


def test_runs_lists_from_the_listing_alone_and_reads_only_old_runs(cloud):
    from jobs import runs as records
    from trainer.report import ROW_KEY, row

    for i in range(120):
        rid = f"mnist-nn-20260101-{i:06d}-ab{i % 10}c"
        st = {"state": "succeeded", "started": "2026-01-01T00:00:00Z", "ended": "2026-01-01T00:01:40Z",
              "heartbeat": "2026-01-01T00:01:40Z", "exit_code": 0, "segments": [{}, {}]}
        records.put_json(cloud.bucket, f"runs/{rid}/status.json", st,
                         metadata={ROW_KEY: row(st, "mnist-nn", "vm-x", {"best_test_accuracy": 0.5 + i / 1000})})
        cloud.bucket.blob(f"runs/{rid}/logs/output.log").upload_from_string("x")  # other objects do not count
    old = "selftest-20270101-000000-oldr"  # written before rows existed: read object by object
    records.put_json(cloud.bucket, f"runs/{old}/status.json", {"state": "failed", "exit_code": 1})
    records.put_json(cloud.bucket, f"runs/{old}/manifest.json", {"job": "selftest", "vm": "vm-o"})

    cloud.control.clear_requests()
    r = cli(cloud, "runs", "--limit", "1000", "--json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert len(rows) == 121 and rows[0]["run_id"] == old and rows[0]["state"] == "failed" and rows[0]["vm"] == "vm-o"
    newest = rows[1]
    assert newest["best_accuracy"] == 0.5 + 119 / 1000 and newest["recoveries"] == 1 and newest["duration_s"] == 100.0
    assert newest["vm"] == "vm-x" and newest["job"] == "mnist-nn"
    calls = [q for q in cloud.control.requests() if q["service"] == "storage"]
    reads = [q for q in calls if "/o/" in q["path"] or "alt=media" in q["path"]]
    lists = [q for q in calls if q["path"].rstrip("/").endswith("/o") or "/o?" in q["path"]]
    assert 1 <= len(lists) <= 2 and len(reads) <= 4 and len(calls) <= 10, [q["path"] for q in calls]
