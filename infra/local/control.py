"""Python client of the local cloud's control interface (faults, request log, VM events).

    from infra.local.control import Control
    ctl = Control(endpoints)                       # an Endpoints, or the control URL
    ctl.fault("stockout", zone="us-central1-a", accelerator="nvidia-tesla-t4",
              zones_available=["us-central1-b"])
    ctl.fault("http_error", status=503, count=2)
    ctl.clear_faults()
    ctl.requests()                                 # [{service, method, path, query, time}]
    ctl.preempt("us-central1-a", "my-vm")
    ctl.preempt_batch_task("us-central1", "my-job", 0)   # the Spot VM of a Batch task: exit code 50001
    ctl.set_quota("us-central1", "NVIDIA_T4_GPUS", 1)   # regions.get shows it; insert enforces it
    ctl.set_page_size(2)                           # every list pages after 2 items
"""

from __future__ import annotations

import http.client
import json
import os
from urllib.parse import quote, urlencode, urlparse

from infra.errors import CloudError, UsageError


class Control:
    def __init__(self, endpoints, project: str = "ferry-local", timeout: float = 30.0, token: str | None = None):
        url = endpoints if isinstance(endpoints, str) else endpoints.control
        u = urlparse(url)
        self.host, self.port, self.base = u.hostname, u.port, u.path.rstrip("/")
        self.project, self.timeout = project, timeout
        self.token = token or getattr(endpoints, "token", None) or os.environ.get("FERRY_LOCAL_TOKEN")

    def _call(self, method: str, path: str, body: dict | None = None, query: dict | None = None):
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        url = self.base + path + (f"?{urlencode(query)}" if query else "")
        try:
            payload = json.dumps(body).encode() if body is not None else None
            headers = {"Content-Type": "application/json"}
            if self.token:
                headers["Authorization"] = f"Bearer {self.token}"
            conn.request(method, url, body=payload, headers=headers)
            resp = conn.getresponse()
            data = json.loads(resp.read() or b"null")
        except OSError as e:
            raise CloudError(f"local cloud control interface unreachable at {self.host}:{self.port}: {e}") from None
        finally:
            conn.close()
        if resp.status >= 400:
            message = data.get("error") if isinstance(data, dict) else data
            raise (UsageError if resp.status in (400, 404) else CloudError)(f"local cloud: {message}")
        return data

    def health(self) -> dict:
        return self._call("GET", "/health")

    # faults
    def fault(self, kind: str, **params) -> dict:
        return self._call("POST", "/faults", {"kind": kind, **params})

    def set_policies(self, **policies) -> dict:
        """Organization policies: disableGuestAttributesAccess, requireOsLogin (True/False)."""
        return self._call("POST", "/policies", policies)

    def faults(self) -> list[dict]:
        return self._call("GET", "/faults")

    def clear_faults(self) -> int:
        return self._call("DELETE", "/faults")["cleared"]

    # request log
    def requests(self, since: float | None = None) -> list[dict]:
        return self._call("GET", "/requests", query={"since": since} if since else None)

    def clear_requests(self) -> None:
        self._call("DELETE", "/requests")

    # VM events
    def _vm(self, zone: str, vm: str, action: str, body: dict | None = None):
        return self._call("POST", f"/instances/{quote(zone)}/{quote(vm)}/{action}", body or {}, {"project": self.project})

    def preempt(self, zone: str, vm: str, grace_s: float | None = None) -> dict:
        """Spot VM preempted: metadata preempted=TRUE now, stopped (or deleted) after grace_s."""
        return self._vm(zone, vm, "preempt", {} if grace_s is None else {"grace_s": grace_s})

    def preempt_batch_task(self, location: str, job: str, index: int, grace_s: float | None = None) -> dict:
        """Preempt the Spot VM running task INDEX of Cloud Batch job JOB (its id) in LOCATION:
        the VM gets GCE's preemption notice, then goes; the task ends with exit code 50001 and
        is retried if its lifecycle policy says so. -> {operation, zone, vm}."""
        return self._call("POST", f"/batch/{quote(location)}/{quote(job)}/tasks/{int(index)}/preempt",
                          {} if grace_s is None else {"grace_s": grace_s}, {"project": self.project})

    def batch_jobs(self) -> list[dict]:
        """Cloud Batch jobs as the service holds them: each task's state, retries and VM."""
        return self._call("GET", "/batch")

    def drop_ssh(self, zone: str, vm: str) -> None:
        self._vm(zone, vm, "drop-ssh")

    def maintenance(self, zone: str, vm: str, value: str = "TERMINATE_ON_HOST_MAINTENANCE") -> None:
        self._vm(zone, vm, "maintenance", {"value": value})

    def expire(self, zone: str, vm: str) -> None:
        """Fast-forward the VM to the end of its scheduling.maxRunDuration."""
        self._vm(zone, vm, "expire")

    # quotas and settings
    def set_quota(self, region: str, metric: str, limit: float) -> dict:
        """Set a regional quota limit (region "global" for GPUS_ALL_REGIONS)."""
        return self._call("POST", "/quotas", {"region": region, "metric": metric, "limit": limit})

    def quotas(self, region: str | None = None) -> list[dict]:
        return self._call("GET", "/quotas", query={"project": self.project, **({"region": region} if region else {})})

    def reset_quotas(self) -> None:
        self._call("DELETE", "/quotas")

    def set_page_size(self, page_size: int) -> int:
        """The default page size of every Compute Engine list (GCE's is 500)."""
        return self._call("POST", "/settings", {"page_size": page_size})["page_size"]

    def instances(self) -> list[dict]:
        """Instances as the service holds them, with SSH port and the live pids of each VM."""
        return self._call("GET", "/instances")
