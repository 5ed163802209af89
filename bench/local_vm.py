"""Measure a local VM: start -> SSH listening, first command, command round trip over Fabric,
SFTP put of 1 MiB, stop -> every process gone. `python bench/local_vm.py [asyncssh|openssh] [-n N]`

Figures go into docs/local-vms.md; noisy machines: look at medians over several runs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import sys

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from infra.local.vm import LocalVm, VmSpec, openssh_available  # noqa: E402


def _key(path: Path) -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()))
    return key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()


def _connect(vm: LocalVm, key: Path, user: str):
    import base64

    import paramiko
    from fabric import Config, Connection

    c = Connection("127.0.0.1", port=vm.ssh_port, user=user,
                   config=Config(overrides={"load_ssh_configs": False, "run": {"hide": True, "in_stream": False}}),
                   connect_kwargs={"key_filename": str(key), "look_for_keys": False, "allow_agent": False})
    c.client.set_missing_host_key_policy(paramiko.RejectPolicy())
    kind, blob = vm.host_key_public.split()[:2]
    c.client.get_host_keys().add(f"[127.0.0.1]:{vm.ssh_port}", kind, paramiko.Ed25519Key(data=base64.b64decode(blob)))
    return c


def once(mode: str, root: Path, i: int) -> dict:
    key = root / f"k{i}"
    pub = _key(key)
    user = "ferry"
    vm = LocalVm(VmSpec(name=f"bench{i}", zone="us-central1-a", project="ferry-local", disk_dir=root / f"d{i}",
                        metadata={"ssh-keys": f"{user}:{pub} {user}"}, ssh_mode=mode))
    out = {}
    t0 = time.perf_counter()
    vm.start()
    out["start"] = time.perf_counter() - t0
    user = vm.ssh_user or user
    c = _connect(vm, key, user)
    c.open()
    out["connect"] = time.perf_counter() - t0 - out["start"]
    c.run("true")
    out["first_command"] = time.perf_counter() - t0
    rts = []
    for _ in range(10):
        t = time.perf_counter()
        c.run("true")
        rts.append(time.perf_counter() - t)
    out["round_trip"] = statistics.median(rts)
    blob = root / "blob"
    blob.write_bytes(os.urandom(1 << 20))
    t = time.perf_counter()
    c.put(str(blob), "blob")
    out["sftp_put_1MiB"] = time.perf_counter() - t
    c.run("setsid nohup sleep 1000 >/dev/null 2>&1 & sleep 1000 >/dev/null 2>&1 & true")
    deadline = time.monotonic() + 2  # the two sleeps start just after the command returns
    while len(vm.pids()) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    n = len(vm.pids())
    t = time.perf_counter()
    vm.stop()
    out["stop_all_gone"] = time.perf_counter() - t
    assert vm.pids() == [] and n >= 2
    c.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("modes", nargs="*", default=["asyncssh", "openssh"])
    ap.add_argument("-n", type=int, default=5)
    args = ap.parse_args()
    for mode in args.modes:
        if mode == "openssh" and not openssh_available():
            print(f"{mode}: skipped (sshd not installed)")
            continue
        with tempfile.TemporaryDirectory() as tmp:
            runs = [once(mode, Path(tmp), i) for i in range(args.n)]
        print(f"{mode} (median of {args.n}, ms): " + ", ".join(
            f"{k} {statistics.median(r[k] for r in runs) * 1000:.0f} [{min(r[k] for r in runs) * 1000:.0f}-{max(r[k] for r in runs) * 1000:.0f}]"
            for k in runs[0]))


if __name__ == "__main__":
    main()
