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
