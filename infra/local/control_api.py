"""The control interface (server side), under `/_ferry/` on the compute port, and the request log.

    GET    /_ferry/health                         {"ok": true, "pid", "version", "started_at"}
    GET    /_ferry/faults                         active faults
    POST   /_ferry/faults          {kind, ...}    add a fault (see compute/faults.py) -> the fault
    DELETE /_ferry/faults                         clear every fault
    GET    /_ferry/requests[?since=T]             request log: [{service, method, path, query, time}]
    DELETE /_ferry/requests                       clear it
    GET    /_ferry/instances                      instances with SSH port and live VM pids
    POST   /_ferry/instances/{zone}/{name}/preempt      {grace_s?}  Spot VM preempted
    POST   /_ferry/instances/{zone}/{name}/drop-ssh                 close its SSH connections
    POST   /_ferry/instances/{zone}/{name}/maintenance  {value}     metadata maintenance-event
    POST   /_ferry/instances/{zone}/{name}/expire                   reach maxRunDuration now
    GET    /_ferry/batch                          Cloud Batch jobs: tasks, their states and VMs
    POST   /_ferry/batch/{location}/{job}/tasks/{index}/preempt  {grace_s?}  preempt the task's
                                                  Spot VM (its task ends with exit code 50001)
    GET    /_ferry/quotas[?region=R]              regional quotas: [{region, metric, limit, usage}]
    POST   /_ferry/quotas   {region, metric, limit}   set one limit (region "global": GPUS_ALL_REGIONS)
    DELETE /_ferry/quotas                         every limit back to its default
    GET    /_ferry/policies                       organization policies in force
    POST   /_ferry/policies {disableGuestAttributesAccess?, requireOsLogin?}   set them (true/false)
    GET    /_ferry/settings                       {page_size}
    POST   /_ferry/settings {page_size}           the default page size of every list (1-500;
                                                  FERRY_LOCAL_PAGE_SIZE sets it at start)
Every instance route takes `?project=` (default ferry-local). Errors: {"error": message}.
"""

from __future__ import annotations

import re
import threading
import time
from collections import deque

from infra.local.compute.exceptions import GceError
from infra.local.compute.faults import FaultError

DEFAULT_PROJECT = "ferry-local"


class RequestLog:
    """Every call the compute and storage servers receive (not control calls), newest last."""

    def __init__(self, limit: int = 20000):
        self._entries: deque = deque(maxlen=limit)
        self._lock = threading.Lock()

    def add(self, service: str, method: str, path: str, query: str) -> None:
        with self._lock:
            self._entries.append({"service": service, "method": method, "path": path,
                                  "query": query, "time": time.time()})

    def list(self, since: float | None = None) -> list[dict]:
        with self._lock:
            return [e for e in self._entries if since is None or e["time"] >= since]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


_INSTANCE = re.compile(r"^/_ferry/instances/(?P<zone>[^/]+)/(?P<name>[^/]+)/(?P<action>[a-z-]+)$")
_BATCH_TASK = re.compile(r"^/_ferry/batch/(?P<location>[^/]+)/(?P<job>[^/]+)/tasks/(?P<index>[0-9]+)/(?P<action>[a-z-]+)$")


