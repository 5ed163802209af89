"""Whether a run is alive, as its record in the bucket says (gs://BUCKET/runs/<id>/status.json).

One rule for everyone: `runs` shows a dead run as `lost` (jobs/runs.py) and `cleanup` deletes
the VM of a run that is over or lost (infra/commands.py). A run that is not final is lost once
its heartbeat is stale: the runner on the VM beats every ~10 s; while `ferry run` itself
provisions or syncs it writes a beat at each step, and provisioning can wait on the cloud.
"""

from __future__ import annotations

from datetime import datetime, timezone

from infra.times import parse_time

STATES = ("provisioning", "syncing", "running", "succeeded", "failed", "cancelled", "preempted", "lost")
FINAL = ("succeeded", "failed", "cancelled", "preempted", "lost")
LOST_AFTER_S = 120.0          # running: the runner heartbeats every ~10 s
LOST_AFTER_SETUP_S = 1800.0   # provisioning/syncing: `ferry run` may be waiting on the cloud


def effective_state(status: dict | None, now: datetime | None = None) -> str:
    """The state, with a stale heartbeat on an unfinished run turned into `lost`."""
    if not status:
        return "lost"
    state = status.get("state") or "lost"
    if state in FINAL:
        return state
    beat = parse_time(status.get("heartbeat"))
    if beat is None:
        return state
    limit = (LOST_AFTER_SETUP_S if state in ("provisioning", "syncing")
             else max(LOST_AFTER_S, 6 * float(status.get("heartbeat_interval") or 10)))
    if ((now or datetime.now(timezone.utc)) - beat).total_seconds() > limit:
        return "lost"
    return state
