"""LocalVm: the runtime of one local VM (SSH server, metadata server, startup script, processes).

A local VM is a directory (its disk) plus the processes started in it; it is not isolation.
"""

from __future__ import annotations

import functools
import getpass
import logging
import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from . import processes
from .metadata import MetadataServer, MetadataState, StandaloneHost
from .sandbox import Sandbox
from .spec import VmError, VmSpec, parse_ssh_keys

HOST_KEY_NAME = "ssh_host_ed25519_key"
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
BASH = shutil.which("bash") or "/bin/bash"
STOP_GRACE = 2.0  # seconds between SIGTERM and SIGKILL when a VM stops (a GCE guest gets a shutdown, not a kill)
_BARE_MODULES = ("numpy", "sklearn", "PIL", "numba", "google.cloud.storage", "google.auth")

log = logging.getLogger("ferry.local.vm")


@functools.lru_cache(maxsize=1)
def bare_python() -> list[str]:
    """python3 of a bare OS image (python="bare"): this machine's /usr/bin/python3 when it
    lacks the trainer's packages, else this interpreter without its site-packages (-S)."""
    system = "/usr/bin/python3"
    probe = ("import importlib.util as u, sys\n"
             "def has(m):\n"
             "    try:\n"
             "        return u.find_spec(m) is not None\n"
             "    except ImportError:\n"
             "        return False\n"
             f"sys.exit(1 if any(has(m) for m in {_BARE_MODULES!r}) else 0)")
    if os.path.exists(system):
        try:
            if subprocess.run([system, "-c", probe], capture_output=True, timeout=10).returncode == 0:
                return [system]
        except (OSError, subprocess.SubprocessError):
            pass
    return [sys.executable, "-S"]


def os_user() -> str:
    try:
        return getpass.getuser()
    except Exception:
        return os.environ.get("USER", "root")


def ensure_host_key(state_dir: Path) -> str:
    """Load (or create once) the VM's ed25519 host key; returns the public key line."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key_path = state_dir / HOST_KEY_NAME
    pub_path = state_dir / (HOST_KEY_NAME + ".pub")
    if not key_path.exists():
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption())
        tmp = key_path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        os.replace(tmp, key_path)
        pub_path.unlink(missing_ok=True)
    os.chmod(key_path, 0o600)
    if not pub_path.exists():
        key = serialization.load_ssh_private_key(key_path.read_bytes(), password=None)
        pub = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        pub_path.write_text(pub.decode() + " root@local-vm\n")
    return " ".join(pub_path.read_text().split()[:2])


# Commands a GCE image has that must act on the local VM, not on this machine: powering off
# (the guest's way to stop its instance) and sudo (passwordless on GCE images; here the VM's
# user is already this machine's user, so it runs the command as it is).
_POWEROFF_NAMES = ("poweroff", "halt", "shutdown", "reboot")
_POWEROFF = """#!/bin/sh
# local VM: power off this VM (its instance becomes TERMINATED), never the machine it runs on
exec python3 -c '
import os, urllib.request
req = urllib.request.Request("http://%s/_ferry/poweroff" % os.environ["GCE_METADATA_HOST"], data=b"",
                             headers={"Metadata-Flavor": "Google"}, method="POST")
urllib.request.urlopen(req, timeout=10).read()
'
"""
_SUDO = """#!/bin/sh
# local VM: the login user is already this machine's user; run the command as it is
while [ $# -gt 0 ]; do
  case "$1" in
    -u|-g) shift 2 ;;
    --) shift; break ;;
    -*) shift ;;
    *) break ;;
  esac
