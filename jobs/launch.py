"""`run`: what a student once did by hand. Validate, stage datasets in the bucket, choose or
provision a VM, sync the code, start the job under the on-VM runner (detached: it survives SSH
dropping), stream its output, summarise, and delete the VM it provisioned whatever the outcome.
The job's own output goes to stdout; ferry's progress lines go to stderr."""

from __future__ import annotations

import json
import os
import shlex
import signal
import sys
import time
from contextlib import contextmanager

import click

from infra.errors import CloudError, FerryError, Interrupted, JobFailed, UsageError, unknown
from jobs import catalog, params
from jobs import runs as records
from jobs.common import bucket_of, say

RUNNER = "ferry/code/ferry_runner.py"
DATA_DIR = "ferry/data"
READY_MARKER = "ferry/.ready"
UPLOAD_INTERVAL_S = 2.0
HEARTBEAT_INTERVAL_S = 10.0
RECONNECT_FOR_S = 60.0
CANCEL_WAIT_S = 30.0
PINNED_PROBE_S = 3.0  # SSH to a remembered VM: a dead address must not hold up the API path long


def ferry_version() -> str:
    try:
        from importlib.metadata import version

        return version("ferry")
    except Exception:
        return "0.1.0"


def run_paths(run_id: str) -> dict:
    run_dir = f"ferry/runs/{run_id}"
    return {"run_dir": run_dir, "out": f"{run_dir}/out", "data": DATA_DIR, "code": "ferry/code", "run_id": run_id}


@contextmanager
def shielded(message: str):
    """Ctrl-C waits while we tear down (a half-deleted VM costs money)."""
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum, frame):
        say(message)

    try:
        signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _pinned_vm(settings, name: str | None):
    """The VM to use without asking the Compute Engine API, or None: --vm NAME, else the one VM
    of yours (not a run's) that this machine brought up, when SSH presenting its pinned host key
    answers. That key proves it is the same VM, still running; anything else (a stale record, a
    reused address, two VMs) goes to the API. Saves the ~0.5 s the compute client costs."""
    from infra import provision, ssh

    mine = [v for v in provision.pinned(settings) if v.host_key and "ferry-run" not in (v.labels or {})]
    candidates = [v for v in mine if v.name == name] if name else mine
    if len(candidates) != 1:
        return None
    try:
        ssh.probe(candidates[0], timeout=PINNED_PROBE_S)
    except ssh.SshNotReady:
        return None
    return candidates[0]


def _choose_vm(settings, name: str | None):
    """(vm, created_by_us=False) for --vm or the one VM up; None when one must be provisioned."""
    from infra import provision

    fast = _pinned_vm(settings, name)
    if fast is not None:
        return fast
    if name:
        vm = provision.get(settings, name)
        if vm is None:
            raise unknown("VM", name, [v.name for v in provision.list_vms(settings, mine_only=True)])
        if vm.status and vm.status != "RUNNING":
            raise CloudError(f"VM {name} is {vm.status}", hint=f"start it with `python cli.py up --name {name}`")
        return vm
    up = [v for v in provision.list_vms(settings, mine_only=True)
          if v.status == "RUNNING" and "ferry-run" not in (v.labels or {})]
    if len(up) > 1:
        raise UsageError(f"{len(up)} VMs are up ({', '.join(v.name for v in up)})", hint="pick one with --vm NAME")
    if len(up) == 1:
        vm = provision.get(settings, up[0].name)
        if vm is not None and vm.host_key:
            return vm
    return None


def _gpu_text(vm) -> str | None:
    if not vm or not vm.gpu:
        return None
    return f"{vm.gpu_count} x {vm.gpu}" if vm.gpu_count and vm.gpu_count > 1 else vm.gpu


def _dry_run(settings, job, values, argv, vm_name, keep, run_id) -> None:
    click.echo(f"job:       {job.name} — {job.description}")
    click.echo("params:    " + ", ".join(f"{k}={v}" for k, v in values.items() if v is not None))
    click.echo(f"command:   {shlex.join(argv)}   (argv on the VM; no shell)")
    click.echo(f"datasets:  {', '.join(job.datasets) or 'none'} from gs://{settings.bucket}/datasets/ "
               f"(seeded from {'FERRY_DATA_SOURCE' if os.environ.get('FERRY_DATA_SOURCE') else 'the public source'} if absent)")
    click.echo(f"results:   gs://{settings.bucket}/runs/<run-id>/")
    if vm_name:
        click.echo(f"VM:        {vm_name} (used as it is, left running)")
        return
    from infra import provision

    plan = provision.plan(settings, template=job.template, name=_vm_name(run_id))
    price = f"${plan.price_per_hour:.2f}/h" if plan.price_per_hour is not None else "price unknown"
    click.echo(f"VM:        the one VM up, else a new one from template {job.template!r}: "
               f"{plan.spec.machine_type}, GPU {plan.spec.gpu.name if plan.spec.gpu else 'none'}, "
               f"{'spot' if plan.spec.spot else 'on demand'}, {price}, deleted by the cloud after {plan.max_hours} h at most")
    click.echo(f"teardown:  {'kept (--keep)' if keep else 'a VM this run creates is deleted when the run ends'}")
    for call in plan.calls:
        click.echo(f"  {call}")
    click.echo("dry run: nothing was created, changed or deleted")


