"""HTTP <-> models for the local Compute Engine: each handler takes the path parameters, the
query (dict of lists) and the JSON body, and returns (HTTP status, JSON object).

Lists page as GCE's do: `maxResults` (0-500, default 500, or the service's page size:
FERRY_LOCAL_PAGE_SIZE at start, or `POST /_ferry/settings {page_size}`), `pageToken` /
`nextPageToken`, `orderBy` ("name" or "creationTimestamp desc"), `filter`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
import zlib

from infra.local.compute import catalog
from infra.local.compute import exceptions as exc
from infra.local.compute.models import Compute, Firewalls, Operation
from infra.local.compute.resource import API, zone_link

OP_WAIT_MAX_S = 30.0  # the fast profile's hold; the service uses compute.timing.wait_max_s (gce: 120 s)


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
           "description": "Custom created machine type." if mt.custom else
                          f"{mt.cpus} vCPU{'s' if mt.cpus > 1 else ''}, {mt.memory_mb / 1024:g} GB RAM",
           "guestCpus": mt.cpus, "memoryMb": mt.memory_mb, "isSharedCpu": mt.shared_core,
           "maximumPersistentDisks": 128, "maximumPersistentDisksSizeGb": "263168", "zone": zone,
           "selfLink": f"{zone_link(project, zone)}/machineTypes/{mt.name}"}
    if mt.gpu:
        out["accelerators"] = [{"guestAcceleratorType": mt.gpu, "guestAcceleratorCount": mt.gpu_count}]
    return out


def _disk_type(project: str, zone: str, name: str) -> dict:
    desc, min_gb, default_gb = catalog.DISK_TYPES[name]
    return {"kind": "compute#diskType", "id": _sid(name), "name": name, "description": desc,
            "validDiskSize": f"{min_gb}GB-65536GB", "defaultDiskSizeGb": str(default_gb),
            "zone": zone_link(project, zone), "selfLink": f"{zone_link(project, zone)}/diskTypes/{name}"}


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


MAX_RESULTS = 500


def _query_key(q: dict) -> str:
    return hashlib.sha1(json.dumps([_q(q, "filter"), _q(q, "orderBy")]).encode()).hexdigest()[:12]


def _order(items: list, q: dict, key=lambda i: i) -> list:
    order = (_q(q, "orderBy") or "").strip()
    if not order:
        return items
    if order == "name":
        return sorted(items, key=lambda i: key(i).get("name", ""))
    if " ".join(order.split()) == "creationTimestamp desc":
        return sorted(items, key=lambda i: key(i).get("creationTimestamp") or key(i).get("insertTime") or "",
                      reverse=True)
    raise exc.invalid("orderBy", order, "Only sorting by 'name' or 'creationTimestamp desc' is supported.")


def _page(items: list, q: dict, default_size: int) -> tuple[list, str | None]:
    """One page of ITEMS (already filtered and ordered) and the next page's token."""
    raw = _q(q, "maxResults")
    if raw is None or raw == "":
        size = default_size
    else:
        if not raw.isdigit():
            raise exc.invalid_payload(f"Invalid value at 'max_results' (TYPE_UINT32), \"{raw}\"", "max_results")
        size = int(raw)
        if size > MAX_RESULTS:
            raise exc.invalid("maxResults", raw, f"Must be less than or equal to {MAX_RESULTS}")
        size = size or MAX_RESULTS
    offset = 0
    token = _q(q, "pageToken")
    if token:
        try:
            data = json.loads(base64.urlsafe_b64decode(token.encode() + b"=" * (-len(token) % 4)))
            offset, key = int(data["o"]), data["k"]
        except (ValueError, KeyError, TypeError):
            raise exc.invalid("pageToken", token, "Invalid page token.") from None
        if key != _query_key(q) or offset < 0:
            raise exc.invalid("pageToken", token, "The page token does not belong to this list request "
                              "(filter and orderBy must stay the same).")
    page = items[offset:offset + size]
    if offset + size < len(items):
        nxt = base64.urlsafe_b64encode(json.dumps({"o": offset + size, "k": _query_key(q)}).encode()).decode().rstrip("=")
        return page, nxt
    return page, None


