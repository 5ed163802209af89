"""Provisioning: up, get, list_vms, delete. One code path for `gcp` and `local`.

`up()`: validate (catalog, template, name, labels, retired GPUs) -> [dry run stops here with
the exact body, calls and cost] -> reuse the VM if it exists and is ours -> for each candidate
zone (preferred, its region, then other regions; `zonesAvailable` hints first): preflight
(the zone offers the GPU, regional GPU quota where the API tells), insert, wait on the zone
operation, watch the new VM stay RUNNING for a moment (stockout just after insert), wait for
SSH with the host key pinned. Failures are classified in infra.operations: next zone, next
region, or stop. Anything that goes wrong after an accepted insert (a signal included) deletes
the VM, proven ours by the instance id the insert returned; an insert refused (409
alreadyExists, quota, stockout) deletes nothing. Deleting goes through infra.deletion.
"""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable

from infra import catalog, gce, interrupts, keys, render, state, templates
from infra.deletion import Proof, delete, delete_many  # noqa: F401  (re-exported: one deletion path)
from infra.errors import CloudError, NoCapacity, UsageError
from infra.operations import FATAL, REGION, Failure, from_exception, is_timeout, wait
from infra.settings import Settings, owner
from infra.times import parse_time

MAX_ZONE_ATTEMPTS = 8
GONE_STATES = ("TERMINATED", "STOPPING", "STOPPED", "SUSPENDING", "SUSPENDED", "REPAIRING")
OUR_LABELS = (render.MANAGED_BY, render.LABEL_VM, render.LABEL_OWNER)
RUN_BUCKET_KEY = "ferry-run-bucket"  # metadata of a run's VM: the bucket holding that run's record

Progress = Callable[[str], None]


# --------------------------------------------------------------------------- results
@dataclass
class Vm:
    name: str
    zone: str
    project: str
    host: str | None
    port: int
    user: str
    key_path: Path
    host_key: str | None
    gpu: str | None
    gpu_count: int
    machine_type: str
    price_per_hour: float | None
    auto_delete_at: datetime | None
    labels: dict
    created: bool = False
    status: str = ""
    created_at: datetime | None = None
    spot: bool = False
    id: str | None = None            # the instance id (proof of ownership for deletes)
    run_bucket: str | None = None    # metadata ferry-run-bucket: where its run's record lives

    def as_dict(self) -> dict:
        out = asdict(self)
        out["key_path"] = str(self.key_path)
        for k in ("auto_delete_at", "created_at"):
            out[k] = out[k].isoformat() if out[k] else None
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "Vm":
        fields = dict(data)
        fields["key_path"] = Path(fields["key_path"])
        for k in ("auto_delete_at", "created_at"):
            fields[k] = parse_time(fields.get(k))
        fields["created"] = False
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in fields.items() if k in known})


@dataclass
class Plan:
    """What `up --dry-run` would do: the exact request body, the calls, the cost."""

    name: str
    project: str
    zone: str
    spec: templates.Spec
    body: dict
    calls: list
    price_per_hour: float | None
    max_hours: float
    warnings: list = field(default_factory=list)

    @property
    def max_cost(self) -> float | None:
        return None if self.price_per_hour is None else round(self.price_per_hour * self.max_hours, 2)

    def as_dict(self) -> dict:
        return {
            "dry_run": True, "name": self.name, "project": self.project, "zone": self.zone,
            "template": self.spec.template, "gpu": self.spec.gpu.name if self.spec.gpu else None,
            "gpu_count": self.spec.count, "machine_type": self.spec.machine_type, "spot": self.spec.spot,
            "price_per_hour": self.price_per_hour, "max_hours": self.max_hours, "max_cost": self.max_cost,
            "warnings": self.warnings, "calls": self.calls, "instance": self.body,
        }


