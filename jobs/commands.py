"""The job commands behind cli.py: run (jobs/launch.py), logs, runs, pull (jobs/pull.py),
jobs, data push. Each one validates, calls the library and prints."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from infra.errors import Interrupted, UsageError, unknown
from jobs import catalog
from jobs import runs as records
from jobs.common import bucket_of, say


# --------------------------------------------------------------------------- jobs
def list_jobs(json_output: bool = False) -> None:
    jobs = catalog.load_all()
    if json_output:
        out = [{"name": j.name, "description": j.description, "datasets": list(j.datasets), "template": j.template,
                "params": {k: p.default for k, p in j.params.items()}} for j in jobs.values()]
        click.echo(json.dumps(out, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="ferry jobs  (run one: python cli.py run JOB [--set KEY=VALUE ...])", title_justify="left")
    for col in ("job", "datasets", "template", "parameters (defaults)", "description"):
        table.add_column(col, overflow="fold")
    for j in jobs.values():
        shown = ", ".join(f"{k}={p.default}" for k, p in j.params.items() if p.default is not None)
        table.add_row(j.name, ", ".join(j.datasets) or "-", j.template, shown, j.description)
    Console(width=max(120, Console().width)).print(table)


# --------------------------------------------------------------------------- data push
def data_push(settings, dataset: str, source: str | None = None) -> None:
    from jobs import datasets

    datasets.check_name(dataset)
    root = datasets.source_root(dataset, source, settings.home, progress=say)
    datasets.push(bucket_of(settings), dataset, root, progress=say)


# --------------------------------------------------------------------------- run
def run(settings, **options) -> None:
    from jobs import launch

    launch.run(settings, **options)


def resume(settings, **options) -> None:
    from jobs import launch

    launch.resume(settings, **options)


# --------------------------------------------------------------------------- logs
def _resolve_run(bucket, run_id: str) -> str:
    if run_id == "latest":
        found = records.latest(bucket)
        if not found:
            raise UsageError(f"no runs in gs://{bucket.name}/runs/")
        return found
    if not records.valid_run_id(run_id):
        raise UsageError(f"{run_id!r} is not a run id", hint="run ids look like mnist-nn-20250101-120000-ab12; see `python cli.py runs`")
    if records.get_json(bucket, records.prefix(run_id) + "status.json") is None and \
            records.get_json(bucket, records.prefix(run_id) + "manifest.json") is None:
        raise unknown("run", run_id, records.list_run_ids(bucket)[:50])
    return run_id


def logs(settings, run_id: str, follow: bool = False) -> None:
    bucket = bucket_of(settings, create=False)
    run_id = _resolve_run(bucket, run_id)
    out = sys.stdout.buffer

    def write(data: bytes) -> None:
        out.write(data)
        out.flush()

    from jobs.launch import follow_bucket, raise_for_state

    if not follow:
        from google.api_core.exceptions import NotFound

        try:
            write(bucket.blob(records.prefix(run_id) + "logs/output.log").download_as_bytes())
        except NotFound:
            say(f"{run_id}: no log yet")
        return
    try:
        final = follow_bucket(bucket, run_id, 0, write)
    except KeyboardInterrupt:
        say("stopped following; the run goes on (its VM deletes itself when the job ends)")
        raise Interrupted("interrupted") from None
    manifest = records.get_json(bucket, records.prefix(run_id) + "manifest.json") or {}
    if manifest.get("vm_created_by_run") and not manifest.get("kept") and manifest.get("vm"):
        _end_run_vm(settings, bucket, run_id, manifest)
    state = records.effective_state(final)
    say(f"{run_id} {state}")
    raise_for_state(state, final, run_id)


def _end_run_vm(settings, bucket, run_id: str, manifest: dict) -> None:
    """After a detached run: its VM normally deleted itself; delete what is left of it (e.g. one
    that could only power itself off). The manifest is only a hint (anyone who can write the
    bucket can write it): the instance must carry managed-by=ferry, ferry-owner=<you> and
    ferry-run=<this run>, checked on the instance itself."""
    from infra import provision
    from infra.errors import CloudError
    from jobs.launch import shielded

    with shielded("deleting the run's VM first; please wait"):
        try:
            if provision.delete(settings, manifest["vm"], manifest.get("zone"), provision.Proof(run_id=run_id)):
                say(f"VM {manifest['vm']} deleted")
            manifest["vm_deleted"] = True
            records.put_json(bucket, records.prefix(run_id) + "manifest.json", manifest)
        except CloudError as exc:
            say(f"warning: {exc}")
        except Exception as exc:
            say(f"warning: could not delete VM {manifest['vm']} ({exc})")


# --------------------------------------------------------------------------- runs
def _fmt_duration(s: float | None) -> str:
    if s is None:
        return "-"
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


def runs(settings, job: str | None = None, limit: int = 20) -> None:
    if job:
        catalog.get(job)
    bucket = bucket_of(settings, create=False)
    try:
        rows = records.list_runs(bucket, job=job, limit=limit)
    except Exception as exc:
        from google.api_core.exceptions import NotFound

        if isinstance(exc, NotFound):
            rows = []
        else:
            raise
    if settings.json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo(f"no runs in gs://{settings.bucket}/runs/" + (f" for {job}" if job else ""))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(120, Console().width))
    # a run recovered onto new VMs (spot preemption): `succeeded ↻2` in its state cell
    again = "↻" if console.encoding.startswith("utf") else "+"
    table = Table(title=f"runs in gs://{settings.bucket}/runs/", title_justify="left",
                  caption=f"{again}N: recovered N times onto a new VM" if any(r.get("recoveries") for r in rows) else None,
                  caption_justify="left")
    for col in ("run", "job", "state", "started", "duration", "best acc.", "VM"):
        table.add_column(col, no_wrap=col in ("run", "started", "state"))
    colours = {"succeeded": "green", "failed": "red", "lost": "red", "preempted": "yellow", "cancelled": "yellow"}
    for r in rows:
        acc = f"{100 * r['best_accuracy']:.2f}%" if isinstance(r["best_accuracy"], (int, float)) else "-"
        state = r["state"]
        started = (r["started"] or "-").replace("T", " ")[:19]
        recovered = f" {again}{r['recoveries']}" if r.get("recoveries") else ""
        table.add_row(r["run_id"], r["job"], f"[{colours.get(state, 'cyan')}]{state}[/]{recovered}", started,
                      _fmt_duration(r["duration_s"]), acc, r.get("vm") or "-")
    console.print(table)


# --------------------------------------------------------------------------- pull
def pull(settings, run_id: str, dest: str | None = None) -> None:
    target = Path(dest) if dest else None
    if target is not None and target.exists() and not target.is_dir():
        raise UsageError(f"--to {dest}: is a file, not a folder", hint="give a folder (it is created if absent); nothing was written")
    bucket = bucket_of(settings, create=False)
    run_id = _resolve_run(bucket, run_id)
    target = target or Path("runs") / run_id
    if target.exists() and not target.is_dir():
        raise UsageError(f"{target}: is a file, not a folder", hint="pass --to DIR; nothing was written")
    from jobs.pull import pull_run

    out = pull_run(bucket, run_id, target)
    click.echo(str(out["markdown"]))
    click.echo(str(out["html"]))
