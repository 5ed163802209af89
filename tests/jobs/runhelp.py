"""Helpers for the `run` end-to-end tests: a local cloud per test, the CLI as a subprocess,
and reading the bucket. (Imported by path: pytest runs in importlib mode.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SELFTEST = "selftest"


@pytest.fixture
def cloud(tmp_path, monkeypatch):
    from infra import clients
    from infra.local.testing import local_cloud

    home = tmp_path / "home"
    monkeypatch.setenv("FERRY_HOME", str(home))
    for var in ("GOOGLE_CLOUD_PROJECT", "CLOUDSDK_CORE_PROJECT", "FERRY_BACKEND", "FERRY_BUCKET", "STORAGE_EMULATOR_HOST"):
        monkeypatch.delenv(var, raising=False)
    clients.reset_cache()
    with local_cloud(home) as c:
        client = c.storage_client()
        c.bucket = client.lookup_bucket("ferry-local") or client.create_bucket("ferry-local")
        yield c
    clients.reset_cache()


def env_of(cloud, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("GOOGLE_CLOUD_PROJECT", "CLOUDSDK_CORE_PROJECT",
                                                            "FERRY_BACKEND", "FERRY_BUCKET", "STORAGE_EMULATOR_HOST")}
    env["FERRY_HOME"] = str(cloud.home)
    env.update(extra)
    return env


def cli(cloud, *args, cwd=None, timeout=120, **extra):
    return subprocess.run([sys.executable, str(REPO / "cli.py"), *args], cwd=cwd or cloud.home, env=env_of(cloud, **extra),
                          capture_output=True, text=True, timeout=timeout)


def cli_bg(cloud, *args, cwd=None):
    return subprocess.Popen([sys.executable, str(REPO / "cli.py"), *args], cwd=cwd or cloud.home, env=env_of(cloud),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def settings():
    from infra.settings import resolve

    return resolve()


def vms():
    from infra import provision

    return {v.name: v for v in provision.list_vms(settings())}


def run_ids(bucket):
    from jobs import runs

    return runs.list_run_ids(bucket)


def jget(bucket, name):
    return json.loads(bucket.blob(name).download_as_bytes())


def text(bucket, name):
    return bucket.blob(name).download_as_bytes().decode()


def wait_for(pred, timeout=30.0, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            v = pred()
        except AssertionError:  # the predicate's own verdict (e.g. "the run ended early"): at once
            raise
        except Exception:
            v = None
        if v:
            return v
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def running_run(cloud, proc):
    """The run id once its job prints (the run started by `proc`)."""
    def started():
        if proc.poll() is not None:
            raise AssertionError(f"run ended early: {proc.stderr.read()}")
        ids = run_ids(cloud.bucket)
        if ids and jget(cloud.bucket, f"runs/{ids[0]}/status.json")["state"] == "running":
            log = text(cloud.bucket, f"runs/{ids[0]}/logs/output.log")
            return ids[0] if "epoch 2 " in log else None
        return None
    return wait_for(started, 40, "the job to run")


