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
import posixpath
import shlex
import sys
import time

import click

from infra import interrupts
from infra.commands import CONFIRM_OVER_USD
from infra.errors import CloudError, FerryError, Interrupted, JobFailed, NoCapacity, UsageError, unknown
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
RECOVERABLE = ("preempted", "lost")  # a run ended so may resume on a new VM
RECOVER_SPOT_DEFAULT = 3
RECOVER_MAX = 20
FALLBACKS = ("on-demand",)


def ferry_version() -> str:
    try:
        from importlib.metadata import version

        return version("ferry")
    except Exception:
        return "0.1.0"


def run_paths(run_id: str) -> dict:
    run_dir = f"ferry/runs/{run_id}"
    return {"run_dir": run_dir, "out": f"{run_dir}/out", "data": DATA_DIR, "code": "ferry/code", "run_id": run_id}


def job_paths(job, run_id: str) -> dict:
    """The paths the job's command is filled with. A job file with its own workdir runs in it
    (ferry/code/work): its paths are relative to there; the built-in jobs run in the login
    directory."""
    paths = run_paths(run_id)
    if not getattr(job, "own_workdir", False):
        return paths
    cwd = f"{paths['code']}/work"
    return {**paths, **{k: posixpath.relpath(paths[k], cwd) for k in ("out", "data", "run_dir")}, "code": "."}


def job_cwd(job) -> str | None:
    return "ferry/code/work" if getattr(job, "own_workdir", False) else None


def secret_values(job) -> dict:
    """The values of the job's secrets from this machine's environment; an unset one is exit 2."""
    missing = [name for name in job.secrets if name not in os.environ]
    if missing:
        where = f"{job.path}: " if job.path else ""
        raise UsageError(f"{where}secrets: {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not set in "
                         "this environment", hint=f"export {missing[0]}=... before the run (its value goes to the "
                         "job over SSH only)")
    return {name: os.environ[name] for name in job.secrets}


def check_job_inputs(job) -> None:
    """What a job file needs that can be checked here: its workdir, its local dataset folders."""
    from jobs import datasets

    if job.workdir is not None and not job.workdir.is_dir():
        raise UsageError(f"{job.path}: workdir {job.workdir} does not exist")
    argv = job.command
    if job.own_workdir and not job.shell and len(argv) > 1 and argv[0] in ("python", "python3") \
            and argv[1].endswith(".py") and "{" not in argv[1] and not (job.workdir / argv[1]).is_file():
        raise UsageError(f"{job.path}: command: {argv[1]} is not in the workdir {job.workdir}",
                         hint="the job runs in its workdir on the VM; fix the path or the workdir")
    for ds in job.sources:
        datasets.check_source(ds)


def setup_key(job, files: dict) -> str | None:
    """The setup's cache key on a VM: its commands and the workdir's code hash."""
    import hashlib

    from jobs import sync

    if not job.setup:
        return None
    h = hashlib.sha256()
    for c in job.setup:
        h.update(json.dumps([c.shell, list(c.argv)]).encode() + b"\n")
    h.update(sync.workdir_hash(files).encode())
    return h.hexdigest()[:20]


def stage_datasets(settings, bucket, job) -> None:
    from jobs import datasets

    for ds in job.sources or ():
        datasets.ensure_source(bucket, ds, settings.home, progress=say)
    for name in job.datasets:
        if not any(ds.name == name for ds in job.sources or ()):
            datasets.ensure(bucket, name, settings.home, progress=say)


shielded = interrupts.shielded  # signals wait while we tear down (a half-deleted VM costs money)


def _pinned_vm(settings, name: str | None):
    """The VM to use without asking the Compute Engine API, or None: --vm NAME, else the one VM
    of yours (not a run's) that this machine brought up, when SSH presenting its pinned host key
    answers. That key proves it is the same VM, still running; anything else (a stale record, a
    reused address, two VMs) goes to the API. Saves the ~0.5 s the compute client costs."""
    from infra import provision, ssh

    mine = [v for v in provision.pinned(settings) if v.host_key and not _runs_own(v)]
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
    up = [v for v in provision.list_vms(settings, mine_only=True) if v.status == "RUNNING" and not _runs_own(v)]
    if len(up) > 1:
        raise UsageError(f"{len(up)} VMs are up ({', '.join(v.name for v in up)})", hint="pick one with --vm NAME")
    if len(up) == 1:
        vm = provision.get(settings, up[0].name)
        if vm is not None and vm.host_key:
            return vm
    return None


def _runs_own(vm) -> bool:
    """A run's VM or a Cloud Batch VM of a sweep: never "the one VM up" a run may use."""
    labels = vm.labels or {}
    return "ferry-run" in labels or "ferry-sweep" in labels


def _gpu_text(vm) -> str | None:
    if not vm or not vm.gpu:
        return None
    return f"{vm.gpu_count} x {vm.gpu}" if vm.gpu_count and vm.gpu_count > 1 else vm.gpu


