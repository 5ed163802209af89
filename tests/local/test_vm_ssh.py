"""A local VM in asyncssh mode, driven the way ferry drives it: Fabric over real SSH with the
host key pinned, SFTP into the disk directory, processes that outlive a dropped connection
and die with the VM."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time

import paramiko
import pytest

from infra.local.vm import LocalVm, VmError, VmSpec, parse_ssh_keys, processes

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # pytest's importlib mode: no sys.path magic
from vm_fixtures import client_key, connect, crash_service_with_vm, make_client_key, make_vm, wait_for  # noqa: F401
from infra.local.testing import port_refuses  # noqa: E402
from infra.local.vm.processes import alive


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def test_command_output_exit_code_and_sandbox_env(make_vm, client_key):
    vm = make_vm(env={"STORAGE_EMULATOR_HOST": "http://127.0.0.1:9"})
    with connect(vm, client_key[0]) as c:
        r = c.run("echo out; echo err >&2; exit 3")
        assert (r.stdout, r.stderr, r.exited) == ("out\n", "err\n", 3)
        r = c.run('pwd; echo "$HOME|$USER|$GCE_METADATA_HOST|$STORAGE_EMULATOR_HOST"; command -v python3; '
                  'python3 -c "import sys, fabric; print(sys.executable)"')
        assert r.exited == 0, r.stderr
        lines = r.stdout.splitlines()
        home = "/home/ferry" if vm.isolation == "bubblewrap" else str(vm.spec.disk_dir)  # as on a GCE image
        assert lines[0] == home
        assert lines[1] == f"{home}|ferry|{vm.metadata_host}|http://127.0.0.1:9"
        assert os.path.dirname(lines[2]) in (os.path.dirname(sys.executable), vm.sandbox.bin_dir())
        assert os.path.realpath(lines[3]) == os.path.realpath(sys.executable)
        # stdin is wired and EOF reaches the command
        assert c.run("tr a-z A-Z", in_stream=__import__("io").StringIO("hello\n")).stdout == "HELLO\n"
        # a pty when Fabric asks for one
        r = c.run("tty", pty=True)
        assert r.exited == 0 and r.stdout.strip().startswith("/dev/pts/")


def test_wrong_key_or_user_is_rejected(make_vm, client_key, tmp_path):
    vm = make_vm()
    other = tmp_path / "other_key"
    make_client_key(other)
    with pytest.raises(paramiko.AuthenticationException):
        connect(vm, other).open()
    with pytest.raises(paramiko.AuthenticationException):  # right key, user not in ssh-keys
        connect(vm, client_key[0], user="root").open()


def test_pinned_client_rejects_unknown_host_key(make_vm, client_key, tmp_path):
    vm = make_vm()
    impostor = make_client_key(tmp_path / "impostor")  # any other ed25519 key as 'expected' host key
    with pytest.raises(paramiko.BadHostKeyException):
        connect(vm, client_key[0], host_key=impostor).open()
    conn = connect(vm, client_key[0])
    conn.client.get_host_keys().clear()  # no known host key at all: RejectPolicy refuses
    with pytest.raises(paramiko.SSHException, match="not found in known_hosts"):
        conn.open()


def test_sftp_put_get_land_in_disk_dir_and_are_chrooted(make_vm, client_key, tmp_path):
    vm = make_vm()
    src = tmp_path / "train.py"
    src.write_text("print('hi')\n")
    with connect(vm, client_key[0]) as c:
        c.run("mkdir -p ferry/code")
        c.put(str(src), "ferry/code/train.py")
        assert (vm.spec.disk_dir / "ferry/code/train.py").read_text() == "print('hi')\n"
        (vm.spec.disk_dir / "out.txt").write_text("result")
        c.get("out.txt", str(tmp_path / "got.txt"))
        assert (tmp_path / "got.txt").read_text() == "result"
        # SFTP sees what a shell sees: relative paths from the home, the same absolute paths
        home = c.run("pwd").stdout.strip()
        with c.sftp() as sftp:
            assert sftp.normalize(".") == home
            assert "out.txt" in sftp.listdir(home)
            c.run("echo from-shell > /tmp/shared.txt")
            with sftp.open("/tmp/shared.txt") as f:
                assert f.read() == b"from-shell\n"
            if vm.isolation == "bubblewrap":  # outside its home and /tmp the VM is read-only
                with pytest.raises(IOError):
                    sftp.open("/etc/ferry-test-should-not-exist", "w")


def test_detached_process_survives_drop_and_dies_with_stop(make_vm, client_key):
    vm = make_vm()
    c = connect(vm, client_key[0])
    # the runner's way of surviving a dropped connection: its own session, output redirected
    detached = int(c.run("setsid nohup sleep 1000 >/dev/null 2>&1 & echo $!").stdout)
    # and a daemon that double-forks from Python (setsid, grandchild) with its own fork
    c.run("python3 -c 'import os,time\nif os.fork(): os._exit(0)\nos.setsid()\nif os.fork(): os._exit(0)\ntime.sleep(1000)' >/dev/null 2>&1")
    # commands of the connection that is dropped: on a pty they get SIGHUP, without one they
    # go on (like under sshd: they see EOF and a closed stdout)
    c.client.get_transport().open_session().exec_command("sleep 1001")
    pty = c.client.get_transport().open_session()
    pty.get_pty()
    pty.exec_command("sleep 1002")
    assert wait_for(lambda: any(b"1001" in _cmdline(p) for p in vm.pids()))
    assert wait_for(lambda: any(b"1002" in _cmdline(p) for p in vm.pids()))
    assert wait_for(lambda: any(b"import os" in _cmdline(p) for p in vm.pids()))
    foreground = set(vm.pids()) - {detached}
    vm.drop_connections()
    assert wait_for(lambda: not any(b"1002" in _cmdline(p) for p in vm.pids()), timeout=5), vm.pids()
    assert any(b"sleep 1001" in _cmdline(p) for p in vm.pids())
    assert detached in vm.pids() and alive(detached)
    c.close()
    with connect(vm, client_key[0]) as c2:  # the server still listens after the drop
        assert c2.run("echo back").stdout == "back\n"
    port, survivors = vm.ssh_port, vm.pids()
    t0 = time.monotonic()
    vm.stop()
    assert time.monotonic() - t0 < 10  # a hang guard; bench/local_vm.py measures the speed
    assert vm.pids() == [] and processes.find(vm.spec.marker) == []
    assert not any(alive(p) for p in survivors + list(foreground))
    assert port_refuses(port)
    vm.stop()  # idempotent


def test_signals_exit_status_and_shell_via_asyncssh_client(make_vm, client_key):
    import asyncssh

    vm = make_vm()

    async def go():
        async with asyncssh.connect("127.0.0.1", vm.ssh_port, username="ferry", client_keys=[str(client_key[0])],
                                    known_hosts=None) as conn:
            proc = await conn.create_process("trap 'exit 7' TERM; sleep 30 & wait")
            await asyncio.sleep(0.3)
            proc.send_signal("TERM")
            done = await asyncio.wait_for(proc.wait(), 10)
            killed = await conn.create_process("sleep 30")
            await asyncio.sleep(0.3)
            killed.send_signal("KILL")
            k = await asyncio.wait_for(killed.wait(), 10)
            return done.exit_status, k.exit_signal

    status, sig = asyncio.run(go())
    assert status == 7
    assert sig[0] == "KILL"


def test_metadata_ssh_keys_update_applies_to_new_connections(make_vm, client_key, tmp_path):
    vm = make_vm()
    new = tmp_path / "new_key"
    new_pub = make_client_key(new)
    vm.update_metadata({"ssh-keys": f"alice:{new_pub} alice"})
    assert connect(vm, new, user="alice").run("echo $USER").stdout == "alice\n"
    with pytest.raises(paramiko.AuthenticationException):
        connect(vm, client_key[0]).open()


def test_startup_script_runs_detached_logged_and_tracked(make_vm):
    vm = make_vm(metadata={"startup-script": "echo booted; echo $GCE_METADATA_HOST; sleep 1000"})
    log = vm.spec.state_dir / "startup.log"
    assert wait_for(lambda: log.exists() and vm.metadata_host in log.read_text())
    assert "booted" in log.read_text()
    assert wait_for(lambda: any(b"sleep" in _cmdline(p) for p in vm.pids()))  # the shell's child, tracked
    vm.stop()
    assert vm.pids() == []


def test_host_key_persists_and_restart_kills_leftovers(tmp_path, client_key):
    spec = VmSpec(name="persist", zone="us-central1-a", project="p", disk_dir=tmp_path / "d",
                  metadata={"ssh-keys": f"ferry:{client_key[1]}", "startup-script": "setsid sleep 1000 &"})
    vm = LocalVm(spec)
    try:
        vm.start()
        key = vm.host_key_public
        assert key.startswith("ssh-ed25519 AAAA")
        key_file = spec.state_dir / "ssh_host_ed25519_key"
        assert key_file.stat().st_mode & 0o777 == 0o600
        assert wait_for(lambda: vm.pids())
        # a service that crashed leaves its processes; a new VM on the same disk ends them
        leftover = vm.pids()
        vm2 = LocalVm(VmSpec(name="persist", zone="us-central1-a", project="p", disk_dir=tmp_path / "d",
                             metadata={"ssh-keys": f"ferry:{client_key[1]}"}))
        vm2.start()
        try:
            assert vm2.host_key_public == key
            assert not any(alive(p) for p in leftover)
            assert connect(vm2, client_key[0]).run("true").exited == 0  # pinned to the same key
        finally:
            vm2.stop()
    finally:
        vm.stop()
    assert vm.pids() == []


def test_spec_validation_and_ssh_keys_parsing(tmp_path):
    with pytest.raises(VmError):
        VmSpec(name="x", zone="z", project="p", disk_dir=tmp_path, ssh_mode="telnet")
    keys = parse_ssh_keys("ferry:ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA== ferry\n\nbad line\nbob:ssh-rsa !!! x\n"
                          "carol:ssh-ed25519 AAAAC3NzaC1lZDI1NTE5 google-ssh {\"userName\":\"c\"}")
    assert [(u, t) for u, t, _ in keys] == [("ferry", "ssh-ed25519"), ("carol", "ssh-ed25519")]


def test_leftovers_of_a_crashed_service_are_found_and_killed(tmp_path, client_key):
    spec, port, leftovers = crash_service_with_vm(tmp_path, "asyncssh", client_key[1])
    assert leftovers and port_refuses(port)  # the SSH server died with its process, the runner did not
    try:
        assert processes.kill_all(spec.marker) == []
    finally:
        processes.kill_all(spec.marker)
    assert not any(alive(p) for p in leftovers)
