#!/usr/bin/env python3
"""Timings of the local Google Cloud (its `fast` timing profile): service cold start, a VM from
insert to SSH-ready, a command over SSH, a delete until every process is gone, service stop,
for each VM runtime (asyncssh, and openssh where sshd is installed), with the isolation of the
VM's processes (bubblewrap or none). Targets are printed, not asserted.

    .venv/bin/python bench/local_gcp.py [-n 5] [--vm-runtime all|asyncssh|openssh]

Uses the official clients over HTTP, polls operations client-side every 10 ms (the compute
client's own polling takes 0.4-1 s). Medians of n runs; each run uses a fresh FERRY_HOME.
"""

from __future__ import annotations

import argparse
import base64
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from infra.local.vm.processes import alive  # noqa: E402

TARGETS = {"service cold start": 1.0, "insert -> RUNNING": None, "insert -> SSH-ready": 1.0,
           "command over SSH": None, "delete -> all processes gone": 1.0, "service stop": None}


def _key(tmp: Path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    path = tmp / "id_ed25519"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()))
    path.chmod(0o600)
    return path, key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()


def one_run(vm_runtime: str, commands: int) -> dict[str, list[float]]:
    import paramiko
    from fabric import Config, Connection
    from google.cloud import compute_v1

    from infra.local import service
    from infra.local.control import Control
    from infra.local.testing import LocalCloud, instance_resource, wait_operation

    out: dict[str, list[float]] = {k: [] for k in TARGETS}
    with tempfile.TemporaryDirectory(prefix="ferry-bench-") as tmp:
        home = Path(tmp)
        key_path, pub = _key(home)
        t0 = time.perf_counter()
        endpoints = service.ensure_running(home, vm_runtime=vm_runtime)
        out["service cold start"].append(time.perf_counter() - t0)
        try:
            cloud = LocalCloud(home, endpoints, Control(endpoints))
            instances = compute_v1.InstancesClient(**cloud.compute_options())
            ops_poll = 0.01
            # warm the HTTP connection and the service's VM runtime import, as a real session would
            list(instances.list(project="ferry-local", zone="us-central1-a"))
            time.sleep(0.5)
            t0 = time.perf_counter()
            op = instances.insert(project="ferry-local", zone="us-central1-a", instance_resource=instance_resource(
                "bench-1", metadata={"ssh-keys": f"ferry:{pub} ferry"}))
            wait_operation(cloud, op, poll_s=ops_poll)
            out["insert -> RUNNING"].append(time.perf_counter() - t0)
            ga = instances.get_guest_attributes(request={"project": "ferry-local", "zone": "us-central1-a",
                                                         "instance": "bench-1", "query_path": ""})
            attrs = {f"{e.namespace}/{e.key}": e.value for e in ga.query_value.items}
            port = int(attrs["ssh/port"])
            cfg = Config(overrides={"load_ssh_configs": False, "run": {"hide": True, "warn": True, "in_stream": False}})
            conn = Connection("127.0.0.1", port=port, user=attrs.get("ssh/user", "ferry"), config=cfg, connect_timeout=10,
                              connect_kwargs={"key_filename": str(key_path), "look_for_keys": False, "allow_agent": False})
            conn.client.set_missing_host_key_policy(paramiko.RejectPolicy())
            conn.client.get_host_keys().add(f"[127.0.0.1]:{port}", "ssh-ed25519",
                                            paramiko.Ed25519Key(data=base64.b64decode(attrs["hostkeys/ssh-ed25519"])))
            assert conn.run("true").ok
            out["insert -> SSH-ready"].append(time.perf_counter() - t0)
            for _ in range(commands):
                t1 = time.perf_counter()
                conn.run("echo ok")
                out["command over SSH"].append(time.perf_counter() - t1)
            conn.run("nohup sleep 300 >/dev/null 2>&1 &")
            pids = next(i["pids"] for i in cloud.control.instances() if i["name"] == "bench-1")
            conn.close()
            t0 = time.perf_counter()
            wait_operation(cloud, instances.delete(project="ferry-local", zone="us-central1-a", instance="bench-1"), poll_s=ops_poll)
            while any(alive(p) for p in pids):
                time.sleep(0.005)
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                raise AssertionError("SSH port still open after delete")
            except ConnectionRefusedError:
                pass
            out["delete -> all processes gone"].append(time.perf_counter() - t0)
        finally:
            t0 = time.perf_counter()
            service.stop(home)
            out["service stop"].append(time.perf_counter() - t0)
    return out


def isolation(vm_runtime: str) -> str:
    """LocalVm.isolation for a VM of this runtime (what the service's VMs get here)."""
    from infra.local.vm import LocalVm, VmSpec

    with tempfile.TemporaryDirectory(prefix="ferry-bench-iso-") as tmp:
        return LocalVm(VmSpec(name="probe", zone="us-central1-a", project="ferry-local", disk_dir=tmp,
                              ssh_mode=vm_runtime)).isolation


def report(vm_runtime: str, n: int, commands: int) -> None:
    runs: dict[str, list[float]] = {k: [] for k in TARGETS}
    for _ in range(n):
        for k, v in one_run(vm_runtime, commands).items():
            runs[k].extend(v)
    print(f"local Google Cloud, timing profile fast, VM runtime {vm_runtime}, isolation {isolation(vm_runtime)}, "
          f"{n} runs, {os.cpu_count()} CPUs")
    print(f"{'step':32} {'median':>9} {'min':>9} {'max':>9}  target")
    for k, v in runs.items():
        target = TARGETS[k]
        mark = "" if not target else f"< {target:g} s " + ("ok" if statistics.median(v) < target else "MISSED")
        print(f"{k:32} {statistics.median(v) * 1000:7.0f}ms {min(v) * 1000:7.0f}ms {max(v) * 1000:7.0f}ms  {mark}")
    print()


def main() -> int:
    from infra.local.vm import openssh_available

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=5, help="runs (default 5)")
    ap.add_argument("--commands", type=int, default=20, help="SSH commands per run (default 20)")
    ap.add_argument("--vm-runtime", default="all", choices=["all", "asyncssh", "openssh"],
                    help="all (default): asyncssh, and openssh where sshd is installed")
    args = ap.parse_args()
    # the figures are the fast profile's, whatever this shell's environment says
    os.environ["FERRY_LOCAL_TIMING"], os.environ["FERRY_LOCAL_TIME_SCALE"] = "fast", "1.0"
    runtimes = [args.vm_runtime] if args.vm_runtime != "all" else ["asyncssh"] + (["openssh"] if openssh_available() else [])
    if args.vm_runtime == "all" and not openssh_available():
        print("openssh: skipped (no sshd installed)\n")
    for vm_runtime in runtimes:
        report(vm_runtime, args.n, args.commands)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
