"""SIGTERM (how ferry's runner stops a job: preemption, cancel) as a clean stop between epochs.

An epoch ends with three writes that belong together: its checkpoint, its line on stdout and
its metrics line. `commit()` holds a SIGTERM until all three are done, so a stopped job's
log, metrics and newest checkpoint always agree: a resumed job neither repeats nor misses an
epoch line. Outside a commit SIGTERM stops the job at once (KeyboardInterrupt, exit 130).
"""

from __future__ import annotations

import contextlib
import signal
import threading

_held = False
_pending = False


def _on_sigterm(signum, frame):
    global _pending
    if _held:
        _pending = True
        return
    raise KeyboardInterrupt("SIGTERM")


def install() -> None:
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)


@contextlib.contextmanager
def commit():
    global _held, _pending
    _held = True
    try:
        yield
    finally:
        _held = False
        if _pending:
            _pending = False
            raise KeyboardInterrupt("SIGTERM")
