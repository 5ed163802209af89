"""Each fault gives the error shape the real service gives, seen through the official clients."""

from __future__ import annotations

import time

import pytest
from google.api_core import exceptions as gexc
from google.cloud import compute_v1

from infra.errors import UsageError
from infra.local.testing import instance_resource, wait_operation

P, Z = "ferry-local", "us-central1-a"


@pytest.fixture(scope="module")
def instances(api_cloud):
    return compute_v1.InstancesClient(**api_cloud.compute_options())


def insert(cloud, client, name, zone=Z, **kw):
    return wait_operation(cloud, client.insert(project=P, zone=zone, instance_resource=instance_resource(name, zone, **kw)))


def delete(cloud, client, name, zone=Z):
    wait_operation(cloud, client.delete(project=P, zone=zone, instance=name))


def test_stockout_fails_the_operation_and_creates_nothing(api_cloud, instances):
    api_cloud.control.fault("stockout", zone=Z)
    op = instances.insert(project=P, zone=Z, instance_resource=instance_resource("so-1"))
    done = wait_operation(api_cloud, op)
    (err,) = done.error.errors
    assert err.code == "ZONE_RESOURCE_POOL_EXHAUSTED"
    assert f"zones/{Z}' does not have enough resources" in err.message
    assert done.http_error_status_code == 503
    with pytest.raises(gexc.NotFound):
        instances.get(project=P, zone=Z, instance="so-1")
    # persists until cleared
    assert wait_operation(api_cloud, instances.insert(project=P, zone=Z, instance_resource=instance_resource("so-1"))).error.errors
    api_cloud.control.clear_faults()
    assert not insert(api_cloud, instances, "so-1").error.errors
    delete(api_cloud, instances, "so-1")


def test_stockout_of_one_gpu_with_zones_available(api_cloud, instances):
    api_cloud.control.fault("stockout", zone=Z, accelerator="nvidia-tesla-t4", zones_available=["us-central1-b", "us-central1-f"])
    done = insert(api_cloud, instances, "so-2")
    (err,) = done.error.errors
    assert err.code == "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS"
    info = next(d.error_info for d in err.error_details if d.error_info.reason)
    assert info.metadatas["zonesAvailable"] == "us-central1-b,us-central1-f"
    assert info.metadatas["attachment"] == "nvidia-tesla-t4"
    # another GPU in the same zone, and the same GPU elsewhere, are fine
    assert not insert(api_cloud, instances, "so-v100", gpu="nvidia-tesla-v100").error.errors
    assert not insert(api_cloud, instances, "so-b", zone="us-central1-b").error.errors
    delete(api_cloud, instances, "so-v100")
    delete(api_cloud, instances, "so-b", zone="us-central1-b")


def test_regional_quota(api_cloud, instances):
    api_cloud.control.fault("quota", region="us-central1")
    (err,) = insert(api_cloud, instances, "q-1").error.errors
    assert err.code == "QUOTA_EXCEEDED"
    assert "Quota 'NVIDIA_T4_GPUS' exceeded.  Limit: 0.0 in region us-central1." == err.message
    quota = next(d.quota_info for d in err.error_details if d.quota_info.metric_name)
    assert quota.dimensions["region"] == "us-central1" and quota.limit == 0
    assert not insert(api_cloud, instances, "q-east", zone="us-east1-c").error.errors  # other region
    assert not insert(api_cloud, instances, "q-cpu", gpu=None).error.errors  # no GPU, no GPU quota
    spot = insert(api_cloud, instances, "q-spot", spot=True)
    assert "PREEMPTIBLE_NVIDIA_T4_GPUS" in spot.error.errors[0].message
    delete(api_cloud, instances, "q-east", zone="us-east1-c")
    delete(api_cloud, instances, "q-cpu")


def test_gpus_all_regions_quota(api_cloud, instances):
    api_cloud.control.fault("quota")
    done = insert(api_cloud, instances, "q-2", zone="europe-west4-a")
    (err,) = done.error.errors
    assert err.code == "QUOTA_EXCEEDED" and "GPUS_ALL_REGIONS" in err.message and "globally" in err.message
    assert done.http_error_status_code == 403


