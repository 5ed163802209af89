"""`sweep`: one job over a grid of parameters, as one Cloud Batch job (Google's scheduler, not
ours). ferry prepares, submits, watches and reports; Batch provisions, queues, retries
preempted spot tasks and deletes its VMs.

A sweep task is a run executed another way: the same on-VM runner, the same folder layout
(`gs://BUCKET/sweeps/ID/tasks/INDEX/` is exactly `runs/RUN_ID/`), the same checkpoints (a
task Batch retries after a preemption resumes where it stopped), the same report per task.
Only the executor differs: `run` drives one VM over SSH (jobs/launch.py); a sweep hands
Batch a script that fetches the code archive from the bucket and starts the runner
(`ferry_runner.py batch-task`), which picks its parameters by BATCH_TASK_INDEX.

Grid: `--set KEY=V1,V2` (a list), `--set KEY=A..B` (whole numbers, inclusive), several keys:
their product. Each combination is validated with the job's parameter types first; an
epoch-list value takes `;` between alternatives (its own commas belong to it).
"""

from __future__ import annotations

import itertools
import json
import re
import time

import click

from infra.errors import CloudError, Interrupted, UsageError, unknown
from jobs import catalog, params
from jobs import runs as records
from jobs.common import bucket_of, say

MAX_TASKS = 1000  # ferry: status and pull read one record per task; Batch: 100,000 per task group
MAX_PARALLEL = MAX_TASKS  # Batch: 5,000 parallel tasks per job
PREEMPTED_EXIT = 50001   # Batch's exit code for a task whose spot VM was preempted
STOPPED_EXIT = 76        # the runner's, for a task it saw preempted (or its VM going) before the VM died
RETRIES = 3              # on preemption only
SWEEPS = "sweeps/"
_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)$")


def sweep_prefix(sweep_id: str) -> str:
    return f"{SWEEPS}{sweep_id}/"


def task_prefix(sweep_id: str, index: int) -> str:
    return f"{sweep_prefix(sweep_id)}tasks/{index}/"


def batch_job_id(sweep_id: str) -> str:
    return f"ferry-{sweep_id}"[:63].rstrip("-")


def valid_sweep_id(sweep_id: str) -> bool:
    return records.valid_run_id(sweep_id)


# --------------------------------------------------------------------------- the grid
def parse_grid(job: catalog.Job, sets) -> dict[str, list[str]]:
    """{key: [value text, ...]} in the order given; bad syntax is one line, exit 2."""
    grid: dict[str, list[str]] = {}
    for item in sets or ():
        if "=" not in item:
            raise UsageError(f"--set {item!r}: expected KEY=V1,V2 or KEY=A..B")
        key, _, text = item.partition("=")
        key = key.strip().replace("-", "_")
        if key not in job.params:
            raise unknown("parameter", key, list(job.params))
        if key in grid:
            raise UsageError(f"--set {key}: given twice", hint=f"one --set {key}=V1,V2 lists every value")
        text = text.strip()
        m = _RANGE.match(text)
        if m:
            a, b = int(m.group(1)), int(m.group(2))
            if b < a:
                raise UsageError(f"--set {key}={text}: empty range ({a} > {b})", hint=f"e.g. {key}={b}..{a}")
            if b - a + 1 > MAX_TASKS:
                raise UsageError(f"--set {key}={text}: {b - a + 1} values; a sweep has at most {MAX_TASKS} tasks")
            values = [str(v) for v in range(a, b + 1)]
        else:
            sep = ";" if job.params[key].type == "epoch-list" else ","
            values = [v.strip() for v in text.split(sep)]
            if not text or any(not v for v in values):
                raise UsageError(f"--set {key}={text!r}: an empty value", hint=f"e.g. {key}=V1{sep}V2")
        if len(set(values)) != len(values):
            raise UsageError(f"--set {key}={text}: a value is listed twice")
        grid[key] = values
    return grid


