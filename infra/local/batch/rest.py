"""Cloud Batch v1's REST surface on 127.0.0.1 (what google-cloud-batch's REST transport calls):

    POST   /v1/projects/{p}/locations/{l}/jobs?jobId=ID[&requestId=]   body: Job     -> Job
    GET    /v1/projects/{p}/locations/{l}/jobs[?filter&orderBy&pageSize&pageToken]  (l may be -)
    GET    /v1/projects/{p}/locations/{l}/jobs/{job}                                 -> Job
    DELETE /v1/projects/{p}/locations/{l}/jobs/{job}[?reason&requestId]              -> Operation
    POST   /v1/projects/{p}/locations/{l}/jobs/{job}:cancel   body: {requestId?}     -> Operation
    GET    /v1/projects/{p}/locations/{l}/jobs/{job}/taskGroups/{group}/tasks[?filter&pageSize&pageToken]
    GET    /v1/projects/{p}/locations/{l}/jobs/{job}/taskGroups/{group}/tasks/{index}  -> Task
    GET    /v1/projects/{p}/locations/{l}/operations[/{op}]   DELETE .../operations/{op}
    POST   /v1/projects/{p}/locations/{l}/operations/{op}:cancel
    GET    /v1/projects/{p}/locations[/{l}]

`$alt=json;enum-encoding=int` (which the client sends) answers enums as numbers. Every call
needs the local cloud's access token, or a VM's token with the cloud-platform scope; each one
goes into the request log as service "batch". Errors: google.rpc.Status JSON (errors.py).
"""

from __future__ import annotations

import json
import logging
import re
import time
from http.server import ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlparse

from infra.local.batch import schema
from infra.local.http import JsonHandler, bearer
from infra.local.batch.errors import (
    BatchError,
    insufficient_scopes,
    invalid_argument,
    invalid_payload,
    unauthenticated,
)
from infra.local.batch.validation import CLOUD_PLATFORM, check_location

log = logging.getLogger("ferry.local.batch")

SYSTEM_PARAMS = {"$alt", "alt", "prettyPrint", "$prettyPrint", "fields", "$fields", "key", "quotaUser", "access_token",
                 "oauth_token", "callback", "$callback", "upload_protocol", "uploadType", "$.xgafv", "userIp"}
_SEG = r"([^/:]+)"
ROUTES = [
    ("POST", re.compile(rf"^/v1/projects/{_SEG}/locations/{_SEG}/jobs$"), "create_job", {"jobId", "requestId"}),
    ("GET", re.compile(rf"^/v1/projects/{_SEG}/locations/{_SEG}/jobs$"), "list_jobs",
     {"filter", "orderBy", "pageSize", "pageToken"}),
    ("GET", re.compile(rf"^/v1/projects/{_SEG}/locations/{_SEG}/jobs/{_SEG}$"), "get_job", set()),
    ("DELETE", re.compile(rf"^/v1/projects/{_SEG}/locations/{_SEG}/jobs/{_SEG}$"), "delete_job", {"reason", "requestId"}),
    ("POST", re.compile(rf"^/v1/projects/{_SEG}/locations/{_SEG}/jobs/{_SEG}:cancel$"), "cancel_job", set()),
    ("GET", re.compile(rf"^/v1/projects/{_SEG}/locations/{_SEG}/jobs/{_SEG}/taskGroups/{_SEG}/tasks$"), "list_tasks",
     {"filter", "pageSize", "pageToken"}),
    ("GET", re.compile(rf"^/v1/projects/{_SEG}/locations/{_SEG}/jobs/{_SEG}/taskGroups/{_SEG}/tasks/{_SEG}$"),
     "get_task", set()),
    ("GET", re.compile(rf"^/v1/projects/{_SEG}/locations/{_SEG}/operations$"), "list_operations",
     {"filter", "pageSize", "pageToken"}),
    ("GET", re.compile(rf"^/v1/projects/{_SEG}/locations/{_SEG}/operations/{_SEG}$"), "get_operation", set()),
    ("DELETE", re.compile(rf"^/v1/projects/{_SEG}/locations/{_SEG}/operations/{_SEG}$"), "delete_operation", set()),
    ("POST", re.compile(rf"^/v1/projects/{_SEG}/locations/{_SEG}/operations/{_SEG}:cancel$"), "cancel_operation", set()),
    ("GET", re.compile(rf"^/v1/projects/{_SEG}/locations$"), "list_locations", {"filter", "pageSize", "pageToken"}),
    ("GET", re.compile(rf"^/v1/projects/{_SEG}/locations/{_SEG}$"), "get_location", set()),
]
METHOD_NAMES = {"create_job": "CreateJob", "list_jobs": "ListJobs", "get_job": "GetJob", "delete_job": "DeleteJob",
                "cancel_job": "CancelJob", "list_tasks": "ListTasks", "get_task": "GetTask"}


def _one(query: dict, name: str) -> str | None:
    values = query.get(name)
    return values[-1] if values else None


def _page_size(query: dict) -> int:
    raw = _one(query, "pageSize")
    if raw is None or raw == "":
        return 0
    if not re.fullmatch(r"-?[0-9]+", raw):
        raise invalid_payload(f"Invalid value at 'page_size' (TYPE_INT32), \"{raw}\"", "page_size")
    return int(raw)


