"""Shapes every Compute Engine resource shares: API links, ids, fingerprints, timestamps."""

from __future__ import annotations

import base64
import os
import random
import time
from datetime import datetime, timezone

API = "https://www.googleapis.com/compute/v1"



def now_rfc3339(t: float | None = None) -> str:
    return datetime.fromtimestamp(time.time() if t is None else t, timezone.utc).isoformat(timespec="milliseconds")


def new_id() -> str:
    return str(random.randrange(10**18, 10**19))


def fingerprint() -> str:
    return base64.b64encode(os.urandom(8)).decode()


def last(url_or_name: str) -> str:
    return str(url_or_name).rstrip("/").rsplit("/", 1)[-1]


def zone_link(project: str, zone: str) -> str:
    return f"{API}/projects/{project}/zones/{zone}"
