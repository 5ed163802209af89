#!/usr/bin/env python3
"""The on-VM runner: runs one job detached and keeps its record safe in Cloud Storage.

Shipped to the VM as `ferry/code/ferry_runner.py` next to `trainer/`; it needs only the
standard library and google-cloud-storage. Every path is relative to the login directory
(the VM's home), which is the working directory of every command ferry runs there.

    python3 ferry/code/ferry_runner.py start  RUN_DIR      start the job detached, return
    python3 ferry/code/ferry_runner.py follow RUN_DIR [--offset N]   stream the log until the end
    python3 ferry/code/ferry_runner.py cancel RUN_DIR      ask the runner to stop: flush and stop
    python3 ferry/code/ferry_runner.py stop-job RUN_DIR    the runner died: stop the job it left
    python3 ferry/code/ferry_runner.py status RUN_DIR      print status.json

RUN_DIR holds `params.json` (written by `ferry run`): run_id, bucket, project, argv, env,
datasets, upload_interval, heartbeat_interval, setup_wait, setup_timeout, setup_poll, gpu,
self_delete, compute_endpoint, code_hash, resume_flag, segment, segments, continue, run_started,
and for a job file: cwd (its workdir on the VM), setup + setup_key, outputs, secret_names.
`start --secrets-stdin` reads the job's secrets ({name: value}, JSON) from stdin: they live in
the runner's memory and the job's environment only, never in a file it writes; a job with
secrets writes into a pipe that the runner copies into output.log with their values redacted.

A job file's `setup` commands run before the job, in its workdir, once per VM and setup key
(its commands and the workdir's code hash): `ferry/setup-cache/KEY.done` marks one done. Their
output goes to the run's log between `[ferry] === setup ...` lines; a failing one fails the run
with its exit code. When the job ends, its `outputs` (globs in the workdir) are copied into
`out/` (uploaded as artifacts/...).
The runner writes there `output.log` (the job's stdout and
stderr, in order), `status.json`, `runner.log`, `runner.pid`, and the job writes `out/`
(metrics.jsonl, summary.json, artifacts). Every few seconds, and once more at the end, it
uploads them to `gs://BUCKET/runs/RUN_ID/`: logs/output.log, metrics.jsonl, summary.json,
artifacts/..., and status.json last, so that a final status in the bucket means everything
else is there. Before the job starts it proves it can write there (else the run fails in
seconds, saying why), and waits for the VM's start-up script to report its outcome (guest
attribute `ferry/setup`: `ok`, or `failed: STEP` with `ferry/setup-log`).

The job ends the run in one of these states: succeeded (exit 0), failed (non-zero exit),
cancelled (`cancel`, e.g. Ctrl-C in `ferry run`), preempted (the metadata server's
`instance/preempted` turned TRUE), lost (the VM shut down under the job: deleted, stopped or
rebooted; never reported as the job failing). In every case the runner stops the job, then
flushes everything before it exits.

A run VM ends itself (`self_delete`): after its final upload the runner deletes its own
instance through the Compute Engine API with the VM's own credentials (the metadata server's
token; the template grants the compute scope), checking first that the instance is this run's
(label ferry-run); if the API refuses, it powers the VM off (a stopped VM bills no GPU or CPU;
`cleanup` deletes it). While a `follow` is attached it leaves that to the attached CLI.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
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
RUNNER_GONE = 75          # `follow`'s exit status when the runner died before a final status
TASK_STOPPED = 76         # `batch-task`'s when its VM was preempted or went away (Batch retries it)
FOLLOWER_BEAT = "follower"  # touched every second by an attached `follow`
FOLLOWER_FRESH_S = 3.0
CANCEL_FILE = "cancel-requested"
COMPUTE_API = "https://compute.googleapis.com"


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


def guest_attribute(key: str, timeout: float = 5.0) -> str | None:
    """instance/guest-attributes/KEY, None while absent; raises PermissionError when the VM's
    guest attributes are disabled, OSError when the metadata server is unreachable."""
    import urllib.error

    try:
        return metadata_get(f"instance/guest-attributes/{key}", timeout=timeout)[0]
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        if exc.code == 403:
            raise PermissionError("guest attributes are disabled on this VM") from None
        raise


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


def claim_vm(run_id: str, log) -> None:
    """Guest attribute ferry/runner: a runner took this VM (its idle watchdog stands down)."""
    claim = f"{run_id} {_boot_id()}"  # this boot's: after a reboot the watchdog may act again
    req = urllib.request.Request(f"http://{metadata_host()}/computeMetadata/v1/instance/guest-attributes/ferry/runner",
                                 data=claim.encode(), method="PUT", headers={"Metadata-Flavor": "Google"})
    try:
        urllib.request.urlopen(req, timeout=5).read()
    except Exception as exc:  # guest attributes disabled, no metadata server: nothing to stand down
        log(f"could not claim the VM: {exc.__class__.__name__}: {exc}")


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
GROWING = ("logs/output.log", "metrics.jsonl")  # files that only grow: appended, never re-sent
CHUNKS = ".chunks/"  # under the run's folder: new bytes on their way into a growing object
CHECKPOINTS = "checkpoints/"  # OUT/checkpoints/ckpt-NNNNNN.ckpt -> gs://.../runs/RUN_ID/checkpoints/
CHECKPOINT_NAME = re.compile(r"^ckpt-\d{6,}\.ckpt$")  # trainer/checkpoint.py's names (temporaries start with .)
RESUME_KEEP = 3  # a resumed segment fetches the newest few: the trainer falls back past a torn one


class Uploader:
    """Uploads changed files to gs://BUCKET/runs/RUN_ID/ (only what changed since last time).

    A growing file (the log, the metrics) costs O(its final size) in uploads, not O(size x
    syncs): its new bytes go up as a chunk object that Cloud Storage composes onto the object
    (compose is server-side; `ifGenerationMatch` makes sure nothing else wrote it meanwhile), so
    readers always see one complete object. Anything unexpected (a failed compose, a file that
    shrank) falls back to uploading the whole file once. `sent` counts the bytes uploaded."""

    def __init__(self, bucket: str, project: str | None, run_id: str, log, prefix: str | None = None):
        self.prefix = prefix or f"runs/{run_id}/"
        self.log = log
        self._seen: dict[str, tuple] = {}
        self._grown: dict[str, dict] = {}  # growing object -> {"bytes", "generation", "chunks"}
        self.sent: dict[str, int] = {}
        self._bucket_name = bucket
        self._project = project
        self._bucket = None

    def bucket(self):
        if self._bucket is None:
            from google.cloud import storage

            import google.auth.compute_engine

            # the VM's service account, from its metadata server (what ADC finds on GCE; said
            # explicitly so that an emulator endpoint gets the token too)
            client = storage.Client(project=self._project or None, credentials=google.auth.compute_engine.Credentials())
            self._bucket = client.bucket(self._bucket_name)
        return self._bucket

    def _count(self, name: str, n: int) -> None:
        self.sent[name] = self.sent.get(name, 0) + n

    def put_file(self, path: Path, name: str, content_type: str, force: bool = False, upto: int | None = None) -> bool:
        """Upload PATH as NAME if it changed; a growing file only up to byte `upto` (a size
        taken before the checkpoints went up: see sync)."""
        try:
            st = path.stat()
        except FileNotFoundError:
            return False
        key = (st.st_size, st.st_mtime_ns) if upto is None or upto >= st.st_size else (upto, None)
        if not force and self._seen.get(name) == key:
            return False
        if name in GROWING:
            self._append(path, name, content_type, key[0], force)
        else:
            data = path.read_bytes()  # a consistent snapshot: the job may be appending
            self.bucket().blob(self.prefix + name).upload_from_string(data, content_type=content_type)
            self._count(name, len(data))
        self._seen[name] = key
        return True

    def _append(self, path: Path, name: str, content_type: str, size: int, force: bool) -> None:
        state = None if force else self._grown.get(name)
        if state is not None and size < state["bytes"]:
            state = None  # rewritten, not appended: send it whole
        with open(path, "rb") as f:
            if state is not None:
                f.seek(state["bytes"])
            data = f.read(size - (state["bytes"] if state else 0))
        target = self.bucket().blob(self.prefix + name)
        self._grown.pop(name, None)  # until this succeeds, the next sync starts from scratch
        if state is None:
            target.upload_from_string(data, content_type=content_type)
            self._count(name, len(data))
            self._grown[name] = {"bytes": len(data), "generation": target.generation, "chunks": 0}
            return
        if not data:
            self._grown[name] = state
            return
        chunk = self.bucket().blob(f"{self.prefix}{CHUNKS}{name}.{state['chunks']}")
        chunk.upload_from_string(data, content_type="application/octet-stream")
        self._count(name, len(data))
        target.content_type = content_type
        target.compose([target, chunk], if_generation_match=state["generation"])
        try:
            chunk.delete()
        except Exception as exc:  # a leftover chunk is harmless (pull skips .chunks/)
            self.log(f"could not delete {chunk.name}: {exc.__class__.__name__}")
        self._grown[name] = {"bytes": state["bytes"] + len(data), "generation": target.generation,
                             "chunks": state["chunks"] + 1}

    def put_json(self, name: str, data: dict, quick: bool = False, metadata: dict | None = None) -> None:
        """Upload NAME (with custom `metadata`); `quick`: one try with a short timeout (the caller retries)."""
        blob = self.bucket().blob(self.prefix + name)
        if metadata:
            blob.metadata = metadata
        extra = {"retry": None, "timeout": 10} if quick else {}
        blob.upload_from_string(json.dumps(data, indent=2, sort_keys=True) + "\n", content_type="application/json",
                                **extra)

    def continue_growing(self, name: str, size: int, generation) -> None:
        """A resumed segment: the object NAME holds the first `size` bytes of our local file."""
        self._grown[name] = {"bytes": size, "generation": generation, "chunks": 0}

    def sync_checkpoints(self, run_dir: Path) -> int:
        """Every new whole checkpoint of the job, oldest first -> how many went up."""
        folder = run_dir / "out" / "checkpoints"
        if not folder.is_dir():
            return 0
        sent = 0
        for path in sorted(p for p in folder.iterdir() if CHECKPOINT_NAME.match(p.name)):
            sent += self.put_file(path, CHECKPOINTS + path.name, "application/zip")
        return sent

    def mark_sent(self, path: Path, name: str) -> None:
        """`name` is already in the bucket as `path` is (e.g. a checkpoint fetched from there)."""
        st = path.stat()
        self._seen[name] = (st.st_size, st.st_mtime_ns)

    def sync(self, run_dir: Path, force: bool = False) -> int:
        """Checkpoints, then log, metrics, summary and artifacts -> how many objects were written.

        The log and the metrics go up only to the sizes they had before the checkpoints did: a
        job writes an epoch's checkpoint before its line and metrics, so the bucket never shows
        an epoch done whose checkpoint it lacks, and a run resumed from the bucket's newest
        checkpoint neither repeats nor misses a line."""
        out = run_dir / "out"
        sizes = {}
        for name, path in (("logs/output.log", run_dir / "output.log"), ("metrics.jsonl", out / "metrics.jsonl")):
            try:
                sizes[name] = path.stat().st_size
            except OSError:
                pass
        sent = self.sync_checkpoints(run_dir)
        sent += self.put_file(run_dir / "output.log", "logs/output.log", "text/plain; charset=utf-8", force,
                              upto=sizes.get("logs/output.log"))
        if out.is_dir():
            for path in sorted(p for p in out.rglob("*") if p.is_file()):
                rel = path.relative_to(out).as_posix()
                if rel.startswith(CHECKPOINTS):
                    continue
                if rel == "metrics.jsonl":
                    sent += self.put_file(path, "metrics.jsonl", "application/x-ndjson", force,
                                          upto=sizes.get("metrics.jsonl"))
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


# --------------------------------------------------------------------------- log noise
# TensorFlow's C++ runtime and absl log to stderr at import and first use, in absl's format
# (`I0000 00:00:1796179965.93 7358 port.cc:153] oneDNN custom operations are on...`), some of it
# twice and some reading like a failure (`failed call to cuInit ... (303)` on a machine without a
# GPU). The streamed log (output.log: the terminal, `logs`, the reports) leaves those lines out;
# output.raw.log keeps every byte the job wrote. Lines at F (fatal) level and E lines other than
# the known start-up ones stay: they precede a crash a user must see.
_ABSL = re.compile(rb"^(?P<level>[IWEF])\d{4} \d\d:\d\d:\d+(?:\.\d+)?\s+\d+ [\w.\-]+:\d+\] (?P<text>.*)")
_OLD_TF = re.compile(rb"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: (?P<level>[IWEF]) (?:tensorflow|external|xla)/\S+\] (?P<text>.*)")
_NOISE_LINES = (
    b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
)
_NOISE_FOLLOWERS = (b"To enable the following instructions:",)  # cpu_feature_guard's second line
_KNOWN_E = (b"cuInit", b"Unable to register cu", b"cuda_platform", b"CUDA_ERROR_NO_DEVICE", b"kernel driver does not appear")


class NoiseFilter:
    """Bytes in (the raw log, in any chunks) -> the bytes of its lines that are not noise.

    Only complete lines are judged; a partial line is held back only while it could still turn
    out to be noise (it starts like one), so a progress bar drawn with \\r is not delayed."""

    def __init__(self):
        self.pending = b""
        self.dropped = 0
        self._after_guard = False
        self._mid_line = False  # the start of the current line was already let through

    def _noise(self, line: bytes) -> bool:
        body = line.rstrip(b"\r\n")
        if body.startswith(_NOISE_FOLLOWERS) and (self._after_guard or b"rebuild TensorFlow" in body):
            self._after_guard = False
            return True
        self._after_guard = False
        if body in _NOISE_LINES:
            return True
        m = _ABSL.match(body) or _OLD_TF.match(body)
        if not m:
            return False
        level = m.group("level")
        if level == b"F" or (level == b"E" and not any(k in body for k in _KNOWN_E)):
            return False
        self._after_guard = b"cpu_feature_guard" in body
        return True

    @staticmethod
    def _maybe_noise(partial: bytes) -> bool:
        head = partial[:24]
        return bool(re.fullmatch(rb"[IWEF](\d.*)?", head, re.S) or re.fullmatch(rb"\d{1,4}|\d{4}-.*", head, re.S)) or \
            any(n.startswith(partial) or partial.startswith(n[: len(partial)]) for n in _NOISE_LINES + _NOISE_FOLLOWERS)

    def feed(self, data: bytes) -> bytes:
        data = self.pending + data
        self.pending = b""
        out = []
        start = 0
        if self._mid_line:  # the rest of a line whose start was let through: let it through
            nl = data.find(b"\n")
            if nl < 0:
                return data
            out.append(data[: nl + 1])
            start, self._mid_line = nl + 1, False
        while True:
            nl = data.find(b"\n", start)
            if nl < 0:
                break
            line = data[start: nl + 1]
            if self._noise(line):
                self.dropped += 1
            else:
                out.append(line)
            start = nl + 1
        rest = data[start:]
        if rest:
            if self._maybe_noise(rest):
                self.pending = rest
            else:
                out.append(rest)
                self._mid_line = True
        return b"".join(out)

    def flush(self) -> bytes:
        """At the end of the job: the held-back partial line, unless it is noise."""
        rest, self.pending = self.pending, b""
        if rest and self._noise(rest):
            self.dropped += 1
            return b""
        return rest


# --------------------------------------------------------------------------- the run
SETUP_CACHE = "ferry/setup-cache"


class Runner:
    def __init__(self, run_dir: Path, secrets: dict | None = None):
        self.run_dir = run_dir.resolve()
        self.secrets = {str(k): str(v) for k, v in (secrets or {}).items()}  # never written anywhere
        self.params = json.loads((self.run_dir / "params.json").read_text())
        self.run_id = self.params["run_id"]
        self.log_path = self.run_dir / "output.log"
        self.raw_log_path = self.run_dir / "output.raw.log"  # every byte the job wrote (see NoiseFilter)
        self.noise_dropped = 0
        self.status_path = self.run_dir / "status.json"
        self.stop_requested = threading.Event()
        self.preempted = threading.Event()
        self.wake = threading.Event()
        self.upload_interval = float(self.params.get("upload_interval", 2.0))
        self.heartbeat_interval = float(self.params.get("heartbeat_interval", 10.0))
        # a run's folder is runs/RUN_ID/; a sweep task's sweeps/SWEEP_ID/tasks/INDEX/ (same layout)
        self.uploader = Uploader(self.params["bucket"], self.params.get("project"), self.run_id, self.note,
                                 self.params.get("prefix"))
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
        # Every VM the run ran on, in order (a recovered run keeps its id): the earlier ones
        # come closed from `ferry run`/`resume`, this one is closed when the runner ends.
        self.segment = {**(self.params.get("segment") or {}), "started": now_iso(), "host": socket.gethostname()}
        self.segment.setdefault("index", len(self.params.get("segments") or []))
        self.status["segments"] = [*(self.params.get("segments") or []), self.segment]
        self.resume_dir = None
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

    def row(self) -> dict:
        """status.json's metadata: what `ferry runs` lists without reading the run (its listing
        returns it), best accuracy included (trainer/report.py's rule)."""
        try:
            from trainer.report import ROW_KEY, row
        except ImportError:  # a job shipped without the trainer
            return {}
        out = self.run_dir / "out"
        summary, metrics = read_json(out / "summary.json"), None
        if summary is None:
            try:
                metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
            except (OSError, ValueError):
                metrics = None
        return {ROW_KEY: row(self.status, self.params.get("job"), self.segment.get("vm"), summary, metrics)}

    def write_status(self, upload: bool) -> None:
        self.status["heartbeat"] = now_iso()
        write_json_atomic(self.status_path, self.status)
        if upload or time.time() - self._last_status_upload >= self.heartbeat_interval:
            try:
                self.uploader.put_json("status.json", self.status, metadata=self.row())
                self._last_status_upload = time.time()
            except Exception as exc:
                self.note(f"upload status.json failed: {exc.__class__.__name__}: {exc}")

    def flush(self, final: bool = False) -> None:
        tries = 5 if final else 1
        for attempt in range(tries):
            try:
                self.uploader.sync(self.run_dir, force=final and attempt > 0)
                if final and self.noise_dropped:  # the unfiltered log, once: `logs RUN --raw`
                    self.uploader.put_file(self.raw_log_path, f"logs/raw/segment-{self.segment.get('index', 0)}.log",
                                           "text/plain; charset=utf-8")
                return
            except Exception as exc:
                self.note(f"upload failed: {exc.__class__.__name__}: {exc}")
                if attempt + 1 < tries:
                    time.sleep(min(4.0, 0.5 * 2**attempt))

    def _on_sigterm(self, signum, frame) -> None:
        self.stop_requested.set()
        self.wake.set()

    def wait_setup(self) -> str | None:
        """Wait for the start-up script's outcome -> None when ready, else why the run cannot
        start. Polls guest attribute ferry/setup (GCE allows ~10 reads a minute: setup_poll)."""
        if not self.params.get("setup_wait"):
            return None
        deadline = time.time() + float(self.params.get("setup_timeout", 900))
        poll = float(self.params.get("setup_poll", 6.0))
        said = False
        while True:
            try:
                outcome = guest_attribute("ferry/setup")
            except PermissionError:
                self.say("warning: guest attributes are disabled: not waiting for the start-up script")
                return None
            except OSError as exc:
                self.note(f"metadata server: {exc.__class__.__name__}: {exc}")
                outcome = None
            if outcome is not None:
                if outcome.strip() == "ok":
                    return None
                try:
                    tail = guest_attribute("ferry/setup-log") or ""
                except OSError:
                    tail = ""
                last = [line for line in tail.strip().splitlines() if line.strip()][-5:]
                for line in last:
                    self.say(f"start-up script: {line}")
                return f"the VM's start-up script {outcome.strip()}" + (f" ({last[-1].strip()})" if last else "")
            if not said:
                self.say("waiting for the VM's start-up script to finish")
                said = True
            if time.time() > deadline:
                return f"the VM's start-up script did not finish within {float(self.params.get('setup_timeout', 900)):.0f} s"
            if self.stop_requested.is_set():
                return "cancelled before start"
            self.write_status(upload=False)
            self.wake.wait(poll)

    def check_bucket(self) -> str | None:
        """Prove the run's folder in the bucket is writable before the job starts -> None, or
        why not (IAM of the VM's service account, a missing package, no network)."""
        last = None
        for attempt in range(4):
            try:
                self.uploader.put_json("status.json", self.status, quick=True, metadata=self.row())
                self._last_status_upload = time.time()
                return None
            except Exception as exc:  # ImportError included: google-cloud-storage missing
                last = f"{exc.__class__.__name__}: {' '.join(str(exc).split())[:300]}"
                self.note(f"bucket check failed: {last}")
                if isinstance(exc, ImportError):
                    break
                time.sleep(0.5 * 2**attempt)
        return f"cannot write to gs://{self.params['bucket']}/{self.uploader.prefix} from the VM: {last}"

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
        write_json_atomic(self.status_path, self.status)
        claim_vm(self.run_id, self.note)
        proc = None
        state, exit_code, message = None, None, None
        bucket_ok = True
        try:
            message = self.check_bucket()
            if message is not None:
                state, bucket_ok = "failed", False
                self.say(f"error: {message}")
            else:
                if self.params.get("continue"):
                    self.continue_log()
                message = self.wait_setup()
                if message is not None:
                    state = "cancelled" if self.stop_requested.is_set() else "failed"
                    if state == "failed":
                        self.say(f"error: {message}")
            if state is None:
                self.status["gpu"] = gpu_name() or self.params.get("gpu")
                self.stage()
                if self.params.get("continue"):
                    self.fetch_checkpoints()
            if state is None and (self.stop_requested.is_set() or self.preempted.is_set()):
                state = self._stopped_state()
            if state is None and self.params.get("setup"):
                state, exit_code, message = self.run_setup()
            if state is None:
                proc = self.start_job()
                # a recovered run started when its first segment did
                self.set_state("running", started=(self.params.get("continue") and self.params.get("run_started")) or now_iso())
                state, exit_code = self.watch(proc)
        except Exception as exc:  # staging or start failed: record why, flush, stop
            state, message = "failed", f"{exc.__class__.__name__}: {exc}"
            self.say(f"error: {message}")
        finally:
            if proc is not None:
                self.stop_job(proc)
                if exit_code is None:
                    exit_code = proc.returncode
                self.join_output()
                self.collect_outputs()
            if self.noise_dropped:
                self.say(f"{self.noise_dropped} line(s) of TensorFlow's C++/absl start-up logging left out of this "
                         "log; `logs RUN --raw` shows every line")
        if message is None and state in ("cancelled", "preempted", "lost"):
            message = {"preempted": "preempted: the VM is being stopped", "cancelled": "cancelled",
                       "lost": "the VM shut down under the job (deleted, stopped or rebooted)"}[state]
            self.say(f"{state}; the job was stopped" if state != "lost" else f"{message}; the job was stopped")
        self.status.update(state=state, exit_code=exit_code, ended=now_iso(), message=message)
        self.close_segment(state)
        if bucket_ok:
            self.flush(final=True)
            self.status["uploaded_bytes"] = dict(self.uploader.sent)  # what the run cost in uploads
            # status.json goes last: a final status in the bucket means the rest is there too.
            for attempt in range(5):
                try:
                    self.status["heartbeat"] = now_iso()
                    self.uploader.put_json("status.json", self.status, metadata=self.row())
                    break
                except Exception as exc:
                    self.note(f"final status upload failed: {exc}")
                    time.sleep(0.5 * 2**attempt)
        write_json_atomic(self.status_path, self.status)
        self.note(f"done: {state} (exit code {exit_code})")
        if self.params.get("self_delete"):
            self.end_vm()
        return 0

    # ------------------------------------------------------------------ a recovered run
    def continue_log(self) -> None:
        """A later segment of a run (after a preemption or a lost VM): the bucket's log so far
        becomes the start of ours, in place (a `follow` from its size sees only what is new)."""
        bucket = self.uploader.bucket()
        prefix = self.uploader.prefix
        blob = bucket.blob(prefix + "logs/output.log")
        try:
            before = blob.download_as_bytes()
            generation = blob.generation
        except Exception as exc:  # NotFound: the earlier segment never got a line out
            self.note(f"no earlier log ({exc.__class__.__name__})")
            before, generation = b"", None
        with open(self.log_path, "r+b") as f:  # in place: an attached follow keeps reading this file
            mine = f.read()
            f.seek(0)
            f.write(before + mine)
        if generation is not None and not mine:
            self.uploader.continue_growing("logs/output.log", len(before), generation)

    def fetch_checkpoints(self) -> None:
        """The newest checkpoints in the bucket, for the job to resume from (none: it starts
        over, and says so)."""
        bucket = self.uploader.bucket()
        prefix = self.uploader.prefix
        seg = self.segment
        where = f"VM {seg.get('vm') or socket.gethostname()}" + (f" in {seg['zone']}" if seg.get("zone") else "")
        flag = self.params.get("resume_flag")
        names = sorted((b.name for b in bucket.list_blobs(prefix=prefix + CHECKPOINTS)
                        if CHECKPOINT_NAME.match(b.name.rsplit("/", 1)[-1])), reverse=True)
        if not flag or not names:
            seg["resumed_from"] = None
            why = "the job writes no checkpoints" if not flag else "no checkpoint was saved before the interruption"
            self.say(f"=== segment {seg['index'] + 1}: {where}; {why}: the job starts over ===")
            return
        folder = self.run_dir / "out" / "checkpoints"
        folder.mkdir(parents=True, exist_ok=True)
        for name in names[:RESUME_KEEP]:
            dest = folder / name.rsplit("/", 1)[-1]
            tmp = dest.with_name("." + dest.name + ".part")
            bucket.blob(name).download_to_filename(str(tmp))
            os.replace(tmp, dest)
            self.uploader.mark_sent(dest, CHECKPOINTS + dest.name)
        newest = names[0].rsplit("/", 1)[-1]
        seg["resumed_from"] = newest
        self.resume_dir = folder
        self.say(f"=== segment {seg['index'] + 1}: {where}; resuming from checkpoint {newest} ===")

    def close_segment(self, state: str | None) -> None:
        seg = self.segment
        seg.update(ended=now_iso(), ended_by=state)
        price, since = seg.get("price_per_hour"), seg.get("vm_started") or seg.get("started")
        if isinstance(price, (int, float)) and since:
            seconds = max(0.0, time.time() - _parse_iso(since))
            seg["seconds"] = round(seconds, 3)
            seg["cost"] = round(price * seconds / 3600, 6)

    def _stopped_state(self) -> str:
        """Why the job is being stopped: preempted (the metadata server says so), cancelled
        (someone ran `cancel`), else the VM itself is shutting down (lost)."""
        if self.preempted.is_set() or _preempted_now():
            return "preempted"
        if (self.run_dir / CANCEL_FILE).exists():
            return "cancelled"
        return "lost"

    # ------------------------------------------------------------------ the VM's end
    def end_vm(self) -> None:
        """Delete this VM through the Compute Engine API (it must carry ferry-run=<this run>);
        power it off if the API refuses. An attached CLI does it instead, while attached."""
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # everything is saved: a shutdown may end us now
        deadline = time.time() + float(self.params.get("follower_grace", 60))
        while _follower_attached(self.run_dir) and time.time() < deadline:
            time.sleep(0.5)  # the attached `ferry run` deletes the VM (and this process with it)
        try:
            self._delete_self()
            self.note("deleting this VM through the Compute Engine API")
            return
        except Exception as exc:
            self.note(f"could not delete this VM through the API ({exc.__class__.__name__}: {exc}); powering off")
        self._poweroff()

    def _delete_self(self) -> None:
        import google.auth.compute_engine
        from google.auth.transport.requests import AuthorizedSession

        project = metadata_get("project/project-id")[0]
        zone = metadata_get("instance/zone")[0].rsplit("/", 1)[-1]
        name = metadata_get("instance/name")[0]
        session = AuthorizedSession(google.auth.compute_engine.Credentials())
        base = (self.params.get("compute_endpoint") or COMPUTE_API).rstrip("/")
        url = f"{base}/compute/v1/projects/{project}/zones/{zone}/instances/{name}"
        got = session.get(url, timeout=30)
        got.raise_for_status()
        labels = got.json().get("labels") or {}
        if labels.get("ferry-run") != self.run_id or labels.get("managed-by") != "ferry":
            raise RuntimeError(f"this instance is not run {self.run_id}'s VM (labels {labels}); not deleting it")
        session.delete(url, timeout=30).raise_for_status()

    def _poweroff(self) -> None:
        import shutil

        found = shutil.which("shutdown")
        if found is None:
            self.note("no shutdown command; the VM stays up until its run-time limit")
            return
        system = os.path.dirname(os.path.realpath(found)) in ("/sbin", "/usr/sbin", "/bin", "/usr/bin")
        if system and metadata_host() not in ("metadata.google.internal", "169.254.169.254"):
            self.note(f"refusing to run {found}: this is not a Compute Engine VM")
            return
        argv = [found, "-h", "now"] if os.geteuid() == 0 else ["sudo", "-n", found, "-h", "now"]
        try:
            subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
        except (OSError, subprocess.SubprocessError) as exc:
            self.note(f"power off failed: {exc}")

    def _wake_on_preemption(self) -> None:
        self.preempted.wait()
        self.wake.set()

    def job_cwd(self) -> Path:
        """The job's working directory: its workdir (a job file's), else the login directory."""
        return Path(self.params["cwd"]).resolve() if self.params.get("cwd") else Path(os.getcwd())

    def job_env(self) -> dict:
        code = Path(__file__).resolve().parent
        env = dict(os.environ)
        env.update({str(k): str(v) for k, v in (self.params.get("env") or {}).items()})
        path = [str(code)]
        if self.params.get("cwd"):  # a job file's own modules first, then ferry's trainer
            path.insert(0, str(self.job_cwd()))
        env["PYTHONPATH"] = os.pathsep.join(path + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        env["PYTHONUNBUFFERED"] = "1"
        env.setdefault("MPLBACKEND", "Agg")
        env["FERRY_RUN_ID"] = self.run_id
        if self.params.get("code_hash"):
            env["FERRY_CODE_HASH"] = str(self.params["code_hash"])  # a checkpoint records the code it came from
        env["FERRY_DATA_DIR"] = str(Path(self.params.get("data_dir", "ferry/data")).resolve())
        env["FERRY_OUT"] = str(self.run_dir / "out")
        env.update(self.secrets)
        return env

    def _argv(self, argv) -> list:
        argv = [str(a) for a in argv]
        if argv and argv[0] in ("python3", "python"):
            argv[0] = sys.executable  # the interpreter that has the job's dependencies
        return argv

    def run_setup(self):
        """The job file's setup commands, once per VM and setup key -> (None, None, None) when
        done (now or before), else (state, exit code, message) to end the run with."""
        key = str(self.params.get("setup_key") or "")
        marker = Path(SETUP_CACHE) / f"{key}.done" if re.fullmatch(r"[0-9a-f]{8,64}", key) else None
        if marker is not None and marker.exists():
            self.say(f"=== setup: already done on this VM for this code (key {key}); skipped ===")
            return None, None, None
        steps = self.params["setup"]
        t0 = time.time()
        env, cwd = self.job_env(), self.job_cwd()
        for i, step in enumerate(steps, 1):
            shown = step["argv"][0] if step.get("shell") else " ".join(step["argv"])
            self.say(f"=== setup {i}/{len(steps)} (once per VM and code): {shown} ===")
            argv = ["bash", "-c", step["argv"][0]] if step.get("shell") else self._argv(step["argv"])
            log = self.output()
            try:
                proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                        cwd=str(cwd), env=env, start_new_session=True)
            except OSError as exc:
                log.close()
                self.join_output()
                message = f"setup {i} could not start: {exc.__class__.__name__}: {exc}"
                self.say(f"error: {message}")
                return "failed", 127, message
            log.close()
            (self.run_dir / "job.pid").write_text(str(proc.pid))
            threading.Thread(target=lambda p=proc: (p.wait(), self.wake.set()), daemon=True).start()
            while proc.poll() is None:
                if self.stop_requested.is_set() or self.preempted.is_set():
                    self.stop_job(proc)
                    return self._stopped_state(), None, None
                self.flush()
                self.write_status(upload=False)
                self.wake.wait(self.upload_interval)
                self.wake.clear()
            self.join_output()
            if proc.returncode != 0:
                message = f"setup {i} ({shown[:80]}) failed with exit code {proc.returncode}"
                self.say(f"=== {message} ===")
                return "failed", proc.returncode, message
        if marker is not None:
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text(json.dumps({"run_id": self.run_id, "done": now_iso()}) + "\n")
        self.say(f"=== setup done in {time.time() - t0:.1f} s ===")
        return None, None, None

    def collect_outputs(self) -> None:
        """The job file's `outputs` (globs in its workdir) -> out/ (uploaded as artifacts/)."""
        import glob
        import shutil

        patterns = self.params.get("outputs") or []
        if not patterns:
            return
        cwd = self.job_cwd()
        out = self.run_dir / "out"
        count = 0
        for pattern in patterns:
            for found in sorted(glob.glob(str(cwd / pattern), recursive=True)):
                path = Path(found)
                try:
                    rel = path.resolve().relative_to(cwd)
                except ValueError:
                    self.say(f"output {found} is outside the workdir: not collected")
                    continue
                files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else []
                for f in files:
                    target = out / rel if f == path else out / rel / f.relative_to(path)
                    try:
                        target.parent.mkdir(parents=True, exist_ok=True)
                        shutil.copy2(f, target)
                        count += 1
                    except OSError as exc:
                        self.note(f"output {f}: {exc}")
        self.say(f"outputs: {count} file(s) collected ({', '.join(patterns)})")

    def output(self):
        """Where the job's (or a setup command's) stdout and stderr go: a pipe the runner copies
        into output.raw.log (every byte) and output.log (without TensorFlow's C++/absl start-up
        noise: NoiseFilter), both with every secret's value (3 characters or more) replaced by
        `[secret NAME]` first."""
        values = sorted(((v.encode(), f"[secret {k}]".encode()) for k, v in self.secrets.items() if len(v) >= 3),
                        key=lambda kv: len(kv[0]), reverse=True)
        r, w = os.pipe()
        noise = NoiseFilter()

        def redact(data: bytes) -> bytes:
            for value, mark in values:
                data = data.replace(value, mark)
            return data

        def held(data: bytes) -> int:  # the longest tail of data that may begin a secret's value
            best = 0
            for value, _ in values:
                for n in range(min(len(value) - 1, len(data)), best, -1):
                    if data.endswith(value[:n]):
                        best = n
                        break
            return best

        def pump():
            pending = b""
            with os.fdopen(r, "rb", buffering=0) as src, open(self.log_path, "ab", buffering=0) as log, \
                    open(self.raw_log_path, "ab", buffering=0) as raw:
                while True:
                    chunk = src.read(1 << 16)
                    if not chunk:
                        break
                    data = redact(pending + chunk) if values else chunk
                    keep = held(data) if values else 0
                    out, pending = data[:len(data) - keep], data[len(data) - keep:]
                    raw.write(out)
                    log.write(noise.feed(out))
                tail = redact(pending)
                raw.write(tail)
                log.write(noise.feed(tail) + noise.flush())
            self.noise_dropped += noise.dropped

        self._pump = threading.Thread(target=pump, daemon=True, name="job-output")
        self._pump.start()
        return os.fdopen(w, "wb", buffering=0)

    def join_output(self, timeout: float = 10.0) -> None:
        """Everything the job wrote is in output.log (its redacting pipe drained)."""
        pump = getattr(self, "_pump", None)
        if pump is not None:
            pump.join(timeout)
            self._pump = None

    def start_job(self) -> subprocess.Popen:
        argv = self._argv(self.params["argv"])
        env = self.job_env()
        if self.resume_dir is not None:
            argv += [str(self.params["resume_flag"]), str(self.resume_dir)]
        log = self.output()
        try:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=str(self.job_cwd()), env=env, start_new_session=True,
            )
        except BaseException:
            log.close()
            self.join_output()
            raise
        log.close()
        (self.run_dir / "job.pid").write_text(str(proc.pid))  # its process group, for `stop-job`

        def wake_on_exit():  # the main loop sleeps between uploads; the job's end wakes it
            proc.wait()
            self.wake.set()

        threading.Thread(target=wake_on_exit, daemon=True, name="job-exit").start()
        return proc

    def watch(self, proc: subprocess.Popen):
        while True:
            rc = proc.poll()
            if rc is not None:
                if rc != 0 and _killed_by_signal(rc) and not self.stop_requested.is_set():
                    # the job died of a signal: if the VM is shutting down, our SIGTERM follows
                    self.stop_requested.wait(1.5)
                if self.stop_requested.is_set() or self.preempted.is_set():
                    return self._stopped_state(), rc
                return ("succeeded" if rc == 0 else "failed"), rc
            if self.preempted.is_set() or self.stop_requested.is_set():
                if self.preempted.is_set():  # ~30 s left: the newest checkpoint goes out first
                    try:
                        self.uploader.sync_checkpoints(self.run_dir)
                    except Exception as exc:
                        self.note(f"checkpoint upload failed: {exc.__class__.__name__}: {exc}")
                self.stop_job(proc)
                return self._stopped_state(), proc.returncode
            self.flush()
            self.write_status(upload=False)
            self.wake.wait(self.upload_interval)
            self.wake.clear()


