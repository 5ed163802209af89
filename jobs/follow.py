"""Following a run from this machine, and telling when it is over without the runner's word.

- `follow_bucket()`: print logs/output.log from the bucket until the run's final state (`logs
  --follow`, and `run` when the VM cannot be reached). Cloud Storage unreachable for
  UNREACHABLE_AFTER_S in a row is a CloudError saying how to reattach, not minutes of retries.
- `Liveness`: while attached, whether the runner still beats (heartbeat in status.json);
  silent for SILENT_AFTER_S means it is gone, whatever the VM says.
- `salvage()`: the runner died (OOM killer, reboot) or could not write to the bucket: copy
  what the job left on the VM's disk into the bucket with this machine's credentials, and
  write the run's final status. Every line the job wrote reaches the bucket.
"""

from __future__ import annotations

import json
import posixpath
import time

from infra.errors import CloudError
from jobs import runs as records

UNREACHABLE_AFTER_S = 30.0   # Cloud Storage failing this long in a row: say so and stop
SILENT_AFTER_S = 60.0        # no heartbeat advance this long while attached: the runner is gone
QUICK = {"timeout": 5.0}     # bucket reads while following: one short try, we poll again anyway


def _quick_retry():
    return records.bounded_retry(5.0)


def read_json(bucket, name: str):
    """An object as JSON, None when absent or unreadable; raises on an unreachable bucket."""
    from google.api_core.exceptions import NotFound

    try:
        return json.loads(bucket.blob(name).download_as_bytes(retry=_quick_retry(), **QUICK))
    except NotFound:
        return None
    except ValueError:
        return None


def reason(exc: BaseException) -> str:
    """A short why for an unreachable service: 'connection refused', 'timed out', ..."""
    cause = getattr(exc, "cause", None) or exc.__cause__ or exc
    text = " ".join(str(cause).split())
    if "Connection refused" in text or "Errno 111" in text:
        return "connection refused"
    if "timed out" in text.lower() or "timeout" in text.lower():
        return "timed out"
    if "Name or service not known" in text or "Temporary failure in name resolution" in text:
        return "name not resolved"
    return f"{type(cause).__name__}: {text[:120]}"


class Reachability:
    """Consecutive failures of one service; `failed()` raises once they last too long."""

    def __init__(self, what: str, hint: str, after_s: float = UNREACHABLE_AFTER_S):
        self.what, self.hint, self.after_s = what, hint, after_s
        self.since: float | None = None

    def ok(self) -> None:
        self.since = None

    def failed(self, exc: BaseException) -> None:
        now = time.monotonic()
        self.since = self.since or now
        if now - self.since >= self.after_s:
            raise CloudError(f"{self.what} unreachable for {self.after_s:.0f} s ({reason(exc)})", hint=self.hint) from None


def reattach_hint(run_id: str) -> str:
    return (f"the job may go on without us; once the cloud answers, `python cli.py logs {run_id} --follow` "
            "reattaches and `python cli.py cleanup` deletes what is left")


def follow_bucket(bucket, run_id: str, offset: int, on_data, poll: float = 0.5, on_silent=None,
                  prefix: str | None = None) -> dict:
    """Print logs/output.log from the bucket from byte `offset` until the run's final state.

    `on_silent(status)`: called when the heartbeat has not advanced for SILENT_AFTER_S; it may
    return a final status to end with (the attached `run` decides the runner is gone).
    `prefix`: the run's folder when it is not runs/RUN_ID/ (a sweep task's)."""
    from google.api_core.exceptions import NotFound

    prefix = prefix or records.prefix(run_id)
    blob = bucket.blob(prefix + "logs/output.log")
    reach = Reachability(f"Cloud Storage (gs://{bucket.name})", reattach_hint(run_id))
    beat, beat_seen = None, time.monotonic()

    def copy_new() -> None:
        nonlocal offset
        try:
            blob.reload(retry=_quick_retry(), **QUICK)
            if (blob.size or 0) > offset:
                data = blob.download_as_bytes(start=offset, retry=_quick_retry(), **QUICK)
                offset += len(data)
                on_data(data)
        except NotFound:
            pass

    while True:
        try:
            st = read_json(bucket, prefix + "status.json")
            copy_new()
            reach.ok()
        except CloudError:
            raise
        except Exception as exc:  # unreachable: keep trying until the deadline
            reach.failed(exc)
            time.sleep(poll)
            continue
        if records.effective_state(st) in records.FINAL:
            copy_new()  # a final status is written after the last log upload: one more read
            return st or {}
        if (st or {}).get("heartbeat") != beat:
            beat, beat_seen = (st or {}).get("heartbeat"), time.monotonic()
        elif on_silent is not None and time.monotonic() - beat_seen > SILENT_AFTER_S:
            final = on_silent(st or {})
            if final is not None:
                copy_new()
                return final
            beat_seen = time.monotonic()
        time.sleep(poll)


# --------------------------------------------------------------------------- salvage
def _walk(remote, top: str) -> list[str]:
    """Every file under TOP on the VM, relative to it (SFTP)."""
    import stat

    out = []
    try:
        entries = remote.sftp().listdir_attr(top)
    except (OSError, IOError):
        return out
    for entry in entries:
        path = posixpath.join(top, entry.filename)
        if stat.S_ISDIR(entry.st_mode or 0):
            out += [posixpath.join(entry.filename, sub) for sub in _walk(remote, path)]
        elif stat.S_ISREG(entry.st_mode or 0):
            out.append(entry.filename)
    return out


def salvage(remote, bucket, run_id: str, run_dir: str, state: str, message: str) -> dict:
    """Copy the run's files from the VM's disk to the bucket (what the runner would have
    uploaded), then write the final status.json (last, as the runner does) -> that status.

    The VM's own status.json is kept where it is final (e.g. the runner could not write to the
    bucket and said why); otherwise the run ends as STATE with MESSAGE."""
    prefix = records.prefix(run_id)
    names = {"output.log": "logs/output.log"}
    for rel in _walk(remote, f"{run_dir}/out"):
        names[f"out/{rel}"] = {"metrics.jsonl": "metrics.jsonl", "summary.json": "summary.json"}.get(rel, f"artifacts/{rel}")
    for source, target in names.items():
        data = remote.read(f"{run_dir}/{source}")
        if data is None:
            continue
        ctype = "text/plain; charset=utf-8" if source == "output.log" else "application/octet-stream"
        bucket.blob(prefix + target).upload_from_string(data, content_type=ctype)
    on_vm = {}
    raw = remote.read(f"{run_dir}/status.json")
    if raw:
        try:
            on_vm = json.loads(raw)
        except ValueError:
            on_vm = {}
    if on_vm.get("state") in records.FINAL:
        final = dict(on_vm)
    else:
        final = dict(on_vm, run_id=run_id, state=state, message=message, ended=records.iso())
    final["salvaged"] = True
    final["heartbeat"] = records.iso()
    records.put_json(bucket, prefix + "status.json", final)
    return final
