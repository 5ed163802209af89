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
def _job_row(j, path=None) -> dict:
    return {"name": j.name, "description": j.description, "datasets": list(j.datasets), "template": j.template,
            "params": {k: p.default for k, p in j.params.items()}, "path": str(path) if path else None,
            "builtin": bool(j.builtin)}


def list_jobs(json_output: bool = False, job: str | None = None) -> None:
    """Built-in jobs and the job files of the current project; `job` given: that job in full."""
    if job:
        return show_job(job, json_output)
    jobs = catalog.load_all()
    project = []
    for path in catalog.project_files():
        try:
            project.append((path, catalog.get(str(path)), None))
        except UsageError as exc:
            project.append((path, None, str(exc)))
    if json_output:
        out = [_job_row(j) for j in jobs.values()]
        out += [_job_row(j, p) if j else {"path": str(p), "error": err} for p, j, err in project]
        click.echo(json.dumps(out, indent=2))
        return
    from infra.tables import Column, show

    def shown(j) -> str:
        return ", ".join(f"{k}={p.default}" for k, p in j.params.items() if p.default is not None)

    show([Column("job"), Column("datasets", drop=2), Column("template", drop=3), Column("parameters (defaults)", drop=1),
          Column("description")],
         [[j.name, ", ".join(j.datasets) or "-", j.template, shown(j), j.description] for j in jobs.values()],
         title="ferry jobs (run one: python cli.py run JOB|PATH [--set KEY=VALUE ...]; "
               "every parameter: python cli.py jobs JOB)")
    if not project:
        click.echo("no job files in this project (job.yaml, *.job.yaml); `python cli.py init` writes one", err=True)
        return
    rows = []
    for path, j, err in project:
        rel = str(path.relative_to(Path.cwd())) if path.is_relative_to(Path.cwd()) else str(path)
        rows.append([rel, "-", "-", "-", (err, "red")] if j is None else
                    [rel, j.name, ", ".join(j.datasets) or "-", shown(j), j.description])
    show([Column("file"), Column("job"), Column("datasets", drop=2), Column("parameters (defaults)", drop=1),
          Column("description")], rows, title=f"job files in {Path.cwd()}")


def _param_range(p) -> str:
    if p.type == "choice":
        return " | ".join(map(str, p.choices))
    if p.type == "bool":
        return "true | false"
    if p.type == "epoch-list":
        return "none | all | last | 0,4,last" + (f" (at least {p.min_items})" if p.min_items else "")
    if p.type == "str":
        return f"matches {p.pattern}" if p.pattern else "any text"
    def num(v):
        return str(v) if isinstance(v, int) else f"{v:g}"

    lo = "-inf" if p.min is None else num(p.min)
    hi = "inf" if p.max is None else num(p.max)
    return f"{lo} .. {hi}" + (" (finite)" if p.type == "float" else "")


def show_job(name: str, json_output: bool = False) -> None:
    """One job in full: what it runs and every parameter with type, default and range."""
    j = catalog.get(name, check_paths=False)
    info = {**_job_row(j, None if j.builtin else j.path), "command": list(j.command), "shell": j.shell,
            "workdir": str(j.workdir) if j.own_workdir else None, "setup": [c.text() for c in j.setup],
            "env": dict(j.env), "secrets": list(j.secrets), "outputs": list(j.outputs), "resume": j.resume,
            "resources": {"template": j.template, "gpu": j.gpu, "spot": j.spot, "max_hours": j.max_hours},
            "datasets": [{"name": d.name, "from": d.source} for d in j.sources] or list(j.datasets),
            "params": [{"name": p.name, "type": p.type, "default": p.default, "range": _param_range(p),
                        "flag": p.flag, "requires": dict(p.requires) or None, "help": p.help} for p in j.params.values()]}
    if json_output:
        click.echo(json.dumps(info, indent=2))
        return
    from rich.console import Console
    from rich.markup import escape

    console = Console(highlight=False, soft_wrap=not Console().is_terminal)
    console.print(f"[bold]{escape(j.name)}[/] — {escape(j.description or '(no description)')}")
    lines = [("file", str(j.path)), ("command", j.command[2] + "   (bash)" if j.shell else " ".join(j.command))]
    if j.own_workdir:
        lines.append(("workdir", str(j.workdir)))
    lines += [("setup", c.text()) for c in j.setup]
    lines += [("env", ", ".join(f"{k}={v}" for k, v in j.env.items())) if j.env else None,
              ("secrets", ", ".join(j.secrets)) if j.secrets else None,
              ("datasets", ", ".join(map(str, j.sources)) or "none"),
              ("outputs", ", ".join(j.outputs)) if j.outputs else None,
              ("resources", f"template {j.template}" + (f", gpu {j.gpu}" if j.gpu else "")
               + (", spot" if j.spot else "") + (f", at most {j.max_hours:g} h" if j.max_hours else "")),
              ("resume", j.resume or "no checkpoints (a recovered run starts over)")]
    for line in lines:
        if line:
            console.print(f"  {line[0]:<10} {escape(line[1])}")
    from infra.tables import Column, show

    show([Column("parameter"), Column("type"), Column("default"), Column("allowed"), Column("flag", drop=1),
          Column("help")],
         [[p.name, p.type, "-" if p.default is None else str(p.default),
           _param_range(p) + "".join(f"; only with {k}={v}" for k, v in p.requires), p.flag or "-", p.help]
          for p in j.params.values()],
         title=f"parameters (python cli.py run {name} --set KEY=VALUE)")


