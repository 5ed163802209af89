"""`ui`, the read-only dashboard, over HTTP: a real server on a free port of 127.0.0.1 in a
thread, over the local cloud's Cloud Storage, with run folders written the way runs write them
(status.json with its row in the metadata, manifest.json, metrics.jsonl and the log growing)
and one real run of the selftest job for the report. No mocks."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
from urllib.parse import urlsplit

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # pytest's importlib mode: no sys.path magic
from runhelp import REPO, SELFTEST, cli, cloud, env_of, run_ids, settings  # noqa: E402,F401

HOSTILE = '<img src=x onerror="alert(1)"><script>alert(2)</script>&'


# --------------------------------------------------------------------------- helpers
class Http:
    def __init__(self, url: str):
        parts = urlsplit(url)
        self.host, self.port = parts.hostname, parts.port

    def request(self, method: str, path: str, headers: dict | None = None, body: bytes | None = None):
        conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()

    def get(self, path: str, **kw):
        return self.request("GET", path, **kw)

    def page(self, path: str, status: int = 200) -> str:
        code, headers, body = self.get(path)
        assert code == status, (path, code, body[:500])
        assert headers["content-type"].startswith("text/html")
        return body.decode()

    def json(self, path: str, **kw):
        code, headers, body = self.get(path, **kw)
        assert code == 200, (path, code, body[:500])
        return json.loads(body), headers


@pytest.fixture
def ui(cloud, tmp_path):
    from jobs.dashboard import make_server

    server = make_server(settings(), port=0, cache=tmp_path / "cache").start()
    try:
        yield Http(server.url), server
    finally:
        server.shutdown()


def write_run(bucket, run_id: str, state: str = "succeeded", job: str = "mnist-nn", best: float | None = 0.9,
              params: dict | None = None, message: str | None = None, price: float = 0.54, metrics=(),
              log: str = "", ended: str | None = "2026-01-01T00:01:40Z"):
    """A run folder as `run` and the runner write it: manifest, status with its row, files."""
    from jobs import runs as records
    from trainer.report import ROW_KEY, row

    p = records.prefix(run_id)
    manifest = {"run_id": run_id, "job": job, "params": params or {"epochs": 3}, "vm": "ferry-vm-1",
                "zone": "us-central1-a", "machine_type": "n1-standard-4", "gpu": "t4", "price_per_hour": price,
                "created": "2026-01-01T00:00:00Z", "code_hash": "abc123"}
    if ended:
        manifest.update(ended=ended, cost_estimate=0.015)
    records.put_json(bucket, p + "manifest.json", manifest)
    heartbeat = ended or records.iso()
    st = {"run_id": run_id, "state": state, "started": "2026-01-01T00:00:00Z" if ended else records.iso(),
          "heartbeat": heartbeat, "heartbeat_interval": 10.0, "exit_code": 0 if state == "succeeded" else None,
          "gpu": "t4"}
    if ended:
        st["ended"] = ended
    if message:
        st["message"] = message
    summary = {"best_test_accuracy": best} if best is not None else None
    if metrics:
        bucket.blob(p + "metrics.jsonl").upload_from_string("".join(json.dumps(m) + "\n" for m in metrics))
    if log:
        bucket.blob(p + "logs/output.log").upload_from_string(log)
    if summary and state == "succeeded":
        records.put_json(bucket, p + "summary.json", summary)
    records.put_json(bucket, p + "status.json", st, metadata={ROW_KEY: row(st, job, "ferry-vm-1", summary)})
    return st


def storage_calls(cloud) -> list[dict]:
    return [q for q in cloud.control.requests() if q["service"] == "storage"]


def object_names(bucket) -> dict[str, int]:
    return {b.name: b.generation for b in bucket.client.list_blobs(bucket)}


# --------------------------------------------------------------------------- the lists
def test_empty_bucket_says_so(ui):
    http_, server = ui
    assert server.httpd.server_address[0] == "127.0.0.1" and server.port > 0
    html = http_.page("/")
    assert "No runs in gs://ferry-local/runs/ yet" in html and "No sweeps in gs://ferry-local/sweeps/" in html
    assert http_.json("/api/runs")[0] == [] and http_.json("/api/sweeps")[0] == []


def test_unreachable_bucket_is_a_503_page_in_seconds_not_minutes(ui, cloud):
    """Cloud Storage answering 503 to everything: the lists give the 503 page once the bounded
    retries (~15 s) give up, not after the client's default two minutes; then it recovers."""
    import time

    http_, _ = ui
    write_run(cloud.bucket, "mnist-nn-20260101-000000-aaaa")
    cloud.control.fault("http_error", service="storage", status=503, count=10_000)
    t = time.monotonic()
    code, _, body = http_.get("/")
    waited = time.monotonic() - t
    assert code == 503 and b"The bucket could not be read" in body, (code, body[:300])
    assert waited < 40, waited
    cloud.control.clear_faults()
    assert "mnist-nn-20260101-000000-aaaa" in http_.page("/")