def _dry_run(settings, job, values, argv, vm_name, keep, run_id, spot=None, recover=0, fallback=None) -> None:
    plan = None if vm_name else _plan(settings, job, run_id, keep, spot)  # validates (zone, template) first
    click.echo(f"job:       {job.name} — {job.description}")
    click.echo("params:    " + ", ".join(f"{k}={v}" for k, v in values.items() if v is not None))
    if job.shell:
        click.echo(f"command:   bash -c {shlex.quote(argv[2])}   (a shell: command, run by bash; values quoted)")
    else:
        click.echo(f"command:   {shlex.join(argv)}   (argv on the VM; no shell)")
    if job.own_workdir:
        click.echo(f"workdir:   {job.workdir} -> ferry/code/work on the VM (the job runs there; ferry's trainer/ "
                   "importable), by content hash")
    for c in job.setup:
        click.echo(f"setup:     {c.text()}   (once per VM and workdir code; {'bash' if c.shell else 'argv'})")
    if job.env:
        click.echo("env:       " + ", ".join(f"{k}={v}" for k, v in job.env.items()))
    if job.secrets:  # names only: a value never reaches the screen, a file or the bucket
        click.echo("secrets:   " + ", ".join(job.secrets) + "   (from this environment; passed over SSH only)")
    if job.outputs:
        click.echo("outputs:   " + ", ".join(job.outputs) + f"   (-> gs://{settings.bucket}/runs/<run-id>/artifacts/)")
    builtin = [n for n in job.datasets if not any(ds.name == n and ds.source for ds in job.sources)]
    own = [ds for ds in job.sources if ds.source]
    if builtin or not own:
        click.echo(f"datasets:  {', '.join(builtin) or 'none'} from gs://{settings.bucket}/datasets/ "
                   f"(seeded from {'FERRY_DATA_SOURCE' if os.environ.get('FERRY_DATA_SOURCE') else 'the public source'} "
                   "if absent)")
    for i, ds in enumerate(own):
        click.echo(f"{'datasets:' if i == 0 and not builtin else '':<11}{ds.name} from {ds.source} -> "
                   f"gs://{settings.bucket}/datasets/{ds.name}/ (staged when its content changed)")
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
    click.echo("recovery:  " + (f"up to {recover} time(s) on preemption or VM loss: a new VM resumes from the last checkpoint"
                                + (", on demand if spot has no capacity (--fallback on-demand)" if fallback else "")
                                if recover else "none (a preempted or lost run stops; `resume RUN` continues it)"))
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


def _plan(settings, job, run_id, keep, spot=None):
    from infra import provision

    return provision.plan(settings, template=job.template, gpu=job.gpu, max_hours=job.max_hours,
                          name=_vm_name(run_id), spot=spot,
                          labels=None if keep else {"ferry-run": run_id}, metadata=_run_metadata(settings, keep))


