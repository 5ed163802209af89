"""What the dashboard reads from the bucket, and only reads.

- `Folder`: one run's folder, `runs/RUN_ID/` or a sweep task's `sweeps/ID/tasks/INDEX/` (the
  same layout).
- `runs_rows()`: the `runs` listing (jobs/runs.py `list_runs`: status.json's metadata, one
  listing per 1000 runs) plus each run's cost from its manifest; manifests are cached by
  generation, so a refresh costs one more listing and reads only the manifests that changed.
- `sweep_rows()` / `sweep_detail()`: sweeps and their tasks (jobs/sweep.py's listing of each
  task's status row).
- `live()`: what changed in a folder since the offsets a page already has: one listing gives
  the sizes and generations of status.json, metrics.jsonl and logs/output.log; the two growing
  files are then read from the page's offsets only (HTTP range reads), never from the start.
- `Reports`: a finished run pulled once into a cache (checkpoints left out) and rendered with
  jobs/report.py; re-pulled only when its status.json changes (e.g. it was resumed).
"""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from jobs import runs as records

LOG_TAIL_BYTES = 64 * 1024       # a page opening on a log shows its last 64 KiB
LOG_CHUNK_BYTES = 256 * 1024     # at most this much log per poll; past it the page skips ahead
METRICS_CHUNK_BYTES = 4 * 2**20  # metrics per poll (a page catches up over a few polls)
WATCHED = ("status.json", "metrics.jsonl", "logs/output.log", "summary.json", "manifest.json")


@dataclass(frozen=True)
class Folder:
    """A run's folder in the bucket: a run (`runs/ID/`) or a sweep task (`sweeps/ID/tasks/N/`)."""
    prefix: str
    title: str        # what a page calls it: the run id, or "SWEEP task N"
    url: str          # the dashboard page
    sweep_id: str | None = None
    index: int | None = None

    @staticmethod
    def run(run_id: str) -> "Folder":
        return Folder(records.prefix(run_id), run_id, f"/runs/{run_id}")

    @staticmethod
    def task(sweep_id: str, index: int) -> "Folder":
        from jobs.sweep import task_prefix

        return Folder(task_prefix(sweep_id, index), f"{sweep_id} task {index}", f"/sweeps/{sweep_id}/tasks/{index}",
                      sweep_id, index)

    @property
    def cache_name(self) -> str:
        return self.prefix.strip("/").replace("/", "+")


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def cost_of(manifest: dict | None, duration_s: float | None) -> float | None:
    """What a run cost (or has cost so far): the manifest's estimate once it ended (every VM
    it ran on), else the VM's price over the time so far."""
    manifest = manifest or {}
    if _num(manifest.get("cost_estimate")) and manifest.get("ended"):
        return float(manifest["cost_estimate"])
    price = manifest.get("price_per_hour")
    if _num(price) and _num(duration_s):
        return price * duration_s / 3600
    return float(manifest["cost_estimate"]) if _num(manifest.get("cost_estimate")) else None


def _listing(bucket, prefix: str, glob: str):
    from google.api_core.exceptions import NotFound

    try:
        return list(bucket.client.list_blobs(bucket, prefix=prefix, match_glob=glob, **records.call_options(quick=True)))
    except NotFound:  # no bucket yet
        return []


