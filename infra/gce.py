"""Compute Engine v1 over REST for the dozen calls ferry makes, without loading compute_v1.

`google.cloud.compute_v1` costs ~1 s to import (its proto types alone ~0.5 s) on every command
that talks to the API. This module sends the same requests its REST transport sends, over the
same transport (`google.auth.transport.requests.AuthorizedSession`), and keeps its semantics:

- requests: the same method, URL, query parameters (camelCase) and JSON body; the same
  `x-goog-api-version`, `x-goog-request-params` and `Content-Type` headers, and an
  `x-goog-api-client` in the same format naming this client (tests/infra/test_gce_rest.py
  compares both clients on the wire);
- auth: the credentials object from `infra.clients.credentials`; AuthorizedSession adds the
  token (and `x-goog-user-project`) and, on a 401, refreshes and retries as compute_v1 does;
- errors: an HTTP error becomes `google.api_core.exceptions.from_http_response(response)`, the
  very function compute_v1 calls: same classes, messages, `.errors` and `.details`. Connection
  errors and timeouts stay the `requests` exceptions compute_v1 lets through too;
- retries and timeouts: compute_v1's defaults for these methods (its transports'
  `_prep_wrapped_messages`): reads (get, list, aggregatedList, getGuestAttributes) retry
  ServiceUnavailable and DeadlineExceeded with exponential backoff (0.1 s x 1.3 up to 60 s,
  jittered) for at most 600 s, through api_core's own `retry_target`; writes (insert, delete,
  operations.wait) are not retried. Each call's timeout is the caller's, else 600 s, counted
  from the first attempt as api_core's `TimeToDeadlineTimeout` does;
- results: the API's JSON as plain dicts (camelCase, as the REST API documents them), and a
  list's pages followed through `nextPageToken` as compute_v1's pagers do.

`google.api_core` (its exceptions import grpc) is loaded only when a call fails; the exception
classes are reachable here lazily, so `except gce.NotFound:` costs nothing until something is
raised (`gce.NotFound is google.api_core.exceptions.NotFound`).
"""

from __future__ import annotations

import json
import sys
import time
from urllib.parse import quote, urlencode

API = "https://compute.googleapis.com"
DEFAULT_HOST = "compute.googleapis.com"
# The API version google-cloud-compute's clients pin (its `x-goog-api-version` header): the
# server answers in that version's shapes, so ferry asks for the same.
API_VERSION = "2026-09-01"
DEFAULT_TIMEOUT_S = 600.0
RETRY_INITIAL_S, RETRY_MAX_S, RETRY_MULTIPLIER, RETRY_DEADLINE_S = 0.1, 60.0, 1.3, 600.0

_ERRORS = ("GoogleAPIError", "GoogleAPICallError", "RetryError", "NotFound", "BadRequest", "Forbidden",
           "Unauthorized", "Conflict", "TooManyRequests", "ServiceUnavailable", "InternalServerError",
           "GatewayTimeout", "DeadlineExceeded", "PreconditionFailed")