class Session:
    """One `run`: its records in the bucket and its SSH link to the VM."""

    def __init__(self, settings, job, values, argv, run_id, bucket=None, secrets=None):
        self.settings = settings
        self.job = job
        self.secrets = dict(secrets or {})  # name -> value: over SSH to the runner only, never written
        self.run_id = run_id
        self.paths = run_paths(run_id)
        self.prefix = records.prefix(run_id)
        self.bucket = bucket if bucket is not None else bucket_of(settings)
        self.vm = None
        self.owned = None          # (name, zone, instance id) of the VM this run created
        self.remote = None
        self.runner_started = False
        self.handed_over = False   # detached: the runner ends the VM
        self.offset = 0            # bytes of the VM's output.log followed so far
        self.printed = 0           # bytes of the run's log written to stdout
        self.t0 = time.time()
        self.vm_t0 = None
        self.segments: list[dict] = []  # the VMs the run ran on before this one (closed)
        self.recoveries = 0
        self.recover_budget = 0
        self.continues = False          # this VM continues the run (recovery, `resume`)
        self.prior_state = None         # the run's state before it was resumed
        self.retired: list[tuple] = []  # (VM, deleted?) of earlier segments
        self._retiring: list[tuple] = []  # (owned, deleting thread)
        self._bucket_seen: dict = {}     # the newest status.json read from the bucket
        self.storage = Reachability(f"Cloud Storage (gs://{settings.bucket})", reattach_hint(run_id))
        self.compute_api = Reachability("the Compute Engine API", reattach_hint(run_id))
        self.manifest = {
            "run_id": run_id, "job": job.name, "params": values, "argv": argv, "datasets": list(job.datasets),
            "template": job.template, "backend": settings.backend, "project": settings.project,
            "job_file": None if job.builtin or job.path is None else str(job.path),
            "workdir": str(job.workdir) if getattr(job, "own_workdir", False) else None,
            "env": dict(job.env), "secrets": list(job.secrets), "outputs": list(job.outputs),
            "setup": [c.text() for c in job.setup],
            "bucket": settings.bucket, "created": records.iso(), "ferry_version": ferry_version(), "user": _owner(),
        }
        self.status = {"run_id": run_id, "state": "provisioning", "heartbeat": records.iso(), "exit_code": None,
                       "started": None, "ended": None, "message": None}

    # records --------------------------------------------------------------
    def put_manifest(self) -> None:
        records.put_json(self.bucket, self.prefix + "manifest.json", self.manifest, quick=True)

    def put_status(self, state: str, **fields) -> None:
        """Our word on the run (the runner could not give its own): keeps what the runner last
        said of the VMs it ran on, closing the last one when the run ends here."""
        for key in ("segments", "gpu", "host", "started"):
            if self._bucket_seen.get(key) is not None and key not in fields:
                self.status[key] = self._bucket_seen[key]
        self.status.update(fields, state=state, heartbeat=records.iso())
        segs = self.status.get("segments")
        if state in records.FINAL and segs and not segs[-1].get("ended"):
            segs[-1] = close_segment(dict(segs[-1]), state, records.iso())
        from trainer.report import ROW_KEY, row

        records.put_json(self.bucket, self.prefix + "status.json", self.status, quick=True,
                         metadata={ROW_KEY: row(self.status, self.job.name, self.manifest.get("vm"))})

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
        if st:
            self._bucket_seen = st
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

    def segment_info(self) -> dict:
        """This VM's part of the run, as the runner records it in status.json's segments."""
        from datetime import datetime, timezone

        vm = self.vm
        return {"index": len(self.segments), "vm": vm.name, "zone": vm.zone, "spot": bool(vm.spot),
                "machine_type": vm.machine_type, "gpu": _gpu_text(vm), "price_per_hour": vm.price_per_hour,
                "on_demand_per_hour": _on_demand_price(vm), "vm_created_by_run": bool(self.owned),
                "vm_started": records.iso(datetime.fromtimestamp(self.vm_t0, timezone.utc))
                if self.owned and self.vm_t0 else None}

    def provision(self, spot: bool | None, fallback: str | None, keep: bool = False) -> None:
        """A new VM for this run (segment N gets `ferry-RUN-ID-N+1`), connected. A spot VM
        with no capacity in any zone is an on-demand one with `fallback`, said so."""
        from infra import provision

        self.vm_t0 = time.time()
        say(f"provisioning a VM from template {self.job.template!r}" + (" (spot)" if spot else ""))
        # A kept VM is the user's from the start, like one from `up`: no ferry-run label, so
        # `cleanup` leaves it and later runs use it. A run's VM says where its record lives.
        kw = dict(template=self.job.template, gpu=self.job.gpu, max_hours=self.job.max_hours,
                  name=_vm_name(self.run_id, len(self.segments)),
                  labels=None if keep else {"ferry-run": self.run_id}, metadata=_run_metadata(self.settings, keep),
                  progress=say, on_insert=self.own)
        try:
            vm = provision.up(self.settings, spot=spot, **kw)
        except NoCapacity as exc:
            if fallback != "on-demand" or spot is False:
                raise
            say(f"no spot capacity: {exc}")
            say("--fallback on-demand: creating an on-demand VM instead (it costs more)")
            self.vm_t0 = time.time()
            vm = provision.up(self.settings, spot=False, **kw)
        say(f"VM {vm.name} up in {vm.zone} ({time.time() - self.vm_t0:.1f} s)")
        self.set_vm(vm)
        self.connect()

    def catch_up(self) -> None:
        """Between segments: write what the bucket's log has beyond what we printed; the next
        VM's log starts with exactly these bytes, so its `follow` starts after them."""
        try:
            data = self.bucket.blob(self.prefix + "logs/output.log").download_as_bytes()
        except Exception:
            data = b""
        if len(data) > self.printed:
            _write_out(data[self.printed:])
        self.printed = self.offset = len(data)

    def recover(self, why: str, final: dict, setup_wait: bool, spot: bool | None, fallback: str | None) -> dict:
        """The run was preempted or its VM lost: delete that VM (ours only), resume on a new
        one from the newest checkpoint in the bucket -> the run's status when it ends again."""
        self.recoveries += 1
        self.segments = self._closed_segments(final, why)
        old = self.vm
        say(f"=== {why} on VM {old.name if old else '?'}; recovery {self.recoveries} of {self.recover_budget}: "
            f"a new VM resumes the run from its last checkpoint ===")
        self.catch_up()
        if self.remote is not None:
            self.remote.close()
            self.remote = None
        if self.owned:
            if why == "lost":  # it may still run (a silent runner): gone before the next one writes the record
                with shielded("deleting the old VM first; please wait"):
                    self.retired.append((self.owned[0], _delete_vm(self, self.owned)))
            else:  # preempted: deleted while the next VM comes up (GCE stops it for ~30 s)
                self.retire(self.owned)
            self.owned = None
        self.vm, self.runner_started, self.continues, self.prior_state = None, False, True, why
        try:
            self.provision(spot, fallback)
            self.start(setup_wait)
        except (KeyboardInterrupt, UsageError, NoCapacity):
            raise
        except Exception as exc:  # was the new VM taken back while we set it up?
            state = self.vm_state() if (self.vm is not None or self.owned) else None
            if state in (None, "RUNNING", "PROVISIONING", "STAGING"):
                raise
            message = f"VM {self.owned[0] if self.owned else self.vm.name} went away ({state}) while being set up"
            say(f"{message} ({exc.__class__.__name__})")
            st = {"state": "preempted" if (self.vm is None or self.vm.spot) else "lost", "message": message,
                  "heartbeat": records.iso()}
            if self.vm is not None:
                st["segments"] = [*self.segments, self.segment_info()]
            return st
        return self.follow()

    def retire(self, owned: tuple) -> None:
        """Delete an earlier segment's VM in the background; `wait_retired` joins (teardown)."""
        import threading

        def work():
            self.retired.append((owned[0], _delete_vm(self, owned)))

        thread = threading.Thread(target=work, name=f"delete-{owned[0]}", daemon=True)
        with shielded("deleting the old VM; please wait"):
            thread.start()
            self._retiring.append((owned, thread))

    def wait_retired(self) -> None:
        """Every earlier VM deleted (or said why not) before the command returns."""
        for owned, thread in self._retiring:
            thread.join(timeout=600)
            if thread.is_alive():
                say(f"warning: VM {owned[0]} is still being deleted; check with `python cli.py status`")
        self._retiring = []

    def _closed_segments(self, final: dict, why: str) -> list[dict]:
        """The segments so far, the last one closed (the runner closes its own when it can)."""
        st = self.bucket_status() or final or {}
        segs = [dict(x) for x in (st.get("segments") or final.get("segments") or [])]
        if not segs or segs[-1].get("index") != len(self.segments):
            if self.vm is None:
                return segs or list(self.segments)
            segs = [*self.segments, self.segment_info()]  # its runner never wrote one
        if not segs[-1].get("ended"):
            segs[-1] = close_segment(segs[-1], why, st.get("heartbeat") or records.iso())
        return segs

    def recover_while(self, final: dict, setup_wait: bool, spot: bool | None, fallback: str | None) -> dict:
        while records.effective_state(final) in RECOVERABLE and self.recoveries < self.recover_budget:
            final = self.recover(records.effective_state(final), final, setup_wait, spot, fallback)
        if records.effective_state(final) in RECOVERABLE and self.recover_budget:
            say(f"no recoveries left (--recover {self.recover_budget}); "
                f"`python cli.py resume {self.run_id}` continues it from its last checkpoint")
        return final

    def vm_state(self) -> str | None:
        """The VM's status from the API ('GONE' when deleted), None when the API does not answer."""
        from infra import clients, gce

        name, zone = (self.vm.name, self.vm.zone) if self.vm is not None else self.owned[:2]
        try:
            compute = clients.compute(self.settings)
            inst = compute.instances.get(project=compute.project, zone=zone, instance=name, timeout=10)
        except gce.NotFound:
            self.compute_api.ok()
            return "GONE"
        except Exception as exc:
            self.compute_api.failed(exc)
            return None
        self.compute_api.ok()
        return str(inst.get("status", ""))

    def start(self, setup_wait: bool) -> None:
        from infra import clients
        from jobs import sync
        from jobs.remote import check

        self.put_status("syncing")
        if self.manifest.get("code_hash"):  # a later segment: the same code, or no bit-identical resume
            check_same_code(self.manifest["code_hash"], self.run_id, self.job)
        files = sync.job_files(self.job)
        result = sync.sync(self.remote, warn=lambda m: say("warning: " + m), files=files)
        self.manifest["code_hash"] = result.code_hash
        self.manifest["sync"] = {"mode": result.mode, "files": result.files_sent, "bytes": result.bytes_sent}
        if result.mode != "none":
            say(f"code {result.code_hash}: sent {result.files_sent} file(s), {result.bytes_sent / 1e3:.1f} kB ({result.mode})")
        self.put_manifest()
        ep = clients.endpoints(self.settings)
        pacing = ep["pacing"]
        p = {
            "run_id": self.run_id, "job": self.job.name, "bucket": self.settings.bucket,
            "project": None if self.settings.is_local else self.settings.project,
            "argv": self.manifest["argv"], "datasets": list(self.job.datasets), "data_dir": DATA_DIR,
            "upload_interval": UPLOAD_INTERVAL_S, "heartbeat_interval": HEARTBEAT_INTERVAL_S,
            "setup_wait": setup_wait, "setup_poll": pacing.guest_poll_s, "gpu": self.manifest.get("gpu"),
            # a VM this run created ends itself when the job ends, whether or not we are attached
            "self_delete": bool(self.owned) and not self.manifest.get("kept"),
            "compute_endpoint": ep["compute"],
            "code_hash": result.code_hash, "resume_flag": self.job.resume,
            "segment": self.segment_info(), "segments": self.segments,
            "continue": self.continues,  # a later segment: continue the log, resume from a checkpoint
            "run_started": (self.segments[0].get("started") if self.segments else None) or self._bucket_seen.get("started"),
            "cwd": job_cwd(self.job), "env": dict(self.job.env), "outputs": list(self.job.outputs),
            "setup": [{"argv": list(c.argv), "shell": c.shell} for c in self.job.setup],
            "setup_key": setup_key(self.job, files), "secret_names": sorted(self.secrets),
        }
        if self.continues:  # a VM the run used before (`resume --vm`) keeps its old folder: start clean
            r = self.remote.run(["python3", RUNNER, "fresh", self.paths["run_dir"]], timeout=60)
            if r.code != 0:
                raise UsageError(f"run {self.run_id} still has a live runner on VM {self.vm.name}",
                                 hint=f"follow it: `python cli.py logs {self.run_id} --follow`")
        self.remote.write(f"{self.paths['run_dir']}/params.json", json.dumps(p, indent=2).encode())
        if self.secrets:  # their values travel on the SSH channel's stdin: in no file, no argv, no record
            check(self.remote.run_input(["python3", RUNNER, "start", self.paths["run_dir"], "--secrets-stdin"],
                                        json.dumps(self.secrets).encode(), timeout=60), "starting the runner")
        else:
            check(self.remote.run(["python3", RUNNER, "start", self.paths["run_dir"]], timeout=60), "starting the runner")
        self.runner_started = True

    def follow(self) -> dict:
        """Stream output.log from the VM until the run ends -> its final status. Reconnects
        after a dropped link; follows the bucket when the VM is unreachable; salvages a run
        whose runner died; a VM gone under the job ends the run as `lost`."""
        def on_data(data: bytes) -> None:
            _write_out(data)
            self.offset += len(data)
            self.printed += len(data)

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
        st = self.bucket_status() or self._bucket_seen or self.status  # one read; the last one seen if it fails
        segs = st.get("segments") or []
        if self.recoveries or len(segs) > 1:
            self.manifest["recoveries"] = max(self.recoveries, len(segs) - 1)
        costs = [x.get("cost") for x in segs]
        if len(segs) > 1 and all(isinstance(c, (int, float)) for c in costs):  # every VM the run ran on
            self.manifest["cost_estimate"] = round(sum(costs), 6)
        elif isinstance(price, (int, float)):
            if self.owned and self.vm_t0:
                seconds = end - self.vm_t0
            else:
                seconds = records.duration_s(st) or 0.0  # the job's time on it
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
    if st.get("message") and state != "succeeded" and st["message"].strip().lower() != state:
        say(st["message"])
    segs = st.get("segments") or []
    if len(segs) > 1:
        say(f"recovered {len(segs) - 1} time(s): " + "; ".join(
            f"{x.get('vm')} ({x.get('zone')}, {'spot' if x.get('spot') else 'on demand'}) {x.get('ended_by') or '?'}"
            for x in segs))
        spent = [x.get("cost") for x in segs]
        if all(isinstance(c, (int, float)) for c in spent):
            od = [(x.get("on_demand_per_hour"), x.get("seconds")) for x in segs]
            line = f"cost ≈ ${sum(spent):.4f} over {len(segs)} VMs"
            if all(isinstance(p, (int, float)) and isinstance(t, (int, float)) for p, t in od):
                line += f" (on demand ≈ ${sum(p * t / 3600 for p, t in od):.4f})"
            say(line)
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
        raise Interrupted(f"run {run_id} cancelled", said=True)  # the summary line said so
    if state == "preempted":
        raise CloudError(f"run {run_id}: the spot VM was preempted",
                         hint=f"`python cli.py resume {run_id}` continues it from its last checkpoint")
    raise CloudError(f"run {run_id} is {state}" + (f": {st['message']}" if st.get("message") else ""),
                     hint=f"its log up to then is in the bucket: `python cli.py logs {run_id}`")


