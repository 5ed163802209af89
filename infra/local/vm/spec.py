"""What a local VM is made of: its spec, and the parsing of GCE's `ssh-keys` metadata."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from infra.errors import CloudError

SSH_MODES = ("asyncssh", "openssh")
PYTHONS = ("ferry", "bare")  # the VM's python3: the service's own (a Deep Learning VM's), or a bare OS's


class VmError(CloudError):
    """A local VM could not start or be driven (exit code 3, like any infrastructure error)."""


@dataclass
class VmSpec:
    """One local VM: its identity, its disk (a directory), its metadata and how it serves SSH.

    `metadata` holds every instance metadata item ('ssh-keys', 'startup-script', ...).
    `env` is extra environment for every process on the VM (e.g. STORAGE_EMULATOR_HOST).
    `scopes` and `machine_type` are what its metadata server tells about it.
    `image` is the boot disk's image (`projects/P/global/images/NAME`, informational) and
    `python` what that image's python3 is: "ferry" (the service's interpreter, with the
    trainer's packages) or "bare" (a plain OS image's, without them; needs bubblewrap).
    `guest_agent_delay_s`: how long after start() the SSH server listens, the host keys are
    published as guest attributes and the startup script runs (GCE: 20-60 s after RUNNING).
    """

    name: str
    zone: str
    project: str
    disk_dir: Path
    metadata: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    ssh_mode: str = "asyncssh"
    scopes: list[str] | None = None       # the default service account's scopes (None: broad)
    machine_type: str = "n1-standard-1"
    image: str = ""
    python: str = "ferry"
    guest_agent_delay_s: float = 0.0

    def __post_init__(self) -> None:
        self.disk_dir = Path(self.disk_dir).expanduser().resolve()
        if self.ssh_mode not in SSH_MODES:
            raise VmError(f"unknown ssh_mode {self.ssh_mode!r}", hint="valid: asyncssh, openssh")
        if self.python not in PYTHONS:
            raise VmError(f"unknown python {self.python!r}", hint="valid: " + ", ".join(PYTHONS))
        self.guest_agent_delay_s = max(0.0, float(self.guest_agent_delay_s or 0.0))
        self.metadata = dict(self.metadata or {})
        self.labels = dict(self.labels or {})
        self.env = {str(k): str(v) for k, v in (self.env or {}).items()}

    @property
    def marker(self) -> str:
        """Value of FERRY_LOCAL_VM for every process of this VM: stable per disk directory, so
        a VM started again on the same disk (e.g. after the service crashed) finds leftovers."""
        digest = hashlib.sha1(str(self.disk_dir).encode()).hexdigest()[:12]
        return f"{self.name}-{digest}"

    @property
    def state_dir(self) -> Path:
        """The VM's hidden machinery folder: host key, logs, sshd config."""
        return self.disk_dir / ".vm"


def parse_ssh_keys(value: str | None) -> list[tuple[str, str, bytes]]:
    """`ssh-keys` metadata -> [(user, key_type, key_blob)]; malformed lines are skipped.

    Format (GCE): one `USER:KEY_TYPE BASE64 [COMMENT]` per line; GCE also accepts
    `USER:KEY_TYPE BASE64 google-ssh {"userName":..., "expireOn":...}` (expiry ignored here).
    """
    import base64
    import binascii

    out = []
    for line in (value or "").splitlines():
        line = line.strip()
        if not line or line.startswith("#") or ":" not in line:
            continue
        user, _, key = line.partition(":")
        parts = key.split()
        if len(parts) < 2 or not user.strip():
            continue
        try:
            blob = base64.b64decode(parts[1], validate=True)
        except (binascii.Error, ValueError):
            continue
        out.append((user.strip(), parts[0], blob))
    return out