def combinations(job: catalog.Job, grid: dict[str, list[str]]) -> list[dict]:
    """Every combination's full parameter values, each validated like `run --set`."""
    size = 1
    for values in grid.values():
        size *= len(values)
    if size > MAX_TASKS:
        raise UsageError(f"the grid has {size} combinations; a sweep has at most {MAX_TASKS} tasks",
                         hint="fewer values, or several sweeps")
    keys = list(grid)
    out = []
    for combo in itertools.product(*(grid[k] for k in keys)):
        out.append(params.resolve(job, [f"{k}={v}" for k, v in zip(keys, combo)]))
    return out


def new_sweep_id(job: str) -> str:
    return records.new_run_id(job)


# --------------------------------------------------------------------------- the plan
def _task_runner_params(settings, sweep_id: str, index: int, job, values: dict, code_hash: str, spec,
                        setup_key: str | None = None) -> dict:
    from jobs.launch import DATA_DIR, HEARTBEAT_INTERVAL_S, UPLOAD_INTERVAL_S, job_cwd, job_paths

    run_id = f"{sweep_id}-t{index}"
    argv = params.argv(job, values, job_paths(job, run_id))
    return {
        "run_id": run_id, "job": job.name, "prefix": task_prefix(sweep_id, index), "bucket": settings.bucket,
        "project": None if settings.is_local else settings.project, "argv": argv,
        "datasets": list(job.datasets), "data_dir": DATA_DIR, "upload_interval": UPLOAD_INTERVAL_S,
        "heartbeat_interval": HEARTBEAT_INTERVAL_S, "setup_wait": False, "self_delete": False,
        "gpu": spec.gpu_label if spec.gpu else None, "code_hash": code_hash, "resume_flag": job.resume,
        "segment": {"zone": None, "spot": bool(spec.spot), "machine_type": spec.machine_type,
                    "price_per_hour": spec.price_per_hour},
        "cwd": job_cwd(job), "env": dict(job.env), "outputs": list(job.outputs),
        "setup": [{"argv": list(c.argv), "shell": c.shell} for c in job.setup], "setup_key": setup_key,
    }


def task_script(settings, sweep_id: str) -> str:
    """What Batch runs on each task's VM: fetch the code archive, start the runner."""
    project = "" if settings.is_local else f" --project {settings.project}"
    return f"""#!/bin/bash
# ferry sweep {sweep_id}: one task (BATCH_TASK_INDEX picks its parameters from the sweep's manifest)
set -euo pipefail
work="${{HOME:-/tmp}}/ferry-sweep-{sweep_id}-$BATCH_TASK_INDEX"
mkdir -p "$work" && cd "$work"
# the trainer's and the runner's packages, as the default template's start-up script ensures
python3 -c 'import importlib.util as u, sys
sys.exit(any(u.find_spec(m) is None for m in ("numpy", "sklearn", "PIL", "numba", "google.cloud.storage", "google.auth")))' \
  || python3 -m pip install --quiet --disable-pip-version-check 'numpy>=1.26,<3' 'scikit-learn>=1.3' 'pillow>=10' \
       'numba>=0.59' 'google-cloud-storage>=2.14,<4' 'tensorflow[and-cuda]>=2.16,<3'
python3 - <<'PY'
import io, tarfile
import google.auth.compute_engine
from google.cloud import storage
client = storage.Client(project={None if settings.is_local else repr(settings.project)}, credentials=google.auth.compute_engine.Credentials())
data = client.bucket({settings.bucket!r}).blob({sweep_prefix(sweep_id) + 'code.tar.gz'!r}).download_as_bytes()
with tarfile.open(fileobj=io.BytesIO(data)) as tar:
    tar.extractall("ferry/code", **({{"filter": "data"}} if hasattr(tarfile, "data_filter") else {{}}))
PY
exec python3 ferry/code/ferry_runner.py batch-task {settings.bucket} --sweep {sweep_id}{project}
"""


