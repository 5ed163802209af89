"""The local service's lifecycle: one background process per ferry home.

State under `<home>/local/` (mode 0700): `service.json` (pid, endpoints, started_at, version;
written by the service once it answers), `token` (0600: the access token every Compute Engine,
Cloud Storage, Cloud Batch and control call must carry — only the user who started the service
has it), `service.log`, `service.lock`, `storage/` (buckets), `compute/` (instance records, VM
disks), `batch/` (Batch jobs).

`ensure_running()` takes a file lock, trusts service.json only if its pid is alive AND its
health endpoint answers with that pid, otherwise clears leftovers and starts a new service.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from infra.errors import CloudError
from infra.local.vm import processes

REPO_ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 8.0


@dataclass(frozen=True)
class Endpoints:
    compute: str  # compute_v1 client_options api_endpoint
    storage: str  # storage.Client api_endpoint, and STORAGE_EMULATOR_HOST
    control: str  # the control interface (faults, request log)
    pid: int | None = None
    home: str | None = None
    project: str = "ferry-local"
    token: str | None = field(default=None, repr=False)  # the bearer token every call carries
    timing: str = "fast"          # the service's timing profile (FERRY_LOCAL_TIMING)
    time_scale: float = 1.0
    batch: str | None = None  # batch_v1 BatchServiceClient(transport="rest") client_options api_endpoint

    def as_dict(self) -> dict:
        out = asdict(self)
        out.pop("token", None)
        return out

    @classmethod
    def from_info(cls, info: dict, token: str | None = None) -> "Endpoints":
        return cls(compute=info["compute"], storage=info["storage"], control=info["control"],
                   pid=info.get("pid"), home=info.get("home"), token=token, timing=info.get("timing") or "fast",
                   time_scale=float(info.get("time_scale") or 1.0), batch=info.get("batch"))


def _root(home: Path | None) -> Path:
    if home is None:
        from infra.settings import check_home, ferry_home

        home = check_home(ferry_home())
    return Path(home).expanduser().resolve() / "local"


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.waitpid(pid, os.WNOHANG)  # reap it if it is our own exited child
    except OSError:
        pass
    return processes.alive(pid)


def _health(control_url: str, timeout: float = 1.0) -> dict | None:
    u = urlparse(control_url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    try:
        conn.request("GET", u.path.rstrip("/") + "/health")
        resp = conn.getresponse()
        data = resp.read()
        return json.loads(data) if resp.status == 200 else None
    except (OSError, ValueError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def _read_info(root: Path) -> dict | None:
    try:
        return json.loads((root / "service.json").read_text())
    except (OSError, ValueError):
        return None


def _live_info(root: Path) -> dict | None:
    """service.json if its service is really there (pid alive and health answers as that pid)."""
    info = _read_info(root)
    if not info or not _alive(info.get("pid")):
        return None
    health = _health(info.get("control", ""))
    if not health or health.get("pid") != info.get("pid"):
        return None
    return info


def _kill_vm_leftovers(root: Path) -> None:
    """Processes of this home's VMs that outlived their service (e.g. after a SIGKILL)."""
    vms = root / "compute" / "vms"
    if not vms.exists():
        return
    try:
        from infra.local.vm import processes
        from infra.local.vm.spec import VmSpec
    except ImportError:
        return
    for disk in vms.glob("*/*/*"):
        if disk.is_dir():
            marker = VmSpec(name=disk.name, zone=disk.parent.name, project=disk.parent.parent.name, disk_dir=disk).marker
            processes.kill_all(marker)


def _end_process(pid: int | None, timeout: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM the service (it stops its VMs), then SIGKILL its process group if it lingers."""
    if not pid or not _alive(pid):
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except OSError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.02)
    for send in (lambda: os.killpg(pid, signal.SIGKILL), lambda: os.kill(pid, signal.SIGKILL)):
        try:
            send()
        except OSError:
            pass
    for _ in range(100):
        if not _alive(pid):
            break
        time.sleep(0.02)


def read_token(root: Path) -> str | None:
    try:
        return (root / "token").read_text().strip() or None
    except OSError:
        return None


def ensure_token(root: Path) -> str:
    """The service's access token (created once, 0600, in a 0700 folder)."""
    import secrets

    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o700)
    token = read_token(root)
    if token:
        return token
    token = "ya29.local-" + secrets.token_urlsafe(32)
    tmp = root / f".token.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    os.replace(tmp, root / "token")
    return token


