"""OpenSSH's own clients (ssh, scp, sftp, rsync) against a local VM that ferry brought up, each
checking what a GCE image gives them: bash as the login shell, exit statuses, `-L` forwarding,
scp exiting 0, and one filesystem view (home, /tmp) for ssh, sftp, scp and rsync."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import urllib.request

import pytest

pytestmark = pytest.mark.skipif(not (shutil.which("ssh") and shutil.which("scp") and shutil.which("sftp")),
                                reason="OpenSSH clients not installed")


@pytest.fixture(scope="module")
def vm(tmp_path_factory):
    from infra import clients, provision
    from infra.local.testing import local_cloud
    from infra.settings import resolve

    home = tmp_path_factory.mktemp("ferry-home") / "home"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FERRY_HOME", str(home))
        for var in ("GOOGLE_CLOUD_PROJECT", "CLOUDSDK_CORE_PROJECT", "FERRY_BACKEND", "FERRY_BUCKET"):
            mp.delenv(var, raising=False)
        clients.reset_cache()
        with local_cloud(home, vm_runtime="asyncssh") as cloud:
            v = provision.up(resolve(), template="cpu", name="ossh-conf")
            known = home / "known_hosts"
            known.write_text(f"[{v.host}]:{v.port} {v.host_key}\n")
            v.known_hosts, v.cloud = known, cloud
            yield v
        clients.reset_cache()


def ssh_opts(vm) -> list[str]:
    return ["-i", str(vm.key_path), "-o", f"UserKnownHostsFile={vm.known_hosts}", "-o", "StrictHostKeyChecking=yes",
            "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "LogLevel=ERROR"]


def ssh(vm, command: str, *extra, timeout=30):
    return subprocess.run(["ssh", *ssh_opts(vm), "-p", str(vm.port), *extra, f"{vm.user}@{vm.host}", command],
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def test_bash_is_the_shell_and_exit_statuses_come_back(vm):
    r = ssh(vm, "set -o pipefail; false | true; echo rc=$?; echo ${BASH_VERSION:+bash}")
    assert r.returncode == 0 and r.stdout.split() == ["rc=1", "bash"], r.stderr
    assert ssh(vm, "exit 7").returncode == 7
    r = ssh(vm, 'echo "$(whoami) $USER $HOME"')
    who, user, home = r.stdout.split()
    assert who == user == vm.user  # the login user is who commands run as
    assert ssh(vm, "pwd").stdout.strip() == home


def test_a_vm_is_its_own_machine(vm):
    """Its own hostname and /tmp; ferry's code is not importable before a sync."""
    from infra.local.vm.sandbox import bwrap

    if not bwrap():
        pytest.skip("no bubblewrap here: local VMs run unsandboxed (docs/local-vms.md)")
    assert ssh(vm, "hostname").stdout.strip() == "ossh-conf"
    marker = f"/tmp/ferry-conformance-{os.getpid()}"
    assert ssh(vm, f"echo vm > {marker} && cat {marker}").stdout == "vm\n"
    assert not os.path.exists(marker)  # this machine's /tmp is not the VM's
    r = ssh(vm, "python3 -c 'import trainer'")
    assert r.returncode != 0 and "No module named 'trainer'" in r.stderr
    assert ssh(vm, "python3 -c 'import numpy, google.cloud.storage'").returncode == 0  # the image's packages
    assert ssh(vm, "touch /etc/ferry-conformance").returncode != 0  # read-only outside home and /tmp


def test_scp_exits_0_both_ways_and_lands_in_the_home(vm, tmp_path):
    src = tmp_path / "up.txt"
    src.write_text("payload\n")
    r = subprocess.run(["scp", *ssh_opts(vm), "-P", str(vm.port), str(src), f"{vm.user}@{vm.host}:up.txt"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert ssh(vm, "cat ~/up.txt").stdout == "payload\n"
    back = tmp_path / "back.txt"
    r = subprocess.run(["scp", *ssh_opts(vm), "-P", str(vm.port), f"{vm.user}@{vm.host}:up.txt", str(back)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and back.read_text() == "payload\n", r.stderr


def test_sftp_and_ssh_see_the_same_paths(vm, tmp_path):
    ssh(vm, "mkdir -p same && echo from-ssh > same/a.txt && echo tmp > /tmp/t.txt")
    batch = tmp_path / "batch"
    batch.write_text("pwd\nget same/a.txt {0}/a.txt\nget /tmp/t.txt {0}/t.txt\n".format(tmp_path))
    r = subprocess.run(["sftp", *ssh_opts(vm), "-P", str(vm.port), "-b", str(batch), f"{vm.user}@{vm.host}"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    home = ssh(vm, "pwd").stdout.strip()
    assert f"Remote working directory: {home}" in r.stdout
    assert (tmp_path / "a.txt").read_text() == "from-ssh\n" and (tmp_path / "t.txt").read_text() == "tmp\n"


@pytest.mark.skipif(not shutil.which("rsync"), reason="rsync not installed")
def test_rsync_over_ssh_lands_where_ssh_looks(vm, tmp_path):
    src = tmp_path / "tree"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "f.txt").write_text("rsynced\n")
    rsh = " ".join(["ssh", *ssh_opts(vm), "-p", str(vm.port)])
    r = subprocess.run(["rsync", "-a", "-e", rsh, f"{src}/", f"{vm.user}@{vm.host}:tree/"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert ssh(vm, "cat tree/sub/f.txt").stdout == "rsynced\n"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_local_port_forwarding(vm):
    """`ssh -L` (the usual TensorBoard tunnel): here to the local Compute Engine's health check."""
    target = vm.cloud.endpoints.compute.rsplit(":", 1)[1]
    port = _free_port()
    tunnel = subprocess.Popen(["ssh", *ssh_opts(vm), "-p", str(vm.port), "-N", "-o", "ExitOnForwardFailure=yes",
                               "-L", f"{port}:127.0.0.1:{target}", f"{vm.user}@{vm.host}"],
                              stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 15
        body = None
        while time.monotonic() < deadline and body is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/_ferry/health", timeout=2) as resp:
                    body = resp.read()
            except OSError:
                if tunnel.poll() is not None:
                    raise AssertionError(f"ssh -L exited: {tunnel.stderr.read()}")
                time.sleep(0.1)
        assert body and b'"ok": true' in body
    finally:
        tunnel.terminate()
        tunnel.wait(10)