@pytest.mark.parametrize("status, error", [(503, gexc.ServiceUnavailable), (429, gexc.TooManyRequests)])
def test_http_errors_on_the_next_calls(api_cloud, instances, status, error):
    api_cloud.control.fault("http_error", status=status, count=2)
    for _ in range(2):
        with pytest.raises(error):
            instances.get(project=P, zone=Z, instance="whatever", retry=None)
    with pytest.raises(gexc.NotFound):  # the third call reaches the API again
        instances.get(project=P, zone=Z, instance="whatever")
    assert api_cloud.control.faults() == []


def test_http_error_on_storage(api_cloud):
    client = api_cloud.storage_client()
    api_cloud.control.fault("http_error", status=503, service="storage", count=1, method="GET")
    with pytest.raises(gexc.ServiceUnavailable):
        client.get_bucket("nope", retry=None)
    with pytest.raises(gexc.NotFound):
        client.get_bucket("nope", retry=None)


def test_slow_operations(api_cloud, instances):
    api_cloud.control.fault("slow_operations", delay_s=0.4)
    t0 = time.monotonic()
    op = instances.insert(project=P, zone=Z, instance_resource=instance_resource("slow-1", gpu=None))
    assert op.status != compute_v1.Operation.Status.DONE  # the call answers before the slow work is done
    wait_operation(api_cloud, op)
    assert time.monotonic() - t0 >= 0.8  # PROVISIONING and STAGING each took 0.4 s longer
    api_cloud.control.clear_faults()
    delete(api_cloud, instances, "slow-1")


def test_stockout_just_after_a_successful_insert(api_cloud, instances):
    api_cloud.control.fault("stockout_after_insert", zone=Z, after_s=0.3)
    done = insert(api_cloud, instances, "late-1")
    assert not done.error.errors
    assert instances.get(project=P, zone=Z, instance="late-1").status == "RUNNING"
    deadline = time.monotonic() + 5
    while instances.get(project=P, zone=Z, instance="late-1").status != "TERMINATED":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert api_cloud.control.faults() == []  # consumed
    delete(api_cloud, instances, "late-1")


def test_bad_fault_requests_are_usage_errors(api_cloud):
    with pytest.raises(UsageError, match="unknown fault kind"):
        api_cloud.control.fault("meteor")
    with pytest.raises(UsageError, match="unknown zone"):
        api_cloud.control.fault("stockout", zone="mars-1a")
    with pytest.raises(UsageError, match="not a Spot VM|was not found"):
        api_cloud.control.preempt(Z, "nobody")


def test_regional_quota_set_through_control_counts_spot_separately(api_cloud, instances):
    api_cloud.control.set_quota("us-central1", "PREEMPTIBLE_NVIDIA_T4_GPUS", 1)
    try:
        assert not insert(api_cloud, instances, "qs-1", spot=True).error.errors
        assert not insert(api_cloud, instances, "qs-2").error.errors  # on-demand: its own metric
        done = insert(api_cloud, instances, "qs-3", spot=True)
        (err,) = done.error.errors
        assert err.code == "QUOTA_EXCEEDED" and "PREEMPTIBLE_NVIDIA_T4_GPUS" in err.message
        region = compute_v1.RegionsClient(**api_cloud.compute_options()).get(project=P, region="us-central1")
        quotas = {q.metric: (q.limit, q.usage) for q in region.quotas}
        assert quotas["PREEMPTIBLE_NVIDIA_T4_GPUS"] == (1.0, 1.0) and quotas["NVIDIA_T4_GPUS"] == (16.0, 1.0)
        with pytest.raises(UsageError, match="Unknown region"):
            api_cloud.control.set_quota("mars-1", "CPUS", 1)
    finally:
        api_cloud.control.reset_quotas()
    delete(api_cloud, instances, "qs-1")
    delete(api_cloud, instances, "qs-2")
