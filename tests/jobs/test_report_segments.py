"""A run recovered after spot preemptions (status.json's `segments`): the report's Timeline
section and `runs`' recovery count. No cloud: run folders built by hand, and the in-process
storage server for `runs`."""

import json
from types import SimpleNamespace

from jobs import report
from jobs import runs as records

RUN = "mnist-nn-20261201-120000-ab12"


def seg(index, vm, spot, price, start, end, ended_by, seconds, resumed, zone="us-central1-a"):
    return {"index": index, "vm": vm, "zone": zone, "spot": spot, "machine_type": "n1-standard-4", "gpu": "t4",
            "price_per_hour": price, "on_demand_per_hour": 0.54, "vm_created_by_run": True, "vm_started": start,
            "started": start.replace(":00.000Z", ":40.000Z"), "host": "h", "ended": end, "ended_by": ended_by,
            "seconds": seconds, "cost": round(price * seconds / 3600, 6), "resumed_from": resumed}


# 1 h + 30 min on spot at $0.19/h, then 15 min on demand at $0.54/h (on-demand price $0.54/h throughout)
SEGMENTS = [
    seg(0, f"ferry-{RUN}", True, 0.19, "2026-12-01T12:00:00.000Z", "2026-12-01T13:00:00.000Z", "preempted", 3600.0, None),
    seg(1, f"ferry-{RUN}-2", True, 0.19, "2026-12-01T13:01:00.000Z", "2026-12-01T13:31:00.000Z", "preempted", 1800.0,
        "ckpt-000002.ckpt", zone="us-central1-b"),
    seg(2, f"ferry-{RUN}-3", False, 0.54, "2026-12-01T13:32:00.000Z", "2026-12-01T13:47:00.000Z", "succeeded", 900.0,
        "ckpt-000005.ckpt"),
]
TOTAL = 0.19 + 0.095 + 0.135            # $0.4200
ON_DEMAND = 0.54 * (3600 + 1800 + 900) / 3600  # $0.9450
SAVING = 100 * (1 - TOTAL / ON_DEMAND)  # 55.6%


def write_run(d, segments=None, state="succeeded", manifest_extra=None, **status_extra):
    d.mkdir(parents=True, exist_ok=True)
    manifest = {"run_id": d.name, "job": "mnist-nn", "params": {"epochs": 3}, "price_per_hour": 0.54, "vm": f"ferry-{RUN}-3",
                "zone": "us-central1-a", "machine_type": "n1-standard-4", "created": "2026-12-01T11:59:50.000Z",
                **(manifest_extra or {})}
    status = {"run_id": d.name, "state": state, "exit_code": 0 if state == "succeeded" else None,
              "started": "2026-12-01T12:00:40.000Z", "ended": "2026-12-01T13:47:00.000Z" if state in records.FINAL else None,
              "heartbeat": "2026-12-01T13:47:00.000Z", **status_extra}
    if segments is not None:
        status["segments"] = segments
    (d / "manifest.json").write_text(json.dumps(manifest))
    (d / "status.json").write_text(json.dumps(status))
    rows = [{"epoch": e, "loss": 1.0 / (e + 1), "test_accuracy": 0.9 + e / 100} for e in range(3)]
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "summary.json").write_text(json.dumps({"best_test_accuracy": 0.92}))
    return d


def section(md: str, title: str) -> str:
    start = md.index(f"## {title}")
    end = md.find("\n## ", start + 1)
    return md[start:end if end != -1 else None]