def _endpoints(root: Path, info: dict) -> "Endpoints":
    return Endpoints.from_info(info, read_token(root))


def _lock(root: Path):
    from filelock import FileLock

    root.mkdir(parents=True, exist_ok=True)
    return FileLock(str(root / "service.lock"), timeout=60)


def _start(root: Path, vm_runtime: str) -> dict:
    ensure_token(root)
    log_path = root / "service.log"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env.pop("STORAGE_EMULATOR_HOST", None)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "infra.local", "--home", str(root.parent), "--vm-runtime", vm_runtime],
            cwd=str(REPO_ROOT), env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, close_fds=True,
        )
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        info = _read_info(root)
        if info and info.get("pid") == proc.pid:
            return info
        if proc.poll() is not None:
            break
        time.sleep(0.01)
    _end_process(proc.pid, timeout=1.0)
    tail = ""
    try:
        tail = log_path.read_text(errors="replace").strip().splitlines()[-1]
    except (OSError, IndexError):
        pass
    raise CloudError("the local cloud service did not start", hint=f"see {log_path}: {tail[-200:]}")


def ensure_running(home: Path | None = None, vm_runtime: str | None = None) -> Endpoints:
    """Start the local service unless it already runs; return its endpoints.

    `vm_runtime`: asyncssh (default, or $FERRY_LOCAL_VM_RUNTIME), openssh, or none (API only);
    it applies when a service is started, not to one that already runs.
    """
    root = _root(home)
    vm_runtime = vm_runtime or os.environ.get("FERRY_LOCAL_VM_RUNTIME") or "asyncssh"
    info = _live_info(root)  # fast path, no lock
    if info:
        return _endpoints(root, info)
    with _lock(root):
        info = _live_info(root)
        if info:
            return _endpoints(root, info)
        stale = _read_info(root)
        if stale:
            _end_process(stale.get("pid"), timeout=2.0)
            (root / "service.json").unlink(missing_ok=True)
        holder = _holder(root)
        if holder:  # alive, holding this home, but its record is garbled or gone: never a second one
            raise CloudError(f"a local cloud service runs on {root.parent} (pid {holder}) but its record "
                             f"{root / 'service.json'} is unreadable",
                             hint="`python cli.py local stop` ends it and its VMs; the next command starts a fresh one")
        _kill_vm_leftovers(root)
        return _endpoints(root, _start(root, vm_runtime))


def _holder(root: Path) -> int | None:
    """The pid of the service holding ROOT's `service.running` lock, or None when none does."""
    from filelock import FileLock, Timeout

    lock = FileLock(str(root / "service.running"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        try:
            pid = int((root / "service.pid").read_text())
        except (OSError, ValueError):
            return -1
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return -1
        return pid if b"infra.local" in cmdline else -1
    lock.release()
    return None


def running(home: Path | None = None) -> Endpoints | None:
    root = _root(home)
    info = _live_info(root)
    return _endpoints(root, info) if info else None


def stop(home: Path | None = None) -> dict:
    """Stop the service and every VM; leaves no process behind. -> {"stopped": bool, "pid"}."""
    root = _root(home)
    if not root.exists():
        return {"stopped": False, "pid": None}
    with _lock(root):
        info = _read_info(root)
        pid = info.get("pid") if info else None
        if pid is None:  # a garbled record: the service holding the home says who it is
            holder = _holder(root)
            pid = holder if holder and holder > 0 else None
        was_alive = _alive(pid)
        _end_process(pid)
        (root / "service.json").unlink(missing_ok=True)
        _kill_vm_leftovers(root)
    return {"stopped": was_alive, "pid": pid}


def reset(home: Path | None = None) -> dict:
    """stop() and wipe `<home>/local` (instances, buckets, logs)."""
    root = _root(home)
    result = stop(home)
    shutil.rmtree(root, ignore_errors=True)
    return {**result, "wiped": str(root)}


def status(home: Path | None = None) -> dict:
    root = _root(home)
    info = _live_info(root)
    if not info:
        return {"running": False, "home": str(root.parent)}
    return {"running": True, "compute": info["compute"], "storage": info["storage"], "batch": info.get("batch"),
            "control": info["control"],
            "pid": info["pid"], "home": str(root.parent), "started_at": info.get("started_at"),
            "vm_runtime": info.get("vm_runtime"), "version": info.get("version"),
            "timing": info.get("timing"), "time_scale": info.get("time_scale"),
            "token_file": str(root / "token")}
