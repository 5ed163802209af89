"""End to end with the real clients and the real VM runtime (asyncssh): create a GPU VM, SSH in
with Fabric, write to the local bucket from the VM with google-cloud-storage, delete the VM,
and nothing of it is left. Plus the VM-side faults: preemption and dropped SSH connections."""

from __future__ import annotations

import base64
import time

import paramiko
import pytest
from fabric import Config, Connection
from google.api_core import exceptions as gexc
from google.cloud import compute_v1

from infra.local.testing import instance_resource, port_refuses, wait_operation, wait_until
from infra.local.vm.processes import alive

P, Z = "ferry-local", "us-central1-a"


@pytest.fixture(scope="module")
def client_key(tmp_path_factory):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    path = tmp_path_factory.mktemp("ssh") / "id_ed25519"
    key = Ed25519PrivateKey.generate()
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                       serialization.NoEncryption()))
    path.chmod(0o600)
    pub = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    return path, pub


@pytest.fixture(scope="module")
def instances(vm_cloud):
    return compute_v1.InstancesClient(**vm_cloud.compute_options())


def guest_attribute(instances, name: str, path: str) -> dict[str, str]:
    ga = instances.get_guest_attributes(request={"project": P, "zone": Z, "instance": name, "query_path": path})
    return {e.key: e.value for e in ga.query_value.items}


def create_vm(cloud, instances, name: str, pub: str, **kw):
    """Insert, wait, and return (host, port, host_key) as a provisioner would find them."""
    op = instances.insert(project=P, zone=Z, instance_resource=instance_resource(
        name, metadata={"ssh-keys": f"ferry:{pub} ferry"}, **kw))
    done = wait_operation(cloud, op)
    assert not done.error.errors
    vm = instances.get(project=P, zone=Z, instance=name)
    assert vm.status == "RUNNING"
    host = vm.network_interfaces[0].access_configs[0].nat_i_p
    port = int(instances.get_guest_attributes(request={"project": P, "zone": Z, "instance": name,
                                                       "variable_key": "ssh/port"}).variable_value)
    assert guest_attribute(instances, name, "ssh/")["port"] == str(port)
    return host, port, guest_attribute(instances, name, "hostkeys/")["ssh-ed25519"]


def connect(host: str, port: int, host_key_b64: str, key_path) -> Connection:
    cfg = Config(overrides={"load_ssh_configs": False, "run": {"hide": True, "warn": True, "in_stream": False}})
    conn = Connection(host, port=port, user="ferry", config=cfg, connect_timeout=10,
                      connect_kwargs={"key_filename": str(key_path), "look_for_keys": False, "allow_agent": False})
    conn.client.set_missing_host_key_policy(paramiko.RejectPolicy())
    conn.client.get_host_keys().add(f"[{host}]:{port}", "ssh-ed25519", paramiko.Ed25519Key(data=base64.b64decode(host_key_b64)))
    return conn


def vm_pids(cloud, name: str) -> list[int]:
    return next(i["pids"] for i in cloud.control.instances() if i["name"] == name)


def test_gpu_vm_round_trip(vm_cloud, instances, client_key):
    key_path, pub = client_key
    gcs = vm_cloud.storage_client()
    gcs.create_bucket("ferry-local")
    host, port, host_key = create_vm(vm_cloud, instances, "rt-1", pub)

    with pytest.raises(paramiko.BadHostKeyException):  # the pinned key is really checked
        other = paramiko.Ed25519Key.from_private_key_file(str(key_path)).get_base64()
        connect(host, port, other, key_path).run("true")

    conn = connect(host, port, host_key, key_path)
    result = conn.run("echo hello from the VM")
    assert result.ok and result.stdout.strip() == "hello from the VM"

    # the VM's own service account (its metadata server's token), as code on a GCE VM uses
    code = ("from google.cloud import storage; import google.auth.compute_engine as ce; "
            "storage.Client(credentials=ce.Credentials()).bucket('ferry-local').blob('runs/rt/from-vm.txt')"
            ".upload_from_string('written on the VM')")
    result = conn.run(f'python3 -c "{code}"')
    assert result.ok, result.stderr
    assert gcs.bucket("ferry-local").blob("runs/rt/from-vm.txt").download_as_text() == "written on the VM"

    conn.run("nohup sleep 300 >/dev/null 2>&1 &")  # a process that would outlive a sloppy delete
    # a /proc scan is a snapshot: a process in the middle of exec() shows an empty environment
    pids = wait_until(lambda: vm_pids(vm_cloud, "rt-1"))
    assert pids and all(alive(p) for p in pids)
    conn.close()

    wait_operation(vm_cloud, instances.delete(project=P, zone=Z, instance="rt-1"))
    with pytest.raises(gexc.NotFound):
        instances.get(project=P, zone=Z, instance="rt-1")
    assert port_refuses(port)
    deadline = time.monotonic() + 2
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert [p for p in pids if alive(p)] == []


def test_preempted_spot_vm_sees_the_notice_then_stops(vm_cloud, instances, client_key):
    key_path, pub = client_key
    host, port, host_key = create_vm(vm_cloud, instances, "spot-1", pub, spot=True, termination_action="STOP")
    conn = connect(host, port, host_key, key_path)
    read = ("import os, urllib.request as u; print(u.urlopen(u.Request('http://' + os.environ['GCE_METADATA_HOST'] + "
            "'/computeMetadata/v1/instance/preempted', headers={'Metadata-Flavor': 'Google'})).read().decode())")
    assert conn.run(f'python3 -c "{read}"').stdout.strip() == "FALSE"
    vm_cloud.control.preempt(Z, "spot-1", grace_s=1.5)
    assert conn.run(f'python3 -c "{read}"').stdout.strip() == "TRUE"
    conn.close()
    deadline = time.monotonic() + 10
    while instances.get(project=P, zone=Z, instance="spot-1").status != "TERMINATED":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert port_refuses(port)
    ops = [o for o in vm_cloud.control.requests() if "preempt" in o["path"]]
    assert ops == []  # control calls are not in the request log
    wait_operation(vm_cloud, instances.delete(project=P, zone=Z, instance="spot-1"))


def test_dropped_ssh_connections(vm_cloud, instances, client_key):
    key_path, pub = client_key
    host, port, host_key = create_vm(vm_cloud, instances, "drop-1", pub, gpu=None)
    conn = connect(host, port, host_key, key_path)
    assert conn.run("echo up").ok
    vm_cloud.control.drop_ssh(Z, "drop-1")
    deadline = time.monotonic() + 5
    while conn.transport is not None and conn.transport.is_active() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not conn.transport.is_active()
    conn.close()
    again = connect(host, port, host_key, key_path)  # the server keeps listening
    assert again.run("echo back").stdout.strip() == "back"
    again.close()
    wait_operation(vm_cloud, instances.delete(project=P, zone=Z, instance="drop-1"))
