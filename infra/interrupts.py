"""Signals: SIGINT, SIGTERM and SIGHUP mean the same thing to every command.

A closed terminal (SIGHUP), a cancelled CI job or `timeout` (SIGTERM) and Ctrl-C (SIGINT) all
raise `Interrupt` (a KeyboardInterrupt, so every `except KeyboardInterrupt` path that tears
down what a command created handles the three alike) and the command exits 128 + the signal
(130 / 143 / 129).

Only the first signal raises. Any later one, and any signal that arrives inside `shielded()`
(teardown: deleting a VM, recording a run's end), is remembered and answered with a line on
stderr, never with an exception: a second Ctrl-C must not leave a half-deleted VM running.
`check()` raises a remembered signal between steps; `received()` tells the command line
which signal to exit with.
"""

from __future__ import annotations

import signal
import sys
import threading
from contextlib import contextmanager

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
NAMES = {signal.SIGINT: "SIGINT", signal.SIGTERM: "SIGTERM", signal.SIGHUP: "SIGHUP"}


class Interrupt(KeyboardInterrupt):
    """The first SIGINT / SIGTERM / SIGHUP a command received."""

    def __init__(self, signum: int = signal.SIGINT):
        super().__init__(NAMES.get(signum, str(signum)))
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + int(self.signum)


_lock = threading.Lock()
_received: list[int] = []       # every signal, in order
_shield: list[str] = []         # messages of the shielded sections we are in (innermost last)
_raised = False                 # an Interrupt was raised already (later signals only print)
_installed = False


def _write(text: str) -> None:
    try:  # after SIGHUP the terminal may be gone: never let a message abort a teardown
        sys.stderr.write(text + "\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def _handler(signum, frame) -> None:
    global _raised
    with _lock:
        _received.append(signum)
        message = _shield[-1] if _shield else None
        deliver = message is None and not _raised
        if deliver:
            _raised = True
    if not deliver:
        _write(f"ferry: {NAMES.get(signum, signum)}: " + (message or "already stopping; please wait"))
        return
    raise Interrupt(signum)


def check() -> None:
    """Raise the Interrupt of a signal that arrived inside a shielded section, if none was
    raised yet (call between steps of a command, never inside a teardown)."""
    global _raised
    with _lock:
        pending = bool(_received) and not _raised and not _shield
        if pending:
            _raised = True
            signum = _received[0]
    if pending:
        raise Interrupt(signum)


def install() -> dict:
    """Route SIGINT, SIGTERM and SIGHUP through `_handler` (main thread only) and forget earlier
    signals -> the previous handlers, for `restore()`."""
    global _installed
    if threading.current_thread() is not threading.main_thread():
        return {}
    reset()
    previous = {sig: signal.getsignal(sig) for sig in SIGNALS}
    for sig in SIGNALS:
        signal.signal(sig, _handler)
    _installed = True
    return previous


def restore(previous: dict) -> None:
    """Put back the handlers `install()` replaced (a command run in-process, e.g. by tests)."""
    global _installed
    for sig, handler in previous.items():
        signal.signal(sig, handler)
    if previous:
        _installed = False


def received() -> int | None:
    """The first signal this process received, or None."""
    with _lock:
        return _received[0] if _received else None


def exit_code(default: int = 130) -> int:
    sig = received()
    return 128 + int(sig) if sig else default


def reset() -> None:
    """Forget received signals (tests that run several commands in one process)."""
    global _raised
    with _lock:
        _received.clear()
        _raised = False


@contextmanager
def shielded(message: str):
    """Inside, a signal prints `message` and is remembered instead of raising."""
    installed_here = False
    if not _installed and threading.current_thread() is threading.main_thread():
        install()  # library use without the CLI: still never abort a teardown
        installed_here = True
    with _lock:
        _shield.append(message)
    try:
        yield
    finally:
        with _lock:
            _shield.pop()
        if installed_here and not _shield:
            _uninstall()


def _uninstall() -> None:
    global _installed
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    _installed = False
