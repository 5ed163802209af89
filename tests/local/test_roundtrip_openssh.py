"""The round trip again, with the local VMs served by the system's OpenSSH sshd (the server real
VMs run) and ferry's own client path: provision.up -> Fabric over pinned SSH -> the VM writes to
the bucket with google-cloud-storage -> delete -> port closed, no VM process left."""

from __future__ import annotations

import socket
import time

import pytest

from infra import clients, provision, ssh
from infra.local.testing import local_cloud
from infra.local.vm import openssh_available
from infra.settings import resolve
from infra.local.vm.processes import alive

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not openssh_available(), reason="OpenSSH sshd is not installed (.ci/run installs openssh-server)")]


def test_openssh_round_trip_through_ferrys_client_path(tmp_path, monkeypatch):
    with local_cloud(tmp_path / "home", vm_runtime="openssh") as cloud:
        monkeypatch.setenv("FERRY_HOME", str(cloud.home))
        clients.reset_cache()
        settings = resolve(backend="local")
        cloud.storage_client().create_bucket(settings.bucket)

        vm = provision.up(settings, gpu="t4", name="ossh-1", max_hours=1)
        assert vm.host == "127.0.0.1" and vm.port != 22 and vm.host_key.startswith("ssh-ed25519 ")
        conn = ssh.connect(vm)
        try:
            out = conn.run("echo hello over openssh; echo $GCE_METADATA_HOST", hide=True)
            assert out.stdout.splitlines()[0] == "hello over openssh"
            code = ("from google.cloud import storage; import google.auth.compute_engine as ce; "
                    "storage.Client(credentials=ce.Credentials()).bucket('%s')"
                    ".blob('runs/ossh/from-vm.txt').upload_from_string('via sshd')" % settings.bucket)
            assert conn.run(f'python3 -c "{code}"', hide=True, warn=True).ok
            conn.run("nohup sleep 300 >/dev/null 2>&1 &", hide=True)
        finally:
            conn.close()
        blob = cloud.storage_client().bucket(settings.bucket).blob("runs/ossh/from-vm.txt")
        assert blob.download_as_text() == "via sshd"
        pids = next(i["pids"] for i in cloud.control.instances() if i["name"] == "ossh-1")
        assert pids

        assert provision.delete(settings, "ossh-1") is True
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", vm.port), timeout=1).close()
        deadline = time.monotonic() + 2
        while any(alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert [p for p in pids if alive(p)] == []
        assert provision.get(settings, "ossh-1") is None
    clients.reset_cache()


