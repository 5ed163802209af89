"""Waiting on zone operations, and classifying every Compute Engine failure in one place.

`wait()` polls `zoneOperations.wait` (best effort: it may return before DONE) with the same
endpoint and credentials as the call that started the operation (infra.gce), until DONE, then
reads the Operation's `error.errors` itself. Operations are the API's JSON (camelCase dicts).

`classify()` maps an error code/message to what the provisioner does next:
  ZONE   - try the next zone (stockouts, capacity, resource not ready, rate limits)
  REGION - try the next region (a regional quota)
  FATAL  - stop at once: nowhere will work (GPUS_ALL_REGIONS, permissions, not found, ...)
Unknown codes are FATAL: we stop and show the code rather than spend money guessing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from infra.errors import CloudError

ZONE, REGION, FATAL = "zone", "region", "fatal"

ZONE_CODES = {
    "ZONE_RESOURCE_POOL_EXHAUSTED",
    "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS",
    "UNSUPPORTED_OPERATION",
    "RESOURCE_NOT_READY",
    "RESOURCE_OPERATION_RATE_EXCEEDED",
    "RESOURCE_AVAILABILITY",
    "STOCKOUT",  # ours: a VM terminated just after insert
    "backendError", "rateLimitExceeded", "resourceNotReady", "internalError",
}
CAPACITY_WORDS = ("does not have enough resources", "insufficient capacity", "currently unavailable in the")
GLOBAL_QUOTAS = ("GPUS_ALL_REGIONS", "CPUS_ALL_REGIONS", "GLOBAL")


@dataclass
class Failure(Exception):
    """One failed call or operation, classified."""

    kind: str
    code: str
    message: str
    zone: str | None = None
    zones_available: list = field(default_factory=list)
    quota_metric: str | None = None

    def __str__(self) -> str:
        where = f" in {self.zone}" if self.zone else ""
        return f"{self.code}{where}: {' '.join(self.message.split())}"


def classify(code: str, message: str = "", quota_metric: str | None = None) -> str:
    text = f"{code} {message} {quota_metric or ''}"
    if code == "QUOTA_EXCEEDED" or "quotaExceeded" in code:
        if any(g in text for g in GLOBAL_QUOTAS) or "globally" in message:
            return FATAL
        return REGION
    if code in ZONE_CODES or any(w in message.lower() for w in CAPACITY_WORDS):
        return ZONE
    return FATAL


def _details(entry: dict) -> tuple[list, str | None]:
    zones, metric = [], None
    for detail in entry.get("error_details") or entry.get("errorDetails") or []:
        info = detail.get("error_info") or detail.get("errorInfo") or {}
        meta = info.get("metadatas") or {}
        if meta.get("zonesAvailable"):
            zones = [z.strip() for z in meta["zonesAvailable"].split(",") if z.strip()]
        if meta.get("metric"):
            metric = meta["metric"]
        quota = detail.get("quota_info") or detail.get("quotaInfo") or {}
        if quota.get("metric_name") or quota.get("metricName"):
            metric = metric or (quota.get("metric_name") or quota.get("metricName")).rsplit("/", 1)[-1].upper()
    return zones, metric


def from_operation(op: dict, zone: str | None = None) -> Failure | None:
    """The operation's (JSON) first error as a Failure, or None when it succeeded."""
    data = op
    errors = ((data.get("error") or {}).get("errors")) or []
    if not errors:
        return None
    first = errors[0]
    zones, metric = _details(first)
    code = first.get("code") or "UNKNOWN"
    message = "; ".join(e.get("message", "") for e in errors if e.get("message")) or data.get("httpErrorMessage", "")
    return Failure(classify(code, message, metric), code, message, zone, zones, metric)


