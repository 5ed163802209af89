"""The user's SSH key for ferry VMs: $FERRY_HOME/ssh/id_ed25519 (mode 0600), made on first use.

Two CLIs starting at once make one key, not two: creation holds a file lock.
"""

from __future__ import annotations

import os
from pathlib import Path

SSH_USER = "ferry"


def key_path(home: Path) -> Path:
    return Path(home) / "ssh" / "id_ed25519"


def ensure_key(home: Path) -> tuple[Path, str]:
    """(private key path, public key line `ssh-ed25519 AAAA...`), creating the pair if absent."""
    path = key_path(home)
    pub = path.with_name(path.name + ".pub")
    if not (path.exists() and pub.exists()):
        from filelock import FileLock

        path.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(path.parent, 0o700)
        with FileLock(str(path.with_name(".keygen.lock")), timeout=30):
            if not (path.exists() and pub.exists()):
                _generate(path, pub)
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        os.chmod(path, 0o600)  # ssh refuses keys others can read; so do we
    return path, pub.read_text().split()[0] + " " + pub.read_text().split()[1]


def _generate(path: Path, pub: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(private)
    os.replace(tmp, path)
    pub.write_text(public.decode() + f" {SSH_USER}\n")


def ssh_keys_metadata(public_key: str, user: str = SSH_USER) -> str:
    """The `ssh-keys` metadata value: `USER:ssh-ed25519 AAAA... USER`."""
    return f"{user}:{public_key} {user}"
