"""infra.gce (Compute Engine over REST, no compute_v1) against the official compute_v1 client.

For every call ferry makes: the same request on the wire (method, path, query, body, API
headers), the same data back from the local Compute Engine, the same exceptions (class,
message, errors, details) for 400/403/404/409/429/503, the same retries (reads retried on
503, writes not), a 401 answered by refreshing the credentials, lists followed across pages,
and operations waited on to DONE. And: the status/up/down code path never imports compute_v1.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from infra import gce, render, templates
from infra.local.testing import local_cloud

ROOT = Path(__file__).resolve().parents[2]
P, Z, REGION = "ferry-local", "us-central1-a", "us-central1"
KEY = "ferry:ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHk6f9+4N0D2S1XT1Hcb5Hc6O9h1ZGvK8d5o7x6B1s6E ferry"


def body(name: str, zone: str = Z, **extra) -> dict:
    from infra.settings import owner

    spec = templates.load(None, gpu="t4")
    return render.body(spec, name=name, zone=zone, owner=owner(), ssh_keys=KEY, **extra)


@pytest.fixture(scope="module")
def cloud(tmp_path_factory):
    """The local Compute Engine without SSH servers (API behaviour only)."""
    with local_cloud(tmp_path_factory.mktemp("ferry-home"), vm_runtime="none") as c:
        yield c


@pytest.fixture(autouse=True)
def _clean(request):
    yield
    if "cloud" in request.fixturenames:
        c = request.getfixturevalue("cloud")
        c.control.clear_faults()
        c.control.set_page_size(500)


@pytest.fixture(scope="module")
def v1():
    from google.cloud import compute_v1

    return compute_v1


@pytest.fixture(scope="module")
def ours(cloud):
    return gce.Gce(cloud.credentials(), cloud.endpoints.compute)


def theirs(v1, cloud, kind: str, credentials=None):
    options = cloud.compute_options()
    if credentials is not None:
        options["credentials"] = credentials
    return getattr(v1, kind)(**options)


def wait_done(api: gce.Gce, op: dict) -> dict:
    zone = op["zone"].rsplit("/", 1)[-1]
    for _ in range(500):
        if op.get("status") == "DONE":
            return op
        op = api.zone_operations.wait(project=P, zone=zone, operation=op["name"], timeout=5)
    raise AssertionError(f"operation {op['name']} never DONE")


@pytest.fixture(scope="module")
def vm(cloud, ours):
    """One instance ferry's way (render.body through infra.gce), deleted after."""
    op = wait_done(ours, ours.instances.insert(project=P, zone=Z, instance_resource=body("rest-a"), request_id=None))
    assert not op.get("error"), op
    yield "rest-a"
    try:
        wait_done(ours, ours.instances.delete(project=P, zone=Z, instance="rest-a"))
    except gce.NotFound:
        pass


def same(cls, mine: dict, official) -> None:
    """MINE (JSON) holds exactly what compute_v1 returned (compute_v1 drops fields it does not know)."""
    parsed = cls.from_json(json.dumps(mine), ignore_unknown_fields=True)
    assert cls.to_dict(parsed) == cls.to_dict(official)


# --------------------------------------------------------------------------- the wire
class _Recorder(BaseHTTPRequestHandler):
    seen: list = []

    def _any(self):
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n) if n else b""
        url = urlsplit(self.path)
        self.seen.append({
            "method": self.command, "path": url.path, "query": parse_qs(url.query),
            "body": json.loads(raw) if raw else None,
            "headers": {k.lower(): v for k, v in self.headers.items()
                        if k.lower() in ("x-goog-api-version", "x-goog-request-params", "content-type", "authorization")},
            "api_client": self.headers.get("x-goog-api-client", ""),
        })
        out = b'{"name": "op-1", "status": "DONE"}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    do_GET = do_POST = do_DELETE = _any

    def log_message(self, *args):
        pass


@pytest.fixture
def recorder():
    _Recorder.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", _Recorder.seen
    server.shutdown()
    server.server_close()


