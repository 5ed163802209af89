"""The local service process: Compute Engine (+ control under /_ferry/), Cloud Storage and
Cloud Batch on 127.0.0.1, ports chosen by the OS, announced in `<home>/local/service.json` once
all answer.

Run in the foreground with `python -m infra.local --home DIR`; `infra.local.service` runs it
in the background. SIGTERM / SIGINT: stop every VM, close the servers, remove service.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import threading
import time
from http.server import ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from infra.local import VERSION
from infra.local.compute import exceptions as exc
from infra.local.compute.models import COMPUTE_SCOPES, Compute
from infra.local.compute.responses import ComputeResponses
from infra.local.compute.urls import route
from infra.local.control_api import ControlApi, RequestLog
from infra.local.http import JsonHandler, bearer

log = logging.getLogger("ferry.local")


STORAGE_READ_SCOPES = ("https://www.googleapis.com/auth/devstorage.read_only",)
STORAGE_WRITE_SCOPES = ("https://www.googleapis.com/auth/devstorage.read_write",
                        "https://www.googleapis.com/auth/devstorage.full_control",
                        "https://www.googleapis.com/auth/cloud-platform")


_bearer = bearer


class ComputeHandler(JsonHandler):
    server_version = "ferry-local-compute"

    def _handle(self, method: str) -> None:
        srv: ComputeServer = self.server
        parsed = urlparse(self.path)
        query = parse_qs(parsed.query)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw.strip() else None
        except ValueError:
            return self._send(400, exc.bad_request("Invalid JSON payload received.").body())
        token = _bearer(self.headers.get("Authorization"))
        if parsed.path.startswith("/_ferry/"):
            if parsed.path != "/_ferry/health" and not srv.is_user(token):
                return self._send(401, exc.unauthenticated().body())
            status, payload = srv.control.handle(method, parsed.path, query, body)
            return self._send(status, payload)
        srv.request_log.add("compute", method, parsed.path, parsed.query)
        if not srv.is_user(token) and srv.compute.token_scopes(token) is None:
            return self._send(401, exc.unauthenticated().body())
        delay = srv.compute.faults.call_delay("compute", method, parsed.path)
        if delay:
            time.sleep(delay)
        injected = srv.compute.faults.http_error("compute", method, parsed.path)
        if injected:
            return self._send(injected, exc.injected(injected).body())
        scopes = srv.compute.token_scopes(token)
        if scopes is not None and not any(s in COMPUTE_SCOPES for s in scopes):
            return self._send(403, exc.insufficient_scopes().body())
        handler, params = route(method, parsed.path)
        if handler is None:
            return self._send(404, exc.GceError(404, f"The requested URL {parsed.path} was not found on this server.", "notFound").body())
        if handler == "":
            return self._send(405, exc.GceError(405, f"Method {method} not allowed for {parsed.path}", "methodNotAllowed").body())
        try:
            status, payload = getattr(srv.responses, handler)(params, query, body)
        except exc.GceError as e:
            status, payload = e.status, e.body()
        except Exception as e:  # a bug of ours: answer like a backend error, keep serving
            log.exception("%s %s failed", method, self.path)
            status, payload = 500, exc.GceError(500, f"Internal error: {e}", "backendError").body()
        self._send(status, payload)


class ComputeServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, compute: Compute, request_log: RequestLog, info: dict, port: int = 0, token: str | None = None):
        self.compute = compute
        self.token = token
        self.responses = ComputeResponses(compute)
        self.request_log = request_log
        self.control = ControlApi(compute, request_log, info)
        super().__init__(("127.0.0.1", port), ComputeHandler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def is_user(self, token: str | None) -> bool:
        """The caller holds the service's own token (the user who started it); no token set: all."""
        import hmac

        return self.token is None or (token is not None and hmac.compare_digest(token, self.token))

    def authorize_storage(self, token: str | None, method: str):
        """None when the caller may make this Cloud Storage call, else (status, reason, message):
        the user always; a VM with its service account's token when its scopes allow it (reads:
        any devstorage scope; writes: read_write, full_control or cloud-platform)."""
        if self.is_user(token):
            return None
        scopes = self.compute.token_scopes(token)
        if scopes is None:
            return 401, "required", ("Anonymous caller does not have storage access: the local cloud's access "
                                     "token is required (FERRY_LOCAL_TOKEN).")
        write = method not in ("GET", "HEAD")
        allowed = STORAGE_WRITE_SCOPES if write else STORAGE_WRITE_SCOPES + STORAGE_READ_SCOPES
        if not any(sc in allowed for sc in scopes):
            return 403, "insufficientPermissions", "Request had insufficient authentication scopes."
        return None


