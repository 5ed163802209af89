#!/usr/bin/env python3
"""ferry: run ML training jobs on GPU VMs on Google Cloud, or offline on a local Google Cloud.

Thin on purpose: each command parses its options, calls one library function and prints.
Heavy modules (the Google clients, TensorFlow, matplotlib, Flask) are imported inside the
commands that need them, so `--help` stays fast; no command imports google.cloud.compute_v1
(~1-3 s): Compute Engine is called over REST by infra/gce.py.
"""

from __future__ import annotations

import os
import sys

try:
    import click

    from infra.errors import FerryError
except ModuleNotFoundError as _missing:  # run outside ferry's environment: one line, no traceback
    sys.exit(f"error: ferry's dependencies are not installed here ({_missing}); install them with "
             "`python3 -m venv .venv && .venv/bin/pip install -e .`, then run `.venv/bin/ferry` (see README.md)")

PROG = "cli.py"


class Context:
    """Global options; settings are resolved only when a command asks for them."""

    def __init__(self, **flags):
        self.flags = flags
        self._settings = None

    @property
    def settings(self):
        if self._settings is None:
            from infra.settings import resolve

            self._settings = resolve(**self.flags)
        return self._settings

    @property
    def json(self) -> bool:
        return bool(self.flags.get("json"))


pass_ctx = click.make_pass_decorator(Context)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--backend", type=click.Choice(["local", "gcp"]), help="local (default without a GCP project) or gcp.  [env: FERRY_BACKEND]")
@click.option("--project", metavar="P", help="GCP project.  [env: GOOGLE_CLOUD_PROJECT]")
@click.option("--zone", metavar="Z", help="Preferred zone; failover may move on.  [env: CLOUDSDK_COMPUTE_ZONE]")
@click.option("--bucket", metavar="B", help="Bucket for datasets and runs.  [env: FERRY_BUCKET]")
@click.option("--json", "json_", is_flag=True, help="Machine-readable output (read commands).")
@click.option("-v", "--verbose", is_flag=True, help="More detail, including each API call.")
@click.pass_context
def main(ctx, backend, project, zone, bucket, json_, verbose):
    """ferry: GPU training jobs on Google Cloud, and the same workflow offline."""
    ctx.obj = Context(backend=backend, project=project, zone=zone, bucket=bucket, json=json_, verbose=verbose)
    if verbose:
        from infra import verbose as trace

        trace.install()