def test_every_call_sends_what_compute_v1_sends(recorder, v1):
    from google.oauth2.credentials import Credentials

    url, seen = recorder
    creds = Credentials(token="tok")
    opts = {"credentials": creds, "client_options": {"api_endpoint": url}}
    api = gce.Gce(creds, url)
    b = body("wire-1")
    calls = [
        (lambda: v1.InstancesClient(**opts).get(project=P, zone=Z, instance="i-1"),
         lambda: api.instances.get(project=P, zone=Z, instance="i-1")),
        (lambda: v1.InstancesClient(**opts).insert(request=v1.InsertInstanceRequest(
            project=P, zone=Z, instance_resource=v1.Instance.from_json(json.dumps(b)), request_id="rid-1")),
         lambda: api.instances.insert(project=P, zone=Z, instance_resource=b, request_id="rid-1")),
        (lambda: v1.InstancesClient(**opts).delete(project=P, zone=Z, instance="i-1"),
         lambda: api.instances.delete(project=P, zone=Z, instance="i-1")),
        (lambda: list(v1.InstancesClient(**opts).aggregated_list(request=v1.AggregatedListInstancesRequest(
            project=P, filter="labels.managed-by = ferry AND labels.ferry-owner = me"))),
         lambda: list(api.instances.aggregated_list(project=P, filter="labels.managed-by = ferry AND labels.ferry-owner = me"))),
        (lambda: v1.InstancesClient(**opts).get_guest_attributes(request=v1.GetGuestAttributesInstanceRequest(
            project=P, zone=Z, instance="i-1", query_path="hostkeys/")),
         lambda: api.instances.get_guest_attributes(project=P, zone=Z, instance="i-1", query_path="hostkeys/")),
        (lambda: v1.ZoneOperationsClient(**opts).wait(project=P, zone=Z, operation="op-1"),
         lambda: api.zone_operations.wait(project=P, zone=Z, operation="op-1")),
        (lambda: v1.AcceleratorTypesClient(**opts).get(project=P, zone=Z, accelerator_type="nvidia-tesla-t4"),
         lambda: api.accelerator_types.get(project=P, zone=Z, accelerator_type="nvidia-tesla-t4")),
        (lambda: v1.MachineTypesClient(**opts).get(project=P, zone=Z, machine_type="g2-standard-4"),
         lambda: api.machine_types.get(project=P, zone=Z, machine_type="g2-standard-4")),
        (lambda: list(v1.ZonesClient(**opts).list(project=P)), lambda: list(api.zones.list(project=P))),
        (lambda: v1.RegionsClient(**opts).get(project=P, region=REGION), lambda: api.regions.get(project=P, region=REGION)),
        (lambda: v1.ProjectsClient(**opts).get(project=P), lambda: api.projects.get(project=P)),
    ]
    for official, mine in calls:
        seen.clear()
        official()
        mine()
        assert len(seen) == 2, seen
        a, b_ = seen
        assert {k: a[k] for k in ("method", "path", "query", "body", "headers")} == \
               {k: b_[k] for k in ("method", "path", "query", "body", "headers")}
        assert a["headers"]["authorization"] == "Bearer tok"
        assert b_["api_client"].startswith("gl-python/") and "rest/requests@" in b_["api_client"]
    assert api.instances.get(project=P, zone=Z, instance="i-1") == {"name": "op-1", "status": "DONE"}