def _confirm_cost(settings, job, run_id, keep, yes, spot=None) -> None:
    from infra.commands import CONFIRM_OVER_USD as limit
    from infra.commands import confirm

    plan = _plan(settings, job, run_id, keep, spot)
    if plan.max_cost is not None and plan.max_cost > limit:
        confirm(f"run {job.name} on a new {plan.spec.gpu_label} VM ({plan.spec.machine_type}) at "
                f"${plan.price_per_hour:.2f}/h may cost up to ${plan.max_cost:.2f} before its {plan.max_hours:g} h "
                f"limit deletes it. Run it?", yes)


def _recover_options(spec, spot: bool, recover: int | None, fallback: str | None) -> tuple[bool | None, int, str | None]:
    """(spot for new VMs or None for the template's, recoveries allowed, fallback): --recover
    defaults to 3 for a spot run (--spot or a spot template), else 0."""
    if fallback is not None and fallback not in FALLBACKS:
        raise UsageError(f"--fallback {fallback!r}: valid: {', '.join(FALLBACKS)}")
    if recover is not None and not 0 <= recover <= RECOVER_MAX:
        raise UsageError(f"--recover {recover}: must be from 0 to {RECOVER_MAX}")
    is_spot = bool(spot or spec.spot)
    if fallback and not is_spot:
        raise UsageError("--fallback on-demand: only a spot run falls back", hint="add --spot")
    return (True if spot else None), (recover if recover is not None else (RECOVER_SPOT_DEFAULT if is_spot else 0)), fallback