# --------------------------------------------------------------------------- VMs
@main.command()
@click.option("--gpu", metavar="NAME[:COUNT]", help="GPU type and count, e.g. t4 or v100:2 (see `gpus`).")
@click.option("--template", metavar="NAME", help="Template in infra/templates (default: default).")
@click.option("--name", metavar="VM", help="VM name (default: ferry-<user>-<gpu>).")
@click.option("--spot", is_flag=True, default=None, help="Spot VM: cheaper, may be preempted.")
@click.option("--max-hours", type=float, metavar="H", help="Cloud-side run-time limit; the VM deletes itself after H hours.")
@click.option("--dry-run", is_flag=True, help="Validate and show the exact request and cost; change nothing.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@pass_ctx
def up(ctx, **options):
    """Provision a GPU VM and wait until it answers SSH."""
    from infra.commands import up as command

    command(ctx.settings, **options)


@main.command()
@click.argument("vm", required=False)
@click.option("--all", "all_", is_flag=True, help="Every VM of yours.")
@click.option("--dry-run", is_flag=True, help="Show what would be deleted; change nothing.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@pass_ctx
def down(ctx, vm, all_, dry_run, yes):
    """Delete a VM (or --all of yours). A VM that is already gone is fine."""
    from infra.commands import down as command

    command(ctx.settings, vm=vm, all_=all_, dry_run=dry_run, yes=yes)


@main.command()
@pass_ctx
def status(ctx):
    """Your VMs in every zone: state, GPU, age, cost so far, auto-delete time."""
    from infra.commands import status as command

    command(ctx.settings)


@main.command()
@click.option("--dry-run", is_flag=True, help="List what would be deleted; change nothing.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.option("--all-owners", is_flag=True, help="Consider every owner's ferry VMs, not only yours.")
@pass_ctx
def cleanup(ctx, dry_run, yes, all_owners):
    """Delete your ferry VMs that no live run owns (stopped, run over, past their limit)."""
    from infra.commands import cleanup as command

    command(ctx.settings, dry_run=dry_run, yes=yes, all_owners=all_owners)


@main.command()
@pass_ctx
def gpus(ctx):
    """The GPU catalog: type, memory, machine series, price per hour, end of life."""
    from infra.commands import gpus as command

    command(json_output=ctx.json)


# --------------------------------------------------------------------------- jobs
@main.command()
@click.argument("job", metavar="JOB|PATH")
@click.option("--vm", metavar="VM", help="Run on this VM and leave it running.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a job parameter (repeatable).")
@click.option("--keep", is_flag=True, help="Keep the VM this run provisions.")
@click.option("--detach", is_flag=True, help="Return once the job runs; reattach with `logs --follow`.")
@click.option("--dry-run", is_flag=True, help="Show the VM, the sync and the command; change nothing.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask before a VM that may cost more than $25.")
@click.option("--spot", is_flag=True, help="A Spot VM (60-91% cheaper; may be preempted: recovered, see --recover).")
@click.option("--recover", type=int, metavar="N", help="On preemption or VM loss, resume on a new VM from the last "
              "checkpoint, up to N times (default 3 for spot, else 0).")
@click.option("--fallback", metavar="on-demand", help="A spot run with no spot capacity in any zone uses on-demand.")
@pass_ctx
def run(ctx, job, vm, overrides, keep, detach, dry_run, yes, spot, recover, fallback):
    """Run JOB (a built-in job, or PATH to your own job file) on a VM: provision, sync, run, stream logs,
    summarise, tear down."""
    from jobs.commands import run as command

    command(ctx.settings, job=job, vm=vm, overrides=overrides, keep=keep, detach=detach, dry_run=dry_run, yes=yes,
            spot=spot, recover=recover, fallback=fallback)


@main.command()
@click.argument("run_id", metavar="RUN|latest")
@click.option("--vm", metavar="VM", help="Resume on this VM (left running) instead of a new one.")
@click.option("--recover", type=int, metavar="N", help="Recoveries allowed from here (default 3 for spot, else 0).")
@click.option("--fallback", metavar="on-demand", help="No spot capacity in any zone: use on-demand.")
@click.option("--dry-run", is_flag=True, help="Show what would resume, from which checkpoint; change nothing.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask before a VM that may cost more than $25.")
@pass_ctx
def resume(ctx, run_id, vm, recover, fallback, dry_run, yes):
    """Continue a preempted, lost or cancelled run from its last checkpoint (same run id)."""
    from jobs.commands import resume as command

    command(ctx.settings, run_id=run_id, vm=vm, recover=recover, fallback=fallback, dry_run=dry_run, yes=yes)


class SweepGroup(click.Group):
    """`sweep JOB ...` submits; `sweep status|logs|cancel|pull ID` look after one."""

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["start", *args]
        return super().parse_args(ctx, args)


@main.group(cls=SweepGroup)
def sweep():
    """Run JOB over a grid of parameters on Cloud Batch: `sweep JOB --set K=V1,V2 --set seed=0..9`."""


@sweep.command("start", hidden=True)
@click.argument("job", metavar="JOB|PATH")
@click.option("--set", "sets", multiple=True, metavar="KEY=V1,V2|A..B", help="A parameter's values (repeatable; the grid is their product).")
@click.option("--parallel", type=int, metavar="N", help="Tasks at once (default up to 4).")
@click.option("--spot", is_flag=True, help="Spot VMs (Batch retries a preempted task; it resumes from its checkpoint).")
@click.option("--max-hours", type=float, metavar="H", help="Each task's run-time limit (default the template's).")
@click.option("--detach", is_flag=True, help="Return once submitted (default: watch until it ends; Ctrl-C cancels).")
@click.option("--dry-run", is_flag=True, help="Print the Batch job body and the cost; submit nothing.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask before a sweep that may cost more than $25.")
@pass_ctx
def sweep_start(ctx, job, sets, parallel, spot, max_hours, detach, dry_run, yes):
    """Submit JOB (a built-in job or PATH to a job file) over the grid as one Cloud Batch job."""
    from jobs.sweep import sweep as command

    command(ctx.settings, job=job, sets=sets, parallel=parallel, spot=spot, max_hours=max_hours, detach=detach,
            dry_run=dry_run, yes=yes)


@sweep.command("status")
@click.argument("sweep_id", metavar="ID|latest", required=False)
@pass_ctx
def sweep_status(ctx, sweep_id):
    """Each task: Batch's state, the run's state, best accuracy."""
    from jobs.sweep import status as command

    command(ctx.settings, sweep_id)


@sweep.command("logs")
@click.argument("sweep_id", metavar="ID")
@click.argument("task", type=int)
@click.option("--follow", "-f", is_flag=True, help="Keep printing until the task ends.")
@pass_ctx
def sweep_logs(ctx, sweep_id, task, follow):
    """One task's log."""
    from jobs.sweep import logs as command

    command(ctx.settings, sweep_id, task, follow)


@sweep.command("cancel")
@click.argument("sweep_id", metavar="ID")
@pass_ctx
def sweep_cancel(ctx, sweep_id):
    """Delete the sweep's Batch job (and so its VMs)."""
    from jobs.sweep import cancel as command

    command(ctx.settings, sweep_id)


@sweep.command("pull")
@click.argument("sweep_id", metavar="ID|latest")
@click.option("--to", "dest", metavar="DIR", help="Where to put it (default: ./sweeps/ID).")
@pass_ctx
def sweep_pull(ctx, sweep_id, dest):
    """Every task's folder and one report: mean, std and 95% CI over seeds."""
    from jobs.sweep import pull as command

    command(ctx.settings, sweep_id, dest)


@main.command()
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True, help="How many sweeps.")
@pass_ctx
def sweeps(ctx, limit):
    """Sweeps recorded in the bucket."""
    from jobs.sweep import sweeps as command

    command(ctx.settings, limit)


@main.command()
@click.argument("run_id", metavar="RUN|latest")
@click.option("--follow", "-f", is_flag=True, help="Keep printing until the run ends.")
@click.option("--raw", is_flag=True, help="The unfiltered log (with TensorFlow's C++ and absl lines).")
@pass_ctx
def logs(ctx, run_id, follow, raw):
    """Print a run's log (from the bucket); with --json, the log and the run's state as JSON."""
    from jobs.commands import logs as command

    command(ctx.settings, run_id=run_id, follow=follow, raw=raw)


@main.command()
@click.option("--job", metavar="JOB", help="Only runs of this job.")
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True, help="How many runs.")
@pass_ctx
def runs(ctx, job, limit):
    """Runs recorded in the bucket: job, state, start, duration, best accuracy."""
    from jobs.commands import runs as command

    command(ctx.settings, job=job, limit=limit)


@main.command()
@click.argument("run_id", metavar="RUN|latest")
@click.option("--to", "dest", metavar="DIR", help="Where to put the run folder (default: ./runs/RUN).")
@pass_ctx
def pull(ctx, run_id, dest):
    """Download a run's results and render its report (Markdown, HTML, plots)."""
    from jobs.commands import pull as command

    command(ctx.settings, run_id=run_id, dest=dest)


@main.command()
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True, metavar="PORT",
              help="Port on 127.0.0.1 (0: a free one).")
