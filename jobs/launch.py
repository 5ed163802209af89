"""`run`: what a student once did by hand. Validate, stage datasets in the bucket, choose or
provision a VM, sync the code, start the job under the on-VM runner (detached: it survives SSH
dropping), stream its output, summarise, and delete the VM it provisioned whatever the outcome.
The job's own output goes to stdout; ferry's progress lines go to stderr.

Every way out ends with the VM this run created deleted (proven ours by the instance id its
insert returned): success, failure, SIGINT/SIGTERM/SIGHUP (the run is recorded `cancelled`,
exit 128 + the signal), a runner that died (salvaged, `lost`, exit 3), a VM deleted under the
job (`lost`, never "the job failed"), an unreachable cloud (exit 3 within ~30 s, with how to
reattach). A detached run's VM deletes itself when the job ends (jobs/runner.py)."""

from __future__ import annotations

import json
import os
import shlex
import sys
import time

import click

from infra import interrupts
from infra.commands import CONFIRM_OVER_USD
from infra.errors import CloudError, FerryError, Interrupted, JobFailed, UsageError, unknown
from jobs import catalog, params
from jobs import runs as records
from jobs.common import bucket_of, say
from jobs.follow import Reachability, follow_bucket, reason, reattach_hint, salvage
from jobs.runner import RUNNER_GONE

RUNNER = "ferry/code/ferry_runner.py"
DATA_DIR = "ferry/data"
SETUP_MARKER = "ferry/setup"  # the guest attribute a template's startup script reports its outcome in
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


shielded = interrupts.shielded  # signals wait while we tear down (a half-deleted VM costs money)


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
    plan = None if vm_name else _plan(settings, job, run_id, keep)  # validates (zone, template) first
    click.echo(f"job:       {job.name} — {job.description}")
    click.echo("params:    " + ", ".join(f"{k}={v}" for k, v in values.items() if v is not None))
    click.echo(f"command:   {shlex.join(argv)}   (argv on the VM; no shell)")
    click.echo(f"datasets:  {', '.join(job.datasets) or 'none'} from gs://{settings.bucket}/datasets/ "
               f"(seeded from {'FERRY_DATA_SOURCE' if os.environ.get('FERRY_DATA_SOURCE') else 'the public source'} if absent)")
    click.echo(f"results:   gs://{settings.bucket}/runs/<run-id>/")
    if vm_name:
        click.echo(f"VM:        {vm_name} (used as it is, left running)")
        click.echo("dry run: nothing was created, changed or deleted")
        return
    price = f"${plan.price_per_hour:.2f}/h" if plan.price_per_hour is not None else "price unknown"
    click.echo(f"VM:        the one VM up, else a new one from template {job.template!r}: "
               f"{plan.spec.machine_type}, GPU {plan.spec.gpu.name if plan.spec.gpu else 'none'}, "
               f"{'spot' if plan.spec.spot else 'on demand'}, {price}, deleted by the cloud after {plan.max_hours:g} h at most")
    cost = "unknown" if plan.max_cost is None else f"${plan.max_cost:.2f}"
    asks = plan.max_cost is not None and plan.max_cost > CONFIRM_OVER_USD
    click.echo(f"cost:      at most {cost} (its {plan.max_hours:g} h limit)"
               + (f"; above ${CONFIRM_OVER_USD:g}: `run` asks first unless --yes" if asks else ""))
    click.echo(f"teardown:  {'kept (--keep)' if keep else 'a VM this run creates is deleted when the run ends (by the VM itself if nobody is attached)'}")
    for call in plan.calls:
        click.echo(f"  {call}")
    click.echo("  instance body (instances.insert):")
    click.echo(json.dumps(plan.body, indent=2))
    click.echo("dry run: nothing was created, changed or deleted")


def _run_metadata(settings, keep) -> dict | None:
    """A run's VM says where its record lives, and powers off if no runner claims it in time."""
    from infra import clients, provision

    if keep:
        return None
    pacing = clients.LOCAL_PACING if settings.is_local else clients.GCP_PACING
    return {provision.RUN_BUCKET_KEY: settings.bucket, "ferry-idle-timeout": f"{pacing.idle_timeout_s:g}"}


def _plan(settings, job, run_id, keep):
    from infra import provision

    return provision.plan(settings, template=job.template, name=_vm_name(run_id),
                          labels=None if keep else {"ferry-run": run_id}, metadata=_run_metadata(settings, keep))