def test_runs_list_shows_state_job_start_duration_best_and_cost(ui, cloud):
    http_, _ = ui
    write_run(cloud.bucket, "mnist-nn-20260101-000000-aaaa", best=0.9123)
    write_run(cloud.bucket, "selftest-20260102-000000-bbbb", state="failed", job="selftest", best=None)
    write_run(cloud.bucket, "selftest-20260103-000000-cccc", state="running", job="selftest", ended=None, price=3.6)
    html = http_.page("/")
    rows = re.findall(r'<tr data-run="([^"]+)">(.*?)</tr>', html, re.S)
    assert [r[0] for r in rows] == ["selftest-20260103-000000-cccc", "selftest-20260102-000000-bbbb",
                                    "mnist-nn-20260101-000000-aaaa"]  # newest first
    done = rows[2][1]
    assert 'href="/runs/mnist-nn-20260101-000000-aaaa"' in done and ">mnist-nn<" in done
    assert 'class="badge ok">succeeded<' in done and "2026-01-01 00:00:00" in done
    assert "1.7 min" in done and "91.23%" in done and "$0.0150" in done  # the manifest's cost once ended
    assert 'class="badge bad">failed<' in rows[1][1]
    running = rows[0][1]
    assert 'class="badge live">running<' in running and "$0.00" in running  # price x time so far
    api = {r["run_id"]: r for r in http_.json("/api/runs")[0]}
    done_api = api["mnist-nn-20260101-000000-aaaa"]
    assert done_api["cost"] == 0.015 and done_api["best_accuracy"] == 0.9123
    assert api["selftest-20260103-000000-cccc"]["state"] == "running" and api["selftest-20260103-000000-cccc"]["cost"] >= 0
    # the fragment the page refreshes itself with: the same rows
    code, _, body = http_.get("/fragments/lists")
    assert code == 200 and body.decode().count("<tr data-run=") == 3


def test_list_refresh_reads_only_changed_manifests(ui, cloud):
    """Cost needs each run's manifest: read once, then again only when its generation changes."""
    http_, _ = ui
    for i in range(5):
        write_run(cloud.bucket, f"mnist-nn-20260101-00000{i}-abc{i}")
    http_.page("/")
    cloud.control.clear_requests()
    http_.json("/api/runs")
    reads = [q for q in storage_calls(cloud) if "manifest.json" in q["path"] and "/o/" in q["path"]]
    assert reads == [], reads
    write_run(cloud.bucket, "mnist-nn-20260101-000003-abc3", best=0.99)  # a new manifest generation
    cloud.control.clear_requests()
    rows, _ = http_.json("/api/runs")
    reads = [q["path"] for q in storage_calls(cloud) if "manifest.json" in q["path"] and "/o/" in q["path"]]
    assert len(reads) == 1 and "000003-abc3" in reads[0], reads
    assert len(rows) == 5


