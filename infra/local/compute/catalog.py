"""Static Compute Engine facts the local server serves: zones, machine types, GPUs, images.

Approximate, from Google's public documentation (gpus/gpu-regions-zones, machine-resource
pages), as of 2025-2026; real availability changes. One table each, nothing else here.
"""

from __future__ import annotations

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

    @property
    def series(self) -> str:
        return self.name.split("-", 1)[0]


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
    Image("debian-cloud", "debian-12", "debian-12-bookworm-v20250812", "Debian 12 bookworm", 10),
    Image("ubuntu-os-cloud", "ubuntu-2204-lts", "ubuntu-2204-jammy-v20250815", "Ubuntu 22.04 LTS", 10),
    Image("ubuntu-os-cloud", "ubuntu-2404-lts-amd64", "ubuntu-2404-noble-amd64-v20250815", "Ubuntu 24.04 LTS", 10),
]


def image_by_family(project: str, family: str) -> Image | None:
    return next((i for i in IMAGES if i.project == project and i.family == family), None)


def image_by_name(project: str, name: str) -> Image | None:
    return next((i for i in IMAGES if i.project == project and i.name == name), None)