def run(settings, *, job: str, vm: str | None = None, overrides=(), keep: bool = False, detach: bool = False,
        dry_run: bool = False, yes: bool = False, spot: bool = False, recover: int | None = None,
        fallback: str | None = None) -> None:
    from infra import templates

    j = catalog.get(job)
    values = params.resolve(j, overrides)
    run_id = records.new_run_id(j.name)
    argv = params.argv(j, values, job_paths(j, run_id))
    check_job_inputs(j)
    secrets = secret_values(j)  # an unset one is exit 2 here, dry run included
    if vm:
        templates.check_vm_name(vm)
    spot = bool(spot or j.spot)
    spec = templates.load(j.template, gpu=j.gpu, spot=True if spot else None,
                          max_hours=j.max_hours)  # validated before anything is created
    spot, budget, fallback = _recover_options(spec, spot, recover, fallback)
    if dry_run:
        _dry_run(settings, j, values, argv, vm, keep, run_id, spot, budget, fallback)
        return
    setup_wait = SETUP_MARKER in (spec.startup_script or "")

    chosen = _choose_vm(settings, vm)  # read-only: a bad --vm is exit 2 before any record is written
    if chosen is None:
        _confirm_cost(settings, j, run_id, keep, yes, spot)
    bucket = bucket_of(settings)
    stage_datasets(settings, bucket, j)  # a missing or bad source is exit 2 here, before any run record
    interrupts.check()

    session = Session(settings, j, values, argv, run_id, bucket, secrets=secrets)
    session.manifest["kept"] = bool(keep)
    session.manifest["recover"] = session.recover_budget = 0 if detach else budget
    changed = [f"{k}={v}" for k, v in values.items() if v is not None and j.params[k].default != v]
    say(f"run {run_id}: {' '.join([j.name, *changed])}")
    _drive(session, chosen, keep=keep, detach=detach, setup_wait=setup_wait, spot=spot, fallback=fallback,
           detached_budget=budget if detach else 0)


