#!/usr/bin/env python3
"""The on-VM runner: runs one job detached and keeps its record safe in Cloud Storage.

Shipped to the VM as `ferry/code/ferry_runner.py` next to `trainer/`; it needs only the
standard library and google-cloud-storage. Every path is relative to the login directory
(the VM's home), which is the working directory of every command ferry runs there.

    python3 ferry/code/ferry_runner.py start  RUN_DIR      start the job detached, return
    python3 ferry/code/ferry_runner.py follow RUN_DIR [--offset N]   stream the log until the end
    python3 ferry/code/ferry_runner.py cancel RUN_DIR      SIGTERM the runner: flush and stop
    python3 ferry/code/ferry_runner.py status RUN_DIR      print status.json

RUN_DIR holds `params.json` (written by `ferry run`): run_id, bucket, project, argv, env,
datasets, upload_interval, heartbeat_interval, ready_marker, ready_timeout, gpu. The
runner writes there `output.log` (the job's stdout and stderr, in order), `status.json`,
`runner.log`, `runner.pid`, and the job writes `out/` (metrics.jsonl, summary.json,
artifacts). Every few seconds, and once more at the end, it uploads them to
`gs://BUCKET/runs/RUN_ID/`: logs/output.log, metrics.jsonl, summary.json, artifacts/...,
and status.json last, so that a final status in the bucket means everything else is there.

The job ends the run in one of these states: succeeded (exit 0), failed (non-zero exit),
cancelled (SIGTERM to the runner, e.g. Ctrl-C in `ferry run`), preempted (the metadata
server's `instance/preempted` turned TRUE). In every case the runner stops the job, then
flushes everything before it exits.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

FINAL_STATES = ("succeeded", "failed", "cancelled", "preempted", "lost")
LOG_PREFIX = "[ferry] "


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------- metadata server
def metadata_host() -> str:
    return os.environ.get("GCE_METADATA_HOST") or "metadata.google.internal"


def metadata_get(path: str, *, wait: bool = False, etag: str | None = None, timeout: float = 5.0):
    """(value, etag) of computeMetadata/v1/<path>; raises OSError when unreachable."""
    url = f"http://{metadata_host()}/computeMetadata/v1/{path}"
    if wait:
        url += "?wait_for_change=true&timeout_sec=55"
        if etag:
            url += f"&last_etag={etag}"
    req = urllib.request.Request(url, headers={"Metadata-Flavor": "Google"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return resp.read().decode().strip(), resp.headers.get("ETag")


class PreemptionWatch(threading.Thread):
    """Sets `event` when instance/preempted reads TRUE (long-polls with wait_for_change)."""

    def __init__(self, event: threading.Event, log):
        super().__init__(daemon=True, name="preemption-watch")
        self.event = event
        self.log = log

    def run(self) -> None:
        etag = None
        failures = 0
        while not self.event.is_set():
            try:
                value, etag = metadata_get("instance/preempted", wait=etag is not None, etag=etag, timeout=60)
                failures = 0
                if value.upper() == "TRUE":
                    self.log("preemption notice from the metadata server")
                    self.event.set()
                    return
            except Exception as exc:  # no metadata server (not on a VM) or a transient error
                failures += 1
                if failures == 1:
                    self.log(f"metadata server: {exc.__class__.__name__}: {exc}")
                etag = None
                time.sleep(min(5.0, 0.5 * failures))


def gpu_name() -> str | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    names = [line.strip() for line in out.stdout.splitlines() if line.strip()]
    return f"{len(names)} x {names[0]}" if names else None


# --------------------------------------------------------------------------- the bucket
class Uploader:
    """Uploads changed files to gs://BUCKET/runs/RUN_ID/ (only what changed since last time)."""

    def __init__(self, bucket: str, project: str | None, run_id: str, log):
        self.prefix = f"runs/{run_id}/"
        self.log = log
        self._seen: dict[str, tuple] = {}
        self._bucket_name = bucket
        self._project = project
        self._bucket = None

    def bucket(self):
        if self._bucket is None:
            from google.cloud import storage

            client = storage.Client(project=self._project or None)
            self._bucket = client.bucket(self._bucket_name)
        return self._bucket

    def put_file(self, path: Path, name: str, content_type: str, force: bool = False) -> bool:
        try:
            st = path.stat()
        except FileNotFoundError:
            return False
        key = (st.st_size, st.st_mtime_ns)
        if not force and self._seen.get(name) == key:
            return False
        data = path.read_bytes()  # a consistent snapshot: the job may be appending
        blob = self.bucket().blob(self.prefix + name)
        blob.upload_from_string(data, content_type=content_type)
        self._seen[name] = key
        return True

    def put_json(self, name: str, data: dict) -> None:
        blob = self.bucket().blob(self.prefix + name)
        blob.upload_from_string(json.dumps(data, indent=2, sort_keys=True) + "\n", content_type="application/json")

    def sync(self, run_dir: Path, force: bool = False) -> int:
        """Log, metrics, summary and artifacts; returns how many objects were written."""
        sent = 0
        sent += self.put_file(run_dir / "output.log", "logs/output.log", "text/plain; charset=utf-8", force)
        out = run_dir / "out"
        if out.is_dir():
            for path in sorted(p for p in out.rglob("*") if p.is_file()):
                rel = path.relative_to(out).as_posix()
                if rel == "metrics.jsonl":
                    sent += self.put_file(path, "metrics.jsonl", "application/x-ndjson", force)
                elif rel == "summary.json":
                    sent += self.put_file(path, "summary.json", "application/json", force)
                else:
                    sent += self.put_file(path, "artifacts/" + rel, "application/octet-stream", force)
        return sent