# --------------------------------------------------------------------------- results
def test_reads_return_the_data_compute_v1_returns(cloud, ours, vm, v1):
    inst = ours.instances.get(project=P, zone=Z, instance=vm)
    assert inst["name"] == vm and inst["labels"]["managed-by"] == "ferry"
    assert inst["networkInterfaces"][0]["accessConfigs"][0]["natIP"]  # camelCase JSON, as the API writes it
    same(v1.Instance, inst, theirs(v1, cloud, "InstancesClient").get(project=P, zone=Z, instance=vm))

    mine = dict(ours.instances.aggregated_list(project=P, filter=f"name = {vm}"))
    official = dict(theirs(v1, cloud, "InstancesClient").aggregated_list(
        request=v1.AggregatedListInstancesRequest(project=P, filter=f"name = {vm}")))
    assert set(mine) == set(official) and f"zones/{Z}" in mine
    for scope in mine:
        same(v1.InstancesScopedList, mine[scope], official[scope])

    zones = list(ours.zones.list(project=P))
    official_zones = list(theirs(v1, cloud, "ZonesClient").list(project=P))
    assert [z["name"] for z in zones] == [z.name for z in official_zones] and Z in [z["name"] for z in zones]
    for z, o in zip(zones, official_zones):
        same(v1.Zone, z, o)

    same(v1.Region, ours.regions.get(project=P, region=REGION),
         theirs(v1, cloud, "RegionsClient").get(project=P, region=REGION))
    same(v1.Project, ours.projects.get(project=P), theirs(v1, cloud, "ProjectsClient").get(project=P))
    same(v1.AcceleratorType, ours.accelerator_types.get(project=P, zone=Z, accelerator_type="nvidia-tesla-t4"),
         theirs(v1, cloud, "AcceleratorTypesClient").get(project=P, zone=Z, accelerator_type="nvidia-tesla-t4"))
    same(v1.MachineType, ours.machine_types.get(project=P, zone=Z, machine_type="n1-standard-4"),
         theirs(v1, cloud, "MachineTypesClient").get(project=P, zone=Z, machine_type="n1-standard-4"))
    # No guest environment on this cloud's VMs (runtime none): nothing published yet, a 404 from both
    # (a real VM's host keys are read through infra.gce by every e2e `up`).
    e = _both_raise(lambda: theirs(v1, cloud, "InstancesClient").get_guest_attributes(
                        request=v1.GetGuestAttributesInstanceRequest(project=P, zone=Z, instance=vm, query_path="ssh/")),
                    lambda: ours.instances.get_guest_attributes(project=P, zone=Z, instance=vm, query_path="ssh/"))
    assert isinstance(e, gce.NotFound)


def test_insert_wait_and_delete_through_operations(cloud, ours, v1):
    from infra import clients, operations

    compute = clients.Compute(project=P, backend="local", endpoint=cloud.endpoints.compute,
                              creds=cloud.credentials(), pacing=clients.LOCAL_PACING)
    op = compute.instances.insert(project=P, zone=Z, instance_resource=body("rest-op"), request_id="rest-op-rid")
    assert op["operationType"] == "insert" and op["targetId"]
    done = operations.wait(compute, op, Z, timeout=30)
    assert done["status"] == "DONE" and done["targetId"] == op["targetId"] and not done.get("error")
    same(v1.Operation, done, theirs(v1, cloud, "ZoneOperationsClient").wait(project=P, zone=Z, operation=op["name"]))
    inst = compute.instances.get(project=P, zone=Z, instance="rest-op")
    assert inst["id"] == op["targetId"]
    # The same requestId again: the same operation, nothing new created (what ferry's insert retry relies on).
    again = compute.instances.insert(project=P, zone=Z, instance_resource=body("rest-op"), request_id="rest-op-rid")
    assert again["name"] == op["name"]
    gone = operations.wait(compute, compute.instances.delete(project=P, zone=Z, instance="rest-op"), Z, timeout=30)
    assert gone["status"] == "DONE"
    with pytest.raises(gce.NotFound):
        compute.instances.get(project=P, zone=Z, instance="rest-op")


def test_a_failed_operation_is_a_classified_failure(cloud, ours):
    from infra import clients, operations

    compute = clients.Compute(project=P, backend="local", endpoint=cloud.endpoints.compute,
                              creds=cloud.credentials(), pacing=clients.LOCAL_PACING)
    cloud.control.fault("stockout", zone=Z, accelerator="nvidia-tesla-t4", zones_available=["us-central1-b"])
    op = compute.instances.insert(project=P, zone=Z, instance_resource=body("rest-stockout"))
    with pytest.raises(operations.Failure) as caught:
        operations.wait(compute, op, Z, timeout=30)
    assert caught.value.kind == operations.ZONE and caught.value.zones_available == ["us-central1-b"]
    assert caught.value.code.startswith("ZONE_RESOURCE_POOL_EXHAUSTED")


