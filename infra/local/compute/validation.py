"""The rules of instances.insert and of metadata/labels, as Compute Engine applies them: a request
body becomes the stored instance resource, or a GceError (400/404) saying what is wrong.

Every body is first checked against the official schema (schema.py: unknown fields, JSON
types, enum values); fields the emulator does not act on (shieldedInstanceConfig, tags,
confidentialInstanceConfig, data disks, ...) are stored and returned as sent."""

from __future__ import annotations

import copy
import zlib
import re

from infra.local.compute import catalog
from infra.local.compute import exceptions as exc
from infra.local.compute import schema
from infra.local.compute.resource import API, fingerprint, last, new_id, now_rfc3339, zone_link

NAME_RE = re.compile(r"[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?")
LABEL_KEY_RE = re.compile(r"[a-z][a-z0-9_-]{0,62}")
LABEL_VALUE_RE = re.compile(r"[a-z0-9_-]{0,63}")
METADATA_KEY_RE = re.compile(r"[a-zA-Z0-9_-]{1,128}")
MAX_RUN_MIN_S, MAX_RUN_MAX_S = 30, 120 * 24 * 3600


def duration_seconds(value) -> float:
    if isinstance(value, dict):
        return float(value.get("seconds", 0) or 0) + float(value.get("nanos", 0) or 0) / 1e9
    return float(value)


# [Output Only] fields of an Instance (a client may send them back; GCE ignores them) and
# input-only ones GCE does not return.
_NOT_STORED = ("id", "kind", "creationTimestamp", "status", "statusMessage", "selfLink", "zone", "cpuPlatform",
               "labelFingerprint", "fingerprint", "startRestricted", "lastStartTimestamp", "lastStopTimestamp",
               "lastSuspendedTimestamp", "resourceStatus", "satisfiesPzs", "satisfiesPzi", "params")


