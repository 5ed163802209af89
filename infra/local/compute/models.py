"""Compute Engine state: instances, their state machine, operations (the request rules are in
validation.py).

No HTTP here (see responses.py). Every mutating call returns an `Operation` at once; the work
happens on a worker thread, one action at a time per instance:

    insert:  PROVISIONING -> STAGING -> RUNNING (VM runtime started)    op DONE at RUNNING
    stop:    STOPPING -> TERMINATED (VM runtime stopped)                 start: STAGING -> RUNNING
    delete:  STOPPING -> gone (VM runtime stopped, disk directory removed)
    maxRunDuration / preemption / stockout-after-insert: system operations doing stop or delete

Instance records persist in `<state_dir>/instances.json`; on a service start, an instance that
was RUNNING (or on its way) boots again with a fresh VM runtime on the same disk directory.

Quotas (`Quotas`): per region and metric (CPUS, N2_CPUS, A2_CPUS, NVIDIA_T4_GPUS,
PREEMPTIBLE_NVIDIA_T4_GPUS, ...), the usage counted from the instances that hold resources
(every status but TERMINATED); insert and start fail with QUOTA_EXCEEDED past the limit.
Disks: each instance's disks (boot disk named like the instance) live and die with it.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from infra.local.compute import catalog
from infra.local.compute import exceptions as exc
from infra.local.compute.faults import Faults, gpu_quota_metric
from infra.local.compute import validation
from infra.local.compute.filters import compile_filter
from infra.local.compute.resource import API, fingerprint, last, new_id, now_rfc3339, zone_link

log = logging.getLogger("ferry.local.compute")


TIMING_PROFILES = ("fast", "gce")
TIMING_VAR, SCALE_VAR = "FERRY_LOCAL_TIMING", "FERRY_LOCAL_TIME_SCALE"


class TimingError(ValueError):
    """FERRY_LOCAL_TIMING or FERRY_LOCAL_TIME_SCALE holds a value the service cannot use."""


@dataclass
class Timing:
    """How long each step takes locally (seconds); `slow_operations` adds its delay to each.

    Profiles (`Timing.profile_named`, or the service's environment through `Timing.from_env`):
    `fast` (the default: tests stay fast) and `gce` (a GPU VM's pace on Compute Engine).
    Every duration is multiplied by the time scale."""

    provision_s: float = 0.02
    stage_s: float = 0.02
    stop_s: float = 0.01
    delete_s: float = 0.01
    preempt_grace_s: float = 1.0
    setter_s: float = 0.01  # setMetadata / setLabels / setTags / setDeletionProtection
    guest_agent_s: float = 0.0  # RUNNING -> SSH listening, host keys published, startup script
    wait_max_s: float = 30.0  # zoneOperations.wait answers DONE at once, else after this hold
    profile: str = "fast"
    scale: float = 1.0

    _DURATIONS = ("provision_s", "stage_s", "stop_s", "delete_s", "preempt_grace_s", "setter_s",
                  "guest_agent_s", "wait_max_s")

    @classmethod
    def profile_named(cls, name: str = "fast", scale: float = 1.0) -> "Timing":
        if name not in TIMING_PROFILES:
            raise TimingError(f"{TIMING_VAR}={name!r} is not a timing profile (valid: {', '.join(TIMING_PROFILES)})")
        if name == "gce":  # a GPU VM on Compute Engine: 20-90 s to RUNNING, SSH 20-60 s later
            base = cls(provision_s=10.0, stage_s=25.0, stop_s=30.0, delete_s=20.0, preempt_grace_s=30.0,
                       setter_s=2.0, guest_agent_s=30.0, wait_max_s=120.0, profile="gce")
        else:
            base = cls()
        values = {k: getattr(base, k) * scale for k in cls._DURATIONS}
        return cls(**values, profile=name, scale=scale)

    @classmethod
    def from_env(cls, environ=None) -> "Timing":
        """The profile named by FERRY_LOCAL_TIMING (fast|gce, default fast), scaled by
        FERRY_LOCAL_TIME_SCALE (a positive number, default 1.0). Raises TimingError."""
        import math

        environ = os.environ if environ is None else environ
        name = (environ.get(TIMING_VAR) or "fast").strip().lower()
        raw = (environ.get(SCALE_VAR) or "1.0").strip()
        try:
            scale = float(raw)
        except ValueError:
            scale = float("nan")
        if not (math.isfinite(scale) and scale > 0):
            raise TimingError(f"{SCALE_VAR}={raw!r} is not a time scale (valid: a positive number, e.g. 0.05; default 1.0)")
        return cls.profile_named(name, scale)

    def describe(self) -> dict:
        return {"timing": self.profile, "time_scale": self.scale}


class StateError(Exception):
    """The service's saved state cannot be read: it must not start as if it were empty."""


class NullVm:
    """The VM runtime stand-in for `--vm-runtime none` (API-only tests): no SSH, no processes."""

    ssh_port = None
    host_key_public = None
    metadata_host = None

    def __init__(self, spec: dict, host=None):
        self.spec = spec

    def start(self):
        pass

    def stop(self):
        pass

    def update_metadata(self, items):
        pass

    def set_preempted(self):
        pass

    def set_maintenance_event(self, value):
        pass

    def drop_connections(self):
        pass

    def pids(self):
        return []


COMPUTE_SCOPES = ("https://www.googleapis.com/auth/compute", "https://www.googleapis.com/auth/cloud-platform")


class InstanceHost:
    """What one instance's guest asks of the local Compute Engine (through its metadata
    server): its guest attributes, its service account's token, powering itself off."""

    def __init__(self, compute: "Compute", inst: "Instance"):
        self.compute, self.inst = compute, inst

    def os_login_enforced(self) -> bool:
        """Organization policy constraints/compute.requireOsLogin: metadata ssh-keys are ignored."""
        return bool(self.compute.policies.get("requireOsLogin"))

    def set_guest_attribute(self, key: str, value: str) -> None:
        with self.compute._lock:
            self.inst.guest[key] = value

    def delete_guest_attribute(self, key: str) -> None:
        with self.compute._lock:
            self.inst.guest.pop(key, None)

    def guest_attributes(self) -> dict:
        with self.compute._lock:
            return dict(self.inst.guest)

    def token(self) -> dict:
        return {"access_token": self.compute.vm_token(self.inst), "expires_in": 3599, "token_type": "Bearer"}

    def poweroff(self) -> None:
        self.compute.guest_poweroff(self.inst)


# ---------------------------------------------------------------------------- quotas
DEFAULT_CPU_LIMIT = 2400.0
DEFAULT_GPU_LIMIT = 16.0  # per GPU metric and region (room for an a2-megagpu-16g)
DEFAULT_GLOBAL_GPU_LIMIT = 64.0  # GPUS_ALL_REGIONS (the project-wide quota)


def cpu_quota_metric(series: str) -> str:
    """The regional vCPU quota a machine series counts against (N1, E2 and the rest: CPUS)."""
    return {"n2": "N2_CPUS", "a2": "A2_CPUS"}.get(series, "CPUS")


class Quotas:
    """Regional quota limits (defaults, or set through the control interface)."""

    def __init__(self):
        self._limits: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()

    @staticmethod
    def metrics(region: str) -> list[str]:
        zones = [z for z in catalog.ZONES if catalog.region_of(z) == region]
        out = ["CPUS", "N2_CPUS", "A2_CPUS"]
        for g in sorted({g for z in zones for g in catalog.ZONES[z]}):
            out += [gpu_quota_metric(g), gpu_quota_metric(g, spot=True)]
        return out

    def limit(self, region: str, metric: str) -> float:
        with self._lock:
            found = self._limits.get((region, metric))
        if found is not None:
            return found
        if region == "global":
            return DEFAULT_GLOBAL_GPU_LIMIT
        return DEFAULT_GPU_LIMIT if metric.endswith("_GPUS") else DEFAULT_CPU_LIMIT

    def set(self, region: str, metric: str, limit: float) -> dict:
        if region not in catalog.REGIONS and region != "global":
            raise exc.bad_request(f"Unknown region {region!r} (a region, or 'global' for GPUS_ALL_REGIONS).")
        if not re.fullmatch(r"[A-Z][A-Z0-9_]*", metric or ""):
            raise exc.bad_request(f"Invalid quota metric {metric!r} (e.g. CPUS, NVIDIA_T4_GPUS).")
        limit = float(limit)
        if limit < 0:
            raise exc.bad_request("A quota limit must be at least 0.")
        with self._lock:
            self._limits[(region, metric)] = limit
        return {"region": region, "metric": metric, "limit": limit}

    def reset(self) -> None:
        with self._lock:
            self._limits.clear()


def instance_demand(inst: "Instance") -> dict[str, float]:
    """metric -> amount an instance holds while not TERMINATED."""
    mt = catalog.machine_type(last(inst.resource["machineType"]))
    out: dict[str, float] = {}
    if mt is not None:
        out[cpu_quota_metric(mt.series)] = float(mt.cpus)
    gpu, count = inst.accelerator
    if gpu:
        sched = inst.scheduling
        spot = sched.get("provisioningModel") == "SPOT" or bool(sched.get("preemptible"))
        out[gpu_quota_metric(gpu, spot)] = out.get(gpu_quota_metric(gpu, spot), 0.0) + float(count)
    return out


# ---------------------------------------------------------------------------- operations
class Operation:
    _counter = itertools.count(1)

    def __init__(self, project: str, zone: str | None, op_type: str, target_link: str,
                 target_id: str | None = None, user: str = "ferry-local@localhost"):
        self.id = new_id()
        self.name = f"operation-{int(time.time() * 1000)}-{next(self._counter):06d}-{os.urandom(4).hex()}"
        self.project, self.zone, self.op_type = project, zone, op_type
        self.target_link, self.target_id, self.user = target_link, target_id, user
        self.status = "RUNNING"
        self.progress = 0
        self.insert_time = self.start_time = now_rfc3339()
        self.end_time: str | None = None
        self.failure: exc.OperationFailure | None = None
        self.warnings: list[dict] = []
        self._done = threading.Event()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def finish(self, failure: exc.OperationFailure | None = None) -> None:
        self.failure = failure
        self.status, self.progress, self.end_time = "DONE", 100, now_rfc3339()
        self._done.set()

    def wait(self, timeout: float) -> None:
        self._done.wait(timeout)

    def to_dict(self) -> dict:
        scope = zone_link(self.project, self.zone) if self.zone else f"{API}/projects/{self.project}/global"
        out = {
            "kind": "compute#operation",
            "id": self.id,
            "name": self.name,
            "operationType": self.op_type,
            "targetLink": self.target_link,
            "status": self.status,
            "progress": self.progress,
            "user": self.user,
            "insertTime": self.insert_time,
            "startTime": self.start_time,
            "selfLink": f"{scope}/operations/{self.name}",
        }
        if self.zone:
            out["zone"] = zone_link(self.project, self.zone)
        if self.target_id:
            out["targetId"] = self.target_id
        if self.end_time:
            out["endTime"] = self.end_time
        if self.warnings:
            out["warnings"] = self.warnings
        if self.failure:
            out.update(self.failure.operation_fields())
        return out


# ---------------------------------------------------------------------------- instances
@dataclass
class Instance:
    project: str
    zone: str
    resource: dict  # the GCE resource as served (status included)
    deadline: float | None = None  # maxRunDuration end (epoch seconds), while RUNNING
    vm: object | None = None
    guest: dict = field(default_factory=dict)  # guest attributes "namespace/key" -> value
    disks: list = field(default_factory=list)  # the compute#disk resources it created
    gone: bool = False
    action_lock: threading.Lock = field(default_factory=threading.Lock)
    timer: threading.Timer | None = None

    @property
    def name(self) -> str:
        return self.resource["name"]

    @property
    def status(self) -> str:
        return self.resource["status"]

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.project, self.zone, self.name)

    @property
    def link(self) -> str:
        return f"{zone_link(self.project, self.zone)}/instances/{self.name}"

    @property
    def scheduling(self) -> dict:
        return self.resource.get("scheduling") or {}

    @property
    def accelerator(self) -> tuple[str | None, int]:
        for acc in self.resource.get("guestAccelerators") or []:
            return last(acc["acceleratorType"]), int(acc.get("acceleratorCount", 1))
        mt = catalog.machine_type(last(self.resource["machineType"]))
        return (mt.gpu, mt.gpu_count) if mt and mt.gpu else (None, 0)

    def metadata_items(self) -> dict[str, str]:
        return {i["key"]: i.get("value", "") for i in (self.resource.get("metadata") or {}).get("items", [])}


class Compute:
    """All zones of the local Compute Engine, for any project."""

    def __init__(self, state_dir: Path, vm_factory: Callable[[dict], object] | None = None,
                 vm_env: dict | None = None, ssh_mode: str = "asyncssh", timing: Timing | None = None):
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.vm_factory = vm_factory or NullVm
        self.vm_env = dict(vm_env or {})
        self.ssh_mode = ssh_mode
        if timing is None:
            try:
                timing = Timing.from_env()
            except TimingError as e:  # the service refuses to start: one line, last in service.log
                log.error("%s", e)
                raise SystemExit(3) from None
        self.timing = timing
        self.faults = Faults()
        self._lock = threading.RLock()
        self._instances: dict[tuple[str, str, str], Instance] = {}
        self._operations: dict[str, Operation] = {}
        self._request_ids: dict[str, Operation] = {}
        self._tokens: dict[str, tuple[tuple[str, str, str], tuple[str, ...]]] = {}  # VM token -> (instance, scopes)
        self.policies: dict[str, bool] = {}  # organization policies in force (control: /_ferry/policies)
        self.quotas = Quotas()
        env_page = os.environ.get("FERRY_LOCAL_PAGE_SIZE")
        self.page_size = int(env_page) if env_page and env_page.isdigit() and int(env_page) > 0 else 500
        self._closed = False

    # ------------------------------------------------------------------ persistence
    @property
    def _state_file(self) -> Path:
        return self.state_dir / "instances.json"

    def _save(self) -> None:
        with self._lock:
            data = [{"project": i.project, "zone": i.zone, "resource": i.resource, "deadline": i.deadline,
                     "disks": i.disks}
                    for i in self._instances.values()]
            tmp = self._state_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(data, indent=1))
            os.replace(tmp, self._state_file)

    def restore(self) -> list[Instance]:
        """Load persisted instances; those that were up boot again (call `boot_restored`)."""
        if not self._state_file.exists():
            return []
        try:
            data = json.loads(self._state_file.read_text())
            records = [(rec["project"], rec["zone"], rec["resource"], rec.get("deadline"), rec.get("disks") or [])
                       for rec in data]
            if any(not isinstance(r, dict) or "name" not in r or "status" not in r for _, _, r, _, _ in records):
                raise ValueError("an instance record lacks its name or status")
        except (OSError, ValueError, TypeError, KeyError) as e:
            # Google Cloud never forgets an instance: neither do we. Dropping the records would
            # drop VMs from every listing while their disks (and cost, on GCE) stay.
            raise StateError(f"the local Compute Engine's state {self._state_file} is unreadable "
                             f"({e.__class__.__name__}: {e}); `python cli.py local reset` wipes the local cloud") from None
        again = []
        for project, zone, resource, deadline, disks in records:
            inst = Instance(project, zone, resource, deadline, disks=disks)
            self._instances[inst.key] = inst
            if inst.status == "STOPPING":
                inst.resource["status"] = "TERMINATED"
            elif inst.status in ("PROVISIONING", "STAGING", "RUNNING"):
                inst.resource["status"] = "STAGING"
                again.append(inst)
        return again

    def boot_restored(self, instances: list[Instance]) -> None:
        for inst in instances:
            op = self._new_op(inst, "start", user="system")
            self._spawn(self._do_start, inst, op, True)

    # ------------------------------------------------------------------ helpers
    def _new_op(self, inst: Instance | None, op_type: str, project: str | None = None,
                zone: str | None = None, target_link: str = "", user: str | None = None) -> Operation:
        op = Operation(inst.project if inst else project, inst.zone if inst else zone, op_type,
                       inst.link if inst else target_link, inst.resource.get("id") if inst else None,
                       **({"user": user} if user else {}))
        with self._lock:
            self._operations[op.name] = op
        return op

    def _spawn(self, fn, *args) -> None:
        threading.Thread(target=fn, args=args, daemon=True, name=f"op-{fn.__name__}").start()

    def _sleep(self, seconds: float) -> None:
        delay = seconds + self.faults.operation_delay()
        if delay > 0:
            time.sleep(delay)

    def _set_status(self, inst: Instance, status: str, message: str | None = None) -> None:
        with self._lock:
            inst.resource["status"] = status
            if message:
                inst.resource["statusMessage"] = message
            else:
                inst.resource.pop("statusMessage", None)
            if not inst.gone:
                self._save()

    def check_zone(self, project: str, zone: str) -> None:
        if zone not in catalog.ZONES:
            raise exc.invalid("zone", zone, "Unknown zone.")

    def get_instance(self, project: str, zone: str, name: str) -> Instance:
        self.check_zone(project, zone)
        with self._lock:
            inst = self._instances.get((project, zone, name))
        if inst is None or inst.gone:
            raise exc.not_found(f"projects/{project}/zones/{zone}/instances/{name}")
        return inst

    def get_operation(self, project: str, zone: str | None, name: str) -> Operation:
        with self._lock:
            op = self._operations.get(name)
        if op is None or op.project != project or op.zone != zone:
            where = f"zones/{zone}" if zone else "global"
            raise exc.not_found(f"projects/{project}/{where}/operations/{name}")
        return op


    # ------------------------------------------------------------------ API: instances
    def insert(self, project: str, zone: str, body: dict, request_id: str | None = None) -> Operation:
        self.check_zone(project, zone)
        if request_id and request_id in self._request_ids:
            return self._request_ids[request_id]
        resource, warnings, disks = validation.instance_resource(project, zone, body)
        name = resource["name"]
        with self._lock:
            if (project, zone, name) in self._instances:
                raise exc.already_exists(f"projects/{project}/zones/{zone}/instances/{name}")
            taken = {d["name"] for i in self._instances.values() if i.project == project and i.zone == zone
                     and not i.gone for d in i.disks}
            for d in disks:
                if d["name"] in taken:
                    raise exc.already_exists(f"projects/{project}/zones/{zone}/disks/{d['name']}")
            inst = Instance(project, zone, resource, disks=disks)
            gpu, _ = inst.accelerator
            failure = self.faults.insert_failure(project, zone, last(resource["machineType"]), gpu,
                                                 resource["scheduling"].get("provisioningModel") == "SPOT")
            if failure is None:
                failure = self._quota_failure(inst)
            if failure is None:
                self._instances[inst.key] = inst
                self._save()
        op = self._new_op(inst, "insert")
        op.warnings = warnings
        if request_id:
            self._request_ids[request_id] = op
        if failure is not None:
            self._spawn(self._fail_op, op, failure)
        else:
            self._spawn(self._do_insert, inst, op)
        return op

    # ------------------------------------------------------------------ quotas
    def quota_usage(self, project: str, region: str) -> dict[str, float]:
        usage: dict[str, float] = {}
        with self._lock:
            for inst in self._instances.values():
                if inst.project != project or inst.gone or inst.status == "TERMINATED":
                    continue
                if catalog.region_of(inst.zone) != region:
                    continue
                for metric, amount in instance_demand(inst).items():
                    usage[metric] = usage.get(metric, 0.0) + amount
        return usage

    def region_quotas(self, project: str, region: str, schema_only: bool = True) -> list[dict]:
        """What regions.get shows: the metrics the v1 schema names (Quota.metric's enum has no
        NVIDIA_H100/H100_MEGA/H200_GPUS, so neither does the answer; those are still enforced)."""
        from infra.local.compute import schema

        known = set(schema.schemas()["Quota"]["properties"]["metric"]["enum"])
        usage = self.quota_usage(project, region)
        metrics = self.quotas.metrics(region)
        metrics += sorted(m for m in usage if m not in metrics)
        return [{"metric": m, "limit": self.quotas.limit(region, m), "usage": usage.get(m, 0.0)}
                for m in metrics if m in known or not schema_only]

    def _quota_failure(self, inst: Instance) -> exc.OperationFailure | None:
        """QUOTA_EXCEEDED if INST coming up would pass a regional limit (caller holds the lock)."""
        region = catalog.region_of(inst.zone)
        usage = self.quota_usage(inst.project, region)
        demand = instance_demand(inst)
        for metric, amount in demand.items():
            limit = self.quotas.limit(region, metric)
            if usage.get(metric, 0.0) + amount > limit:
                return exc.quota_exceeded(metric, limit, region)
        gpus = inst.accelerator[1]
        if gpus:
            limit = self.quotas.limit("global", "GPUS_ALL_REGIONS")
            if self.global_gpu_usage(inst.project) + gpus > limit:
                return exc.quota_exceeded("GPUS_ALL_REGIONS", limit, None)
        return None

    def global_gpu_usage(self, project: str) -> float:
        with self._lock:
            return float(sum(i.accelerator[1] for i in self._instances.values()
                             if i.project == project and not i.gone and i.status != "TERMINATED"))

    def _fail_op(self, op: Operation, failure: exc.OperationFailure) -> None:
        self._sleep(self.timing.provision_s)
        op.finish(failure)

    def list_instances(self, project: str, zone: str | None, filter_: str | None) -> dict[str, list[dict]]:
        """{zone: [resource, ...]} for one zone or (zone None) all zones."""
        pred = compile_filter(filter_)
        out: dict[str, list[dict]] = {}
        with self._lock:
            for inst in self._instances.values():
                if inst.project != project or inst.gone or (zone and inst.zone != zone):
                    continue
                if pred(inst.resource):
                    out.setdefault(inst.zone, []).append(json.loads(json.dumps(inst.resource)))
        return out

    def instance_view(self, project: str, zone: str, name: str) -> dict:
        inst = self.get_instance(project, zone, name)
        with self._lock:
            return json.loads(json.dumps(inst.resource))

    def delete(self, project: str, zone: str, name: str) -> Operation:
        inst = self.get_instance(project, zone, name)
        if inst.resource.get("deletionProtection"):
            raise exc.invalid_usage("Resource cannot be deleted if it's protected against deletion.")
        op = self._new_op(inst, "delete")
        self._spawn(self._do_delete, inst, op)
        return op

    def stop(self, project: str, zone: str, name: str) -> Operation:
        inst = self.get_instance(project, zone, name)
        op = self._new_op(inst, "stop")
        self._spawn(self._do_stop, inst, op, None)
        return op

    def start(self, project: str, zone: str, name: str) -> Operation:
        inst = self.get_instance(project, zone, name)
        op = self._new_op(inst, "start")
        with self._lock:
            stopped = inst.status == "TERMINATED"
            failure = self._quota_failure(inst) if stopped else None
            if failure is None and stopped:
                inst.resource["status"] = "STAGING"  # holds its resources from now on
        if failure is not None:
            self._spawn(self._fail_op, op, failure)
        else:
            self._spawn(self._do_start, inst, op, stopped)
        return op

    def reset(self, project: str, zone: str, name: str) -> Operation:
        """instances.reset: a hard reset of a RUNNING instance (the VM runtime restarts)."""
        inst = self.get_instance(project, zone, name)
        if inst.status != "RUNNING":
            raise exc.resource_not_ready(inst.link, inst.status)
        op = self._new_op(inst, "reset")

        def run():
            failure = None
            with inst.action_lock:
                if not inst.gone and inst.status == "RUNNING":
                    self._halt_vm(inst)
                    self._set_status(inst, "STAGING")
                    self._sleep(self.timing.stage_s)
                    failure = self._boot_vm(inst)
            op.finish(failure)

        self._spawn(run)
        return op

    def set_tags(self, project: str, zone: str, name: str, body: dict) -> Operation:
        inst = self.get_instance(project, zone, name)
        validation.schema.check_body(body, "Tags")
        items = list(body.get("items") or [])
        for tag in items:
            if not validation.NAME_RE.fullmatch(tag):
                raise exc.invalid("resource.tags.items", tag,
                                  "Must be a match of regex '(?:[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?)'")
        with self._lock:
            if body.get("fingerprint") != inst.resource["tags"]["fingerprint"]:
                raise exc.condition_not_met("Supplied fingerprint does not match current tags fingerprint.")
            inst.resource["tags"] = {"items": items, "fingerprint": fingerprint()}
            self._save()
        op = self._new_op(inst, "setTags")
        self._spawn(self._finish_later, op)
        return op

    def set_deletion_protection(self, project: str, zone: str, name: str, protect: bool) -> Operation:
        inst = self.get_instance(project, zone, name)
        with self._lock:
            inst.resource["deletionProtection"] = bool(protect)
            self._save()
        op = self._new_op(inst, "setDeletionProtection")
        self._spawn(self._finish_later, op)
        return op

    def serial_port_output(self, project: str, zone: str, name: str, port: int, start: int) -> dict:
        """The console: the startup script's log where the VM runtime keeps one, else empty."""
        inst = self.get_instance(project, zone, name)
        if port not in (1, 2, 3, 4):
            raise exc.invalid("port", port, "Must be between 1 and 4.")
        text = b""
        log_path = getattr(inst.vm, "startup_log", None) if port == 1 else None
        if log_path is not None:
            try:
                text = Path(log_path).read_bytes()
            except OSError:
                text = b""
        start = max(0, int(start))
        chunk = text[start:]
        return {"kind": "compute#serialPortOutput", "contents": chunk.decode("utf-8", "replace"),
                "start": str(start), "next": str(start + len(chunk)),
                "selfLink": f"{inst.link}/serialPort?port={port}"}

    # ------------------------------------------------------------------ disks, operations lists
    def list_disks(self, project: str, zone: str) -> list[dict]:
        self.check_zone(project, zone)
        with self._lock:
            return [json.loads(json.dumps(self._disk_view(i, d))) for i in self._instances.values()
                    if i.project == project and i.zone == zone and not i.gone for d in i.disks]

    def get_disk(self, project: str, zone: str, name: str) -> dict:
        for d in self.list_disks(project, zone):
            if d["name"] == name:
                return d
        raise exc.not_found(f"projects/{project}/zones/{zone}/disks/{name}")

    @staticmethod
    def _disk_view(inst: Instance, disk: dict) -> dict:
        out = dict(disk)
        if inst.resource.get("lastStartTimestamp"):
            out["lastAttachTimestamp"] = inst.resource["lastStartTimestamp"]
        return out

    def list_operations(self, project: str, zone: str | None) -> list[dict]:
        with self._lock:
            ops = [o for o in self._operations.values() if o.project == project and o.zone == zone]
        return [o.to_dict() for o in ops]

    def set_metadata(self, project: str, zone: str, name: str, body: dict) -> Operation:
        inst = self.get_instance(project, zone, name)
        validation.schema.check_body(body, "Metadata")
        items = body.get("items") or []
        validation.check_metadata(items)
        with self._lock:
            if body.get("fingerprint") != inst.resource["metadata"]["fingerprint"]:
                raise exc.condition_not_met(
                    "Supplied fingerprint does not match current metadata fingerprint.")
            inst.resource["metadata"] = {"kind": "compute#metadata", "fingerprint": fingerprint(),
                                         "items": [{"key": i["key"], "value": i.get("value", "")} for i in items]}
            self._save()
            vm = inst.vm
        op = self._new_op(inst, "setMetadata")
        if vm is not None:
            vm.update_metadata(inst.metadata_items())
        self._spawn(self._finish_later, op)
        return op

    def set_labels(self, project: str, zone: str, name: str, body: dict) -> Operation:
        inst = self.get_instance(project, zone, name)
        validation.schema.check_body(body, "InstancesSetLabelsRequest")
        labels = dict(body.get("labels") or {})
        for k, v in labels.items():
            if not validation.LABEL_KEY_RE.fullmatch(k) or not validation.LABEL_VALUE_RE.fullmatch(str(v)):
                raise exc.invalid("labels", f"{k}={v}", "Label keys and values hold only a-z, 0-9, '_' or '-'.")
        with self._lock:
            if body.get("labelFingerprint") != inst.resource["labelFingerprint"]:
                raise exc.condition_not_met("Labels fingerprint either invalid or resource labels have changed")
            inst.resource["labels"] = labels
            inst.resource["labelFingerprint"] = fingerprint()
            self._save()
        op = self._new_op(inst, "setLabels")
        self._spawn(self._finish_later, op)
        return op

    def guest_attributes(self, project: str, zone: str, name: str, query_path: str | None,
                         variable_key: str | None) -> dict:
        inst = self.get_instance(project, zone, name)
        if self.policies.get("disableGuestAttributesAccess"):
            raise exc.GceError(403, f"Constraint constraints/compute.disableGuestAttributesAccess violated for "
                                    f"project {project}: guest attributes access is disabled.", "forbidden")
        enabled = str(inst.metadata_items().get("enable-guest-attributes", "")).upper() == "TRUE"
        if not enabled:
            raise exc.not_found(f"projects/{project}/zones/{zone}/instances/{name}/guestAttributes"
                                " (guest attributes are not enabled: set metadata enable-guest-attributes=TRUE)")
        with self._lock:
            guest = dict(inst.guest)
        out = {"kind": "compute#guestAttributes", "selfLink": f"{inst.link}/guestAttributes"}
        if variable_key:
            if variable_key not in guest:
                raise exc.not_found(f"projects/{project}/zones/{zone}/instances/{name}/guestAttributes/{variable_key}")
            out.update(variableKey=variable_key, variableValue=guest[variable_key])
            return out
        prefix = (query_path or "").strip("/")
        entries = [{"namespace": k.split("/", 1)[0], "key": k.split("/", 1)[1], "value": v}
                   for k, v in sorted(guest.items()) if not prefix or k.split("/", 1)[0] == prefix or k == prefix]
        if not entries:
            raise exc.not_found(f"projects/{project}/zones/{zone}/instances/{name}/guestAttributes/{query_path or ''}")
        out["queryPath"] = query_path or ""
        out["queryValue"] = {"items": entries}
        return out

    # ------------------------------------------------------------------ workers
    def _finish_later(self, op: Operation) -> None:
        self._sleep(self.timing.setter_s)
        op.finish()

    @staticmethod
    def _scopes(inst: Instance) -> list[str]:
        accounts = inst.resource.get("serviceAccounts") or []
        return list(accounts[0].get("scopes") or []) if accounts else []

    @staticmethod
    def _image(inst: Instance) -> catalog.Image | None:
        """The catalog image of the instance's boot disk (its initializeParams.sourceImage)."""
        for disk in inst.disks:
            m = re.search(r"projects/([^/]+)/global/images/([^/]+)$", disk.get("sourceImage") or "")
            if m:
                return catalog.image_by_name(m.group(1), m.group(2))
        return None

    def _vm_spec(self, inst: Instance) -> dict:
        image = self._image(inst)
        return {
            "name": inst.name, "zone": inst.zone, "project": inst.project,
            "disk_dir": self.state_dir / "vms" / inst.project / inst.zone / inst.name,
            "metadata": inst.metadata_items(), "labels": dict(inst.resource.get("labels") or {}),
            "env": dict(self.vm_env), "ssh_mode": self.ssh_mode,
            "scopes": self._scopes(inst), "machine_type": last(inst.resource["machineType"]),
            "image": f"projects/{image.project}/global/images/{image.name}" if image else "",
            "python": image.python if image else "ferry",
            "guest_agent_delay_s": self.timing.guest_agent_s,
        }

    # ------------------------------------------------------------------ the guest's side
    def vm_token(self, inst: Instance) -> str:
        """An access token of the instance's service account, carrying its scopes."""
        import secrets

        token = "ya29.local-vm-" + secrets.token_urlsafe(24)
        with self._lock:
            self._tokens[token] = (inst.key, tuple(self._scopes(inst)))
        return token

    def token_scopes(self, token: str | None) -> tuple[str, ...] | None:
        """The scopes of a VM's token; None for any other credential."""
        with self._lock:
            found = self._tokens.get(token or "")
        return None if found is None else found[1]

    def guest_poweroff(self, inst: Instance) -> None:
        """The guest shut itself down: the instance goes TERMINATED (as GCE does)."""
        op = self._new_op(inst, "compute.instances.guestTerminate", user="system")
        self._spawn(self._do_stop, inst, op, "Instance was shut down by the guest operating system.")

    def _boot_vm(self, inst: Instance) -> exc.OperationFailure | None:
        """STAGING -> RUNNING with a started VM runtime (caller holds inst.action_lock)."""
        with self._lock:
            inst.guest = {}  # the guest agent publishes its attributes as it boots
        vm = self.vm_factory(self._vm_spec(inst), InstanceHost(self, inst))
        try:
            vm.start()
        except Exception as e:  # the runtime could not start: the instance does not come up
            log.exception("VM %s failed to start", inst.name)
            try:
                vm.stop()
            except Exception:
                pass
            self._set_status(inst, "TERMINATED", f"The VM runtime failed to start: {e}")
            return exc.OperationFailure("INTERNAL_ERROR", f"The instance could not be started: {e}", 500)
        with self._lock:
            inst.vm = vm
            r = inst.resource
            r["lastStartTimestamp"] = now_rfc3339()
            sched = r.get("scheduling") or {}
            if "maxRunDuration" in sched:
                if inst.deadline is None:
                    inst.deadline = time.time() + validation.duration_seconds(sched["maxRunDuration"])
                r.setdefault("resourceStatus", {})["scheduling"] = {"terminationTimestamp": now_rfc3339(inst.deadline)}
                self._arm_deadline(inst)
        self._set_status(inst, "RUNNING")
        return None

    def _arm_deadline(self, inst: Instance) -> None:
        if inst.timer:
            inst.timer.cancel()
        delay = max(0.0, inst.deadline - time.time())
        inst.timer = threading.Timer(delay, self.expire, args=(inst,))
        inst.timer.daemon = True
        inst.timer.start()

    def _halt_vm(self, inst: Instance) -> None:
        """Stop the VM runtime and forget its guest attributes (caller holds inst.action_lock)."""
        with self._lock:
            vm, inst.vm, inst.guest = inst.vm, None, {}
            if inst.timer:
                inst.timer.cancel()
                inst.timer = None
        if vm is not None:
            try:
                vm.stop()
            except Exception:
                log.exception("VM %s failed to stop cleanly", inst.name)

    def _terminate(self, inst: Instance, message: str | None = None) -> None:
        self._set_status(inst, "STOPPING")
        self._sleep(self.timing.stop_s)
        self._halt_vm(inst)
        with self._lock:
            inst.deadline = None
            inst.resource.pop("resourceStatus", None)
            inst.resource["lastStopTimestamp"] = now_rfc3339()
        self._set_status(inst, "TERMINATED", message)

    def _remove(self, inst: Instance) -> None:
        self._set_status(inst, "STOPPING")
        self._sleep(self.timing.delete_s)
        self._halt_vm(inst)
        with self._lock:
            inst.gone = True
            if self._instances.get(inst.key) is inst:
                del self._instances[inst.key]
            for token in [t for t, (key, _) in self._tokens.items() if key == inst.key]:
                del self._tokens[token]
            self._save()
        shutil.rmtree(self.state_dir / "vms" / inst.project / inst.zone / inst.name, ignore_errors=True)

    def _do_insert(self, inst: Instance, op: Operation) -> None:
        with inst.action_lock:
            self._sleep(self.timing.provision_s)
            if inst.gone:
                return op.finish()
            self._set_status(inst, "STAGING")
            op.progress = 50
            self._sleep(self.timing.stage_s)
            failure = self._boot_vm(inst)
        op.finish(failure)
        if failure is None:
            after = self.faults.stockout_after_insert(inst.zone)
            if after is not None:
                threading.Timer(after, self._stockout, args=(inst,)).start()

    def _stockout(self, inst: Instance) -> None:
        with inst.action_lock:
            if inst.gone or inst.status != "RUNNING":
                return
            op = self._new_op(inst, "compute.instances.hostError", user="system")
            self._terminate(inst, "The zone does not have enough resources available; the instance was stopped.")
            op.finish()

    def _do_delete(self, inst: Instance, op: Operation) -> None:
        with inst.action_lock:
            if not inst.gone:
                self._remove(inst)
        op.finish()

    def _do_stop(self, inst: Instance, op: Operation, message: str | None) -> None:
        with inst.action_lock:
            if not inst.gone and inst.status not in ("TERMINATED",):
                self._terminate(inst, message)
        op.finish()

    def _do_start(self, inst: Instance, op: Operation, restored: bool) -> None:
        failure = None
        with inst.action_lock:
            if inst.gone:
                return op.finish()
            if restored or inst.status == "TERMINATED":
                self._set_status(inst, "STAGING")
                self._sleep(self.timing.stage_s)
                failure = self._boot_vm(inst)
        op.finish(failure)

    # ------------------------------------------------------------------ cloud-side events
    def expire(self, inst: Instance) -> None:
        """maxRunDuration reached: the instanceTerminationAction (STOP or DELETE)."""
        action = (inst.scheduling.get("instanceTerminationAction") or "STOP").upper()
        with inst.action_lock:
            if inst.gone or inst.status != "RUNNING":
                return
            op = self._new_op(inst, "delete" if action == "DELETE" else "stop", user="system")
            if action == "DELETE":
                self._remove(inst)
            else:
                self._terminate(inst, "Instance was stopped after reaching its maxRunDuration.")
            op.finish()

    def preempt(self, project: str, zone: str, name: str, grace_s: float | None = None) -> Operation:
        inst = self.get_instance(project, zone, name)
        sched = inst.scheduling
        if not (sched.get("provisioningModel") == "SPOT" or sched.get("preemptible")):
            raise exc.bad_request(f"Instance '{name}' is not a Spot VM; only Spot VMs are preempted.")
        if inst.status != "RUNNING":
            raise exc.resource_not_ready(inst.link, inst.status)
        op = self._new_op(inst, "compute.instances.preempted", user="system")
        grace = self.timing.preempt_grace_s if grace_s is None else float(grace_s)

        def run():
            with inst.action_lock:
                if inst.gone or inst.status != "RUNNING":
                    return op.finish()
                if inst.vm is not None:
                    inst.vm.set_preempted()
                time.sleep(grace)
                if (sched.get("instanceTerminationAction") or "STOP").upper() == "DELETE":
                    self._remove(inst)
                else:
                    self._terminate(inst, "Instance was preempted.")
            op.finish()

        self._spawn(run)
        return op

    def vm_of(self, project: str, zone: str, name: str):
        inst = self.get_instance(project, zone, name)
        if inst.vm is None:
            raise exc.resource_not_ready(inst.link, inst.status)
        return inst.vm

    def expire_now(self, project: str, zone: str, name: str) -> None:
        """Control: fast-forward an instance to the end of its maxRunDuration."""
        inst = self.get_instance(project, zone, name)
        if inst.deadline is None:
            raise exc.bad_request(f"Instance '{name}' has no running maxRunDuration.")
        self._spawn(self.expire, inst)

    def debug_view(self) -> list[dict]:
        with self._lock:
            insts = list(self._instances.values())
        out = []
        for i in insts:
            vm = i.vm
            out.append({"project": i.project, "zone": i.zone, "name": i.name, "status": i.status,
                        "ssh_port": getattr(vm, "ssh_port", None), "deadline": i.deadline,
                        "pids": list(vm.pids()) if vm is not None else []})
        return out

    # ------------------------------------------------------------------ shutdown
    def close(self) -> None:
        """Stop every VM runtime (the service is stopping); records keep their status."""
        self._closed = True
        with self._lock:
            insts = list(self._instances.values())
        threads = []
        for inst in insts:
            with self._lock:
                vm, inst.vm = inst.vm, None
                if inst.timer:
                    inst.timer.cancel()
            if vm is not None:
                t = threading.Thread(target=vm.stop, daemon=True)
                t.start()
                threads.append(t)
        for t in threads:
            t.join(5)