# --------------------------------------------------------------------------- errors
def _both_raise(official, mine):
    with pytest.raises(Exception) as a:
        official()
    with pytest.raises(Exception) as b:
        mine()
    ea, eb = a.value, b.value
    assert type(ea) is type(eb), (ea, eb)
    assert str(ea) == str(eb)
    assert (ea.code, ea.message, ea.errors, ea.details, ea.reason) == (eb.code, eb.message, eb.errors, eb.details, eb.reason)
    return eb


def test_404_400_409_are_the_same_exceptions(cloud, ours, vm, v1):
    from google.api_core import exceptions

    instances = theirs(v1, cloud, "InstancesClient")
    e = _both_raise(lambda: instances.get(project=P, zone=Z, instance="no-such-vm"),
                    lambda: ours.instances.get(project=P, zone=Z, instance="no-such-vm"))
    assert isinstance(e, exceptions.NotFound) and isinstance(e, gce.NotFound) and "no-such-vm" in e.message
    e = _both_raise(lambda: instances.delete(project=P, zone=Z, instance="no-such-vm"),
                    lambda: ours.instances.delete(project=P, zone=Z, instance="no-such-vm"))
    assert isinstance(e, gce.NotFound)
    e = _both_raise(lambda: instances.insert(project=P, zone=Z, instance_resource=v1.Instance.from_json(json.dumps(body(vm)))),
                    lambda: ours.instances.insert(project=P, zone=Z, instance_resource=body(vm)))
    assert isinstance(e, gce.Conflict) and e.errors and e.errors[0]["reason"] == "alreadyExists"
    bad = body("rest-bad")
    bad["machineType"] = f"zones/{Z}/machineTypes/n1-no-such-type"
    e = _both_raise(lambda: instances.insert(project=P, zone=Z, instance_resource=v1.Instance.from_json(json.dumps(bad))),
                    lambda: ours.instances.insert(project=P, zone=Z, instance_resource=bad))
    assert isinstance(e, (gce.BadRequest, gce.NotFound))
    e = _both_raise(lambda: theirs(v1, cloud, "AcceleratorTypesClient").get(project=P, zone=Z, accelerator_type="nvidia-nope"),
                    lambda: ours.accelerator_types.get(project=P, zone=Z, accelerator_type="nvidia-nope"))
    assert isinstance(e, gce.NotFound)


@pytest.mark.parametrize("status,cls", [(403, "Forbidden"), (429, "TooManyRequests"), (503, "ServiceUnavailable"),
                                        (500, "InternalServerError")])
def test_http_errors_on_writes_are_the_same_and_not_retried(cloud, ours, vm, v1, status, cls):
    """instances.delete (a write: compute_v1 retries nothing) answered STATUS once: both raise the
    same exception, after one request each."""
    instances = theirs(v1, cloud, "InstancesClient")
    path = f"/compute/v1/projects/{P}/zones/{Z}/instances/{vm}"

    def deleting(client_call):
        def call():
            cloud.control.fault("http_error", status=status, count=1, method="DELETE", path=path)
            client_call()
        return call

    cloud.control.clear_requests()
    e = _both_raise(deleting(lambda: instances.delete(project=P, zone=Z, instance=vm)),
                    deleting(lambda: ours.instances.delete(project=P, zone=Z, instance=vm)))
    assert type(e) is getattr(gce, cls) and e.code == status
    deletes = [r for r in cloud.control.requests() if r["method"] == "DELETE" and r["path"] == path]
    assert len(deletes) == 2  # one each: nothing retried, and the VM is still there
    assert ours.instances.get(project=P, zone=Z, instance=vm)["name"] == vm