class Session:
    """One `run`: its records in the bucket and its SSH link to the VM."""

    def __init__(self, settings, job, values, argv, run_id, bucket=None):
        self.settings = settings
        self.job = job
        self.run_id = run_id
        self.paths = run_paths(run_id)
        self.prefix = records.prefix(run_id)
        self.bucket = bucket if bucket is not None else bucket_of(settings)
        self.vm = None
        self.owned = None          # (name, zone, instance id) of the VM this run created
        self.remote = None
        self.runner_started = False
        self.handed_over = False   # detached: the runner ends the VM
        self.offset = 0
        self.t0 = time.time()
        self.vm_t0 = None
        self.storage = Reachability(f"Cloud Storage (gs://{settings.bucket})", reattach_hint(run_id))
        self.compute_api = Reachability("the Compute Engine API", reattach_hint(run_id))
        self.manifest = {
            "run_id": run_id, "job": job.name, "params": values, "argv": argv, "datasets": list(job.datasets),
            "template": job.template, "backend": settings.backend, "project": settings.project,
            "bucket": settings.bucket, "created": records.iso(), "ferry_version": ferry_version(), "user": _owner(),
        }
        self.status = {"run_id": run_id, "state": "provisioning", "heartbeat": records.iso(), "exit_code": None,
                       "started": None, "ended": None, "message": None}

    # records --------------------------------------------------------------
    def put_manifest(self) -> None:
        records.put_json(self.bucket, self.prefix + "manifest.json", self.manifest, quick=True)

    def put_status(self, state: str, **fields) -> None:
        self.status.update(fields, state=state, heartbeat=records.iso())
        records.put_json(self.bucket, self.prefix + "status.json", self.status, quick=True)

    def bucket_status(self) -> dict | None:
        """status.json from the bucket; None when absent or Cloud Storage does not answer
        (raises CloudError once it has not answered for 30 s in a row)."""
        from jobs.follow import read_json

        try:
            st = read_json(self.bucket, self.prefix + "status.json")
        except Exception as exc:
            self.storage.failed(exc)
            return None
        self.storage.ok()
        return st

    # the VM ---------------------------------------------------------------
    def own(self, name: str, zone: str, instance_id: str | None) -> None:
        """provision.up's on_insert: from its first moment, this run owns the VM."""
        self.owned = (name, zone, instance_id)
        self.manifest.update(vm=name, zone=zone, vm_id=instance_id)

    def connect(self) -> None:
        from infra import ssh
        from jobs.remote import SshRemote

        self.remote = SshRemote(ssh.connect(self.vm), reconnect=lambda: ssh.connect(self.vm))

    def set_vm(self, vm) -> None:
        self.vm = vm
        self.manifest.update(vm=vm.name, zone=vm.zone, machine_type=vm.machine_type, gpu=_gpu_text(vm),
                             spot=vm.spot, price_per_hour=vm.price_per_hour, vm_created_by_run=bool(self.owned),
                             vm_id=vm.id or self.manifest.get("vm_id"))

    def vm_state(self) -> str | None:
        """The VM's status from the API ('GONE' when deleted), None when the API does not answer."""
        from google.api_core.exceptions import NotFound

        from infra import clients

        try:
            compute = clients.compute(self.settings)
            inst = compute.instances.get(project=compute.project, zone=self.vm.zone, instance=self.vm.name, timeout=10)
        except NotFound:
            self.compute_api.ok()
            return "GONE"
        except Exception as exc:
            self.compute_api.failed(exc)
            return None
        self.compute_api.ok()
        return str(inst.status)

    def start(self, setup_wait: bool) -> None:
        from infra import clients
        from jobs import sync
        from jobs.remote import check

        self.put_status("syncing")
        result = sync.sync(self.remote, warn=lambda m: say("warning: " + m))
        self.manifest["code_hash"] = result.code_hash
        self.manifest["sync"] = {"mode": result.mode, "files": result.files_sent, "bytes": result.bytes_sent}
        if result.mode != "none":
            say(f"code {result.code_hash}: sent {result.files_sent} file(s), {result.bytes_sent / 1e3:.1f} kB ({result.mode})")
        self.put_manifest()
        ep = clients.endpoints(self.settings)
        pacing = ep["pacing"]
        p = {
            "run_id": self.run_id, "bucket": self.settings.bucket,
            "project": None if self.settings.is_local else self.settings.project,
            "argv": self.manifest["argv"], "datasets": list(self.job.datasets), "data_dir": DATA_DIR,
            "upload_interval": UPLOAD_INTERVAL_S, "heartbeat_interval": HEARTBEAT_INTERVAL_S,
            "setup_wait": setup_wait, "setup_poll": pacing.guest_poll_s, "gpu": self.manifest.get("gpu"),
            # a VM this run created ends itself when the job ends, whether or not we are attached
            "self_delete": bool(self.owned) and not self.manifest.get("kept"),
            "compute_endpoint": ep["compute"],
        }
        self.remote.write(f"{self.paths['run_dir']}/params.json", json.dumps(p, indent=2).encode())
        check(self.remote.run(["python3", RUNNER, "start", self.paths["run_dir"]], timeout=60), "starting the runner")
        self.runner_started = True

    def follow(self) -> dict:
        """Stream output.log from the VM until the run ends -> its final status. Reconnects
        after a dropped link; follows the bucket when the VM is unreachable; salvages a run
        whose runner died; a VM gone under the job ends the run as `lost`."""
        def on_data(data: bytes) -> None:
            _write_out(data)
            self.offset += len(data)

        while True:
            try:
                code = self.remote.stream(["python3", RUNNER, "follow", self.paths["run_dir"], "--offset", str(self.offset)],
                                          on_data)
            except KeyboardInterrupt:
                raise
            except Exception as exc:  # the SSH link dropped: the runner goes on without us
                say(f"SSH connection lost ({exc.__class__.__name__}); the job goes on, reconnecting")
                how = self._reconnect()
                if how == "ok":
                    continue
                if how == "vm-gone":
                    return self._vm_gone(on_data)
                if how == "unreachable":
                    say("VM unreachable over SSH; following the log in the bucket")
                return follow_bucket(self.bucket, self.run_id, self.offset, on_data, on_silent=self._silent)
            final = self.bucket_status() or {}
            if code == RUNNER_GONE:
                return self._runner_gone("lost", "the runner on the VM died before the job ended (killed, out of memory, "
                                                 "or the VM rebooted); what the job wrote until then is saved")
            if records.effective_state(final) in records.FINAL:
                return final
            # the VM's run is over but the bucket does not say so: the runner could not write there
            return self._runner_gone("failed", "the runner could not write the run's final status to the bucket")

    def _reconnect(self) -> str:
        """-> 'ok' (reconnected), 'final' (the bucket has the end), 'vm-gone', 'unreachable'."""
        deadline = time.time() + RECONNECT_FOR_S
        delay = 0.2
        while time.time() < deadline:
            st = self.bucket_status()
            if st and st.get("state") in records.FINAL:
                return "final"  # finished meanwhile (or the VM went away after a final flush)
            state = self.vm_state()
            if state not in (None, "RUNNING"):
                return "vm-gone"
            try:
                self.remote.reconnect()
                return "ok"
            except KeyboardInterrupt:
                raise
            except Exception:
                time.sleep(delay)
                delay = min(2.0, delay * 2)
        return "unreachable"

    def _runner_gone(self, state: str, message: str) -> dict:
        """The runner ended without its final word in the bucket: save what is on the VM's disk."""
        say(f"{message}; saving its output from the VM")
        try:
            if state == "lost":  # the job may still run without its runner: stop it, then copy
                self.remote.run(["python3", RUNNER, "stop-job", self.paths["run_dir"]], timeout=30)
            final = salvage(self.remote, self.bucket, self.run_id, self.paths["run_dir"], state, message)
        except Exception as exc:
            say(f"warning: could not salvage the run from the VM ({exc.__class__.__name__}: {exc})")
            final = {"state": state, "message": message}
            try:
                self.put_status(state, ended=records.iso(), message=message)
            except Exception:
                pass
        return final

    def _vm_gone(self, on_data) -> dict:
        """The VM was deleted or stopped under the job: lost (never "the job failed")."""
        st = self.bucket_status() or {}
        if records.effective_state(st) in records.FINAL:  # the runner flushed as the VM shut down
            return follow_bucket(self.bucket, self.run_id, self.offset, on_data)
        message = f"VM {self.vm.name} was deleted or stopped while the job ran"
        say(message)
        self.put_status("lost", ended=records.iso(), message=message)
        return self.status

    def _silent(self, status: dict) -> dict | None:
        """follow_bucket: the runner has not beaten for a minute and SSH does not answer."""
        state = self.vm_state()
        if state is None:
            return None  # the API does not answer either; follow_bucket gives up in time
        if state != "RUNNING":
            return self._vm_gone(lambda data: None)
        message = f"the runner has been silent for a minute and VM {self.vm.name} does not answer SSH"
        say(message)
        self.put_status("lost", ended=records.iso(), message=message)
        return self.status

    def cancel(self) -> None:
        """A signal: ask the runner to stop the job and flush; record the run as cancelled."""
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
            if self.owned and self.vm_t0:
                seconds = end - self.vm_t0
            else:
                seconds = records.duration_s(self.bucket_status() or self.status) or 0.0  # the job's time on it
            self.manifest["cost_estimate"] = round(price * seconds / 3600, 6)
        self.manifest["vm_deleted"] = deleted
        try:
            self.put_manifest()
        except Exception:
            pass