# --------------------------------------------------------------------------- validation
def default_name(spec: templates.Spec) -> str:
    gpu = f"{spec.gpu.name}" + (f"x{spec.count}" if spec.count > 1 else "") if spec.gpu else "cpu"
    name = re.sub(r"[^a-z0-9-]", "-", f"ferry-{owner()}-{gpu}".lower())
    name = re.sub(r"-+", "-", name)[:63].rstrip("-")
    return name


def _check_labels(labels: dict | None) -> dict:
    out = {}
    for key, value in (labels or {}).items():
        key, value = str(key), str(value)
        if key in OUR_LABELS or not templates.LABEL_RE.fullmatch(key) or not templates.LABEL_VALUE_RE.fullmatch(value):
            raise UsageError(f"invalid label {key}={value!r}",
                             hint="lowercase letters, digits, _ and -, at most 63; managed-by, ferry-vm, ferry-owner are set by ferry")
        out[key] = value
    return out


def retired_message(gpu: catalog.Gpu) -> str:
    cat = catalog.load()
    succ = cat.find(gpu.successor) if gpu.successor else None
    text = f"{gpu.name} ({gpu.api}) reached end of life on Compute Engine on {gpu.end_of_life}"
    if succ:
        mt = succ.machine_type(succ.counts[0])
        price = cat.price(succ, succ.counts[0], mt)
        text += (f"; the closest current GPU is {succ.name} ({succ.api}, {succ.memory_gb} GB), "
                 f"${succ.price['gpu']:.2f}/h per GPU, about ${price:.2f}/h on {mt}")
    return text


def prepare(settings: Settings, *, gpu=None, template=None, name=None, spot=None, max_hours=None,
            labels=None, metadata=None) -> tuple[templates.Spec, str, dict, list]:
    """All the validation that needs no cloud: -> (spec, name, extra labels, warnings)."""
    spec = templates.load(template, gpu=gpu, spot=spot, max_hours=max_hours)
    name = templates.check_vm_name(name if name is not None else default_name(spec))
    extra = _check_labels(labels)
    warnings = []
    if spec.gpu is not None and spec.gpu.retired:
        message = retired_message(spec.gpu)
        if not settings.is_local:
            succ = spec.gpu.successor or "t4"
            raise UsageError(message, hint=f"use --gpu {succ}")
        warnings.append(message + "; the local backend still runs it")
    return spec, name, extra, warnings


def plan(settings: Settings, **kwargs) -> Plan:
    """`up --dry-run`: everything but the cloud. Needs no credentials, calls nothing."""
    from infra import zones

    spec, name, extra, warnings = prepare(settings, **kwargs)
    zones.check(settings.zone, settings.is_local)
    _, pub = _public_key_or_placeholder(settings)
    body = render.body(spec, name=name, zone=settings.zone, owner=owner(), ssh_keys=keys.ssh_keys_metadata(pub),
                       extra_labels=extra, extra_metadata=kwargs.get("metadata"))
    p, z = settings.project, settings.zone
    acc = f"acceleratorTypes/{spec.gpu.api}" if spec.gpu else f"machineTypes/{spec.machine_type}"
    calls = [
        f"GET  projects/{p}/aggregated/instances?filter=name = {name}  # reuse it if it exists and is ours",
        f"GET  projects/{p}/zones  # candidate zones, {z} first",
        f"GET  projects/{p}/zones/{z}/{acc}  # the zone offers it",
        f"GET  projects/{p}/regions/{settings.region}  # regional GPU quota",
        f"POST projects/{p}/zones/{z}/instances?requestId=<uuid>  # the instance body below",
        f"POST projects/{p}/zones/{z}/operations/<op>/wait  # until DONE, then error.errors checked",
        f"GET  projects/{p}/zones/{z}/instances/{name}  # RUNNING with a natIP, and stays RUNNING",
        f"GET  projects/{p}/zones/{z}/instances/{name}/getGuestAttributes?queryPath=hostkeys/  # host key to pin",
        f"SSH  ferry@<natIP> with {keys.key_path(settings.home)}  # until it answers",
        "on a stockout: the same in the next zone; on a regional quota: the next region; else stop",
    ]
    return Plan(name=name, project=p, zone=z, spec=spec, body=body, calls=calls,
                price_per_hour=spec.price_per_hour, max_hours=spec.max_hours, warnings=warnings)