def test_sweeps_list_and_sweep_page_with_tasks(ui, cloud):
    from jobs import runs as records
    from trainer.report import ROW_KEY, row

    http_, _ = ui
    sid = "mnist-nn-20260105-000000-swp1"
    tasks = [{"index": i, "params": {"lr": lr, "seed": 0, "epochs": 3}} for i, lr in enumerate(("0.1", "0.01", "0.001"))]
    records.put_json(cloud.bucket, f"sweeps/{sid}/manifest.json", {
        "sweep_id": sid, "job": "mnist-nn", "grid": {"lr": ["0.1", "0.01", "0.001"]}, "parallel": 2, "tasks": tasks,
        "machine_type": "n1-standard-4", "gpu": "t4", "price_per_hour": 0.54, "created": "2026-01-05T00:00:00Z",
        "batch_job": "projects/p/locations/us-central1/jobs/ferry-x"})
    for i, state in ((0, "succeeded"), (1, "running")):
        st = {"state": state, "started": records.iso(), "heartbeat": records.iso(), "heartbeat_interval": 10.0}
        records.put_json(cloud.bucket, f"sweeps/{sid}/tasks/{i}/status.json", st,
                         metadata={ROW_KEY: row(st, "mnist-nn", None, {"best_test_accuracy": 0.8 + i / 100})})
    cloud.bucket.blob(f"sweeps/{sid}/tasks/1/metrics.jsonl").upload_from_string(
        json.dumps({"epoch": 0, "loss": 1.5, "test_accuracy": 0.5}) + "\n")
    cloud.bucket.blob(f"sweeps/{sid}/tasks/1/logs/output.log").upload_from_string("epoch 0 ...\n")

    html = http_.page("/")
    row_html = re.search(rf'<tr data-sweep="{sid}">(.*?)</tr>', html, re.S).group(1)
    assert f'href="/sweeps/{sid}"' in row_html and 'class="badge live">running<' in row_html
    assert ">3<" in row_html and "1 succeeded" in row_html and "1 running" in row_html and "1 waiting" in row_html
    assert "lr=0.1,0.01,0.001" in row_html and "81.00%" in row_html
    page = http_.page(f"/sweeps/{sid}")
    trs = re.findall(r'<tr data-task="(\d+)">(.*?)</tr>', page, re.S)
    assert [t[0] for t in trs] == ["0", "1", "2"]
    assert "lr=0.1" in trs[0][1] and "succeeded" in trs[0][1] and "80.00%" in trs[0][1]
    assert f'href="/sweeps/{sid}/tasks/1"' in trs[1][1] and "running" in trs[1][1]
    assert "waiting" in trs[2][1]
    detail, _ = http_.json(f"/api/sweeps/{sid}")
    assert [t["state"] for t in detail["tasks"]] == ["succeeded", "running", "waiting"]
    # a task's page is a run page over the task's folder
    task = http_.page(f"/sweeps/{sid}/tasks/1")
    assert "lr=0.1" not in task and "lr=0.01" in task and f'data-live="/api/sweeps/{sid}/tasks/1/live"' in task
    live, _ = http_.json(f"/api/sweeps/{sid}/tasks/1/live?m=0&l=-1")
    assert live["state"] == "running" and live["metrics"][0]["loss"] == 1.5 and live["log"] == "epoch 0 ...\n"
    http_.page(f"/sweeps/{sid}/tasks/7", status=404)
    http_.page("/sweeps/mnist-nn-20990101-000000-none", status=404)


# --------------------------------------------------------------------------- one run, live
def test_live_endpoint_sends_only_what_is_new(ui, cloud):
    http_, _ = ui
    rid = "selftest-20260106-000000-live"
    rows = [{"epoch": e, "loss": 1 / (e + 1), "test_accuracy": 0.5 + e / 10} for e in range(3)]
    write_run(cloud.bucket, rid, state="running", job="selftest", ended=None, metrics=rows[:2],
              log="".join(f"line {i}\n" for i in range(5000)))  # ~44 kB... and more below
    p = f"runs/{rid}/"
    big = "".join(f"line {i} " + "x" * 40 + "\n" for i in range(3000))  # > the 64 KiB tail
    cloud.bucket.blob(p + "logs/output.log").upload_from_string(big)

    first, headers = http_.json(f"/api/runs/{rid}/live?m=0&l=-1")
    assert first["state"] == "running" and not first["final"] and first["report"] is None
    assert [r["epoch"] for r in first["metrics"]] == [0, 1]
    assert first["m"] == len("".join(json.dumps(m) + "\n" for m in rows[:2]))
    assert first["l"] == len(big) and first["log_skipped"] > 0 and len(first["log"]) <= 64 * 1024
    assert first["log"].startswith("line ") and big.endswith(first["log"])  # the tail, from a line's start
    tag = headers["etag"]

    # nothing changed: the same question answers 304 after one listing call
    cloud.control.clear_requests()
    code, h2, body = http_.get(f"/api/runs/{rid}/live?m={first['m']}&l={first['l']}")
    assert code == 200
    again = json.loads(body)
    assert again["metrics"] == [] and again["log"] == "" and again["m"] == first["m"]
    code, h3, body = http_.get(f"/api/runs/{rid}/live?m={first['m']}&l={first['l']}",
                               headers={"If-None-Match": h2["etag"]})
    assert code == 304 and body == b"" and h3["etag"] == h2["etag"] != tag
    cloud.control.clear_requests()
    code, _, _ = http_.get(f"/api/runs/{rid}/live?m={first['m']}&l={first['l']}", headers={"If-None-Match": h2["etag"]})
    assert code == 304 and len(storage_calls(cloud)) == 1  # the listing alone

    # one more epoch and a line (the second half of it not yet written): only those come back
    cloud.bucket.blob(p + "metrics.jsonl").upload_from_string("".join(json.dumps(m) + "\n" for m in rows))
    cloud.bucket.blob(p + "logs/output.log").upload_from_string(big + "epoch 2 done\npartial")
    cloud.control.clear_requests()
    code, h4, body = http_.get(f"/api/runs/{rid}/live?m={first['m']}&l={first['l']}",
                               headers={"If-None-Match": h2["etag"]})
    assert code == 200 and h4["etag"] != h2["etag"]
    step = json.loads(body)
    assert [r["epoch"] for r in step["metrics"]] == [2] and step["log"] == "epoch 2 done\n"
    assert step["l"] == len(big) + len("epoch 2 done\n") and step["log_skipped"] == 0
    media = [q for q in storage_calls(cloud) if "alt=media" in (q.get("query") or "") or "alt=media" in q["path"]]
    assert len(media) <= 3, media  # status, metrics, log: each once (ranges), nothing listed twice

    # the run ends: the rest of the log (a last line without its newline too), final, a report link
    write_run(cloud.bucket, rid, state="succeeded", job="selftest", metrics=rows, log=big + "epoch 2 done\npartial")
    end, _ = http_.json(f"/api/runs/{rid}/live?m={step['m']}&l={step['l']}")
    assert end["final"] and end["state"] == "succeeded" and end["log"] == "partial" and end["metrics"] == []
    assert end["report"] == f"/runs/{rid}/report/" and end["best_accuracy"] == 0.9