# ---------------------------------------------------------------------------- firewalls
class Firewalls:
    """Global firewall rules per project; every project starts with GCE's default ones."""

    def __init__(self, compute: Compute):
        self.compute = compute
        self._rules: dict[str, dict[str, dict]] = {}
        self._lock = threading.Lock()

    def _project(self, project: str) -> dict[str, dict]:
        if project not in self._rules:
            self._rules[project] = {}
            for name, ports in (("default-allow-ssh", ["22"]), ("default-allow-internal", ["0-65535"])):
                self._rules[project][name] = self._resource(project, {
                    "name": name, "direction": "INGRESS", "priority": 65534,
                    "allowed": [{"IPProtocol": "tcp", "ports": ports}],
                    "sourceRanges": ["0.0.0.0/0"] if name.endswith("ssh") else ["10.128.0.0/9"]})
        return self._rules[project]

    @staticmethod
    def _resource(project: str, body: dict) -> dict:
        name = body["name"]
        out = {"kind": "compute#firewall", "id": new_id(), "creationTimestamp": now_rfc3339(),
               "network": f"{API}/projects/{project}/global/networks/default", "direction": "INGRESS",
               "priority": 1000, "disabled": False, "logConfig": {"enable": False}}
        out.update(body)
        out["selfLink"] = f"{API}/projects/{project}/global/firewalls/{name}"
        return out

    def list(self, project: str, filter_: str | None) -> list[dict]:
        pred = compile_filter(filter_)
        with self._lock:
            return [r for r in self._project(project).values() if pred(r)]

    def get(self, project: str, name: str) -> dict:
        with self._lock:
            rule = self._project(project).get(name)
        if rule is None:
            raise exc.not_found(f"projects/{project}/global/firewalls/{name}")
        return rule

    def insert(self, project: str, body: dict) -> Operation:
        validation.schema.check_body(body, "Firewall")
        name = body.get("name") or ""
        if not validation.NAME_RE.fullmatch(name):
            raise exc.invalid("resource.name", name, "Must be a match of regex '[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?'")
        with self._lock:
            rules = self._project(project)
            if name in rules:
                raise exc.already_exists(f"projects/{project}/global/firewalls/{name}")
            rules[name] = self._resource(project, body)
        op = self.compute._new_op(None, "insert", project=project, target_link=rules[name]["selfLink"])
        op.finish()
        return op

    def delete(self, project: str, name: str) -> Operation:
        rule = self.get(project, name)
        with self._lock:
            self._project(project).pop(name, None)
        op = self.compute._new_op(None, "delete", project=project, target_link=rule["selfLink"])
        op.finish()
        return op
