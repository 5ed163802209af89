"""`pull`: a run's folder from the bucket to this machine (every object name checked before
anything is written), then its report."""

from __future__ import annotations

from pathlib import Path

from infra.errors import CloudError, UsageError
from jobs import runs as records
from jobs.common import say


def safe_target(dest: Path, rel: str) -> Path | None:
    """dest/rel when it stays inside dest; None for names that would escape it."""
    if not rel or rel.startswith(("/", "\\")) or "\\" in rel or "\x00" in rel:
        return None
    parts = rel.split("/")
    if any(p in ("", ".", "..") for p in parts):
        return None
    base = dest.resolve()
    target = (base / rel).resolve()
    if base not in target.parents:
        return None
    return target


def download_prefix(bucket, prefix: str, target: Path, skip=(), what: str | None = None, skip_folders=()) -> int:
    """gs://BUCKET/PREFIX... into target, every name checked before anything is written ->
    how many objects. Skips the log's chunks in flight (jobs/runner.py) and `skip` (names
    relative to the prefix)."""
    what = what or prefix
    plan = []
    for blob in bucket.client.list_blobs(bucket, prefix=prefix):
        rel = blob.name[len(prefix):]
        if rel.startswith(".chunks/") or "/.chunks/" in rel or rel in skip:  # not results
            continue
        if any(part in skip_folders for part in rel.split("/")[:-1]):
            continue
        path = safe_target(target, rel)
        if path is None:
            raise CloudError(f"refusing to pull {what}: object name {blob.name!r} would escape {target}",
                             hint="nothing was downloaded; someone wrote an unsafe name into the bucket")
        plan.append((blob, path))
    if not plan:
        raise UsageError(f"{what} has no objects in gs://{bucket.name}/{prefix}")
    target.mkdir(parents=True, exist_ok=True)
    from concurrent.futures import ThreadPoolExecutor

    def fetch(item):
        blob, path = item
        path.parent.mkdir(parents=True, exist_ok=True)
        blob.download_to_filename(str(path))
        return blob.size or 0

    with ThreadPoolExecutor(max_workers=8) as pool:
        total = sum(pool.map(fetch, plan))
    say(f"pulled {len(plan)} objects ({total / 1e3:.1f} kB) into {target}")
    return len(plan)


def pull_run(bucket, run_id: str, target: Path) -> dict:
    """Download gs://BUCKET/runs/RUN/ into target (every name checked first) and render the report."""
    from jobs import report

    download_prefix(bucket, records.prefix(run_id), target, what=f"run {run_id}")
    return report.render(target)