def _parse_iso(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _killed_by_signal(rc: int) -> bool:
    return rc < 0 or rc in (128 + signal.SIGTERM, 128 + signal.SIGKILL, 128 + signal.SIGHUP, 128 + signal.SIGINT)


def _follower_attached(run_dir: Path) -> bool:
    try:
        return time.time() - (run_dir / FOLLOWER_BEAT).stat().st_mtime < FOLLOWER_FRESH_S
    except OSError:
        return False


def _preempted_now() -> bool:
    try:
        return metadata_get("instance/preempted", timeout=1.0)[0].upper() == "TRUE"
    except Exception:
        return False


# --------------------------------------------------------------------------- commands
def cmd_start(run_dir: Path, secrets: dict | None = None) -> int:
    """Fork the runner off into its own session (it survives the SSH connection) and return.
    `secrets` (read from stdin by `--secrets-stdin`) stay in memory: the forked runner has them."""
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
            code = Runner(run_dir, secrets).serve()
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


def _runner_alive(run_dir: Path) -> bool:
    try:
        pid = int((run_dir / "runner.pid").read_text())
    except (OSError, ValueError):
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        return stat[stat.rindex(b")") + 2:][:1] not in (b"Z", b"X")
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


def cmd_follow(run_dir: Path, offset: int, poll: float = 0.05) -> int:
    """Write output.log from byte `offset` to stdout as it grows; return 0 once the run ended,
    RUNNER_GONE when the runner died without a final status (the caller salvages the run).
    While it follows it beats `follower`, telling the runner an attached CLI ends the VM."""
    log_path = run_dir / "output.log"
    status_path = run_dir / "status.json"
    beat = run_dir / FOLLOWER_BEAT
    out = sys.stdout.buffer
    deadline = time.time() + 60
    while not log_path.exists():
        if time.time() > deadline or not _runner_alive(run_dir):
            print("no output.log", file=sys.stderr)
            return RUNNER_GONE
        time.sleep(poll)
    last_beat = last_check = 0.0
    with open(log_path, "rb") as f:
        f.seek(offset)
        while True:
            now = time.time()
            if now - last_beat >= 1.0:
                beat.touch()
                last_beat = now
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
            if now - last_check >= 1.0:
                last_check = now
                if not _runner_alive(run_dir):
                    time.sleep(0.2)  # it may have written its final status as it exited
                    if (read_json(status_path) or {}).get("state") not in FINAL_STATES:
                        chunk = f.read()
                        if chunk:
                            out.write(chunk)
                            out.flush()
                        return RUNNER_GONE
            time.sleep(poll)


def cmd_stop_job(run_dir: Path, grace: float = 5.0) -> int:
    """The runner is gone: stop the job it left running (SIGTERM to its process group, SIGKILL
    after GRACE), so that the log on disk is complete before it is salvaged."""
    try:
        pgid = int((run_dir / "job.pid").read_text())
    except (OSError, ValueError):
        return 0  # the job never started
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 2.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return 0
        except PermissionError:
            return 1
        deadline = time.time() + wait
        while time.time() < deadline:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return 0
            time.sleep(0.05)
    return 1


def cmd_fresh(run_dir: Path) -> int:
    """Before a run continues on a VM it ran on before (`resume --vm`): the old folder goes
    (its checkpoints come again from the bucket); exit 1 while its runner still lives."""
    import shutil

    if _runner_alive(run_dir):
        print("a runner of this run is still alive on this VM", file=sys.stderr)
        return 1
    shutil.rmtree(run_dir, ignore_errors=True)
    return 0


def cmd_cancel(run_dir: Path) -> int:
    try:
        (run_dir / CANCEL_FILE).touch()  # a SIGTERM without it means the VM is shutting down
        pid = int((run_dir / "runner.pid").read_text())
        os.kill(pid, signal.SIGTERM)
    except (OSError, ValueError) as exc:
        print(f"not running ({exc.__class__.__name__})", file=sys.stderr)
        return 1
    return 0


def cmd_batch_task(bucket_name: str, sweep_id: str, project: str | None = None) -> int:
    """One task of a sweep on Cloud Batch (no SSH): its runner parameters come from the
    sweep's manifest in the bucket, picked by BATCH_TASK_INDEX; a retry (BATCH_TASK_RETRY_ATTEMPT
    > 0, e.g. after a preemption) continues the task's log and resumes from its checkpoint.
    Runs in the foreground; exit 0 when the job succeeded, 1 when it failed (Batch does not
    retry that), 2 when this task cannot start (the same)."""
    import google.auth.compute_engine
    from google.cloud import storage

    index = int(os.environ.get("BATCH_TASK_INDEX", "0"))
    attempt = int(os.environ.get("BATCH_TASK_RETRY_ATTEMPT", "0") or 0)
    client = storage.Client(project=project or None, credentials=google.auth.compute_engine.Credentials())
    manifest = json.loads(client.bucket(bucket_name).blob(f"sweeps/{sweep_id}/manifest.json").download_as_bytes())
    tasks = {int(t["index"]): t for t in manifest["tasks"]}
    if index not in tasks:
        print(f"task {index}: not in sweep {sweep_id}'s manifest", file=sys.stderr)
        return 2
    params = dict(tasks[index]["runner"])
    params["continue"] = attempt > 0
    params.setdefault("segment", {})
    params["segment"] = {**params["segment"], "index": attempt, "vm": socket.gethostname(), "batch_attempt": attempt}
    if attempt > 0:  # the earlier attempts' segments, closed: what the bucket's status says of them
        try:
            before = json.loads(client.bucket(bucket_name).blob(params["prefix"] + "status.json").download_as_bytes())
            segs = [dict(x) for x in before.get("segments") or []]
            for seg in segs:
                if not seg.get("ended"):
                    seg.update(ended=before.get("heartbeat"), ended_by="preempted")
            params["segments"] = segs
            params["run_started"] = before.get("started")
        except Exception as exc:
            print(f"no earlier status ({exc.__class__.__name__})", file=sys.stderr)
    run_dir = Path("ferry/runs") / params["run_id"]
    run_dir.mkdir(parents=True, exist_ok=True)
    for stale in ("runner.pid", "status.json", "output.log"):
        (run_dir / stale).unlink(missing_ok=True)
    write_json_atomic(run_dir / "params.json", params)
    Runner(run_dir).serve()
    final = read_json(run_dir / "status.json") or {}
    if final.get("state") in ("preempted", "lost"):  # Batch retries this one (jobs/sweep.py's policy)
        return TASK_STOPPED
    return 0 if final.get("state") == "succeeded" else 1


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="ferry_runner")
    parser.add_argument("command", choices=["start", "serve", "follow", "cancel", "stop-job", "status", "batch-task",
                                            "fresh"])
    parser.add_argument("run_dir", type=Path, help="the run's folder (batch-task: the bucket)")
    parser.add_argument("--offset", type=int, default=0)
    parser.add_argument("--sweep", help="batch-task: the sweep id")
    parser.add_argument("--project")
    parser.add_argument("--secrets-stdin", action="store_true", help="start: the job's secrets as JSON on stdin")
    args = parser.parse_args(argv)
    if args.command == "batch-task":
        return cmd_batch_task(str(args.run_dir), args.sweep, args.project)
    if args.command == "start":
        secrets = None
        if args.secrets_stdin:
            try:
                secrets = json.loads(sys.stdin.buffer.read() or b"{}")
            except ValueError:
                print("--secrets-stdin: expected a JSON object on stdin", file=sys.stderr)
                return 2
            if not isinstance(secrets, dict):
                print("--secrets-stdin: expected a JSON object on stdin", file=sys.stderr)
                return 2
        return cmd_start(args.run_dir, secrets)
    if args.command == "serve":  # in the foreground (debugging)
        return Runner(args.run_dir).serve()
    if args.command == "follow":
        try:
            return cmd_follow(args.run_dir, args.offset)
        except BrokenPipeError:
            return 0
    if args.command == "cancel":
        return cmd_cancel(args.run_dir)
    if args.command == "fresh":
        return cmd_fresh(args.run_dir)
    if args.command == "stop-job":
        return cmd_stop_job(args.run_dir)
    sys.stdout.write((args.run_dir / "status.json").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
