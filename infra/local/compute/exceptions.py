"""Compute Engine's error shapes.

Two kinds, as on the real API:
- `GceError`: a synchronous HTTP error, body `{"error": {"code", "message", "errors": [{"domain",
  "reason", "message"}]}}`; google.api_core maps the status to BadRequest, NotFound, ...
- `OperationFailure`: a failed operation, `error.errors[]` with GCE's upper-case codes
  (`ZONE_RESOURCE_POOL_EXHAUSTED`, `QUOTA_EXCEEDED`, ...), optional `errorDetails`, and the
  operation's `httpErrorStatusCode` / `httpErrorMessage`.
"""

from __future__ import annotations

from http import HTTPStatus


class GceError(Exception):
    def __init__(self, status: int, message: str, reason: str, domain: str = "global", extra: dict | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.reason = reason
        self.domain = domain
        self.extra = extra or {}

    def body(self) -> dict:
        return {
            "error": {
                "code": self.status,
                "message": self.message,
                "errors": [{"message": self.message, "domain": self.domain, "reason": self.reason}],
                **self.extra,
            }
        }


def invalid(field: str, value, why: str) -> GceError:
    return GceError(400, f"Invalid value for field '{field}': '{value}'. {why}", "invalid")


def invalid_payload(message: str, field: str) -> GceError:
    """A body the API's JSON parser refuses (unknown field, wrong type, bad enum value), as
    Google's front end answers it: INVALID_ARGUMENT with a google.rpc.BadRequest detail."""
    return GceError(400, message, "invalid", extra={
        "status": "INVALID_ARGUMENT",
        "details": [{"@type": "type.googleapis.com/google.rpc.BadRequest",
                     "fieldViolations": [{"field": field, "description": message}]}]})


def invalid_usage(message: str) -> GceError:
    return GceError(400, f"Invalid resource usage: '{message}'.", "invalidUsage")


def bad_request(message: str) -> GceError:
    return GceError(400, message, "badRequest")


def not_found(resource: str) -> GceError:
    return GceError(404, f"The resource '{resource}' was not found", "notFound")


def already_exists(resource: str) -> GceError:
    return GceError(409, f"The resource '{resource}' already exists", "alreadyExists")


def condition_not_met(message: str) -> GceError:
    return GceError(412, message, "conditionNotMet")


def resource_not_ready(resource: str, status: str) -> GceError:
    return GceError(400, f"The resource '{resource}' is not ready (status {status})", "resourceNotReady")


def unauthenticated() -> GceError:
    """A call without the local cloud's access token (or a VM's): GCE's 401."""
    return GceError(401, "Request is missing required authentication credential. Expected OAuth 2 access token, "
                         "login cookie or other valid authentication credential.", "required")


def insufficient_scopes() -> GceError:
    """A token whose scopes do not include Compute Engine's (a VM whose service account was
    given only, say, devstorage.read_write)."""
    return GceError(403, "Request had insufficient authentication scopes.", "insufficientPermissions")


def injected(status: int) -> GceError:
    """The transient errors a fault injects: 503 backendError, 429 rateLimitExceeded, ..."""
    if status == 429:
        return GceError(429, "Rate Limit Exceeded", "rateLimitExceeded", domain="usageLimits")
    if status == 503:
        return GceError(503, "The service is currently unavailable.", "backendError")
    return GceError(status, HTTPStatus(status).phrase, "backendError")


class OperationFailure(Exception):
    """Carried by an operation that ends with an error."""

    def __init__(self, code: str, message: str, http_status: int, details: list | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.http_status = http_status
        self.details = details or []

    def operation_fields(self) -> dict:
        entry = {"code": self.code, "message": self.message}
        if self.details:
            entry["errorDetails"] = self.details
        return {
            "error": {"errors": [entry]},
            "httpErrorStatusCode": self.http_status,
            "httpErrorMessage": HTTPStatus(self.http_status).phrase.upper(),
        }


def zone_exhausted(project: str, zone: str, machine_type: str, accelerator: str | None,
                   zones_available: list[str] | None) -> OperationFailure:
    where = f"projects/{project}/zones/{zone}"
    if not zones_available:
        return OperationFailure(
            "ZONE_RESOURCE_POOL_EXHAUSTED",
            f"The zone '{where}' does not have enough resources available to fulfill the request.  "
            "Try a different zone, or try again later.",
            503,
        )
    metadatas = {"zone": zone, "vmType": machine_type, "zonesAvailable": ",".join(zones_available)}
    if accelerator:
        metadatas["attachment"] = accelerator
    return OperationFailure(
        "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS",
        f"The zone '{where}' does not have enough resources available to fulfill the request.  "
        "'(resource type:compute)'.",
        503,
        details=[
            {"errorInfo": {"reason": "RESOURCE_AVAILABILITY", "domain": "compute.googleapis.com",
                           "metadatas": metadatas}},
            {"help": {"links": [{"description": "Troubleshooting documentation",
                                 "url": "https://cloud.google.com/compute/docs/resource-error"}]}},
        ],
    )


def quota_exceeded(metric: str, limit: float, region: str | None) -> OperationFailure:
    """QUOTA_EXCEEDED: regional (e.g. NVIDIA_T4_GPUS in us-central1) or GPUS_ALL_REGIONS."""
    where = f"in region {region}" if region else "globally"
    name = metric.replace("_", "-")
    quota_info = {
        "metricName": f"compute.googleapis.com/{metric.lower()}",
        "limitName": f"{name}-per-project-region" if region else f"{name}-per-project",
        "dimensions": {"region": region} if region else {"global": "global"},
        "limit": limit,
    }
    return OperationFailure(
        "QUOTA_EXCEEDED",
        f"Quota '{metric}' exceeded.  Limit: {float(limit)} {where}.",
        403,
        details=[
            {"errorInfo": {"reason": "QUOTA_EXCEEDED", "domain": "compute.googleapis.com",
                           "metadatas": {"metric": metric, "region": region or "global"}}},
            {"quotaInfo": quota_info},
            {"help": {"links": [{"description": "Request a quota increase",
                                 "url": "https://cloud.google.com/compute/resource-usage"}]}},
        ],
    )