class BatchApi:
    """Routes one request to the Batch model -> (HTTP status, JSON payload)."""

    def __init__(self, batch):
        self.batch = batch

    @staticmethod
    def route(method: str, path: str):
        """-> (handler name, path arguments, the query parameters it takes), or Nones."""
        for verb, pattern, name, params in ROUTES:
            m = pattern.match(path)
            if m and verb == method:
                return name, [unquote(g) for g in m.groups()], params
        return None, None, None

    def dispatch(self, method: str, path: str, query: dict, body, raw_size: int):
        name, args, params = self.route(method, path)
        if name is None:
            raise BatchError(404, f"Method not found: {method} {path}", status="NOT_FOUND")
        for key in query:
            if key not in params and key not in SYSTEM_PARAMS:
                raise invalid_payload(f"Invalid JSON payload received. Unknown name \"{key}\": Cannot bind query "
                                      f"parameter. Field '{key}' could not be found in request message.", key)
        if name in ("list_locations", "get_location"):
            return 200, getattr(self, name)(*args)
        project, location, *rest = args
        if not (name == "list_jobs" and location == "-"):
            check_location(location)
        enums_int = "enum-encoding=int" in (_one(query, "$alt") or "")
        b = self.batch
        if name == "create_job":
            if body is not None and not isinstance(body, dict):
                raise invalid_payload("Invalid JSON payload received. Expected an object for 'job'.", "job")
            job = b.create_job(project, location, _one(query, "jobId"), body or {}, _one(query, "requestId"), raw_size)
            return 200, schema.encode(job, "Job", enums_int)
        if name == "get_job":
            return 200, schema.encode(b.get_job(project, location, rest[0]), "Job", enums_int)
        if name == "list_jobs":
            out = b.list_jobs(project, location, _one(query, "filter"), _one(query, "orderBy"), _page_size(query),
                              _one(query, "pageToken"))
            return 200, schema.encode(out, "ListJobsResponse", enums_int)
        if name == "delete_job":
            return 200, b.delete_job(project, location, rest[0], _one(query, "requestId"))
        if name == "cancel_job":
            if body is not None:
                schema.parse(body, "CancelJobRequest", "")
            return 200, b.cancel_job(project, location, rest[0])
        if name == "list_tasks":
            out = b.list_tasks(project, location, rest[0], rest[1], _one(query, "filter"), _page_size(query),
                               _one(query, "pageToken"))
            return 200, schema.encode(out, "ListTasksResponse", enums_int)
        if name == "get_task":
            return 200, schema.encode(b.get_task(project, location, *rest), "Task", enums_int)
        if name == "get_operation":
            return 200, b.get_operation(project, location, rest[0])
        if name == "list_operations":
            return 200, b.list_operations(project, location, _page_size(query), _one(query, "pageToken"))
        if name == "delete_operation":
            return 200, b.delete_operation(project, location, rest[0])
        if name == "cancel_operation":
            b.get_operation(project, location, rest[0])
            return 200, {}
        raise BatchError(404, f"Method not found: {method} {path}")

    @staticmethod
    def _location(project: str, region: str) -> dict:
        return {"name": f"projects/{project}/locations/{region}", "locationId": region}

    def list_locations(self, project: str) -> dict:
        from infra.local.compute import catalog

        return {"locations": [self._location(project, r) for r in catalog.REGIONS]}

    def get_location(self, project: str, location: str) -> dict:
        from infra.local.compute import catalog

        if location not in catalog.REGIONS:
            raise BatchError(404, f"Location \"projects/{project}/locations/{location}\" not found.")
        return self._location(project, location)


_bearer = bearer


class BatchHandler(JsonHandler):
    server_version = "ferry-local-batch"

    def _handle(self, method: str) -> None:
        srv: BatchServer = self.server
        parsed = urlparse(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if srv.request_log is not None:
            srv.request_log.add("batch", method, parsed.path, parsed.query)
        try:
            self._authorize(srv, parsed.path, method)
            try:
                body = json.loads(raw) if raw.strip() else None
            except ValueError:
                raise invalid_argument("Invalid JSON payload received. Unexpected token.", "") from None
            query = parse_qs(parsed.query, keep_blank_values=True)
            status, payload = srv.api.dispatch(method, parsed.path, query, body, len(raw))
        except BatchError as e:
            status, payload = e.code, e.body()
        except Exception as e:  # a bug of ours: answer like a backend error, keep serving
            log.exception("%s %s failed", method, self.path)
            status, payload = 500, BatchError(500, f"Internal error: {e}").body()
        self._send(status, payload)

    def _authorize(self, srv: BatchServer, path: str, method: str) -> None:
        token = _bearer(self.headers.get("Authorization"))
        if srv.is_user(token):
            return
        scopes = srv.token_scopes(token)
        if scopes is None:
            raise unauthenticated(missing=token is None)
        if CLOUD_PLATFORM not in scopes:
            name, _, _ = srv.api.route(method, path)
            rpc = METHOD_NAMES.get(name)
            raise insufficient_scopes(f"google.cloud.batch.v1.BatchService.{rpc}" if rpc else None)


class BatchServer(ThreadingHTTPServer):
    """The local batch.googleapis.com: `is_user(token)` (the service's own token) and
    `token_scopes(token)` (a VM's service account token -> its scopes, else None) decide who
    may call it."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, batch, request_log=None, is_user=None, token_scopes=None, port: int = 0):
        self.batch = batch
        self.api = BatchApi(batch)
        self.request_log = request_log
        self.is_user = is_user or (lambda token: True)
        self.token_scopes = token_scopes or (lambda token: None)
        self.started = time.time()
        super().__init__(("127.0.0.1", port), BatchHandler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"
