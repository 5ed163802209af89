"""Helpers for tests (any engineer's) that need the local cloud.

    from infra.local.testing import local_cloud, compute_clients, wait_operation
    with local_cloud(tmp_path) as cloud:          # own FERRY_HOME, service stopped after
        cloud.endpoints.compute, cloud.control.fault(...), cloud.storage_client()
        cloud.batch_client()                      # batch_v1.BatchServiceClient on the local Batch

`local_cloud` sets nothing global: pass `cloud.home` as FERRY_HOME to code under test
(`monkeypatch.setenv("FERRY_HOME", str(cloud.home))`).
"""

from __future__ import annotations

import contextlib
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from infra.local import service
from infra.local.control import Control
from infra.local.service import Endpoints


@dataclass
class LocalCloud:
    home: Path
    endpoints: Endpoints
    control: Control
    project: str = "ferry-local"

    def credentials(self):
        """The service's access token as credentials any Google client accepts."""
        from google.oauth2.credentials import Credentials

        return Credentials(token=self.endpoints.token)

    def compute_options(self) -> dict:
        """kwargs for any compute_v1.*Client(...)."""
        return {"credentials": self.credentials(), "client_options": {"api_endpoint": self.endpoints.compute}}

    def batch_client(self):
        """google.cloud.batch_v1.BatchServiceClient (REST) on the local Cloud Batch."""
        from google.cloud import batch_v1

        return batch_v1.BatchServiceClient(transport="rest", credentials=self.credentials(),
                                           client_options={"api_endpoint": self.endpoints.batch})

    def batch_parent(self, location: str = "us-central1") -> str:
        return f"projects/{self.project}/locations/{location}"

    def storage_client(self):
        from google.cloud import storage

        return storage.Client(project=self.project, credentials=self.credentials(),
                              client_options={"api_endpoint": self.endpoints.storage})


@contextlib.contextmanager
def local_cloud(home: Path, vm_runtime: str | None = None):
    """Start a local cloud with its state in `home` (a fresh temporary FERRY_HOME) and stop it
    after, leaving no process behind."""
    home = Path(home)
    try:
        endpoints = service.ensure_running(home, vm_runtime=vm_runtime)
        yield LocalCloud(home=home, endpoints=endpoints, control=Control(endpoints))
    finally:
        service.stop(home)


GCP_SETTINGS = ("GOOGLE_CLOUD_PROJECT", "CLOUDSDK_CORE_PROJECT", "CLOUDSDK_COMPUTE_ZONE", "FERRY_ZONE",
                "FERRY_BUCKET", "FERRY_BACKEND")