def _drive(session: Session, chosen, *, keep: bool, detach: bool, setup_wait: bool, spot, fallback,
           detached_budget: int = 0) -> None:
    """From the first record to the last: a VM (the one given, or a new one), the runner, the
    output followed, recoveries, and the VMs this run created deleted on every way out."""
    run_id = session.run_id
    final: dict | None = None
    deleted = None
    try:
        session.put_manifest()
        session.put_status("provisioning")
        if chosen is None:
            session.provision(spot, fallback, keep=keep)
        else:
            say(f"using VM {chosen.name} in {chosen.zone}")
            session.set_vm(chosen)
            session.connect()
        session.start(setup_wait)
        if detach:
            session.handed_over = True
            vm = session.vm
            say(f"started {run_id} on {vm.name}; follow it with `python cli.py logs {run_id} --follow`"
                + ("; the VM deletes itself when the job ends" if session.owned and not keep else ""))
            if detached_budget:
                say(f"note: a detached run is not recovered (--recover {detached_budget} applies only while `run` "
                    f"follows it): if it is preempted, `python cli.py resume {run_id}` continues it from its last checkpoint")
            session.put_manifest()
            return
        final = session.follow()
        final = session.recover_while(final, setup_wait, spot, fallback)
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
    session.wait_retired()
    deleted = None
    if session.owned and not keep and not session.handed_over:
        deleted = _delete_vm(session)
    elif session.owned and keep:
        deleted = False
    if not session.handed_over and (session.vm is not None or session.owned):
        session.finish_manifest(bool(deleted))
    return deleted


def _vm_name(run_id: str, segment: int = 0) -> str:
    """The VM of a run's first segment is ferry-RUN-ID; a recovered run's next ones -2, -3, ..."""
    tail = f"-{segment + 1}" if segment else ""
    return f"ferry-{run_id}"[:63 - len(tail)].rstrip("-") + tail