def vm_factory(spec: dict, host=None):
    from infra.local.vm import LocalVm, VmSpec

    return LocalVm(VmSpec(**spec), host=host)


def _warm_vm_runtime() -> None:
    """Import the VM runtime (asyncssh ~0.3 s) before the first insert needs it."""
    try:
        import infra.local.vm  # noqa: F401
    except Exception:
        log.exception("VM runtime failed to import")


def _read_pid(root: Path) -> str:
    try:
        return (root / "service.pid").read_text().strip()
    except OSError:
        return "?"


def write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m infra.local", description=__doc__.splitlines()[0])
    ap.add_argument("--home", required=True, help="ferry home; state goes under HOME/local")
    ap.add_argument("--vm-runtime", choices=["asyncssh", "openssh", "none"], default=os.environ.get("FERRY_LOCAL_VM_RUNTIME", "asyncssh"),
                    help="SSH server of each VM (none: API only, no SSH, for tests)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    started = time.time()
    root = Path(args.home).expanduser().resolve() / "local"
    root.mkdir(parents=True, exist_ok=True)

    from filelock import FileLock, Timeout

    running = FileLock(str(root / "service.running"))  # held while this service lives
    try:
        running.acquire(timeout=0)
    except Timeout:
        log.error("another local cloud service runs on %s (pid %s); not starting a second one",
                  root.parent, _read_pid(root))
        return 3
    (root / "service.pid").write_text(str(os.getpid()))

    request_log = RequestLog()
    from infra.local.service import ensure_token
    from infra.local.storage import StorageServer

    token = ensure_token(root)

    compute = Compute(root / "compute", vm_factory=None if args.vm_runtime == "none" else vm_factory,
                      ssh_mode="asyncssh" if args.vm_runtime == "none" else args.vm_runtime)
    storage = StorageServer(root / "storage", request_log=request_log, faults=compute.faults)
    compute.vm_env["STORAGE_EMULATOR_HOST"] = storage.url
    info = {"pid": os.getpid(), "version": VERSION, "started_at": started, "home": str(root.parent)}
    compute_server = ComputeServer(compute, request_log, info, token=token)
    storage.authorize = lambda header, method: compute_server.authorize_storage(_bearer(header), method)
    from infra.local import batch as batch_service

    batch, batch_server = batch_service.serve(root / "batch", compute, request_log=request_log,
                                              is_user=compute_server.is_user, token_scopes=compute.token_scopes)
    compute_server.control.batch = batch
    storage.serve_in_background()
    threading.Thread(target=compute_server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True, name="compute").start()
    threading.Thread(target=batch_server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True, name="batch").start()
    if args.vm_runtime != "none":
        threading.Thread(target=_warm_vm_runtime, daemon=True).start()

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: stop.set())

    from infra.local.compute.models import StateError

    try:
        restored = compute.restore()
    except StateError as e:
        log.error("%s", e)
        compute_server.server_close()
        batch_server.server_close()
        storage.shutdown()
        return 3
    held = batch.restore()  # the VMs of Batch tasks under way: never booted again (their task would run twice)
    compute.boot_restored([i for i in restored if i.key not in held])
    batch.start()
    service_file = root / "service.json"
    write_json_atomic(service_file, {
        **info, "compute": compute_server.url, "storage": storage.url, "control": f"{compute_server.url}/_ferry",
        "batch": batch_server.url,
        "vm_runtime": args.vm_runtime, "ready_s": round(time.time() - started, 3), **compute.timing.describe(),
    })
    log.info("ready: compute %s storage %s batch %s (%.3f s)", compute_server.url, storage.url, batch_server.url,
             time.time() - started)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        log.info("stopping")
        batch.close()
        compute.close()
        compute_server.shutdown()
        batch_server.shutdown()
        storage.shutdown()
        try:
            if json.loads(service_file.read_text()).get("pid") == os.getpid():
                service_file.unlink()
        except (OSError, ValueError):
            pass
        log.info("stopped")
    return 0
