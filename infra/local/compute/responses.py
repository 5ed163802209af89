"""HTTP <-> models for the local Compute Engine: each handler takes the path parameters, the
query (dict of lists) and the JSON body, and returns (HTTP status, JSON object)."""

from __future__ import annotations

import time
import zlib

from infra.local.compute import catalog
from infra.local.compute import exceptions as exc
from infra.local.compute.models import Compute, Firewalls, Operation
from infra.local.compute.resource import API, zone_link

OP_WAIT_MAX_S = 30.0  # GCE's wait returns within ~2 minutes; ours sooner, still best effort


def _sid(text: str) -> str:
    """A stable numeric id for a catalog entry (the same in every run)."""
    return str(zlib.crc32(text.encode()) * 7919 + 10**12)


def _q(query: dict, key: str) -> str | None:
    values = query.get(key)
    return values[0] if values else None


def _zone_resource(project: str, zone: str) -> dict:
    region = catalog.region_of(zone)
    return {"kind": "compute#zone", "id": _sid(zone), "name": zone, "status": "UP",
            "description": zone, "region": f"{API}/projects/{project}/regions/{region}",
            "selfLink": zone_link(project, zone), "availableCpuPlatforms": ["AMD Milan", "Intel Cascade Lake"],
            "supportsPzs": False}


def _machine_type(project: str, zone: str, mt: catalog.MachineType) -> dict:
    out = {"kind": "compute#machineType", "id": _sid(mt.name), "name": mt.name,
           "description": f"{mt.cpus} vCPU{'s' if mt.cpus > 1 else ''}, {mt.memory_mb / 1024:g} GB RAM",
           "guestCpus": mt.cpus, "memoryMb": mt.memory_mb, "isSharedCpu": mt.shared_core,
           "maximumPersistentDisks": 128, "maximumPersistentDisksSizeGb": "263168", "zone": zone,
           "selfLink": f"{zone_link(project, zone)}/machineTypes/{mt.name}"}
    if mt.gpu:
        out["accelerators"] = [{"guestAcceleratorType": mt.gpu, "guestAcceleratorCount": mt.gpu_count}]
    return out


def _accelerator_type(project: str, zone: str, name: str) -> dict:
    n1 = catalog.N1_GPUS.get(name)
    return {"kind": "compute#acceleratorType", "id": _sid(name), "name": name,
            "description": catalog.ALL_GPUS[name], "zone": zone_link(project, zone),
            "maximumCardsPerInstance": max(n1[1]) if n1 else 8,
            "selfLink": f"{zone_link(project, zone)}/acceleratorTypes/{name}"}


def _image(img: catalog.Image) -> dict:
    out = {"kind": "compute#image", "id": _sid(img.name), "name": img.name,
           "family": img.family, "description": img.description, "status": "READY",
           "diskSizeGb": str(img.disk_size_gb), "architecture": "X86_64", "sourceType": "RAW",
           "creationTimestamp": "2025-08-25T00:00:00.000-07:00",
           "licenses": [f"{API}/projects/{img.project}/global/licenses/{img.family}"],
           "selfLink": f"{API}/projects/{img.project}/global/images/{img.name}"}
    if img.deprecated:
        out["deprecated"] = {"state": img.deprecated,
                             "replacement": f"{API}/projects/{img.project}/global/images/family/{img.replacement_family}"}
    return out


def _list(kind: str, self_link: str, items: list[dict]) -> dict:
    return {"kind": kind, "id": self_link, "items": items, "selfLink": self_link}


