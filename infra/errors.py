"""Errors every ferry command raises, each with the exit code the design fixes.

cli.py turns any FerryError into one line on stderr and its exit code; nothing else
should print tracebacks at the user.
"""

from __future__ import annotations

import difflib
from typing import Iterable


class FerryError(Exception):
    """A failure with a one-line message for the user and an exit code."""

    exit_code = 3

    def __init__(self, message: str, *, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:  # one line, always
        text = self.message if not self.hint else f"{self.message} ({self.hint})"
        return " ".join(text.split())


class JobFailed(FerryError):
    """The job itself failed (non-zero exit on the VM)."""

    exit_code = 1


class UsageError(FerryError):
    """Bad usage or input: nothing was created, changed or deleted."""

    exit_code = 2


class CloudError(FerryError):
    """Quota, stockout in every zone tried, auth, unreachable VM, ..."""

    exit_code = 3


class NoCapacity(CloudError):
    """No zone tried could create the VM (stockouts, quota): `run --fallback on-demand` may
    then try on-demand instead of spot."""


class Interrupted(FerryError):
    """Cancelled by a signal: exit 128 + the signal (130 Ctrl-C, 143 SIGTERM, 129 SIGHUP).
    `said=True`: the command already told the user (e.g. `RUN cancelled in 7 s`); cli.py then
    prints nothing more."""

    def __init__(self, message: str, *, hint: str | None = None, said: bool = False):
        super().__init__(message, hint=hint)
        self.said = said

    @property
    def exit_code(self) -> int:
        from infra import interrupts

        return interrupts.exit_code(130)


_CLIENT_MODULES = ("google.api_core", "google.auth", "google.resumable_media", "requests", "urllib3")
_SERVICES = (("storage/v1", "Cloud Storage"), ("/upload/storage/", "Cloud Storage"),
             ("/compute/v1/", "Compute Engine"), ("batch.googleapis", "Cloud Batch"), ("/v1/projects/", "Google Cloud"))


def cloud_error_of(exc: BaseException) -> CloudError | None:
    """An exception a Google client (or its HTTP transport) raised and no command turned into
    a FerryError — retries given up on an outage (RetryError), a 5xx, a refused connection —
    as a CloudError naming the service; None for anything else (a bug: its traceback stays)."""
    if not any(c.__module__.startswith(_CLIENT_MODULES) for c in type(exc).__mro__):
        return None
    text = " ".join(str(exc).split()) or type(exc).__name__
    service = next((name for needle, name in _SERVICES if needle in text), "Google Cloud")
    if len(text) > 300:
        text = text[:297] + "..."
    return CloudError(f"{service} request failed: {text}",
                      hint="the service is down or unreachable from here; try again later, -v shows every API call")


_SAID_RETRYING: set = set()


def say_retrying(service: str, answer: str, seconds: float) -> None:
    """Say once per process on stderr that a client is retrying SERVICE's ANSWER (e.g. "503
    Service Unavailable") for up to SECONDS: an outage is a line, not a silent wait."""
    if service in _SAID_RETRYING:
        return
    _SAID_RETRYING.add(service)
    import sys

    span = f"{round(seconds / 60):g} minutes" if seconds >= 120 else f"{round(seconds):g} s"
    print(f"ferry: {service} answered {answer}; retrying for up to {span} (Ctrl-C stops)", file=sys.stderr, flush=True)


def unknown(kind: str, value: str, valid: Iterable[str]) -> UsageError:
    """`unknown GPU 'tt4' (did you mean: t4, p4?; valid: ...)` as a UsageError."""
    valid = sorted(set(valid))
    close = difflib.get_close_matches(value, valid, n=3, cutoff=0.5)
    parts = []
    if close:
        parts.append("did you mean: " + ", ".join(close) + "?")
    if valid:
        parts.append("valid: " + ", ".join(valid[:20]) + (", ..." if len(valid) > 20 else ""))
    else:
        parts.append(f"there is no {kind} to choose from")
    return UsageError(f"unknown {kind} {value!r}", hint="; ".join(parts))
