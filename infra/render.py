"""A resolved template (infra.templates.Spec) -> the Compute Engine Instance body.

`body()` builds the REST body as plain JSON (what dry runs print, byte for byte what
infra.gce sends to instances.insert). `instance()` turns it into a `compute_v1.Instance`, which
refuses unknown fields: the strict check tests/infra/test_render.py runs on every template
(the body must round-trip through it exactly); no command imports compute_v1 for it (~1 s).
Pure: no I/O, no clock except the caller's.
"""

from __future__ import annotations

import json

from infra.templates import Spec

MANAGED_BY = "managed-by"
LABEL_VM = "ferry-vm"
LABEL_OWNER = "ferry-owner"
LABEL_RUN = "ferry-run"


def labels(spec: Spec, name: str, owner: str, extra: dict | None = None) -> dict:
    out = dict(spec.labels)
    out.update(extra or {})
    out.update({MANAGED_BY: "ferry", LABEL_VM: name, LABEL_OWNER: owner})
    return out


def body(spec: Spec, *, name: str, zone: str, owner: str, ssh_keys: str, extra_labels: dict | None = None,
         extra_metadata: dict | None = None) -> dict:
    """The Instance resource for `instances.insert` in ZONE (camelCase REST JSON)."""
    scheduling = {
        # GPU VMs cannot live-migrate.
        "onHostMaintenance": "TERMINATE",
        # The cloud-side backstop: the VM is deleted after max_hours even if nobody is watching.
        "maxRunDuration": {"seconds": str(spec.max_run_seconds)},
        "instanceTerminationAction": "DELETE",
    }
    if spec.spot:
        scheduling.update({"provisioningModel": "SPOT", "automaticRestart": False})
    else:
        scheduling.update({"provisioningModel": "STANDARD", "automaticRestart": True})

    metadata = [
        {"key": "ssh-keys", "value": ssh_keys},
        {"key": "enable-oslogin", "value": "FALSE"},           # our ssh-keys, not OS Login
        {"key": "enable-guest-attributes", "value": "TRUE"},   # the VM publishes its host keys
    ]
    if spec.gpu is not None and spec.install_nvidia_driver:
        metadata.append({"key": "install-nvidia-driver", "value": "True"})
    if spec.startup_script:
        metadata.append({"key": "startup-script", "value": spec.startup_script})
    taken = {item["key"] for item in metadata}
    for key, value in sorted((extra_metadata or {}).items()):
        if key not in taken:
            metadata.append({"key": str(key), "value": str(value)})

    result = {
        "name": name,
        "machineType": f"zones/{zone}/machineTypes/{spec.machine_type}",
        "labels": labels(spec, name, owner, extra_labels),
        "scheduling": scheduling,
        "disks": [
            {
                "boot": True,
                "autoDelete": True,
                "type": "PERSISTENT",
                "initializeParams": {
                    "sourceImage": f"projects/{spec.image_project}/global/images/family/{spec.image_family}",
                    "diskSizeGb": str(spec.boot_disk_gb),
                    "diskType": f"zones/{zone}/diskTypes/{spec.boot_disk_type}",
                },
            }
        ],
        "networkInterfaces": [
            {
                "network": "global/networks/default",
                "accessConfigs": [{"name": "External NAT", "type": "ONE_TO_ONE_NAT"}],
            }
        ],
        "serviceAccounts": [{"email": "default", "scopes": list(spec.scopes)}],
        "metadata": {"items": metadata},
    }
    if spec.gpu is not None and spec.gpu.attach == "accelerator":
        result["guestAccelerators"] = [
            {"acceleratorType": f"zones/{zone}/acceleratorTypes/{spec.gpu.api}", "acceleratorCount": spec.count}
        ]
    if spec.description:
        result["description"] = f"ferry ({spec.template}): {spec.description}"[:2048]
    return result


def instance(body_dict: dict):
    """The body as a `compute_v1.Instance` (unknown fields are an error, not silently lost)."""
    from infra.clients import compute_api

    compute_v1 = compute_api()

    return compute_v1.Instance.from_json(json.dumps(body_dict))
