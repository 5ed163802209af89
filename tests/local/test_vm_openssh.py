"""A local VM on the system's OpenSSH sshd (ssh_mode='openssh'): the same Fabric round trip,
SFTP, key checks and process lifetime as in asyncssh mode. Skipped where sshd is missing."""

from __future__ import annotations

import os
import sys
import time

import paramiko
import pytest

from infra.local.vm import LocalVm, VmError, VmSpec, openssh_available, processes

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # pytest's importlib mode: no sys.path magic
from vm_fixtures import client_key, connect, crash_service_with_vm, make_client_key, make_vm, wait_for  # noqa: E402,F401
from infra.local.testing import port_refuses  # noqa: E402
from infra.local.vm.processes import alive

needs_sshd = pytest.mark.skipif(
    openssh_available() is None,
    reason="OpenSSH server (sshd) not installed: apt-get install openssh-server (CI's .ci/run does)",
)


@needs_sshd
def test_openssh_round_trip_sftp_and_sandbox(make_vm, client_key, tmp_path):
    vm = make_vm("openssh", env={"STORAGE_EMULATOR_HOST": "http://127.0.0.1:9"})
    assert vm.ssh_user  # the OS user: sshd logs in real users only
    with connect(vm, client_key[0], user=vm.ssh_user) as c:
        r = c.run("echo out; echo err >&2; exit 3")
        assert (r.stdout, r.stderr, r.exited) == ("out\n", "err\n", 3)
        r = c.run('pwd; echo "$HOME|$GCE_METADATA_HOST|$STORAGE_EMULATOR_HOST"; python3 -c "import sys; print(sys.executable)"')
        disk = str(vm.spec.disk_dir)
        assert r.stdout.splitlines()[:2] == [disk, f"{disk}|{vm.metadata_host}|http://127.0.0.1:9"]
        assert os.path.realpath(r.stdout.splitlines()[2]) == os.path.realpath(sys.executable)
        assert c.run("tty", pty=True).stdout.startswith("/dev/pts/")
        src = tmp_path / "a.txt"
        src.write_text("payload")
        c.run("mkdir -p ferry/code")
        c.put(str(src), "ferry/code/a.txt")  # relative to the disk directory
        assert (vm.spec.disk_dir / "ferry/code/a.txt").read_text() == "payload"
        c.get("ferry/code/a.txt", str(tmp_path / "b.txt"))
        assert (tmp_path / "b.txt").read_text() == "payload"
    # wrong key, and an unknown host key, are both refused
    other = tmp_path / "other"
    make_client_key(other)
    with pytest.raises(paramiko.AuthenticationException):
        connect(vm, other, user=vm.ssh_user).open()
    with pytest.raises(paramiko.BadHostKeyException):
        connect(vm, client_key[0], user=vm.ssh_user, host_key=make_client_key(tmp_path / "imp")).open()


@needs_sshd
def test_openssh_detached_survives_drop_and_stop_kills_everything(make_vm, client_key):
    vm = make_vm("openssh")
    c = connect(vm, client_key[0], user=vm.ssh_user)
    detached = int(c.run("setsid nohup sleep 1000 >/dev/null 2>&1 & echo $!").stdout)
    assert detached in vm.pids()
    vm.drop_connections()
    c.close()
    time.sleep(0.1)
    assert alive(detached) and detached in vm.pids()
    with connect(vm, client_key[0], user=vm.ssh_user) as c2:  # still listening
        assert c2.run("echo back").stdout == "back\n"
        c2.client.get_transport().open_session().exec_command("sleep 1000")  # mid-command at stop
        assert wait_for(lambda: len(vm.pids()) >= 2)
        port, before = vm.ssh_port, vm.pids()
        t0 = time.monotonic()
        vm.stop()
        assert time.monotonic() - t0 < 10  # a hang guard; bench/local_vm.py measures the speed
    assert vm.pids() == [] and processes.find(vm.spec.marker, processes.SYSTEM_VAR) == []
    assert not any(alive(p) for p in before)
    assert port_refuses(port)


@needs_sshd
def test_openssh_keys_update_and_restart_keep_host_key(make_vm, client_key, tmp_path):
    vm = make_vm("openssh")
    new = tmp_path / "new"
    vm.update_metadata({"ssh-keys": f"ferry:{make_client_key(new)} ferry"})
    assert connect(vm, new, user=vm.ssh_user).run("true").exited == 0
    with pytest.raises(paramiko.AuthenticationException):
        connect(vm, client_key[0], user=vm.ssh_user).open()
    key = vm.host_key_public
    vm.stop()
    vm.start()  # the same VM again: same host key, a fresh port
    assert vm.host_key_public == key
    assert connect(vm, new, user=vm.ssh_user).run("echo again").stdout == "again\n"


def test_openssh_mode_without_sshd_is_a_clear_error(tmp_path, monkeypatch):
    from infra.local.vm import sshd_openssh

    monkeypatch.setattr(sshd_openssh, "find_sshd", lambda: None)
    vm = LocalVm(VmSpec(name="x", zone="us-central1-a", project="p", disk_dir=tmp_path / "d", ssh_mode="openssh"))
    with pytest.raises(VmError, match="openssh-server"):
        vm.start()
    assert not vm.running and vm.pids() == [] and vm.metadata_host == ""


@needs_sshd
def test_openssh_leftovers_of_a_crashed_service_are_found_and_killed(tmp_path, client_key):
    spec, port, leftovers = crash_service_with_vm(tmp_path, "openssh", client_key[1])
    assert processes.find(spec.marker, processes.SYSTEM_VAR), "the orphaned sshd must still be findable"
    assert not port_refuses(port)
    try:
        assert processes.kill_all(spec.marker) == []  # what the service does on its next start
    finally:
        processes.kill_all(spec.marker)
    assert port_refuses(port)
    assert not any(alive(p) for p in leftovers)
