"""Cloud Batch state: jobs, their tasks, the VMs the tasks run on, long-running operations.

No HTTP here (see rest.py). Each job has a scheduler thread; every task runs on a VM of its
own, created through the in-process local Compute Engine (so it is listed by the Compute API,
labelled allocationPolicy.labels + batch-job-id / batch-job-uid / batch-node), whose
startup script is the task (agent.py). States, each change a status event:

    job:   QUEUED -> SCHEDULED (its first VM asked for) -> RUNNING (a task runs)
           -> SUCCEEDED | FAILED (every task final; FAILED if one task finally failed)
           delete: DELETION_IN_PROGRESS -> gone;  cancel: CANCELLATION_IN_PROGRESS -> CANCELLED
    task:  PENDING -> ASSIGNED (its VM RUNNING) -> RUNNING (its script started)
           -> SUCCEEDED | FAILED (the script's exit status) ; a retried task: FAILED -> PENDING

Never more than `parallelism` tasks of a job hold a VM (being created, ASSIGNED or RUNNING).
A task's VM is deleted when its task ends; the job reaches its final state once every one of
its VMs is gone. Batch's reserved exit codes: 50001 the Spot VM was preempted, 50002 the VM
was lost (deleted or stopped under the task), 50003 the VM rebooted (a service restart),
50005 the task ran past taskSpec.maxRunDuration, 50000 any other failure (the VM could not be
created). Jobs persist in `<state_dir>/jobs.json`.

With the VM runtime `none` (API-only tests) no script runs: tasks stay ASSIGNED until deleted.
"""

from __future__ import annotations

import base64
import copy
import heapq
import json
import logging
import os
import re
import threading
import time
import uuid
import zlib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from infra.local.batch import agent, validation
from infra.local.batch.errors import (
    BatchError,
    failed_precondition,
    invalid_argument,
    not_found,
)
from infra.local.batch.validation import Plan
from infra.local.compute import exceptions as gce

log = logging.getLogger("ferry.local.batch")

JOB_FINAL = ("SUCCEEDED", "FAILED", "CANCELLED")
TASK_FINAL = ("SUCCEEDED", "FAILED", "UNEXECUTED")
TASK_STATES = ("PENDING", "ASSIGNED", "RUNNING", "FAILED", "SUCCEEDED", "UNEXECUTED")
RESOURCE_SHORTAGE = ("ZONE_RESOURCE_POOL_EXHAUSTED", "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS", "QUOTA_EXCEEDED")
EXIT_OTHER, EXIT_PREEMPTED, EXIT_VM_LOST, EXIT_REBOOTED, EXIT_MAX_RUN = 50000, 50001, 50002, 50003, 50005
REASONS = {EXIT_PREEMPTED: "Spot Preemption", EXIT_VM_LOST: "Batch no longer receives VM updates",
           EXIT_REBOOTED: "VM is rebooted during task execution",
           EXIT_MAX_RUN: "task runs over the maximum runtime"}
DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE = 100, 1000