def batch_job(settings, sweep_id: str, spec, task_count: int, parallel: int, script: str):
    """The Batch job body (batch_v1.Job): the template's VM as the allocation policy, retries on
    preemption only, our labels."""
    from google.cloud import batch_v1
    from google.protobuf import duration_pb2

    from infra.settings import owner

    labels = {"managed-by": "ferry", "ferry-owner": owner(), "ferry-sweep": sweep_id.lower()[:63]}
    policy = batch_v1.AllocationPolicy.InstancePolicy(
        machine_type=spec.machine_type,
        provisioning_model=(batch_v1.AllocationPolicy.ProvisioningModel.SPOT if spec.spot
                            else batch_v1.AllocationPolicy.ProvisioningModel.STANDARD),
        boot_disk=batch_v1.AllocationPolicy.Disk(image=f"projects/{spec.image_project}/global/images/family/{spec.image_family}",
                                                 size_gb=spec.boot_disk_gb, type_=spec.boot_disk_type),
    )
    if spec.gpu is not None and spec.gpu.attach == "accelerator":  # as render.py: g2/a2 carry theirs
        policy.accelerators = [batch_v1.AllocationPolicy.Accelerator(type_=spec.gpu.api, count=spec.count)]
    task_spec = batch_v1.TaskSpec(
        runnables=[batch_v1.Runnable(script=batch_v1.Runnable.Script(text=script))],
        max_run_duration=duration_pb2.Duration(seconds=spec.max_run_seconds),
        max_retry_count=RETRIES,
        lifecycle_policies=[batch_v1.LifecyclePolicy(
            action=batch_v1.LifecyclePolicy.Action.RETRY_TASK,
            action_condition=batch_v1.LifecyclePolicy.ActionCondition(exit_codes=[PREEMPTED_EXIT, STOPPED_EXIT]))],
        environment=batch_v1.Environment(variables={"FERRY_SWEEP": sweep_id}),
    )
    region = settings.zone.rsplit("-", 1)[0]
    return batch_v1.Job(
        # one task per VM: Batch would otherwise pack tasks by vCPU, several onto one GPU
        task_groups=[batch_v1.TaskGroup(task_count=task_count, parallelism=parallel, task_count_per_node=1,
                                        task_spec=task_spec)],
        allocation_policy=batch_v1.AllocationPolicy(
            instances=[batch_v1.AllocationPolicy.InstancePolicyOrTemplate(
                policy=policy, install_gpu_drivers=bool(spec.gpu and spec.install_nvidia_driver))],
            location=batch_v1.AllocationPolicy.LocationPolicy(allowed_locations=[f"regions/{region}"]),
            # the default compute service account, with the template's scopes (the runner writes
            # the task's record to the bucket with it)
            service_account=batch_v1.ServiceAccount(scopes=list(spec.scopes)),
            labels=labels),
        labels=labels,
        logs_policy=batch_v1.LogsPolicy(destination=batch_v1.LogsPolicy.Destination.CLOUD_LOGGING),
    )


def _parent(settings) -> str:
    return f"projects/{settings.project}/locations/{settings.zone.rsplit('-', 1)[0]}"