def from_exception(exc: BaseException, zone: str | None = None) -> Failure:
    """A google.api_core / google.auth exception from a call, as a Failure."""
    from google.api_core import exceptions as gexc

    try:
        from google.auth.exceptions import RefreshError, DefaultCredentialsError
    except Exception:  # pragma: no cover
        RefreshError = DefaultCredentialsError = ()
    if isinstance(exc, (RefreshError, DefaultCredentialsError)):
        return Failure(FATAL, "AUTH", f"credentials rejected: {exc} (run `gcloud auth application-default login`)", zone)
    if isinstance(exc, gexc.GoogleAPICallError):
        errors = getattr(exc, "errors", None) or []
        reason = next((e.get("reason") for e in errors if isinstance(e, dict) and e.get("reason")), None) or exc.reason or ""
        message = exc.message or str(exc)
        code = reason or type(exc).__name__
        if isinstance(exc, (gexc.ServiceUnavailable, gexc.TooManyRequests, gexc.InternalServerError, gexc.GatewayTimeout)):
            return Failure(ZONE, code, message, zone)
        if "QUOTA_EXCEEDED" in message or reason in ("quotaExceeded", "QUOTA_EXCEEDED"):
            return Failure(classify("QUOTA_EXCEEDED", message), "QUOTA_EXCEEDED", message, zone)
        if isinstance(exc, gexc.Forbidden):
            return Failure(FATAL, code or "PERMISSION_DENIED", f"{message} (check the project's IAM roles for Compute Engine)", zone)
        if isinstance(exc, gexc.Unauthorized):
            return Failure(FATAL, "AUTH", f"{message} (run `gcloud auth application-default login`)", zone)
        return Failure(classify(code, message), code, message, zone)
    if isinstance(exc, (ConnectionError, OSError)):
        return Failure(FATAL, "UNREACHABLE", f"cannot reach Compute Engine: {exc}", zone)
    raise exc


UNREACHABLE_AFTER_S = 30.0  # connection errors this long in a row: the API is unreachable


def is_timeout(exc: BaseException) -> bool:
    """A client-side timeout (the call may still be answered later; it is not a failure)."""
    import socket

    from google.api_core import exceptions as gexc

    try:
        from requests.exceptions import Timeout
    except ImportError:  # pragma: no cover
        Timeout = ()
    return isinstance(exc, (Timeout, socket.timeout, TimeoutError, gexc.DeadlineExceeded))


def wait(compute, operation, zone: str, *, timeout: float | None = None, what: str = "operation"):
    """Poll zone operation OPERATION (an Operation dict or its name) until DONE.

    Each `zoneOperations.wait` call has a client timeout of `pacing.wait_call_s` (GCE holds the
    call up to about 2 minutes and may answer before DONE); a call that times out means "still
    running: wait again", bounded by TIMEOUT for the whole operation. Connection errors are
    retried for UNREACHABLE_AFTER_S, then the API is unreachable (Failure UNREACHABLE).
    Returns the finished Operation (dict); raises Failure when it carries errors, CloudError on timeout.
    """
    name = operation if isinstance(operation, str) else operation["name"]
    timeout = timeout or compute.pacing.op_timeout_s
    deadline = time.monotonic() + timeout
    unreachable_since = None
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise CloudError(f"{what} {name} in {zone} did not finish within {timeout:.0f} s",
                             hint="see `python cli.py status`; the VM, if any, deletes itself at its run-time limit")
        try:
            op = compute.zone_operations.wait(project=compute.project, zone=zone, operation=name,
                                              timeout=min(remaining, compute.pacing.wait_call_s))
        except Exception as exc:
            if is_timeout(exc):  # held past our client timeout: still running
                unreachable_since = None
                continue
            failure = from_exception(exc, zone)
            if failure.code == "UNREACHABLE":
                unreachable_since = unreachable_since or time.monotonic()
                if time.monotonic() - unreachable_since > UNREACHABLE_AFTER_S:
                    raise failure from None
            elif failure.kind == FATAL:
                raise failure from None
            time.sleep(max(compute.pacing.poll_s, 0.2 if failure.code == "UNREACHABLE" else 0))
            continue
        unreachable_since = None
        if _status(op) == "DONE":
            failure = from_operation(op, zone)
            if failure is not None:
                raise failure
            return op
        time.sleep(compute.pacing.poll_s)


def _status(op: dict) -> str:
    return str(op.get("status") or "")
