"""The local Cloud Batch, through the official google-cloud-batch client (REST transport) over
real HTTP: jobs whose tasks run on real local VMs of the local Compute Engine, their scripts
writing to the local Cloud Storage with the VM's own credentials. No mocks."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from google.api_core import exceptions as gexc

from infra.local.testing import local_cloud

REPO = Path(__file__).resolve().parents[2]
LOCATION = "us-central1"
BUCKET = "batch-results"

# What each task runs: the VM's metadata server gives its service account's token, and the
# task writes what it saw (its BATCH_* variables, directory, user) to the local Cloud Storage.
REPORT = r"""#!/bin/bash
export WHOAMI="$(whoami)"
python3 - <<'PY'
import json, os, urllib.parse, urllib.request
meta = os.environ["GCE_METADATA_HOST"]
req = urllib.request.Request(f"http://{meta}/computeMetadata/v1/instance/service-accounts/default/token",
                             headers={"Metadata-Flavor": "Google"})
token = json.load(urllib.request.urlopen(req, timeout=10))["access_token"]
seen = {k: v for k, v in os.environ.items() if k.startswith("BATCH_") or k in ("GREETING", "HOME", "WHOAMI")}
seen["cwd"], seen["files"] = os.getcwd(), sorted(os.listdir("."))
env = os.environ
name = f"out/{env['BATCH_JOB_ID']}/{env['BATCH_TASK_INDEX']}-{env['BATCH_TASK_RETRY_ATTEMPT']}.json"
url = (f"{env['STORAGE_EMULATOR_HOST']}/upload/storage/v1/b/BUCKET/o?uploadType=media&name="
       + urllib.parse.quote(name, safe=""))
urllib.request.urlopen(urllib.request.Request(url, data=json.dumps(seen).encode(), method="POST", headers={
    "Authorization": f"Bearer {token}", "Content-Type": "application/json"}), timeout=10).read()