def _public_key_or_placeholder(settings: Settings) -> tuple[Path, str]:
    path = keys.key_path(settings.home)
    pub = path.with_name(path.name + ".pub")
    if pub.exists():
        return path, " ".join(pub.read_text().split()[:2])
    return path, "ssh-ed25519 <created on first real up>"


# --------------------------------------------------------------------------- up
def up(settings: Settings, *, gpu=None, template=None, name=None, spot=None, max_hours=None, labels=None,
       metadata=None, dry_run=False, progress: Progress | None = None, on_insert: Callable | None = None):
    """Create (or reuse) a VM and wait until SSH answers -> Vm. With dry_run -> Plan.

    `progress(message)` receives status lines; lines starting with "warning: " deserve to stay
    on screen. `on_insert(name, zone, instance_id)` is called as soon as an insert is accepted,
    before any wait, so that a caller owns the VM from its first moment (a signal between this
    returning and the caller's next line must not leak it). `metadata`: extra instance metadata.
    """
    say = progress or (lambda message: None)
    if dry_run:
        result = plan(settings, gpu=gpu, template=template, name=name, spot=spot, max_hours=max_hours, labels=labels,
                      metadata=metadata)
        for w in result.warnings:
            say("warning: " + w)
        return result
    spec, name, extra, warnings = prepare(settings, gpu=gpu, template=template, name=name, spot=spot,
                                          max_hours=max_hours, labels=labels, metadata=metadata)
    for w in warnings:
        say("warning: " + w)
    from infra import clients

    compute = clients.compute(settings)
    key_path, pub = keys.ensure_key(settings.home)
    creation = _Creation(compute, settings, spec, name, extra, dict(metadata or {}), pub, key_path, say, on_insert)
    with state.vm_lock(settings, name):
        existing = find(compute, settings, name)
        if existing is not None:
            vm = _reuse(compute, settings, existing, spec, key_path, say, extra)
            if vm is not None:
                return vm
        return creation.run()


def _reuse(compute, settings, inst, spec, key_path, say, extra=None):
    """The VM (INST, the API's JSON) exists: reuse it when it is ours and matches; None when it
    was dead and is now deleted."""
    zone, name, status = _last(inst["zone"]), inst["name"], inst.get("status", "")
    labels = dict(inst.get("labels") or {})
    machine = _last(inst.get("machineType", ""))
    if labels.get(render.MANAGED_BY) != "ferry":
        raise UsageError(f"VM {name} exists in {zone} and is not managed by ferry", hint="choose another --name")
    if labels.get(render.LABEL_OWNER) != owner():
        raise UsageError(f"VM {name} in {zone} belongs to {labels.get(render.LABEL_OWNER)!r}", hint="choose another --name")
    wanted_run = (extra or {}).get(render.LABEL_RUN)
    if labels.get(render.LABEL_RUN) != wanted_run:
        raise UsageError(f"VM {name} exists in {zone} as the VM of "
                         + (f"run {labels[render.LABEL_RUN]}" if labels.get(render.LABEL_RUN) else "no run"),
                         hint="choose another --name")
    if machine != spec.machine_type:
        raise UsageError(f"VM {name} exists in {zone} as {machine}, not {spec.machine_type}",
                         hint=f"run `down {name}` first or choose another --name")
    if status in GONE_STATES:
        say(f"{name} in {zone} is {status}: deleting it and creating a new one")
        with interrupts.shielded(f"deleting {name} first; please wait"):
            delete(settings, name, zone, Proof(), compute=compute)
        interrupts.check()
        return None
    say(f"{name} exists in {zone} and is ours: reusing it")
    vm = _wait_ready(compute, settings, name, zone, key_path, say, settle=False)
    vm.created = False
    _pin(settings, vm)
    return vm