# --------------------------------------------------------------------------- sweep
def sweep(settings, *, job: str, sets=(), parallel: int | None = None, spot: bool = False,
          max_hours: float | None = None, dry_run: bool = False, yes: bool = False, detach: bool = False) -> None:
    from infra import templates
    from infra.commands import CONFIRM_OVER_USD, confirm
    from jobs import sync

    from jobs.launch import check_job_inputs, setup_key

    j = catalog.get(job)
    check_job_inputs(j)
    if j.secrets:  # a Batch task is started by Batch, not over SSH: there is no channel for them
        raise UsageError(f"{j.path}: secrets: a sweep cannot pass secrets ({', '.join(j.secrets)}): its tasks "
                         "start on Cloud Batch without SSH", hint="use `run` for a job with secrets")
    grid = parse_grid(j, sets)
    combos = combinations(j, grid)
    n = len(combos)
    if parallel is not None and not 1 <= parallel <= MAX_PARALLEL:
        raise UsageError(f"--parallel {parallel}: must be from 1 to {MAX_PARALLEL}")
    parallel = min(parallel or min(n, 4), n)
    spec = templates.load(j.template, gpu=j.gpu, spot=True if (spot or j.spot) else None,
                          max_hours=max_hours if max_hours is not None else j.max_hours)
    sweep_id = new_sweep_id(j.name)
    files = sync.job_files(j)
    skey = setup_key(j, files)
    code_hash = sync.code_hash(sync.manifest(files))
    price = spec.price_per_hour
    lives = 1 + RETRIES if spec.spot else 1  # each retry of a preempted task gets a fresh run-time limit
    cost = None if price is None else round(price * spec.max_hours * n * lives, 2)
    script = task_script(settings, sweep_id)
    body = batch_job(settings, sweep_id, spec, n, parallel, script)
    keys = [k for k in grid]
    say(f"sweep {sweep_id}: {j.name}, {n} task(s) over {', '.join(f'{k} ({len(grid[k])})' for k in keys) or 'no grid'}, "
        f"{parallel} at once, {'spot' if spec.spot else 'on demand'} {spec.machine_type} GPU {spec.gpu_label}")
    say("cost: at most " + ("unknown" if cost is None else f"${cost:.2f}") + f" ({n} task(s) x {spec.max_hours:g} h limit"
        + (f" x {lives} tries" if lives > 1 else "") + ("" if price is None else f" x ${price:.2f}/h") + ")")
    if dry_run:
        from google.cloud import batch_v1

        click.echo(f"would stage: gs://{settings.bucket}/{sweep_prefix(sweep_id)}code.tar.gz ({len(files)} files, code {code_hash}) "
                   f"and manifest.json ({n} tasks)")
        click.echo(f"would call: batch.projects.locations.jobs.create parent={_parent(settings)} jobId={batch_job_id(sweep_id)}")
        click.echo(batch_v1.Job.to_json(body, indent=2, use_integers_for_enums=False,
                                        always_print_fields_with_no_presence=False))
        click.echo("dry run: nothing was submitted, staged, created or deleted")
        return
    if cost is not None and cost > CONFIRM_OVER_USD:
        confirm(f"sweep {j.name}: {n} tasks may cost up to ${cost:.2f} before their {spec.max_hours:g} h limits. Submit?", yes)
    from jobs.launch import stage_datasets

    bucket = bucket_of(settings)
    stage_datasets(settings, bucket, j)  # a missing or bad source is exit 2 here, before anything is staged
    manifest = {
        "sweep_id": sweep_id, "job": j.name, "job_file": None if j.builtin else str(j.path), "grid": grid, "parallel": parallel, "code_hash": code_hash,
        "template": j.template, "spot": spec.spot, "machine_type": spec.machine_type, "gpu": spec.gpu_label,
        "price_per_hour": price, "max_hours": spec.max_hours, "created": records.iso(), "user": _owner(),
        "batch_job": f"{_parent(settings)}/jobs/{batch_job_id(sweep_id)}", "backend": settings.backend,
        "tasks": [{"index": i, "params": values,
                   "runner": _task_runner_params(settings, sweep_id, i, j, values, code_hash, spec, skey)}
                  for i, values in enumerate(combos)],
    }
    pre = sweep_prefix(sweep_id)
    bucket.blob(pre + "code.tar.gz").upload_from_string(sync.archive(files, files), content_type="application/gzip")
    records.put_json(bucket, pre + "manifest.json", manifest)
    from infra import clients

    client = clients.batch(settings)
    try:  # from the create call on, Ctrl-C deletes the Batch job (a signal during the call too)
        try:
            created = client.create_job(parent=_parent(settings), job=body, job_id=batch_job_id(sweep_id), timeout=60)
        except Exception as exc:
            raise CloudError(f"Cloud Batch refused sweep {sweep_id}: {_reason(exc)}", hint="nothing runs; the staged "
                             f"files are in gs://{settings.bucket}/{pre}") from None
        say(f"submitted Batch job {created.name}")
        if detach:
            say(f"watch it with `python cli.py sweep status {sweep_id}`; results: `python cli.py sweep pull {sweep_id}`")
            return
        final = watch(settings, sweep_id, manifest)
    except KeyboardInterrupt:
        from infra.interrupts import shielded

        with shielded("cancelling the sweep (deleting its Batch job and VMs) first; please wait"):
            _delete_job(settings, manifest)
        raise Interrupted(f"sweep {sweep_id} cancelled") from None
    say(f"sweep {sweep_id} {final.lower()}; results: `python cli.py sweep pull {sweep_id}`")
    if final != "SUCCEEDED":
        raise CloudError(f"sweep {sweep_id} {final.lower()}", hint=f"see `python cli.py sweep status {sweep_id}`")


