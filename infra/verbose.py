"""`-v`: every API call and every remote command on stderr, one line each, as it happens.

The official clients (Compute Engine, Cloud Storage, Cloud Batch) all send HTTP through
urllib3, which logs each request it completes at DEBUG: that record, reworded, is the line
(`api  GET https://compute.googleapis.com/compute/v1/... -> 200`). Remote commands log to
`ferry.ssh` (jobs/remote.py). Nothing here changes what is sent; without `-v` it is never
installed and costs nothing.
"""

from __future__ import annotations

import logging
import sys
import time

_URLLIB3 = "urllib3.connectionpool"
_T0 = time.monotonic()


class _Lines(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = f"{time.monotonic() - _T0:7.2f}s"
        if record.name == _URLLIB3 and isinstance(record.args, tuple) and len(record.args) == 8 \
                and str(record.msg).startswith('%s://%s:%s "%s %s %s"'):
            scheme, host, port, method, url, _version, status, _length = record.args
            default = {"https": 443, "http": 80}.get(scheme)
            where = f"{scheme}://{host}" + ("" if port in (None, default) else f":{port}")
            return f"{stamp} api  {method} {where}{url} -> {status}"
        if record.name == _URLLIB3:
            return ""  # connection set-up chatter: not a call
        return f"{stamp} {record.name.removeprefix('ferry.')}  {record.getMessage()}"


class _Skip(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.name != _URLLIB3 or str(record.msg).startswith('%s://%s:%s "%s %s %s"')


_INSTALLED: list = []


def install(stream=None) -> None:
    """Show each API call and remote command on STREAM (stderr) from now on."""
    if _INSTALLED:
        return
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(_Lines())
    handler.addFilter(_Skip())
    for name in (_URLLIB3, "ferry.ssh", "ferry.verbose"):
        logger = logging.getLogger(name)
        logger.setLevel(logging.DEBUG)
        logger.addHandler(handler)
        logger.propagate = False
    _INSTALLED.append(handler)


def enabled() -> bool:
    return bool(_INSTALLED)