def _zone_order(preferred: str, zones: list[str]) -> list[str]:
    region = preferred.rsplit("-", 1)[0]
    area = preferred.split("-", 1)[0]

    def rank(z):
        r = z.rsplit("-", 1)[0]
        return (z != preferred, r != region, z.split("-", 1)[0] != area, r, z)

    return sorted(zones, key=rank)


def _candidate_zones(compute, preferred: str) -> list[str]:
    zones = list(compute.zones.list(project=compute.project))
    names = [z["name"] for z in zones]
    if preferred not in names:
        from infra.errors import unknown

        raise unknown("zone", preferred, names)
    up_zones = [z["name"] for z in zones if str(z.get("status") or "UP") != "DOWN"]
    return _zone_order(preferred, up_zones)


def _offers(compute, zone: str, spec) -> bool:
    try:
        if spec.gpu is not None:
            compute.accelerator_types.get(project=compute.project, zone=zone, accelerator_type=spec.gpu.api)
        if spec.gpu is None or spec.gpu.attach == "machine-type":
            compute.machine_types.get(project=compute.project, zone=zone, machine_type=spec.machine_type)
    except gce.NotFound:
        return False
    return True


def _quota_room(compute, region: str, spec) -> float | None:
    """GPUs left under the regional quota, or None when the API does not tell."""
    if spec.gpu is None:
        return None
    metric = ("PREEMPTIBLE_" if spec.spot else "") + spec.gpu.quota_metric
    try:
        reg = compute.regions.get(project=compute.project, region=region)
    except Exception:
        return None
    for q in reg.get("quotas") or []:
        if q.get("metric") == metric:
            return float(q.get("limit", 0)) - float(q.get("usage", 0))
    return None


class _Exists(Exception):
    """The insert was refused with 409 alreadyExists: someone created NAME meanwhile."""

    def __init__(self, zone: str):
        super().__init__(zone)
        self.zone = zone


