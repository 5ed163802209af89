"""The rules of jobs.create, as Cloud Batch applies them (and, marked so, what only the local
Batch cannot do): a request becomes the stored Job plus the `Plan` its tasks run by, or a
BatchError 400 saying what is wrong.

Documented limits applied (cloud.google.com/batch/quotas, the v1 reference):
- job id: `^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$`; a system-generated one when none is given;
- one task group; taskCount 1..100,000 (tasks per task group); parallelism 1..5,000 (parallel
  tasks per job), 1 with schedulingPolicy IN_ORDER; maxRetryCount 0..10; one lifecycle policy;
- at least one runnable; priority 0..99; a job definition of at most 1 MB;
- labels: Compute Engine's label rules; "goog-"/"google-" keys reserved; the predefined
  batch-job-id / batch-job-uid / batch-node cannot be set; at most 63 custom labels on a job,
  61 on the VMs (allocationPolicy.labels).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from infra.local.batch import schema
from infra.local.batch.errors import invalid_argument, not_supported_locally
from infra.local.compute import catalog

JOB_ID_RE = re.compile(r"^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$")
MAX_TASKS = 100_000
MAX_PARALLEL = 5_000
MAX_RETRIES = 10
MAX_JOB_BYTES = 1_000_000
LABEL_KEY_RE = re.compile(r"[a-z][a-z0-9_-]{0,62}")
LABEL_VALUE_RE = re.compile(r"[a-z0-9_-]{0,63}")
PREDEFINED_LABELS = ("batch-job-id", "batch-job-uid", "batch-node")
ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"

# Batch's own images by short name (Disk.image): the local stand-in is a Deep Learning VM image
# (its python3 is the service's interpreter, with the trainer's packages and google-cloud-*).
BATCH_IMAGES = ("batch-debian", "batch-cos", "batch-hpc-rocky", "batch-centos", "batch-hpc-centos")
DEFAULT_IMAGE = "projects/deeplearning-platform-release/global/images/family/common-cu129-ubuntu-2204-nvidia-580"
DEFAULT_BOOT_DISK_TYPE = "pd-balanced"
DEFAULT_CPU_MILLI, DEFAULT_MEMORY_MIB = 2000, 2000


@dataclass
class Runnable:
    text: str | None
    path: str | None
    env: dict[str, str]
    ignore_exit_status: bool = False
    always_run: bool = False
    background: bool = False
    name: str = ""


@dataclass
class Plan:
    """What each task of the job runs, and on which VM."""

    task_count: int
    parallelism: int
    runnables: list[Runnable]
    env: dict[str, str]
    task_envs: list[dict[str, str]] | None
    max_retries: int
    policy_action: str | None  # RETRY_TASK / FAIL_TASK / None (the default policy)
    policy_codes: tuple[int, ...]
    max_run_s: float | None
    machine_type: str
    accelerator: tuple[str, int] | None
    provisioning: str  # STANDARD / SPOT / PREEMPTIBLE
    image: str
    disk_gb: int | None
    disk_type: str
    zones: list[str]
    vm_labels: dict[str, str]
    scopes: list[str]
    sa_email: str
    extra: dict = field(default_factory=dict)

    @property
    def spot(self) -> bool:
        return self.provisioning in ("SPOT", "PREEMPTIBLE")


def check_job_id(job_id: str) -> None:
    if not JOB_ID_RE.fullmatch(job_id):
        raise invalid_argument(
            f"Job id \"{job_id}\" is invalid: a job id must match regular expression "
            "^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$ (at most 63 lowercase letters, digits and '-', "
            "starting with a letter, not ending with '-').", "job_id")


def check_location(location: str) -> None:
    if location not in catalog.REGIONS:
        raise invalid_argument(f"Location \"{location}\" is not supported by Batch (the local Batch knows "
                               f"{', '.join(catalog.REGIONS)}).", "parent")


def _int(value, default: int) -> int:
    return default if value is None else int(value)


def _labels(labels: dict, where: str, limit: int) -> dict:
    labels = dict(labels or {})
    if len(labels) > limit:
        raise invalid_argument(f"Too many custom labels in '{where}': {len(labels)} (at most {limit}).", where)
    for k, v in labels.items():
        if k.startswith(("goog-", "google-")):
            raise invalid_argument(f"Label key \"{k}\" in '{where}' is reserved: keys starting with \"goog-\" or "
                                   "\"google-\" are for predefined labels.", where)
        if k in PREDEFINED_LABELS:
            raise invalid_argument(f"Label \"{k}\" in '{where}' is a predefined Batch label and cannot be overridden.",
                                   where)
        if not LABEL_KEY_RE.fullmatch(k):
            raise invalid_argument(f"Invalid label key \"{k}\" in '{where}': keys start with a lowercase letter and "
                                   "hold at most 63 lowercase letters, digits, '_' or '-'.", where)
        if not LABEL_VALUE_RE.fullmatch(str(v)):
            raise invalid_argument(f"Invalid label value \"{v}\" for key \"{k}\" in '{where}': values hold at most 63 "
                                   "lowercase letters, digits, '_' or '-'.", where)
    return labels


def _env(env: dict | None, where: str) -> dict[str, str]:
    env = env or {}
    if env.get("secretVariables"):
        raise not_supported_locally("Secret Manager variables (secretVariables)", f"{where}.secret_variables")
    if env.get("encryptedVariables"):
        raise not_supported_locally("KMS-encrypted variables (encryptedVariables)", f"{where}.encrypted_variables")
    out = dict(env.get("variables") or {})
    for name in out:
        if not ENV_NAME_RE.fullmatch(name):
            raise not_supported_locally(f"Environment variable name \"{name}\" (not a shell identifier)",
                                        f"{where}.variables")
    return out


def _runnables(items: list, where: str) -> list[Runnable]:
    if not items:
        raise invalid_argument(f"Field '{where}' is required: a task needs at least one runnable.", where)
    out = []
    for i, r in enumerate(items):
        here = f"{where}[{i}]"
        kinds = [k for k in ("script", "container", "barrier") if k in r]
        if len(kinds) != 1:
            raise invalid_argument(f"Runnable '{here}' must set exactly one of script, container or barrier.", here)
        if kinds[0] == "container":
            raise not_supported_locally("A container runnable", f"{here}.container")
        if kinds[0] == "barrier":
            raise not_supported_locally("A barrier runnable", f"{here}.barrier")
        script = r["script"]
        if ("text" in script) == ("path" in script) or not (script.get("text") or script.get("path")):
            raise invalid_argument(f"Script '{here}.script' must set exactly one of text or path.", f"{here}.script")
        if r.get("timeout"):
            raise not_supported_locally("A runnable timeout", f"{here}.timeout")
        out.append(Runnable(text=script.get("text"), path=script.get("path"),
                            env=_env(r.get("environment"), f"{here}.environment"),
                            ignore_exit_status=bool(r.get("ignoreExitStatus")), always_run=bool(r.get("alwaysRun")),
                            background=bool(r.get("background")), name=r.get("displayName") or str(i)))
    return out


def _zones(locations: list[str], where: str) -> list[str]:
    zones, regions = [], set()
    for loc in locations:
        m = re.fullmatch(r"(regions|zones)/([a-z0-9-]+)", loc)
        if not m:
            raise invalid_argument(f"Invalid allowed location \"{loc}\": use regions/REGION or zones/ZONE.", where)
        kind, name = m.groups()
        if kind == "regions":
            if name not in catalog.REGIONS:
                raise invalid_argument(f"Allowed location \"{loc}\" is not a supported region.", where)
            regions.add(name)
            zones += sorted(z for z in catalog.ZONES if catalog.region_of(z) == name)
        else:
            if name not in catalog.ZONES:
                raise invalid_argument(f"Allowed location \"{loc}\" is not a supported zone.", where)
            regions.add(catalog.region_of(name))
            zones.append(name)
    if len(regions) > 1:
        raise invalid_argument(f"Allowed locations {locations} span more than one region ({', '.join(sorted(regions))}): "
                               "a job's VMs may be in one region, or in zones of one region.", where)
    return list(dict.fromkeys(zones))


def _default_machine_type(cpu_milli: int, memory_mib: int) -> str:
    for n in (2, 4, 8, 16, 32):
        if n * 1000 >= cpu_milli and n * 4096 >= memory_mib:
            return f"e2-standard-{n}"
    for n in (64, 96):
        if n * 1000 >= cpu_milli and n * 3840 >= memory_mib:
            return f"n1-standard-{n}"
    raise invalid_argument(f"No machine type offers {cpu_milli} milliCPU and {memory_mib} MiB per task.",
                           "job.task_groups[0].task_spec.compute_resource")


def _resolve_image(image: str | None, where: str) -> str:
    from infra.local.compute.validation import resolve_image

    if not image or image in BATCH_IMAGES:
        return DEFAULT_IMAGE
    source = image if image.startswith("projects/") else image.split("/compute/v1/", 1)[-1]
    if resolve_image(source) is None:
        raise invalid_argument(f"Boot disk image \"{image}\" cannot be found (the local cloud knows the images of "
                               "infra/local/compute/catalog.py, and Batch's batch-debian, batch-cos, batch-hpc-rocky).",
                               where)
    return source


def job_from_request(project: str, location: str, job_id: str, body: dict, raw_size: int = 0) -> tuple[dict, Plan]:
    """(the Job as stored, without its output fields; the Plan) from a create request."""
    if raw_size > MAX_JOB_BYTES:
        raise invalid_argument(f"The job definition is {raw_size} bytes: at most 1 MB is allowed.", "job")
    job = schema.parse(body, "Job", "job")
    for key in ("name", "uid", "status", "createTime", "updateTime"):  # output only: ignored, as Google does
        job.pop(key, None)
    priority = _int(job.get("priority"), 0)
    if not 0 <= priority < 100:
        raise invalid_argument(f"Invalid priority {priority}: the valid range is [0, 100).", "job.priority")
    groups = job.get("taskGroups") or []
    if not groups:
        raise invalid_argument("Field 'job.task_groups' is required: a job needs one task group.", "job.task_groups")
    if len(groups) > 1:
        raise invalid_argument(f"A job has {len(groups)} task groups: only one TaskGroup is supported.", "job.task_groups")
    group = groups[0]
    group.pop("name", None)
    where = "job.task_groups[0]"
    spec = group.get("taskSpec")
    if not spec:
        raise invalid_argument(f"Field '{where}.task_spec' is required.", f"{where}.task_spec")
    task_envs = [_env(e, f"{where}.task_environments[{i}]") for i, e in enumerate(group.get("taskEnvironments") or [])]
    if task_envs:
        count = len(task_envs)
    else:
        count = _int(group.get("taskCount"), 1)
    if count < 1:
        raise invalid_argument(f"Invalid task_count {count}: a task group needs at least 1 task.", f"{where}.task_count")
    if count > MAX_TASKS:
        raise invalid_argument(f"Invalid task_count {count}: at most {MAX_TASKS:,} tasks per task group.",
                               f"{where}.task_count")
    in_order = group.get("schedulingPolicy") == "IN_ORDER"
    parallelism = _int(group.get("parallelism"), 1 if in_order else min(count, MAX_PARALLEL))
    if parallelism < 1:
        raise invalid_argument(f"Invalid parallelism {parallelism}: it must be at least 1.", f"{where}.parallelism")
    if parallelism > MAX_PARALLEL:
        raise invalid_argument(f"Invalid parallelism {parallelism}: at most {MAX_PARALLEL:,} parallel tasks per job.",
                               f"{where}.parallelism")
    if in_order and parallelism != 1:
        raise invalid_argument("Field parallelism must be 1 if the scheduling_policy is IN_ORDER.", f"{where}.parallelism")
    if group.get("requireHostsFile") or group.get("permissiveSsh"):
        raise not_supported_locally("requireHostsFile / permissiveSsh (tasks sharing VMs)", where)
    if group.get("runAsNonRoot"):
        raise not_supported_locally("runAsNonRoot (an OS Login user)", f"{where}.run_as_non_root")
    group["taskCount"] = str(count)
    group["parallelism"] = str(parallelism)

    sw = f"{where}.task_spec"
    runnables = _runnables(spec.get("runnables") or [], f"{sw}.runnables")
    if spec.get("volumes"):
        raise not_supported_locally("Volumes (Cloud Storage, NFS, persistent disks)", f"{sw}.volumes")
    env = {**dict(spec.get("environments") or {}), **_env(spec.get("environment"), f"{sw}.environment")}
    retries = _int(spec.get("maxRetryCount"), 0)
    if not 0 <= retries <= MAX_RETRIES:
        raise invalid_argument(f"Invalid max_retry_count {retries}: the valid range is [0, {MAX_RETRIES}].",
                               f"{sw}.max_retry_count")
    policies = spec.get("lifecyclePolicies") or []
    if len(policies) > 1:
        raise invalid_argument(f"{len(policies)} lifecycle policies: only one lifecycle policy is supported.",
                               f"{sw}.lifecycle_policies")
    action, codes = None, ()
    if policies:
        p = policies[0]
        action = p.get("action") if p.get("action") not in (None, "ACTION_UNSPECIFIED") else None
        codes = tuple(int(c) for c in (p.get("actionCondition") or {}).get("exitCodes") or [])
    max_run = None
    if spec.get("maxRunDuration"):
        max_run = schema.duration_seconds(spec["maxRunDuration"])
        if max_run < 0:
            raise invalid_argument(f"Invalid max_run_duration {spec['maxRunDuration']}: it must not be negative.",
                                   f"{sw}.max_run_duration")
        max_run = max_run or None
    resources = spec.setdefault("computeResource", {})
    resources.setdefault("cpuMilli", str(DEFAULT_CPU_MILLI))
    resources.setdefault("memoryMib", str(DEFAULT_MEMORY_MIB))

    alloc = job.setdefault("allocationPolicy", {})
    aw = "job.allocation_policy"
    instances = alloc.get("instances") or []
    if len(instances) > 1:
        raise not_supported_locally("More than one entry in allocationPolicy.instances (Batch uses only instances[0])",
                                    f"{aw}.instances")
    if alloc.get("instanceFlexibilityPolicy"):
        raise not_supported_locally("An instance flexibility policy", f"{aw}.instance_flexibility_policy")
    inst = instances[0] if instances else {}
    if inst.get("instanceTemplate"):
        raise not_supported_locally("An instance template", f"{aw}.instances[0].instance_template")
    policy = inst.get("policy") or {}
    pw = f"{aw}.instances[0].policy"
    if policy.get("disks"):
        raise not_supported_locally("Non-boot disks", f"{pw}.disks")
    provisioning = policy.get("provisioningModel") or "STANDARD"
    if provisioning == "PROVISIONING_MODEL_UNSPECIFIED":
        provisioning = "STANDARD"
    if provisioning not in ("STANDARD", "SPOT", "PREEMPTIBLE"):
        raise not_supported_locally(f"Provisioning model {provisioning}", f"{pw}.provisioning_model")
    accs = policy.get("accelerators") or []
    if len(accs) > 1:
        raise not_supported_locally("More than one accelerator type per VM", f"{pw}.accelerators")
    accelerator = None
    if accs:
        a_type, a_count = accs[0].get("type") or "", int(accs[0].get("count") or 1)
        if a_type not in catalog.ALL_GPUS:
            raise invalid_argument(f"Accelerator type \"{a_type}\" does not exist.", f"{pw}.accelerators[0].type")
        accelerator = (a_type, a_count)
    cpu, mem = int(resources["cpuMilli"]), int(resources["memoryMib"])
    machine_type = policy.get("machineType") or _default_machine_type(cpu, mem)
    mt = catalog.machine_type(machine_type)
    if mt is None:
        raise invalid_argument(f"Machine type \"{machine_type}\" does not exist.", f"{pw}.machine_type")
    boot = policy.get("bootDisk") or {}
    if boot.get("snapshot"):
        raise not_supported_locally("A boot disk from a snapshot", f"{pw}.boot_disk.snapshot")
    image = _resolve_image(boot.get("image"), f"{pw}.boot_disk.image")
    disk_type = boot.get("type") or DEFAULT_BOOT_DISK_TYPE
    if disk_type not in catalog.DISK_TYPES:
        raise invalid_argument(f"Boot disk type \"{disk_type}\" does not exist.", f"{pw}.boot_disk.type")
    disk_gb = int(boot["sizeGb"]) if boot.get("sizeGb") else None
    location_policy = alloc.setdefault("location", {})
    allowed = location_policy.get("allowedLocations") or [f"regions/{location}"]
    location_policy["allowedLocations"] = list(allowed)
    zones = _zones(allowed, f"{aw}.location.allowed_locations")
    gpu = accelerator[0] if accelerator else mt.gpu
    usable = [z for z in zones if not isinstance(catalog.lookup_machine_type(mt.name, z), (str, type(None)))
              and (gpu is None or gpu in catalog.ZONES[z])]
    if not usable:
        what = f"machine type {mt.name}" + (f" with {gpu}" if gpu else "")
        raise invalid_argument(f"No zone of the allowed locations {allowed} offers {what}.", f"{aw}.location")
    job_labels = _labels(job.get("labels"), "job.labels", 63)
    vm_labels = _labels(alloc.get("labels"), f"{aw}.labels", 61)
    sa = alloc.get("serviceAccount") or {}
    scopes = list(dict.fromkeys([CLOUD_PLATFORM, *(sa.get("scopes") or [])]))
    job["labels"] = job_labels
    plan = Plan(task_count=count, parallelism=parallelism, runnables=runnables, env=env,
                task_envs=task_envs or None, max_retries=retries, policy_action=action, policy_codes=codes,
                max_run_s=max_run, machine_type=mt.name, accelerator=accelerator, provisioning=provisioning,
                image=image, disk_gb=disk_gb, disk_type=disk_type, zones=usable, vm_labels=vm_labels,
                scopes=scopes, sa_email=sa.get("email") or "default")
    return job, plan


def plan_of(job: dict, location: str) -> Plan:
    """The Plan of a stored job (a service restart)."""
    _, plan = job_from_request("", location, "", _without_defaults(job))
    return plan


def _without_defaults(job: dict) -> dict:
    import copy

    out = copy.deepcopy(job)
    out.pop("labels", None)
    labels = {k: v for k, v in (job.get("labels") or {}).items() if k not in PREDEFINED_LABELS}
    if labels:
        out["labels"] = labels
    return out


def retry_wanted(plan: Plan, exit_code: int) -> bool:
    """Whether a failed attempt with EXIT_CODE is retried (retries left aside): the lifecycle
    policy's action when its exit codes match, the opposite action when they do not; with no
    policy, Batch's default (retry any non-zero exit)."""
    if plan.policy_action == "RETRY_TASK" and plan.policy_codes:
        return exit_code in plan.policy_codes
    if plan.policy_action == "FAIL_TASK" and plan.policy_codes:
        return exit_code not in plan.policy_codes
    return True


def vm_max_run_s(plan: Plan, boot_s: float) -> float | None:
    """The VMs' scheduling.maxRunDuration: the task's limit plus time to boot, at least GCE's
    30 s, none past GCE's 120 days (Batch ends the task itself at its limit: exit code 50005)."""
    if plan.max_run_s is None:
        return None
    seconds = math.ceil(plan.max_run_s + boot_s + 30)
    return float(max(30, seconds)) if seconds <= 120 * 24 * 3600 else None