def _write_out(data: bytes) -> None:
    try:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    except (OSError, ValueError):  # the terminal went away (SIGHUP): the run goes on to its end
        pass


def _owner() -> str:
    from infra.settings import owner

    return owner()


def _summary(session: Session, status: dict, deleted: bool | None) -> None:
    from jobs.follow import read_json

    st = status or {}
    state = records.effective_state(st)
    try:
        summary = read_json(session.bucket, session.prefix + "summary.json")
    except Exception:
        summary = None
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
        if not session.owned:
            where = f"VM {vm.name} left running"
        elif deleted:
            where = f"VM {vm.name} deleted"
        elif session.manifest.get("kept"):
            where = f"VM {vm.name} kept, still running: `python cli.py down {vm.name}`"
        else:
            where = f"VM {vm.name} NOT deleted: `python cli.py down {vm.name}` (or `cleanup`)"
        price = f"; cost ≈ ${cost:.4f} at ${vm.price_per_hour:.2f}/h" if isinstance(cost, (int, float)) and vm.price_per_hour else ""
        say(where + price)


def raise_for_state(state: str, st: dict, run_id: str) -> None:
    if state == "succeeded":
        return
    if state == "failed":
        if st.get("exit_code") is None:  # the job never ran or never ended by itself: infrastructure
            raise CloudError(f"run {run_id} failed: {st.get('message') or 'before the job started'}",
                             hint=f"see `python cli.py logs {run_id}`")
        raise JobFailed(f"run {run_id} failed (exit code {st.get('exit_code')})", hint=f"see `python cli.py logs {run_id}`")
    if state == "cancelled":
        raise Interrupted(f"run {run_id} cancelled")
    if state == "preempted":
        raise CloudError(f"run {run_id}: the spot VM was preempted", hint="its log and metrics up to then are in the bucket; run it again")
    raise CloudError(f"run {run_id} is {state}" + (f": {st['message']}" if st.get("message") else ""),
                     hint=f"its log up to then is in the bucket: `python cli.py logs {run_id}`")