class _Creation:
    """One `up` that has to create its VM: zone by zone until one insert works."""

    def __init__(self, compute, settings, spec, name, extra, metadata, pub, key_path, say, on_insert):
        self.compute, self.settings, self.spec, self.name = compute, settings, spec, name
        self.extra, self.metadata, self.pub, self.key_path, self.say = extra, metadata, pub, key_path, say
        self.on_insert = on_insert

    def run(self) -> Vm:
        compute, spec, say, name = self.compute, self.spec, self.say, self.name
        queue = _candidate_zones(compute, self.settings.zone)
        tried: list[str] = []
        dead_regions: set[str] = set()
        room: dict[str, float | None] = {}
        attempts = 0
        what = spec.gpu_label
        while queue and attempts < MAX_ZONE_ATTEMPTS:
            zone = queue.pop(0)
            region = zone.rsplit("-", 1)[0]
            if region in dead_regions:
                continue
            if not _offers(compute, zone, spec):
                if zone == self.settings.zone:
                    say(f"{zone} does not offer {what}; looking in other zones")
                continue
            if region not in room:
                room[region] = _quota_room(compute, region, spec)
                if room[region] is not None and room[region] < spec.count:
                    dead_regions.add(region)
                    tried.append(f"{region}: quota {spec.gpu.quota_metric} has room for {room[region]:g}")
                    say(f"{region}: GPU quota too small ({room[region]:g} left); trying another region")
                    continue
            attempts += 1
            try:
                return self.in_zone(zone)
            except _Exists:
                return self.exists_meanwhile()
            except Failure as failure:
                tried.append(f"{zone}: {failure.code}")
                if failure.kind == FATAL:
                    raise CloudError(f"cannot create {name} in {zone}: {failure}", hint=_hint(failure)) from None
                if failure.kind == REGION:
                    dead_regions.add(region)
                    say(f"{region}: {failure.code} ({failure.quota_metric or 'regional quota'}); trying another region")
                else:
                    say(f"{zone}: {failure.code}; trying the next zone")
                if failure.zones_available:
                    hinted = [z for z in failure.zones_available if z in queue]
                    queue = hinted + [z for z in queue if z not in hinted]
        raise NoCapacity(f"could not create {name} ({what}) in any zone tried: " + "; ".join(tried or ["no zone offers it"]),
                         hint="try another --gpu or --zone, --spot, or later")

    def exists_meanwhile(self) -> Vm:
        """409: another `up` (another machine) created NAME after we looked. Nothing of ours to
        delete; reuse it when it is ours exactly as we would have made it, else say whose it is."""
        inst = find(self.compute, self.settings, self.name)
        if inst is None:
            raise CloudError(f"VM {self.name} was created and deleted by someone else meanwhile",
                             hint="nothing was deleted; try again")
        vm = _reuse(self.compute, self.settings, inst, self.spec, self.key_path, self.say, self.extra)
        if vm is None:
            raise CloudError(f"VM {self.name} was created meanwhile and is not running", hint="nothing was deleted; try again")
        return vm

    def in_zone(self, zone: str) -> Vm:
        compute, settings, name, say = self.compute, self.settings, self.name, self.say
        body = render.body(self.spec, name=name, zone=zone, owner=owner(), ssh_keys=keys.ssh_keys_metadata(self.pub),
                           extra_labels=self.extra, extra_metadata=self.metadata)
        instance = body  # sent as built: render.body is the exact JSON (test_render round-trips it through compute_v1)
        request_id = str(uuid.uuid4())
        say(f"creating {name} ({self.spec.gpu_label}, {self.spec.machine_type}) in {zone}")
        try:
            op = _insert(compute, zone, instance, request_id)
        except Failure as failure:  # refused: nothing was created, nothing to delete
            if failure.code in ("alreadyExists", "ALREADY_EXISTS", "Conflict"):
                raise _Exists(zone) from None
            raise
        except BaseException as exc:  # interrupted mid-request: the insert may have gone through
            with interrupts.shielded(f"finding out whether {name} was created, to delete it; please wait"):
                self._undo_unknown(zone, instance, request_id, exc)
            raise
        instance_id = str(op.get("targetId") or "") or None
        try:
            state.remember(settings, name, zone=zone, id=instance_id, created=datetime.now(timezone.utc).isoformat())
            if self.on_insert is not None:
                self.on_insert(name, zone, instance_id)
            for w in op.get("warnings") or []:
                say(f"warning: {w.get('code')}: {w.get('message')}")
            wait(compute, op, zone, what=f"creating {name}", timeout=compute.pacing.insert_timeout_s)
            vm = _wait_ready(compute, settings, name, zone, self.key_path, say, settle=True)
            vm.created = True
            _pin(settings, vm)
            return vm
        except BaseException as exc:  # whatever happened after the insert was accepted: delete
            reason = ("interrupted" if isinstance(exc, KeyboardInterrupt)
                      else (exc.code if isinstance(exc, Failure) else "failed"))
            with interrupts.shielded(f"deleting {name} first; please wait"):
                self._undo(zone, Proof(instance_id=instance_id) if instance_id else self._label_proof(), reason)
            raise

    def _label_proof(self) -> Proof:
        return Proof(run_id=self.extra.get(render.LABEL_RUN))

    def _undo_unknown(self, zone, instance, request_id, exc) -> None:
        """An insert whose answer never came: ask again with the same requestId (GCE answers with
        the original operation, or refuses 409 when that insert never happened and someone
        else's VM has the name) and delete only what that proves ours."""
        try:
            op = _insert(self.compute, zone, instance, request_id)
        except Failure as failure:
            if failure.code not in ("alreadyExists", "ALREADY_EXISTS", "Conflict"):
                self.say(f"warning: could not tell whether {self.name} was created ({failure}); "
                         f"see `python cli.py status`")
            return
        except Exception as again:
            self.say(f"warning: could not tell whether {self.name} was created ({again}); see `python cli.py status`")
            return
        instance_id = str(op.get("targetId") or "") or None
        self._undo(zone, Proof(instance_id=instance_id) if instance_id else self._label_proof(),
                   "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed")

    def _undo(self, zone, proof: Proof, reason: str) -> None:
        """Delete the VM this `up` created (a second signal must not leak it: shielded)."""
        try:
            self.say(f"{reason}: deleting {self.name} in {zone} (signals wait until it is gone)")
            delete(self.settings, self.name, zone, proof, compute=self.compute)
        except Exception as exc:  # we tried; say exactly what may be left
            self.say(f"warning: could not delete {self.name} in {zone}: {exc}; run `python cli.py down {self.name}`")