def test_reads_retry_503_as_compute_v1_does(cloud, ours, vm, v1):
    path = f"/compute/v1/projects/{P}/zones/{Z}/instances/{vm}"
    counts = []
    for call in (lambda: theirs(v1, cloud, "InstancesClient").get(project=P, zone=Z, instance=vm).name,
                 lambda: ours.instances.get(project=P, zone=Z, instance=vm)["name"]):
        cloud.control.clear_requests()
        cloud.control.fault("http_error", status=503, count=2, method="GET", path=path)
        assert call() == vm
        counts.append(len([r for r in cloud.control.requests() if r["method"] == "GET" and r["path"] == path]))
    assert counts == [3, 3]
    # 429 is not retried by either (compute_v1's predicate: ServiceUnavailable, DeadlineExceeded).
    for call in (lambda: theirs(v1, cloud, "InstancesClient").get(project=P, zone=Z, instance=vm),
                 lambda: ours.instances.get(project=P, zone=Z, instance=vm)):
        cloud.control.fault("http_error", status=429, count=1, method="GET", path=path)
        with pytest.raises(gce.TooManyRequests):
            call()


def test_a_401_refreshes_the_credentials_then_succeeds(cloud, ours, vm, v1):
    from google.auth import credentials as ga_credentials

    class Rotating(ga_credentials.Credentials):
        """Starts with a token the server no longer accepts; refresh() gets the current one."""

        def __init__(self):
            super().__init__()
            self.token = "expired-token"
            self.refreshes = 0

        def refresh(self, request):
            self.refreshes += 1
            self.token = cloud.endpoints.token

    official, mine = Rotating(), Rotating()
    assert theirs(v1, cloud, "InstancesClient", credentials=official).get(project=P, zone=Z, instance=vm).name == vm
    assert gce.Gce(mine, cloud.endpoints.compute).instances.get(project=P, zone=Z, instance=vm)["name"] == vm
    assert (official.refreshes, mine.refreshes) == (1, 1)

    class Stuck(Rotating):
        def refresh(self, request):
            self.refreshes += 1  # the token stays wrong: the 401 comes back to the caller

    a, b = Stuck(), Stuck()
    _both_raise(lambda: theirs(v1, cloud, "InstancesClient", credentials=a).get(project=P, zone=Z, instance=vm),
                lambda: gce.Gce(b, cloud.endpoints.compute).instances.get(project=P, zone=Z, instance=vm))
    assert a.refreshes == b.refreshes >= 1


def test_aggregated_list_and_zones_follow_every_page(cloud, ours, vm, v1):
    op = wait_done(ours, ours.instances.insert(project=P, zone="us-central1-b",
                                               instance_resource=body("rest-b", zone="us-central1-b")))
    assert not op.get("error"), op
    try:
        cloud.control.set_page_size(1)
        cloud.control.clear_requests()
        filt = "labels.managed-by = ferry"
        mine = [(scope, i["name"]) for scope, s in ours.instances.aggregated_list(project=P, filter=filt)
                for i in s.get("instances") or []]
        pages = [r for r in cloud.control.requests() if r["path"].endswith("/aggregated/instances")]
        official = [(scope, i.name) for scope, s in theirs(v1, cloud, "InstancesClient").aggregated_list(
            request=v1.AggregatedListInstancesRequest(project=P, filter=filt)) for i in s.instances]
        assert sorted(mine) == sorted(official)
        assert {("zones/us-central1-a", vm), ("zones/us-central1-b", "rest-b")} <= set(mine)
        assert len(pages) >= 2 and any("pageToken" in (r.get("query") or "") for r in pages)
        assert [z["name"] for z in ours.zones.list(project=P)] == [z.name for z in theirs(v1, cloud, "ZonesClient").list(project=P)]
    finally:
        cloud.control.set_page_size(500)
        wait_done(ours, ours.instances.delete(project=P, zone="us-central1-b", instance="rest-b"))


def test_exceptions_are_api_cores_and_load_only_on_error():
    code = ("import sys; from infra import gce; "
            "assert 'google.api_core' not in sys.modules, 'api_core imported'; "
            "from google.api_core import exceptions; "
            "assert gce.NotFound is exceptions.NotFound and gce.ServiceUnavailable is exceptions.ServiceUnavailable")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
    with pytest.raises(AttributeError):
        gce.NoSuchThing  # noqa: B018