# --------------------------------------------------------------------------- datasets
def stage_dataset(bucket, name: str, data_dir: Path, log) -> None:
    """gs://BUCKET/datasets/NAME/ -> data_dir/NAME/, skipped when the staged copy matches."""
    manifest_blob = bucket.blob(f"datasets/{name}/manifest.json")
    raw = manifest_blob.download_as_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    manifest = json.loads(raw)
    target = data_dir / name
    marker = target / ".ferry-staged.json"
    staged = read_json(marker) or {}
    if staged.get("manifest_sha256") == digest:
        log(f"dataset {name}: already staged ({manifest.get('files', '?')} files)")
        return
    target.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    total = 0
    for obj in manifest["objects"]:
        rel = obj["name"]
        if rel.startswith("/") or ".." in Path(rel).parts:
            raise RuntimeError(f"dataset {name}: refusing object name {rel!r}")
        dest = target / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".part")
        bucket.blob(f"datasets/{name}/{rel}").download_to_filename(str(tmp))
        got = sha256_file(tmp)
        if got != obj["sha256"]:
            tmp.unlink()
            raise RuntimeError(f"dataset {name}: checksum mismatch for {rel}")
        total += obj.get("size", 0)
        if obj.get("kind") == "tar":
            with tarfile.open(tmp) as tar:
                for member in tar.getmembers():
                    if member.name.startswith("/") or ".." in Path(member.name).parts or not (member.isfile() or member.isdir()):
                        raise RuntimeError(f"dataset {name}: unsafe archive member {member.name!r}")
                tar.extractall(target)
            tmp.unlink()
        else:
            os.replace(tmp, dest)
    write_json_atomic(marker, {"manifest_sha256": digest, "staged": now_iso()})
    log(f"dataset {name}: staged {total / 1e6:.1f} MB in {time.time() - t0:.1f} s")