def _hint(failure: Failure) -> str:
    text = f"{failure.code} {failure.message} {failure.quota_metric or ''}"
    if "GPUS_ALL_REGIONS" in text:
        return ("the project's global GPU quota (GPUS_ALL_REGIONS) is too small: request an increase at "
                "https://console.cloud.google.com/iam-admin/quotas (often 0 on new projects)")
    if failure.code == "AUTH":
        return "run `gcloud auth application-default login`"
    if "PERMISSION" in text.upper() or "forbidden" in text.lower():
        return "your account needs roles/compute.instanceAdmin.v1 and roles/iam.serviceAccountUser on the project"
    if "not supported" in text or "not found" in text.lower():
        return "see `python cli.py gpus` for what exists; check --zone and the template's image"
    return "nothing was left running"


def _insert(compute, zone, instance, request_id):
    """instances.insert (INSTANCE: the body's JSON) -> the Operation, retrying transient HTTP errors
    with the same requestId (idempotent)."""
    delay = compute.pacing.poll_s
    for attempt in range(4):
        try:
            return compute.instances.insert(project=compute.project, zone=zone, instance_resource=instance,
                                            request_id=request_id, timeout=compute.pacing.wait_call_s)
        except (gce.ServiceUnavailable, gce.TooManyRequests, gce.InternalServerError, gce.GatewayTimeout) as exc:
            if attempt == 3:
                raise from_exception(exc, zone) from None
            time.sleep(delay)
            delay *= 2
        except gce.GoogleAPICallError as exc:
            raise from_exception(exc, zone) from None
        except Exception as exc:  # a timeout: asking again with the same requestId is safe
            if not is_timeout(exc) or attempt == 3:
                raise from_exception(exc, zone) from None