class Reader:
    """The bucket, read for the pages; thread-safe caches of immutable-by-generation objects."""

    def __init__(self, bucket, cache_dir: Path):
        self.bucket = bucket
        self.reports = Reports(bucket, cache_dir)
        self._manifests: dict[str, tuple[int, dict]] = {}  # name -> (generation, manifest)
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ JSON objects by generation
    def _json_at(self, blob) -> dict:
        """blob (from a listing) as JSON, read again only when its generation changed."""
        with self._lock:
            hit = self._manifests.get(blob.name)
        if hit and hit[0] == blob.generation:
            return hit[1]
        data = records.get_json(self.bucket, blob.name, quick=True) or {}
        if not isinstance(data, dict):
            data = {}
        with self._lock:
            self._manifests[blob.name] = (blob.generation, data)
        return data

    def _jsons(self, blobs) -> dict[str, dict]:
        with ThreadPoolExecutor(max_workers=8) as pool:
            return dict(zip((b.name for b in blobs), pool.map(self._json_at, blobs)))

    # ------------------------------------------------------------------ runs
    def runs_rows(self, limit: int = 100) -> list[dict]:
        rows = records.list_runs(self.bucket, limit=limit, quick=True)
        wanted = {records.prefix(r["run_id"]) + "manifest.json" for r in rows}
        blobs = [b for b in _listing(self.bucket, "runs/", "runs/*/manifest.json") if b.name in wanted]
        manifests = self._jsons(blobs)
        for r in rows:
            m = manifests.get(records.prefix(r["run_id"]) + "manifest.json") or {}
            r["cost"] = cost_of(m, r.get("duration_s"))
            r["zone"] = m.get("zone")
            r["gpu"] = r.get("gpu") or m.get("gpu")
            r["spot"] = m.get("spot")
            r["url"] = f"/runs/{r['run_id']}"
        return rows

    def run_exists(self, run_id: str) -> bool:
        p = records.prefix(run_id)
        return bool(_listing(self.bucket, p, p + "{status.json,manifest.json}"))

    # ------------------------------------------------------------------ sweeps
    def sweep_rows(self, limit: int = 20) -> list[dict]:
        from jobs import sweep

        try:
            ids = sweep.list_sweep_ids(self.bucket, quick=True)[:limit]
        except Exception as exc:
            from google.api_core.exceptions import NotFound

            if isinstance(exc, NotFound):
                return []
            raise
        blobs = [b for b in _listing(self.bucket, sweep.SWEEPS, sweep.SWEEPS + "*/manifest.json")
                 if b.name[len(sweep.SWEEPS):].split("/", 1)[0] in ids]
        manifests = self._jsons(blobs)
        with ThreadPoolExecutor(max_workers=8) as pool:
            task_rows = dict(zip(ids, pool.map(lambda i: sweep.task_rows(self.bucket, i, quick=True), ids)))
        out = []
        for sid in ids:
            m = manifests.get(sweep.sweep_prefix(sid) + "manifest.json") or {}
            n = len(m.get("tasks") or [])
            states = [r["state"] for r in task_rows[sid].values()]
            counts = {s: states.count(s) for s in sorted(set(states))}
            if n and len(states) < n:
                counts["waiting"] = n - len(states)
            bests = [r["best"] for r in task_rows[sid].values() if _num(r.get("best"))]
            out.append({"sweep_id": sid, "job": m.get("job") or "?", "created": m.get("created"), "tasks": n,
                        "counts": counts, "state": sweep_state(counts, n), "grid": m.get("grid") or {},
                        "best_accuracy": max(bests) if bests else None, "url": f"/sweeps/{sid}"})
        return out

    def sweep_detail(self, sweep_id: str) -> dict | None:
        from jobs import sweep

        m = records.get_json(self.bucket, sweep.sweep_prefix(sweep_id) + "manifest.json", quick=True)
        if not isinstance(m, dict):
            return None
        listed = sweep.task_rows(self.bucket, sweep_id, quick=True)
        tasks = []
        for t in m.get("tasks") or []:
            i = t.get("index")
            row = listed.get(i) or {}
            tasks.append({"index": i, "params": {k: (t.get("params") or {}).get(k) for k in m.get("grid") or {}},
                          "state": row.get("state") or "waiting", "attempts": row.get("attempts"),
                          "heartbeat": row.get("heartbeat"), "best_accuracy": row.get("best"),
                          "url": f"/sweeps/{sweep_id}/tasks/{i}"})
        states = [t["state"] for t in tasks]
        counts = {s: states.count(s) for s in sorted(set(states))}
        return {"sweep_id": sweep_id, "manifest": m, "tasks": tasks, "counts": counts,
                "state": sweep_state(counts, len(tasks))}

    def task_exists(self, sweep_id: str, index: int) -> bool:
        from jobs import sweep

        m = records.get_json(self.bucket, sweep.sweep_prefix(sweep_id) + "manifest.json", quick=True)
        return isinstance(m, dict) and any(t.get("index") == index for t in m.get("tasks") or [])

    # ------------------------------------------------------------------ one folder
    def facts(self, folder: Folder) -> dict:
        """The run page's fixed part: manifest, status, the summary when there is one."""
        p = folder.prefix
        manifest = records.get_json(self.bucket, p + "manifest.json", quick=True) or {}
        status = records.get_json(self.bucket, p + "status.json", quick=True) or {}
        summary = records.get_json(self.bucket, p + "summary.json", quick=True)
        if folder.sweep_id is not None and not manifest:  # a task's facts are in the sweep's manifest
            from jobs import sweep

            sm = records.get_json(self.bucket, sweep.sweep_prefix(folder.sweep_id) + "manifest.json", quick=True) or {}
            task = next((t for t in sm.get("tasks") or [] if t.get("index") == folder.index), {})
            manifest = {"job": sm.get("job"), "params": task.get("params"), "machine_type": sm.get("machine_type"),
                        "gpu": sm.get("gpu"), "spot": sm.get("spot"), "price_per_hour": sm.get("price_per_hour"),
                        "template": sm.get("template"), "code_hash": sm.get("code_hash"), "created": sm.get("created")}
        return {"manifest": manifest, "status": status, "summary": summary if isinstance(summary, dict) else None}

    def live(self, folder: Folder, m_offset: int, l_offset: int) -> dict | None:
        """What changed since (m_offset, l_offset); l_offset < 0: the log's tail. None: no such
        folder. The `tag` names this answer (an ETag): equal tags, equal answers. One listing
        call when nothing changed."""
        p = folder.prefix
        found = {b.name[len(p):]: b for b in _listing(self.bucket, p, p + "{" + ",".join(WATCHED) + "}")}
        if not found:
            return None
        st_blob, m_blob, l_blob = found.get("status.json"), found.get("metrics.jsonl"), found.get("logs/output.log")
        sizes = {k: (b.size or 0) for k, b in found.items()}
        tag = "-".join(str(x) for x in (
            st_blob.generation if st_blob else 0, m_blob.generation if m_blob else 0,
            l_blob.generation if l_blob else 0,
            found["summary.json"].generation if "summary.json" in found else 0, m_offset, l_offset,
            _listed_state(st_blob)))  # a run goes `lost` with no object changing
        return {"tag": tag, "read": lambda: self._read_live(folder, found, sizes, m_offset, l_offset)}

    def _read_live(self, folder: Folder, found: dict, sizes: dict, m_offset: int, l_offset: int) -> dict:
        p = folder.prefix
        status = records.get_json(self.bucket, p + "status.json", quick=True) if "status.json" in found else None
        status = status if isinstance(status, dict) else {}
        state = records.effective_state(status) if status else "waiting"
        final = state in records.FINAL
        # metrics: whole lines from the page's offset on
        rows, m_next, m_size = [], max(0, m_offset), sizes.get("metrics.jsonl", 0)
        if m_size < m_next:  # rewritten shorter (not how runs write it): start again
            m_next, rows_reset = 0, True
        else:
            rows_reset = False
        if m_size > m_next:
            end = min(m_size, m_next + METRICS_CHUNK_BYTES)
            data = self._range(p + "metrics.jsonl", m_next, end)
            cut = data.rfind(b"\n") + 1
            if end == m_size and final and cut < len(data):  # a last line without its newline
                cut = len(data)
            for line in data[:cut].decode("utf-8", "replace").splitlines():
                try:
                    row = json.loads(line)
                except ValueError:
                    continue
                if isinstance(row, dict):
                    rows.append(row)
            m_next += cut
        # the log: its tail first, then what was added
        text, skipped, l_size = "", 0, sizes.get("logs/output.log", 0)
        l_next = l_offset
        if l_next < 0 or l_next > l_size:
            l_next = max(0, l_size - LOG_TAIL_BYTES)
            skipped = l_next
        elif l_size - l_next > LOG_CHUNK_BYTES:
            skipped = l_size - LOG_CHUNK_BYTES - l_next
            l_next = l_size - LOG_CHUNK_BYTES
        if l_size > l_next:
            data = self._range(p + "logs/output.log", l_next, l_size)
            if skipped:  # start at a line
                nl = data.find(b"\n")
                if 0 <= nl < len(data) - 1:
                    skipped += nl + 1
                    l_next += nl + 1
                    data = data[nl + 1:]
            cut = len(data) if final else data.rfind(b"\n") + 1  # whole lines while it runs
            text = data[:cut].decode("utf-8", "replace")
            l_next += cut
        summary = records.get_json(self.bucket, p + "summary.json", quick=True) if "summary.json" in found else None
        return {"state": state, "final": final, "exit_code": status.get("exit_code"), "message": status.get("message"),
                "heartbeat": status.get("heartbeat"), "started": status.get("started"), "ended": status.get("ended"),
                "duration_s": records.duration_s(status) if status else None,
                "best_accuracy": records.best_accuracy(summary if isinstance(summary, dict) else None, None),
                "metrics": rows, "metrics_reset": rows_reset, "m": m_next,
                "log": text, "log_skipped": skipped, "l": l_next,
                "report": folder.url + "/report/" if final else None}

    def _range(self, name: str, start: int, end: int) -> bytes:
        from google.api_core.exceptions import NotFound

        try:
            return self.bucket.blob(name).download_as_bytes(start=start, end=end - 1, **records.call_options(quick=True))
        except NotFound:
            return b""