class Session:
    """One `run`: its records in the bucket and its SSH link to the VM."""

    def __init__(self, settings, job, values, argv, run_id):
        self.settings = settings
        self.job = job
        self.run_id = run_id
        self.paths = run_paths(run_id)
        self.prefix = records.prefix(run_id)
        self.bucket = bucket_of(settings)
        self.vm = None
        self.remote = None
        self.runner_started = False
        self.offset = 0
        self.t0 = time.time()
        self.vm_t0 = None
        self.manifest = {
            "run_id": run_id, "job": job.name, "params": values, "argv": argv, "datasets": list(job.datasets),
            "template": job.template, "backend": settings.backend, "project": settings.project,
            "bucket": settings.bucket, "created": records.iso(), "ferry_version": ferry_version(), "user": _owner(),
        }
        self.status = {"run_id": run_id, "state": "provisioning", "heartbeat": records.iso(), "exit_code": None,
                       "started": None, "ended": None, "message": None}

    # records --------------------------------------------------------------
    def put_manifest(self) -> None:
        records.put_json(self.bucket, self.prefix + "manifest.json", self.manifest)

    def put_status(self, state: str, **fields) -> None:
        self.status.update(fields, state=state, heartbeat=records.iso())
        records.put_json(self.bucket, self.prefix + "status.json", self.status)

    def bucket_status(self) -> dict | None:
        return records.get_json(self.bucket, self.prefix + "status.json")

    # the VM ---------------------------------------------------------------
    def connect(self) -> None:
        from infra import ssh
        from jobs.remote import SshRemote

        self.remote = SshRemote(ssh.connect(self.vm), reconnect=lambda: ssh.connect(self.vm))

    def set_vm(self, vm) -> None:
        self.vm = vm
        self.manifest.update(vm=vm.name, zone=vm.zone, machine_type=vm.machine_type, gpu=_gpu_text(vm),
                             spot=vm.spot, price_per_hour=vm.price_per_hour, vm_created_by_run=bool(vm.created))

    def start(self, ready_marker: str | None) -> None:
        from jobs import sync
        from jobs.remote import check

        self.put_status("syncing")
        result = sync.sync(self.remote, warn=lambda m: say("warning: " + m))
        self.manifest["code_hash"] = result.code_hash
        self.manifest["sync"] = {"mode": result.mode, "files": result.files_sent, "bytes": result.bytes_sent}
        if result.mode != "none":
            say(f"code {result.code_hash}: sent {result.files_sent} file(s), {result.bytes_sent / 1e3:.1f} kB ({result.mode})")
        self.put_manifest()
        p = {
            "run_id": self.run_id, "bucket": self.settings.bucket,
            "project": None if self.settings.is_local else self.settings.project,
            "argv": self.manifest["argv"], "datasets": list(self.job.datasets), "data_dir": DATA_DIR,
            "upload_interval": UPLOAD_INTERVAL_S, "heartbeat_interval": HEARTBEAT_INTERVAL_S,
            "ready_marker": ready_marker, "gpu": self.manifest.get("gpu"),
        }
        self.remote.write(f"{self.paths['run_dir']}/params.json", json.dumps(p, indent=2).encode())
        check(self.remote.run(["python3", RUNNER, "start", self.paths["run_dir"]], timeout=60), "starting the runner")
        self.runner_started = True

    def follow(self) -> None:
        """Stream output.log from the VM until the run ends; reconnect after a dropped link;
        fall back to the bucket when the VM is unreachable."""
        out = sys.stdout.buffer

        def on_data(data: bytes) -> None:
            out.write(data)
            out.flush()
            self.offset += len(data)

        while True:
            try:
                self.remote.stream(["python3", RUNNER, "follow", self.paths["run_dir"], "--offset", str(self.offset)], on_data)
                return
            except KeyboardInterrupt:
                raise
            except Exception as exc:  # the SSH link dropped: the runner goes on without us
                say(f"SSH connection lost ({exc.__class__.__name__}); the job goes on, reconnecting")
                if not self._reconnect():
                    say("VM unreachable; following the log in the bucket")
                    follow_bucket(self.bucket, self.run_id, self.offset, on_data)
                    return

    def _reconnect(self) -> bool:
        deadline = time.time() + RECONNECT_FOR_S
        delay = 0.2
        while time.time() < deadline:
            st = self.bucket_status()
            if st and st.get("state") in records.FINAL:
                return False  # finished meanwhile (or the VM went away after a final flush)
            try:
                self.remote.reconnect()
                return True
            except KeyboardInterrupt:
                raise
            except Exception:
                time.sleep(delay)
                delay = min(2.0, delay * 2)
        return False

    def cancel(self) -> None:
        """Ctrl-C: ask the runner to stop the job and flush; show the end of the log."""
        if not self.runner_started:
            self.put_status("cancelled", ended=records.iso(), message="cancelled before the job started")
            return
        say("cancelling: stopping the job and saving its log and metrics")
        try:
            self.remote.run(["python3", RUNNER, "cancel", self.paths["run_dir"]], timeout=15)
        except Exception:
            pass
        deadline = time.time() + CANCEL_WAIT_S
        while time.time() < deadline:
            st = self.bucket_status()
            if st and st.get("state") in records.FINAL:
                return
            time.sleep(0.2)
        self.put_status("cancelled", ended=records.iso(), message="cancelled; the runner did not confirm")

    def finish_manifest(self, deleted: bool) -> None:
        end = time.time()
        self.manifest["ended"] = records.iso()
        self.manifest["wall_s"] = round(end - self.t0, 3)
        price = self.manifest.get("price_per_hour")
        if isinstance(price, (int, float)):
            if self.manifest.get("vm_created_by_run") and self.vm_t0:
                seconds = end - self.vm_t0
            else:
                seconds = records.duration_s(self.bucket_status() or self.status) or 0.0  # the job's time on it
            self.manifest["cost_estimate"] = round(price * seconds / 3600, 6)
        self.manifest["vm_deleted"] = deleted
        try:
            self.put_manifest()
        except Exception:
            pass


