"""The trainer's one error type: a one-line message for the user, and an exit code.

`python -m trainer` prints `trainer: error: <message>` and exits with `exit_code`, never a
traceback. 2 = bad input (options, missing or corrupt data), 1 = the run itself failed.
"""

from __future__ import annotations


class TrainerError(Exception):
    exit_code = 2

    def __init__(self, message: str, exit_code: int | None = None):
        super().__init__(" ".join(str(message).split()))
        if exit_code is not None:
            self.exit_code = exit_code


class DataError(TrainerError):
    """Data missing, truncated, corrupt or failing its checksum (exit 2)."""
