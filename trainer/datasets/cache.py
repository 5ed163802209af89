"""Cache of decoded arrays, keyed by the source files' checksums and the decoding parameters.

Location: `--cache-dir`, else `$FERRY_TRAINER_CACHE`, else `$FERRY_HOME/cache/trainer`, else
`~/.cache/ferry-trainer`. `FERRY_TRAINER_CACHE=off` disables it. Entries are .npz files
written atomically; a corrupt entry is rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np


def cache_dir(override: str | Path | None = None) -> Path | None:
    value = str(override) if override else os.environ.get("FERRY_TRAINER_CACHE")
    if value:
        return None if value.lower() in ("off", "none", "0") else Path(value).expanduser()
    home = os.environ.get("FERRY_HOME")
    if home:
        return Path(home).expanduser() / "cache" / "trainer"
    return Path.home() / ".cache" / "ferry-trainer"


def key_of(parts: dict) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]


def cached(kind: str, parts: dict, build: Callable[[], dict], directory: Path | None) -> tuple[dict, bool]:
    """Arrays for `parts` from the cache, or `build()` them and store. Returns (arrays, hit)."""
    if directory is None:
        return build(), False
    path = directory / f"{kind}-{key_of(parts)}.npz"
    if path.exists():
        try:
            with np.load(path) as f:
                return {k: f[k] for k in f.files}, True
        except (OSError, ValueError, zipfile.BadZipFile, EOFError):
            pass  # corrupt entry: rebuild below
    arrays = build()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only cache is not an error
    return arrays, False
