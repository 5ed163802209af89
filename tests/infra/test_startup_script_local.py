"""The default template's startup script is written for a fresh Compute Engine VM (root, a
whole machine). A local VM is a folder on the user's machine running as the user: there the
script must end at once and touch nothing outside the VM's folder."""

from __future__ import annotations

import pwd
import time
from pathlib import Path

from infra import clients, provision
from infra.local.testing import local_cloud
from infra.settings import resolve


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def test_default_startup_script_changes_nothing_on_the_host(tmp_path, monkeypatch):
    user_before, home_before = _user_exists("ferry"), Path("/home/ferry").exists()
    with local_cloud(tmp_path / "home") as cloud:
        monkeypatch.setenv("FERRY_HOME", str(cloud.home))
        clients.reset_cache()
        settings = resolve(backend="local")
        vm = provision.up(settings, name="boot-1")
        log = next(cloud.home.glob("local/**/boot-1/.vm/startup.log"))
        deadline = time.monotonic() + 20
        while "exit status" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "startup-script exit status 0" in log.read_text()
        provision.delete(settings, vm.name, vm.zone)
    clients.reset_cache()
    assert _user_exists("ferry") == user_before
    assert Path("/home/ferry").exists() == home_before