PY
""".replace("BUCKET", BUCKET)


@pytest.fixture(scope="module")
def cloud(tmp_path_factory):
    with local_cloud(tmp_path_factory.mktemp("ferry-home"), vm_runtime="asyncssh") as c:
        client = c.storage_client()
        c.bucket = client.lookup_bucket(BUCKET) or client.create_bucket(BUCKET)
        c.batch = c.batch_client()
        yield c


def batch_v1():
    from google.cloud import batch_v1 as module

    return module


def make_job(script: str, count: int = 1, parallelism: int = 0, *, spot: bool = False, retries: int = 0,
             policy=None, env: dict | None = None, labels: dict | None = None, vm_labels: dict | None = None,
             machine_type: str = "", accelerator: tuple | None = None, max_run_s: int = 0):
    b = batch_v1()
    spec = b.TaskSpec(runnables=[b.Runnable(script=b.Runnable.Script(text=script))], max_retry_count=retries,
                      environment=b.Environment(variables=env or {}))
    if policy:
        action, codes = policy
        spec.lifecycle_policies = [b.LifecyclePolicy(action=getattr(b.LifecyclePolicy.Action, action),
                                                     action_condition=b.LifecyclePolicy.ActionCondition(exit_codes=codes))]
    if max_run_s:
        spec.max_run_duration = {"seconds": max_run_s}
    policy_ = b.AllocationPolicy.InstancePolicy(
        machine_type=machine_type,
        provisioning_model=b.AllocationPolicy.ProvisioningModel.SPOT if spot else b.AllocationPolicy.ProvisioningModel.STANDARD)
    if accelerator:
        policy_.accelerators = [b.AllocationPolicy.Accelerator(type_=accelerator[0], count=accelerator[1])]
    return b.Job(task_groups=[b.TaskGroup(task_count=count, parallelism=parallelism, task_spec=spec)],
                 allocation_policy=b.AllocationPolicy(
                     instances=[b.AllocationPolicy.InstancePolicyOrTemplate(policy=policy_)],
                     location=b.AllocationPolicy.LocationPolicy(allowed_locations=[f"regions/{LOCATION}"]),
                     labels=vm_labels or {"managed-by": "ferry-test"}),
                 labels=labels or {})


def job_name(job_id: str) -> str:
    return f"projects/ferry-local/locations/{LOCATION}/jobs/{job_id}"


def state(x) -> str:
    return getattr(x, "name", str(x))


def wait_for(pred, timeout: float = 30.0, what: str = "condition", interval: float = 0.05):
    from infra.local.testing import wait_until

    return wait_until(pred, timeout, interval, what=what)


def wait_job(cloud, name: str, timeout: float = 40.0):
    return wait_for(lambda: (j := cloud.batch.get_job(name=name)) and state(j.status.state) in
                    ("SUCCEEDED", "FAILED", "CANCELLED") and j, timeout, f"job {name} to end")


def tasks(cloud, name: str):
    return list(cloud.batch.list_tasks(parent=f"{name}/taskGroups/group0"))


def job_vms(cloud, job_id: str) -> list:
    from google.cloud import compute_v1

    client = compute_v1.InstancesClient(**cloud.compute_options())
    out = []
    request = compute_v1.AggregatedListInstancesRequest(project=cloud.project, filter=f"labels.batch-job-id = {job_id}")
    for _, scoped in client.aggregated_list(request=request):
        out += list(scoped.instances)
    return out


def result(cloud, job_id: str, index: int, attempt: int = 0) -> dict:
    return json.loads(cloud.bucket.blob(f"out/{job_id}/{index}-{attempt}.json").download_as_bytes())


def max_running(task_list) -> int:
    """The most tasks RUNNING at one moment, from their status events."""
    spans = []
    for task in task_list:
        start = None
        for e in sorted(task.status.status_events, key=lambda e: e.event_time.timestamp()):
            s = state(e.task_state)
            if s == "RUNNING" and start is None:
                start = e.event_time.timestamp()
            elif s in ("SUCCEEDED", "FAILED") and start is not None:
                spans.append((start, e.event_time.timestamp()))
                start = None
    points = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    now = best = 0
    for _, d in points:
        now += d
        best = max(best, now)
    return best


@contextlib.contextmanager
def refused(cls, status: str, match: str | None = None):
    """The client raises CLS (api_core maps a REST answer by its HTTP status: 400 BadRequest,
    409 Conflict, 404 NotFound, 401 Unauthorized) for Google's error body with STATUS."""
    with pytest.raises(cls, match=match) as info:
        yield
    body = info.value.response.json()["error"]
    assert body["status"] == status and body["code"] == info.value.code, body


def raw(cloud, method: str, path: str, body=None):
    """A request the official client cannot make (a field its protos lack, a zero it omits),
    with the same credentials; -> the api_core exception Google's answer maps to, or the JSON."""
    from google.auth.transport.requests import AuthorizedSession

    session = AuthorizedSession(cloud.credentials())
    resp = session.request(method, cloud.endpoints.batch + path, json=body, timeout=30)
    if resp.status_code >= 400:
        return gexc.from_http_response(resp)
    return resp.json()