def _owner() -> str:
    from infra.settings import owner

    return owner()


def _reason(exc: BaseException) -> str:
    message = getattr(exc, "message", None) or str(exc)
    return " ".join(str(message).split())[:300]


DONE = ("SUCCEEDED", "FAILED", "CANCELLED")


def _state_name(value) -> str:
    return getattr(value, "name", str(value))


def watch(settings, sweep_id: str, manifest: dict, poll: float = 2.0, deadline_s: float | None = None) -> str:
    """Print task counts as they change until the Batch job ends -> its final state. The
    deadline: every task's run-time limit, times the waves parallelism allows, plus an hour."""
    from infra import clients

    client = clients.batch(settings)
    n, parallel = len(manifest["tasks"]), int(manifest.get("parallel") or 1)
    waves = -(-n // parallel)
    deadline = time.time() + (deadline_s or (float(manifest.get("max_hours") or 4) * 3600 * waves * (RETRIES + 1) + 3600))
    last = None
    failures = 0
    while time.time() < deadline:
        try:
            job = client.get_job(name=manifest["batch_job"], timeout=30)
            failures = 0
        except Exception as exc:
            from google.api_core.exceptions import NotFound

            if isinstance(exc, NotFound):  # deleted elsewhere (`sweep cancel`, the console)
                say(f"Batch job {manifest['batch_job']} is gone")
                return "DELETED"
            failures += 1
            if failures * poll > 60:
                raise CloudError(f"Cloud Batch has not answered for a minute ({_reason(exc)})",
                                 hint=f"the sweep goes on; `python cli.py sweep status {sweep_id}`") from None
            time.sleep(poll)
            continue
        state = _state_name(job.status.state)
        counts = {}
        for group in job.status.task_groups.values():
            counts = {k: int(v) for k, v in group.counts.items()}
        line = f"{state}: " + ", ".join(f"{v} {k.lower()}" for k, v in sorted(counts.items()) if v)
        if line != last:
            say(line)
            last = line
        if state in DONE:
            return state
        time.sleep(poll)
    raise CloudError(f"sweep {sweep_id} did not end within its deadline", hint=f"`python cli.py sweep cancel {sweep_id}`")


# --------------------------------------------------------------------------- status, logs, cancel, pull
def load_manifest(bucket, sweep_id: str) -> dict:
    if not valid_sweep_id(sweep_id):
        raise UsageError(f"{sweep_id!r} is not a sweep id", hint="see `python cli.py sweeps`")
    manifest = records.get_json(bucket, sweep_prefix(sweep_id) + "manifest.json")
    if manifest is None:
        raise unknown("sweep", sweep_id, list_sweep_ids(bucket)[:50])
    return manifest


def list_sweep_ids(bucket, quick: bool = False) -> list[str]:
    it = bucket.list_blobs(prefix=SWEEPS, delimiter="/", **records.call_options(quick))
    for _ in it.pages:
        pass
    ids = [p[len(SWEEPS):].rstrip("/") for p in it.prefixes]
    return sorted((i for i in ids if valid_sweep_id(i)), key=records.sort_key, reverse=True)


def _latest(bucket, sweep_id: str | None) -> str:
    if sweep_id and sweep_id != "latest":
        return sweep_id
    ids = list_sweep_ids(bucket)
    if not ids:
        raise UsageError(f"no sweeps in gs://{bucket.name}/{SWEEPS}")
    return ids[0]


def _batch_tasks(settings, manifest) -> dict[int, str]:
    """{index: Batch task state}; {} when the Batch job is gone (deleted, or expired)."""
    from infra import clients

    client = clients.batch(settings)
    out = {}
    try:
        for task in client.list_tasks(parent=f"{manifest['batch_job']}/taskGroups/group0", timeout=30):
            out[int(task.name.rsplit("/", 1)[-1])] = _state_name(task.status.state)
    except Exception as exc:
        from google.api_core.exceptions import NotFound

        if not isinstance(exc, NotFound):
            raise CloudError(f"Cloud Batch: {_reason(exc)}") from None
    return out


def status(settings, sweep_id: str | None = None) -> None:
    bucket = bucket_of(settings, create=False)
    sweep_id = _latest(bucket, sweep_id)
    manifest = load_manifest(bucket, sweep_id)
    batch = _batch_tasks(settings, manifest)
    listed = task_rows(bucket, sweep_id)
    rows = []
    for task in manifest["tasks"]:
        i = task["index"]
        row = listed.get(i)
        if row is None:  # no status yet, or one written without its row: read it
            st = records.get_json(bucket, task_prefix(sweep_id, i) + "status.json") or {}
            summary = records.get_json(bucket, task_prefix(sweep_id, i) + "summary.json") \
                if st.get("state") == "succeeded" else None
            row = {"state": records.effective_state(st) if st else None, "heartbeat": st.get("heartbeat"),
                   "attempts": len(st.get("segments") or []) or None, "best": records.best_accuracy(summary)}
        varied = {k: task["params"].get(k) for k in manifest["grid"]}
        rows.append({"index": i, "params": varied, "batch_state": batch.get(i), "state": row["state"],
                     "attempts": row["attempts"], "heartbeat": row["heartbeat"], "best_accuracy": row["best"]})
    if settings.json:
        click.echo(json.dumps({"sweep_id": sweep_id, "job": manifest["job"], "batch_job": manifest["batch_job"],
                               "tasks": rows}, indent=2))
        return
    from infra.tables import Column, show

    colours = {"succeeded": "green", "failed": "red", "lost": "red", "preempted": "yellow", "cancelled": "yellow"}
    table = [[str(r["index"]), r["batch_state"] or "-", (r["state"] or "-", colours.get(r["state"] or "", None)),
              str(r["attempts"] or "-"),
              f"{100 * r['best_accuracy']:.2f}%" if isinstance(r["best_accuracy"], (int, float)) else "-",
              " ".join(f"{k}={v}" for k, v in r["params"].items())] for r in rows]
    show([Column("task", right=True), Column("Batch", drop=2), Column("run state"), Column("attempts", right=True, drop=1),
          Column("best acc.", right=True), Column("parameters")], table,
         title=f"sweep {sweep_id}: {manifest['job']}, {len(rows)} task(s), Batch job {manifest['batch_job']}")


def task_rows(bucket, sweep_id: str, quick: bool = False) -> dict[int, dict]:
    """{index: figures} from one listing: each task's status.json carries them in its metadata
    (the runner's row, as for `runs`), so `sweep status` costs O(1) requests per 1000 tasks."""
    from trainer.report import ROW_KEY

    pre = f"{sweep_prefix(sweep_id)}tasks/"
    out = {}
    for blob in bucket.client.list_blobs(bucket, prefix=pre, match_glob=pre + "*/status.json",
                                         **records.call_options(quick)):
        try:
            index = int(blob.name[len(pre):].split("/", 1)[0])
            row = json.loads((blob.metadata or {})[ROW_KEY])
        except (KeyError, ValueError):
            continue
        st = {k: row.get(k) for k in ("state", "started", "ended", "heartbeat", "heartbeat_interval")}
        out[index] = {"state": records.effective_state(st), "heartbeat": row.get("heartbeat"),
                      "attempts": (row.get("recoveries") or 0) + 1, "best": row.get("best")}
    return out


def logs(settings, sweep_id: str, task: int, follow: bool = False) -> None:
    import sys

    from jobs.follow import follow_bucket

    bucket = bucket_of(settings, create=False)
    manifest = load_manifest(bucket, sweep_id)
    indices = [t["index"] for t in manifest["tasks"]]
    if task not in indices:
        raise UsageError(f"sweep {sweep_id} has no task {task}", hint=f"tasks 0..{max(indices)}")
    out = sys.stdout.buffer

    def write(data: bytes) -> None:
        out.write(data)
        out.flush()

    prefix = task_prefix(sweep_id, task)
    if not follow:
        from google.api_core.exceptions import NotFound

        try:
            write(bucket.blob(prefix + "logs/output.log").download_as_bytes())
        except NotFound:
            say(f"task {task}: no log yet")
        return
    try:
        final = follow_bucket(bucket, f"{sweep_id}-t{task}", 0, write, prefix=prefix)
    except KeyboardInterrupt:
        say("stopped following; the sweep goes on")
        raise Interrupted("interrupted") from None
    say(f"task {task} {records.effective_state(final)}")


def _delete_job(settings, manifest) -> bool:
    """Delete the sweep's Batch job (Batch deletes its VMs), once it is proven ours: our labels
    and this sweep's id on the job itself, not the manifest's word."""
    from google.api_core.exceptions import NotFound

    from infra import clients
    from infra.settings import owner

    client = clients.batch(settings)
    try:
        job = client.get_job(name=manifest["batch_job"], timeout=30)
    except NotFound:
        return False
    labels = dict(job.labels)
    if labels.get("managed-by") != "ferry" or labels.get("ferry-owner") != owner() \
            or labels.get("ferry-sweep") != manifest["sweep_id"].lower()[:63]:
        raise UsageError(f"Batch job {manifest['batch_job']} is not this sweep's (labels {labels}); not deleting it")
    op = client.delete_job(name=manifest["batch_job"], timeout=30)
    try:
        op.result(timeout=300)
    except Exception as exc:
        say(f"warning: deleting {manifest['batch_job']}: {_reason(exc)}")
    return True


def cancel(settings, sweep_id: str) -> None:
    bucket = bucket_of(settings, create=False)
    manifest = load_manifest(bucket, sweep_id)
    if _delete_job(settings, manifest):
        say(f"sweep {sweep_id} cancelled: Batch job {manifest['batch_job']} and its VMs deleted")
    else:
        say(f"sweep {sweep_id}: its Batch job is already gone")


def sweeps(settings, limit: int = 20) -> None:
    bucket = bucket_of(settings, create=False)
    rows = []
    for sid in list_sweep_ids(bucket)[:limit]:
        m = records.get_json(bucket, sweep_prefix(sid) + "manifest.json") or {}
        rows.append({"sweep_id": sid, "job": m.get("job"), "tasks": len(m.get("tasks") or []),
                     "grid": m.get("grid"), "created": m.get("created")})
    if settings.json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo(f"no sweeps in gs://{settings.bucket}/{SWEEPS}")
        return
    from infra.tables import Column, show

    show([Column("sweep"), Column("job", drop=2), Column("tasks", right=True), Column("created", drop=1), Column("grid")],
         [[r["sweep_id"], r["job"] or "-", str(r["tasks"]), (r["created"] or "-").replace("T", " ")[:19],
           " ".join(f"{k}={','.join(map(str, v))}" for k, v in (r["grid"] or {}).items())] for r in rows],
         title=f"sweeps in gs://{settings.bucket}/{SWEEPS}")


def pull(settings, sweep_id: str, dest: str | None = None) -> None:
    from pathlib import Path

    from jobs.pull import download_prefix

    bucket = bucket_of(settings, create=False)
    sweep_id = _latest(bucket, sweep_id)
    load_manifest(bucket, sweep_id)
    target = Path(dest) if dest else Path("sweeps") / sweep_id
    download_prefix(bucket, sweep_prefix(sweep_id), target, skip=("code.tar.gz",), what=f"sweep {sweep_id}",
                    skip_folders=("checkpoints",))
    from jobs import sweep_report

    out = sweep_report.render(target)
    say(f"report: {out['markdown']} and {out['html']}")