# --------------------------------------------------------------------------- the run
class Runner:
    def __init__(self, run_dir: Path):
        self.run_dir = run_dir.resolve()
        self.params = json.loads((self.run_dir / "params.json").read_text())
        self.run_id = self.params["run_id"]
        self.log_path = self.run_dir / "output.log"
        self.status_path = self.run_dir / "status.json"
        self.stop_requested = threading.Event()
        self.preempted = threading.Event()
        self.wake = threading.Event()
        self.upload_interval = float(self.params.get("upload_interval", 2.0))
        self.heartbeat_interval = float(self.params.get("heartbeat_interval", 10.0))
        self.uploader = Uploader(self.params["bucket"], self.params.get("project"), self.run_id, self.note)
        self.status = {
            "run_id": self.run_id,
            "state": "syncing",
            "exit_code": None,
            "started": None,
            "ended": None,
            "heartbeat": now_iso(),
            "heartbeat_interval": self.heartbeat_interval,
            "host": socket.gethostname(),
            "gpu": None,
            "pid": os.getpid(),
            "message": None,
        }
        self._last_status_upload = 0.0

    # messages of the runner itself: runner.log always; output.log (prefixed) outside the job
    def note(self, text: str) -> None:
        line = f"{now_iso()} {text}\n"
        with open(self.run_dir / "runner.log", "a") as f:
            f.write(line)

    def say(self, text: str) -> None:
        self.note(text)
        with open(self.log_path, "a") as f:
            f.write(LOG_PREFIX + text + "\n")

    def set_state(self, state: str, **fields) -> None:
        self.status.update(fields, state=state)
        self.write_status(upload=True)

    def write_status(self, upload: bool) -> None:
        self.status["heartbeat"] = now_iso()
        write_json_atomic(self.status_path, self.status)
        if upload or time.time() - self._last_status_upload >= self.heartbeat_interval:
            try:
                self.uploader.put_json("status.json", self.status)
                self._last_status_upload = time.time()
            except Exception as exc:
                self.note(f"upload status.json failed: {exc.__class__.__name__}: {exc}")

    def flush(self, final: bool = False) -> None:
        tries = 5 if final else 1
        for attempt in range(tries):
            try:
                self.uploader.sync(self.run_dir, force=final and attempt > 0)
                return
            except Exception as exc:
                self.note(f"upload failed: {exc.__class__.__name__}: {exc}")
                if attempt + 1 < tries:
                    time.sleep(min(4.0, 0.5 * 2**attempt))

    def _on_sigterm(self, signum, frame) -> None:
        self.stop_requested.set()
        self.wake.set()

    def wait_ready(self) -> bool:
        marker = self.params.get("ready_marker")
        if not marker:
            return True
        path = Path(marker).expanduser()
        deadline = time.time() + float(self.params.get("ready_timeout", 900))
        if not path.exists():
            self.say(f"waiting for the VM's start-up script ({marker})")
        while not path.exists():
            if time.time() > deadline or self.stop_requested.is_set():
                return False
            self.write_status(upload=False)
            self.wake.wait(1.0)
        return True

    def stage(self) -> None:
        names = self.params.get("datasets") or []
        if not names:
            return
        bucket = self.uploader.bucket()
        data_dir = Path(self.params.get("data_dir", "ferry/data")).resolve()
        for name in names:
            if self.stop_requested.is_set() or self.preempted.is_set():
                return
            stage_dataset(bucket, name, data_dir, self.say)

    def stop_job(self, proc: subprocess.Popen) -> None:
        if proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=float(self.params.get("kill_grace", 10)))
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()

    def serve(self) -> int:
        signal.signal(signal.SIGTERM, self._on_sigterm)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.signal(signal.SIGINT, self._on_sigterm)
        (self.run_dir / "out").mkdir(exist_ok=True)
        self.log_path.touch()
        PreemptionWatch(self.preempted, self.note).start()
        threading.Thread(target=self._wake_on_preemption, daemon=True).start()
        self.write_status(upload=True)
        proc = None
        state, exit_code, message = None, None, None
        try:
            if not self.wait_ready():
                state, message = ("cancelled", "cancelled before start") if self.stop_requested.is_set() else ("failed", "the VM's start-up script did not finish")
            else:
                self.status["gpu"] = gpu_name() or self.params.get("gpu")
                self.stage()
            if state is None and (self.stop_requested.is_set() or self.preempted.is_set()):
                state = "preempted" if self.preempted.is_set() else "cancelled"
            if state is None:
                proc = self.start_job()
                self.set_state("running", started=now_iso())
                state, exit_code = self.watch(proc)
        except Exception as exc:  # staging or start failed: record why, flush, stop
            state, message = "failed", f"{exc.__class__.__name__}: {exc}"
            self.say(f"error: {message}")
        finally:
            if proc is not None:
                self.stop_job(proc)
                if exit_code is None:
                    exit_code = proc.returncode
        if message is None and state in ("cancelled", "preempted"):
            message = "preempted: the VM is being stopped" if state == "preempted" else "cancelled"
            self.say(f"{state}; the job was stopped")
        self.flush(final=True)
        self.status.update(state=state, exit_code=exit_code, ended=now_iso(), message=message)
        # status.json goes last: a final status in the bucket means the rest is there too.
        for attempt in range(5):
            try:
                self.status["heartbeat"] = now_iso()
                self.uploader.put_json("status.json", self.status)
                break
            except Exception as exc:
                self.note(f"final status upload failed: {exc}")
                time.sleep(0.5 * 2**attempt)
        write_json_atomic(self.status_path, self.status)
        self.note(f"done: {state} (exit code {exit_code})")
        return 0

    def _wake_on_preemption(self) -> None:
        self.preempted.wait()
        self.wake.set()

    def start_job(self) -> subprocess.Popen:
        argv = [str(a) for a in self.params["argv"]]
        if argv and argv[0] in ("python3", "python"):
            argv[0] = sys.executable  # the interpreter that has the job's dependencies
        code = Path(__file__).resolve().parent
        env = dict(os.environ)
        env.update({str(k): str(v) for k, v in (self.params.get("env") or {}).items()})
        env["PYTHONPATH"] = str(code) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env["PYTHONUNBUFFERED"] = "1"
        env.setdefault("MPLBACKEND", "Agg")
        env["FERRY_RUN_ID"] = self.run_id
        env["FERRY_DATA_DIR"] = str(Path(self.params.get("data_dir", "ferry/data")).resolve())
        log = open(self.log_path, "ab", buffering=0)
        try:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=os.getcwd(), env=env, start_new_session=True,
            )
        finally:
            log.close()

        def wake_on_exit():  # the main loop sleeps between uploads; the job's end wakes it
            proc.wait()
            self.wake.set()

        threading.Thread(target=wake_on_exit, daemon=True, name="job-exit").start()
        return proc

    def watch(self, proc: subprocess.Popen):
        while True:
            rc = proc.poll()
            if rc is not None:
                return ("succeeded" if rc == 0 else "failed"), rc
            if self.preempted.is_set():
                self.stop_job(proc)
                return "preempted", proc.returncode
            if self.stop_requested.is_set():
                self.stop_job(proc)
                # A preemption also sends SIGTERM; the metadata server says which it was.
                if self.preempted.is_set() or _preempted_now():
                    return "preempted", proc.returncode
                return "cancelled", proc.returncode
            self.flush()
            self.write_status(upload=False)
            self.wake.wait(self.upload_interval)
            self.wake.clear()


