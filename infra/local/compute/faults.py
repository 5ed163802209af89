"""Faults injected on demand through the control interface.

A fault persists until it is consumed (when it has a `count`) or cleared. Kinds:

| kind | params | effect |
|---|---|---|
| `stockout` | zone, accelerator?, zones_available?, count? | insert in zone fails: ZONE_RESOURCE_POOL_EXHAUSTED (`..._WITH_DETAILS` + zonesAvailable when given) |
| `quota` | region?, accelerator?, limit=0, count? | GPU insert fails: QUOTA_EXCEEDED, regional metric (NVIDIA_T4_GPUS...) with region, else GPUS_ALL_REGIONS |
| `http_error` | status=503, count=1, service=compute, method?, path? | the next `count` matching calls answer that HTTP error |
| `slow_operations` | delay_s=2.0 | every operation step takes delay_s longer |
| `stockout_after_insert` | zone?, after_s=0.3, count=1 | insert succeeds, the VM is RUNNING, then TERMINATED after after_s |
| `hold_wait` | hold_s=10, count? | each `zoneOperations.wait` answers only after hold_s, DONE or not (GCE holds it ~2 min) |
| `slow_calls` | delay_s=2, service=compute, method?, path?, count? | matching calls answer delay_s late (a slow API, a held call) |
"""

from __future__ import annotations

import itertools
import threading

from infra.local.compute import catalog
from infra.local.compute.exceptions import OperationFailure, quota_exceeded, zone_exhausted

KINDS = {
    "stockout": {"zone", "accelerator", "zones_available", "count"},
    "quota": {"region", "accelerator", "limit", "count"},
    "http_error": {"status", "count", "service", "method", "path"},
    "slow_operations": {"delay_s"},
    "stockout_after_insert": {"zone", "after_s", "count"},
    "hold_wait": {"hold_s", "count"},
    "slow_calls": {"delay_s", "service", "method", "path", "count"},
}


class FaultError(ValueError):
    """A fault request that makes no sense (control answers 400)."""


def gpu_quota_metric(accelerator: str, spot: bool = False) -> str:
    short = accelerator.removeprefix("nvidia-tesla-").removeprefix("nvidia-")
    short = {"h100-80gb": "h100", "h100-mega-80gb": "h100_mega", "h200-141gb": "h200"}.get(short, short)
    metric = f"NVIDIA_{short.upper().replace('-', '_')}_GPUS"
    return f"PREEMPTIBLE_{metric}" if spot else metric


def _validate(kind: str, params: dict) -> dict:
    if kind not in KINDS:
        raise FaultError(f"unknown fault kind {kind!r} (valid: {', '.join(sorted(KINDS))})")
    extra = set(params) - KINDS[kind]
    if extra:
        raise FaultError(f"fault {kind!r} takes no {', '.join(sorted(extra))} (valid: {', '.join(sorted(KINDS[kind]))})")
    p = dict(params)
    if kind in ("stockout",) and not p.get("zone"):
        raise FaultError("fault 'stockout' needs zone")
    for key in ("zone",):
        if p.get(key) and p[key] not in catalog.ZONES:
            raise FaultError(f"unknown zone {p[key]!r}")
    if p.get("region") and p["region"] not in catalog.REGIONS:
        raise FaultError(f"unknown region {p['region']!r}")
    if p.get("accelerator") and p["accelerator"] not in catalog.ALL_GPUS:
        raise FaultError(f"unknown accelerator {p['accelerator']!r}")
    if isinstance(p.get("zones_available"), str):
        p["zones_available"] = [z for z in p["zones_available"].split(",") if z]
    if kind == "http_error":
        p.setdefault("status", 503)
        p.setdefault("count", 1)
        p.setdefault("service", "compute")
        if int(p["status"]) < 400 or int(p["status"]) > 599:
            raise FaultError("http_error status must be 4xx or 5xx")
        if p["service"] not in ("compute", "storage"):
            raise FaultError("http_error service must be compute or storage")
    if kind == "slow_operations":
        p["delay_s"] = float(p.get("delay_s", 2.0))
    if kind == "stockout_after_insert":
        p.setdefault("count", 1)
        p["after_s"] = float(p.get("after_s", 0.3))
    if kind == "quota":
        p["limit"] = float(p.get("limit", 0))
    if kind == "slow_calls":
        p["delay_s"] = float(p.get("delay_s", 2.0))
        p.setdefault("service", "compute")
        if p["service"] not in ("compute", "storage"):
            raise FaultError("slow_calls service must be compute or storage")
        if not 0 <= p["delay_s"] <= 600:
            raise FaultError("slow_calls delay_s must be from 0 to 600")
    if kind == "hold_wait":
        p["hold_s"] = float(p.get("hold_s", 10.0))
        if not 0 <= p["hold_s"] <= 600:
            raise FaultError("hold_wait hold_s must be from 0 to 600")
    if p.get("count") is not None:
        p["count"] = int(p["count"])
        if p["count"] < 1:
            raise FaultError("count must be at least 1")
    return p


