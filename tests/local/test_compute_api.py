"""The local Compute Engine through the official google-cloud-compute client, over HTTP."""

from __future__ import annotations

import time

import pytest
from google.api_core import exceptions as gexc
from google.cloud import compute_v1

from infra.local.testing import instance_resource, wait_operation

P, Z = "ferry-local", "us-central1-a"
DONE = compute_v1.Operation.Status.DONE


@pytest.fixture(scope="module")
def instances(api_cloud):
    return compute_v1.InstancesClient(**api_cloud.compute_options())


def create(cloud, client, name, zone=Z, **kw):
    op = client.insert(project=P, zone=zone, instance_resource=instance_resource(name, zone, **kw))
    return wait_operation(cloud, op)


def test_insert_is_asynchronous_and_reaches_running(api_cloud, instances):
    op = instances.insert(project=P, zone=Z, instance_resource=instance_resource("life-1", labels={"ferry-vm": "life-1"}))
    raw = op._extended_operation
    assert raw.status != DONE and raw.operation_type == "insert" and raw.target_link.endswith("/instances/life-1")
    assert instances.get(project=P, zone=Z, instance="life-1").status in ("PROVISIONING", "STAGING")
    done = wait_operation(api_cloud, op)
    assert done.status == DONE and not done.error.errors
    vm = instances.get(project=P, zone=Z, instance="life-1")
    assert vm.status == "RUNNING"
    assert vm.guest_accelerators[0].accelerator_type.endswith("/acceleratorTypes/nvidia-tesla-t4")
    assert vm.guest_accelerators[0].accelerator_count == 1
    assert vm.scheduling.on_host_maintenance == "TERMINATE"
    assert vm.network_interfaces[0].access_configs[0].nat_i_p == "127.0.0.1"
    assert vm.machine_type.endswith("/zones/us-central1-a/machineTypes/n1-standard-4")
    assert vm.labels["ferry-vm"] == "life-1"

    wait_operation(api_cloud, instances.stop(project=P, zone=Z, instance="life-1"))
    assert instances.get(project=P, zone=Z, instance="life-1").status == "TERMINATED"
    wait_operation(api_cloud, instances.start(project=P, zone=Z, instance="life-1"))
    assert instances.get(project=P, zone=Z, instance="life-1").status == "RUNNING"
    wait_operation(api_cloud, instances.delete(project=P, zone=Z, instance="life-1"))
    with pytest.raises(gexc.NotFound, match="instances/life-1' was not found"):
        instances.get(project=P, zone=Z, instance="life-1")


def test_operation_wait_returns_when_done(api_cloud, instances):
    op = instances.insert(project=P, zone=Z, instance_resource=instance_resource("wait-1", gpu=None))
    ops = compute_v1.ZoneOperationsClient(**api_cloud.compute_options())
    done = ops.wait(project=P, zone=Z, operation=op.name)
    assert done.status == DONE
    wait_operation(api_cloud, instances.delete(project=P, zone=Z, instance="wait-1"))


@pytest.mark.parametrize("kwargs, error, text", [
    ({"machine_type": "n1-standard-5"}, gexc.BadRequest, "Machine type with name 'n1-standard-5' does not exist"),
    ({"gpu": "nvidia-tesla-t4", "machine_type": "g2-standard-4"}, gexc.BadRequest, "not supported for machine type g2-standard-4"),
    ({"gpu": "nvidia-tesla-t4", "machine_type": "e2-standard-4"}, gexc.BadRequest, "not supported for machine type e2-standard-4"),
    ({"gpu": "nvidia-tesla-p100"}, gexc.BadRequest, "Accelerator type 'nvidia-tesla-p100' does not exist in zone"),
    ({"gpu": "nvidia-tesla-t4", "gpu_count": 3}, gexc.BadRequest, "Valid counts"),
    ({"on_host_maintenance": "MIGRATE"}, gexc.BadRequest, "do not support live migration"),
    ({"image": "projects/deeplearning-platform-release/global/images/family/no-such"}, gexc.BadRequest, "image resource cannot be found"),
    ({"max_run_s": 10}, gexc.BadRequest, "maxRunDuration"),
])
def test_invalid_requests_fail_synchronously_like_gce(api_cloud, instances, kwargs, error, text):
    with pytest.raises(error, match=text) as info:
        instances.insert(project=P, zone=Z, instance_resource=instance_resource("bad-1", **kwargs))
    assert info.value.errors and info.value.errors[0]["reason"] in ("invalid", "badRequest")
    with pytest.raises(gexc.NotFound):
        instances.get(project=P, zone=Z, instance="bad-1")