def instance_resource(project: str, zone: str, body: dict) -> tuple[dict, list[dict], list[dict]]:
    """The request body -> (the resource as stored, the operation's warnings, the disks it
    creates); raises GceError (400/404) when invalid."""
    schema.check_body(body, "Instance")
    warnings: list[dict] = []
    name = body.get("name") or ""
    if not NAME_RE.fullmatch(name):
        raise exc.invalid("resource.name", name,
                          "Must be a match of regex '(?:[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?|[1-9][0-9]{0,19})'")
    mt_name = last(body.get("machineType") or "")
    if not mt_name:
        raise exc.bad_request("Required field 'resource.machineType' not specified")
    mt = catalog.lookup_machine_type(mt_name, zone)
    if isinstance(mt, str):
        raise exc.invalid("resource.machineType", body["machineType"], mt)
    if mt is None:
        raise exc.invalid("resource.machineType", body["machineType"],
                          f"Machine type with name '{mt_name}' does not exist in zone '{zone}'.")
    if not body.get("networkInterfaces"):
        raise exc.invalid("resource.networkInterfaces", "",
                          "At least one network interface is required.")
    conf = body.get("confidentialInstanceConfig") or {}
    if (conf.get("enableConfidentialCompute") or conf.get("confidentialInstanceType") not in (None, "CONFIDENTIAL_INSTANCE_TYPE_UNSPECIFIED")) \
            and mt.series not in catalog.CONFIDENTIAL_SERIES:
        raise exc.invalid("resource.confidentialInstanceConfig", "enableConfidentialCompute=true",
                          f"Confidential Computing is not supported for machine type {mt.name}; "
                          "use a series that supports it (N2D, C2D, C3, C3D).")
    scheduling = dict(body.get("scheduling") or {})
    accs = body.get("guestAccelerators") or []
    gpu, count = mt.gpu, mt.gpu_count
    if len(accs) > 1:
        raise exc.bad_request("At most one accelerator type per instance is supported.")
    for i, acc in enumerate(accs):
        a_name = last(acc.get("acceleratorType") or "")
        a_count = int(acc.get("acceleratorCount", 0) or 0)
        field_ = f"resource.guestAccelerators[{i}].acceleratorType"
        if a_name not in catalog.ALL_GPUS or a_name not in catalog.ZONES[zone]:
            raise exc.invalid(field_, acc.get("acceleratorType"),
                              f"Accelerator type '{a_name}' does not exist in zone '{zone}'.")
        if mt.gpu:  # A2/A3/G2: the GPUs come with the machine type
            if a_name != mt.gpu or a_count != mt.gpu_count:
                raise exc.bad_request(
                    f"Accelerator \"{a_name.upper().replace('-', '_')}\" with count {a_count} is not supported for "
                    f"machine type {mt.name}; it comes with {mt.gpu_count} x {mt.gpu}.")
            continue
        if a_name not in catalog.N1_GPUS or mt.series != "n1":
            raise exc.bad_request(
                f"Accelerator \"{a_name.upper().replace('-', '_')}\" is not supported for machine type {mt.name}."
                " Attach it to an N1 machine type, or pick a machine type that includes it.")
        caps = catalog.N1_GPUS[a_name][1]
        if a_count not in caps:
            raise exc.invalid(f"resource.guestAccelerators[{i}].acceleratorCount", a_count,
                              f"Valid counts for {a_name}: {', '.join(map(str, sorted(caps)))}.")
        if mt.cpus > caps[a_count]:
            raise exc.bad_request(
                f"Number of vCPUs ({mt.cpus}) of machine type {mt.name} exceeds the maximum of "
                f"{caps[a_count]} supported with {a_count} x {a_name}.")
        if a_name in catalog.END_OF_LIFE_GPUS:
            warnings.append({
                "code": "DEPRECATED_RESOURCE_USED",
                "message": f"Accelerator type '{a_name}' is end of life on Compute Engine since "
                           f"{catalog.END_OF_LIFE_GPUS[a_name]}: real GCE refuses it; the local cloud accepts it.",
                "data": [{"key": "accelerator", "value": a_name}],
            })
        gpu, count = a_name, a_count
    spot = scheduling.get("provisioningModel") == "SPOT"
    if gpu and scheduling.get("onHostMaintenance", "MIGRATE") != "TERMINATE" and not (spot or scheduling.get("preemptible")):
        raise exc.bad_request("Instances with guest accelerators do not support live migration. "
                              "Set scheduling.onHostMaintenance to TERMINATE.")
    if scheduling.get("provisioningModel") not in (None, "STANDARD", "SPOT"):
        raise exc.invalid("resource.scheduling.provisioningModel", scheduling["provisioningModel"], "Must be STANDARD or SPOT.")
    if (spot or scheduling.get("preemptible")) and scheduling.get("automaticRestart") is True:
        raise exc.invalid("resource.scheduling.automaticRestart", "true",
                          "Spot and preemptible instances cannot be automatically restarted.")
    if spot or scheduling.get("preemptible"):
        scheduling.setdefault("automaticRestart", False)
        scheduling["onHostMaintenance"] = "TERMINATE"
        scheduling["preemptible"] = True if scheduling.get("preemptible") else False
    action = scheduling.get("instanceTerminationAction")
    if action not in (None, "STOP", "DELETE"):
        raise exc.invalid("resource.scheduling.instanceTerminationAction", action, "Must be STOP or DELETE.")
    if "maxRunDuration" in scheduling:
        if scheduling.get("preemptible"):
            raise exc.bad_request("maxRunDuration is not supported for preemptible instances; use Spot (provisioningModel SPOT).")
        seconds = duration_seconds(scheduling["maxRunDuration"])
        if not MAX_RUN_MIN_S <= seconds <= MAX_RUN_MAX_S:
            raise exc.invalid("resource.scheduling.maxRunDuration", seconds,
                              f"Must be between {MAX_RUN_MIN_S} seconds and 120 days.")
        if action is None:
            raise exc.bad_request("scheduling.instanceTerminationAction must be set (STOP or DELETE) with maxRunDuration.")
    scheduling.setdefault("onHostMaintenance", "MIGRATE")
    scheduling.setdefault("automaticRestart", True)
    scheduling.setdefault("provisioningModel", "STANDARD")
    scheduling.setdefault("preemptible", False)

    labels = dict(body.get("labels") or {})
    if len(labels) > 64:
        raise exc.bad_request("Too many labels (at most 64).")
    for k, v in labels.items():
        if not LABEL_KEY_RE.fullmatch(k):
            raise exc.invalid("labels", k, "Label keys must start with a lowercase letter and hold only a-z, 0-9, '_' or '-' (max 63).")
        if not LABEL_VALUE_RE.fullmatch(str(v)):
            raise exc.invalid("labels", v, "Label values hold only a-z, 0-9, '_' or '-' (max 63).")
    items = (body.get("metadata") or {}).get("items") or []
    check_metadata(items)

    link = zone_link(project, zone)
    attached, disks, image = _disks(project, zone, name, mt, body.get("disks") or [], warnings)

    nics = body["networkInterfaces"]
    net_ifaces = []
    for i, nic in enumerate(nics):
        access = [{**a, "kind": "compute#accessConfig", "type": "ONE_TO_ONE_NAT", "name": a.get("name", "External NAT"),
                   "natIP": "127.0.0.1", "networkTier": a.get("networkTier", "PREMIUM")}
                  for a in (nic.get("accessConfigs") or [])]
        net_ifaces.append({
            **nic,
            "kind": "compute#networkInterface", "name": f"nic{i}",
            "network": f"{API}/projects/{project}/global/networks/{last(nic.get('network') or 'default')}",
            "subnetwork": f"{API}/projects/{project}/regions/{catalog.region_of(zone)}/subnetworks/default",
            "networkIP": "127.0.0.1", "stackType": nic.get("stackType", "IPV4_ONLY"), "fingerprint": fingerprint(),
            "accessConfigs": access,
        })
    inst_id = new_id()
    resource = copy.deepcopy({k: v for k, v in body.items() if k not in _NOT_STORED})
    resource.update({
        "kind": "compute#instance",
        "id": inst_id,
        "creationTimestamp": now_rfc3339(),
        "name": name,
        "description": body.get("description", ""),
        "tags": {"items": list((body.get("tags") or {}).get("items") or []), "fingerprint": fingerprint()},
        "shieldedInstanceConfig": {"enableSecureBoot": False, "enableVtpm": True, "enableIntegrityMonitoring": True,
                                   **(body.get("shieldedInstanceConfig") or {})},
        "machineType": f"{link}/machineTypes/{mt.name}",
        "status": "PROVISIONING",
        "zone": link,
        "canIpForward": bool(body.get("canIpForward", False)),
        "networkInterfaces": net_ifaces,
        "disks": attached,
        "metadata": {"kind": "compute#metadata", "fingerprint": fingerprint(),
                     "items": [{"key": i["key"], "value": i.get("value", "")} for i in items]},
        "serviceAccounts": body.get("serviceAccounts") or [],
        "selfLink": f"{link}/instances/{name}",
        "scheduling": scheduling,
        "cpuPlatform": "Unknown CPU Platform",
        "labels": labels,
        "labelFingerprint": fingerprint(),
        "startRestricted": False,
        "deletionProtection": bool(body.get("deletionProtection", False)),
        "fingerprint": fingerprint(),
    })
    if accs:
        resource["guestAccelerators"] = [{"acceleratorType": f"{link}/acceleratorTypes/{gpu}", "acceleratorCount": count}]
    return resource, warnings, disks


