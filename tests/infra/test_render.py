"""Catalog, templates and rendering: the Instance body of every GPU family, and bad templates."""

from __future__ import annotations

import json

import pytest

from infra import catalog, keys, render, templates
from infra.errors import UsageError

PUB = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFrq4HHdexampleexampleexampleexampleexample"
ZONE = "us-central1-b"


def body_for(gpu: str | None = None, **kw):
    spec = templates.load(kw.pop("template", None), gpu=gpu, **kw)
    return spec, render.body(spec, name="vm-1", zone=ZONE, owner="alice", ssh_keys=keys.ssh_keys_metadata(PUB),
                             extra_labels={"ferry-run": "mnist-nn-20250101-000000-abcd"})


def meta(body) -> dict:
    return {i["key"]: i["value"] for i in body["metadata"]["items"]}


def check_common(body, *, spot=False, hours=4):
    sched = body["scheduling"]
    assert sched["onHostMaintenance"] == "TERMINATE"
    assert sched["maxRunDuration"] == {"seconds": str(int(hours * 3600))}
    assert sched["instanceTerminationAction"] == "DELETE"
    assert sched["provisioningModel"] == ("SPOT" if spot else "STANDARD")
    assert body["labels"] == {"managed-by": "ferry", "ferry-vm": "vm-1", "ferry-owner": "alice",
                              "ferry-run": "mnist-nn-20250101-000000-abcd"}
    m = meta(body)
    assert m["ssh-keys"] == f"ferry:{PUB} ferry"
    assert m["install-nvidia-driver"] == "True"
    assert m["enable-guest-attributes"] == "TRUE"
    assert m["startup-script"].startswith("#!/bin/bash")
    assert "https://www.googleapis.com/auth/devstorage.read_write" in body["serviceAccounts"][0]["scopes"]
    init = body["disks"][0]["initializeParams"]
    assert init["sourceImage"] == "projects/deeplearning-platform-release/global/images/family/common-cu129-ubuntu-2204-nvidia-580"
    assert body["networkInterfaces"][0]["accessConfigs"][0]["type"] == "ONE_TO_ONE_NAT"


@pytest.mark.parametrize("gpu,machine,api", [
    ("t4", "n1-standard-4", "nvidia-tesla-t4"),
    ("v100", "n1-standard-8", "nvidia-tesla-v100"),
    ("p100", "n1-standard-8", "nvidia-tesla-p100"),
    ("p4", "n1-standard-4", "nvidia-tesla-p4"),
    ("k80", "n1-standard-4", "nvidia-tesla-k80"),
    ("v100:4", "n1-standard-32", "nvidia-tesla-v100"),
])
def test_n1_families_attach_guest_accelerators(gpu, machine, api):
    spec, body = body_for(gpu)
    check_common(body)
    assert body["machineType"] == f"zones/{ZONE}/machineTypes/{machine}"
    assert body["guestAccelerators"] == [{"acceleratorType": f"zones/{ZONE}/acceleratorTypes/{api}",
                                          "acceleratorCount": spec.count}]


@pytest.mark.parametrize("gpu,machine", [
    ("l4", "g2-standard-4"), ("l4:2", "g2-standard-24"),
    ("a100", "a2-highgpu-1g"), ("a100:8", "a2-highgpu-8g"),
    ("a100-80gb", "a2-ultragpu-1g"), ("a100-80gb:4", "a2-ultragpu-4g"),
    ("h100:8", "a3-highgpu-8g"), ("h200:8", "a3-ultragpu-8g"),
])
def test_built_in_gpu_families_pick_the_machine_type(gpu, machine):
    _, body = body_for(gpu)
    check_common(body)
    assert body["machineType"] == f"zones/{ZONE}/machineTypes/{machine}"
    assert "guestAccelerators" not in body


def test_spot_and_max_hours_flags_override_the_template():
    spec, body = body_for("t4", spot=True, max_hours=1.5)
    check_common(body, spot=True, hours=1.5)
    assert body["scheduling"]["automaticRestart"] is False
    assert spec.price_per_hour == pytest.approx(0.152, abs=0.01)


def test_body_round_trips_through_compute_v1_instance_exactly():
    """What a dry run prints is what is sent: no field unknown to the client, none lost."""
    from google.cloud import compute_v1

    for gpu in ("t4", "l4", "a100", "k80"):
        _, body = body_for(gpu)
        inst = render.instance(body)
        assert isinstance(inst, compute_v1.Instance)
        assert inst.scheduling.instance_termination_action == "DELETE"
        back = json.loads(compute_v1.Instance.to_json(inst, always_print_fields_with_no_presence=False))
        assert back == body