def _owner() -> str:
    from infra.settings import owner

    return owner()


def follow_bucket(bucket, run_id: str, offset: int, on_data, poll: float = 0.5) -> dict:
    """Print logs/output.log from the bucket from byte `offset` until the run's final state."""
    blob = bucket.blob(records.prefix(run_id) + "logs/output.log")
    from google.api_core.exceptions import NotFound

    while True:
        st = records.get_json(bucket, records.prefix(run_id) + "status.json")
        try:
            blob.reload()
            if (blob.size or 0) > offset:
                data = blob.download_as_bytes(start=offset)
                offset += len(data)
                on_data(data)
        except NotFound:
            pass
        if records.effective_state(st) in records.FINAL:
            # a final status is written after the last log upload: one more read and done
            try:
                blob.reload()
                if (blob.size or 0) > offset:
                    on_data(blob.download_as_bytes(start=offset))
            except NotFound:
                pass
            return st or {}
        time.sleep(poll)


def _summary(session: Session, status: dict, deleted: bool | None) -> None:
    st = status or {}
    state = records.effective_state(st)
    summary = records.get_json(session.bucket, session.prefix + "summary.json")
    best = records.best_accuracy(summary)
    job_s = records.duration_s(st)
    wall = time.time() - session.t0
    line = f"{session.run_id} {state}"
    if st.get("exit_code") not in (None, 0):
        line += f" (exit code {st['exit_code']})"
    line += f" in {wall:.1f} s" + (f" (job {job_s:.1f} s)" if job_s is not None else "")
    if best is not None:
        line += f"; best test accuracy {100 * best:.2f}%"
    say(line)
    if st.get("message") and state != "succeeded":
        say(st["message"])
    say(f"results: gs://{session.settings.bucket}/{session.prefix}  (python cli.py pull {session.run_id})")
    cost = session.manifest.get("cost_estimate")
    vm = session.vm
    if vm is not None:
        where = f"VM {vm.name} " + ("deleted" if deleted else "kept, still running: `python cli.py down " + vm.name + "`"
                                    if session.manifest.get("vm_created_by_run") else "left running")
        price = f"; cost ≈ ${cost:.4f} at ${vm.price_per_hour:.2f}/h" if isinstance(cost, (int, float)) and vm.price_per_hour else ""
        say(where + price)


def raise_for_state(state: str, st: dict, run_id: str) -> None:
    if state == "succeeded":
        return
    if state == "failed":
        raise JobFailed(f"run {run_id} failed" + (f" (exit code {st.get('exit_code')})" if st.get("exit_code") is not None else ""),
                        hint=f"see `python cli.py logs {run_id}`")
    if state == "cancelled":
        raise Interrupted(f"run {run_id} cancelled")
    if state == "preempted":
        raise CloudError(f"run {run_id}: the spot VM was preempted", hint="its log and metrics up to then are in the bucket; run it again")
    raise CloudError(f"run {run_id} is {state}", hint="the VM stopped answering; see `python cli.py runs`")