def test_unknown_zone_and_names(api_cloud, instances):
    with pytest.raises(gexc.BadRequest, match="Unknown zone"):
        instances.insert(project=P, zone="us-central9-a", instance_resource=instance_resource("x", "us-central9-a"))
    with pytest.raises(gexc.BadRequest, match="resource.name"):
        instances.insert(project=P, zone=Z, instance_resource=instance_resource("Bad_Name"))
    zones = compute_v1.ZonesClient(**api_cloud.compute_options())
    with pytest.raises(gexc.NotFound):
        zones.get(project=P, zone="us-central9-a")


def test_k80_is_accepted_locally_with_a_warning(api_cloud, instances):
    done = create(api_cloud, instances, "k80-1", gpu="nvidia-tesla-k80", machine_type="n1-standard-4")
    assert not done.error.errors
    assert any("end of life" in w.message for w in done.warnings)
    wait_operation(api_cloud, instances.delete(project=P, zone=Z, instance="k80-1"))


def test_duplicate_name_conflicts(api_cloud, instances):
    create(api_cloud, instances, "dup-1", gpu=None)
    with pytest.raises(gexc.Conflict, match="already exists"):
        instances.insert(project=P, zone=Z, instance_resource=instance_resource("dup-1", gpu=None))
    wait_operation(api_cloud, instances.delete(project=P, zone=Z, instance="dup-1"))


def test_list_filters_and_aggregated_list(api_cloud, instances):
    create(api_cloud, instances, "flt-a", labels={"ferry-vm": "flt-a"}, gpu=None)
    create(api_cloud, instances, "flt-b", zone="us-east1-c", labels={"ferry-vm": "flt-b"}, gpu=None)
    op = instances.insert(project=P, zone=Z, instance_resource=instance_resource("flt-c", gpu=None, labels={"managed-by": "other"}))
    wait_operation(api_cloud, op)
    wait_operation(api_cloud, instances.stop(project=P, zone=Z, instance="flt-a"))

    def names(filter_):
        return sorted(i.name for i in instances.list(request={"project": P, "zone": Z, "filter": filter_}))

    assert names("labels.managed-by=ferry") == ["flt-a"]
    assert names("status=RUNNING") == ["flt-c"]
    assert names("labels.managed-by=ferry status=RUNNING") == []
    assert names('name = "flt-c"') == ["flt-c"]
    assert names("name eq flt-[ab]") == ["flt-a"]
    with pytest.raises(gexc.BadRequest, match="Invalid list filter"):
        names("name=a OR name=b")

    agg = instances.aggregated_list(request={"project": P, "filter": "labels.managed-by=ferry"})
    by_zone = {scope: [i.name for i in scoped.instances] for scope, scoped in agg if scoped.instances}
    assert by_zone == {"zones/us-central1-a": ["flt-a"], "zones/us-east1-c": ["flt-b"]}
    for zone, name in ((Z, "flt-a"), ("us-east1-c", "flt-b"), (Z, "flt-c")):
        wait_operation(api_cloud, instances.delete(project=P, zone=zone, instance=name))