def _wait_ready(compute, settings, name, zone, key_path, say, *, settle: bool) -> Vm:
    """Until the VM is RUNNING, publishes its host key, answers SSH with it, and (new VMs) has
    stayed RUNNING for pacing.settle_s. A VM that stops meanwhile is a stockout (Failure ZONE)."""
    from infra import ssh

    pacing = compute.pacing
    start = time.monotonic()
    deadline = start + pacing.ssh_timeout_s
    running_since = None
    host_key = port = login_user = None
    ssh_ok = False
    refused_since = None
    said = ""
    last = ""
    while True:
        try:
            inst = compute.instances.get(project=compute.project, zone=zone, instance=name)
        except gce.NotFound:
            raise Failure("zone", "STOCKOUT", f"{name} disappeared just after creation", zone) from None
        status = inst.get("status", "")
        if status in GONE_STATES:
            message = inst.get("statusMessage") or "no reason given"
            raise Failure("zone", "STOCKOUT", f"{name} went {status} just after creation ({message})", zone)
        if status == "RUNNING":
            running_since = running_since or time.monotonic()
            if host_key is None:
                host_key = ssh.host_key_from_guest(compute, zone, name)
                if host_key:
                    port, login_user = ssh.login_from_guest(compute, zone, name)
            vm = vm_from_instance(inst, settings, key_path, host_key=host_key, port=port or 22, user=login_user)
            if vm.host and host_key and not ssh_ok:
                try:
                    ssh.probe(vm, timeout=min(ssh.CONNECT_TIMEOUT_S, max(1.0, deadline - time.monotonic())))
                    ssh_ok = True
                except ssh.SshNotReady as exc:
                    last = str(exc)
                    if last.startswith("key not accepted"):
                        refused_since = refused_since or time.monotonic()
                        if time.monotonic() - refused_since > pacing.auth_grace_s:
                            raise CloudError(f"{name} in {zone} answers SSH but does not accept ferry's key "
                                             f"(for {pacing.auth_grace_s:.0f} s)", hint=_oslogin_hint(compute)) from None
                    else:
                        refused_since = None
            if ssh_ok and (not settle or time.monotonic() - running_since >= pacing.settle_s):
                return vm
        elapsed = time.monotonic() - start
        if time.monotonic() > deadline:
            stage = "SSH" if host_key else ("its host key" if status == "RUNNING" else "RUNNING")
            raise CloudError(f"{name} in {zone} did not get to {stage} within {pacing.ssh_timeout_s:.0f} s"
                             + (f" (last: {last})" if last else ""),
                             hint="check that the network's firewall allows tcp:22 and that guest attributes are enabled")
        step = "answering SSH" if ssh_ok else ("waiting for SSH" if host_key else "waiting for its host key")
        message = (f"{name} in {zone}: {status}, {step if status == 'RUNNING' else 'booting'} ({elapsed:.0f} s)"
                   + (f" - {last}" if last and not ssh_ok else ""))
        if message != said:  # polls are fast; say each state once (and once a second while it lasts)
            say(message)
            said = message
        time.sleep(pacing.ssh_poll_s)


def _oslogin_hint(compute) -> str:
    """Why a VM refuses the key ferry put in its ssh-keys metadata: OS Login, most often."""
    enforced = False
    try:
        project = compute.projects.get(project=compute.project)
        items = {i.get("key"): i.get("value") for i in (project.get("commonInstanceMetadata") or {}).get("items") or []}
        enforced = str(items.get("enable-oslogin", "")).upper() == "TRUE"
    except Exception:
        pass
    where = "the project's metadata sets enable-oslogin=TRUE" if enforced else "OS Login may be enforced"
    return (f"{where} (or the organization policy constraints/compute.requireOsLogin), so the VM ignores the "
            "ssh-keys metadata ferry sets; ask for the policy to be lifted for this project, or use a project "
            "without it; the VM was deleted")


# --------------------------------------------------------------------------- read
def _last(url: str) -> str:
    return (url or "").rstrip("/").rsplit("/", 1)[-1]


def vm_from_instance(inst: dict, settings: Settings, key_path: Path | None = None, *, host_key=None, port=22,
                     user: str | None = None) -> Vm:
    """A Vm from INST, the instance as the API's JSON (camelCase)."""
    cat = catalog.load()
    machine = _last(inst.get("machineType", ""))
    gpu, count = None, 0
    accelerators = inst.get("guestAccelerators") or []
    if accelerators:
        acc = accelerators[0]
        gpu, count = cat.by_api(_last(acc.get("acceleratorType", ""))), int(acc.get("acceleratorCount") or 0)
    else:
        found = cat.by_machine_type(machine)
        if found:
            gpu, count = found
    sched = inst.get("scheduling") or {}
    spot = sched.get("provisioningModel") == "SPOT"
    created = parse_time(inst.get("creationTimestamp"))
    started = parse_time(inst.get("lastStartTimestamp")) or created
    auto_delete = parse_time(((inst.get("resourceStatus") or {}).get("scheduling") or {}).get("terminationTimestamp"))
    if auto_delete is None and sched.get("maxRunDuration") and started:
        auto_delete = started + timedelta(seconds=int(sched["maxRunDuration"].get("seconds") or 0))
    meta = {item.get("key"): item.get("value") for item in (inst.get("metadata") or {}).get("items") or []}
    host = None
    for nic in inst.get("networkInterfaces") or []:
        for ac in nic.get("accessConfigs") or []:
            host = host or ac.get("natIP") or None
    labels = dict(inst.get("labels") or {})
    return Vm(
        name=inst["name"], zone=_last(inst.get("zone", "")), project=settings.project, host=host, port=int(port or 22),
        user=user or keys.SSH_USER, key_path=Path(key_path or keys.key_path(settings.home)), host_key=host_key,
        gpu=gpu.name if gpu else None, gpu_count=int(count), machine_type=machine,
        price_per_hour=cat.price(gpu, count, machine, spot), auto_delete_at=auto_delete,
        labels=labels, status=str(inst.get("status", "")), created_at=created, spot=spot,
        id=str(inst["id"]) if inst.get("id") else None, run_bucket=meta.get(RUN_BUCKET_KEY),
    )


