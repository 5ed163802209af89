"""The per-VM metadata server: what google-auth and code on a GCE VM read from it."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest

from infra.local.vm import LocalVm, VmSpec

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # pytest's importlib mode: no sys.path magic
from vm_fixtures import client_key, connect, make_vm, wait_for  # noqa: E402,F401

V1 = "/computeMetadata/v1/"


def get(vm: LocalVm, path: str, flavor: bool = True, timeout: float = 5):
    req = urllib.request.Request(f"http://{vm.metadata_host}{path}", headers={"Metadata-Flavor": "Google"} if flavor else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read().decode(), resp.headers
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(), err.headers


@pytest.fixture
def vm(tmp_path):
    vm = LocalVm(VmSpec(name="meta-vm", zone="europe-west4-a", project="ferry-local", disk_dir=tmp_path / "disk",
                        metadata={"ssh-keys": "", "startup-script": "", "ferry-run": "mnist-nn-1"}))
    vm.start()
    yield vm
    vm.stop()
    assert vm.pids() == []


def test_requires_flavor_header_and_answers_with_it(vm):
    code, _, headers = get(vm, V1 + "instance/name", flavor=False)
    assert code == 403 and headers["Metadata-Flavor"] == "Google"
    code, body, headers = get(vm, V1 + "instance/name")
    assert (code, body, headers["Metadata-Flavor"]) == (200, "meta-vm", "Google")
    assert get(vm, V1 + "instance/no-such-thing")[0] == 404


def test_instance_and_project_values(vm):
    assert get(vm, V1 + "instance/attributes/")[1].split() == ["ssh-keys", "startup-script", "ferry-run"]
    assert get(vm, V1 + "instance/attributes/ferry-run")[1] == "mnist-nn-1"
    assert get(vm, V1 + "instance/preempted")[1] == "FALSE"
    assert get(vm, V1 + "instance/maintenance-event")[1] == "NONE"
    zone = get(vm, V1 + "instance/zone")[1]
    assert zone.startswith("projects/") and zone.endswith("/zones/europe-west4-a") and zone.split("/")[1].isdigit()
    assert get(vm, V1 + "instance/id")[1].isdigit()
    assert get(vm, V1 + "instance/hostname")[1] == "meta-vm.europe-west4-a.c.ferry-local.internal"
    assert get(vm, V1 + "project/project-id")[1] == "ferry-local"
    token = json.loads(get(vm, V1 + "instance/service-accounts/default/token")[1])
    assert token["token_type"] == "Bearer" and token["access_token"]
    info = json.loads(get(vm, V1 + "instance/service-accounts/default/?recursive=true")[1])
    assert info["email"] == get(vm, V1 + "instance/service-accounts/default/email")[1]
    assert "https://www.googleapis.com/auth/cloud-platform" in info["scopes"]
    whole = json.loads(get(vm, V1 + "instance/?recursive=true&alt=json")[1])
    assert whole["maintenanceEvent"] == "NONE" and whole["attributes"]["ferry-run"] == "mnist-nn-1"


def test_wait_for_change_wakes_on_preemption_and_times_out(vm):
    # unchanged value: the long poll returns the same value after timeout_sec
    t0 = time.monotonic()
    code, body, headers = get(vm, V1 + "instance/preempted?wait_for_change=true&timeout_sec=1")
    assert (code, body) == (200, "FALSE") and 0.9 < time.monotonic() - t0 < 20  # timeout_sec honoured
    etag = headers["ETag"]
    # a stale last_etag answers at once
    assert get(vm, V1 + f"instance/preempted?wait_for_change=true&last_etag=stale")[1] == "FALSE"
    got = {}

    def poll():
        got["value"] = get(vm, V1 + f"instance/preempted?wait_for_change=true&last_etag={etag}", timeout=30)[1]
        got["at"] = time.monotonic()

    waiter = threading.Thread(target=poll)
    waiter.start()
    time.sleep(0.3)
    assert "value" not in got
    flipped = time.monotonic()
    vm.set_preempted()
    waiter.join(5)
    assert got["value"] == "TRUE" and got["at"] - flipped < 0.5
    assert get(vm, V1 + "instance/preempted")[1] == "TRUE"


def test_maintenance_event_and_metadata_updates_wake_waiters(vm):
    results = []
    waiters = [
        threading.Thread(target=lambda: results.append(get(vm, V1 + "instance/maintenance-event?wait_for_change=true", timeout=30)[1])),
        threading.Thread(target=lambda: results.append(get(vm, V1 + "instance/attributes/?recursive=true&wait_for_change=true", timeout=30)[1])),
    ]
    for w in waiters:
        w.start()
    time.sleep(0.3)
    vm.set_maintenance_event("TERMINATE_ON_HOST_MAINTENANCE")
    vm.update_metadata({"ssh-keys": "", "ferry-run": "other"})
    for w in waiters:
        w.join(5)
    assert "TERMINATE_ON_HOST_MAINTENANCE" in results
    assert {"ssh-keys": "", "ferry-run": "other"} in [json.loads(r) for r in results if r.startswith("{")]


def test_stop_ends_long_polls(tmp_path):
    vm = LocalVm(VmSpec(name="m", zone="us-central1-a", project="p", disk_dir=tmp_path / "d"))
    vm.start()
    out = []
    waiter = threading.Thread(target=lambda: out.append(get(vm, V1 + "instance/preempted?wait_for_change=true", timeout=30)))
    waiter.start()
    time.sleep(0.2)
    t0 = time.monotonic()
    vm.stop()
    waiter.join(5)
    assert not waiter.is_alive() and time.monotonic() - t0 < 10  # long before the poll's 30 s
    assert out[0][0] == 503


VM_SCRIPT = r"""
import json, os, urllib.request
import google.auth, google.auth.transport.requests as tr
from google.auth.compute_engine import _metadata, credentials
req = tr.Request()
print("ping", _metadata.ping(req))
creds = credentials.Credentials()
creds.refresh(req)
print("token", bool(creds.token), creds.service_account_email)
print("project", _metadata.get_project_id(req))
print("attr", _metadata.get(req, "instance/attributes/ferry-job"))
r = urllib.request.Request("http://" + os.environ["GCE_METADATA_HOST"] + "/computeMetadata/v1/instance/preempted", headers={"Metadata-Flavor": "Google"})
print("preempted", urllib.request.urlopen(r).read().decode())
"""


def test_google_auth_on_the_vm_sees_the_metadata_server(make_vm, client_key):
    vm = make_vm(metadata={"ferry-job": "mnist-nn"})
    (vm.spec.disk_dir / "probe.py").write_text(VM_SCRIPT)
    r = connect(vm, client_key[0]).run("python3 probe.py")
    assert r.exited == 0, r.stderr
    out = dict(line.split(" ", 1) for line in r.stdout.splitlines())
    assert out["ping"] == "True"
    assert out["token"].startswith("True ") and out["token"].endswith(".iam.gserviceaccount.com")
    assert out["project"] == "ferry-local" and out["attr"] == "mnist-nn" and out["preempted"] == "FALSE"


STORAGE_SCRIPT = r"""
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage
client = storage.Client(project="ferry-local", credentials=AnonymousCredentials())
client.bucket("ferry-bucket").blob("runs/r1/status.json").upload_from_string('{"state": "running"}')
print("uploaded")
"""


def test_google_cloud_storage_on_the_vm_reaches_the_emulator(make_vm, client_key):
    from gcp_storage_emulator.server import create_server
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    server = create_server("127.0.0.1", 0, in_memory=True, default_bucket="ferry-bucket")
    server.start()
    try:
        url = f"http://127.0.0.1:{server._api._httpd.server_address[1]}" if hasattr(server, "_api") else None
        assert url, "gcp_storage_emulator internals changed: find the bound port"
        vm = make_vm(env={"STORAGE_EMULATOR_HOST": url})
        (vm.spec.disk_dir / "up.py").write_text(STORAGE_SCRIPT)
        r = connect(vm, client_key[0]).run("python3 up.py")
        assert r.exited == 0 and r.stdout.strip() == "uploaded", r.stderr
        client = storage.Client(project="ferry-local", credentials=AnonymousCredentials(), client_options={"api_endpoint": url})
        assert client.bucket("ferry-bucket").blob("runs/r1/status.json").download_as_bytes() == b'{"state": "running"}'
    finally:
        server.stop()