@click.option("--open", "open_browser", is_flag=True, help="Open the dashboard in a web browser.")
@pass_ctx
def ui(ctx, port, open_browser):
    """A read-only web dashboard over the bucket on 127.0.0.1: runs, sweeps, live curves and logs, reports."""
    from jobs.dashboard import serve

    serve(ctx.settings, port=port, open_browser=open_browser,
          on_ready=lambda url: click.echo(f"ferry dashboard: {url}  (read-only, 127.0.0.1 only; Ctrl-C stops it)"))


@main.command(context_settings={"ignore_unknown_options": False})
@click.argument("target", metavar="VM|RUN|latest")
@click.argument("command", nargs=-1, type=click.UNPROCESSED, metavar="[-- CMD...]")
@click.option("-L", "forwards", multiple=True, metavar="[BIND:]PORT:HOST:PORT", help="Forward a local port (as ssh -L; repeatable).")
@click.option("--print", "print_only", is_flag=True, help="Print the ssh command instead of running it.")
@pass_ctx
def ssh(ctx, target, command, forwards, print_only):
    """A shell (or CMD) on a VM, or on a run's VM, with its pinned host key (OpenSSH)."""
    from jobs.shell import ssh as command_

    command_(ctx.settings, target, forwards=forwards, command=command, print_only=print_only)


