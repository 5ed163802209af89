"""How a local VM's processes see the machine: like a GCE image, through bubblewrap, or as the
host itself when Linux namespaces are not available.

With bubblewrap (Debian's `bubblewrap`, `bwrap`) every process of the VM (SSH commands and
shells, SFTP, the startup script) runs with:
- the host's filesystem read-only, except its home `/home/<login user>` (the VM's disk) and its
  own `/tmp` (both persist for the VM's life); no other home, its own empty `/run`;
- its own hostname (the VM's name) and a passwd entry that makes `whoami` the login user;
- ferry's own source tree hidden (the interpreter's environment stays visible), so `import
  trainer` works on a VM only once the code was synced, as on Google Cloud;
- the VM's own commands first on PATH (`/run/local-vm/bin`: python3, shutdown, sudo, ...).
The network is shared (the VM reaches its metadata server, Cloud Storage and Compute Engine on
127.0.0.1, as a GCE VM reaches Google's). Without bubblewrap ("none") the VM's processes run in
its disk directory as this machine's user, and `kind` says so.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from pathlib import Path

VM_BIN = "/run/local-vm/bin"
_REPO = Path(__file__).resolve().parents[3]


@functools.lru_cache(maxsize=1)
def bwrap() -> str | None:
    """The bwrap binary, if it can make namespaces here (containers may forbid it)."""
    if os.environ.get("FERRY_LOCAL_SANDBOX", "").lower() == "none":
        return None
    path = shutil.which("bwrap")
    if not path:
        return None
    try:
        ok = subprocess.run([path, "--ro-bind", "/", "/", "--dev", "/dev", "--unshare-uts", "--hostname", "probe",
                             "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        ok = False
    return path if ok else None


class Sandbox:
    """One VM's view of the machine (see the module's docstring)."""

    def __init__(self, disk: Path, state: Path, name: str, login: str = "ferry", uid: int | None = None):
        self.disk, self.state, self.name, self.login = Path(disk), Path(state), name, login
        self.bwrap = bwrap()
        self.uid = os.getuid() if uid is None else uid

    @property
    def kind(self) -> str:
        return "bubblewrap" if self.bwrap else "none"

    # ------------------------------------------------------------------ paths as the VM sees them
    def home(self, user: str | None) -> str:
        if not self.bwrap:
            return str(self.disk)
        return "/root" if user in (None, "root") else f"/home/{user}"
    # The startup script runs as root (HOME=/root, read-only here); the VM's disk is then
    # mounted at its login user's home, as a GCE image's /home/<user>.

    def bin_dir(self) -> str:
        return VM_BIN if self.bwrap else str(self.state / "bin")

    def tmp_dir(self) -> Path:
        path = self.state / "tmp"
        path.mkdir(parents=True, exist_ok=True)
        os.chmod(path, 0o1777)
        return path

    def sftp_mounts(self, user: str) -> list[tuple[str, str]]:
        """[(path on the VM, path here)] for the SFTP server, longest first; the VM's machinery
        (`.vm`) is not part of its home."""
        if not self.bwrap:
            return [(str(self.disk), str(self.disk))]
        return [(self.home(user), str(self.disk)), ("/tmp", str(self.tmp_dir()))]

    # ------------------------------------------------------------------ running
    def _passwd(self, user: str) -> Path:
        """/etc/passwd with the login user first for this uid, so `whoami` answers it."""
        path = self.state / f"passwd-{user}"
        try:
            host = Path("/etc/passwd").read_text()
        except OSError:
            host = ""
        gid = os.getgid()
        line = f"{user}:x:{self.uid}:{gid}:{user}:{self.home(user)}:/bin/bash\n"
        text = line + "".join(l + "\n" for l in host.splitlines() if not l.startswith(f"{user}:"))
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
        return path

    def wrap(self, argv: list[str], user: str | None, cwd: str | None = None) -> list[str]:
        """ARGV as run on the VM by USER (None: root, e.g. the startup script)."""
        if not self.bwrap:
            return list(argv)
        who = user or "root"
        home = self.home(self.login if who == "root" else who)  # where the VM's disk is mounted
        args = [self.bwrap, "--ro-bind", "/", "/", "--dev-bind", "/dev", "/dev", "--proc", "/proc",
                "--unshare-uts", "--unshare-ipc", "--hostname", self.name,
                "--tmpfs", "/home", "--tmpfs", "/run"]
        hidden = [Path("/home"), Path("/run"), Path("/tmp")]
        if (_REPO / "infra" / "local").is_dir():
            args += ["--tmpfs", str(_REPO)]  # ferry's own tree is not on the VM
            hidden.append(_REPO)
        args += ["--bind", str(self.tmp_dir()), "/tmp"]
        for keep in sorted({Path(sys.base_prefix).resolve(), Path(sys.prefix).resolve()}):
            # the interpreter (and its environment) stay, wherever they live (under /tmp in CI)
            if any(h == keep or h in keep.parents for h in hidden):
                args += ["--ro-bind", str(keep), str(keep)]
        args += ["--bind", str(self.disk), home,
                 "--tmpfs", f"{home}/.vm",
                 "--ro-bind", str(self.state / "bin"), VM_BIN,
                 "--ro-bind", str(self._passwd(who)), "/etc/passwd",
                 "--chdir", cwd or self.home(who), "--"]
        return args + list(argv)