def rfc3339(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def duration(seconds: float) -> str:
    from infra.local.batch.schema import render_duration

    return render_duration(max(0.0, round(seconds, 6)))


@dataclass
class BatchTiming:
    """How long Batch's own steps take locally (seconds); the VMs' pace is the Compute model's."""

    queue_s: float = 0.02   # QUEUED -> SCHEDULED
    poll_s: float = 0.02    # between looks at a job's VMs
    retry_s: float = 0.5    # a VM creation that met a stockout or quota is tried again
    delete_s: float = 0.2   # a deleted job stays DELETION_IN_PROGRESS at least this long
    boot_s: float = 0.0     # a VM's time to boot (its maxRunDuration gets it on top)

    @classmethod
    def of(cls, timing) -> BatchTiming:
        boot = timing.provision_s + timing.stage_s + timing.guest_agent_s
        if timing.profile == "gce":
            s = timing.scale
            return cls(queue_s=15 * s, poll_s=min(1.0, max(0.05, 0.5 * s)), retry_s=30 * s, delete_s=5 * s, boot_s=boot)
        return cls(boot_s=boot)


class Operation:
    """A google.longrunning.Operation of Batch (delete, cancel)."""

    def __init__(self, project: str, location: str, verb: str, target: str, response_type: str):
        t = time.time()
        self.name = (f"projects/{project}/locations/{location}/operations/"
                     f"operation-{int(t * 1000)}-{os.urandom(6).hex()}-{os.urandom(4).hex()}-{os.urandom(4).hex()}")
        self.project, self.location, self.verb, self.target = project, location, verb, target
        self.response_type = response_type
        self.create_time, self.end_time = t, None

    @property
    def done(self) -> bool:
        return self.end_time is not None

    def finish(self) -> None:
        if self.end_time is None:
            self.end_time = time.time()

    def to_dict(self) -> dict:
        meta = {"@type": "type.googleapis.com/google.cloud.batch.v1.OperationMetadata",
                "createTime": rfc3339(self.create_time), "target": self.target, "verb": self.verb,
                "requestedCancellation": False, "apiVersion": "v1"}
        out = {"name": self.name, "metadata": meta, "done": self.done}
        if self.done:
            meta["endTime"] = rfc3339(self.end_time)
            out["response"] = {"@type": self.response_type}
        return out


@dataclass
class Attempt:
    """One run of a task, on a VM of its own."""

    number: int  # BATCH_TASK_RETRY_ATTEMPT
    vm: str
    zone: str
    zones_left: list[str] = field(default_factory=list)
    op: object | None = None  # the Compute insert operation (not persisted)
    instance_id: str | None = None
    phase: str = "creating"  # creating -> assigned -> running
    log: agent.LogWatch | None = None
    started: float | None = None
    deadline: float | None = None
    preempted: bool = False

    def record(self) -> dict:
        return {"number": self.number, "vm": self.vm, "zone": self.zone, "instance_id": self.instance_id,
                "phase": self.phase, "started": self.started, "deadline": self.deadline}


@dataclass
class Task:
    index: int
    state: str = "PENDING"
    events: list = field(default_factory=list)
    retries: int = 0
    attempt: Attempt | None = None
    not_before: float = 0.0


@dataclass
class Job:
    project: str
    location: str
    job_id: str
    uid: str
    spec: dict
    plan: Plan
    create_time: float
    update_time: float
    state: str = "QUEUED"
    events: list = field(default_factory=list)
    tasks: list = field(default_factory=list)
    run_start: float | None = None
    run_end: float | None = None
    deleting: Operation | None = None
    cancelling: Operation | None = None
    failure: str | None = None  # the first final task failure's event, for the job's FAILED event
    counts: dict = field(default_factory=dict)
    queue: list = field(default_factory=list)  # heap of task indexes waiting for a VM
    active: set = field(default_factory=set)   # task indexes holding a VM (or creating one)
    vm_deletions: list = field(default_factory=list)  # Compute delete operations not yet done
    wake: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    hold_deletion: float = 0.0

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.project, self.location, self.job_id)

    @property
    def name(self) -> str:
        return f"projects/{self.project}/locations/{self.location}/jobs/{self.job_id}"

    @property
    def uid_hex(self) -> str:
        return self.uid[-36:-28]  # the uid ends with a UUID: its first 8 hex digits


def _event(description: str, t: float, task_state: str | None = None, exit_code: int | None = None) -> dict:
    out = {"type": "STATUS_CHANGED", "description": description, "eventTime": rfc3339(t)}
    if task_state:
        out["taskState"] = task_state
    if exit_code is not None:
        out["taskExecution"] = {"exitCode": exit_code}
    return out