@main.command(name="ssh-config")
@click.option("--install", is_flag=True, help="Add the Include line to ~/.ssh/config (asks first).")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@pass_ctx
def ssh_config(ctx, install, yes):
    """Entries for `ssh ferry-NAME` (and scp, rsync, editors) for each VM of yours, pinned keys."""
    from jobs.shell import ssh_config as command

    result = command(ctx.settings, install=install, yes=yes)
    if ctx.json:
        import json

        click.echo(json.dumps(result, indent=2))
        return
    for e in result["entries"]:
        click.echo(f"{e['alias']:<32} ssh {e['alias']}   (VM {e['vm']})")
    for e in result["skipped"]:
        click.echo(f"{e['vm']:<32} no entry: {e['why']}")
    if not result["entries"] and not result["skipped"]:
        click.echo("no VMs of yours are up; entries are written when ferry brings one up")
    if result["installed"] is None:
        click.echo(f"config: {result['config']}; use it from any ssh with `{result['include']}` at the top of "
                   f"{result['user_config']} (`ssh-config --install`), or `ssh -F {result['config']} ALIAS`")
    else:
        click.echo(f"{result['user_config']}: " + ("Include line added" if result["installed"] else "already includes ferry's config"))


@main.command()
@click.argument("run_id", metavar="RUN|latest")
@click.option("--port", type=int, metavar="N", help="Local port (default: a free one).")
@click.option("--to", "dest", metavar="DIR", help="Where the event files go (default: ./runs/RUN/tensorboard).")
@click.option("--print", "print_only", is_flag=True, help="Pull the event files and print the command; do not start it.")
@pass_ctx
def tensorboard(ctx, run_id, port, dest, print_only):
    """Pull a run's TensorBoard event files and start TensorBoard on 127.0.0.1."""
    from jobs.tensorboard import tensorboard as command

    command(ctx.settings, run_id, port=port, print_only=print_only, dest=dest)


@main.command(name="jobs")
@click.argument("job", metavar="[JOB|PATH]", required=False)
@pass_ctx
def jobs_(ctx, job):
    """Built-in jobs and this project's job files; JOB: every parameter with type, default and range."""
    from jobs.commands import list_jobs as command

    command(json_output=ctx.json, job=job)


@main.command()
@click.argument("directory", metavar="[DIR]", required=False)
@click.option("--force", is_flag=True, help="Overwrite DIR/job.yaml and DIR/.ferryignore if they exist.")
def init(directory, force):
    """Write a commented example job file (DIR/job.yaml) and an ignore file (DIR/.ferryignore)."""
    from jobs.commands import init as command

    command(directory, force=force)


@main.group()
def data():
    """Datasets in the bucket."""


@data.command(name="push")
@click.argument("dataset")
@click.option("--from", "source", metavar="DIR|URL", help="Where to take it from (default: FERRY_DATA_SOURCE, else the public source).")
@pass_ctx
def data_push(ctx, dataset, source):
    """Stage DATASET in gs://BUCKET/datasets/, checksummed."""
    from jobs.commands import data_push as command

    command(ctx.settings, dataset=dataset, source=source)


# --------------------------------------------------------------------------- local backend
@main.group()
def local():
    """The local Google Cloud (Compute Engine, Cloud Storage, VMs over SSH) on 127.0.0.1."""


