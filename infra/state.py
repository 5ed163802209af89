"""Local state under $FERRY_HOME/state, file-locked so two CLIs at once neither corrupt it nor
create the same VM twice.

- `vm_lock(settings, name)`: held while one `up` creates or reuses VM NAME.
- `vms.json`: the VMs this machine created or used (name -> zone, and the VM as last seen
  RUNNING with its pinned host key), per backend and project. A cache only: the cloud is the truth (labels), so losing it loses nothing.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path

from infra.settings import Settings


def _dir(settings: Settings) -> Path:
    path = Path(settings.home) / "state"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _scope(settings: Settings) -> str:
    return f"{settings.backend}/{settings.project}"


@contextmanager
def vm_lock(settings: Settings, name: str, timeout: float = 900.0):
    from filelock import FileLock

    lock = FileLock(str(_dir(settings) / f"{settings.backend}-{settings.project}-{name}.lock"), timeout=timeout)
    with lock:
        yield


@contextmanager
def _locked_file(settings: Settings):
    from filelock import FileLock

    path = _dir(settings) / "vms.json"
    with FileLock(str(path) + ".lock", timeout=60):
        try:
            data = json.loads(path.read_text())
            if not isinstance(data, dict):
                data = {}
        except (OSError, ValueError):
            data = {}
        before = json.dumps(data, sort_keys=True)
        yield data
        if json.dumps(data, sort_keys=True) != before:
            tmp = path.with_name(f"vms.json.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
            os.replace(tmp, path)


def remember(settings: Settings, name: str, **fields) -> None:
    with _locked_file(settings) as data:
        data.setdefault(_scope(settings), {})[name] = fields


def forget(settings: Settings, name: str) -> None:
    with _locked_file(settings) as data:
        data.get(_scope(settings), {}).pop(name, None)


def recall(settings: Settings, name: str) -> dict | None:
    with _locked_file(settings) as data:
        return dict(data.get(_scope(settings), {}).get(name) or {}) or None


def recall_all(settings: Settings) -> dict:
    with _locked_file(settings) as data:
        return {name: dict(rec) for name, rec in data.get(_scope(settings), {}).items()}
