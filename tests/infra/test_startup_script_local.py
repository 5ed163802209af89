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


# --------------------------------------------------------------------------- its outcome
def _run_script(tmp_path, path_dirs, state_dir=None):
    """Run the default template's startup script with bash (as the guest agent does) against a
    real local metadata server; -> (exit status, guest attributes it wrote)."""
    import os
    import subprocess

    from infra import templates
    from infra.local.vm.metadata import MetadataServer, MetadataState

    state = MetadataState("vm", "us-central1-a", "ferry-local", {"enable-guest-attributes": "TRUE"})
    server = MetadataServer(state)
    server.start()
    try:
        script = tmp_path / "startup-script"
        script.write_text(templates.load().startup_script)
        env = {"PATH": ":".join([*map(str, path_dirs), "/usr/bin:/bin"]), "GCE_METADATA_HOST": server.host,
               "HOME": str(tmp_path)}
        r = subprocess.run(["bash", str(script)], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
        return r.returncode, state.host.guest_attributes(), r.stderr
    finally:
        server.stop()


def test_startup_script_reports_ok_when_python_has_the_packages(tmp_path):
    import sys

    code, attrs, err = _run_script(tmp_path, [Path(sys.executable).parent])
    assert code == 0, err
    assert attrs["ferry/setup"] == "ok"


def test_startup_script_reports_a_failed_pip_step_with_its_last_lines(tmp_path):
    """An image whose python3 lacks the packages and whose pip fails: the script says so in
    ferry/setup (the step) and ferry/setup-log (pip's own words), and exits non-zero; it never
    writes `ok` after a swallowed failure."""
    import sys

    stubs = tmp_path / "bin"
    stubs.mkdir()
    (stubs / "python3").write_text(f"""#!/bin/bash
case "$1" in
  -c) exit 1 ;;                                   # the packages are missing
  -m) echo "ERROR: No matching distribution found for tensorflow[and-cuda]>=2.16,<3"; exit 1 ;;
  *) exec {sys.executable} "$@" ;;                # the report itself
esac
""")
    (stubs / "id").write_text("#!/bin/sh\necho 0\n")  # as root, as the guest agent runs it
    for stub in stubs.iterdir():
        stub.chmod(0o755)
    code, attrs, err = _run_script(tmp_path, [stubs])
    assert code != 0
    assert attrs["ferry/setup"] == "failed: pip install"
    assert "No matching distribution found for tensorflow" in attrs["ferry/setup-log"]
    assert "start-up failed at: pip install" in err