def close_segment(seg: dict, why: str, ended: str) -> dict:
    """A segment ended: when, why, and what it cost (from its VM's creation when ours)."""
    from infra.times import parse_time

    seg.update(ended=ended, ended_by=why)
    price = seg.get("price_per_hour")
    since, end = parse_time(seg.get("vm_started") or seg.get("started")), parse_time(ended)
    if isinstance(price, (int, float)) and since and end:
        seg["seconds"] = round(max(0.0, (end - since).total_seconds()), 3)
        seg["cost"] = round(price * seg["seconds"] / 3600, 6)
    return seg


def _on_demand_price(vm) -> float | None:
    """What the same VM costs on demand (the figure a spot run's savings are measured by)."""
    if not vm.spot:
        return vm.price_per_hour
    from infra import catalog

    cat = catalog.load()
    try:
        gpu = cat.find(vm.gpu) if vm.gpu else None
    except Exception:
        return None
    return cat.price(gpu, vm.gpu_count or (1 if gpu else 0), vm.machine_type, False)


def check_same_code(run_hash: str, run_id: str, job=None) -> None:
    """A run resumes only with the code it started with (else it would not finish as it would
    have uninterrupted): refuse, naming both hashes, when trainer/, the runner or the job's
    own workdir changed."""
    from jobs import sync

    now = sync.code_hash(sync.manifest(sync.job_files(job)))
    if now != run_hash:
        raise UsageError(f"run {run_id} ran code {run_hash}; the code here is now {now}",
                         hint="restore the code the run started with (e.g. git stash), or start a new run")


def _record_failure(session: Session, exc: BaseException) -> None:
    """The run could not go on: `failed`, unless it was being resumed (a recovery, `resume`)
    and its job never started again: then it stays as it was (preempted, lost, cancelled), so
    that `resume` can continue it later."""
    try:
        st = session.bucket_status() or {}
        if st.get("state") not in records.FINAL:
            if session.continues and not session.runner_started and session.prior_state:
                session.put_status(session.prior_state, ended=records.iso(),
                                   message=f"ferry: resuming failed ({exc}); `python cli.py resume {session.run_id}` tries again")
                return
            session.put_status("failed", ended=records.iso(), message=f"ferry: {exc}")
    except Exception:
        pass


def _delete_vm(session: Session, owned: tuple | None = None) -> bool:
    """Delete the VM this run created (`owned`, default the current one), proven by the
    instance id its insert returned (or, when the API never said it, by the labels naming this run)."""
    from infra import provision

    name, zone, instance_id = owned or session.owned
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


# --------------------------------------------------------------------------- resume
RESUMABLE = ("preempted", "lost", "cancelled")


def newest_checkpoint(bucket, run_id: str, manifest: dict, job) -> tuple[str, dict]:
    """(name, meta) of the newest whole checkpoint of the run in the bucket, checked against
    the run (the code it ran, its parameters); falls back past a corrupt one, saying so."""
    import io

    from trainer import checkpoint
    from trainer.errors import TrainerError

    if not job.resume:
        raise UsageError(f"job {job.name} writes no checkpoints: run {run_id} cannot be resumed",
                         hint=f"run it again: `python cli.py run {job.name}`")
    folder = records.prefix(run_id) + "checkpoints/"
    blobs = sorted((b for b in bucket.list_blobs(prefix=folder) if checkpoint.PATTERN.match(b.name[len(folder):])),
                   key=lambda b: b.name, reverse=True)
    if not blobs:
        raise UsageError(f"run {run_id} has no checkpoint: it stopped before its first epoch ended",
                         hint=f"run it again: `python cli.py run {job.name}`")
    for i, blob in enumerate(blobs):
        name = blob.name[len(folder):]
        try:
            meta = checkpoint.read_meta(io.BytesIO(blob.download_as_bytes()))
        except TrainerError:
            older = blobs[i + 1].name[len(folder):] if i + 1 < len(blobs) else None
            say(f"warning: checkpoint {name} is corrupt; " + (f"falling back to {older}" if older else "no older one"))
            continue
        ident = meta.get("identity") or {}
        ran, wrote = manifest.get("code_hash"), ident.get("code_hash")
        if ran and wrote and ran != wrote:
            raise UsageError(f"checkpoint {name} was written by code {wrote}, but run {run_id} ran code {ran}",
                             hint="it is not this run's checkpoint; nothing was changed")
        saved = ident.get("params") or {}
        diffs = [f"{k}={saved[k]!r} (checkpoint) vs {k}={v!r} (run)" for k, v in sorted((manifest.get("params") or {}).items())
                 if v is not None and k in saved and saved[k] != v]
        if diffs:
            raise UsageError(f"checkpoint {name} was written with other parameters than run {run_id}: {'; '.join(diffs)}",
                             hint="it is not this run's checkpoint; nothing was changed")
        return name, meta
    raise UsageError(f"every checkpoint of run {run_id} is corrupt", hint=f"run it again: `python cli.py run {job.name}`")