def test_run_page_facts_and_escaping(ui, cloud):
    http_, _ = ui
    rid = "mnist-nn-20260107-000000-esc1"
    write_run(cloud.bucket, rid, state="failed", params={"message": HOSTILE, "epochs": 2}, message=HOSTILE,
              log=HOSTILE + "\n")
    code, headers, body = http_.get(f"/runs/{rid}")
    html = body.decode()
    assert code == 200 and "<script>alert" not in html and "<img src=x" not in html
    assert "&lt;img src=x onerror=&#34;alert(1)&#34;&gt;&lt;script&gt;alert(2)&lt;/script&gt;&amp;" in html
    assert "script-src 'self'" in headers["content-security-policy"] and headers["x-content-type-options"] == "nosniff"
    for fact in ("mnist-nn", "ferry-vm-1 in us-central1-a (n1-standard-4)", "t4", "epochs=2", "$0.5400/h", "abc123"):
        assert fact in html, fact
    assert 'class="badge bad" id="state">failed<' in html
    live, headers = http_.json(f"/api/runs/{rid}/live")
    assert live["log"] == HOSTILE + "\n" and live["message"] == HOSTILE  # JSON: the page inserts it as text
    assert headers["content-type"].startswith("application/json")
    assert "innerHTML" not in open(REPO / "jobs/dashboard/static/dashboard.js").read().split("function runPage")[1]


def test_report_of_a_real_finished_run(ui, cloud):
    http_, server = ui
    r = cli(cloud, "run", SELFTEST, "--set", "epochs=3", "--set", "message=" + HOSTILE)
    assert r.returncode == 0, r.stderr
    rid = run_ids(cloud.bucket)[0]
    html = http_.page("/")
    assert f'<tr data-run="{rid}">' in html and 'badge ok">succeeded<' in html
    page = http_.page(f"/runs/{rid}")
    assert f'data-src="/runs/{rid}/report/"' in page
    live, _ = http_.json(f"/api/runs/{rid}/live")
    assert live["final"] and [m["epoch"] for m in live["metrics"]] == [0, 1, 2] and "selftest end: exit 0" in live["log"]
    before = object_names(cloud.bucket)
    code, headers, body = http_.get(f"/runs/{rid}/report/")
    report = body.decode()
    assert code == 200 and headers["content-type"].startswith("text/html")
    assert f"selftest: {rid}" in report and "Best test accuracy" in report and "<script>alert" not in report
    assert headers["content-security-policy"].startswith("default-src 'none'")  # no script at all
    images = re.findall(r'<img src="([^"]+)"', report)
    assert "plots/loss.png" in images and "plots/accuracy.png" in images
    for src in images:
        code, h, data = http_.get(f"/runs/{rid}/report/{src}")
        assert code == 200 and h["content-type"] == "image/png" and data[:8] == b"\x89PNG\r\n\x1a\n"
    # pulled once: a second look reads no run object again
    cloud.control.clear_requests()
    assert http_.get(f"/runs/{rid}/report/")[0] == 200
    media = [q for q in storage_calls(cloud) if "alt=media" in (q.get("query") or "")]
    assert media == [], media
    # only report files are served from the pulled copy, and nothing was written to the bucket
    for other in ("manifest.json", "status.json", "logs/output.log", "../../../etc/passwd.png"):
        assert http_.get(f"/runs/{rid}/report/{other}")[0] == 404
    assert object_names(cloud.bucket) == before


