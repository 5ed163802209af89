"""Shared helpers for the local-VM tests: client keys, pinned Fabric connections, cleanup."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

from infra.local.vm import LocalVm, VmSpec
from infra.local.vm import processes
from infra.local.testing import wait_until as wait_for  # noqa: F401 (the tests import it from here)


def make_client_key(path: Path) -> str:
    """Write an ed25519 private key (OpenSSH format, 0600) at path; return 'ssh-ed25519 AAAA...'."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()))
    pub = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    return pub


def connect(vm: LocalVm, key_path: Path, user: str = "ferry", host_key: str | None = None, timeout: float = 10):
    """A Fabric Connection to the VM with its host key pinned (paramiko RejectPolicy)."""
    import paramiko
    from fabric import Config, Connection

    cfg = Config(overrides={"load_ssh_configs": False, "run": {"hide": True, "warn": True, "in_stream": False}})
    conn = Connection(
        "127.0.0.1", port=vm.ssh_port, user=user, config=cfg, connect_timeout=timeout,
        connect_kwargs={"key_filename": str(key_path), "look_for_keys": False, "allow_agent": False, "banner_timeout": timeout, "auth_timeout": timeout},
    )
    client = conn.client
    client.get_host_keys().clear()
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    kind, blob = (host_key or vm.host_key_public).split()[:2]
    client.get_host_keys().add(f"[127.0.0.1]:{vm.ssh_port}", kind, paramiko.Ed25519Key(data=base64.b64decode(blob)))
    return conn


@pytest.fixture
def client_key(tmp_path):
    path = tmp_path / "id_ed25519"
    return path, make_client_key(path)


@pytest.fixture
def make_vm(tmp_path, client_key):
    """make_vm(ssh_mode='asyncssh', user='ferry', env=None, metadata=None) -> started LocalVm;
    every VM is stopped at teardown and none of its processes may survive."""
    made: list[LocalVm] = []

    def make(ssh_mode: str = "asyncssh", user: str = "ferry", env: dict | None = None, metadata: dict | None = None, name: str | None = None) -> LocalVm:
        name = name or f"vm{len(made)}"
        md = {"ssh-keys": f"{user}:{client_key[1]} {user}"}
        md.update(metadata or {})
        spec = VmSpec(name=name, zone="us-central1-a", project="ferry-local", disk_dir=tmp_path / f"disk-{name}",
                      metadata=md, labels={"managed-by": "ferry"}, env=env or {}, ssh_mode=ssh_mode)
        vm = LocalVm(spec)
        made.append(vm)
        vm.start()
        return vm

    yield make
    for vm in made:
        vm.stop()
        assert vm.pids() == []
        assert processes.find(vm.spec.marker, processes.SYSTEM_VAR) == []


CRASHING_SERVICE = r"""
import os, sys, time
from pathlib import Path
from infra.local.vm import LocalVm, VmSpec
vm = LocalVm(VmSpec(name="crash", zone="us-central1-a", project="p", disk_dir=Path(sys.argv[1]),
                    metadata={"ssh-keys": sys.argv[3], "startup-script": "setsid nohup sleep 1000 >/dev/null 2>&1 &"},
                    ssh_mode=sys.argv[2]))
vm.start()
print(vm.ssh_port, flush=True)
time.sleep(1000)
"""


def crash_service_with_vm(tmp_path: Path, mode: str, pub: str):
    """Run a VM in a child 'service' process and SIGKILL that process: its VM's processes
    (and sshd, in openssh mode) are left behind, as after a crash. -> (spec, port, leftovers)"""
    import signal
    import subprocess
    import sys

    disk = tmp_path / f"crash-{mode}"
    root = str(Path(__file__).resolve().parents[2])
    proc = subprocess.Popen([sys.executable, "-c", CRASHING_SERVICE, str(disk), mode, f"ferry:{pub}"],
                            stdout=subprocess.PIPE, text=True, cwd=root, env={**os.environ, "PYTHONPATH": root})
    try:
        port = int(proc.stdout.readline())
        spec = VmSpec(name="crash", zone="us-central1-a", project="p", disk_dir=disk, ssh_mode=mode)
        assert wait_for(lambda: processes.find(spec.marker))
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
    leftovers = processes.find(spec.marker) + processes.find(spec.marker, processes.SYSTEM_VAR)
    return spec, port, leftovers