# --------------------------------------------------------------------------- running jobs
def test_six_tasks_three_at_once_each_on_its_own_vm_then_none(cloud):
    cloud.control.clear_requests()
    job = make_job("#!/bin/bash\nsleep 0.4\n" + REPORT.split("\n", 1)[1], count=6, parallelism=3,
                   env={"GREETING": "hello"})
    created = cloud.batch.create_job(parent=cloud.batch_parent(), job=job, job_id="six-tasks")
    assert created.name == job_name("six-tasks") and state(created.status.state) == "QUEUED"
    assert created.uid.startswith("six-tasks-") and created.task_groups[0].task_count == 6
    assert created.task_groups[0].name == f"{created.name}/taskGroups/group0"
    done = wait_job(cloud, created.name)
    assert state(done.status.state) == "SUCCEEDED", [e.description for e in done.status.status_events]
    assert dict(done.status.task_groups["group0"].counts) == {"SUCCEEDED": 6}
    assert done.status.run_duration.total_seconds() > 0
    assert [e.description.split(" for job")[0] for e in done.status.status_events] == [
        "Job state is set from QUEUED to SCHEDULED", "Job state is set from SCHEDULED to RUNNING",
        "Job state is set from RUNNING to SUCCEEDED"]
    task_list = tasks(cloud, created.name)
    assert [t.name.rsplit("/", 1)[1] for t in task_list] == [str(i) for i in range(6)]
    for t in task_list:
        assert [state(e.task_state) for e in t.status.status_events] == ["ASSIGNED", "RUNNING", "SUCCEEDED"]
        assert "with exit code 0" in t.status.status_events[-1].description
    assert 2 <= max_running(task_list) <= 3
    for i in range(6):
        seen = result(cloud, "six-tasks", i)
        assert seen["BATCH_TASK_INDEX"] == str(i) and seen["BATCH_TASK_COUNT"] == "6"
        assert seen["BATCH_TASK_RETRY_ATTEMPT"] == "0" and seen["BATCH_JOB_ID"] == "six-tasks"
        assert seen["BATCH_JOB_UID"] == created.uid and seen["GREETING"] == "hello"
        assert seen["WHOAMI"] == "root" and "/batch-task." in seen["cwd"] and seen["HOME"]
    assert job_vms(cloud, "six-tasks") == []
    mutating = [(r["method"], r["path"]) for r in cloud.control.requests() if r["service"] == "batch" and r["method"] != "GET"]
    assert mutating == [("POST", "/v1/projects/ferry-local/locations/us-central1/jobs")]
    assert cloud.batch.get_task(name=f"{created.name}/taskGroups/group0/tasks/5").status.state.name == "SUCCEEDED"


def test_a_preempted_spot_task_is_retried_on_a_new_vm_and_succeeds(cloud):
    script = ("#!/bin/bash\nif [ \"$BATCH_TASK_RETRY_ATTEMPT\" = 0 ]; then sleep 120; exit 7; fi\n"
              + REPORT.split("\n", 1)[1])
    job = make_job(script, spot=True, retries=2, policy=("RETRY_TASK", [50001]), max_run_s=600,
                   machine_type="n1-standard-4", accelerator=("nvidia-tesla-t4", 1), labels={"managed-by": "ferry-test"},
                   vm_labels={"managed-by": "ferry-test", "team": "ml"})
    created = cloud.batch.create_job(parent=cloud.batch_parent(), job=job, job_id="spot-retry")
    name = created.name
    wait_for(lambda: state(cloud.batch.get_task(name=f"{name}/taskGroups/group0/tasks/0").status.state) == "RUNNING",
             30, "task 0 to run")
    vm, = job_vms(cloud, "spot-retry")
    labels = dict(vm.labels)
    assert labels == {"managed-by": "ferry-test", "team": "ml", "batch-job-id": "spot-retry",
                      "batch-job-uid": created.uid, "batch-node": ""}
    assert vm.machine_type.endswith("/n1-standard-4") and vm.status == "RUNNING"
    assert vm.scheduling.provisioning_model == "SPOT" and vm.scheduling.instance_termination_action == "DELETE"
    assert vm.scheduling.max_run_duration.seconds >= 600
    assert [a.accelerator_type.rsplit("/", 1)[1] for a in vm.guest_accelerators] == ["nvidia-tesla-t4"]
    assert "https://www.googleapis.com/auth/cloud-platform" in vm.service_accounts[0].scopes
    assert dict(created.labels) == {"managed-by": "ferry-test", "batch-job-id": "spot-retry"}

    out = cloud.control.preempt_batch_task(LOCATION, "spot-retry", 0)
    assert out["vm"] == vm.name
    done = wait_job(cloud, name)
    assert state(done.status.state) == "SUCCEEDED", [e.description for e in done.status.status_events]
    task, = tasks(cloud, name)
    events = task.status.status_events
    assert [state(e.task_state) for e in events] == ["ASSIGNED", "RUNNING", "FAILED", "PENDING", "ASSIGNED",
                                                     "RUNNING", "SUCCEEDED"]
    assert events[2].task_execution.exit_code == 50001 and "due to Spot Preemption with exit code 50001" in events[2].description
    assert vm.name not in events[4].description and str(vm.id) not in events[4].description  # a new VM
    seen = result(cloud, "spot-retry", 0, attempt=1)
    assert seen["BATCH_TASK_RETRY_ATTEMPT"] == "1"
    assert job_vms(cloud, "spot-retry") == []