def _filtered(items: list, q: dict) -> list:
    from infra.local.compute.filters import compile_filter

    pred = compile_filter(_q(q, "filter"))
    return [i for i in items if pred(i)]


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

    def _paged(self, kind: str, self_link: str, items: list[dict], q: dict, filtered: bool = False) -> tuple[int, dict]:
        if not filtered:
            items = _filtered(items, q)
        page, nxt = _page(_order(items, q), q, self.compute.page_size)
        out = _list(kind, self_link, page)
        if nxt:
            out["nextPageToken"] = nxt
        return 200, out

    # ------------------------------------------------------------------ instances
    def list_instances(self, p, q, body):
        zone = self._zone(p)
        items = self.compute.list_instances(p["project"], zone, _q(q, "filter")).get(zone, [])
        return self._paged("compute#instanceList", f"{zone_link(p['project'], zone)}/instances", items, q, True)

    def aggregated_instances(self, p, q, body):
        found = self.compute.list_instances(p["project"], None, _q(q, "filter"))
        flat = _order([(zone, i) for zone in catalog.ZONES for i in found.get(zone, [])], q, key=lambda zi: zi[1])
        page, nxt = _page(flat, q, self.compute.page_size)
        on_page: dict[str, list] = {}
        for zone, inst in page:
            on_page.setdefault(zone, []).append(inst)
        items = {}
        for zone in catalog.ZONES:
            if zone in on_page:
                items[f"zones/{zone}"] = {"instances": on_page[zone]}
            elif (_q(q, "includeAllScopes") or "").lower() == "true":
                items[f"zones/{zone}"] = {"warning": {
                    "code": "NO_RESULTS_ON_PAGE",
                    "message": "There are no results for scope 'zones/%s' on this page." % zone,
                    "data": [{"key": "scope", "value": f"zones/{zone}"}]}}
        out = {"kind": "compute#instanceAggregatedList", "id": f"projects/{p['project']}/aggregated/instances",
               "items": items, "selfLink": f"{API}/projects/{p['project']}/aggregated/instances"}
        if (_q(q, "returnPartialSuccess") or "").lower() == "true":
            out["unreachables"] = []
        if nxt:
            out["nextPageToken"] = nxt
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

    def set_tags(self, p, q, body):
        return self._op(self.compute.set_tags(p["project"], p["zone"], p["name"], body or {}))

    def reset_instance(self, p, q, body):
        return self._op(self.compute.reset(p["project"], p["zone"], p["name"]))

    def set_deletion_protection(self, p, q, body):
        raw = (_q(q, "deletionProtection") or "true").lower()
        if raw not in ("true", "false"):
            raise exc.invalid_payload(f"Invalid value at 'deletion_protection' (TYPE_BOOL), \"{raw}\"",
                                      "deletion_protection")
        return self._op(self.compute.set_deletion_protection(p["project"], p["zone"], p["name"], raw == "true"))

    def serial_port_output(self, p, q, body):
        port, start = _q(q, "port") or "1", _q(q, "start") or "0"
        if not port.isdigit() or not start.lstrip("-").isdigit():
            raise exc.invalid("port" if not port.isdigit() else "start", port if not port.isdigit() else start,
                              "Must be an integer.")
        return 200, self.compute.serial_port_output(p["project"], p["zone"], p["name"], int(port), int(start))

    # ------------------------------------------------------------------ disks, project, networks
    def list_disks(self, p, q, body):
        zone = self._zone(p)
        return self._paged("compute#diskList", f"{zone_link(p['project'], zone)}/disks",
                           self.compute.list_disks(p["project"], zone), q)

    def get_disk(self, p, q, body):
        return 200, self.compute.get_disk(p["project"], self._zone(p), p["disk"])

    def list_disk_types(self, p, q, body):
        zone = self._zone(p)
        items = [_disk_type(p["project"], zone, d) for d in catalog.DISK_TYPES]
        return self._paged("compute#diskTypeList", f"{zone_link(p['project'], zone)}/diskTypes", items, q)

    def get_disk_type(self, p, q, body):
        zone = self._zone(p)
        if p["dt"] not in catalog.DISK_TYPES:
            raise exc.not_found(f"projects/{p['project']}/zones/{zone}/diskTypes/{p['dt']}")
        return 200, _disk_type(p["project"], zone, p["dt"])

    def get_project(self, p, q, body):
        project = p["project"]
        number = str(zlib.crc32(project.encode()) % 10**12 + 10**11)
        quotas = [{"metric": "GPUS_ALL_REGIONS", "limit": self.compute.quotas.limit("global", "GPUS_ALL_REGIONS"),
                   "usage": self.compute.global_gpu_usage(project)},
                  {"metric": "NETWORKS", "limit": 15.0, "usage": 1.0},
                  {"metric": "FIREWALLS", "limit": 200.0, "usage": float(len(self.firewalls.list(project, None)))}]
        return 200, {"kind": "compute#project", "id": number, "name": project,
                     "creationTimestamp": "2024-01-01T00:00:00.000-08:00",
                     "commonInstanceMetadata": {"kind": "compute#metadata", "fingerprint": "ZmVycnktbG9jYWw=", "items": []},
                     "quotas": quotas, "selfLink": f"{API}/projects/{project}",
                     "defaultServiceAccount": f"{number}-compute@developer.gserviceaccount.com",
                     "xpnProjectStatus": "UNSPECIFIED_XPN_PROJECT_STATUS", "defaultNetworkTier": "PREMIUM",
                     "vmDnsSetting": "ZONAL_ONLY"}

    @staticmethod
    def _network(project: str) -> dict:
        return {"kind": "compute#network", "id": _sid(f"{project}/default"), "name": "default",
                "description": "Default network for the project", "autoCreateSubnetworks": True,
                "creationTimestamp": "2024-01-01T00:00:00.000-08:00", "mtu": 1460,
                "routingConfig": {"routingMode": "REGIONAL"},
                "networkFirewallPolicyEnforcementOrder": "AFTER_CLASSIC_FIREWALL",
                "subnetworks": [f"{API}/projects/{project}/regions/{r}/subnetworks/default" for r in catalog.REGIONS],
                "selfLink": f"{API}/projects/{project}/global/networks/default",
                "selfLinkWithId": f"{API}/projects/{project}/global/networks/{_sid(project + '/default')}"}

    def list_networks(self, p, q, body):
        return self._paged("compute#networkList", f"{API}/projects/{p['project']}/global/networks",
                           [self._network(p["project"])], q)

    def get_network(self, p, q, body):
        if p["net"] != "default":
            raise exc.not_found(f"projects/{p['project']}/global/networks/{p['net']}")
        return 200, self._network(p["project"])

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
        # as GCE: DONE as soon as the operation is, else the operation as it is at the hold limit
        op.wait(self.compute.timing.wait_max_s)
        return self._op(op)

    def list_zone_operations(self, p, q, body):
        zone = self._zone(p)
        return self._paged("compute#operationList", f"{zone_link(p['project'], zone)}/operations",
                           self.compute.list_operations(p["project"], zone), q)

    def list_global_operations(self, p, q, body):
        return self._paged("compute#operationList", f"{API}/projects/{p['project']}/global/operations",
                           self.compute.list_operations(p["project"], None), q)

    def get_global_operation(self, p, q, body):
        return self._op(self.compute.get_operation(p["project"], None, p["op"]))

    def wait_global_operation(self, p, q, body):
        op = self.compute.get_operation(p["project"], None, p["op"])
        op.wait(self.compute.timing.wait_max_s)
        return self._op(op)

    # ------------------------------------------------------------------ catalog
    def list_zones(self, p, q, body):
        items = [_zone_resource(p["project"], z) for z in catalog.ZONES]
        return self._paged("compute#zoneList", f"{API}/projects/{p['project']}/zones", items, q)

    def get_zone(self, p, q, body):
        if p["zone"] not in catalog.ZONES:
            raise exc.not_found(f"projects/{p['project']}/zones/{p['zone']}")
        return 200, _zone_resource(p["project"], p["zone"])

    def _region(self, project: str, region: str) -> dict:
        zones = [z for z in catalog.ZONES if catalog.region_of(z) == region]
        quotas = self.compute.region_quotas(project, region)
        return {"kind": "compute#region", "id": _sid(region), "name": region, "status": "UP",
                "zones": [zone_link(project, z) for z in zones], "quotas": quotas,
                "selfLink": f"{API}/projects/{project}/regions/{region}"}

    def list_regions(self, p, q, body):
        items = [self._region(p["project"], r) for r in catalog.REGIONS]
        return self._paged("compute#regionList", f"{API}/projects/{p['project']}/regions", items, q)

    def get_region(self, p, q, body):
        if p["region"] not in catalog.REGIONS:
            raise exc.not_found(f"projects/{p['project']}/regions/{p['region']}")
        return 200, self._region(p["project"], p["region"])

    def list_machine_types(self, p, q, body):
        zone = self._zone(p)
        items = [_machine_type(p["project"], zone, m) for m in catalog.machine_types_in(zone)]
        return self._paged("compute#machineTypeList", f"{zone_link(p['project'], zone)}/machineTypes", items, q)

    def get_machine_type(self, p, q, body):
        zone = self._zone(p)
        mt = catalog.lookup_machine_type(p["mt"], zone)
        if isinstance(mt, str):
            raise exc.invalid("machineType", p["mt"], mt)
        if mt is None:
            raise exc.not_found(f"projects/{p['project']}/zones/{zone}/machineTypes/{p['mt']}")
        return 200, _machine_type(p["project"], zone, mt)

    def list_accelerator_types(self, p, q, body):
        zone = self._zone(p)
        items = [_accelerator_type(p["project"], zone, a) for a in catalog.ZONES[zone]]
        return self._paged("compute#acceleratorTypeList", f"{zone_link(p['project'], zone)}/acceleratorTypes", items, q)

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
        return self._paged("compute#imageList", f"{API}/projects/{p['project']}/global/images", items, q)

    # ------------------------------------------------------------------ firewalls
    def list_firewalls(self, p, q, body):
        return self._paged("compute#firewallList", f"{API}/projects/{p['project']}/global/firewalls",
                           self.firewalls.list(p["project"], _q(q, "filter")), q, True)

    def insert_firewall(self, p, q, body):
        return self._op(self.firewalls.insert(p["project"], body or {}))

    def get_firewall(self, p, q, body):
        return 200, self.firewalls.get(p["project"], p["fw"])

    def delete_firewall(self, p, q, body):
        return self._op(self.firewalls.delete(p["project"], p["fw"]))