def _disks(project: str, zone: str, name: str, mt: catalog.MachineType, disks: list, warnings: list):
    """The attached disks as GCE returns them, and the disk resources they create."""
    link = zone_link(project, zone)
    boots = [i for i, d in enumerate(disks) if d.get("boot")]
    if not disks:
        raise exc.bad_request("Invalid value for field 'resource.disks': ''. Boot disk must be specified.")
    if len(boots) > 1:
        raise exc.invalid("resource.disks", "", "Only one boot disk may be specified.")
    boot_at = boots[0] if boots else 0
    if boot_at != 0:
        raise exc.invalid(f"resource.disks[{boot_at}].boot", "true", "The boot disk must be the first disk.")
    attached, created, image, names = [], [], None, set()
    for i, d in enumerate(disks):
        where = f"resource.disks[{i}]"
        init = d.get("initializeParams") or {}
        if d.get("source") or not init and i:
            raise exc.invalid(f"{where}.source", d.get("source") or "",
                              "The referenced disk resource cannot be found (the local cloud creates disks "
                              "only through initializeParams).")
        source = init.get("sourceImage")
        disk_image = None
        if i == 0:
            if not source:
                raise exc.bad_request(f"Required field '{where}.initializeParams.sourceImage' not specified")
        if source:
            disk_image = resolve_image(source)
            if disk_image is None:
                raise exc.invalid(f"{where}.initializeParams.sourceImage", source,
                                  "The referenced image resource cannot be found.")
            if disk_image.deprecated == "DEPRECATED":
                warnings.append({"code": "DEPRECATED_RESOURCE_USED",
                                 "message": f"The resource 'projects/{disk_image.project}/global/images/{disk_image.name}' is deprecated. "
                                            f"A suggested replacement is family '{disk_image.replacement_family}'."})
        if i == 0:
            image = disk_image
        default_type = ("hyperdisk-balanced" if mt.name.startswith("a3-ultragpu")
                        else "pd-balanced" if catalog.disk_type_refusal(mt, "pd-standard") else "pd-standard")
        dtype = last(init.get("diskType") or default_type)
        if dtype not in catalog.DISK_TYPES:
            raise exc.invalid(f"{where}.initializeParams.diskType", init.get("diskType"),
                              f"Disk type 'projects/{project}/zones/{zone}/diskTypes/{dtype}' does not exist "
                              f"or is not available in zone {zone}.")
        if catalog.disk_type_refusal(mt, dtype):
            raise exc.invalid(f"{where}.initializeParams.diskType", init.get("diskType") or dtype,
                              f"{dtype} disk type cannot be used by {mt.name} machine type.")
        _, min_gb, default_gb = catalog.DISK_TYPES[dtype]
        size = int(init.get("diskSizeGb") or (disk_image.disk_size_gb if disk_image else default_gb))
        if disk_image and size < disk_image.disk_size_gb:
            raise exc.invalid(f"{where}.initializeParams.diskSizeGb", size,
                              f"Requested disk size cannot be smaller than the image size ({disk_image.disk_size_gb} GB).")
        if size < min_gb:
            raise exc.invalid(f"{where}.initializeParams.diskSizeGb", size,
                              f"Disk size must be at least {min_gb} GB for disk type {dtype}.")
        disk_name = init.get("diskName") or (name if i == 0 else f"{name}-{i}")
        if not NAME_RE.fullmatch(disk_name):
            raise exc.invalid(f"{where}.initializeParams.diskName", disk_name,
                              "Must be a match of regex '[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?'")
        if disk_name in names:
            raise exc.invalid(f"{where}.initializeParams.diskName", disk_name, "Disk names must be unique.")
        names.add(disk_name)
        out = copy.deepcopy({k: v for k, v in d.items() if k not in ("initializeParams", "forceAttach")})
        out.update({
            "kind": "compute#attachedDisk", "type": d.get("type", "PERSISTENT"), "mode": d.get("mode", "READ_WRITE"),
            "index": i, "source": f"{link}/disks/{disk_name}",
            "deviceName": d.get("deviceName") or f"persistent-disk-{i}", "boot": i == 0,
            "autoDelete": bool(d.get("autoDelete", i == 0)), "interface": d.get("interface", "SCSI"),
            "diskSizeGb": str(size),
        })
        if disk_image:
            out["architecture"] = "X86_64"
            out["licenses"] = [f"{API}/projects/{disk_image.project}/global/licenses/{disk_image.family}"]
        attached.append(out)
        disk = {"kind": "compute#disk", "id": new_id(), "creationTimestamp": now_rfc3339(), "name": disk_name,
                "sizeGb": str(size), "zone": link, "status": "READY", "selfLink": f"{link}/disks/{disk_name}",
                "type": f"{link}/diskTypes/{dtype}", "users": [f"{link}/instances/{name}"],
                "labels": dict(init.get("labels") or {}), "labelFingerprint": fingerprint(),
                "physicalBlockSizeBytes": "4096"}
        if init.get("description"):
            disk["description"] = init["description"]
        if disk_image:
            disk.update(sourceImage=f"{API}/projects/{disk_image.project}/global/images/{disk_image.name}",
                        sourceImageId=str(zlib.crc32(disk_image.name.encode()) * 7919 + 10**12), architecture="X86_64",
                        licenses=list(out["licenses"]))
        created.append(disk)
    return attached, created, image


def check_metadata(items: list) -> None:
    total = 0
    for i in items:
        key = i.get("key", "")
        if not METADATA_KEY_RE.fullmatch(key):
            raise exc.invalid("resource.metadata", key, "Metadata keys hold only a-z, A-Z, 0-9, '_' or '-' (1-128 chars).")
        total += len(i.get("value") or "")
    if total > 512 * 1024:
        raise exc.bad_request("Metadata values exceed the total limit of 512 KB.")


def resolve_image(source: str) -> catalog.Image | None:
    m = re.search(r"projects/([^/]+)/global/images/(family/)?([^/]+)$", source)
    if not m:
        return None
    project, is_family, name = m.groups()
    return catalog.image_by_family(project, name) if is_family else catalog.image_by_name(project, name)