def _confirm_cost(settings, job, run_id, keep, yes) -> None:
    from infra.commands import CONFIRM_OVER_USD as limit
    from infra.commands import confirm

    plan = _plan(settings, job, run_id, keep)
    if plan.max_cost is not None and plan.max_cost > limit:
        confirm(f"run {job.name} on a new {plan.spec.gpu_label} VM ({plan.spec.machine_type}) at "
                f"${plan.price_per_hour:.2f}/h may cost up to ${plan.max_cost:.2f} before its {plan.max_hours:g} h "
                f"limit deletes it. Run it?", yes)


def run(settings, *, job: str, vm: str | None = None, overrides=(), keep: bool = False, detach: bool = False,
        dry_run: bool = False, yes: bool = False) -> None:
    from infra import templates

    j = catalog.get(job)
    values = params.resolve(j, overrides)
    run_id = records.new_run_id(j.name)
    argv = params.argv(j, values, run_paths(run_id))
    if vm:
        templates.check_vm_name(vm)
    spec = templates.load(j.template)  # validated before anything is created
    if dry_run:
        _dry_run(settings, j, values, argv, vm, keep, run_id)
        return
    setup_wait = SETUP_MARKER in (spec.startup_script or "")

    chosen = _choose_vm(settings, vm)  # read-only: a bad --vm is exit 2 before any record is written
    if chosen is None:
        _confirm_cost(settings, j, run_id, keep, yes)
    bucket = bucket_of(settings)
    from jobs import datasets

    for name in j.datasets:  # a missing or bad source is exit 2 here, before any run record
        datasets.ensure(bucket, name, settings.home, progress=say)
    interrupts.check()

    session = Session(settings, j, values, argv, run_id, bucket)
    session.manifest["kept"] = bool(keep)
    final: dict | None = None
    deleted = None
    try:
        changed = [f"{k}={v}" for k, v in values.items() if v is not None and j.params[k].default != v]
        say(f"run {run_id}: {' '.join([j.name, *changed])}")
        session.put_manifest()
        session.put_status("provisioning")
        if chosen is None:
            from infra import provision

            session.vm_t0 = time.time()
            say(f"provisioning a VM from template {j.template!r}")
            # A kept VM is the user's from the start, like one from `up`: no ferry-run label, so
            # `cleanup` leaves it and later runs use it. A run's VM says where its record lives.
            chosen = provision.up(settings, template=j.template, name=_vm_name(run_id),
                                  labels=None if keep else {"ferry-run": run_id},
                                  metadata=_run_metadata(settings, keep), progress=say, on_insert=session.own)
            say(f"VM {chosen.name} up in {chosen.zone} ({time.time() - session.vm_t0:.1f} s)")
        else:
            say(f"using VM {chosen.name} in {chosen.zone}")
        session.set_vm(chosen)
        session.connect()
        session.start(setup_wait)
        if detach:
            session.handed_over = True
            say(f"started {run_id} on {chosen.name}; follow it with `python cli.py logs {run_id} --follow`"
                + ("; the VM deletes itself when the job ends" if session.owned and not keep else ""))
            session.put_manifest()
            return
        final = session.follow()
    except KeyboardInterrupt:
        with shielded("cancelling the job and deleting the VM first; please wait"):
            try:
                session.cancel()
            except Exception as exc:
                say(f"could not confirm the cancellation ({exc.__class__.__name__})")
            final = session.bucket_status() or {"state": "cancelled"}
            if final.get("state") not in records.FINAL:
                final = {"state": "cancelled"}
    except FerryError as exc:
        with shielded("recording the failure and deleting the VM first; please wait"):
            _record_failure(session, exc)
        raise
    except Exception as exc:
        with shielded("recording the failure and deleting the VM first; please wait"):
            _record_failure(session, exc)
        raise CloudError(f"run {run_id}: {exc.__class__.__name__}: {exc}") from exc
    finally:
        with shielded("deleting the VM first; please wait"):
            deleted = _teardown(session, keep)
    _summary(session, final, deleted)
    raise_for_state(records.effective_state(final), final, run_id)