def test_catalog_aliases_counts_prices_and_end_of_life():
    cat = catalog.load()
    assert cat.find("NVIDIA-TESLA-T4").name == "t4"
    assert cat.find("tesla-k80").end_of_life == "2024-05-01"
    assert cat.find("k80").successor == "t4"
    assert catalog.parse_gpu_spec("v100:8")[1] == 8
    # every GPU has dated, sourced prices and a machine type for each count
    for g in cat.gpus:
        assert g.price["date"] and g.price["source"] in cat.sources
        assert set(g.machine_types) == set(g.counts)
        for n in g.counts:
            assert cat.price(g, n, g.machine_type(n)) > 0
    # gce-facts: T4 VM ~0.54, V100 VM ~2.86, A100 VM 3.67
    assert cat.price(cat.find("t4"), 1, "n1-standard-4") == pytest.approx(0.54, abs=0.01)
    assert cat.price(cat.find("v100"), 1, "n1-standard-8") == pytest.approx(2.86, abs=0.01)
    with pytest.raises(UsageError, match=r"did you mean: t4"):
        cat.find("tt4")
    with pytest.raises(UsageError, match=r"valid counts: 1, 2, 4"):
        catalog.parse_gpu_spec("t4:3")


def test_local_emulation_agrees_with_the_catalog():
    """Every machine type we would ask for exists in the local Compute Engine, with our GPU."""
    from infra.local.compute import catalog as local

    for g in catalog.load().gpus:
        for n, mt in g.machine_types.items():
            assert mt in local.MACHINE_TYPES, mt
            if g.attach == "machine-type":
                assert (local.MACHINE_TYPES[mt].gpu, local.MACHINE_TYPES[mt].gpu_count) == (g.api, n)
            else:
                assert n in local.N1_GPUS[g.api][1]


def write(tmp_path, name, text):
    (tmp_path / f"{name}.yaml").write_text(text)


@pytest.mark.parametrize("text,match", [
    ("gpu: t4\ncolour: blue\n", r"field in template .*bad.yaml.*'colour'"),
    ("gpu: t9\n", r"bad.yaml: field 'gpu': unknown GPU 't9'"),
    ("gpu: t4\ncount: 3\n", r"field 'count' has invalid value 3 .*allowed for t4: 1, 2, 4"),
    ("gpu: l4\nmachine_type: g2-standard-48\n", r"does not carry 1 x l4 .*allowed: g2-standard-4"),
    ("gpu: t4\nmachine_type: e2-standard-4\n", r"cannot carry t4 .*N1"),
    ("max_hours: 0\n", r"field 'max_hours' has invalid value 0"),
    ("boot_disk_type: floppy\n", r"field 'boot_disk_type'.*pd-balanced"),
    ("spot: maybe\n", r"field 'spot' has invalid value 'maybe'.*true or false"),
    ("scopes: [https://www.googleapis.com/auth/logging.write]\n", r"not write to the bucket"),
    ("labels: {managed-by: me}\n", r"field 'labels' has invalid label"),
    ("gpu: [t4\n", r"bad.yaml: line \d+ not valid YAML"),
])
def test_bad_template_names_file_field_and_what_is_allowed(tmp_path, text, match):
    write(tmp_path, "default", "gpu: t4\nmax_hours: 4\n")
    write(tmp_path, "bad", text)
    with pytest.raises(UsageError, match=match) as info:
        templates.load("bad", directory=tmp_path)
    assert "\n" not in str(info.value)


def test_shipped_templates_are_valid():
    for name in templates.names():
        spec = templates.load(name)
        assert spec.max_hours > 0 and spec.price_per_hour > 0


@pytest.mark.parametrize("name", ["Bad", "1vm", "vm-", "a" * 64, "vm_1", ""])
def test_vm_name_rule(name):
    with pytest.raises(UsageError, match="invalid VM name"):
        templates.check_vm_name(name)


def test_key_is_created_once_private_and_reused(tmp_path):
    path, pub = keys.ensure_key(tmp_path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert pub.startswith("ssh-ed25519 AAAA")
    assert keys.ensure_key(tmp_path) == (path, pub)