def test_markdown_timeline_has_one_row_per_segment_and_the_cost_comparison(tmp_path):
    d = write_run(tmp_path / RUN, [dict(s) for s in SEGMENTS], manifest_extra={"recoveries": 2, "cost_estimate": TOTAL})
    out = report.render(d)
    md = out["markdown"].read_text()
    tl = section(md, "Timeline")
    assert "The run ran on 3 VMs (recovered 2 times)." in tl
    assert ("| # | VM | zone | kind | start (UTC) | end (UTC) | duration | ended by | resumed from | cost |") in tl
    assert (f"| 1 | ferry-{RUN} | us-central1-a | spot | 2026-12-01 12:00:00 | 2026-12-01 13:00:00 | 60.0 min "
            "| preempted | — | $0.1900 |") in tl
    assert (f"| 2 | ferry-{RUN}-2 | us-central1-b | spot | 2026-12-01 13:01:00 | 2026-12-01 13:31:00 | 30.0 min "
            "| preempted | ckpt-000002.ckpt | $0.0950 |") in tl
    assert (f"| 3 | ferry-{RUN}-3 | us-central1-a | on demand | 2026-12-01 13:32:00 | 2026-12-01 13:47:00 | 15.0 min "
            "| succeeded | ckpt-000005.ckpt | $0.1350 |") in tl
    assert f"${TOTAL:.4f}" == "$0.4200" and f"${ON_DEMAND:.4f}" == "$0.9450" and f"{SAVING:.1f}" == "55.6"
    assert "Cost: $0.4200 in all; the same time on demand: $0.9450 (saved 55.6%)." in tl
    # the facts table's estimate is every VM's cost, not the last VM's price over the whole run
    assert "| cost estimate | $0.4200 |" in md
    data = out["data"]["timeline"]
    assert abs(data["cost"] - TOTAL) < 1e-9 and abs(data["on_demand"] - ON_DEMAND) < 1e-9
    assert abs(data["saving_pct"] - SAVING) < 1e-9
    # the rest of the report is as before
    assert "92.00%" in md and "## Epochs" in md and "## Settings" in md


def test_html_timeline_has_the_same_rows_and_numbers(tmp_path):
    d = write_run(tmp_path / RUN, [dict(s) for s in SEGMENTS])
    page = report.render(d)["html"].read_text()
    assert "<h2>Timeline</h2>" in page
    assert "<th>resumed from</th>" in page and "<th>ended by</th>" in page
    assert (f"<tr><td>2</td><td>ferry-{RUN}-2</td><td>us-central1-b</td><td>spot</td><td>2026-12-01 13:01:00</td>"
            "<td>2026-12-01 13:31:00</td><td>30.0 min</td><td>preempted</td><td>ckpt-000002.ckpt</td>"
            "<td>$0.0950</td></tr>") in page
    assert "<td>on demand</td>" in page and "<td>ckpt-000005.ckpt</td>" in page
    assert "Cost: $0.4200 in all; the same time on demand: $0.9450 (saved 55.6%)." in page


def test_run_without_segments_has_no_timeline(tmp_path):
    d = write_run(tmp_path / RUN)
    out = report.render(d)
    md, page = out["markdown"].read_text(), out["html"].read_text()
    assert "Timeline" not in md and "Timeline" not in page
    assert out["data"]["timeline"] is None
    assert "| cost estimate | $0.9570 |" in md  # the old estimate: 6380 s at the manifest's $0.54/h
    assert "92.00%" in md


def test_one_on_demand_segment_has_no_timeline_one_spot_segment_has_one(tmp_path):
    on_demand = dict(SEGMENTS[2], index=0, resumed_from=None)
    md = report.render(write_run(tmp_path / "a" / RUN, [on_demand]))["markdown"].read_text()
    assert "## Timeline" not in md
    spot = dict(SEGMENTS[0], ended_by="succeeded")
    md = report.render(write_run(tmp_path / "b" / RUN, [spot]))["markdown"].read_text()
    tl = section(md, "Timeline")
    assert "The run ran on 1 VM." in tl and "| spot |" in tl and "| succeeded | — | $0.1900 |" in tl
    assert "Cost: $0.1900 in all; the same time on demand: $0.5400 (saved 64.8%)." in tl