def test_set_metadata_and_labels_check_fingerprints(api_cloud, instances):
    create(api_cloud, instances, "fp-1", gpu=None)
    vm = instances.get(project=P, zone=Z, instance="fp-1")
    stale = vm.metadata.fingerprint
    md = compute_v1.Metadata(fingerprint=stale, items=[*vm.metadata.items, compute_v1.Items(key="run", value="r1")])
    wait_operation(api_cloud, instances.set_metadata(project=P, zone=Z, instance="fp-1", metadata_resource=md))
    vm = instances.get(project=P, zone=Z, instance="fp-1")
    assert {i.key: i.value for i in vm.metadata.items}["run"] == "r1" and vm.metadata.fingerprint != stale
    with pytest.raises(gexc.PreconditionFailed, match="fingerprint"):
        instances.set_metadata(project=P, zone=Z, instance="fp-1", metadata_resource=md)

    req = compute_v1.InstancesSetLabelsRequest(labels={**vm.labels, "ferry-run": "r1"}, label_fingerprint=vm.label_fingerprint)
    wait_operation(api_cloud, instances.set_labels(project=P, zone=Z, instance="fp-1", instances_set_labels_request_resource=req))
    assert instances.get(project=P, zone=Z, instance="fp-1").labels["ferry-run"] == "r1"
    with pytest.raises(gexc.PreconditionFailed):
        instances.set_labels(project=P, zone=Z, instance="fp-1", instances_set_labels_request_resource=req)
    wait_operation(api_cloud, instances.delete(project=P, zone=Z, instance="fp-1"))


@pytest.mark.parametrize("action, final", [("DELETE", None), ("STOP", "TERMINATED")])
def test_max_run_duration_applies_the_termination_action(api_cloud, instances, action, final):
    name = f"mrd-{action.lower()}"
    create(api_cloud, instances, name, max_run_s=3600.5, termination_action=action)
    vm = instances.get(project=P, zone=Z, instance=name)
    assert vm.scheduling.max_run_duration.seconds == 3600 and vm.scheduling.max_run_duration.nanos == 500_000_000
    assert vm.resource_status.scheduling.termination_timestamp
    api_cloud.control.expire(Z, name)  # fast-forward to the deadline
    deadline = time.monotonic() + 5
    status = "RUNNING"
    while time.monotonic() < deadline:
        try:
            status = instances.get(project=P, zone=Z, instance=name).status
        except gexc.NotFound:
            status = None
        if status == final:
            break
        time.sleep(0.02)
    assert status == final
    if final:
        wait_operation(api_cloud, instances.delete(project=P, zone=Z, instance=name))


def test_catalog(api_cloud):
    opts = api_cloud.compute_options()
    zones = [z.name for z in compute_v1.ZonesClient(**opts).list(project=P)]
    assert "us-central1-a" in zones and "europe-west4-a" in zones
    g2 = compute_v1.MachineTypesClient(**opts).get(project=P, zone=Z, machine_type="g2-standard-4")
    assert g2.guest_cpus == 4 and g2.accelerators[0].guest_accelerator_type == "nvidia-l4"
    accs = [a.name for a in compute_v1.AcceleratorTypesClient(**opts).list(project=P, zone=Z)]
    assert "nvidia-tesla-t4" in accs and "nvidia-tesla-p100" not in accs
    images = compute_v1.ImagesClient(**opts)
    img = images.get_from_family(project="deeplearning-platform-release", family="common-cu129-ubuntu-2204-nvidia-580")
    assert img.family == "common-cu129-ubuntu-2204-nvidia-580" and img.status == "READY"
    old = images.get_from_family(project="deeplearning-platform-release", family="common-cu128-ubuntu-2204-nvidia-570")
    assert old.deprecated.state == "DEPRECATED"
    with pytest.raises(gexc.NotFound):
        images.get_from_family(project="deeplearning-platform-release", family="tf-1-15")
    fws = [f.name for f in compute_v1.FirewallsClient(**opts).list(project=P)]
    assert "default-allow-ssh" in fws