class Faults:
    def __init__(self):
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._faults: list[dict] = []

    def add(self, kind: str, params: dict) -> dict:
        fault = {"id": next(self._ids), "kind": kind, "params": _validate(kind, params)}
        with self._lock:
            self._faults.append(fault)
        return fault

    def list(self) -> list[dict]:
        with self._lock:
            return [dict(f) for f in self._faults]

    def clear(self) -> int:
        with self._lock:
            n = len(self._faults)
            self._faults.clear()
            return n

    def _take(self, fault: dict) -> None:
        """Consume one use of a counted fault (caller holds the lock)."""
        count = fault["params"].get("count")
        if count is None:
            return
        if count <= 1:
            self._faults.remove(fault)
        else:
            fault["params"]["count"] = count - 1

    # ------------------------------------------------------------------ queries
    def http_error(self, service: str, method: str, path: str) -> int | None:
        with self._lock:
            for f in self._faults:
                p = f["params"]
                if f["kind"] != "http_error" or p["service"] != service:
                    continue
                if p.get("method") and p["method"].upper() != method:
                    continue
                if p.get("path") and p["path"] not in path:
                    continue
                self._take(f)
                return int(p["status"])
        return None

    def call_delay(self, service: str, method: str, path: str) -> float:
        """Seconds a matching call must wait before it is answered (slow_calls faults)."""
        delay = 0.0
        with self._lock:
            for f in list(self._faults):
                p = f["params"]
                if f["kind"] != "slow_calls" or p["service"] != service:
                    continue
                if (p.get("method") and p["method"].upper() != method) or (p.get("path") and p["path"] not in path):
                    continue
                self._take(f)
                delay += p["delay_s"]
        return delay

    def operation_delay(self) -> float:
        with self._lock:
            return sum(f["params"]["delay_s"] for f in self._faults if f["kind"] == "slow_operations")

    def insert_failure(self, project: str, zone: str, machine_type: str, accelerator: str | None,
                       spot: bool) -> OperationFailure | None:
        """The error an insert meets, if a stockout or quota fault applies to it."""
        with self._lock:
            for f in self._faults:
                p = f["params"]
                if f["kind"] == "stockout" and p["zone"] == zone:
                    if p.get("accelerator") and p["accelerator"] != accelerator:
                        continue
                    self._take(f)
                    return zone_exhausted(project, zone, machine_type, accelerator, p.get("zones_available"))
                if f["kind"] == "quota" and accelerator:
                    if p.get("region") and p["region"] != catalog.region_of(zone):
                        continue
                    if p.get("accelerator") and p["accelerator"] != accelerator:
                        continue
                    self._take(f)
                    if p.get("region"):
                        return quota_exceeded(gpu_quota_metric(accelerator, spot), p["limit"], p["region"])
                    return quota_exceeded("GPUS_ALL_REGIONS", p["limit"], None)
        return None

    def wait_hold(self) -> float | None:
        """Seconds the next zoneOperations.wait must be held, if a hold_wait fault applies."""
        with self._lock:
            for f in self._faults:
                if f["kind"] == "hold_wait":
                    self._take(f)
                    return f["params"]["hold_s"]
        return None

    def stockout_after_insert(self, zone: str) -> float | None:
        with self._lock:
            for f in self._faults:
                p = f["params"]
                if f["kind"] == "stockout_after_insert" and (not p.get("zone") or p["zone"] == zone):
                    self._take(f)
                    return p["after_s"]
        return None