def test_report_of_a_running_run_is_a_404_page(ui, cloud):
    http_, _ = ui
    rid = "selftest-20260108-000000-runn"
    write_run(cloud.bucket, rid, state="running", ended=None)
    html = http_.page(f"/runs/{rid}/report/", status=404)
    assert "has no report yet" in html


# --------------------------------------------------------------------------- safety
def test_read_only_loopback_and_404_pages(ui, cloud):
    http_, _ = ui
    rid = "mnist-nn-20260109-000000-ro01"
    write_run(cloud.bucket, rid)
    before = object_names(cloud.bucket)
    for method in ("POST", "PUT", "DELETE", "PATCH", "OPTIONS"):
        for path in ("/", f"/runs/{rid}", f"/api/runs/{rid}/live", "/api/runs", "/nowhere"):
            code, headers, body = http_.request(method, path, body=b"{}")
            assert code == 405, (method, path, code)
            assert headers["allow"] == "GET, HEAD" and b"read-only" in body
    assert object_names(cloud.bucket) == before
    # a page asked for under another name (DNS rebinding) is refused
    code, _, _ = http_.get("/", headers={"Host": "attacker.example"})
    assert code == 403
    assert http_.get("/", headers={"Host": f"localhost:{http_.port}"})[0] == 200
    for path in ("/runs/mnist-nn-20990101-000000-nope", "/runs/not-a-run-id", "/runs/x/report/", "/nowhere",
                 "/sweeps/nope", f"/api/runs/{rid}/live?m=abc"):
        code, headers, body = http_.get(path)
        assert code in (404, 400), (path, code)
        assert headers["content-type"].startswith("text/html") and b"all runs" in body
    assert b"no run" in http_.get("/runs/mnist-nn-20990101-000000-nope")[2]


def test_port_in_use_and_bad_port_are_one_line(ui, cloud):
    _, server = ui
    from infra.errors import UsageError
    from jobs.dashboard import make_server

    with pytest.raises(UsageError, match=f"--port {server.port}: cannot listen on 127.0.0.1"):
        make_server(settings(), port=server.port)
    r = cli(cloud, "ui", "--port", "70000")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "70000" in r.stderr, r.stderr
    r = cli(cloud, "ui", "--help")
    assert r.returncode == 0 and "--port" in r.stdout and "--open" in r.stdout


def test_cli_ui_prints_its_url_and_serves_until_interrupted(cloud):
    proc = subprocess.Popen([sys.executable, str(REPO / "cli.py"), "ui", "--port", "0"], cwd=cloud.home,
                            env=env_of(cloud), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        m = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
        assert m, (line, proc.stderr.read() if proc.poll() is not None else "")
        assert "read-only" in line
        assert Http(m.group(0)).page("/").count("No runs in") == 1
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130 and "Traceback" not in err, err


def test_cli_ui_open_hands_the_url_to_the_browser(cloud, tmp_path):
    import time

    opened = tmp_path / "opened"
    browser = tmp_path / "browser.sh"
    browser.write_text(f'#!/bin/sh\necho "$1" > "{opened}"\n')
    browser.chmod(0o755)
    proc = subprocess.Popen([sys.executable, str(REPO / "cli.py"), "ui", "--port", "0", "--open"], cwd=cloud.home,
                            env=env_of(cloud, BROWSER=f"{browser} %s"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        url = re.search(r"http://127\.0\.0\.1:\d+/", proc.stdout.readline()).group(0)
        deadline = time.monotonic() + 30
        while not (opened.exists() and opened.read_text().strip()) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert opened.read_text().strip() == url
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)
