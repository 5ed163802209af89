"""A per-VM Compute Engine metadata server on 127.0.0.1 (stdlib HTTP, one thread per request).

Serves what code on a VM asks google-auth and Google's own agents for:
`/computeMetadata/v1/instance/...` and `/project/...`, requiring `Metadata-Flavor: Google`,
with `?recursive=true` (JSON for directories), `?alt=json|text`, and `?wait_for_change=true`
(long poll; `timeout_sec`, `last_etag`), ETag headers like the real server.

Guest attributes (`instance/guest-attributes/NAMESPACE/KEY`) are written by the guest with
PUT and removed with DELETE, as on GCE, when metadata `enable-guest-attributes` is TRUE (else
403); they live in the `host` (the local Compute Engine), which serves them through
`instances.getGuestAttributes`. Tokens of the default service account come from the host
too. `POST /_ferry/poweroff` is the stand-in for the guest powering itself off (what ACPI
tells a real hypervisor): the `shutdown`/`poweroff` commands of a local VM call it.
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
GUEST_ATTRIBUTES = "guest-attributes"
LIST_VALUES = ("scopes", "aliases")  # directory entries GCE renders as JSON lists when recursive
GUEST_KEY_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
GUEST_VALUE_MAX = 1 << 16


class StandaloneHost:
    """The host of a LocalVm run on its own (tests, benches): guest attributes in a dict, a
    static token, and power-off stops the VM."""

    def __init__(self):
        self._guest: dict[str, str] = {}
        self._lock = threading.Lock()
        self.on_poweroff = None

    def set_guest_attribute(self, key: str, value: str) -> None:
        with self._lock:
            self._guest[key] = value

    def delete_guest_attribute(self, key: str) -> None:
        with self._lock:
            self._guest.pop(key, None)

    def guest_attributes(self) -> dict[str, str]:
        with self._lock:
            return dict(self._guest)

    def token(self) -> dict:
        # google-auth's compute_engine.Credentials accepts this as is.
        return {"access_token": "ya29.local-ferry-standalone-token", "expires_in": 3599, "token_type": "Bearer"}

    def poweroff(self) -> None:
        if self.on_poweroff is not None:
            threading.Thread(target=self.on_poweroff, daemon=True, name="guest-poweroff").start()


def _number(text: str, digits: int) -> str:
    value = int(hashlib.sha1(text.encode()).hexdigest(), 16) % (9 * 10 ** (digits - 1))
    return str(10 ** (digits - 1) + value)


def _camel(key: str) -> str:
    head, *rest = key.split("-")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


class MetadataState:
    """The VM's metadata, guarded by one condition variable that wakes long polls."""

    def __init__(self, name: str, zone: str, project: str, attributes: dict[str, str], *,
                 scopes: list[str] | None = None, machine_type: str = "n1-standard-1", host=None):
        self.cond = threading.Condition()
        self.name, self.zone, self.project = name, zone, project
        self.scopes = list(scopes if scopes is not None else SCOPES)
        self.machine_type = machine_type
        self.host = host or StandaloneHost()
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
            "scopes": "\n".join(self.scopes) + "\n",
            "token": None,  # computed per request
        }
        return {
            "instance": {
                "attributes": dict(self.attributes),
                "hostname": f"{self.name}.{self.zone}.c.{self.project}.internal",
                "id": self.instance_id,
                "machine-type": f"projects/{self.project_number}/machineTypes/{self.machine_type}",
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


def _render(node, recursive: bool, alt: str | None, under_attributes: bool = False, token=None):
    """-> (body, content_type). `token()` answers the service account's token leaf."""
    if node is None:  # the token leaf
        return json.dumps(token()), "application/json"
    if isinstance(node, dict):
        if recursive:
            def conv(n, attrs, key=None):
                if n is None:
                    return token()
                if isinstance(n, dict):
                    return {(k if attrs else _camel(k)): conv(v, k == "attributes", k) for k, v in n.items()}
                if key in LIST_VALUES and not attrs:
                    return n.split()  # GCE's JSON has these as lists; every other value stays a string
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


def _guest_enabled(state: MetadataState) -> bool:
    return str(state.attributes.get("enable-guest-attributes", "")).upper() == "TRUE"


class _GuestMixin:
    """instance/guest-attributes/NAMESPACE/KEY: GET, PUT (the guest writes), DELETE."""

    def _guest(self, method: str, parts: list[str]) -> None:
        state: MetadataState = self.server.state
        if not _guest_enabled(state):
            return self._send(403, "Guest attributes endpoint access is disabled.\n", "text/html")
        if len(parts) > 2 or any(not GUEST_KEY_RE.fullmatch(p) for p in parts):
            return self._send(400, "Invalid guest attribute path.\n", "text/html")
        current = state.host.guest_attributes()
        if method == "GET":
            if len(parts) == 2:
                key = "/".join(parts)
                return self._send(200, current[key]) if key in current else self._send(404, "Not Found\n", "text/html")
            names = sorted({k.split("/", 1)[1] if parts else k.split("/", 1)[0] + "/"
                            for k in current if not parts or k.split("/", 1)[0] == parts[0]})
            if parts and not names:
                return self._send(404, "Not Found\n", "text/html")
            return self._send(200, "".join(n + "\n" for n in names))
        if len(parts) != 2:
            return self._send(400, "A guest attribute is written as NAMESPACE/KEY.\n", "text/html")
        key = "/".join(parts)
        if method == "PUT":
            length = int(self.headers.get("Content-Length") or 0)
            if length > GUEST_VALUE_MAX:
                return self._send(400, "Guest attribute value too large.\n", "text/html")
            value = self.rfile.read(length).decode("utf-8", "replace") if length else ""
            state.host.set_guest_attribute(key, value)
            return self._send(200, "")
        state.host.delete_guest_attribute(key)
        return self._send(200, "")

    def _flavored(self) -> bool:
        if self.headers.get("Metadata-Flavor") != "Google" or self.headers.get("X-Forwarded-For"):
            self._send(403, "Missing required header: Metadata-Flavor: Google\n", "text/html")
            return False
        return True

    def _write_path(self) -> list[str] | None:
        path = re.sub("/+", "/", urlsplit(self.path).path)
        if not path.startswith(PREFIX + "/instance/" + GUEST_ATTRIBUTES):
            self._send(405, "Method not allowed.\n", "text/html")
            return None
        return [p for p in path[len(PREFIX):].split("/") if p][2:]

    def do_PUT(self) -> None:
        if self._flavored():
            parts = self._write_path()
            if parts is not None:
                self._guest("PUT", parts)

    def do_DELETE(self) -> None:
        if self._flavored():
            parts = self._write_path()
            if parts is not None:
                self._guest("DELETE", parts)

    def do_POST(self) -> None:
        if urlsplit(self.path).path != "/_ferry/poweroff":
            return self._send(405, "Method not allowed.\n", "text/html")
        if self._flavored():
            self._send(200, "powering off\n")
            self.server.state.host.poweroff()


class _Handler(_GuestMixin, BaseHTTPRequestHandler):
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
        if parts[:2] == ["instance", GUEST_ATTRIBUTES]:
            return self._guest("GET", parts[2:])
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
            body, ctype = _render(node, recursive, alt, under_attrs, token=state.host.token)
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

    def handle_error(self, request, client_address) -> None:
        import sys

        if isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            return  # the guest went away mid-answer (its VM stopping): nothing to report
        super().handle_error(request, client_address)


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