def run(settings, *, job: str, vm: str | None = None, overrides=(), keep: bool = False, detach: bool = False,
        dry_run: bool = False) -> None:
    j = catalog.get(job)
    values = params.resolve(j, overrides)
    run_id = records.new_run_id(j.name)
    argv = params.argv(j, values, run_paths(run_id))
    if vm:
        from infra.templates import check_vm_name

        check_vm_name(vm)
    if dry_run:
        _dry_run(settings, j, values, argv, vm, keep, run_id)
        return
    from infra import templates

    spec = templates.load(j.template)  # validated before anything is created
    ready = READY_MARKER if (not settings.is_local and ".ready" in (spec.startup_script or "")) else None

    chosen = _choose_vm(settings, vm)  # read-only: a bad --vm is exit 2 before any record is written

    session = Session(settings, j, values, argv, run_id)
    changed = [f"{k}={v}" for k, v in values.items() if v is not None and j.params[k].default != v]
    say(f"run {run_id}: {' '.join([j.name, *changed])}")
    session.put_manifest()
    session.put_status("provisioning")
    created = False
    final: dict | None = None
    deleted = None
    try:
        from jobs import datasets

        for name in j.datasets:
            datasets.ensure(session.bucket, name, settings.home, progress=say)
        if chosen is None:
            from infra import provision

            session.vm_t0 = time.time()
            say(f"provisioning a VM from template {j.template!r}")
            # A kept VM is the user's from the start, like one from `up`: no ferry-run label, so
            # `cleanup` leaves it and later runs use it.
            chosen = provision.up(settings, template=j.template, name=_vm_name(run_id),
                                  labels=None if keep else {"ferry-run": run_id}, progress=say)
            created = True
            say(f"VM {chosen.name} up in {chosen.zone} ({time.time() - session.vm_t0:.1f} s)")
        else:
            say(f"using VM {chosen.name} in {chosen.zone}")
        session.set_vm(chosen)
        if created and (keep or detach):
            session.manifest["delete_vm_when_done"] = bool(detach and not keep)
        session.connect()
        session.start(ready)
        if detach:
            say(f"started {run_id} on {chosen.name}; follow it with `python cli.py logs {run_id} --follow`"
                + ("; the VM is deleted when that ends (or by `python cli.py down`)" if created and not keep else ""))
            session.put_manifest()
            return
        session.follow()
        final = session.bucket_status() or {}
        state = records.effective_state(final)
        if state not in records.FINAL:  # the follow ended early: wait for the runner's last word
            final = follow_bucket(session.bucket, run_id, session.offset, lambda b: (sys.stdout.buffer.write(b), sys.stdout.buffer.flush()))
    except KeyboardInterrupt:
        with shielded("interrupted: cancelling the job and deleting the VM first; please wait"):
            try:
                session.cancel()
            except Exception as exc:
                say(f"could not confirm the cancellation ({exc.__class__.__name__})")
        final = session.bucket_status() or {"state": "cancelled"}
        if final.get("state") not in records.FINAL:
            final = {"state": "cancelled"}
    except FerryError as exc:
        _record_failure(session, exc)
        raise
    except Exception as exc:
        _record_failure(session, exc)
        raise CloudError(f"run {run_id}: {exc.__class__.__name__}: {exc}") from exc
    finally:
        if session.remote is not None:
            session.remote.close()
        if session.vm is not None and created and not keep and not detach:
            with shielded(f"deleting VM {session.vm.name} first; please wait"):
                deleted = _delete_vm(settings, session.vm)
        elif created and keep:
            deleted = False
        if not detach and session.vm is not None:
            session.finish_manifest(bool(deleted))
    _summary(session, final, deleted)
    raise_for_state(records.effective_state(final), final, run_id)


def _vm_name(run_id: str) -> str:
    name = f"ferry-{run_id}"[:63].rstrip("-")
    return name


def _record_failure(session: Session, exc: BaseException) -> None:
    try:
        st = session.bucket_status() or {}
        if st.get("state") not in records.FINAL:
            session.put_status("failed", ended=records.iso(), message=f"ferry: {exc}")
    except Exception:
        pass


def _delete_vm(settings, vm) -> bool:
    from infra import provision

    try:
        provision.delete(settings, vm.name, vm.zone)
        return True
    except Exception as exc:
        say(f"warning: could not delete VM {vm.name} ({exc}); delete it with `python cli.py down {vm.name}`")
        return False