def init(directory: str | None = None, force: bool = False) -> None:
    """Write DIR/job.yaml (a commented example) and DIR/.ferryignore; never overwrite either."""
    from jobs import jobfile

    target = Path(directory or ".")
    if target.exists() and not target.is_dir():
        raise UsageError(f"{target}: is a file, not a folder", hint="nothing was written")
    files = {target / "job.yaml": jobfile.EXAMPLE.format(name=jobfile.default_name(target.resolve() / "job.yaml")),
             target / ".ferryignore": jobfile.IGNORE_EXAMPLE}
    there = [str(p) for p in files if p.exists()]
    if there and not force:
        raise UsageError(f"{', '.join(there)} already exist{'s' if len(there) == 1 else ''}",
                         hint="nothing was written; pass --force to overwrite")
    target.mkdir(parents=True, exist_ok=True)
    for path, text in files.items():
        path.write_text(text)
        say(f"wrote {path}")
    say(f"next: edit {target / 'job.yaml'}, then `python cli.py run {target / 'job.yaml'} --dry-run`")


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


def logs(settings, run_id: str, follow: bool = False, raw: bool = False) -> None:
    if settings.json and follow:
        raise UsageError("--json and --follow do not go together", hint="--json prints the log so far once; "
                         "follow with `logs RUN --follow`")
    if raw and follow:
        raise UsageError("--raw and --follow do not go together", hint="the raw log is complete once the run ends")
    bucket = bucket_of(settings, create=False)
    run_id = _resolve_run(bucket, run_id)
    out = sys.stdout.buffer

    def write(data: bytes) -> None:
        out.write(data)
        out.flush()

    from jobs.launch import follow_bucket, raise_for_state

    if not follow:
        from google.api_core.exceptions import NotFound

        data = _raw_log(bucket, run_id) if raw else None
        if data is None:  # a run whose log left nothing out keeps no separate raw log
            try:
                data = bucket.blob(records.prefix(run_id) + "logs/output.log").download_as_bytes()
            except NotFound:
                data = None
        if settings.json:
            status = records.get_json(bucket, records.prefix(run_id) + "status.json") or {}
            click.echo(json.dumps({"run_id": run_id, "state": records.effective_state(status),
                                   "log": None if data is None else data.decode("utf-8", "replace")}, indent=2))
        elif data is None:
            say(f"{run_id}: no log yet")
        else:
            write(data)
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


def _raw_log(bucket, run_id: str) -> bytes | None:
    """The unfiltered log: each VM's (segment's) logs/raw/segment-N.log in order, or None."""
    pre = records.prefix(run_id) + "logs/raw/"
    parts = []
    for blob in bucket.client.list_blobs(bucket, prefix=pre):
        tail = blob.name[len(pre):]
        if tail.startswith("segment-") and tail.endswith(".log") and tail[8:-4].isdigit():
            parts.append((int(tail[8:-4]), blob))
    if not parts:
        return None
    return b"".join(blob.download_as_bytes() for _, blob in sorted(parts, key=lambda p: p[0]))


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
    if job:  # any job's name: a built-in one or a job file's (which need not be here)
        from jobs.jobfile import JOB_NAME

        if not JOB_NAME.fullmatch(job):
            raise UsageError(f"--job {job!r} is not a job name",
                             hint="job names are 1-40 lowercase letters, digits or hyphens, e.g. scene-svm")
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

    from infra.tables import Column, show

    # a run recovered onto new VMs (spot preemption): `succeeded ↻2` in its state cell
    again = "↻" if Console().encoding.startswith("utf") else "+"
    colours = {"succeeded": "green", "failed": "red", "lost": "red", "preempted": "yellow", "cancelled": "yellow"}
    table = []
    for r in rows:
        acc = f"{100 * r['best_accuracy']:.2f}%" if isinstance(r["best_accuracy"], (int, float)) else "-"
        state = r["state"]
        started = (r["started"] or "-").replace("T", " ")[:19]
        recovered = f" {again}{r['recoveries']}" if r.get("recoveries") else ""
        table.append([r["run_id"], r["job"], (state + recovered, colours.get(state, "cyan")), started,
                      _fmt_duration(r["duration_s"]), acc, r.get("vm") or "-"])
    columns = [Column("run"), Column("job", drop=2), Column("state"), Column("started", drop=3),
               Column("duration", right=True, drop=1), Column("best acc.", right=True), Column("VM", drop=4)]
    notes = [f"{again}N: recovered N times onto a new VM"] if any(r.get("recoveries") for r in rows) else []
    show(columns, table, title=f"runs in gs://{settings.bucket}/runs/", notes=notes)


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