def _teardown(session: Session, keep: bool) -> bool | None:
    """Close the link; delete the VM this run created (unless kept, or handed to a detached
    runner that deletes it itself); record the run's cost. -> deleted?"""
    if session.remote is not None:
        session.remote.close()
    deleted = None
    if session.owned and not keep and not session.handed_over:
        deleted = _delete_vm(session)
    elif session.owned and keep:
        deleted = False
    if not session.handed_over and (session.vm is not None or session.owned):
        session.finish_manifest(bool(deleted))
    return deleted


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


def _delete_vm(session: Session) -> bool:
    """Delete the VM this run created, proven by the instance id its insert returned (or, when
    the API never said it, by the labels naming this run)."""
    from infra import provision

    name, zone, instance_id = session.owned
    proof = provision.Proof(instance_id=instance_id) if instance_id else provision.Proof(run_id=session.run_id)
    try:
        return provision.delete(session.settings, name, zone, proof)
    except FerryError as exc:
        say(f"warning: could not delete VM {name} ({exc}); delete it with `python cli.py down {name}` "
            "(or `python cli.py cleanup`)")
        return False
    except Exception as exc:
        say(f"warning: could not delete VM {name} ({reason(exc)}); delete it with `python cli.py down {name}` "
            "(or `python cli.py cleanup`)")
        return False