def test_request_log_records_every_call(api_cloud, instances):
    api_cloud.control.clear_requests()
    with pytest.raises(gexc.NotFound):
        instances.get(project=P, zone=Z, instance="nobody")
    list(instances.list(request={"project": P, "zone": Z, "filter": "labels.managed-by=ferry"}))
    log = [(r["service"], r["method"], r["path"], r["query"]) for r in api_cloud.control.requests()]
    assert log == [
        ("compute", "GET", f"/compute/v1/projects/{P}/zones/{Z}/instances/nobody", ""),
        ("compute", "GET", f"/compute/v1/projects/{P}/zones/{Z}/instances", "filter=labels.managed-by%3Dferry"),
    ]


def test_guest_attributes_need_enabling_like_on_gce(api_cloud, instances):
    create(api_cloud, instances, "ga-off", gpu=None, metadata={"enable-guest-attributes": "FALSE"})
    with pytest.raises(gexc.NotFound, match="guest attributes are not enabled"):
        instances.get_guest_attributes(request={"project": P, "zone": Z, "instance": "ga-off", "query_path": "hostkeys/"})
    wait_operation(api_cloud, instances.delete(project=P, zone=Z, instance="ga-off"))


# ---------------------------------------------------------------------------- the calls real tools use
def test_project_network_and_disks(api_cloud, instances):
    opts = api_cloud.compute_options()
    project = compute_v1.ProjectsClient(**opts).get(project=P)
    assert project.name == P and project.default_service_account.endswith("-compute@developer.gserviceaccount.com")
    assert any(q.metric == "GPUS_ALL_REGIONS" for q in project.quotas)
    nets = compute_v1.NetworksClient(**opts)
    assert [n.name for n in nets.list(project=P)] == ["default"]
    assert nets.get(project=P, network="default").auto_create_subnetworks is True
    with pytest.raises(gexc.NotFound):
        nets.get(project=P, network="vpc-2")
    create(api_cloud, instances, "dsk-a", gpu=None)
    disks = compute_v1.DisksClient(**opts)
    boot = disks.get(project=P, zone=Z, disk="dsk-a")
    assert boot.size_gb == 100 and boot.users[0].endswith("/instances/dsk-a")
    assert boot.source_image.endswith("/images/common-cu129-v20250825-ubuntu-2204-py310")
    assert "dsk-a" in [d.name for d in disks.list(project=P, zone=Z)]
    wait_operation(api_cloud, instances.delete(project=P, zone=Z, instance="dsk-a"))
    with pytest.raises(gexc.NotFound):
        disks.get(project=P, zone=Z, disk="dsk-a")


def test_set_tags_reset_serial_port_and_operations_list(api_cloud, instances):
    create(api_cloud, instances, "tag-1", gpu=None)
    vm = instances.get(project=P, zone=Z, instance="tag-1")
    tags = compute_v1.Tags(items=["http-server"], fingerprint=vm.tags.fingerprint)
    done = wait_operation(api_cloud, instances.set_tags(project=P, zone=Z, instance="tag-1", tags_resource=tags))
    assert done.operation_type == "setTags"
    vm2 = instances.get(project=P, zone=Z, instance="tag-1")
    assert list(vm2.tags.items) == ["http-server"] and vm2.tags.fingerprint != vm.tags.fingerprint
    with pytest.raises(gexc.PreconditionFailed, match="fingerprint"):
        instances.set_tags(project=P, zone=Z, instance="tag-1", tags_resource=tags)
    done = wait_operation(api_cloud, instances.reset(project=P, zone=Z, instance="tag-1"))
    assert done.operation_type == "reset" and not done.error.errors
    assert instances.get(project=P, zone=Z, instance="tag-1").status == "RUNNING"
    out = instances.get_serial_port_output(project=P, zone=Z, instance="tag-1")
    assert out.contents == "" and out.next_ == 0
    ops = compute_v1.ZoneOperationsClient(**api_cloud.compute_options())
    types = {o.operation_type for o in ops.list(request={"project": P, "zone": Z, "filter": 'operationType = "setTags"'})}
    assert types == {"setTags"}
    wait_operation(api_cloud, instances.stop(project=P, zone=Z, instance="tag-1"))
    with pytest.raises(gexc.BadRequest, match="not ready"):
        instances.reset(project=P, zone=Z, instance="tag-1")
    wait_operation(api_cloud, instances.delete(project=P, zone=Z, instance="tag-1"))


