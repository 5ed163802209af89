"""A per-VM Compute Engine metadata server on 127.0.0.1 (stdlib HTTP, one thread per request).

Serves what code on a VM asks google-auth and Google's own agents for:
`/computeMetadata/v1/instance/...` and `/project/...`, requiring `Metadata-Flavor: Google`,
with `?recursive=true` (JSON for directories), `?alt=json|text`, and `?wait_for_change=true`
(long poll; `timeout_sec`, `last_etag`), ETag headers like the real server.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

PREFIX = "/computeMetadata/v1"
MAX_WAIT = 3600.0
SERVICE_ACCOUNT_EMAIL = "default@{project}.iam.gserviceaccount.com"
SCOPES = [
    "https://www.googleapis.com/auth/cloud-platform",
    "https://www.googleapis.com/auth/devstorage.read_write",
]


def _number(text: str, digits: int) -> str:
    value = int(hashlib.sha1(text.encode()).hexdigest(), 16) % (9 * 10 ** (digits - 1))
    return str(10 ** (digits - 1) + value)


def _camel(key: str) -> str:
    head, *rest = key.split("-")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


class MetadataState:
    """The VM's metadata, guarded by one condition variable that wakes long polls."""

    def __init__(self, name: str, zone: str, project: str, attributes: dict[str, str]):
        self.cond = threading.Condition()
        self.name, self.zone, self.project = name, zone, project
        self.project_number = _number("project/" + project, 12)
        self.instance_id = _number(f"instance/{project}/{zone}/{name}", 19)
        self.attributes = dict(attributes)
        self.preempted = "FALSE"
        self.maintenance_event = "NONE"
        self.closed = False

    def update(self, **changes) -> None:
        with self.cond:
            for key, value in changes.items():
                setattr(self, key, value)
            self.cond.notify_all()

    def tree(self) -> dict:
        """The metadata as a tree: dict = directory, str = value. Call with cond held."""
        email = SERVICE_ACCOUNT_EMAIL.format(project=self.project)
        account = {
            "aliases": "default",
            "email": email,
            "scopes": "\n".join(SCOPES) + "\n",
            "token": None,  # computed per request
        }
        return {
            "instance": {
                "attributes": dict(self.attributes),
                "hostname": f"{self.name}.{self.zone}.c.{self.project}.internal",
                "id": self.instance_id,
                "machine-type": f"projects/{self.project_number}/machineTypes/local",
                "maintenance-event": self.maintenance_event,
                "name": self.name,
                "network-interfaces": {"0": {"ip": "127.0.0.1", "access-configs": {"0": {"external-ip": "127.0.0.1"}}}},
                "preempted": self.preempted,
                "service-accounts": {"default": dict(account), email: dict(account)},
                "zone": f"projects/{self.project_number}/zones/{self.zone}",
            },
            "project": {
                "attributes": {},
                "numeric-project-id": self.project_number,
                "project-id": self.project,
            },
        }


def _token() -> dict:
    # google-auth's compute_engine.Credentials accepts this as is; the local services ignore it.
    return {"access_token": "ya29.local-ferry-fake-token", "expires_in": 3599, "token_type": "Bearer"}