def test_a_failing_script_fails_its_task_and_the_job_with_its_exit_code(cloud):
    """Task 0 exits 3: FAIL_TASK's exit code, no retry. Task 1 exits 4: not listed, so retried
    (the opposite action) up to maxRetryCount, then failed."""
    script = '#!/bin/sh\nif [ "$BATCH_TASK_INDEX" = 0 ]; then exit 3; fi\nexit 4\n'
    job = make_job(script, count=2, retries=2, policy=("FAIL_TASK", [3]))
    created = cloud.batch.create_job(parent=cloud.batch_parent(), job=job, job_id="exit-three")
    done = wait_job(cloud, created.name)
    assert state(done.status.state) == "FAILED"
    assert dict(done.status.task_groups["group0"].counts) == {"FAILED": 2}
    last = done.status.status_events[-1].description
    assert "from RUNNING to FAILED" in last and "task with index" in last and "exit code" in last
    t0, t1 = tasks(cloud, created.name)
    assert [state(e.task_state) for e in t0.status.status_events] == ["ASSIGNED", "RUNNING", "FAILED"]
    assert t0.status.status_events[-1].task_execution.exit_code == 3
    failed = [e for e in t1.status.status_events if state(e.task_state) == "FAILED"]
    assert [e.task_execution.exit_code for e in failed] == [4, 4, 4]
    assert job_vms(cloud, "exit-three") == []


def test_runnables_run_in_order_as_batch_runs_them_and_max_run_duration_ends_a_task(cloud):
    """A background runnable is killed at the end; an ignored failure goes on; a failure stops
    the rest but an alwaysRun runnable (whose own environment wins); the task's exit code is
    the first failure's. A task past taskSpec.maxRunDuration ends with exit code 50005."""
    b = batch_v1()
    spec = b.TaskSpec(environment=b.Environment(variables={"GREETING": "task"}), runnables=[
        b.Runnable(script=b.Runnable.Script(text="sleep 60"), background=True),
        b.Runnable(script=b.Runnable.Script(text="exit 5"), ignore_exit_status=True),
        b.Runnable(script=b.Runnable.Script(text="[ \"$GREETING\" = task ] || exit 1\nexit 9")),
        b.Runnable(script=b.Runnable.Script(text="touch never-runs; exit 0")),
        b.Runnable(script=b.Runnable.Script(text=REPORT), always_run=True,
                   environment=b.Environment(variables={"GREETING": "runnable"}))])
    job = make_job("true")
    job.task_groups[0].task_spec = spec
    runnables = cloud.batch.create_job(parent=cloud.batch_parent(), job=job, job_id="runnables")
    slow = cloud.batch.create_job(parent=cloud.batch_parent(), job=make_job("sleep 60", max_run_s=1), job_id="too-slow")
    done = wait_job(cloud, runnables.name)
    assert state(done.status.state) == "FAILED"
    assert tasks(cloud, runnables.name)[0].status.status_events[-1].task_execution.exit_code == 9
    seen = result(cloud, "runnables", 0)
    assert seen["GREETING"] == "runnable" and "never-runs" not in seen["files"]
    done = wait_job(cloud, slow.name)
    events = tasks(cloud, slow.name)[0].status.status_events
    assert state(done.status.state) == "FAILED" and events[-1].task_execution.exit_code == 50005
    assert "due to task runs over the maximum runtime" in events[-1].description
    assert job_vms(cloud, "runnables") == [] and job_vms(cloud, "too-slow") == []


