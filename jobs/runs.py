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
from trainer import report
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


best_accuracy = report.best_accuracy  # one rule, with the summary's shape (trainer/report.py)


# --------------------------------------------------------------------------- the bucket
def prefix(run_id: str) -> str:
    return f"runs/{run_id}/"


def bounded_retry(seconds: float = 15.0):
    """The storage client's retry, bounded: a record write must not hang for minutes."""
    from google.cloud.storage.retry import DEFAULT_RETRY

    return DEFAULT_RETRY.with_timeout(seconds) if hasattr(DEFAULT_RETRY, "with_timeout") else DEFAULT_RETRY.with_deadline(seconds)


def call_options(quick: bool) -> dict:
    """Keyword arguments for a storage call: `quick` bounds its retries to ~15 s and each
    request to 10 s (while attached to a run, and in the dashboard, which must answer a page
    even when the bucket cannot be reached); otherwise the client's defaults (~120 s)."""
    return {"retry": bounded_retry(), "timeout": 10} if quick else {}


def put_json(bucket, name: str, data: dict, quick: bool = False, metadata: dict | None = None) -> None:
    """Write a record (with custom `metadata`); `quick`: see call_options."""
    extra = call_options(quick)
    blob = bucket.blob(name)
    if metadata:
        blob.metadata = metadata
    blob.upload_from_string(json.dumps(data, indent=2, sort_keys=True) + "\n", content_type="application/json",
                                         **extra)


def get_json(bucket, name: str, quick: bool = False):
    from google.api_core.exceptions import NotFound

    try:
        return json.loads(bucket.blob(name).download_as_bytes(**call_options(quick)))
    except NotFound:
        return None
    except ValueError:
        return None


def list_run_ids(bucket, job: str | None = None, quick: bool = False) -> list[str]:
    """Run ids in the bucket, newest first."""
    from google.api_core.exceptions import NotFound

    it = bucket.client.list_blobs(bucket, prefix="runs/", delimiter="/", **call_options(quick))
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


def record(bucket, run_id: str, quick: bool = False) -> dict:
    """manifest, status, summary of one run, and the derived figures `runs` shows."""
    p = prefix(run_id)
    manifest = get_json(bucket, p + "manifest.json", quick) or {}
    status = get_json(bucket, p + "status.json", quick)
    summary = get_json(bucket, p + "summary.json", quick)
    metrics = None
    if summary is None:
        try:
            raw = bucket.blob(p + "metrics.jsonl").download_as_bytes(**call_options(quick))
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


def list_runs(bucket, job: str | None = None, limit: int = 20, quick: bool = False) -> list[dict]:
    """The newest `limit` runs' rows. Two listing calls per 1000 runs: status.json carries the
    figures in its metadata (trainer/report.py `row`, written with every status), returned by
    the listing itself; only runs without it (older ones) are read object by object, in parallel."""
    from concurrent.futures import ThreadPoolExecutor

    from google.api_core.exceptions import NotFound

    found: dict[str, dict | None] = {}
    try:
        for blob in bucket.client.list_blobs(bucket, prefix="runs/", match_glob="runs/*/status.json",
                                             **call_options(quick)):
            run_id = blob.name[len("runs/"):-len("/status.json")]
            if not valid_run_id(run_id) or (job and RUN_ID_RE.match(run_id).group("job") != job):
                continue
            found[run_id] = _row_of(run_id, (blob.metadata or {}).get(report.ROW_KEY))
    except NotFound:  # no bucket yet: no runs
        return []
    # a run folder without a status (its first write failed) is still a run: one more listing
    ids = sorted(set(found) | set(list_run_ids(bucket, job, quick)), key=sort_key, reverse=True)[:limit]
    missing = [i for i in ids if found.get(i) is None]
    if missing:
        with ThreadPoolExecutor(max_workers=8) as pool:
            for run_id, rec in zip(missing, pool.map(lambda i: record(bucket, i, quick), missing)):
                found[run_id] = rec
    return [found[i] for i in ids]


def _row_of(run_id: str, text: str | None) -> dict | None:
    try:
        row = json.loads(text) if text else None
    except ValueError:
        row = None
    if not isinstance(row, dict):
        return None
    status = {k: row.get(k) for k in ("state", "started", "ended", "heartbeat", "heartbeat_interval")}
    m = RUN_ID_RE.match(run_id)
    return {"run_id": run_id, "job": row.get("job") or (m.group("job") if m else "?"), "state": effective_state(status),
            "started": row.get("started"), "duration_s": duration_s(status), "best_accuracy": row.get("best"),
            "vm": row.get("vm"), "gpu": row.get("gpu"), "exit_code": row.get("exit_code"),
            "recoveries": row.get("recoveries") or 0}