def _refuse_if_still_up(settings, run_id: str, manifest: dict, status: dict) -> None:
    """The run's last VM still RUNNING (a stuck or silent runner, a detached run whose runner was
    killed): resuming would run it twice, and that VM would bill on. Say so; delete nothing."""
    from infra import provision

    segs = status.get("segments") or []
    name = (segs[-1].get("vm") if segs else None) or manifest.get("vm")
    if not name or not manifest.get("vm_created_by_run", True):
        return
    try:
        vm = provision.get(settings, name)
    except FerryError:
        return
    if vm is not None and vm.status == "RUNNING" and (vm.labels or {}).get("ferry-run") == run_id:
        raise UsageError(f"run {run_id}'s VM {name} is still running: resuming now would run the job twice",
                         hint=f"follow it (`python cli.py logs {run_id} --follow`) or delete it first "
                              f"(`python cli.py down {name}`), then resume")


def resume(settings, *, run_id: str, vm: str | None = None, recover: int | None = None, fallback: str | None = None,
           dry_run: bool = False, yes: bool = False) -> None:
    """Continue a preempted, lost or cancelled run from its newest checkpoint, on a new VM (or
    --vm): the same run id, its log continued, a new segment in status.json."""
    from infra import templates
    from jobs.commands import _resolve_run

    if vm:
        templates.check_vm_name(vm)
    bucket = bucket_of(settings, create=False)
    run_id = _resolve_run(bucket, run_id)
    manifest = records.get_json(bucket, records.prefix(run_id) + "manifest.json")
    status = records.get_json(bucket, records.prefix(run_id) + "status.json") or {}
    if not manifest or not manifest.get("job") or not manifest.get("argv"):
        raise UsageError(f"run {run_id} has no usable manifest.json: it cannot be resumed")
    state = records.effective_state(status)
    if state in ("succeeded", "failed"):
        raise UsageError(f"run {run_id} {state}: a finished run cannot be resumed",
                         hint=f"start a new one: `python cli.py run {manifest['job']}`")
    if state not in RESUMABLE:
        raise UsageError(f"run {run_id} is {state}, not stopped", hint=f"follow it: `python cli.py logs {run_id} --follow`")
    j = catalog.get(manifest.get("job_file") or manifest["job"])
    name, meta = newest_checkpoint(bucket, run_id, manifest, j)
    _refuse_if_still_up(settings, run_id, manifest, status)
    if manifest.get("code_hash"):
        check_same_code(manifest["code_hash"], run_id, j)
    secrets = secret_values(j)
    was_spot = bool(manifest.get("spot"))
    spec = templates.load(j.template, gpu=j.gpu, spot=True if was_spot else None, max_hours=j.max_hours)
    spot, budget, fallback = _recover_options(spec, was_spot, recover, fallback)
    epoch = ((meta.get("state") or {}).get("current") or meta.get("state") or {}).get("epoch")
    where = f"VM {vm}" if vm else f"a new {'spot' if spec.spot else 'on-demand'} VM from template {j.template!r}"
    say(f"resume {run_id} ({state}): from checkpoint {name}" + (f" (epoch {epoch} done)" if epoch is not None else "")
        + f" on {where}")
    if dry_run:
        click.echo("dry run: nothing was created, changed or deleted")
        return
    setup_wait = SETUP_MARKER in (spec.startup_script or "")
    chosen = _choose_vm(settings, vm) if vm else None
    if chosen is None:
        _confirm_cost(settings, j, run_id, False, yes, spot)
    stage_datasets(settings, bucket, j)
    interrupts.check()

    session = Session(settings, j, manifest.get("params") or {}, list(manifest["argv"]), run_id, bucket, secrets=secrets)
    session.manifest = {**manifest, "resumed": [*(manifest.get("resumed") or []), records.iso()], "kept": False}
    session._bucket_seen = status
    session.status.update({k: status[k] for k in ("started", "gpu") if status.get(k)})
    segs = [dict(x) for x in status.get("segments") or []]
    if segs and not segs[-1].get("ended"):
        segs[-1] = close_segment(segs[-1], state, status.get("heartbeat") or records.iso())
    session.segments = segs
    session.status["segments"] = segs
    session._bucket_seen = {**status, "segments": segs}
    try:  # the log so far is in the bucket (`logs RUN`): print only what is new
        log = bucket.blob(session.prefix + "logs/output.log")
        log.reload()
        session.printed = session.offset = int(log.size or 0)
    except Exception:
        pass
    session.recover_budget = session.manifest["recover"] = budget
    session.continues, session.prior_state = True, state
    _drive(session, chosen, keep=False, detach=False, setup_wait=setup_wait, spot=spot, fallback=fallback)
