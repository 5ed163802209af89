"""Cloud Batch's error shape: a google.rpc.Status in JSON, as Google's front end answers every
REST call of batch.googleapis.com:

    {"error": {"code": 400, "message": "...", "status": "INVALID_ARGUMENT", "details": [...]}}

google.api_core maps `code` to InvalidArgument, NotFound, AlreadyExists, ...
"""

from __future__ import annotations

STATUS = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
          409: "ALREADY_EXISTS", 412: "FAILED_PRECONDITION", 413: "INVALID_ARGUMENT", 429: "RESOURCE_EXHAUSTED",
          500: "INTERNAL", 501: "UNIMPLEMENTED", 503: "UNAVAILABLE"}

SERVICE = "batch.googleapis.com"


class BatchError(Exception):
    def __init__(self, code: int, message: str, status: str | None = None, details: list | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status or STATUS.get(code, "UNKNOWN")
        self.details = details or []

    def body(self) -> dict:
        error = {"code": self.code, "message": self.message, "status": self.status}
        if self.details:
            error["details"] = self.details
        return {"error": error}


def bad_request_detail(field: str, description: str) -> dict:
    return {"@type": "type.googleapis.com/google.rpc.BadRequest",
            "fieldViolations": [{"field": field, "description": description}]}


def invalid_argument(message: str, field: str | None = None) -> BatchError:
    """400 INVALID_ARGUMENT; with FIELD, a google.rpc.BadRequest naming it (as Google's do)."""
    return BatchError(400, message, details=[bad_request_detail(field, message)] if field else None)


def invalid_payload(message: str, field: str) -> BatchError:
    """A body or query the JSON parser refuses (unknown name, wrong type, bad enum value)."""
    return invalid_argument(message, field)


def not_supported_locally(what: str, field: str) -> BatchError:
    """A valid Cloud Batch request the local Batch cannot act on: refused, never half-done."""
    return invalid_argument(f"{what} is not supported by the local Batch (infra/local/batch): "
                            "nothing was created.", field)


def not_found(message: str) -> BatchError:
    return BatchError(404, message)


def already_exists(message: str) -> BatchError:
    return BatchError(409, message)


def failed_precondition(message: str) -> BatchError:
    return BatchError(412, message, status="FAILED_PRECONDITION")


def _error_info(reason: str, method: str | None = None) -> dict:
    metadata = {"service": SERVICE}
    if method:
        metadata["method"] = method
    return {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": reason, "domain": "googleapis.com",
            "metadata": metadata}


def unauthenticated(missing: bool = True) -> BatchError:
    """A call without the local cloud's access token (or a VM's): Google's 401."""
    if missing:
        return BatchError(401, "Request is missing required authentication credential. Expected OAuth 2 access token, "
                               "login cookie or other valid authentication credential. See "
                               "https://developers.google.com/identity/sign-in/web/devconsole-project.",
                          details=[_error_info("CREDENTIALS_MISSING")])
    return BatchError(401, "Request had invalid authentication credentials. Expected OAuth 2 access token, login "
                           "cookie or other valid authentication credential. See "
                           "https://developers.google.com/identity/sign-in/web/devconsole-project.",
                      details=[_error_info("ACCESS_TOKEN_TYPE_UNSUPPORTED")])


def insufficient_scopes(method: str | None = None) -> BatchError:
    """A VM token whose service account lacks the cloud-platform scope (Batch's only scope)."""
    return BatchError(403, "Request had insufficient authentication scopes.",
                      details=[_error_info("ACCESS_TOKEN_SCOPE_INSUFFICIENT", method)])