@contextlib.contextmanager
def ferry_local_cloud(home: Path, vm_runtime: str | None = None):
    """A local cloud that ferry's own code in this process talks to: FERRY_HOME=home, no GCP
    project, zone, bucket or backend from the environment or gcloud; restored after."""
    import os

    from infra import clients

    home = Path(home)
    saved = {k: os.environ.get(k) for k in (*GCP_SETTINGS, "FERRY_HOME", "CLOUDSDK_CONFIG")}
    os.environ["FERRY_HOME"] = str(home)
    os.environ["CLOUDSDK_CONFIG"] = str(home / "no-gcloud")
    for var in GCP_SETTINGS:
        os.environ.pop(var, None)
    clients.reset_cache()
    try:
        with local_cloud(home, vm_runtime=vm_runtime) as cloud:
            yield cloud
    finally:
        clients.reset_cache()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def wait_until(pred, timeout: float = 10.0, interval: float = 0.02, what: str | None = None):
    """Poll `pred` until it returns something truthy (returned) or `timeout` passes: then its
    last value is returned, or, with `what`, AssertionError("timed out waiting for WHAT").
    For what a test sees through snapshots: /proc scans, listings, state machines."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = pred()
        if value:
            return value
        time.sleep(interval)
    value = pred()
    if not value and what is not None:
        raise AssertionError(f"timed out waiting for {what}")
    return value


def wait_operation(cloud_or_options, op, timeout: float = 30.0, poll_s: float = 0.02):
    """Poll a zone (or global) operation with a client on the same endpoint until DONE.

    `op`: an ExtendedOperation or compute_v1.Operation. Returns the final compute_v1.Operation
    (check `.error.errors` yourself). Raises TimeoutError.
    """
    from google.cloud import compute_v1

    options = cloud_or_options.compute_options() if isinstance(cloud_or_options, LocalCloud) else cloud_or_options
    raw = getattr(op, "_extended_operation", op)
    project = raw.self_link.split("/projects/", 1)[1].split("/", 1)[0]
    deadline = time.monotonic() + timeout
    if raw.zone:
        client = compute_v1.ZoneOperationsClient(**options)
        get = lambda: client.get(project=project, zone=raw.zone.rsplit("/", 1)[-1], operation=raw.name)  # noqa: E731
    else:
        client = compute_v1.GlobalOperationsClient(**options)
        get = lambda: client.get(project=project, operation=raw.name)  # noqa: E731
    current = raw
    while current.status != compute_v1.Operation.Status.DONE:
        if time.monotonic() > deadline:
            raise TimeoutError(f"operation {raw.name} not done after {timeout} s")
        time.sleep(poll_s)
        current = get()
    return current


DLVM_FAMILY = "projects/deeplearning-platform-release/global/images/family/common-cu129-ubuntu-2204-nvidia-580"


def instance_resource(name: str, zone: str = "us-central1-a", *, gpu: str | None = "nvidia-tesla-t4",
                      gpu_count: int = 1, machine_type: str = "n1-standard-4", spot: bool = False,
                      max_run_s: float | None = None, termination_action: str = "DELETE",
                      metadata: dict | None = None, labels: dict | None = None,
                      image: str = DLVM_FAMILY, on_host_maintenance: str | None = None,
                      scopes: tuple = ("https://www.googleapis.com/auth/cloud-platform",)):
    """A compute_v1.Instance as a GPU provisioner would send it (for tests); its default service
    account gets SCOPES (none: no service account, as GCE then attaches none)."""
    from google.cloud import compute_v1

    scheduling = compute_v1.Scheduling(on_host_maintenance=on_host_maintenance or ("TERMINATE" if gpu else "MIGRATE"))
    if spot:
        scheduling.provisioning_model = "SPOT"
        scheduling.automatic_restart = False
        scheduling.instance_termination_action = termination_action
    if max_run_s is not None:
        seconds = int(max_run_s)
        scheduling.max_run_duration = compute_v1.Duration(seconds=seconds, nanos=int((max_run_s - seconds) * 1e9))
        scheduling.instance_termination_action = termination_action
    items = {"enable-guest-attributes": "TRUE", **(metadata or {})}
    inst = compute_v1.Instance(
        name=name,
        machine_type=f"zones/{zone}/machineTypes/{machine_type}",
        disks=[compute_v1.AttachedDisk(boot=True, auto_delete=True, initialize_params=compute_v1.AttachedDiskInitializeParams(
            source_image=image, disk_size_gb=100))],
        network_interfaces=[compute_v1.NetworkInterface(access_configs=[compute_v1.AccessConfig(name="External NAT")])],
        scheduling=scheduling,
        metadata=compute_v1.Metadata(items=[compute_v1.Items(key=k, value=v) for k, v in items.items()]),
        labels={"managed-by": "ferry", **(labels or {})},
    )
    if scopes:
        inst.service_accounts = [compute_v1.ServiceAccount(email="default", scopes=list(scopes))]
    if gpu:
        inst.guest_accelerators = [compute_v1.AcceleratorConfig(
            accelerator_type=f"zones/{zone}/acceleratorTypes/{gpu}", accelerator_count=gpu_count)]
    return inst


def port_refuses(port: int, host: str = "127.0.0.1") -> bool:
    """Whether nothing listens on host:port any more (a deleted VM's SSH port)."""
    try:
        socket.create_connection((host, port), timeout=1).close()
        return False
    except OSError:
        return True