def _render(node, recursive: bool, alt: str | None, under_attributes: bool = False):
    """-> (body, content_type)."""
    if node is None:  # the token leaf
        return json.dumps(_token()), "application/json"
    if isinstance(node, dict):
        if recursive:
            def conv(n, attrs):
                if n is None:
                    return _token()
                if isinstance(n, dict):
                    return {(k if attrs else _camel(k)): conv(v, k == "attributes") for k, v in n.items()}
                if isinstance(n, str) and "\n" in n and not attrs and n.endswith("\n"):
                    return n.split()  # e.g. scopes
                return n
            data = conv(node, under_attributes)
            if alt == "text":
                return "\n".join(f"{k} {v}" for k, v in data.items()), "application/text"
            return json.dumps(data), "application/json"
        lines = [k + ("/" if isinstance(v, dict) else "") for k, v in node.items()]
        if alt == "json":
            return json.dumps(lines), "application/json"
        return "".join(line + "\n" for line in lines), "application/text"
    if alt == "json":
        return json.dumps(node), "application/json"
    return node, "application/text"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server_version = "Metadata Server for VM"
    sys_version = ""

    def log_message(self, *args) -> None:  # quiet
        pass

    def setup(self) -> None:
        super().setup()
        with self.server.conns_lock:
            self.server.conns.add(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            with self.server.conns_lock:
                self.server.conns.discard(self.connection)

    def _send(self, code: int, body: str, ctype: str = "application/text", etag: str | None = None) -> None:
        data = body.encode()
        self.send_response(code)
        self.send_header("Metadata-Flavor", "Google")
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        if etag:
            self.send_header("ETag", etag)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        with self.server.conns_lock:
            self.server.busy += 1
        try:
            self._get()
        finally:
            with self.server.conns_lock:
                self.server.busy -= 1

    def _get(self) -> None:
        state: MetadataState = self.server.state
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        if self.headers.get("Metadata-Flavor") != "Google" or self.headers.get("X-Forwarded-For"):
            return self._send(403, "Missing required header: Metadata-Flavor: Google\n", "text/html")
        path = re.sub("/+", "/", url.path)
        if path in ("/", ""):
            return self._send(200, "computeMetadata/\n")
        if path.rstrip("/") == "/computeMetadata":
            return self._send(200, "v1/\n")
        if not (path == PREFIX or path.startswith(PREFIX + "/")):
            return self._send(404, "Not Found\n", "text/html")
        parts = [p for p in path[len(PREFIX):].split("/") if p]
        truthy = lambda k: query.get(k, "").lower() == "true"  # noqa: E731
        recursive = truthy("recursive")
        alt = query.get("alt")

        def lookup():
            node = state.tree()
            for i, part in enumerate(parts):
                if not isinstance(node, dict) or part not in node:
                    return False, None
                node = node[part]
            return True, node

        def answer():
            found, node = lookup()
            if not found:
                return None
            under_attrs = bool(parts) and parts[-1] == "attributes"
            body, ctype = _render(node, recursive, alt, under_attrs)
            return body, ctype, hashlib.sha1(body.encode()).hexdigest()[:16]

        with state.cond:
            result = answer()
            if result is not None and truthy("wait_for_change") and not state.closed:
                last = query.get("last_etag")
                if not last or last == result[2]:
                    try:
                        timeout = min(float(query.get("timeout_sec", MAX_WAIT)), MAX_WAIT)
                    except ValueError:
                        return self._send(400, "bad timeout_sec\n", "text/html")
                    first = result[2]
                    end = time.monotonic() + timeout
                    while not state.closed:
                        left = end - time.monotonic()
                        if left <= 0:
                            break
                        state.cond.wait(left)
                        result = answer()
                        if result is None or result[2] != first:
                            break
            closed = state.closed
        if closed:
            return self._send(503, "metadata server stopping\n", "text/html")
        if result is None:
            return self._send(404, "Not Found\n", "text/html")
        body, ctype, etag = result
        self._send(200, body, ctype, etag)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class MetadataServer:
    def __init__(self, state: MetadataState):
        self.state = state
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.state = state
        self._httpd.conns = set()
        self._httpd.conns_lock = threading.Lock()
        self._httpd.busy = 0  # requests being answered (long polls included)
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
            name=f"vm-metadata-{state.name}", daemon=True,
        )

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.state.update(closed=True)  # wakes long polls, which answer 503
        deadline = time.monotonic() + 0.5  # let them answer before their connections close
        while self._httpd.busy and time.monotonic() < deadline:
            time.sleep(0.005)
        self._httpd.shutdown()
        self._httpd.server_close()
        with self._httpd.conns_lock:
            conns = list(self._httpd.conns)
        for conn in conns:  # idle keep-alive connections: their handler threads end now
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