@local.command(name="start")
@pass_ctx
def local_start(ctx):
    """Start the local service (commands also start it on first use)."""
    from infra.local.commands import start as command

    command(json_output=ctx.json)


@local.command(name="stop")
@pass_ctx
def local_stop(ctx):
    """Stop the local service and every VM; no process is left behind."""
    from infra.local.commands import stop as command

    command(json_output=ctx.json)


@local.command(name="status")
@pass_ctx
def local_status(ctx):
    """Whether it runs, and its endpoints (with --json, for pointing any client at it)."""
    from infra.local.commands import status as command

    command(json_output=ctx.json)


@local.command(name="env")
@pass_ctx
def local_env(ctx):
    """Exports for third-party tools: eval "$(python cli.py local env)" (token, endpoints)."""
    from infra.local.commands import env as command

    command(json_output=ctx.json)


@local.command(name="reset")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@pass_ctx
def local_reset(ctx, yes):
    """Stop the service and wipe its state (VMs, buckets, request log)."""
    from infra.local.commands import reset as command

    command(json_output=ctx.json, yes=yes)


def _usage_line(exc: click.UsageError) -> str:
    """Click's three-line usage error as one line: what is wrong, and where the help is."""
    message = " ".join(exc.format_message().split()).rstrip(".")
    if message[:1].isupper() and not message[1:2].isupper():
        message = message[0].lower() + message[1:]
    path = exc.ctx.command_path if exc.ctx is not None else PROG
    python = "python " if path.startswith("cli.py") else ""
    return f"error: {message} (see `{python}{path} --help`)"


def run_cli(argv=None) -> int:
    """Entry point: every FerryError becomes one line and its exit code; SIGINT, SIGTERM and
    SIGHUP tear down what the command created and exit 128 + the signal."""
    from infra import interrupts

    previous = interrupts.install()
    try:
        return _run(argv)
    finally:
        interrupts.restore(previous)


def _run(argv) -> int:
    from infra import interrupts

    argv = list(sys.argv[1:] if argv is None else argv)
    if "--json" in argv[: argv.index("--") if "--" in argv else len(argv)]:  # before or after the command
        argv.remove("--json")
        argv.insert(0, "--json")
    try:
        main.main(args=argv, prog_name=PROG, standalone_mode=False)
    except FerryError as exc:
        if not getattr(exc, "said", False):
            click.echo(f"error: {exc}", err=True)
        return exc.exit_code
    except (click.exceptions.Abort, KeyboardInterrupt) as exc:
        _echo_safe("interrupted")
        return getattr(exc, "exit_code", None) or interrupts.exit_code(130)
    except click.UsageError as exc:
        click.echo(_usage_line(exc), err=True)
        return 2
    except click.ClickException as exc:
        click.echo(f"error: {' '.join(exc.format_message().split())}", err=True)
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except ModuleNotFoundError as exc:  # an optional dependency a command needs (e.g. the tf extra)
        return _missing_module(exc)
    except Exception as exc:  # noqa: BLE001 - only a Google client's own errors become a line
        from infra.errors import cloud_error_of

        error = cloud_error_of(exc)
        if error is None:
            raise
        click.echo(f"error: {error}", err=True)
        return error.exit_code
    if interrupts.received():  # a signal arrived during a teardown that then completed
        _echo_safe("interrupted")
        return interrupts.exit_code()
    return 0


def _missing_module(exc: ModuleNotFoundError) -> int:
    extra = " (`pip install -e '.[tf]'`)" if exc.name and exc.name.split(".")[0] in ("tensorflow", "tensorboard") else ""
    click.echo(f"error: {exc.name or exc} is not installed in this environment{extra}", err=True)
    return 2


def _echo_safe(text: str) -> None:
    try:
        click.echo(text, err=True)
    except OSError:  # the terminal went away (SIGHUP)
        pass


def console() -> None:
    """The `ferry` console script (installed by `pip install`): the same CLI under its own name."""
    global PROG
    PROG = os.path.basename(sys.argv[0]) or "ferry"
    sys.exit(run_cli())


if __name__ == "__main__":
    sys.exit(run_cli())