def test_delete_removes_the_job_and_its_vms(cloud):
    created = cloud.batch.create_job(parent=cloud.batch_parent(), job=make_job("sleep 120", count=3, parallelism=2),
                                     job_id="to-delete")
    wait_for(lambda: len([t for t in tasks(cloud, created.name) if state(t.status.state) == "RUNNING"]) == 2,
             30, "two tasks running")
    assert len(job_vms(cloud, "to-delete")) == 2
    with pytest.raises(Exception, match="STANDARD VM"):
        cloud.control.preempt_batch_task(LOCATION, "to-delete", 0)  # only Spot VMs are preempted
    op = cloud.batch.delete_job(name=created.name)
    assert state(cloud.batch.get_job(name=created.name).status.state) == "DELETION_IN_PROGRESS"
    op.result(timeout=30)
    with pytest.raises(gexc.NotFound):
        cloud.batch.get_job(name=created.name)
    assert job_vms(cloud, "to-delete") == []
    with pytest.raises(gexc.NotFound):
        cloud.batch.delete_job(name=created.name)


# --------------------------------------------------------------------------- the rules
def test_requests_google_refuses_are_refused_with_its_codes(cloud):
    b = batch_v1()
    parent = cloud.batch_parent()
    ok = make_job("true")
    with refused(gexc.BadRequest, "INVALID_ARGUMENT", match="job id"):
        cloud.batch.create_job(parent=parent, job=ok, job_id="Bad_ID")
    with refused(gexc.BadRequest, "INVALID_ARGUMENT"):
        cloud.batch.create_job(parent=parent, job=ok, job_id="ends-with-")
    cloud.batch.create_job(parent=parent, job=ok, job_id="taken")
    with refused(gexc.Conflict, "ALREADY_EXISTS"):
        cloud.batch.create_job(parent=parent, job=ok, job_id="taken")
    with refused(gexc.BadRequest, "INVALID_ARGUMENT", match="task_count"):
        cloud.batch.create_job(parent=parent, job=make_job("true", count=100_001), job_id="too-many")
    with refused(gexc.BadRequest, "INVALID_ARGUMENT", match="parallelism"):
        cloud.batch.create_job(parent=parent, job=make_job("true", count=2, parallelism=-1), job_id="minus")
    with refused(gexc.BadRequest, "INVALID_ARGUMENT", match="parallelism"):
        cloud.batch.create_job(parent=parent, job=make_job("true", count=2, parallelism=5001), job_id="wide")
    no_runnables = make_job("true")
    no_runnables.task_groups[0].task_spec.runnables = []
    with refused(gexc.BadRequest, "INVALID_ARGUMENT", match="runnable"):
        cloud.batch.create_job(parent=parent, job=no_runnables, job_id="no-runnables")
    container = make_job("true")
    container.task_groups[0].task_spec.runnables = [b.Runnable(container=b.Runnable.Container(image_uri="debian"))]
    with refused(gexc.BadRequest, "INVALID_ARGUMENT", match="not supported by the local Batch"):
        cloud.batch.create_job(parent=parent, job=container, job_id="container")
    with refused(gexc.BadRequest, "INVALID_ARGUMENT", match="max_retry_count"):
        cloud.batch.create_job(parent=parent, job=make_job("true", retries=11), job_id="retries")
    with refused(gexc.BadRequest, "INVALID_ARGUMENT", match="predefined"):
        cloud.batch.create_job(parent=parent, job=make_job("true", labels={"batch-job-id": "x"}), job_id="labels")
    with refused(gexc.BadRequest, "INVALID_ARGUMENT", match="Compute Engine"):  # what GCE would refuse of its VMs
        cloud.batch.create_job(parent=parent, job=make_job("true", machine_type="e2-standard-4",
                                                           accelerator=("nvidia-tesla-t4", 1)), job_id="t4-on-e2")
    # a zero (which the client omits) and an unknown field (which its protos lack): raw JSON
    body = json.loads(b.Job.to_json(ok))
    jobs = "/v1/projects/ferry-local/locations/us-central1/jobs"
    for group_field, value in (("taskCount", 0), ("parallelism", 0)):
        bad = json.loads(json.dumps(body))
        bad["taskGroups"][0][group_field] = value
        err = raw(cloud, "POST", f"{jobs}?jobId=zero-{group_field.lower()}", bad)
        assert isinstance(err, gexc.BadRequest), err
    unknown = {**body, "priorty": 3}
    err = raw(cloud, "POST", f"{jobs}?jobId=typo", unknown)
    assert isinstance(err, gexc.BadRequest) and 'Unknown name "priorty"' in err.message
    assert err.response.json()["error"]["status"] == "INVALID_ARGUMENT"
    nested = json.loads(json.dumps(body))
    nested["taskGroups"][0]["taskSpec"]["runnables"][0]["script"]["txt"] = "x"
    err = raw(cloud, "POST", f"{jobs}?jobId=typo", nested)
    assert isinstance(err, gexc.BadRequest) and "job.task_groups[0].task_spec.runnables[0].script" in err.message
    err = raw(cloud, "GET", f"{jobs}?pageSiz=3")
    assert isinstance(err, gexc.BadRequest) and "Cannot bind query parameter" in err.message
    for missing in (lambda: cloud.batch.get_job(name=job_name("no-such-job")),
                    lambda: cloud.batch.get_task(name=job_name("taken") + "/taskGroups/group0/tasks/7"),
                    lambda: list(cloud.batch.list_tasks(parent=job_name("no-such-job") + "/taskGroups/group0"))):
        with refused(gexc.NotFound, "NOT_FOUND"):
            missing()
    import requests  # without the local cloud's token (the client would try to refresh its credentials)

    url = cloud.endpoints.batch + "/v1/" + job_name("taken")
    for headers, reason in (({}, "CREDENTIALS_MISSING"), ({"Authorization": "Bearer ya29.stranger"}, None)):
        resp = requests.get(url, headers=headers, timeout=30)
        error = resp.json()["error"]
        assert resp.status_code == 401 and error["status"] == "UNAUTHENTICATED"
        assert isinstance(gexc.from_http_response(resp), gexc.Unauthorized)
        if reason:
            assert error["details"][0]["reason"] == reason


