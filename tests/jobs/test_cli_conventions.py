"""CLI conventions people rely on: --json before or after the command, tables that fit 80
columns on a terminal and print complete plain rows into a pipe, `down` asking, the backend
line once per shell, -v showing each API call, the `ferry` console script, a one-line error
outside ferry's environment, `ssh` / `ssh-config` onto a VM with its pinned key, and the log's
TensorFlow noise filter. Every command here is the real CLI against the real local cloud."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import shutil
import subprocess
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # pytest's importlib mode: no sys.path magic
from runhelp import REPO, cli, cloud, env_of  # noqa: E402,F401

from jobs import runs as records  # noqa: E402
from trainer.report import ROW_KEY, row  # noqa: E402


def terminal(cloud, *args, columns=80, answer=None, timeout=90):
    """The CLI on a pseudo-terminal COLUMNS wide (answering a [y/N] question with ANSWER)."""
    env = env_of(cloud, COLUMNS=str(columns), LINES="50", NO_COLOR="1", TERM="xterm")
    pid, fd = pty.fork()
    if pid == 0:  # the child: the CLI, its stdin/stdout/stderr the terminal
        os.chdir(str(cloud.home))
        os.execve(sys.executable, [sys.executable, str(REPO / "cli.py"), *args], env)
    out, sent, end = b"", False, time.monotonic() + timeout
    while time.monotonic() < end:
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            try:
                data = os.read(fd, 65536)
            except OSError:
                break
            if not data:
                break
            out += data
            if answer is not None and not sent and b"[y/N]" in out:
                os.write(fd, answer.encode() + b"\n")
                sent = True
    _, status = os.waitpid(pid, 0)
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.decode(errors="replace"))  # styles: not width
    return os.waitstatus_to_exitcode(status), text.replace("\r\n", "\n")


def seed_runs(bucket, n=3):
    ids = []
    for i in range(n):
        rid = f"scene-svm-20260101-{i:06d}-ab{i}c"
        st = {"state": "succeeded", "started": "2026-01-01T00:00:00Z", "ended": "2026-01-01T00:01:40Z", "exit_code": 0}
        records.put_json(bucket, f"runs/{rid}/status.json", st,
                         metadata={ROW_KEY: row(st, "scene-svm", "ferry-scene-svm-20260101-000000-a-very-long-vm-name",
                                                {"best_test_accuracy": 0.2280})})
        ids.append(rid)
    return ids


def test_json_is_accepted_before_and_after_the_command(cloud):
    seed_runs(cloud.bucket)
    for argv in (["gpus"], ["jobs"], ["status"], ["runs"], ["local", "status"], ["sweeps"]):
        before = cli(cloud, "--json", *argv)
        after = cli(cloud, *argv, "--json")
        assert before.returncode == 0 and after.returncode == 0, (argv, before.stderr, after.stderr)
        assert json.loads(before.stdout) is not None and json.loads(after.stdout) is not None, argv
        if argv != ["local", "status"]:
            assert json.loads(before.stdout) == json.loads(after.stdout), argv
    assert len(json.loads(cli(cloud, "runs", "--job", "scene-svm", "--json").stdout)) == 3
    r = cli(cloud, "runs", "--job", "student-model")  # a job file's job: not in the catalog, still a job
    assert r.returncode == 0 and "no runs" in r.stdout and "student-model" in r.stdout
    r = cli(cloud, "runs", "--job", "Bad_Name")
    assert r.returncode == 2 and "'Bad_Name'" in r.stderr
    r = cli(cloud, "logs", "latest", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["state"] == "succeeded", r.stderr
    # a --json given to the job (after --) is the job's, not ferry's
    r = cli(cloud, "ssh", "no-such-vm", "--", "ls", "--json")
    assert r.returncode == 2 and "no-such-vm" in r.stderr and "Traceback" not in r.stderr


def test_cloud_storage_failures_are_one_line_and_retries_are_said(cloud):
    """A Google client's own exception that no command handles (here Cloud Storage refusing
    with 403) is one line naming the service, exit 3, no traceback; a status the client
    retries (503 twice) is said once on stderr, and the command then succeeds."""
    seed_runs(cloud.bucket)
    cloud.control.fault("http_error", service="storage", status=403, count=1000)
    for argv in (["runs"], ["sweeps"], ["logs", "latest"], ["pull", "latest"]):
        r = cli(cloud, *argv)
        assert r.returncode == 3 and "Traceback" not in r.stderr, (argv, r.stderr[-1000:])
        lines = [line for line in r.stderr.splitlines() if line.startswith("error:")]
        assert len(lines) == 1 and "Cloud Storage request failed: 403" in lines[0], (argv, r.stderr)
    cloud.control.clear_faults()
    cloud.control.fault("http_error", service="storage", status=503, count=2)
    r = cli(cloud, "runs")
    assert r.returncode == 0 and "scene-svm" in r.stdout, r.stderr
    assert r.stderr.count("ferry: Cloud Storage answered 503 Service Unavailable; retrying for up to 2 minutes") == 1, r.stderr
    cloud.control.fault("http_error", service="compute", status=503, count=2)  # reads retry for 10 minutes
    r = cli(cloud, "status")
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("ferry: Compute Engine answered 503") == 1 and "up to 10 minutes" in r.stderr, r.stderr


def test_gpus_and_runs_fit_80_columns_and_pipe_complete_rows(cloud):
    ids = seed_runs(cloud.bucket)
    rc, screen = terminal(cloud, "gpus")
    assert rc == 0
    lines = [line for line in screen.splitlines() if line.strip()]
    assert max(len(line) for line in lines) <= 80, screen
    k80 = next(line for line in lines if line.startswith("k80"))
    assert "$0.64" in k80 and "$0.08" in k80 and "2024-05-01" in k80 and "…" not in screen  # prices whole
    assert "not shown at 80 columns" in screen  # what was left out is said
    assert "shared/reference" not in screen  # a footnote users can follow

    rc, screen = terminal(cloud, "runs")
    assert rc == 0 and max(len(line) for line in screen.splitlines()) <= 80, screen
    assert all(rid in screen for rid in ids) and "22.80%" in screen and "…" not in screen

    # piped: every column, every value whole, no box drawing, the title on stderr
    r = cli(cloud, "runs")
    assert r.returncode == 0
    header, *rows = r.stdout.splitlines()
    assert header.split()[:3] == ["run", "job", "state"] and len(rows) == 3
    assert all("ferry-scene-svm-20260101-000000-a-very-long-vm-name" in line for line in rows)
    assert not any(ch in r.stdout for ch in "┃│━─…")
    r = cli(cloud, "gpus")
    assert "nvidia-tesla-k80" in r.stdout and "n1-standard-4" in r.stdout and "GPUs" not in r.stdout
    assert len(r.stdout.splitlines()) == 1 + len(json.loads(cli(cloud, "--json", "gpus").stdout))


def test_down_asks_unless_yes(cloud):
    assert cli(cloud, "up", "--gpu", "t4", "--name", "ask-me").returncode == 0
    rc, screen = terminal(cloud, "down", "ask-me", answer="n")
    assert rc == 2 and "delete VM ask-me" in screen and "nothing changed" in screen
    assert "ask-me" in cli(cloud, "status").stdout
    r = cli(cloud, "down", "ask-me")  # no terminal to ask: refused, says how
    assert r.returncode == 2 and "--yes" in r.stderr and "ask-me" in cli(cloud, "status").stdout
    rc, screen = terminal(cloud, "down", "ask-me", answer="y")
    assert rc == 0 and "ask-me: deleted" in screen
    assert "ask-me" not in cli(cloud, "status").stdout


def test_backend_line_once_per_shell_and_every_api_call_with_v(cloud):
    shell = f"{sys.executable} {REPO / 'cli.py'} gpus >/dev/null; " \
            f"{sys.executable} {REPO / 'cli.py'} status >/dev/null; {sys.executable} {REPO / 'cli.py'} status >/dev/null"
    r = subprocess.run(["bash", "-c", shell], env=env_of(cloud), capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stderr.count("backend: local") == 1, r.stderr
    r = subprocess.run(["bash", "-c", shell], env=env_of(cloud), capture_output=True, text=True, timeout=60)
    assert r.stderr.count("backend: local") == 1, r.stderr  # a new shell: said again, once
    r = cli(cloud, "-v", "status")
    assert r.returncode == 0 and "backend: local" in r.stderr
    calls = [line for line in r.stderr.splitlines() if " api  " in line]
    assert any("GET http://127.0.0.1:" in c and "/aggregated/instances" in c and c.endswith("-> 200") for c in calls), r.stderr
    assert " api  " not in cli(cloud, "status").stderr


def test_console_script_and_missing_dependencies():
    from importlib import metadata

    eps = [ep for ep in metadata.entry_points(group="console_scripts") if ep.name == "ferry"]
    assert eps and eps[0].value == "cli:console"
    script = shutil.which("ferry", path=os.path.dirname(sys.executable))
    if script:  # installed by `pip install -e .`
        r = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=30)
        assert r.returncode == 0 and r.stdout.startswith("Usage: ferry ")
        r = subprocess.run([script, "nosuch"], capture_output=True, text=True, timeout=30)
        assert r.returncode == 2 and "`ferry --help`" in r.stderr
    # outside ferry's environment (no site-packages): one line, no traceback
    r = subprocess.run([sys.executable, "-S", "-I", str(REPO / "cli.py"), "status"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert "not installed" in r.stderr and "pip install" in r.stderr


@pytest.mark.skipif(not shutil.which("ssh") or not shutil.which("scp"), reason="OpenSSH's client is not installed")
def test_ssh_and_ssh_config_use_the_pinned_key(cloud, tmp_path):
    r = cli(cloud, "up", "--gpu", "t4", "--name", "shell-vm")
    assert r.returncode == 0, r.stderr
    r = cli(cloud, "ssh", "shell-vm", "--", "echo", "on", "$(hostname)")
    assert r.returncode == 0 and r.stdout.strip() == "on shell-vm", r.stderr
    assert cli(cloud, "ssh", "shell-vm", "--", "exit", "7").returncode == 7  # the command's status
    # the entry `up` wrote: plain OpenSSH, scp and rsync with ferry's config alone
    config = cloud.home / "ssh" / "config"
    assert "Host ferry-shell-vm" in config.read_text() and "StrictHostKeyChecking yes" in config.read_text()
    (tmp_path / "f.txt").write_text("payload")
    ssh = ["ssh", "-F", str(config), "-o", "BatchMode=yes"]
    assert subprocess.run(["scp", "-F", str(config), "-o", "BatchMode=yes", str(tmp_path / "f.txt"), "ferry-shell-vm:f.txt"],
                          capture_output=True, timeout=30).returncode == 0
    got = subprocess.run([*ssh, "ferry-shell-vm", "cat", "f.txt"], capture_output=True, text=True, timeout=30)
    assert got.stdout == "payload"
    if shutil.which("rsync"):
        assert subprocess.run(["rsync", "-e", " ".join(ssh), str(tmp_path / "f.txt"), "ferry-shell-vm:g.txt"],
                              capture_output=True, timeout=30).returncode == 0
    # another key under the VM's alias is refused (the pin is really checked)
    known = cloud.home / "ssh" / "known_hosts"
    pinned = known.read_text()
    other = subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "k")], capture_output=True)
    if other.returncode == 0:
        fake = (tmp_path / "k.pub").read_text().split()
        known.write_text(f"ferry-shell-vm {fake[0]} {fake[1]}\n")
        bad = subprocess.run([*ssh, "ferry-shell-vm", "true"], capture_output=True, text=True, timeout=30)
        assert bad.returncode != 0 and "HOST IDENTIFICATION HAS CHANGED" in bad.stderr.upper().replace("  ", " ") or \
            "host key" in bad.stderr.lower()
        known.write_text(pinned)
    r = cli(cloud, "--json", "ssh-config")
    assert r.returncode == 0 and json.loads(r.stdout)["entries"] == [{"vm": "shell-vm", "alias": "ferry-shell-vm"}]
    # the VM goes: its entry and key go
    assert cli(cloud, "down", "shell-vm", "--yes").returncode == 0
    assert "shell-vm" not in config.read_text() and "shell-vm" not in known.read_text()
    r = cli(cloud, "ssh", "shell-vm")
    assert r.returncode == 2 and "shell-vm" in r.stderr and r.stderr.count("\n") == 1
    # a run's VM: `ssh RUN` (or latest) reaches it, its entry was written when the run brought it up
    r = cli(cloud, "run", "selftest", "--keep")
    assert r.returncode == 0, r.stderr
    rid = records.latest(cloud.bucket)
    vm = json.loads(cloud.bucket.blob(f"runs/{rid}/manifest.json").download_as_bytes())["vm"]
    assert f"Host {vm}" in config.read_text()
    r = cli(cloud, "ssh", "latest", "--", "hostname")
    assert r.returncode == 0 and r.stdout.strip() == vm, r.stderr
    assert cli(cloud, "down", vm, "--yes").returncode == 0 and vm not in config.read_text()


def test_tensorboard_pulls_the_event_files_and_serves_them(cloud, tmp_path):
    pytest.importorskip("tensorboard")
    import signal
    import types
    import urllib.request

    sys.modules.setdefault("tensorboard.compat.notf", types.ModuleType("notf"))  # its stub: no TensorFlow import

    from tensorboard.compat.proto import event_pb2, summary_pb2
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    rid = seed_runs(cloud.bucket, 1)[0]
    src = tmp_path / "events" / "train"
    src.mkdir(parents=True)
    writer = EventFileWriter(str(src))
    for step in range(3):
        value = summary_pb2.Summary.Value(tag="epoch_loss", simple_value=1.0 / (step + 1))
        writer.add_event(event_pb2.Event(wall_time=time.time(), step=step, summary=summary_pb2.Summary(value=[value])))
    writer.close()
    event = next(src.iterdir())
    cloud.bucket.blob(f"runs/{rid}/artifacts/tensorboard/train/{event.name}").upload_from_filename(str(event))

    r = cli(cloud, "tensorboard", "latest", "--print")
    assert r.returncode == 0 and "tensorboard --logdir" in r.stdout and "--host 127.0.0.1" in r.stdout, r.stderr
    assert (cloud.home / "runs" / rid / "tensorboard" / "train" / event.name).read_bytes() == event.read_bytes()

    from jobs.tensorboard import free_port

    port = free_port()
    proc = subprocess.Popen([sys.executable, str(REPO / "cli.py"), "tensorboard", rid, "--port", str(port)], cwd=cloud.home,
                            env=env_of(cloud), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        tags, end = None, time.monotonic() + 90
        while time.monotonic() < end and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/data/plugin/scalars/tags", timeout=5) as resp:
                    tags = json.loads(resp.read())
                if tags.get("train"):
                    break
            except OSError:
                time.sleep(0.5)
        assert tags and "epoch_loss" in tags["train"], (tags, proc.poll())
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
    # a run without event files: one line
    other = seed_runs(cloud.bucket, 2)[1]
    r = cli(cloud, "tensorboard", other)
    assert r.returncode == 2 and "no TensorBoard event files" in r.stderr and r.stderr.count("\n") == 1