class ControlApi:
    def __init__(self, compute, request_log: RequestLog, info: dict):
        self.compute = compute
        self.log = request_log
        self.info = info
        self.batch = None  # the local Cloud Batch (infra.local.batch.models.Batch), when it runs

    def handle(self, method: str, path: str, query: dict, body: dict | None) -> tuple[int, object]:
        try:
            return self._handle(method, path, query, body or {})
        except FaultError as e:
            return 400, {"error": str(e)}
        except GceError as e:
            return e.status, {"error": e.message}

    def _handle(self, method, path, query, body):
        faults = self.compute.faults
        if path == "/_ferry/health" and method == "GET":
            return 200, {"ok": True, **self.info}
        if path == "/_ferry/faults":
            if method == "GET":
                return 200, faults.list()
            if method == "POST":
                params = dict(body)
                kind = params.pop("kind", None)
                if not kind:
                    return 400, {"error": "a fault needs a kind"}
                return 200, faults.add(kind, params)
            if method == "DELETE":
                return 200, {"cleared": faults.clear()}
        if path == "/_ferry/requests":
            if method == "GET":
                since = (query.get("since") or [None])[0]
                return 200, self.log.list(float(since) if since else None)
            if method == "DELETE":
                self.log.clear()
                return 200, {"cleared": True}
        if path == "/_ferry/quotas":
            project = (query.get("project") or [DEFAULT_PROJECT])[0]
            if method == "GET":
                from infra.local.compute import catalog

                wanted = (query.get("region") or [None])[0]
                return 200, [{"region": r, **q} for r in catalog.REGIONS if not wanted or r == wanted
                             for q in self.compute.region_quotas(project, r, schema_only=False)]
            if method == "POST":
                if not body.get("region") or not body.get("metric") or body.get("limit") is None:
                    return 400, {"error": "a quota needs region, metric and limit"}
                try:
                    limit = float(body["limit"])
                except (TypeError, ValueError):
                    return 400, {"error": f"quota limit must be a number, not {body['limit']!r}"}
                return 200, self.compute.quotas.set(body["region"], body["metric"], limit)
            if method == "DELETE":
                self.compute.quotas.reset()
                return 200, {"reset": True}
        if path == "/_ferry/policies":
            if method == "POST":
                known = ("disableGuestAttributesAccess", "requireOsLogin")
                for key, value in body.items():
                    if key not in known or not isinstance(value, bool):
                        return 400, {"error": f"policy {key!r}: valid: {', '.join(known)}, each true or false"}
                    self.compute.policies[key] = value
            if method in ("GET", "POST"):
                return 200, dict(self.compute.policies)
        if path == "/_ferry/settings":
            if method == "POST" and "page_size" in body:
                size = body["page_size"]
                if not isinstance(size, int) or isinstance(size, bool) or not 1 <= size <= 500:
                    return 400, {"error": "page_size must be an integer from 1 to 500"}
                self.compute.page_size = size
            if method in ("GET", "POST"):
                return 200, {"page_size": self.compute.page_size}
        if path == "/_ferry/instances" and method == "GET":
            return 200, self.compute.debug_view()
        if path.startswith("/_ferry/batch") and self.batch is not None:
            return self._batch(method, path, query, body)
        m = _INSTANCE.match(path)
        if m and method == "POST":
            project = (query.get("project") or [DEFAULT_PROJECT])[0]
            zone, name, action = m.group("zone"), m.group("name"), m.group("action")
            if action == "preempt":
                op = self.compute.preempt(project, zone, name, body.get("grace_s"))
                return 200, {"operation": op.name}
            if action == "drop-ssh":
                self.compute.vm_of(project, zone, name).drop_connections()
                return 200, {"dropped": True}
            if action == "maintenance":
                self.compute.vm_of(project, zone, name).set_maintenance_event(str(body.get("value", "TERMINATE_ON_HOST_MAINTENANCE")))
                return 200, {"ok": True}
            if action == "expire":
                self.compute.expire_now(project, zone, name)
                return 200, {"ok": True}
        return 404, {"error": f"no control route {method} {path}"}

    def _batch(self, method, path, query, body):
        from infra.local.batch.errors import BatchError

        if path == "/_ferry/batch" and method == "GET":
            return 200, self.batch.debug_view()
        m = _BATCH_TASK.match(path)
        if m and method == "POST" and m.group("action") == "preempt":
            project = (query.get("project") or [DEFAULT_PROJECT])[0]
            try:
                return 200, self.batch.preempt_task(project, m.group("location"), m.group("job"), int(m.group("index")),
                                                    body.get("grace_s"))
            except BatchError as e:
                return e.code, {"error": e.message}
        return 404, {"error": f"no control route {method} {path}"}
