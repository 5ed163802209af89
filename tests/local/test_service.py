"""The background service: start once, survive stale state, stop leaving nothing, keep buckets;
and its Cloud Storage answering google-cloud-storage."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from google.api_core import exceptions as gexc
from google.cloud import compute_v1

from infra.local import service
from infra.local.testing import instance_resource, local_cloud, wait_operation

REPO = Path(__file__).resolve().parents[2]


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        return stat[stat.rindex(b")") + 2:][:1] != b"Z"
    except OSError:
        return False


def group_members(pgid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    stat = f.read()
                fields = stat[stat.rindex(b")") + 2:].split()
                if int(fields[2]) == pgid and fields[0] != b"Z":
                    out.append(int(entry))
            except (OSError, ValueError):
                pass
    return out


def cli(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "FERRY_HOME": str(home), "FERRY_LOCAL_VM_RUNTIME": "none"}
    return subprocess.run([sys.executable, "cli.py", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)


def test_cli_start_status_stop_reset(tmp_path):
    try:
        started = cli(tmp_path, "--json", "local", "start")
        assert started.returncode == 0, started.stderr
        info = json.loads(started.stdout)
        assert info["running"] is True and info["home"] == str(tmp_path)
        for key in ("compute", "storage", "control"):
            assert info[key].startswith("http://127.0.0.1:")
        status = json.loads(cli(tmp_path, "--json", "local", "status").stdout)
        assert status["pid"] == info["pid"]  # a second CLI finds the same service
        assert json.loads((tmp_path / "local" / "service.json").read_text())["pid"] == info["pid"]

        stopped = cli(tmp_path, "local", "stop")
        assert stopped.returncode == 0 and "stopped" in stopped.stdout
        assert not alive(info["pid"]) and group_members(info["pid"]) == []
        assert not (tmp_path / "local" / "service.json").exists()
        assert json.loads(cli(tmp_path, "--json", "local", "status").stdout)["running"] is False

        refused = cli(tmp_path, "--json", "local", "reset")
        assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and "--yes" in refused.stderr
        assert cli(tmp_path, "local", "reset", "--yes").returncode == 0
        assert not (tmp_path / "local").exists()
    finally:
        service.stop(tmp_path)


def test_two_clis_at_once_start_one_service(tmp_path):
    code = "from infra.local.service import ensure_running; import sys; print(ensure_running(sys.argv[1], 'none').pid)"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    try:
        procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], env=env, stdout=subprocess.PIPE, text=True)
                 for _ in range(3)]
        pids = {p.communicate(timeout=60)[0].strip() for p in procs}
        assert len(pids) == 1 and pids != {""}
    finally:
        service.stop(tmp_path)


def test_stale_service_json_is_replaced(tmp_path):
    try:
        first = service.ensure_running(tmp_path, "none")
        os.kill(first.pid, 9)  # crashed: service.json stays behind, the pid is dead
        time.sleep(0.1)
        assert service.running(tmp_path) is None
        second = service.ensure_running(tmp_path, "none")
        assert second.pid != first.pid and service.status(tmp_path)["running"]
        # a live but unrelated pid in service.json is not trusted either (health check)
        info = json.loads((tmp_path / "local" / "service.json").read_text())
        info["control"] = "http://127.0.0.1:9/_ferry"
        (tmp_path / "local" / "service.json").write_text(json.dumps(info))
        assert service.running(tmp_path) is None
        third = service.ensure_running(tmp_path, "none")
        assert third.pid != second.pid and not alive(second.pid)
    finally:
        service.stop(tmp_path)


def test_buckets_and_instances_survive_stop_and_start(tmp_path):
    big = os.urandom(9 * 1024 * 1024)  # > 8 MiB: google-cloud-storage uses a resumable upload
    with local_cloud(tmp_path, vm_runtime="none") as cloud:
        gcs = cloud.storage_client()
        bucket = gcs.create_bucket("ferry-local")
        bucket.blob("runs/r1/status.json").upload_from_string('{"state": "running"}', content_type="application/json")
        bucket.blob("runs/r1/big.bin").upload_from_string(big)
        bucket.blob("datasets/mnist/train.gz").upload_from_string(b"x" * 10)
        assert sorted(b.name for b in gcs.list_blobs("ferry-local", prefix="runs/")) == ["runs/r1/big.bin", "runs/r1/status.json"]
        bucket.blob("datasets/mnist/train.gz").delete()
        instances = compute_v1.InstancesClient(**cloud.compute_options())
        wait_operation(cloud, instances.insert(project="ferry-local", zone="us-central1-a",
                                               instance_resource=instance_resource("keep-1", gpu=None)))
        wait_operation(cloud, instances.insert(project="ferry-local", zone="us-central1-a",
                                               instance_resource=instance_resource("keep-2", gpu=None)))
        wait_operation(cloud, instances.stop(project="ferry-local", zone="us-central1-a", instance="keep-2"))
    assert list((tmp_path / "local" / "storage").iterdir())  # under <home>/local/storage, not cwd
    with local_cloud(tmp_path, vm_runtime="none") as cloud:
        gcs = cloud.storage_client()
        assert sorted(b.name for b in gcs.list_blobs("ferry-local")) == ["runs/r1/big.bin", "runs/r1/status.json"]
        assert gcs.bucket("ferry-local").blob("runs/r1/big.bin").download_as_bytes() == big
        assert json.loads(gcs.bucket("ferry-local").blob("runs/r1/status.json").download_as_text()) == {"state": "running"}
        instances = compute_v1.InstancesClient(**cloud.compute_options())
        deadline = time.monotonic() + 5  # RUNNING before the stop: boots again
        while instances.get(project="ferry-local", zone="us-central1-a", instance="keep-1").status != "RUNNING":
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert instances.get(project="ferry-local", zone="us-central1-a", instance="keep-2").status == "TERMINATED"


def test_storage_create_if_absent_and_concurrency(api_cloud):
    gcs = api_cloud.storage_client()
    bucket = gcs.create_bucket("cond")
    bucket.blob("lock").upload_from_string("first", if_generation_match=0)
    with pytest.raises(gexc.PreconditionFailed):
        bucket.blob("lock").upload_from_string("second", if_generation_match=0)
    assert bucket.blob("lock").download_as_text() == "first"
    generation = bucket.get_blob("lock").generation
    bucket.blob("lock").upload_from_string("third", if_generation_match=generation)
    with pytest.raises(gexc.PreconditionFailed):
        bucket.blob("lock").upload_from_string("fourth", if_generation_match=generation)

    big = os.urandom(9 * 1024 * 1024)  # resumable upload: the precondition rides on its start
    bucket.blob("big").upload_from_string(big, if_generation_match=0)
    with pytest.raises(gexc.PreconditionFailed):
        bucket.blob("big").upload_from_string(big, if_generation_match=0)
    logged = [(r["service"], r["method"]) for r in api_cloud.control.requests() if "/b/cond" in r["path"]]
    assert ("storage", "POST") in logged and ("storage", "GET") in logged

    # a client stuck mid-request does not block anyone else (the emulator alone is single-threaded)
    host, port = api_cloud.endpoints.storage.removeprefix("http://").split(":")
    stuck = socket.create_connection((host, int(port)))
    try:
        stuck.sendall(b"PUT /storage/v1/b/cond/o/x HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\npartial")
        assert bucket.blob("lock").download_as_text(timeout=5) == "third"  # a blocked server would time out
    finally:
        stuck.close()


def test_a_damaged_state_file_stops_the_service_instead_of_forgetting_vms(tmp_path):
    """GCE never forgets an instance: a truncated instances.json is a clear error, not an empty
    cloud (which would drop VMs from `status` while their disks stay)."""
    from infra.errors import CloudError
    from infra.local import service

    home = tmp_path / "home"
    service.ensure_running(home, vm_runtime="none")
    service.stop(home)
    state = home / "local" / "compute" / "instances.json"
    state.write_text('[{"project": "ferry-local", "zone": "us-central1-a", "resource": {"name": "vm-1", "sta')
    with pytest.raises(CloudError) as exc:
        service.ensure_running(home, vm_runtime="none")
    assert "instances.json is unreadable" in str(exc.value) and "local reset" in str(exc.value)
    assert "\n" not in str(exc.value)
    assert state.read_text().endswith('"sta')  # kept as it was, for the user to look at
    service.reset(home)
    service.ensure_running(home, vm_runtime="none")  # a reset starts afresh
    service.stop(home)


def test_a_garbled_service_record_never_starts_a_second_service(tmp_path):
    from infra.errors import CloudError
    from infra.local import service

    home = tmp_path / "home"
    first = service.ensure_running(home, vm_runtime="none")
    record = home / "local" / "service.json"
    record.write_text("{garbled")
    try:
        with pytest.raises(CloudError) as exc:
            service.ensure_running(home, vm_runtime="none")
        assert f"pid {first.pid}" in str(exc.value) and "local stop" in str(exc.value)
        assert processes_alive(first.pid)
    finally:
        assert service.stop(home)["stopped"] is True  # stop finds it by the lock it holds
    assert not processes_alive(first.pid)


def processes_alive(pid):
    from infra.local.vm import processes

    return processes.alive(pid)
