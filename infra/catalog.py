"""The GPU catalog (infra/gpus.yaml): names, aliases, machine series, counts, prices, end of life.

Pure data and lookups; imports nothing heavy (the `gpus` command and dry runs use it).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from pathlib import Path

from infra.errors import UsageError, unknown

DATA = Path(__file__).with_name("gpus.yaml")


@dataclass(frozen=True)
class Gpu:
    name: str                      # short name, e.g. t4
    api: str                       # accelerator type, e.g. nvidia-tesla-t4
    aliases: tuple[str, ...]
    memory_gb: int
    series: str                    # N1, G2, A2, ...
    attach: str                    # "accelerator" (N1 + guestAccelerators) or "machine-type"
    counts: tuple[int, ...]
    machine_types: dict            # count -> default machine type
    quota_metric: str
    price: dict                    # see gpus.yaml
    end_of_life: str | None = None
    successor: str | None = None

    @property
    def retired(self) -> bool:
        return self.end_of_life is not None

    def machine_type(self, count: int) -> str:
        return self.machine_types[count]

    def check_count(self, count: int) -> None:
        if count not in self.counts:
            allowed = ", ".join(str(c) for c in self.counts)
            raise UsageError(f"invalid GPU count {count} for {self.name}", hint=f"valid counts: {allowed}")


@dataclass(frozen=True)
class Catalog:
    gpus: tuple[Gpu, ...]
    n1: dict
    sources: dict
    by_name: dict = field(default_factory=dict, compare=False)

    def names(self) -> list[str]:
        return sorted(self.by_name)

    def find(self, name: str) -> Gpu:
        """A GPU by short name, alias or API name (case-insensitive)."""
        key = name.strip().lower()
        if key in self.by_name:
            return self.by_name[key]
        raise unknown("GPU", name, [g.name for g in self.gpus])

    def by_api(self, api: str) -> Gpu | None:
        return self.by_name.get(api.lower())

    def by_machine_type(self, machine_type: str) -> tuple[Gpu, int] | None:
        for gpu in self.gpus:
            if gpu.attach == "machine-type":
                for count, mt in gpu.machine_types.items():
                    if mt == machine_type:
                        return gpu, count
        return None

    # ------------------------------------------------------------------ prices
    def n1_host_price(self, machine_type: str, spot: bool = False) -> float | None:
        """vCPU + memory price of an N1 machine type (n1-standard/highmem/highcpu-N)."""
        m = re.fullmatch(r"n1-(standard|highmem|highcpu)-(\d+)", machine_type)
        if not m:
            return None
        vcpus = int(m.group(2))
        gb = vcpus * {"standard": 3.75, "highmem": 6.5, "highcpu": 0.9}[m.group(1)]
        vcpu_rate = self.n1["spot_vcpu_hour" if spot else "vcpu_hour"]
        gb_rate = self.n1["spot_gb_hour" if spot else "gb_hour"]
        return vcpus * vcpu_rate + gb * gb_rate

    def price(self, gpu: Gpu | None, count: int, machine_type: str, spot: bool = False) -> float | None:
        """Approximate USD per hour of the whole VM, or None when the catalog cannot tell."""
        if gpu is None:
            return self.n1_host_price(machine_type, spot)
        if gpu.attach == "accelerator":
            host = self.n1_host_price(machine_type, spot)
            per_gpu = gpu.price["spot_gpu" if spot else "gpu"]
            return None if host is None else round(host + per_gpu * count, 4)
        table = gpu.price["spot_vm" if spot else "vm"]
        return table.get(count)


def _parse(data: dict) -> Catalog:
    gpus = []
    by_name: dict = {}
    for item in data["gpus"]:
        gpu = Gpu(
            name=item["name"],
            api=item["api"],
            aliases=tuple(item.get("aliases", ())),
            memory_gb=int(item["memory_gb"]),
            series=item["series"],
            attach=item["attach"],
            counts=tuple(int(c) for c in item["counts"]),
            machine_types={int(k): v for k, v in item["machine_types"].items()},
            quota_metric=item["quota_metric"],
            price={k: ({int(c): p for c, p in v.items()} if isinstance(v, dict) else v) for k, v in item["price"].items()},
            end_of_life=str(item["end_of_life"]) if item.get("end_of_life") else None,
            successor=item.get("successor"),
        )
        gpus.append(gpu)
        for key in (gpu.name, gpu.api, *gpu.aliases):
            by_name[key.lower()] = gpu
    return Catalog(gpus=tuple(gpus), n1=data["n1"], sources=data["sources"], by_name=by_name)


@functools.lru_cache(maxsize=1)
def load() -> Catalog:
    import yaml

    return _parse(yaml.safe_load(DATA.read_text()))


def parse_gpu_spec(spec: str) -> tuple[Gpu, int]:
    """`t4`, `v100:2`, `nvidia-tesla-t4:4` -> (Gpu, count); bad names/counts are UsageErrors."""
    name, sep, count_text = spec.partition(":")
    gpu = load().find(name)
    if sep:
        if not count_text.isdigit():
            raise UsageError(f"invalid GPU count {count_text!r} in {spec!r}", hint="use NAME:COUNT, e.g. t4:2")
        count = int(count_text)
    else:
        count = gpu.counts[0]
    gpu.check_count(count)
    return gpu, count