def __getattr__(name: str):
    """`gce.NotFound` etc.: google.api_core's exception classes, imported on first use."""
    if name in _ERRORS:
        from google.api_core import exceptions

        value = getattr(exceptions, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_API_CLIENT: list = []


def _api_client_header() -> str:
    """`x-goog-api-client` in the format Google's clients use: language, transport, client."""
    if not _API_CLIENT:
        import requests

        py = ".".join(map(str, sys.version_info[:3]))
        _API_CLIENT.append(f"gl-python/{py} rest/requests@{requests.__version__} gccl/ferry-gce")
    return _API_CLIENT[0]


def _retryable(exc: BaseException) -> bool:
    from google.api_core import exceptions

    return isinstance(exc, (exceptions.DeadlineExceeded, exceptions.ServiceUnavailable))


class Gce:
    """One endpoint, one set of credentials, one HTTP session (opened on first call)."""

    def __init__(self, credentials, endpoint: str | None = None):
        self.credentials = credentials
        self.root = (endpoint or API).rstrip("/")
        if "://" not in self.root:
            self.root = "https://" + self.root
        self._session = None
        self.instances = _Instances(self)
        self.zone_operations = _ZoneOperations(self)
        self.accelerator_types = _Typed(self, "acceleratorTypes", "accelerator_type")
        self.machine_types = _Typed(self, "machineTypes", "machine_type")
        self.zones = _Zones(self)
        self.regions = _Regions(self)
        self.projects = _Projects(self)

    @property
    def session(self):
        if self._session is None:
            from google.auth.transport.requests import AuthorizedSession
            from google.oauth2 import service_account  # already loaded by the transport

            creds = self.credentials
            # As compute_v1's transport: service-account keys sign their own JWTs (no token exchange).
            if isinstance(creds, service_account.Credentials) and hasattr(creds, "with_always_use_jwt_access"):
                creds = creds.with_always_use_jwt_access(True)
            self._session = AuthorizedSession(creds, default_host=DEFAULT_HOST)
        return self._session

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None

    def call(self, method: str, path: str, *, routing: dict, params: dict | None = None, body: dict | None = None,
             timeout: float | None = None, retry: bool = False) -> dict:
        """One API call -> the response's JSON. PATH is under /compute/v1/ (segments quoted by the
        caller); ROUTING, the request's path fields, goes in `x-goog-request-params`."""
        url = f"{self.root}/compute/v1/{path}"
        headers = {
            "x-goog-api-client": _api_client_header(),
            "x-goog-request-params": urlencode(routing),
            "x-goog-api-version": API_VERSION,
            "Content-Type": "application/json",
        }
        query = {k: v for k, v in (params or {}).items() if v not in (None, "")}
        data = json.dumps(body).encode() if body is not None else None
        budget = DEFAULT_TIMEOUT_S if timeout is None else float(timeout)
        first = time.monotonic()

        def attempt() -> dict:
            remaining = budget - (time.monotonic() - first)
            response = self.session.request(method, url, params=query, data=data, headers=headers,
                                            timeout=remaining if remaining >= 1 else budget)
            if response.status_code >= 400:
                from google.api_core import exceptions

                raise exceptions.from_http_response(response)
            return response.json() if response.content else {}

        try:
            return attempt()
        except Exception as exc:
            if not retry or not _retryable(exc):
                raise
            failed = exc
        # A retryable failure: from here on, api_core's own retry loop (what compute_v1 runs),
        # fed the failure it would have seen first.
        from google.api_core.retry import exponential_sleep_generator, retry_target

        from infra.errors import say_retrying

        say_retrying("Compute Engine", " ".join(f"{getattr(failed, 'code', '') or ''} {type(failed).__name__}".split()),
                     RETRY_DEADLINE_S - (time.monotonic() - first))
        calls = iter([failed])

        def target() -> dict:
            pending = next(calls, None)
            if pending is not None:
                raise pending
            return attempt()

        return retry_target(target, _retryable,
                            exponential_sleep_generator(RETRY_INITIAL_S, RETRY_MAX_S, RETRY_MULTIPLIER),
                            timeout=RETRY_DEADLINE_S - (time.monotonic() - first))

    def pages(self, path: str, *, routing: dict, params: dict | None = None, timeout: float | None = None):
        """Every page of a list call (GET, retried like a read), following nextPageToken."""
        params = dict(params or {})
        while True:
            page = self.call("GET", path, routing=routing, params=params, timeout=timeout, retry=True)
            yield page
            token = page.get("nextPageToken")
            if not token:
                return
            params["pageToken"] = token


def _seg(value: str) -> str:
    return quote(str(value), safe="")


class _Service:
    def __init__(self, api: Gce):
        self.api = api


class _Instances(_Service):
    def _path(self, project, zone, instance=None, suffix=""):
        path = f"projects/{_seg(project)}/zones/{_seg(zone)}/instances"
        return path + (f"/{_seg(instance)}" if instance is not None else "") + suffix

    def get(self, *, project: str, zone: str, instance: str, timeout: float | None = None) -> dict:
        return self.api.call("GET", self._path(project, zone, instance), timeout=timeout, retry=True,
                             routing={"project": project, "zone": zone, "instance": instance})

    def insert(self, *, project: str, zone: str, instance_resource: dict, request_id: str | None = None,
               timeout: float | None = None) -> dict:
        """-> the zone Operation (`targetId` is the new instance's id)."""
        return self.api.call("POST", self._path(project, zone), body=instance_resource, timeout=timeout,
                             params={"requestId": request_id}, routing={"project": project, "zone": zone})

    def delete(self, *, project: str, zone: str, instance: str, request_id: str | None = None,
               timeout: float | None = None) -> dict:
        return self.api.call("DELETE", self._path(project, zone, instance), timeout=timeout,
                             params={"requestId": request_id},
                             routing={"project": project, "zone": zone, "instance": instance})

    def get_guest_attributes(self, *, project: str, zone: str, instance: str, query_path: str | None = None,
                             variable_key: str | None = None, timeout: float | None = None) -> dict:
        return self.api.call("GET", self._path(project, zone, instance, "/getGuestAttributes"), timeout=timeout,
                             retry=True, params={"queryPath": query_path, "variableKey": variable_key},
                             routing={"project": project, "zone": zone, "instance": instance})

    def aggregated_list(self, *, project: str, filter: str | None = None, max_results: int | None = None,
                        timeout: float | None = None):
        """(scope, InstancesScopedList dict) for every scope of every page, as compute_v1's pager."""
        params = {"filter": filter, "maxResults": max_results}
        for page in self.api.pages(f"projects/{_seg(project)}/aggregated/instances", params=params,
                                   routing={"project": project}, timeout=timeout):
            yield from (page.get("items") or {}).items()


class _ZoneOperations(_Service):
    def wait(self, *, project: str, zone: str, operation: str, timeout: float | None = None) -> dict:
        return self.api.call("POST", f"projects/{_seg(project)}/zones/{_seg(zone)}/operations/{_seg(operation)}/wait",
                             timeout=timeout, routing={"project": project, "zone": zone, "operation": operation})


class _Typed(_Service):
    """acceleratorTypes / machineTypes: zonal read-only resources."""

    def __init__(self, api: Gce, collection: str, field: str):
        super().__init__(api)
        self.collection, self.field = collection, field

    def get(self, *, project: str, zone: str, timeout: float | None = None, **name) -> dict:
        (key, value), = name.items()
        if key != self.field:
            raise TypeError(f"get() takes {self.field}=, not {key}=")
        return self.api.call("GET", f"projects/{_seg(project)}/zones/{_seg(zone)}/{self.collection}/{_seg(value)}",
                             timeout=timeout, retry=True, routing={"project": project, "zone": zone, key: value})


class _Zones(_Service):
    def list(self, *, project: str, filter: str | None = None, timeout: float | None = None):
        """Every zone (dicts), across pages."""
        for page in self.api.pages(f"projects/{_seg(project)}/zones", params={"filter": filter},
                                   routing={"project": project}, timeout=timeout):
            yield from page.get("items") or []


class _Regions(_Service):
    def get(self, *, project: str, region: str, timeout: float | None = None) -> dict:
        return self.api.call("GET", f"projects/{_seg(project)}/regions/{_seg(region)}", timeout=timeout, retry=True,
                             routing={"project": project, "region": region})


class _Projects(_Service):
    def get(self, *, project: str, timeout: float | None = None) -> dict:
        return self.api.call("GET", f"projects/{_seg(project)}", timeout=timeout, retry=True,
                             routing={"project": project})