def test_status_list_find_and_delete_never_import_compute_v1(cloud, vm):
    """What `status`, `up`'s lookups and `down` run, in a fresh process against the local cloud:
    no compute_v1, no api_core (nothing failed), and the answers are right."""
    env = {k: v for k, v in os.environ.items() if k not in ("GOOGLE_CLOUD_PROJECT", "CLOUDSDK_CORE_PROJECT", "FERRY_BACKEND")}
    env.update(FERRY_HOME=str(cloud.home), CLOUDSDK_CONFIG=str(cloud.home / "no-gcloud"))
    code = f"""
import sys
from infra import clients, deletion, provision, ssh
from infra.settings import resolve
s = resolve()
names = [v.name for v in provision.list_vms(s)]
assert {vm!r} in names, names
c = clients.compute(s)
inst = provision.find(c, s, {vm!r})
assert inst["name"] == {vm!r}
assert provision.find(c, s, "no-such-vm") is None
assert deletion.refusal(inst, deletion.Proof(instance_id=inst["id"])) is None
assert "not" in deletion.refusal(inst, deletion.Proof(instance_id="1"))
assert provision._candidate_zones(c, "us-central1-a")[0] == "us-central1-a"
for heavy in ("google.cloud.compute_v1", "google.api_core", "google.protobuf", "proto"):
    assert heavy not in sys.modules, heavy + " was imported"
assert ssh.login_from_guest(c, "us-central1-a", {vm!r}) == (22, None)  # a 404 (no guest environment here)
assert "google.api_core" in sys.modules and "google.cloud.compute_v1" not in sys.modules
"""
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True, timeout=120)
    out = subprocess.run([sys.executable, "-X", "importtime", "cli.py", "status"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert vm in out.stdout
    assert "google.cloud.compute_v1" not in out.stderr and "google.api_core" not in out.stderr


def test_vm_from_instance_reads_the_json(cloud, ours, vm):
    """provision.Vm from the API's JSON: what `status`, `run` and `down` show and prove with."""
    from datetime import timedelta

    from infra import provision
    from infra.settings import Settings, owner

    settings = Settings(backend="local", project=P, zone=Z, bucket=None, home=cloud.home)
    inst = ours.instances.get(project=P, zone=Z, instance=vm)
    v = provision.vm_from_instance(inst, settings)
    assert (v.name, v.zone, v.gpu, v.gpu_count, v.machine_type, v.spot) == (vm, Z, "t4", 1, "n1-standard-4", False)
    assert v.host == inst["networkInterfaces"][0]["accessConfigs"][0]["natIP"] and v.host
    assert v.id == inst["id"] and v.labels["ferry-owner"] == owner() and v.status == inst["status"]
    assert v.price_per_hour and v.created_at is not None
    max_run = int(inst["scheduling"]["maxRunDuration"]["seconds"])
    assert v.auto_delete_at is not None
    assert abs((v.auto_delete_at - v.created_at) - timedelta(seconds=max_run)) < timedelta(seconds=60)
    # A Spot body as ferry sends it, with what the API adds: spot, GPU by machine type (G2), bucket metadata.
    spec = templates.load(None, gpu="l4", spot=True)
    b = render.body(spec, name="rest-spot", zone=Z, owner=owner(), ssh_keys=KEY,
                    extra_metadata={provision.RUN_BUCKET_KEY: "my-bucket"})
    b.update(zone=f"https://www.googleapis.com/compute/v1/projects/{P}/zones/{Z}", status="RUNNING", id="123",
             creationTimestamp="2026-01-02T03:04:05.000-08:00")
    s = provision.vm_from_instance(b, settings)
    assert (s.spot, s.gpu, s.gpu_count, s.machine_type, s.run_bucket, s.id, s.host) == \
           (True, "l4", 1, spec.machine_type, "my-bucket", "123", None)
    assert s.auto_delete_at - s.created_at == timedelta(seconds=spec.max_run_seconds)