def _preempted_now() -> bool:
    try:
        return metadata_get("instance/preempted", timeout=1.0)[0].upper() == "TRUE"
    except Exception:
        return False


# --------------------------------------------------------------------------- commands
def cmd_start(run_dir: Path) -> int:
    """Fork the runner off into its own session (it survives the SSH connection) and return."""
    run_dir = run_dir.resolve()
    pid_path = run_dir / "runner.pid"
    if pid_path.exists():
        print(f"already started: {pid_path.read_text().strip()}")
        return 0
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: new session, then fork again so the runner is no session leader
        os.close(r)
        os.setsid()
        if os.fork() != 0:
            os._exit(0)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        logfd = os.open(run_dir / "runner.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(logfd, 1)
        os.dup2(logfd, 2)
        pid_path.write_text(str(os.getpid()))
        os.write(w, b"ok")
        os.close(w)
        code = 1
        try:
            code = Runner(run_dir).serve()
        except BaseException:
            import traceback

            traceback.print_exc()
        finally:
            os._exit(code)
    os.close(w)
    os.waitpid(pid, 0)
    ok = os.read(r, 2) == b"ok"
    os.close(r)
    print(pid_path.read_text().strip() if ok else "failed to start")
    return 0 if ok else 1


def cmd_follow(run_dir: Path, offset: int, poll: float = 0.05) -> int:
    """Write output.log from byte `offset` to stdout as it grows; return once the run ended."""
    log_path = run_dir / "output.log"
    status_path = run_dir / "status.json"
    out = sys.stdout.buffer
    deadline = time.time() + 60
    while not log_path.exists():
        if time.time() > deadline:
            print("no output.log", file=sys.stderr)
            return 1
        time.sleep(poll)
    with open(log_path, "rb") as f:
        f.seek(offset)
        while True:
            chunk = f.read(1 << 16)
            if chunk:
                out.write(chunk)
                out.flush()
                continue
            status = read_json(status_path) or {}
            if status.get("state") in FINAL_STATES:
                chunk = f.read()  # whatever was appended before the final status
                if chunk:
                    out.write(chunk)
                    out.flush()
                return 0
            time.sleep(poll)


def cmd_cancel(run_dir: Path) -> int:
    try:
        pid = int((run_dir / "runner.pid").read_text())
        os.kill(pid, signal.SIGTERM)
    except (OSError, ValueError) as exc:
        print(f"not running ({exc.__class__.__name__})", file=sys.stderr)
        return 1
    return 0


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="ferry_runner")
    parser.add_argument("command", choices=["start", "serve", "follow", "cancel", "status"])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--offset", type=int, default=0)
    args = parser.parse_args(argv)
    if args.command == "start":
        return cmd_start(args.run_dir)
    if args.command == "serve":  # in the foreground (debugging)
        return Runner(args.run_dir).serve()
    if args.command == "follow":
        try:
            return cmd_follow(args.run_dir, args.offset)
        except BrokenPipeError:
            return 0
    if args.command == "cancel":
        return cmd_cancel(args.run_dir)
    sys.stdout.write((args.run_dir / "status.json").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