def _aggregated(compute, filt: str):
    """Every instance (dict) matching FILT in every zone, across pages."""
    for _, scoped in compute.instances.aggregated_list(project=compute.project, filter=filt):
        yield from scoped.get("instances") or []


def find(compute, settings: Settings, name: str) -> dict | None:
    """The instance called NAME (the API's JSON) in any zone (state's zone first), or None."""
    remembered = state.recall(settings, name)
    if remembered and remembered.get("zone"):
        try:
            return compute.instances.get(project=compute.project, zone=remembered["zone"], instance=name)
        except gce.NotFound:
            state.forget(settings, name)
    for inst in _aggregated(compute, f"name = {name}"):
        if inst.get("name") == name:
            return inst
    return None


def get(settings: Settings, name: str) -> Vm | None:
    """Our VM NAME (with its pinned host key and port when RUNNING), or None."""
    from infra import clients, ssh

    compute = clients.compute(settings)
    inst = find(compute, settings, name)
    if inst is None or (inst.get("labels") or {}).get(render.MANAGED_BY) != "ferry":
        return None
    zone = _last(inst["zone"])
    host_key, port, user = None, 22, None
    if inst.get("status") == "RUNNING":
        host_key = ssh.host_key_from_guest(compute, zone, name)
        if host_key:
            port, user = ssh.login_from_guest(compute, zone, name)
    vm = vm_from_instance(inst, settings, host_key=host_key, port=port, user=user)
    if vm.host_key:
        _pin(settings, vm)
    return vm


def _pin(settings: Settings, vm: Vm) -> None:
    """Remember VM as found, host key included: `pinned()` answers from this without an API call."""
    state.remember(settings, vm.name, zone=vm.zone, vm=vm.as_dict())
    from infra import sshconfig

    try:  # `ssh ferry-NAME`, scp, rsync, editors: the same pinned key (removed when it is deleted)
        sshconfig.add(settings.home, vm)
    except OSError:
        pass


def pinned(settings: Settings) -> list[Vm]:
    """The VMs this machine last saw RUNNING, with their pinned host keys, from local state alone
    (no API call, so possibly stale: an SSH connection that presents the pinned key is what proves
    one is still there)."""
    return [Vm.from_dict(rec["vm"]) for rec in state.recall_all(settings).values() if rec.get("vm")]


def list_vms(settings: Settings, *, mine_only: bool = False) -> list[Vm]:
    """Our VMs in every zone, found by label (managed-by=ferry)."""
    from infra import clients

    compute = clients.compute(settings)
    filt = f"labels.{render.MANAGED_BY} = ferry"
    if mine_only:
        filt += f" AND labels.{render.LABEL_OWNER} = {owner()}"
    out = []
    for inst in _aggregated(compute, filt):
        labels = inst.get("labels") or {}
        if labels.get(render.MANAGED_BY) == "ferry" and (not mine_only or labels.get(render.LABEL_OWNER) == owner()):
            out.append(vm_from_instance(inst, settings))
    return sorted(out, key=lambda v: (v.zone, v.name))