def test_lists_page_and_filter(cloud):
    for i in range(3):
        cloud.batch.create_job(parent=cloud.batch_parent(), job=make_job("true", count=3, labels={"suite": "paging", "n": str(i)}),
                               job_id=f"page-{i}")
    for i in range(3):
        wait_job(cloud, job_name(f"page-{i}"))
    b = batch_v1()
    pager = cloud.batch.list_jobs(request=b.ListJobsRequest(parent=cloud.batch_parent(), page_size=1,
                                                            filter='labels.suite="paging"'))
    assert [j.name.rsplit("/", 1)[1] for j in pager] == ["page-0", "page-1", "page-2"]
    pages = list(cloud.batch.list_jobs(request=b.ListJobsRequest(parent=cloud.batch_parent(), page_size=2,
                                                                 filter="labels.suite=paging AND labels.n!=1",
                                                                 order_by="name desc")).pages)
    assert [[j.name.rsplit("/", 1)[1] for j in p.jobs] for p in pages] == [["page-2", "page-0"]]
    assert [j.name.rsplit("/", 1)[1] for j in cloud.batch.list_jobs(request=b.ListJobsRequest(
        parent=cloud.batch_parent(), filter='status.state="SUCCEEDED" AND labels.n=2'))] == ["page-2"]
    tasks_ = cloud.batch.list_tasks(request=b.ListTasksRequest(parent=job_name("page-1") + "/taskGroups/group0",
                                                               page_size=2, filter="State=SUCCEEDED"))
    assert len(list(tasks_)) == 3
    assert list(cloud.batch.list_tasks(request=b.ListTasksRequest(parent=job_name("page-1") + "/taskGroups/group0",
                                                                  filter="State=FAILED"))) == []
    with refused(gexc.BadRequest, "INVALID_ARGUMENT"):
        list(cloud.batch.list_jobs(request=b.ListJobsRequest(parent=cloud.batch_parent(), filter="labels.suite=")))