class ComputeResponses:
    def __init__(self, compute: Compute):
        self.compute = compute
        self.firewalls = Firewalls(compute)

    def _zone(self, p: dict) -> str:
        self.compute.check_zone(p["project"], p["zone"])
        return p["zone"]

    @staticmethod
    def _op(op: Operation) -> tuple[int, dict]:
        return 200, op.to_dict()

    # ------------------------------------------------------------------ instances
    def list_instances(self, p, q, body):
        zone = self._zone(p)
        items = self.compute.list_instances(p["project"], zone, _q(q, "filter")).get(zone, [])
        return 200, _list("compute#instanceList", f"{zone_link(p['project'], zone)}/instances", items)

    def aggregated_instances(self, p, q, body):
        found = self.compute.list_instances(p["project"], None, _q(q, "filter"))
        items = {}
        for zone in catalog.ZONES:
            if zone in found:
                items[f"zones/{zone}"] = {"instances": found[zone]}
            elif (_q(q, "includeAllScopes") or "").lower() == "true":
                items[f"zones/{zone}"] = {"warning": {
                    "code": "NO_RESULTS_ON_PAGE",
                    "message": "There are no results for scope 'zones/%s' on this page." % zone,
                    "data": [{"key": "scope", "value": f"zones/{zone}"}]}}
        out = {"kind": "compute#instanceAggregatedList", "id": f"projects/{p['project']}/aggregated/instances",
               "items": items, "selfLink": f"{API}/projects/{p['project']}/aggregated/instances"}
        if (_q(q, "returnPartialSuccess") or "").lower() == "true":
            out["unreachables"] = []
        return 200, out

    def insert_instance(self, p, q, body):
        return self._op(self.compute.insert(p["project"], p["zone"], body or {}, _q(q, "requestId")))

    def get_instance(self, p, q, body):
        return 200, self.compute.instance_view(p["project"], p["zone"], p["name"])

    def delete_instance(self, p, q, body):
        return self._op(self.compute.delete(p["project"], p["zone"], p["name"]))

    def stop_instance(self, p, q, body):
        return self._op(self.compute.stop(p["project"], p["zone"], p["name"]))

    def start_instance(self, p, q, body):
        return self._op(self.compute.start(p["project"], p["zone"], p["name"]))

    def set_metadata(self, p, q, body):
        return self._op(self.compute.set_metadata(p["project"], p["zone"], p["name"], body or {}))

    def set_labels(self, p, q, body):
        return self._op(self.compute.set_labels(p["project"], p["zone"], p["name"], body or {}))

    def guest_attributes(self, p, q, body):
        return 200, self.compute.guest_attributes(p["project"], p["zone"], p["name"],
                                                  _q(q, "queryPath"), _q(q, "variableKey"))

    # ------------------------------------------------------------------ operations
    def get_zone_operation(self, p, q, body):
        return self._op(self.compute.get_operation(p["project"], self._zone(p), p["op"]))

    def wait_zone_operation(self, p, q, body):
        op = self.compute.get_operation(p["project"], self._zone(p), p["op"])
        hold = self.compute.faults.wait_hold()
        if hold is not None:  # GCE may hold the call up to ~2 min, answering DONE or not
            time.sleep(hold)
            return self._op(op)
        op.wait(OP_WAIT_MAX_S)
        return self._op(op)

    def get_global_operation(self, p, q, body):
        return self._op(self.compute.get_operation(p["project"], None, p["op"]))

    def wait_global_operation(self, p, q, body):
        op = self.compute.get_operation(p["project"], None, p["op"])
        op.wait(OP_WAIT_MAX_S)
        return self._op(op)

    # ------------------------------------------------------------------ catalog
    def list_zones(self, p, q, body):
        items = [_zone_resource(p["project"], z) for z in catalog.ZONES]
        return 200, _list("compute#zoneList", f"{API}/projects/{p['project']}/zones", items)

    def get_zone(self, p, q, body):
        if p["zone"] not in catalog.ZONES:
            raise exc.not_found(f"projects/{p['project']}/zones/{p['zone']}")
        return 200, _zone_resource(p["project"], p["zone"])

    def _region(self, project: str, region: str) -> dict:
        zones = [z for z in catalog.ZONES if catalog.region_of(z) == region]
        quotas = [{"metric": "CPUS", "limit": 2400.0, "usage": 0.0}]
        gpus = sorted({g for z in zones for g in catalog.ZONES[z]})
        from infra.local.compute.faults import gpu_quota_metric
        for g in gpus:
            quotas.append({"metric": gpu_quota_metric(g), "limit": 8.0, "usage": 0.0})
            quotas.append({"metric": gpu_quota_metric(g, spot=True), "limit": 8.0, "usage": 0.0})
        return {"kind": "compute#region", "id": _sid(region), "name": region, "status": "UP",
                "zones": [zone_link(project, z) for z in zones], "quotas": quotas,
                "selfLink": f"{API}/projects/{project}/regions/{region}"}

    def list_regions(self, p, q, body):
        items = [self._region(p["project"], r) for r in catalog.REGIONS]
        return 200, _list("compute#regionList", f"{API}/projects/{p['project']}/regions", items)

    def get_region(self, p, q, body):
        if p["region"] not in catalog.REGIONS:
            raise exc.not_found(f"projects/{p['project']}/regions/{p['region']}")
        return 200, self._region(p["project"], p["region"])

    def list_machine_types(self, p, q, body):
        zone = self._zone(p)
        items = [_machine_type(p["project"], zone, m) for m in catalog.machine_types_in(zone)]
        from infra.local.compute.filters import compile_filter
        pred = compile_filter(_q(q, "filter"))
        return 200, _list("compute#machineTypeList", f"{zone_link(p['project'], zone)}/machineTypes",
                          [i for i in items if pred(i)])

    def get_machine_type(self, p, q, body):
        zone = self._zone(p)
        mt = catalog.MACHINE_TYPES.get(p["mt"])
        if mt is None or mt not in catalog.machine_types_in(zone):
            raise exc.not_found(f"projects/{p['project']}/zones/{zone}/machineTypes/{p['mt']}")
        return 200, _machine_type(p["project"], zone, mt)

    def list_accelerator_types(self, p, q, body):
        zone = self._zone(p)
        items = [_accelerator_type(p["project"], zone, a) for a in catalog.ZONES[zone]]
        return 200, _list("compute#acceleratorTypeList", f"{zone_link(p['project'], zone)}/acceleratorTypes", items)

    def get_accelerator_type(self, p, q, body):
        zone = self._zone(p)
        if p["acc"] not in catalog.ZONES[zone]:
            raise exc.not_found(f"projects/{p['project']}/zones/{zone}/acceleratorTypes/{p['acc']}")
        return 200, _accelerator_type(p["project"], zone, p["acc"])

    def image_from_family(self, p, q, body):
        img = catalog.image_by_family(p["project"], p["family"])
        if img is None:
            raise exc.not_found(f"projects/{p['project']}/global/images/family/{p['family']}")
        return 200, _image(img)

    def get_image(self, p, q, body):
        img = catalog.image_by_name(p["project"], p["image"])
        if img is None:
            raise exc.not_found(f"projects/{p['project']}/global/images/{p['image']}")
        return 200, _image(img)

    def list_images(self, p, q, body):
        items = [_image(i) for i in catalog.IMAGES if i.project == p["project"]]
        return 200, _list("compute#imageList", f"{API}/projects/{p['project']}/global/images", items)

    # ------------------------------------------------------------------ firewalls
    def list_firewalls(self, p, q, body):
        return 200, _list("compute#firewallList", f"{API}/projects/{p['project']}/global/firewalls",
                          self.firewalls.list(p["project"], _q(q, "filter")))

    def insert_firewall(self, p, q, body):
        return self._op(self.firewalls.insert(p["project"], body or {}))

    def get_firewall(self, p, q, body):
        return 200, self.firewalls.get(p["project"], p["fw"])

    def delete_firewall(self, p, q, body):
        return self._op(self.firewalls.delete(p["project"], p["fw"]))