def test_deletion_protection_until_unprotected(api_cloud, instances):
    inst = instance_resource("prot-1", gpu=None)
    inst.deletion_protection = True
    wait_operation(api_cloud, instances.insert(project=P, zone=Z, instance_resource=inst))
    with pytest.raises(gexc.BadRequest, match="protected against deletion") as info:
        instances.delete(project=P, zone=Z, instance="prot-1")
    assert info.value.errors[0]["reason"] == "invalidUsage"
    wait_operation(api_cloud, instances.set_deletion_protection(
        request={"project": P, "zone": Z, "resource": "prot-1", "deletion_protection": False}))
    wait_operation(api_cloud, instances.delete(project=P, zone=Z, instance="prot-1"))


def test_custom_machine_types(api_cloud, instances):
    mts = compute_v1.MachineTypesClient(**api_cloud.compute_options())
    for name, cpus, mem in (("custom-4-15360", 4, 15360), ("n2-custom-8-32768", 8, 32768),
                            ("e2-custom-4-8192", 4, 8192), ("custom-2-20480-ext", 2, 20480)):
        mt = mts.get(project=P, zone=Z, machine_type=name)
        assert (mt.guest_cpus, mt.memory_mb) == (cpus, mem)
    with pytest.raises(gexc.BadRequest, match="per vCPU"):
        mts.get(project=P, zone=Z, machine_type="custom-2-20480")
    done = create(api_cloud, instances, "cust-1", machine_type="custom-6-23040")  # T4 on a custom N1
    assert not done.error.errors
    wait_operation(api_cloud, instances.delete(project=P, zone=Z, instance="cust-1"))


def test_pages_are_followed_by_the_official_pager_and_by_ferry(api_cloud, instances, monkeypatch):
    from infra import clients, provision
    from infra.settings import resolve

    names = [f"page-{i}" for i in range(3)]
    for n in names:
        create(api_cloud, instances, n, gpu=None, labels={"ferry-vm": n, "ferry-owner": "t"})
    api_cloud.control.set_page_size(1)
    try:
        api_cloud.control.clear_requests()
        assert sorted(i.name for i in instances.list(project=P, zone=Z) if i.name in names) == names
        pages = [r for r in api_cloud.control.requests() if r["path"].endswith(f"/zones/{Z}/instances")]
        assert len(pages) >= 3 and any("pageToken=" in r["query"] for r in pages)
        monkeypatch.setenv("FERRY_HOME", str(api_cloud.home))
        for var in ("GOOGLE_CLOUD_PROJECT", "CLOUDSDK_CORE_PROJECT", "FERRY_BACKEND", "FERRY_ZONE"):
            monkeypatch.delenv(var, raising=False)
        monkeypatch.setenv("CLOUDSDK_CONFIG", str(api_cloud.home / "no-gcloud"))
        clients.reset_cache()
        api_cloud.control.clear_requests()
        try:
            found = [v.name for v in provision.list_vms(resolve())]
        finally:
            clients.reset_cache()
        assert sorted(n for n in found if n in names) == names
        agg = [r for r in api_cloud.control.requests() if r["path"].endswith("/aggregated/instances")]
        assert len(agg) >= 3 and any("pageToken=" in r["query"] for r in agg)
    finally:
        api_cloud.control.set_page_size(500)
    for n in names:
        wait_operation(api_cloud, instances.delete(project=P, zone=Z, instance=n))
