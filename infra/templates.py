"""VM templates (infra/templates/*.yaml) and their validation.

Every template is read over `default.yaml`: a field a template leaves out takes the default's
value. Flags (`--gpu`, `--spot`, `--max-hours`) override fields. A bad template fails with
its file, the field and what is allowed (exit 2).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from infra import catalog
from infra.errors import UsageError, unknown

DIR = Path(__file__).with_name("templates")
DEFAULT = "default"
MAX_HOURS_LIMIT = 120 * 24  # maxRunDuration: 30 s to 120 days
DISK_TYPES = ("pd-balanced", "pd-ssd", "pd-standard", "hyperdisk-balanced")
# Machine series whose boot disk must be Hyperdisk (Persistent Disk is refused): there a
# template's pd-balanced means hyperdisk-balanced. And series that refuse pd-standard.
HYPERDISK_ONLY = ("a3-ultragpu-", "a4-", "a4x-", "c4-", "n4-")
NO_PD_STANDARD = ("g2-", "a3-")
LABEL_RE = re.compile(r"[a-z][a-z0-9_-]{0,62}")
LABEL_VALUE_RE = re.compile(r"[a-z0-9_-]{0,63}")
NAME_RE = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")

FIELDS = {
    "description": "text",
    "gpu": "a GPU name from `python cli.py gpus`, or none",
    "count": "a GPU count the GPU allows",
    "machine_type": "a machine type, or null for the catalog's default",
    "image_project": "a project, e.g. deeplearning-platform-release",
    "image_family": "an image family, e.g. common-cu129-ubuntu-2204-nvidia-580",
    "boot_disk_gb": "an integer from 50 to 65536",
    "boot_disk_type": "one of " + ", ".join(DISK_TYPES),
    "spot": "true or false",
    "max_hours": f"a number of hours from 0.01 to {MAX_HOURS_LIMIT}",
    "install_nvidia_driver": "true or false",
    "scopes": "a list of https://www.googleapis.com/auth/... scopes",
    "labels": "a mapping of GCE labels (lowercase keys and values, at most 63 characters)",
    "startup_script": "a shell script",
}


@dataclass(frozen=True)
class Spec:
    """A resolved template: what one VM will be."""

    template: str
    description: str
    gpu: catalog.Gpu | None
    count: int
    machine_type: str
    image_project: str
    image_family: str
    boot_disk_gb: int
    boot_disk_type: str
    spot: bool
    max_hours: float
    install_nvidia_driver: bool
    scopes: tuple[str, ...]
    labels: dict = field(default_factory=dict)
    startup_script: str = ""

    @property
    def max_run_seconds(self) -> int:
        return max(30, int(round(self.max_hours * 3600)))

    @property
    def price_per_hour(self) -> float | None:
        return catalog.load().price(self.gpu, self.count, self.machine_type, self.spot)

    @property
    def gpu_label(self) -> str:
        return f"{self.gpu.name}:{self.count}" if self.gpu else "none"


def names() -> list[str]:
    return sorted(p.stem for p in DIR.glob("*.yaml"))


def _read(path: Path) -> dict:
    import yaml

    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise UsageError(f"template {path}:{where} not valid YAML") from None
    if not isinstance(data, dict):
        raise UsageError(f"template {path}: expected a mapping of fields", hint="fields: " + ", ".join(FIELDS))
    for key in data:
        if key not in FIELDS:
            raise unknown(f"field in template {path}:", str(key), FIELDS)
    return data


def _bad(path: Path, key: str, value) -> UsageError:
    return UsageError(f"template {path}: field {key!r} has invalid value {value!r}", hint=f"allowed: {FIELDS[key]}")


def load(name: str | None = None, *, gpu: str | None = None, spot: bool | None = None,
         max_hours: float | None = None, directory: Path | None = None) -> Spec:
    """Read template NAME (default: default) over default.yaml, apply flag overrides, validate."""
    directory = directory or DIR
    name = name or DEFAULT
    path = directory / f"{name}.yaml"
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name) or not path.exists():
        raise unknown("template", name, [p.stem for p in directory.glob("*.yaml")])
    base_path = directory / f"{DEFAULT}.yaml"
    data = _read(base_path) if base_path.exists() else {}
    data.update(_read(path))
    return _resolve(path, name, data, gpu=gpu, spot=spot, max_hours=max_hours)


def _resolve(path: Path, name: str, data: dict, *, gpu, spot, max_hours) -> Spec:
    cat = catalog.load()
    # --- GPU and count (a --gpu flag also resets machine_type to the catalog default)
    machine_type = data.get("machine_type")
    if gpu is not None:
        if gpu.strip().lower() == "none":
            gpu_obj, count = None, 0
        else:
            gpu_obj, count = catalog.parse_gpu_spec(gpu)
        if gpu_obj is not None:
            machine_type = None  # the catalog's default for the new GPU and count
    else:
        raw = data.get("gpu")
        if raw is None or str(raw).lower() == "none":
            gpu_obj, count = None, 0
        else:
            try:
                gpu_obj = cat.find(str(raw))
            except UsageError as exc:
                raise UsageError(f"template {path}: field 'gpu': {exc}") from None
            count = data.get("count", gpu_obj.counts[0])
            if not isinstance(count, int) or isinstance(count, bool) or count not in gpu_obj.counts:
                raise UsageError(f"template {path}: field 'count' has invalid value {count!r}",
                                 hint="allowed for " + gpu_obj.name + ": " + ", ".join(map(str, gpu_obj.counts)))
    if machine_type is not None and not isinstance(machine_type, str):
        raise _bad(path, "machine_type", machine_type)
    if gpu_obj is None:
        if not machine_type:
            raise UsageError(f"template {path}: field 'machine_type' is required when gpu is none", hint="e.g. n1-standard-4")
    elif gpu_obj.attach == "accelerator":
        machine_type = machine_type or gpu_obj.machine_type(count)
        if not re.fullmatch(r"n1-(standard|highmem|highcpu)-\d+", machine_type):
            raise UsageError(f"template {path}: field 'machine_type' {machine_type!r} cannot carry {gpu_obj.name} GPUs",
                             hint=f"allowed: an N1 machine type such as {gpu_obj.machine_type(count)}")
    else:
        expected = gpu_obj.machine_type(count)
        machine_type = machine_type or expected
        if machine_type != expected:
            raise UsageError(f"template {path}: field 'machine_type' {machine_type!r} does not carry {count} x {gpu_obj.name}",
                             hint=f"allowed: {expected} (or null)")

    # --- the rest
    def typed(key, kind, default):
        value = data.get(key, default)
        ok = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
        if not ok:
            raise _bad(path, key, value)
        return value

    description = typed("description", str, "")
    image_project = typed("image_project", str, "deeplearning-platform-release")
    image_family = typed("image_family", str, "common-cu129-ubuntu-2204-nvidia-580")
    boot_disk_gb = typed("boot_disk_gb", int, 100)
    if not 50 <= boot_disk_gb <= 65536:
        raise _bad(path, "boot_disk_gb", boot_disk_gb)
    boot_disk_type = typed("boot_disk_type", str, "pd-balanced")
    if boot_disk_type not in DISK_TYPES:
        raise _bad(path, "boot_disk_type", boot_disk_type)
    if machine_type.startswith(HYPERDISK_ONLY):
        if boot_disk_type == "pd-balanced":
            boot_disk_type = "hyperdisk-balanced"  # the same balanced disk, in the only kind these take
        elif boot_disk_type != "hyperdisk-balanced":
            raise UsageError(f"template {path}: boot_disk_type {boot_disk_type!r} cannot boot {machine_type}",
                             hint="allowed: hyperdisk-balanced (or pd-balanced, which ferry maps to it)")
    elif boot_disk_type == "hyperdisk-balanced" and not machine_type.startswith(("a3-", "c3-", "n2-", "h3-")):
        raise UsageError(f"template {path}: boot_disk_type 'hyperdisk-balanced' cannot boot {machine_type}",
                         hint="allowed: pd-balanced, pd-ssd" + ("" if machine_type.startswith(NO_PD_STANDARD) else ", pd-standard"))
    if boot_disk_type == "pd-standard" and machine_type.startswith(NO_PD_STANDARD):
        raise UsageError(f"template {path}: boot_disk_type 'pd-standard' cannot boot {machine_type}",
                         hint="allowed: pd-balanced, pd-ssd")
    spot_value = typed("spot", bool, False) if spot is None else bool(spot)
    hours = typed("max_hours", (int, float), 4) if max_hours is None else max_hours
    if not isinstance(hours, (int, float)) or isinstance(hours, bool) or not (30 / 3600 <= hours <= MAX_HOURS_LIMIT):
        if max_hours is not None:
            raise UsageError(f"invalid --max-hours {max_hours!r}", hint=f"allowed: {FIELDS['max_hours']}")
        raise _bad(path, "max_hours", hours)
    driver = typed("install_nvidia_driver", bool, True)
    scopes = typed("scopes", list, ["https://www.googleapis.com/auth/devstorage.read_write"])
    for scope in scopes:
        if not isinstance(scope, str) or not scope.startswith("https://www.googleapis.com/auth/"):
            raise _bad(path, "scopes", scope)
    if not any(s.endswith(("/devstorage.read_write", "/devstorage.full_control", "/cloud-platform")) for s in scopes):
        raise UsageError(f"template {path}: field 'scopes' lets the VM not write to the bucket",
                         hint="allowed: include https://www.googleapis.com/auth/devstorage.read_write")
    labels = typed("labels", dict, {})
    for key, value in labels.items():
        if not LABEL_RE.fullmatch(str(key)) or not LABEL_VALUE_RE.fullmatch(str(value)) or str(key).startswith("ferry-") or key == "managed-by":
            raise UsageError(f"template {path}: field 'labels' has invalid label {key!r}: {value!r}",
                             hint="allowed: lowercase letters, digits, _ and -, at most 63; managed-by and ferry-* are ferry's own")
    startup = typed("startup_script", str, "")
    return Spec(
        template=name,
        description=description,
        gpu=gpu_obj,
        count=count,
        machine_type=machine_type,
        image_project=image_project,
        image_family=image_family,
        boot_disk_gb=boot_disk_gb,
        boot_disk_type=boot_disk_type,
        spot=spot_value,
        max_hours=float(hours),
        install_nvidia_driver=driver,
        scopes=tuple(scopes),
        labels={str(k): str(v) for k, v in labels.items()},
        startup_script=startup,
    )


def check_vm_name(name: str) -> str:
    """GCE's rule: 1-63 characters, lowercase letters, digits and hyphens, starting with a
    letter and not ending with a hyphen."""
    if not NAME_RE.fullmatch(name or ""):
        raise UsageError(f"invalid VM name {name!r}",
                         hint="use 1-63 lowercase letters, digits or hyphens, starting with a letter, not ending with a hyphen")
    return name


__all__ = ["Spec", "load", "names", "check_vm_name"]