class Batch:
    """Cloud Batch v1 for any project, in the locations the local Compute Engine has."""

    def __init__(self, state_dir: Path, compute):
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.compute = compute
        self.timing = BatchTiming.of(compute.timing)
        self._lock = threading.RLock()
        self._jobs: dict[tuple[str, str, str], Job] = {}
        self._ops: dict[str, Operation] = {}
        self._request_ids: dict[str, tuple[float, object]] = {}
        self._closed = False
        self._dirty = False
        self._saved_at = 0.0

    # ------------------------------------------------------------------ API: jobs
    def create_job(self, project: str, location: str, job_id: str | None, body: dict,
                   request_id: str | None = None, raw_size: int = 0) -> dict:
        validation.check_location(location)
        if request_id:
            with self._lock:
                seen = self._request_ids.get(request_id)
            if seen and time.time() - seen[0] < 3600 and isinstance(seen[1], Job):
                return self.job_view(seen[1])
        if job_id is None or job_id == "":
            job_id = f"job-{uuid.uuid4().hex[:20]}"
        validation.check_job_id(job_id)
        spec, plan = validation.job_from_request(project, location, job_id, body, raw_size)
        now = time.time()
        uid = f"{job_id[:26].rstrip('-')}-{uuid.uuid4()}"
        job = Job(project, location, job_id, uid, spec, plan, now, now)
        job.tasks = [Task(i) for i in range(plan.task_count)]
        job.counts = {"PENDING": plan.task_count}
        job.queue = list(range(plan.task_count))
        self._check_vms(job)
        with self._lock:
            if job.key in self._jobs:
                raise BatchError(409, f"Job {job.name} already exists.")
            self._jobs[job.key] = job
            if request_id:
                self._request_ids[request_id] = (now, job)
            self._save()
        self._start_thread(job)
        return self.job_view(job)

    def _check_vms(self, job: Job) -> None:
        """What Compute Engine would refuse of this job's VMs is refused now, at create."""
        from infra.local.compute import validation as gce_validation

        zone = job.plan.zones[0]
        body = self._vm_body(job, 0, 0, zone, self._vm_name(job, 0))
        try:
            gce_validation.instance_resource(job.project, zone, body)
        except gce.GceError as e:
            raise invalid_argument(f"The job's VMs would be refused by Compute Engine: {e.message}",
                                   "job.allocation_policy") from None

    def get_job(self, project: str, location: str, job_id: str) -> dict:
        return self.job_view(self._job(project, location, job_id))

    def _job(self, project: str, location: str, job_id: str) -> Job:
        with self._lock:
            job = self._jobs.get((project, location, job_id))
        if job is None:
            raise not_found(f"Job \"projects/{project}/locations/{location}/jobs/{job_id}\" not found.")
        return job

    def list_jobs(self, project: str, location: str, filter_: str | None, order_by: str | None,
                  page_size: int, page_token: str | None) -> dict:
        from infra.local.batch.filters import compile_filter, sort_key

        pred = compile_filter(filter_, "jobs")
        key, reverse = sort_key(order_by)
        with self._lock:
            jobs = [j for j in self._jobs.values() if j.project == project and (location == "-" or j.location == location)]
        views = [v for v in (self.job_view(j) for j in sorted(jobs, key=lambda j: (j.create_time, j.job_id))) if pred(v)]
        if key:
            views.sort(key=key, reverse=reverse)
        page, token = _page(views, page_size, page_token, f"jobs|{project}|{location}|{filter_}|{order_by}")
        out = {"jobs": page} if page else {}
        if token:
            out["nextPageToken"] = token
        return out

    def delete_job(self, project: str, location: str, job_id: str, request_id: str | None = None) -> dict:
        if request_id:
            with self._lock:
                seen = self._request_ids.get(request_id)
            if seen and isinstance(seen[1], Operation):
                return seen[1].to_dict()
        job = self._job(project, location, job_id)
        with self._lock:
            if job.deleting is not None:
                return job.deleting.to_dict()
            op = Operation(project, location, "delete", job.name, "type.googleapis.com/google.protobuf.Empty")
            self._ops[op.name] = op
            if request_id:
                self._request_ids[request_id] = (time.time(), op)
            job.deleting = op
            job.hold_deletion = time.time() + self.timing.delete_s
            self._job_state(job, "DELETION_IN_PROGRESS")
            self._save()
        self._start_thread(job)
        job.wake.set()
        return op.to_dict()

    def cancel_job(self, project: str, location: str, job_id: str) -> dict:
        job = self._job(project, location, job_id)
        with self._lock:
            if job.cancelling is not None:
                return job.cancelling.to_dict()
            if job.state in JOB_FINAL or job.deleting is not None:
                raise failed_precondition(f"Job {job.name} is {job.state}: only a job that has not ended can be "
                                          "cancelled.")
            op = Operation(project, location, "cancel", job.name, "type.googleapis.com/google.cloud.batch.v1.CancelJobResponse")
            self._ops[op.name] = op
            job.cancelling = op
            self._job_state(job, "CANCELLATION_IN_PROGRESS")
            self._save()
        self._start_thread(job)
        job.wake.set()
        return op.to_dict()

    # ------------------------------------------------------------------ API: tasks
    def _group(self, project: str, location: str, job_id: str, group: str) -> Job:
        job = self._job(project, location, job_id)
        if group != "group0":
            raise not_found(f"Task group \"{job.name}/taskGroups/{group}\" not found.")
        return job

    def list_tasks(self, project: str, location: str, job_id: str, group: str, filter_: str | None,
                   page_size: int, page_token: str | None) -> dict:
        from infra.local.batch.filters import compile_filter

        job = self._group(project, location, job_id, group)
        pred = compile_filter(filter_, "tasks")
        with self._lock:
            views = [self.task_view(job, t) for t in job.tasks]
        views = [v for v in views if pred(v)]
        page, token = _page(views, page_size, page_token, f"tasks|{job.name}|{filter_}")
        out = {"tasks": page} if page else {}
        if token:
            out["nextPageToken"] = token
        return out

    def get_task(self, project: str, location: str, job_id: str, group: str, task_id: str) -> dict:
        job = self._group(project, location, job_id, group)
        index = int(task_id) if re.fullmatch(r"[0-9]{1,9}", task_id) else -1
        with self._lock:
            if not 0 <= index < len(job.tasks):
                raise not_found(f"Task \"{job.name}/taskGroups/{group}/tasks/{task_id}\" not found.")
            return self.task_view(job, job.tasks[index])

    # ------------------------------------------------------------------ API: operations
    def get_operation(self, project: str, location: str, op_id: str) -> dict:
        name = f"projects/{project}/locations/{location}/operations/{op_id}"
        with self._lock:
            op = self._ops.get(name)
        if op is None:
            raise not_found(f"Operation \"{name}\" not found.")
        return op.to_dict()

    def list_operations(self, project: str, location: str, page_size: int, page_token: str | None) -> dict:
        with self._lock:
            ops = [o.to_dict() for o in self._ops.values() if o.project == project and o.location == location]
        page, token = _page(ops, page_size, page_token, f"ops|{project}|{location}")
        out = {"operations": page} if page else {}
        if token:
            out["nextPageToken"] = token
        return out

    def delete_operation(self, project: str, location: str, op_id: str) -> dict:
        self.get_operation(project, location, op_id)
        with self._lock:
            self._ops.pop(f"projects/{project}/locations/{location}/operations/{op_id}", None)
        return {}

    # ------------------------------------------------------------------ views
    def job_view(self, job: Job) -> dict:
        with self._lock:
            out = copy.deepcopy(job.spec)
            out["name"] = job.name
            out["uid"] = job.uid
            out["labels"] = {**(job.spec.get("labels") or {}), "batch-job-id": job.job_id}
            out["taskGroups"][0]["name"] = f"{job.name}/taskGroups/group0"
            plan = job.plan
            instance = {"machineType": plan.machine_type, "provisioningModel": plan.provisioning, "taskPack": "1",
                        "bootDisk": {"type": plan.disk_type, "image": plan.image,
                                     **({"sizeGb": str(plan.disk_gb)} if plan.disk_gb else {})}}
            status = {"state": job.state,
                      "taskGroups": {"group0": {"counts": {s: str(n) for s, n in job.counts.items() if n},
                                                "instances": [instance]}}}
            if job.events:
                status["statusEvents"] = copy.deepcopy(job.events)
            if job.run_start is not None:
                status["runDuration"] = duration((job.run_end or time.time()) - job.run_start)
            out["status"] = status
            out["createTime"] = rfc3339(job.create_time)
            out["updateTime"] = rfc3339(job.update_time)
            return out

    def task_view(self, job: Job, task: Task) -> dict:
        status = {"state": task.state}
        if task.events:
            status["statusEvents"] = copy.deepcopy(task.events)
        return {"name": f"{job.name}/taskGroups/group0/tasks/{task.index}", "status": status}

    def debug_view(self) -> list[dict]:
        with self._lock:
            return [{"name": j.name, "state": j.state, "tasks": [
                {"index": t.index, "state": t.state, "retries": t.retries,
                 **({"vm": t.attempt.vm, "zone": t.attempt.zone, "phase": t.attempt.phase} if t.attempt else {})}
                for t in j.tasks]} for j in self._jobs.values()]

    # ------------------------------------------------------------------ control: preemption
    def preempt_task(self, project: str, location: str, job_id: str, index: int, grace_s: float | None = None) -> dict:
        """Preempt the Spot VM running task INDEX (as GCE preempts one): its task ends with exit
        code 50001, and is retried when the job's lifecycle policy says so."""
        job = self._job(project, location, job_id)
        with self._lock:
            if not 0 <= index < len(job.tasks):
                raise not_found(f"Task \"{job.name}/taskGroups/group0/tasks/{index}\" not found.")
            task = job.tasks[index]
            att = task.attempt
            if att is None or att.phase == "creating":
                raise failed_precondition(f"Task {index} of {job.name} is {task.state}: no VM runs it now.")
            if not job.plan.spot:
                raise failed_precondition(f"Task {index} of {job.name} runs on a {job.plan.provisioning} VM: only "
                                          "Spot (or preemptible) VMs are preempted.")
            att.preempted = True
            zone, vm = att.zone, att.vm
        try:
            op = self.compute.preempt(project, zone, vm, grace_s)
        except Exception:
            att.preempted = False
            raise
        job.wake.set()
        return {"operation": op.name, "zone": zone, "vm": vm}

    # ------------------------------------------------------------------ the scheduler
    def _start_thread(self, job: Job) -> None:
        with self._lock:
            if self._closed or (job.thread is not None and job.thread.is_alive()):
                return
            job.thread = threading.Thread(target=self._run, args=(job,), daemon=True, name=f"batch-{job.job_id}")
            job.thread.start()

    def _run(self, job: Job) -> None:
        while not self._closed:
            try:
                with self._lock:
                    finished = self._tick(job, time.time())
                    self._save_if_dirty()
            except Exception:
                log.exception("Batch job %s: scheduler step failed", job.name)
                finished = False
            if finished:
                return
            job.wake.wait(self.timing.poll_s)
            job.wake.clear()

    def _tick(self, job: Job, now: float) -> bool:
        """One look at JOB (caller holds the lock) -> whether its thread is done."""
        if job.state == "QUEUED" and job.deleting is None and job.cancelling is None:
            if now - job.create_time < self.timing.queue_s:
                return False
            self._job_state(job, "SCHEDULED")
        for index in sorted(job.active):
            self._poll(job, job.tasks[index], now)
        self._reap_deletions(job)
        if job.deleting is not None or job.cancelling is not None:
            return self._wind_down(job, now)
        if job.state in ("SCHEDULED", "RUNNING"):
            while job.queue and len(job.active) < job.plan.parallelism:
                task = job.tasks[job.queue[0]]
                if task.not_before > now:
                    break
                heapq.heappop(job.queue)
                self._start_attempt(job, task)
        done = sum(job.counts.get(s, 0) for s in TASK_FINAL) == len(job.tasks)
        if done and not job.active and not job.vm_deletions and job.state not in JOB_FINAL:
            job.run_end = now if job.run_start is not None else None
            if job.counts.get("FAILED"):
                extra = (" Job failed due to task failure. Specifically, " + job.failure) if job.failure else ""
                self._job_state(job, "FAILED", extra)
            else:
                self._job_state(job, "SUCCEEDED")
            self._save()
        return job.state in JOB_FINAL

    def _wind_down(self, job: Job, now: float) -> bool:
        """Delete or cancel: every VM of the job goes; then the job goes (or is CANCELLED)."""
        for index in sorted(job.active):
            task = job.tasks[index]
            att = task.attempt
            if att.phase == "creating" and att.op is not None and not att.op.done:
                continue  # its VM is being created: deleted once it exists
            self._delete_vm(job, att)
            task.attempt = None
            job.active.discard(index)
            if job.cancelling is not None and task.state not in TASK_FINAL:
                where = f" on zones/{att.zone}/instances/{att.instance_id}" if att.instance_id else ""
                self._task_state(job, task, "FAILED", f"Task state is updated from {task.state} to FAILED{where} "
                                                      "due to the job's cancellation.")
        if job.active or job.vm_deletions:
            return False
        if job.deleting is not None:
            if now < job.hold_deletion:
                return False
            self._jobs.pop(job.key, None)
            job.deleting.finish()
            self._save()
            return True
        for task in job.tasks:
            if task.state not in TASK_FINAL:
                self._task_state(job, task, "UNEXECUTED", f"Task state is updated from {task.state} to UNEXECUTED "
                                                          "due to the job's cancellation.")
        job.queue = []
        job.run_end = now if job.run_start is not None else None
        self._job_state(job, "CANCELLED")
        job.cancelling.finish()
        self._save()
        return True

    def _reap_deletions(self, job: Job) -> None:
        job.vm_deletions = [op for op in job.vm_deletions if not op.done]

    # ------------------------------------------------------------------ attempts
    def _vm_name(self, job: Job, index: int) -> str:
        prefix = job.job_id[:30].rstrip("-")
        suffix = base64.b32encode(os.urandom(5)).decode().lower()[:4]
        return f"{prefix}-{job.uid_hex}-group0-{index}-{suffix}"

    def _vm_body(self, job: Job, index: int, attempt: int, zone: str, name: str) -> dict:
        from infra.local.compute import catalog

        plan = job.plan
        mt = catalog.machine_type(plan.machine_type)
        gpu = plan.accelerator[0] if plan.accelerator else (mt.gpu if mt else None)
        if plan.provisioning == "SPOT":
            scheduling = {"provisioningModel": "SPOT", "instanceTerminationAction": "DELETE",
                          "automaticRestart": False, "onHostMaintenance": "TERMINATE"}
        elif plan.provisioning == "PREEMPTIBLE":
            scheduling = {"preemptible": True, "automaticRestart": False, "onHostMaintenance": "TERMINATE"}
        else:
            scheduling = {"provisioningModel": "STANDARD", "automaticRestart": True,
                          "onHostMaintenance": "TERMINATE" if gpu else "MIGRATE"}
        max_run = validation.vm_max_run_s(plan, self.timing.boot_s) if plan.provisioning != "PREEMPTIBLE" else None
        if max_run:
            scheduling["maxRunDuration"] = {"seconds": str(int(max_run))}
            scheduling["instanceTerminationAction"] = "DELETE"
        init = {"sourceImage": plan.image, "diskType": f"zones/{zone}/diskTypes/{plan.disk_type}"}
        if plan.disk_gb:
            init["diskSizeGb"] = str(plan.disk_gb)
        script = agent.startup_script(plan, job.name, job.job_id, job.uid, index, attempt)
        body = {
            "name": name,
            "machineType": f"zones/{zone}/machineTypes/{plan.machine_type}",
            "disks": [{"boot": True, "autoDelete": True, "initializeParams": init}],
            "networkInterfaces": [{"network": "global/networks/default",
                                   "accessConfigs": [{"name": "External NAT", "type": "ONE_TO_ONE_NAT"}]}],
            "scheduling": scheduling,
            "serviceAccounts": [{"email": plan.sa_email, "scopes": list(plan.scopes)}],
            "metadata": {"items": [{"key": "startup-script", "value": script}]},
            "labels": {**plan.vm_labels, "batch-job-id": job.job_id, "batch-job-uid": job.uid, "batch-node": ""},
            "description": f"A VM of Batch job {job.name}, task {index}.",
        }
        if plan.accelerator:
            body["guestAccelerators"] = [{"acceleratorType": f"zones/{zone}/acceleratorTypes/{plan.accelerator[0]}",
                                          "acceleratorCount": plan.accelerator[1]}]
        return body

    def _start_attempt(self, job: Job, task: Task) -> None:
        zones = list(job.plan.zones)
        att = Attempt(task.retries, self._vm_name(job, task.index), zones[0], zones[1:])
        task.attempt = att
        job.active.add(task.index)
        self._insert(job, task)

    def _insert(self, job: Job, task: Task) -> None:
        att = task.attempt
        try:
            att.op = self.compute.insert(job.project, att.zone, self._vm_body(job, task.index, att.number, att.zone, att.vm))
        except gce.GceError as e:
            att.op = None
            self._end_attempt(job, task, EXIT_OTHER, f"the VM could not be created ({e.message})", vm_exists=False)

    def _instance(self, project: str, zone: str, name: str):
        try:
            return self.compute.get_instance(project, zone, name)
        except gce.GceError:
            return None

    def _poll(self, job: Job, task: Task, now: float) -> None:
        att = task.attempt
        if att is None:
            return
        if att.phase == "creating":
            if att.op is None or not att.op.done:
                return
            failure = att.op.failure
            if failure is not None:
                self._creation_failed(job, task, failure, now)
                return
            inst = self._instance(job.project, att.zone, att.vm)
            if inst is None or inst.status != "RUNNING":
                self._end_attempt(job, task, EXIT_VM_LOST, REASONS[EXIT_VM_LOST], vm_exists=inst is not None)
                return
            att.instance_id = str(inst.resource.get("id"))
            att.log = agent.LogWatch(getattr(inst.vm, "startup_log", None))
            att.phase = "assigned"
            self._task_state(job, task, "ASSIGNED", f"Task state is updated from PENDING to ASSIGNED on "
                                                    f"zones/{att.zone}/instances/{att.instance_id}.")
        att.log.poll()
        if att.phase == "assigned" and att.log.started:
            att.phase = "running"
            att.started = now
            if job.plan.max_run_s:
                att.deadline = now + job.plan.max_run_s
            self._task_state(job, task, "RUNNING", f"Task state is updated from ASSIGNED to RUNNING on "
                                                   f"zones/{att.zone}/instances/{att.instance_id}.")
            if job.state == "SCHEDULED":
                job.run_start = now
                self._job_state(job, "RUNNING")
        inst = self._instance(job.project, att.zone, att.vm)
        vm_up = inst is not None and inst.status == "RUNNING"
        if att.log.exit_code is not None and vm_up and not att.preempted:
            code = att.log.exit_code
            self._end_attempt(job, task, code if code >= 0 else 128 - code, None)
        elif att.log.exit_code is not None or not vm_up:
            if att.preempted or self._was_preempted(job, att):
                code = EXIT_PREEMPTED
            elif att.deadline is not None and now >= att.deadline - 1.0:
                code = EXIT_MAX_RUN
            else:
                code = EXIT_VM_LOST
            self._end_attempt(job, task, code, REASONS[code], vm_exists=inst is not None)
        elif att.deadline is not None and now >= att.deadline:
            self._end_attempt(job, task, EXIT_MAX_RUN, REASONS[EXIT_MAX_RUN])

    def _was_preempted(self, job: Job, att: Attempt) -> bool:
        """Whether Compute Engine preempted the attempt's VM (e.g. through the instance-level
        control call, not Batch's)."""
        link = f"/zones/{att.zone}/instances/{att.vm}"
        return any(op.get("operationType") == "compute.instances.preempted" and op.get("targetLink", "").endswith(link)
                   for op in self.compute.list_operations(job.project, att.zone))

    def _creation_failed(self, job: Job, task: Task, failure, now: float) -> None:
        att = task.attempt
        if failure.code not in RESOURCE_SHORTAGE:
            self._end_attempt(job, task, EXIT_OTHER, f"the VM could not be created ({failure.code}: {failure.message})",
                              vm_exists=self._instance(job.project, att.zone, att.vm) is not None)
            return
        message = (f"Task {task.index}: no VM in zones/{att.zone} ({failure.code}: {failure.message})"
                   + ("; trying another zone." if att.zones_left else "; trying again later."))
        if not job.events or job.events[-1]["description"] != message:  # once, not once a retry
            self._job_event(job, message)
        if att.zones_left:
            att.zone = att.zones_left.pop(0)
            att.vm = self._vm_name(job, task.index)
            self._insert(job, task)
            return
        task.attempt = None
        job.active.discard(task.index)
        task.not_before = now + self.timing.retry_s
        heapq.heappush(job.queue, task.index)

    def _delete_vm(self, job: Job, att: Attempt) -> None:
        try:
            op = self.compute.delete(job.project, att.zone, att.vm)
        except gce.GceError:
            return  # gone already
        job.vm_deletions.append(op)

    def _end_attempt(self, job: Job, task: Task, code: int, reason: str | None, vm_exists: bool = True) -> None:
        att = task.attempt
        if vm_exists:
            self._delete_vm(job, att)
        task.attempt = None
        job.active.discard(task.index)
        prev = task.state
        where = f" on zones/{att.zone}/instances/{att.instance_id}" if att.instance_id else ""
        if code == 0:
            self._task_state(job, task, "SUCCEEDED", f"Task state is updated from {prev} to SUCCEEDED{where} "
                                                     "with exit code 0.")
            return
        why = f" due to {reason}" if reason else ""
        desc = f"Task state is updated from {prev} to FAILED{where}{why} with exit code {code}."
        self._task_state(job, task, "FAILED", desc, exit_code=code)
        plan = job.plan
        if task.retries < plan.max_retries and validation.retry_wanted(plan, code) \
                and job.deleting is None and job.cancelling is None:
            task.retries += 1
            task.not_before = 0.0
            self._task_state(job, task, "PENDING", f"Task state is updated from FAILED to PENDING: retry attempt "
                                                   f"{task.retries} of at most {plan.max_retries}.")
            heapq.heappush(job.queue, task.index)
        elif job.failure is None:
            job.failure = f"task with index {task.index} failed due to the following task event: \"{desc}\""

    # ------------------------------------------------------------------ states and events
    def _task_state(self, job: Job, task: Task, state: str, description: str, exit_code: int | None = None) -> None:
        now = time.time()
        job.counts[task.state] = job.counts.get(task.state, 0) - 1
        job.counts[state] = job.counts.get(state, 0) + 1
        task.state = state
        task.events.append(_event(description, now, state, exit_code))
        job.update_time = now
        self._dirty = True

    def _job_state(self, job: Job, state: str, extra: str = "") -> None:
        old = job.state
        job.state = state
        self._job_event(job, f"Job state is set from {old} to {state} for job {job.name}.{extra}")
        self._dirty = True

    def _job_event(self, job: Job, description: str) -> None:
        now = time.time()
        job.events.append(_event(description, now))
        job.update_time = now
        self._dirty = True

    # ------------------------------------------------------------------ persistence
    @property
    def _state_file(self) -> Path:
        return self.state_dir / "jobs.json"

    def _save_if_dirty(self) -> None:
        if self._dirty and time.time() - self._saved_at > 0.25:
            self._save()

    def _save(self) -> None:
        with self._lock:
            data = [{"project": j.project, "location": j.location, "job_id": j.job_id, "uid": j.uid, "spec": j.spec,
                     "create_time": j.create_time, "update_time": j.update_time, "state": j.state, "events": j.events,
                     "run_start": j.run_start, "run_end": j.run_end, "failure": j.failure,
                     "deleting": j.deleting is not None, "cancelling": j.cancelling is not None,
                     "tasks": [{"state": t.state, "events": t.events, "retries": t.retries,
                                "attempt": t.attempt.record() if t.attempt else None} for t in j.tasks]}
                    for j in self._jobs.values()]
            tmp = self._state_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(data))
            os.replace(tmp, self._state_file)
            self._dirty = False
            self._saved_at = time.time()

    def restore(self) -> set[tuple[str, str, str]]:
        """Load the saved jobs -> the (project, zone, name) of their VMs, which must not boot
        again (a task's VM that rebooted would run its task twice): `start()` deletes them and
        ends their tasks' attempts with exit code 50003."""
        if not self._state_file.exists():
            return set()
        try:
            data = json.loads(self._state_file.read_text())
        except (OSError, ValueError) as e:
            log.error("the local Batch's state %s is unreadable (%s): starting without its jobs", self._state_file, e)
            return set()
        held = set()
        for rec in data:
            try:
                plan = validation.plan_of(rec["spec"], rec["location"])
            except BatchError as e:
                log.error("Batch job %s cannot be restored: %s", rec.get("job_id"), e.message)
                continue
            job = Job(rec["project"], rec["location"], rec["job_id"], rec["uid"], rec["spec"], plan,
                      rec["create_time"], rec["update_time"], rec["state"], rec["events"])
            job.run_start, job.run_end, job.failure = rec.get("run_start"), rec.get("run_end"), rec.get("failure")
            for i, t in enumerate(rec["tasks"]):
                task = Task(i, t["state"], t["events"], t["retries"])
                a = t.get("attempt")
                if a:
                    task.attempt = Attempt(a["number"], a["vm"], a["zone"], instance_id=a.get("instance_id"),
                                           phase=a.get("phase", "creating"), started=a.get("started"),
                                           deadline=a.get("deadline"))
                    held.add((job.project, a["zone"], a["vm"]))
                    job.active.add(i)
                elif task.state == "PENDING":
                    job.queue.append(i)
                job.tasks.append(task)
                job.counts[task.state] = job.counts.get(task.state, 0) + 1
            heapq.heapify(job.queue)
            if rec.get("deleting"):
                job.deleting = Operation(job.project, job.location, "delete", job.name,
                                         "type.googleapis.com/google.protobuf.Empty")
                self._ops[job.deleting.name] = job.deleting
            elif rec.get("cancelling"):
                job.cancelling = Operation(job.project, job.location, "cancel", job.name,
                                           "type.googleapis.com/google.cloud.batch.v1.CancelJobResponse")
                self._ops[job.cancelling.name] = job.cancelling
            self._jobs[job.key] = job
        return held

    def start(self) -> None:
        """After `restore`: the attempts that were under way end (exit code 50003, their VMs
        deleted), and every job that has not ended is scheduled again."""
        with self._lock:
            jobs = list(self._jobs.values())
            for job in jobs:
                for index in sorted(job.active):
                    task = job.tasks[index]
                    att = task.attempt
                    if att.phase == "creating":
                        self._delete_vm(job, att)
                        task.attempt = None
                        job.active.discard(index)
                        heapq.heappush(job.queue, index)
                    else:
                        self._end_attempt(job, task, EXIT_REBOOTED, REASONS[EXIT_REBOOTED])
            self._save()
        for job in jobs:
            if job.state not in JOB_FINAL or job.deleting is not None:
                self._start_thread(job)

    def close(self) -> None:
        """The service stops: schedulers end, the state is saved (VMs are the Compute model's)."""
        with self._lock:
            self._closed = True
            jobs = list(self._jobs.values())
            self._save()
        for job in jobs:
            job.wake.set()
        for job in jobs:
            if job.thread is not None:
                job.thread.join(2)


def _page(items: list, page_size: int, page_token: str | None, query: str) -> tuple[list, str | None]:
    """One page of ITEMS and the token of the next; a token only answers the query it came from."""
    size = page_size if page_size and page_size > 0 else DEFAULT_PAGE_SIZE
    size = min(size, MAX_PAGE_SIZE)
    start = 0
    digest = format(zlib.crc32(query.encode()), "08x")
    if page_token:
        try:
            raw = json.loads(base64.urlsafe_b64decode(page_token.encode() + b"=" * (-len(page_token) % 4)))
            start, check = int(raw["o"]), raw["q"]
        except (ValueError, KeyError, TypeError):
            raise invalid_argument(f"Invalid page token \"{page_token}\".", "page_token") from None
        if check != digest or start < 0:
            raise invalid_argument(f"Invalid page token \"{page_token}\": it belongs to another request.", "page_token")
    page = items[start:start + size]
    nxt = start + size
    token = None
    if nxt < len(items):
        token = base64.urlsafe_b64encode(json.dumps({"o": nxt, "q": digest}).encode()).decode().rstrip("=")
    return page, token