done
exec "$@"
"""


class LocalVm:
    """One local VM. Thread-safe; every method is synchronous. See infra/local/vm/__init__.py.

    `host` is what the VM asks of the cloud it runs in (guest attributes, service account
    tokens, powering off): the local Compute Engine's, or a StandaloneHost."""

    def __init__(self, spec: VmSpec, host=None):
        self.spec = spec
        self.host = host or StandaloneHost()
        if isinstance(self.host, StandaloneHost):
            self.host.on_poweroff = self.stop
        self._lock = threading.RLock()
        self._running = False
        self._sshd = None
        self._meta: MetadataServer | None = None
        self._meta_state: MetadataState | None = None
        self._pgids: set[int] = set()
        # its own lock: the SSH server's event loop records each spawn while stop() or
        # drop_connections() (holding self._lock) may be waiting on that same loop
        self._pgid_lock = threading.Lock()
        self._children: list[subprocess.Popen] = []
        self._host_key = ""
        self._booted = threading.Event()
        self._halted = threading.Event()
        users = [u for u, _, _ in parse_ssh_keys(spec.metadata.get("ssh-keys"))]
        self.sandbox = Sandbox(spec.disk_dir, spec.state_dir, spec.name, login=users[0] if users else "ferry")

    # ------------------------------------------------------------------ properties
    @property
    def ssh_port(self) -> int:
        return self._sshd.port if self._sshd else 0

    @property
    def host_key_public(self) -> str:
        """'ssh-ed25519 AAAA...' (what GCE publishes as guest attribute hostkeys/ssh-ed25519)."""
        return self._host_key or ensure_host_key(self._state_dir())

    @property
    def metadata_host(self) -> str:
        return self._meta.host if self._meta else ""

    @property
    def ssh_user(self) -> str | None:
        """The user to log in as: None in asyncssh mode (any user named in `ssh-keys`); in
        openssh mode the OS user running the service (the system sshd needs a real user)."""
        return os_user() if self.spec.ssh_mode == "openssh" else None

    @property
    def running(self) -> bool:
        return self._running

    @property
    def startup_log(self) -> Path:
        return self.spec.state_dir / "startup.log"

    def _state_dir(self) -> Path:
        d = self.spec.state_dir
        d.mkdir(parents=True, exist_ok=True)
        os.chmod(d, 0o700)
        return d

    # ------------------------------------------------------------------ environment
    def _install_shims(self) -> None:
        """`.vm/bin`: python3 as this interpreter (where its own directory has none), and the
        image's commands that must act on the VM: shutdown, poweroff, halt, reboot, sudo."""
        exe = sys.executable
        shim_dir = self.spec.state_dir / "bin"
        shim_dir.mkdir(exist_ok=True)
        own = os.path.join(os.path.dirname(exe), "python3")
        scripts = {name: _POWEROFF for name in _POWEROFF_NAMES}
        scripts["sudo"] = _SUDO
        if self.spec.python == "bare":
            for name in ("python3", "python"):
                scripts[name] = f"#!/bin/sh\nexec {shlex.join(bare_python())} \"$@\"\n"
        elif not (os.path.exists(own) and os.path.realpath(own) == os.path.realpath(exe)):
            for name in ("python3", "python"):
                scripts[name] = f"#!/bin/sh\nexec {shlex.quote(exe)} \"$@\"\n"
        else:
            for name in ("python3", "python"):
                (shim_dir / name).unlink(missing_ok=True)
        for name, text in scripts.items():
            shim = shim_dir / name
            if not shim.exists() or shim.read_text() != text:
                shim.write_text(text)
                shim.chmod(0o755)

    @property
    def isolation(self) -> str:
        """How the VM's processes are kept apart from this machine: bubblewrap or none."""
        return self.sandbox.kind if self.spec.ssh_mode == "asyncssh" else "none"

    def session_env(self, user: str | None = None, term: str | None = None) -> dict[str, str]:
        """The environment of every process on the VM (what sshd would give a login)."""
        user = user or os_user()
        home = self.sandbox.home(user) if self.spec.ssh_mode == "asyncssh" else str(self.spec.disk_dir)
        bin_dir = self.sandbox.bin_dir() if self.spec.ssh_mode == "asyncssh" else str(self.spec.state_dir / "bin")
        # a bare image's python3 is its own (the shim), not the service's interpreter
        path = f"{bin_dir}:{SYSTEM_PATH}" if self.spec.python == "bare" else f"{bin_dir}:{os.path.dirname(sys.executable)}:{SYSTEM_PATH}"
        env = {
            "PATH": path,
            "HOME": home,
            "PWD": home,
            "USER": user,
            "LOGNAME": user,
            "SHELL": BASH,
            "LANG": "C.UTF-8",
        }
        if self.spec.python == "bare":  # no package index: the local cloud installs nothing
            env.update({"PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
        env.update(self.spec.env)
        host = self.metadata_host
        env.update({"GCE_METADATA_HOST": host, "GCE_METADATA_IP": host, processes.MARKER_VAR: self.spec.marker})
        if term:
            env["TERM"] = term
        return env

    def wrap(self, argv: list[str], user: str | None, cwd: str | None = None) -> list[str]:
        """ARGV as the VM runs it for USER (None: root): inside its sandbox when there is one."""
        return self.sandbox.wrap(argv, user, cwd) if self.spec.ssh_mode == "asyncssh" else list(argv)

    def _keys(self) -> str:
        """The keys sshd accepts: metadata ssh-keys, unless OS Login is enforced (then none of them)."""
        if getattr(self.host, "os_login_enforced", lambda: False)():
            return ""
        return self.spec.metadata.get("ssh-keys", "")

    def _on_spawn(self, pgid: int) -> None:
        with self._pgid_lock:
            self._pgids.add(pgid)

    def _reap(self, proc: subprocess.Popen, after=None) -> None:
        def wait():
            code = proc.wait()
            if after:
                after(code)
        threading.Thread(target=wait, name=f"vm-reap-{proc.pid}", daemon=True).start()

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Boot: metadata server, then SSH server (returns once it listens), the guest agent's
        host keys and the startup script; with `guest_agent_delay_s`, those three come that
        long after start() returns (on a thread), as on GCE some time after RUNNING."""
        with self._lock:
            if self._running:
                return
            if self.spec.python == "bare" and self.isolation == "none":
                # its startup script runs as root and installs packages: never on this machine
                raise VmError(f"local VM {self.spec.name}: image {self.spec.image or 'of a bare OS'} runs only "
                              "inside bubblewrap (its startup script runs as root and would install packages "
                              "on this machine)",
                              hint="install bubblewrap (apt-get install bubblewrap) and use --vm-runtime asyncssh, "
                                   "or a Deep Learning VM image")
            self.spec.disk_dir.mkdir(parents=True, exist_ok=True)
            state_dir = self._state_dir()
            self._host_key = ensure_host_key(state_dir)
            self._install_shims()
            # leftovers of an earlier life of this disk (a service that crashed): gone first
            processes.kill_all(self.spec.marker, deadline=1.0)
            self._pgids = set()
            self._booted = threading.Event()
            self._halted = threading.Event()
            self._meta_state = MetadataState(self.spec.name, self.spec.zone, self.spec.project, self.spec.metadata,
                                             scopes=self.spec.scopes, machine_type=self.spec.machine_type,
                                             host=self.host)
            self._meta = MetadataServer(self._meta_state)
            self._meta.start()
            delay = self.spec.guest_agent_delay_s
            if delay <= 0:
                try:
                    self._start_sshd(state_dir)
                except BaseException:
                    self._running = True
                    self.stop()
                    raise
                self._running = True
                self._guest_boot()
                return
            self._running = True
            halted = self._halted
            threading.Thread(target=self._late_boot, args=(delay, halted, state_dir), daemon=True,
                             name=f"vm-boot-{self.spec.name}").start()

    def wait_booted(self, timeout: float | None = None) -> bool:
        """Whether SSH listens and the guest agent ran (at once without guest_agent_delay_s)."""
        return self._booted.wait(timeout)

    def _start_sshd(self, state_dir: Path) -> None:
        if self.spec.ssh_mode == "openssh":
            from .sshd_openssh import OpenSshd

            self._sshd = OpenSshd(vm=self)
        else:
            from .sshd_embedded import EmbeddedSshd

            self._sshd = EmbeddedSshd(
                host_key_path=state_dir / HOST_KEY_NAME, disk_dir=self.spec.disk_dir,
                keys=self._keys, env_for=self.session_env, on_spawn=self._on_spawn,
                wrap=self.wrap, sftp_mounts=self.sandbox.sftp_mounts,
                home_for=lambda user: self.session_env(user)["HOME"],
            )
        self._sshd.start()

    def _guest_boot(self) -> None:
        self._guest_agent()
        self._run_startup_script()
        self._booted.set()

    def _late_boot(self, delay: float, halted: threading.Event, state_dir: Path) -> None:
        """The guest's boot after `delay` s: SSH server, host keys, startup script (unless the
        VM stopped meanwhile). A failure leaves the VM RUNNING without SSH, as a broken guest."""
        if halted.wait(delay):
            return
        with self._lock:
            if halted.is_set() or not self._running:
                return
            try:
                self._start_sshd(state_dir)
                self._guest_boot()
            except Exception as e:
                log.exception("VM %s: the guest failed to boot", self.spec.name)
                try:
                    with open(self.startup_log, "ab") as f:
                        f.write(f"--- guest boot failed: {e}\n".encode())
                except OSError:
                    pass

    def _guest_agent(self) -> None:
        """What Google's guest agent does at boot: publish the SSH host key (and, locally, the
        port and login user) as guest attributes, written through the metadata server with
        PUT, when guest attributes are enabled."""
        import urllib.error
        import urllib.request

        key_type, blob = self._host_key.split()[:2]
        values = {f"hostkeys/{key_type}": blob, "ssh/port": str(self.ssh_port)}
        if self.ssh_user:
            values["ssh/user"] = self.ssh_user
        for key, value in values.items():
            req = urllib.request.Request(f"http://{self.metadata_host}/computeMetadata/v1/instance/guest-attributes/{key}",
                                         data=value.encode(), method="PUT", headers={"Metadata-Flavor": "Google"})
            try:
                urllib.request.urlopen(req, timeout=5).read()
            except urllib.error.HTTPError as exc:
                if exc.code == 403:  # guest attributes disabled: nothing is published, as on GCE
                    return
                raise

    def _run_startup_script(self) -> None:
        script = self.spec.metadata.get("startup-script")
        if not script:
            return
        path = self.spec.state_dir / "bin" / ".startup-script"  # where the VM can see it
        path.write_text(script)
        path.chmod(0o700)
        vm_path = f"{self.sandbox.bin_dir()}/.startup-script" if self.isolation != "none" else str(path)
        log = open(self.startup_log, "ab")
        log.write(f"--- {time.strftime('%Y-%m-%dT%H:%M:%S%z')} startup-script: starting\n".encode())
        log.flush()
        # Google's guest agent runs the script as root, with its shebang honoured, else with bash.
        argv = self.wrap([vm_path] if script.startswith("#!") else [BASH, vm_path], None, "/")
        env = self.session_env("root")
        proc = subprocess.Popen(
            argv, cwd=self.spec.disk_dir, env=env,
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, close_fds=True,
        )
        log.close()
        self._on_spawn(proc.pid)

        def done(code: int) -> None:
            with open(self.startup_log, "ab") as f:
                f.write(f"--- startup-script exit status {code}\n".encode())

        self._reap(proc, done)

    def update_metadata(self, items: dict[str, str]) -> None:
        """After setMetadata: `items` is the instance's whole metadata now. A changed
        `ssh-keys` applies to new SSH connections; metadata long polls wake."""
        with self._lock:
            self.spec.metadata = dict(items)
            if self._meta_state is not None:
                self._meta_state.update(attributes=dict(items))
            if self._running and hasattr(self._sshd, "keys_changed"):
                self._sshd.keys_changed()

    def set_preempted(self) -> None:
        if self._meta_state is not None:
            self._meta_state.update(preempted="TRUE")

    def set_maintenance_event(self, value: str) -> None:
        if self._meta_state is not None:
            self._meta_state.update(maintenance_event=value)

    def drop_connections(self) -> None:
        """Close every SSH connection; the server keeps listening (a network blip)."""
        with self._lock:
            sshd = self._sshd if self._running else None
        if sshd is not None:  # outside the lock: it waits on the server's loop
            sshd.drop_connections()

    def stop(self, grace: float = STOP_GRACE) -> None:
        """Power off: every process the VM started gets SIGTERM, then SIGKILL after `grace`
        seconds; the SSH port and the metadata server close. Idempotent."""
        with self._lock:
            if not self._running:
                return
            self._running = False
            self._halted.set()
            sshd, self._sshd = self._sshd, None
            if sshd is not None:
                sshd.stop()  # no new sessions; connections aborted
            with self._pgid_lock:
                pgids = set(self._pgids)
            left = processes.kill_all(self.spec.marker, pgids=pgids, grace=grace)
            if self._meta is not None:
                self._meta.stop()
                self._meta = None
            if sshd is not None and hasattr(sshd, "close_loop"):
                sshd.close_loop()
            self._pgids = set()
            if left:
                raise VmError(f"local VM {self.spec.name}: processes {left} survived SIGKILL")

    def pids(self) -> list[int]:
        """Live processes started on the VM (commands, their children, the startup script)."""
        return processes.find(self.spec.marker)

    def __enter__(self) -> "LocalVm":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self._running else "stopped"
        return f"<LocalVm {self.spec.name} {self.spec.ssh_mode} {state} ssh=127.0.0.1:{self.ssh_port} metadata={self.metadata_host}>"
