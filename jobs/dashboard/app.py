"""The dashboard's web application (Flask): pages, their JSON endpoints, the reports' files.

Read-only by construction: every route is GET (HEAD too); any other method is a 405 page,
whatever the path. Requests must name this server by its loopback address (the Host header),
so a web page elsewhere cannot read the bucket through a DNS-rebound name. Templates escape
everything (Jinja's autoescape); the scripts put run logs in the page as text, never as HTML,
and the Content-Security-Policy allows only this server's own scripts.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from pathlib import Path

from flask import Flask, abort, jsonify, make_response, render_template, request, send_from_directory

from jobs import runs as records
from jobs.dashboard.data import Folder, Reader

HERE = Path(__file__).resolve().parent
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "frame-src 'self'; frame-ancestors 'self'; base-uri 'none'; form-action 'none'; object-src 'none'")
REPORT_CSP = ("default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'; frame-ancestors 'self'; "
              "base-uri 'none'; form-action 'none'")
REPORT_FILES = (".png", ".jpg", ".jpeg", ".svg", ".gif")
RUNS_SHOWN = 100
STATE_CLASS = {"succeeded": "ok", "failed": "bad", "lost": "bad", "cancelled": "warn", "preempted": "warn",
               "running": "live", "provisioning": "live", "syncing": "live", "queued": "idle", "waiting": "idle"}


# --------------------------------------------------------------------------- formatting (templates)
def fmt_pct(v) -> str:
    return f"{100 * v:.2f}%" if isinstance(v, (int, float)) and not isinstance(v, bool) else "—"


def fmt_duration(s) -> str:
    if not isinstance(s, (int, float)):
        return "—"
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


def fmt_money(v) -> str:
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        return "—"
    return f"${v:.4f}" if v < 1 else f"${v:.2f}"


def fmt_when(v) -> str:
    from infra.times import parse_time

    t = parse_time(v) if isinstance(v, str) else None
    return t.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S") if t else "—"


def create_app(reader: Reader, bucket_name: str, allowed_hosts: set[str] | None = None) -> Flask:
    """The application over `reader`. `allowed_hosts`: Host headers accepted (e.g.
    {"127.0.0.1:8765", "localhost:8765"}); the server fills it in once it knows its port."""
    app = Flask("ferry-dashboard", template_folder=str(HERE / "templates"), static_folder=str(HERE / "static"),
                static_url_path="/static")
    app.config.update(JSON_SORT_KEYS=False, SEND_FILE_MAX_AGE_DEFAULT=0)
    app.jinja_env.filters.update(pct=fmt_pct, duration=fmt_duration, money=fmt_money, when=fmt_when,
                                 state_class=lambda s: STATE_CLASS.get(s or "", "idle"))
    app.jinja_env.globals.update(bucket=bucket_name)
    hosts = allowed_hosts if allowed_hosts is not None else set()
    app.config["FERRY_ALLOWED_HOSTS"] = hosts

    def page(template: str, http_status: int = 200, **kw):
        return make_response(render_template(template, **kw), http_status)

    def error_page(code: int, title: str, detail: str = ""):
        resp = page("error.html", code, code=code, title=title, detail=detail)
        if code == 405:
            resp.headers["Allow"] = "GET, HEAD"
        return resp

    @app.before_request
    def guard():
        if hosts and request.host not in hosts:
            return error_page(403, "Forbidden", f"this dashboard answers only as {sorted(hosts)[0]}")
        if request.method not in ("GET", "HEAD"):
            return error_page(405, "Method not allowed", "the dashboard is read-only: it answers GET only")
        return None

    @app.after_request
    def headers(resp):
        resp.headers.setdefault("Content-Security-Policy", CSP)
        resp.headers["X-Content-Type-Options"] = "nosniff"
        resp.headers["Referrer-Policy"] = "no-referrer"
        resp.headers.setdefault("Cache-Control", "no-cache")
        return resp

    @app.errorhandler(Exception)
    def failed(exc):
        from werkzeug.exceptions import HTTPException

        if isinstance(exc, HTTPException):
            if exc.code == 405:
                return error_page(405, "Method not allowed", "the dashboard is read-only: it answers GET only")
            detail = exc.description or ""
            if exc.code == 404 and detail.startswith("The requested URL was not found"):
                detail = f"nothing here: {request.path}"
            return error_page(exc.code or 500, exc.name, detail)
        from google.api_core.exceptions import GoogleAPICallError, RetryError
        from google.auth.exceptions import GoogleAuthError
        from requests.exceptions import RequestException

        from jobs.follow import reason

        if isinstance(exc, (GoogleAPICallError, RetryError, GoogleAuthError, RequestException, OSError)):
            app.logger.warning("gs://%s unreadable: %s", bucket_name, reason(exc))  # one line, no traceback
            return error_page(503, "The bucket could not be read",
                              f"gs://{bucket_name}: {reason(exc)} (the page retries on its own)")
        app.logger.exception("dashboard request failed")
        return error_page(500, "Internal error", f"{type(exc).__name__}: {exc}")

    # ------------------------------------------------------------------ lists
    def lists():
        return {"runs": reader.runs_rows(limit=RUNS_SHOWN), "sweeps": reader.sweep_rows(), "now": time.time()}

    @app.get("/")
    def index():
        return page("index.html", **lists(), limit=RUNS_SHOWN)

    @app.get("/fragments/lists")
    def lists_fragment():
        return page("lists.html", **lists(), limit=RUNS_SHOWN)

    @app.get("/api/runs")
    def api_runs():
        return jsonify(reader.runs_rows(limit=RUNS_SHOWN))

    @app.get("/api/sweeps")
    def api_sweeps():
        return jsonify(reader.sweep_rows())

    # ------------------------------------------------------------------ one run (or sweep task)
    def run_folder(run_id: str) -> Folder:
        if not records.valid_run_id(run_id) or not reader.run_exists(run_id):
            abort(404, description=f"no run {run_id!r} in gs://{bucket_name}/runs/")
        return Folder.run(run_id)

    def task_folder(sweep_id: str, index: int) -> Folder:
        from jobs import sweep

        if not sweep.valid_sweep_id(sweep_id) or not reader.task_exists(sweep_id, index):
            abort(404, description=f"no task {index} in sweep {sweep_id!r}")
        return Folder.task(sweep_id, index)

    def run_page(folder: Folder):
        from jobs.dashboard.data import cost_of

        facts = reader.facts(folder)
        st = facts["status"]
        dur = records.duration_s(st, facts["manifest"]) if st else None
        return page("run.html", folder=folder, **facts, state=records.effective_state(st) if st else "waiting",
                    duration_s=dur, best=records.best_accuracy(facts["summary"], None),
                    cost=cost_of(facts["manifest"], dur), live_url="/api" + folder.url + "/live")

    def live(folder: Folder):
        def offset(name: str, default: int) -> int:
            try:
                return int(request.args.get(name, default))
            except ValueError:
                abort(400, description=f"{name}={request.args.get(name)!r} is not a whole number")

        got = reader.live(folder, offset("m", 0), offset("l", -1))
        if got is None:
            abort(404, description=f"no {folder.title} in gs://{bucket_name}/")
        etag = f'"{got["tag"]}"'
        if etag in [t.strip() for t in request.headers.get("If-None-Match", "").split(",")]:
            resp = make_response("", 304)
        else:
            resp = jsonify(got["read"]())
        resp.headers["ETag"] = etag
        return resp

    def report(folder: Folder, name: str):
        target = reader.reports.folder_of(folder)
        if target is None:
            abort(404, description=f"{folder.title} has no report yet: it is not over")
        if name == "":
            name = "report.html"
        elif not name.lower().endswith(REPORT_FILES):
            abort(404, description=f"the report has no file {name!r}")
        resp = send_from_directory(target, name, max_age=0)
        resp.headers["Content-Security-Policy"] = REPORT_CSP
        return resp

    @app.get("/runs/<run_id>")
    def run(run_id):
        return run_page(run_folder(run_id))

    @app.get("/api/runs/<run_id>/live")
    def run_live(run_id):  # no look-up first: the live listing itself tells a missing run
        if not records.valid_run_id(run_id):
            abort(404, description=f"{run_id!r} is not a run id")
        return live(Folder.run(run_id))

    @app.get("/runs/<run_id>/report/", defaults={"name": ""})
    @app.get("/runs/<run_id>/report/<path:name>")
    def run_report(run_id, name):
        return report(run_folder(run_id), name)

    # ------------------------------------------------------------------ sweeps
    @app.get("/sweeps/<sweep_id>")
    def sweep_page(sweep_id):
        from jobs import sweep

        detail = reader.sweep_detail(sweep_id) if sweep.valid_sweep_id(sweep_id) else None
        if detail is None:
            abort(404, description=f"no sweep {sweep_id!r} in gs://{bucket_name}/sweeps/")
        return page("sweep.html", **detail)

    @app.get("/api/sweeps/<sweep_id>")
    def api_sweep(sweep_id):
        from jobs import sweep

        detail = reader.sweep_detail(sweep_id) if sweep.valid_sweep_id(sweep_id) else None
        if detail is None:
            abort(404, description=f"no sweep {sweep_id!r}")
        return jsonify({k: v for k, v in detail.items() if k != "manifest"})

    @app.get("/sweeps/<sweep_id>/tasks/<int:index>")
    def task(sweep_id, index):
        return run_page(task_folder(sweep_id, index))

    @app.get("/api/sweeps/<sweep_id>/tasks/<int:index>/live")
    def task_live(sweep_id, index):
        from jobs import sweep

        if not sweep.valid_sweep_id(sweep_id):
            abort(404, description=f"{sweep_id!r} is not a sweep id")
        return live(Folder.task(sweep_id, index))

    @app.get("/sweeps/<sweep_id>/tasks/<int:index>/report/", defaults={"name": ""})
    @app.get("/sweeps/<sweep_id>/tasks/<int:index>/report/<path:name>")
    def task_report(sweep_id, index, name):
        return report(task_folder(sweep_id, index), name)

    @app.get("/favicon.ico")
    def favicon():
        return send_from_directory(HERE / "static", "favicon.svg", mimetype="image/svg+xml")

    app.jinja_env.globals["utcnow"] = lambda: datetime.now(timezone.utc).strftime("%H:%M:%S UTC")
    return app
