"""Static Compute Engine facts the local server serves: zones, machine types, GPUs, images.

Approximate, from Google's public documentation (gpus/gpu-regions-zones, machine-resource
pages), as of 2025-2026; real availability changes. One table each, nothing else here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# ---------------------------------------------------------------------------- GPUs
# accelerator type -> (description, valid counts on N1, max vCPUs per count on N1)
N1_GPUS = {
    "nvidia-tesla-t4": ("NVIDIA T4", {1: 48, 2: 48, 4: 96}),
    "nvidia-tesla-v100": ("NVIDIA V100", {1: 12, 2: 24, 4: 48, 8: 96}),
    "nvidia-tesla-p100": ("NVIDIA P100", {1: 16, 2: 32, 4: 96}),
    "nvidia-tesla-p4": ("NVIDIA P4", {1: 24, 2: 48, 4: 96}),
    "nvidia-tesla-k80": ("NVIDIA Tesla K80", {1: 8, 2: 16, 4: 32, 8: 64}),
}
BUILT_IN_GPUS = {  # attached through the machine type
    "nvidia-l4": "NVIDIA L4",
    "nvidia-tesla-a100": "NVIDIA A100 40GB",
    "nvidia-a100-80gb": "NVIDIA A100 80GB",
    "nvidia-h100-80gb": "NVIDIA H100 80GB",
    "nvidia-h100-mega-80gb": "NVIDIA H100 Mega 80GB",
    "nvidia-h200-141gb": "NVIDIA H200 141GB",
}
# K80 is end of life on GCE since 2024-05-01; the local cloud still accepts it (so old course
# material runs offline) and says so in the operation's warnings.
END_OF_LIFE_GPUS = {"nvidia-tesla-k80": "2024-05-01"}

ALL_GPUS = {**{k: v[0] for k, v in N1_GPUS.items()}, **BUILT_IN_GPUS}

# ---------------------------------------------------------------------------- zones
_COMMON = ("nvidia-tesla-t4", "nvidia-l4", "nvidia-tesla-k80")
ZONES: dict[str, tuple[str, ...]] = {
    "us-central1-a": _COMMON + ("nvidia-tesla-v100", "nvidia-tesla-p4", "nvidia-tesla-a100", "nvidia-h100-80gb"),
    "us-central1-b": _COMMON + ("nvidia-tesla-v100", "nvidia-tesla-a100", "nvidia-h100-80gb", "nvidia-h200-141gb"),
    "us-central1-c": _COMMON + ("nvidia-tesla-p100", "nvidia-tesla-p4", "nvidia-tesla-a100", "nvidia-a100-80gb"),
    "us-central1-f": _COMMON + ("nvidia-tesla-v100", "nvidia-tesla-p100", "nvidia-tesla-a100"),
    "us-east1-b": ("nvidia-tesla-p100", "nvidia-l4"),
    "us-east1-c": _COMMON + ("nvidia-tesla-v100", "nvidia-tesla-p100"),
    "us-east1-d": _COMMON,
    "us-east4-a": _COMMON + ("nvidia-tesla-p4", "nvidia-a100-80gb", "nvidia-h100-80gb"),
    "us-west1-a": _COMMON + ("nvidia-tesla-v100", "nvidia-tesla-p100", "nvidia-h100-80gb"),
    "us-west1-b": _COMMON + ("nvidia-tesla-v100", "nvidia-tesla-p100", "nvidia-tesla-a100"),
    "europe-west4-a": _COMMON + ("nvidia-tesla-v100", "nvidia-tesla-p100", "nvidia-tesla-a100"),
    "europe-west4-b": _COMMON + ("nvidia-tesla-v100", "nvidia-tesla-p4", "nvidia-tesla-a100", "nvidia-h100-80gb"),
    "europe-west4-c": _COMMON + ("nvidia-tesla-v100", "nvidia-tesla-p4"),
    "asia-east1-a": _COMMON + ("nvidia-tesla-p100",),
    "asia-east1-c": _COMMON + ("nvidia-tesla-v100", "nvidia-tesla-p100", "nvidia-tesla-a100"),
}


def region_of(zone: str) -> str:
    return zone.rsplit("-", 1)[0]


REGIONS = sorted({region_of(z) for z in ZONES})


# ---------------------------------------------------------------------------- machine types
@dataclass(frozen=True)
class MachineType:
    name: str
    cpus: int
    memory_mb: int
    gpu: str | None = None  # built-in accelerator
    gpu_count: int = 0
    shared_core: bool = False
    family: str = ""  # the series when the name does not start with it (N1 custom-*)

    @property
    def series(self) -> str:
        return self.family or self.name.split("-", 1)[0]

    @property
    def custom(self) -> bool:
        return "custom-" in self.name


def _machine_types() -> dict[str, MachineType]:
    out: list[MachineType] = [
        MachineType("f1-micro", 1, 614, shared_core=True),
        MachineType("g1-small", 1, 1740, shared_core=True),
        MachineType("e2-micro", 2, 1024, shared_core=True),
        MachineType("e2-small", 2, 2048, shared_core=True),
        MachineType("e2-medium", 2, 4096, shared_core=True),
    ]
    for n in (2, 4, 8, 16, 32):
        out.append(MachineType(f"e2-standard-{n}", n, n * 4096))
    for n in (1, 2, 4, 8, 16, 32, 64, 96):
        out.append(MachineType(f"n1-standard-{n}", n, int(n * 3840)))
        if n > 1:
            out.append(MachineType(f"n1-highmem-{n}", n, int(n * 6656)))
            out.append(MachineType(f"n1-highcpu-{n}", n, int(n * 921.6)))
    for n, gpus in ((4, 1), (8, 1), (12, 1), (16, 1), (24, 2), (32, 1), (48, 4), (96, 8)):
        out.append(MachineType(f"g2-standard-{n}", n, n * 4096, "nvidia-l4", gpus))
    for g in (1, 2, 4, 8):
        out.append(MachineType(f"a2-highgpu-{g}g", 12 * g, 87040 * g, "nvidia-tesla-a100", g))
        out.append(MachineType(f"a2-ultragpu-{g}g", 12 * g, 174080 * g, "nvidia-a100-80gb", g))
    out.append(MachineType("a2-megagpu-16g", 96, 1392640, "nvidia-tesla-a100", 16))
    out.append(MachineType("a3-highgpu-8g", 208, 1916928, "nvidia-h100-80gb", 8))
    out.append(MachineType("a3-megagpu-8g", 208, 1916928, "nvidia-h100-mega-80gb", 8))
    out.append(MachineType("a3-ultragpu-8g", 224, 2952790, "nvidia-h200-141gb", 8))
    return {m.name: m for m in out}


MACHINE_TYPES = _machine_types()


# Custom machine types (compute/docs/instances/creating-instance-with-custom-machine-type):
# series -> (vCPU rule, memory per vCPU MB (min, max), total memory cap MB with -ext, without)
_CUSTOM_RE = re.compile(r"(?:(n1|n2|e2)-)?custom-([0-9]+)-([0-9]+)(-ext)?")
_CUSTOM_MEMORY = {"n1": (921.6, 6656, 624 * 1024), "n2": (512, 8192, 864 * 1024), "e2": (512, 8192, None)}


def _custom_cpus_ok(series: str, cpus: int) -> str | None:
    if series == "n1":
        return None if cpus == 1 or (cpus % 2 == 0 and 2 <= cpus <= 96) else \
            "the number of vCPUs must be 1 or an even number up to 96"
    if series == "e2":
        return None if cpus % 2 == 0 and 2 <= cpus <= 32 else "the number of vCPUs must be an even number from 2 to 32"
    ok = (2 <= cpus <= 32 and cpus % 2 == 0) or (36 <= cpus <= 80 and cpus % 4 == 0) or (88 <= cpus <= 128 and cpus % 8 == 0)
    return None if ok else ("the number of vCPUs must be a multiple of 2 up to 32, of 4 from 36 to 80, "
                            "of 8 from 88 to 128")


def custom_machine_type(name: str) -> MachineType | str | None:
    """A custom machine type by GCE's rules: the MachineType, a str saying why NAME breaks
    them, or None when NAME is not a custom machine type name at all."""
    m = _CUSTOM_RE.fullmatch(name)
    if not m:
        return None
    series, cpus, memory, ext = m.group(1) or "n1", int(m.group(2)), int(m.group(3)), bool(m.group(4))
    why = _custom_cpus_ok(series, cpus)
    if why:
        return f"Invalid custom machine type: {why}."
    if memory % 256:
        return f"Memory should be a multiple of 256MiB, while {memory}MiB is requested."
    low, high, ext_cap = _CUSTOM_MEMORY[series]
    if ext and ext_cap is None:
        return f"Extended memory is not supported for {series.upper()} custom machine types."
    if memory < low * cpus:
        return f"Memory should be at least {low / 1024:g} GB per vCPU ({memory}MiB for {cpus} vCPUs requested)."
    if not ext and memory > high * cpus:
        return (f"Memory should be at most {high / 1024:g} GB per vCPU ({memory}MiB for {cpus} vCPUs requested); "
                "use extended memory (-ext) for more.")
    cap = ext_cap if ext else (128 * 1024 if series == "e2" else None)
    if cap and memory > cap:
        return f"Memory should be at most {cap // 1024} GB in total, while {memory}MiB is requested."
    return MachineType(name, cpus, memory, family=series)


def lookup_machine_type(name: str, zone: str) -> MachineType | str | None:
    """A predefined machine type of ZONE or a valid custom one; a str why not; None if unknown."""
    mt = MACHINE_TYPES.get(name)
    if mt is not None:
        return mt if mt in machine_types_in(zone) else None
    return custom_machine_type(name)


def machine_type(name: str) -> MachineType | None:
    """Any known machine type by name (predefined or valid custom), zone aside."""
    found = MACHINE_TYPES.get(name) or custom_machine_type(name)
    return found if isinstance(found, MachineType) else None


# ---------------------------------------------------------------------------- disk types
# name -> (description, min size GB, default size GB)
DISK_TYPES = {
    "pd-standard": ("Standard Persistent Disk", 10, 500),
    "pd-balanced": ("Balanced Persistent Disk", 10, 100),
    "pd-ssd": ("SSD Persistent Disk", 10, 100),
    "pd-extreme": ("Extreme Persistent Disk", 500, 1000),
    "hyperdisk-balanced": ("Hyperdisk Balanced", 4, 100),
    "hyperdisk-extreme": ("Hyperdisk Extreme", 64, 1000),
    "hyperdisk-throughput": ("Hyperdisk Throughput", 2048, 2048),
    "hyperdisk-ml": ("Hyperdisk ML", 4, 100),
}
HYPERDISK = {d for d in DISK_TYPES if d.startswith("hyperdisk-")}


def disk_type_refusal(mt: MachineType, disk_type: str) -> bool:
    """Whether GCE refuses DISK_TYPE on MT (the documented per-series disk support; only the
    refusals we are sure of: A3 Ultra is Hyperdisk only, G2 and A3 take no pd-standard, E2
    no Hyperdisk or pd-extreme, N1 no Hyperdisk Balanced/Extreme)."""
    if mt.name.startswith("a3-ultragpu"):
        return disk_type not in ("hyperdisk-balanced", "hyperdisk-extreme", "hyperdisk-ml")
    if mt.series in ("g2", "a3"):
        return disk_type in ("pd-standard", "pd-extreme")
    if mt.series == "e2":
        return disk_type in HYPERDISK or disk_type == "pd-extreme"
    if mt.series == "n1":
        return disk_type in ("hyperdisk-balanced", "hyperdisk-extreme", "pd-extreme")
    return False


# Confidential VM (compute/confidential-vm/docs/supported-configurations): AMD SEV / Intel TDX
# series only; never N1, E2, G2, A2 (nor the 8-GPU A3 of this catalog).
CONFIDENTIAL_SERIES = {"n2d", "c2d", "c3", "c3d"}


def machine_types_in(zone: str) -> list[MachineType]:
    gpus = set(ZONES[zone])
    return [m for m in MACHINE_TYPES.values() if m.gpu is None or m.gpu in gpus]


# ---------------------------------------------------------------------------- images
@dataclass(frozen=True)
class Image:
    project: str
    family: str
    name: str
    description: str
    disk_size_gb: int = 50
    deprecated: str | None = None  # None, DEPRECATED, OBSOLETE
    replacement_family: str | None = None
    # What the local VM's python3 is: "ferry" (the service's own interpreter, with the trainer's
    # packages, like a Deep Learning VM image) or "bare" (a plain OS image's python3, without
    # them: the default startup script takes its install path; see docs/local-vms.md).
    python: str = "ferry"


IMAGES = [
    Image("deeplearning-platform-release", "common-cu129-ubuntu-2204-nvidia-580",
          "common-cu129-v20250825-ubuntu-2204-py310", "Deep Learning VM: CUDA 12.9, NVIDIA 580, Ubuntu 22.04 (supported until 2028-08-04)"),
    Image("deeplearning-platform-release", "common-cu129-ubuntu-2404-nvidia-580",
          "common-cu129-v20250825-ubuntu-2404-py312", "Deep Learning VM: CUDA 12.9, NVIDIA 580, Ubuntu 24.04 (supported until 2028-08-04)"),
    Image("deeplearning-platform-release", "common-cu128-ubuntu-2204-nvidia-570",
          "common-cu128-v20250707-ubuntu-2204-py310", "Deep Learning VM: CUDA 12.8, NVIDIA 570 (end of support 2026-04-13)",
          deprecated="DEPRECATED", replacement_family="common-cu129-ubuntu-2204-nvidia-580"),
    Image("deeplearning-platform-release", "pytorch-2-7-cu128-ubuntu-2204-nvidia-570",
          "pytorch-2-7-cu128-v20250707-ubuntu-2204-py310", "Deep Learning VM: PyTorch 2.7, CUDA 12.8"),
    Image("debian-cloud", "debian-12", "debian-12-bookworm-v20250812", "Debian 12 bookworm", 10, python="bare"),
    Image("ubuntu-os-cloud", "ubuntu-2204-lts", "ubuntu-2204-jammy-v20250815", "Ubuntu 22.04 LTS", 10, python="bare"),
    Image("ubuntu-os-cloud", "ubuntu-2404-lts-amd64", "ubuntu-2404-noble-amd64-v20250815", "Ubuntu 24.04 LTS", 10, python="bare"),
]


def image_by_family(project: str, family: str) -> Image | None:
    return next((i for i in IMAGES if i.project == project and i.family == family), None)


def image_by_name(project: str, name: str) -> Image | None:
    return next((i for i in IMAGES if i.project == project and i.name == name), None)
