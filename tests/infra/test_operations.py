"""Error classification: one table decides next zone / next region / stop."""

from __future__ import annotations

import pytest

from infra import operations
from infra.operations import FATAL, REGION, ZONE


@pytest.mark.parametrize("code,message,kind", [
    ("ZONE_RESOURCE_POOL_EXHAUSTED", "The zone does not have enough resources", ZONE),
    ("ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS", "", ZONE),
    ("UNSUPPORTED_OPERATION", "", ZONE),
    ("RESOURCE_NOT_READY", "", ZONE),
    ("RESOURCE_OPERATION_RATE_EXCEEDED", "", ZONE),
    ("SOMETHING_NEW", "insufficient capacity in zone", ZONE),
    ("QUOTA_EXCEEDED", "Quota 'NVIDIA_T4_GPUS' exceeded.  Limit: 0.0 in region us-central1.", REGION),
    ("QUOTA_EXCEEDED", "Quota 'GPUS_ALL_REGIONS' exceeded.  Limit: 0.0 globally.", FATAL),
    ("PERMISSION_DENIED", "Required 'compute.instances.create' permission", FATAL),
    ("RESOURCE_NOT_FOUND", "The resource 'projects/p/global/networks/default' was not found", FATAL),
    ("UNKNOWN_CODE_FROM_THE_FUTURE", "whatever", FATAL),
])
def test_classify(code, message, kind):
    assert operations.classify(code, message) == kind


def test_operation_errors_with_zones_available_and_quota_metric():
    """Operations are the API's JSON (what infra.gce returns): errorDetails read in camelCase."""
    import json

    from infra.local.compute.exceptions import quota_exceeded, zone_exhausted

    def op(failure):
        return json.loads(json.dumps({"status": "DONE", **failure.operation_fields()}))

    f = operations.from_operation(op(zone_exhausted("p", "us-central1-a", "n1-standard-4", "nvidia-tesla-t4",
                                                    ["us-central1-c", "us-east1-d"])), "us-central1-a")
    assert (f.kind, f.zones_available) == (ZONE, ["us-central1-c", "us-east1-d"])
    assert f.code == "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS" and f.zone == "us-central1-a"
    f = operations.from_operation(op(quota_exceeded("NVIDIA_T4_GPUS", 0, "us-central1")))
    assert (f.kind, f.quota_metric) == (REGION, "NVIDIA_T4_GPUS")
    f = operations.from_operation(op(quota_exceeded("GPUS_ALL_REGIONS", 0, None)))
    assert f.kind == FATAL and "GPUS_ALL_REGIONS" in str(f)
    assert operations.from_operation({"status": "DONE"}) is None
    assert operations.from_operation({"status": "DONE", "error": {"errors": []}}) is None


def test_operation_errors_read_the_same_as_through_compute_v1():
    """The JSON path reads what the proto path read: compute_v1's Operation.to_dict of the same
    operation (snake_case) gives the same Failure."""
    import json

    from google.cloud import compute_v1

    from infra.local.compute.exceptions import quota_exceeded, zone_exhausted

    for failure in (zone_exhausted("p", "us-central1-a", "n1-standard-4", "nvidia-tesla-t4", ["us-central1-c"]),
                    quota_exceeded("NVIDIA_T4_GPUS", 0, "us-central1"), quota_exceeded("GPUS_ALL_REGIONS", 0, None)):
        data = {"status": "DONE", **failure.operation_fields()}
        proto = compute_v1.Operation.to_dict(compute_v1.Operation.from_json(json.dumps(data)))
        assert operations.from_operation(json.loads(json.dumps(data))) == operations.from_operation(proto)


def test_http_exceptions():
    from google.api_core import exceptions as gexc

    assert operations.from_exception(gexc.ServiceUnavailable("busy")).kind == ZONE
    assert operations.from_exception(gexc.TooManyRequests("slow down")).kind == ZONE
    assert operations.from_exception(gexc.Forbidden("Required 'compute.instances.create' permission")).kind == FATAL
    assert operations.from_exception(gexc.BadRequest(
        'Accelerator "NVIDIA_TESLA_K80" is not supported for machine type n1-standard-4')).kind == FATAL