def test_answers_conform_to_the_schema_with_enums_by_name_or_number(cloud):
    from infra.local.batch import schema

    path = "/v1/" + job_name("page-0")
    by_name = raw(cloud, "GET", path)
    assert schema.violations(by_name, "Job") == [] and by_name["status"]["state"] == "SUCCEEDED"
    by_number = raw(cloud, "GET", path + "?%24alt=json%3Benum-encoding%3Dint")
    assert by_number["status"]["state"] == 4  # JobStatus.State.SUCCEEDED
    assert by_number["status"]["statusEvents"][0]["type"] == "STATUS_CHANGED"
    tasks_ = raw(cloud, "GET", path + "/taskGroups/group0/tasks")
    assert schema.violations(tasks_, "ListTasksResponse") == []


def test_the_discovery_enums_are_numbered_as_the_client_protos():
    """Enum numbers on the wire are the discovery document's positions: they must be the
    installed client's proto numbers."""
    from infra.local.batch import schema

    b = batch_v1()
    checked = 0

    def walk(desc, spec, seen):
        nonlocal checked
        if desc.full_name in seen:
            return
        seen.add(desc.full_name)
        spec = schema._resolve(spec)[0]
        for f in desc.fields:
            prop = spec.get("properties", {}).get(f.json_name)
            if prop is None:
                continue
            prop = prop.get("items", prop) if prop.get("type") == "array" else prop
            if f.enum_type is not None:
                assert [v.name for v in sorted(f.enum_type.values, key=lambda v: v.number)] == prop["enum"]
                assert sorted(v.number for v in f.enum_type.values) == list(range(len(prop["enum"])))
                checked += 1
            elif f.message_type is not None and not f.message_type.GetOptions().map_entry and "$ref" in prop:
                walk(f.message_type, prop, seen)

    seen: set = set()
    walk(b.Job.pb().DESCRIPTOR, {"$ref": "Job"}, seen)
    walk(b.Task.pb().DESCRIPTOR, {"$ref": "Task"}, seen)
    assert checked >= 6


def test_local_status_and_clients_name_the_batch_endpoint(cloud, monkeypatch):
    env = {**os.environ, "FERRY_HOME": str(cloud.home)}
    out = subprocess.run([sys.executable, "cli.py", "--json", "local", "status"], check=False, cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["batch"] == cloud.endpoints.batch and cloud.endpoints.batch.startswith("http://127.0.0.1:")
    text = subprocess.run([sys.executable, "cli.py", "local", "status"], check=False, cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=60).stdout
    assert f"Cloud Batch     {cloud.endpoints.batch}" in text
    assert json.loads((cloud.home / "local" / "service.json").read_text())["batch"] == cloud.endpoints.batch

    from infra import clients
    from infra.settings import resolve

    monkeypatch.setenv("FERRY_HOME", str(cloud.home))
    clients.reset_cache()
    try:
        settings = resolve(backend="local")
        assert clients.endpoints(settings)["batch"] == cloud.endpoints.batch
        assert clients.batch(settings).get_job(name=job_name("page-0")).uid.startswith("page-0-")
    finally:
        clients.reset_cache()


def test_jobs_outlive_a_service_restart_and_a_task_under_way_is_retried(tmp_path):
    """The service stops under a running task: after the restart the job is still there, its
    task's attempt ended (exit code 50003, a VM that rebooted) and ran again on a new VM."""
    from infra.local import service

    home = tmp_path / "home"
    with local_cloud(home, vm_runtime="asyncssh") as c:
        client = c.batch_client()
        script = '#!/bin/bash\nif [ "$BATCH_TASK_RETRY_ATTEMPT" = 0 ]; then sleep 120; fi\n'
        created = client.create_job(parent=c.batch_parent(), job=make_job(script, retries=1), job_id="survivor")
        wait_for(lambda: state(client.get_task(name=f"{created.name}/taskGroups/group0/tasks/0").status.state)
                 == "RUNNING", 30, "the task to run")
        service.stop(home)
        endpoints = service.ensure_running(home, vm_runtime="asyncssh")
        c.endpoints = endpoints
        client = c.batch_client()
        c.batch = client
        done = wait_job(c, created.name)
        assert state(done.status.state) == "SUCCEEDED" and done.uid == created.uid
        events = tasks(c, created.name)[0].status.status_events
        assert [e.task_execution.exit_code for e in events if state(e.task_state) == "FAILED"] == [50003]
        assert job_vms(c, "survivor") == []