def test_missing_fields_show_a_dash_and_unpriced_segments_are_said(tmp_path):
    bare = {"index": 1, "vm": f"ferry-{RUN}-2"}  # no zone, kind, times, price, cost
    restart = {"index": 2, "spot": True, "resumed_from": None, "started": "2026-12-01T14:00:00Z"}  # running, from scratch
    d = write_run(tmp_path / RUN, [dict(SEGMENTS[0]), bare, restart], state="running",
                  heartbeat=records.iso())  # a live heartbeat: the last segment is still running
    out = report.render(d)
    tl = section(out["markdown"].read_text(), "Timeline")
    assert f"| 2 | ferry-{RUN}-2 | — | — | — | — | — | — | — | — |" in tl
    assert "| 3 | — | — | spot | 2026-12-01 14:00:00 | — | — | (running) | from scratch | — |" in tl
    assert "Cost: at least $0.1900 in all; the same time on demand: $0.5400 (saved 64.8%); 2 VMs without a price not counted." in tl
    assert "Timeline" in out["html"].read_text()


def test_no_prices_at_all(tmp_path):
    segs = [{k: v for k, v in s.items() if k not in ("cost", "seconds", "price_per_hour", "on_demand_per_hour")}
            for s in SEGMENTS]
    tl = section(report.render(write_run(tmp_path / RUN, segs))["markdown"].read_text(), "Timeline")
    assert "| 60.0 min | preempted | — | — |" in tl  # duration from start and end
    assert "Cost: — (no prices recorded for these VMs)." in tl


def test_malformed_segments_do_not_break_the_report(tmp_path):
    md = report.render(write_run(tmp_path / "a" / RUN, "not a list"))["markdown"].read_text()
    assert "Timeline" not in md
    md = report.render(write_run(tmp_path / "b" / RUN, [None, 3, dict(SEGMENTS[0])]))["markdown"].read_text()
    assert "The run ran on 1 VM." in md


# --------------------------------------------------------------------------- runs
def put(bucket, name, data):
    bucket.blob(name).upload_from_string(json.dumps(data))


def test_runs_records_count_recoveries(gcs):
    _, bucket = gcs
    recovered, old, counted = RUN, "mnist-nn-20250101-000000-abcd", "mnist-nn-20240101-000000-wxyz"
    put(bucket, f"runs/{recovered}/manifest.json", {"run_id": recovered, "job": "mnist-nn", "recoveries": 2})
    put(bucket, f"runs/{recovered}/status.json", {"state": "succeeded", "started": "2026-12-01T12:00:40Z",
                                                  "ended": "2026-12-01T13:47:00Z", "segments": SEGMENTS})
    put(bucket, f"runs/{old}/manifest.json", {"run_id": old, "job": "mnist-nn"})
    put(bucket, f"runs/{old}/status.json", {"state": "succeeded", "started": "2025-01-01T00:00:00Z",
                                            "ended": "2025-01-01T00:01:00Z"})
    put(bucket, f"runs/{counted}/manifest.json", {"run_id": counted, "job": "mnist-nn", "recoveries": 1})
    put(bucket, f"runs/{counted}/status.json", {"state": "failed"})
    rows = records.list_runs(bucket)
    assert [r["run_id"] for r in rows] == [recovered, old, counted]
    assert [r["recoveries"] for r in rows] == [2, 0, 1]
    assert records.record(bucket, recovered)["recoveries"] == 2
    assert json.loads(json.dumps(rows))[0]["recoveries"] == 2  # what --json prints


def test_runs_table_shows_recoveries_in_the_state_cell(gcs, monkeypatch, capsys):
    from jobs import commands

    _, bucket = gcs
    put(bucket, f"runs/{RUN}/manifest.json", {"run_id": RUN, "job": "mnist-nn"})
    put(bucket, f"runs/{RUN}/status.json", {"state": "succeeded", "segments": SEGMENTS})
    old = "mnist-nn-20250101-000000-abcd"
    put(bucket, f"runs/{old}/status.json", {"state": "succeeded"})
    monkeypatch.setattr(commands, "bucket_of", lambda settings, create=True: bucket)
    commands.runs(SimpleNamespace(json=False, bucket=bucket.name))
    got = capsys.readouterr()  # not a terminal: the rows on stdout, the note on stderr
    assert "succeeded ↻2" in got.out and "↻N: recovered N times" in got.err
    assert got.out.count("↻") == 1  # the old run has no mark
    commands.runs(SimpleNamespace(json=True, bucket=bucket.name))
    rows = json.loads(capsys.readouterr().out)
    assert [r["recoveries"] for r in rows] == [2, 0]