def _listed_state(blob) -> str:
    """The state status.json's row (its metadata, in the listing) says, heartbeat rule applied."""
    from trainer.report import ROW_KEY

    try:
        row = json.loads((blob.metadata or {})[ROW_KEY]) if blob is not None else {}
    except (KeyError, ValueError, TypeError):
        return "?"
    if not isinstance(row, dict):
        return "?"
    st = {k: row.get(k) for k in ("state", "started", "ended", "heartbeat", "heartbeat_interval")}
    return records.effective_state(st) or "?"


def sweep_state(counts: dict, n: int) -> str:
    """One word for a sweep from its tasks' states."""
    if not n:
        return "empty"
    live = sum(counts.get(s, 0) for s in ("running", "provisioning", "syncing"))
    if live:
        return "running"
    if counts.get("waiting"):
        return "queued" if counts.get("waiting") == n else "running"
    if counts.get("succeeded") == n:
        return "succeeded"
    for s in ("failed", "lost", "cancelled", "preempted"):
        if counts.get(s):
            return s
    return "running"


class Reports:
    """Finished runs pulled once into CACHE/<folder>/ and rendered there (jobs/report.py)."""

    MARK = ".ferry-dashboard-status"  # the status.json generation the cached copy was pulled at

    def __init__(self, bucket, cache_dir: Path):
        self.bucket, self.cache_dir = bucket, Path(cache_dir)
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self._render = threading.Lock()  # matplotlib's pyplot is not thread-safe

    def _lock(self, key: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(key, threading.Lock())

    def folder_of(self, folder: Folder) -> Path | None:
        """The rendered report's folder, pulling and rendering it first when needed; None while
        the run is not over (or has no status)."""
        blobs = _listing(self.bucket, folder.prefix, folder.prefix + "status.json")
        if not blobs:
            return None
        gen = str(blobs[0].generation)
        target = self.cache_dir / self.bucket.name / folder.cache_name
        mark = target / self.MARK
        with self._lock(folder.prefix):
            if mark.exists() and mark.read_text() == gen and (target / "report.html").exists():
                return target
            status = records.get_json(self.bucket, folder.prefix + "status.json", quick=True) or {}
            if records.effective_state(status) not in records.FINAL:
                return None
            import shutil

            from jobs import report
            from jobs.pull import download_prefix

            fresh = target.with_name(target.name + ".new")
            shutil.rmtree(fresh, ignore_errors=True)
            download_prefix(self.bucket, folder.prefix, fresh, what=folder.title, skip_folders=("checkpoints",))
            with self._render:
                report.render(fresh)
            (fresh / self.MARK).write_text(gen)
            shutil.rmtree(target, ignore_errors=True)
            fresh.rename(target)
            return target
