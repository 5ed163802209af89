"""Run records: ids, states, and the run folders in gs://BUCKET/runs/<run-id>/.

A run id sorts by time: `<job>-<YYYYmmdd-HHMMSS>-<4 random chars>` (UTC). The bucket holds
manifest.json (written by `ferry run`), status.json (written by `ferry run` until the
runner on the VM takes over), logs/output.log, metrics.jsonl, summary.json, artifacts/.
A run whose status is not final and whose heartbeat is stale shows as `lost`.
"""

from __future__ import annotations

import json
import re
import secrets
import string
from datetime import datetime, timezone

from infra import runstate
from infra.times import parse_time

# One liveness rule, shared with `cleanup`: see infra/runstate.py.
STATES, FINAL, effective_state = runstate.STATES, runstate.FINAL, runstate.effective_state

RUN_ID_RE = re.compile(r"^(?P<job>[a-z0-9][a-z0-9-]*)-(?P<ts>\d{8}-\d{6})-(?P<rand>[a-z0-9]{4})$")


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def iso(t: datetime | None = None) -> str:
    return (t or utcnow()).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def new_run_id(job: str, now: datetime | None = None) -> str:
    now = now or utcnow()
    rand = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(4))
    return f"{job}-{now:%Y%m%d-%H%M%S}-{rand}"


def sort_key(run_id: str) -> tuple:
    m = RUN_ID_RE.match(run_id)
    return (m.group("ts"), run_id) if m else ("", run_id)


def valid_run_id(run_id: str) -> bool:
    return bool(RUN_ID_RE.match(run_id))


def duration_s(status: dict | None, manifest: dict | None = None, now: datetime | None = None) -> float | None:
    status = status or {}
    start = parse_time(status.get("started")) or parse_time((manifest or {}).get("created"))
    if not start:
        return None
    end = parse_time(status.get("ended"))
    if end is None:
        end = parse_time(status.get("heartbeat")) if effective_state(status, now) == "lost" else (now or utcnow())
    return max(0.0, (end - start).total_seconds()) if end else None


def best_accuracy(summary: dict | None, metrics: list[dict] | None = None) -> float | None:
    """The highest test accuracy a run reports (summary first, else its metrics), as 0..1."""
    summary = summary or {}
    svm = summary.get("svm") if isinstance(summary.get("svm"), dict) else {}
    for key in ("best_test_accuracy", "best_accuracy", "test_accuracy", "accuracy"):
        value = summary.get(key)
        if isinstance(value, (int, float)):
            other = svm.get("best_test_accuracy")  # NN+SVM jobs: the better of the two heads
            return float(max(value, other)) if isinstance(other, (int, float)) else float(value)
    best = None
    for row in metrics or ():
        for key in ("test_accuracy", "accuracy", "test_acc", "val_accuracy"):
            value = row.get(key)
            if isinstance(value, (int, float)):
                best = value if best is None else max(best, value)
                break
    return best


# --------------------------------------------------------------------------- the bucket
def prefix(run_id: str) -> str:
    return f"runs/{run_id}/"


def bounded_retry(seconds: float = 15.0):
    """The storage client's retry, bounded: a record write must not hang for minutes."""
    from google.cloud.storage.retry import DEFAULT_RETRY

    return DEFAULT_RETRY.with_timeout(seconds) if hasattr(DEFAULT_RETRY, "with_timeout") else DEFAULT_RETRY.with_deadline(seconds)


def put_json(bucket, name: str, data: dict, quick: bool = False) -> None:
    """Write a record; `quick`: retries bounded to ~15 s (while attached to a run)."""
    extra = {"retry": bounded_retry(), "timeout": 10} if quick else {}
    bucket.blob(name).upload_from_string(json.dumps(data, indent=2, sort_keys=True) + "\n", content_type="application/json",
                                         **extra)


def get_json(bucket, name: str, quick: bool = False):
    from google.api_core.exceptions import NotFound

    extra = {"retry": bounded_retry(), "timeout": 10} if quick else {}
    try:
        return json.loads(bucket.blob(name).download_as_bytes(**extra))
    except NotFound:
        return None
    except ValueError:
        return None


def list_run_ids(bucket, job: str | None = None) -> list[str]:
    """Run ids in the bucket, newest first."""
    from google.api_core.exceptions import NotFound

    it = bucket.client.list_blobs(bucket, prefix="runs/", delimiter="/")
    try:
        for _ in it.pages:
            pass
    except NotFound:  # no bucket yet: no runs
        return []
    ids = [p[len("runs/"):].rstrip("/") for p in it.prefixes]
    if job:
        ids = [i for i in ids if (m := RUN_ID_RE.match(i)) and m.group("job") == job]
    return sorted(ids, key=sort_key, reverse=True)


def latest(bucket) -> str | None:
    ids = list_run_ids(bucket)
    return ids[0] if ids else None


def record(bucket, run_id: str) -> dict:
    """manifest, status, summary of one run, and the derived figures `runs` shows."""
    p = prefix(run_id)
    manifest = get_json(bucket, p + "manifest.json") or {}
    status = get_json(bucket, p + "status.json")
    summary = get_json(bucket, p + "summary.json")
    metrics = None
    if summary is None:
        try:
            raw = bucket.blob(p + "metrics.jsonl").download_as_bytes()
            metrics = [json.loads(line) for line in raw.decode().splitlines() if line.strip()]
        except Exception:
            metrics = None
    state = effective_state(status)
    # times the run moved to a new VM (spot preemption, lost VM, `resume`): one less than the
    # segments in status.json; runs from before segments have none (unless the manifest counted)
    segments = (status or {}).get("segments")
    counted = manifest.get("recoveries")
    if isinstance(segments, list) and segments:
        recoveries = len(segments) - 1
    elif isinstance(counted, int) and not isinstance(counted, bool) and counted > 0:
        recoveries = counted
    else:
        recoveries = 0
    return {
        "run_id": run_id,
        "job": manifest.get("job") or (RUN_ID_RE.match(run_id).group("job") if RUN_ID_RE.match(run_id) else "?"),
        "state": state,
        "started": (status or {}).get("started") or manifest.get("created"),
        "duration_s": duration_s(status, manifest),
        "best_accuracy": best_accuracy(summary, metrics),
        "vm": manifest.get("vm"),
        "gpu": manifest.get("gpu"),
        "exit_code": (status or {}).get("exit_code"),
        "recoveries": recoveries,
    }


def list_runs(bucket, job: str | None = None, limit: int = 20) -> list[dict]:
    from concurrent.futures import ThreadPoolExecutor

    ids = list_run_ids(bucket, job)[:limit]
    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(lambda i: record(bucket, i), ids))
