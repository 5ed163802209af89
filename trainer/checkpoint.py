"""Checkpoints: after every epoch a job writes everything needed to continue bit for bit.

One checkpoint is one file, `OUT/checkpoints/ckpt-NNNNNN.ckpt` (NNNNNN: the epochs completed
over the whole job, from 1), a zip archive (stored, not compressed) of:

    meta.json      format, job, step, identity (parameters and code hash), the job's state
    <name>.npy     arrays (numpy's .npy format), e.g. W and b
    files/<name>   opaque files, e.g. a TensorFlow checkpoint

It is written to a hidden temporary name and renamed into place, so a preemption during the
write never leaves a torn checkpoint under a checkpoint's name; zip's CRC32 of every member
catches one torn or corrupted later. `--resume DIR` reads the newest checkpoint in DIR that is
whole, says so when it had to fall back to an older one, and refuses one written with other
parameters or other code (naming the difference).

Only the standard library at import time (numpy only for arrays), so that any job shipped
with the trainer (e.g. ferry's selftest) can write and read the same format; the on-VM
runner and `ferry resume` read meta.json with zipfile alone.
"""

from __future__ import annotations

import io
import json
import os
import re
import time
import zipfile
from pathlib import Path

from trainer.errors import TrainerError

FORMAT = "ferry-checkpoint/1"
DIRNAME = "checkpoints"
PATTERN = re.compile(r"^ckpt-(\d{6,})\.ckpt$")
CODE_HASH_ENV = "FERRY_CODE_HASH"  # set by ferry's runner: the synced code's hash


def name(step: int) -> str:
    return f"ckpt-{step:06d}.ckpt"


def step_of(path) -> int | None:
    m = PATTERN.match(Path(path).name)
    return int(m.group(1)) if m else None


def candidates(directory) -> list[Path]:
    """The checkpoints in `directory`, newest first."""
    d = Path(directory)
    if not d.is_dir():
        return []
    found = [(step_of(p), p) for p in d.iterdir() if p.is_file() and step_of(p) is not None]
    return [p for _, p in sorted(found, reverse=True)]


def write(directory, step: int, meta: dict, arrays: dict | None = None, files: dict | None = None) -> Path:
    """Write checkpoint `step` atomically -> its path."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    path = d / name(step)
    tmp = d / f".{path.name}.{os.getpid()}.tmp"
    body = {**meta, "format": FORMAT, "step": step, "arrays": sorted(arrays or {}), "files": sorted(files or {})}
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("meta.json", json.dumps(body, default=_jsonable))  # key order kept: records are restored byte for byte
        if arrays:
            import numpy as np

            for key, value in arrays.items():
                buf = io.BytesIO()
                np.lib.format.write_array(buf, np.ascontiguousarray(value), allow_pickle=False)
                zf.writestr(f"{key}.npy", buf.getvalue())
        for key, data in (files or {}).items():
            zf.writestr(f"files/{key}", data)
    os.replace(tmp, path)
    return path


def read_meta(path) -> dict:
    """meta.json of a checkpoint (a path or a binary file object; CRC-checked); raises
    TrainerError when torn or not one."""
    label = Path(path).name if isinstance(path, (str, os.PathLike)) else "checkpoint"
    try:
        with zipfile.ZipFile(path) as zf:
            meta = json.loads(zf.read("meta.json"))
    except (OSError, zipfile.BadZipFile, KeyError, ValueError, EOFError) as exc:
        raise TrainerError(f"checkpoint {label} is corrupt ({_why(exc)})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise TrainerError(f"checkpoint {label} is not a {FORMAT} checkpoint")
    return meta


def read(path) -> tuple[dict, dict, dict]:
    """(meta, arrays, files) of a checkpoint, every member CRC-checked; raises TrainerError."""
    meta = read_meta(path)
    arrays, files = {}, {}
    try:
        with zipfile.ZipFile(path) as zf:
            if meta.get("arrays"):
                import numpy as np
            for key in meta.get("arrays", []):
                arrays[key] = np.lib.format.read_array(io.BytesIO(zf.read(f"{key}.npy")), allow_pickle=False)
            for key in meta.get("files", []):
                files[key] = zf.read(f"files/{key}")
    except (OSError, zipfile.BadZipFile, KeyError, ValueError, EOFError) as exc:
        raise TrainerError(f"checkpoint {Path(path).name} is corrupt ({_why(exc)})") from None
    return meta, arrays, files


def load_latest(directory, say=print) -> tuple[Path, dict, dict, dict]:
    """The newest whole checkpoint in `directory` -> (path, meta, arrays, files); falls back
    to an older one when the newest is corrupt (and says so); TrainerError when none is whole."""
    found = candidates(directory)
    if not found:
        raise TrainerError(f"--resume {directory}: no checkpoint there (files named ckpt-NNNNNN.ckpt)")
    for i, path in enumerate(found):
        try:
            meta, arrays, files = read(path)
        except TrainerError as exc:
            older = found[i + 1].name if i + 1 < len(found) else None
            say(f"warning: {exc}; " + (f"falling back to {older}" if older else "no older checkpoint"))
            continue
        return path, meta, arrays, files
    raise TrainerError(f"--resume {directory}: every checkpoint there is corrupt")


def difference(saved: dict, current: dict) -> str | None:
    """How a checkpoint's identity differs from this run's, in words; None when it matches.
    A missing code hash on either side is not a difference (e.g. a run outside ferry)."""
    diffs = []
    if saved.get("job") != current.get("job"):
        diffs.append(f"job {saved.get('job')!r} (checkpoint) vs {current.get('job')!r} (this run)")
    sp, cp = saved.get("params") or {}, current.get("params") or {}
    for key in sorted(set(sp) | set(cp)):
        if sp.get(key) != cp.get(key):
            diffs.append(f"{key}={sp.get(key)!r} (checkpoint) vs {key}={cp.get(key)!r} (this run)")
    sc, cc = saved.get("code_hash"), current.get("code_hash")
    if sc and cc and sc != cc:
        diffs.append(f"code {sc} (checkpoint) vs {cc} (this run)")
    return "; ".join(diffs) or None


def code_hash() -> str | None:
    return os.environ.get(CODE_HASH_ENV) or None


class Checkpointer:
    """A job's checkpoints: `resume` (a directory, or None) restores the newest one, checked
    against `identity` ({"job", "params", "code_hash"}); `save` writes the next one and times it."""

    def __init__(self, out, identity: dict, resume=None, say=print):
        self.dir = Path(out) / DIRNAME
        self.identity = identity
        self.step = 0
        self.seconds: list[float] = []
        self.bytes = 0
        self.meta = self.arrays = self.files = None
        self.resumed_from = None
        if resume is not None:
            path, meta, arrays, files = load_latest(resume, say)
            why = difference(meta.get("identity") or {}, identity)
            if why:
                raise TrainerError(f"--resume {resume}: {path.name} belongs to another run: {why}")
            self.meta, self.arrays, self.files = meta, arrays, files
            self.step = int(meta["step"])
            self.resumed_from = path.name
            if Path(resume).resolve() != self.dir.resolve():  # continue the numbering where we write
                self.dir.mkdir(parents=True, exist_ok=True)

    @property
    def state(self) -> dict | None:
        return None if self.meta is None else self.meta.get("state")

    def save(self, state: dict, arrays: dict | None = None, files: dict | None = None) -> Path:
        t = time.perf_counter()
        self.step += 1
        path = write(self.dir, self.step, {"job": self.identity.get("job"), "identity": self.identity, "state": state},
                     arrays, files)
        self.seconds.append(time.perf_counter() - t)
        self.bytes = path.stat().st_size
        return path

    def summary(self, epoch_seconds: float | None = None) -> dict:
        out = {"count": len(self.seconds), "bytes": self.bytes, "dir": str(self.dir), "resumed_from": self.resumed_from}
        if self.seconds:
            med = sorted(self.seconds)[len(self.seconds) // 2]
            out["median_seconds"] = round(med, 6)
            if epoch_seconds:
                out["share_of_epoch"] = round(med / epoch_seconds, 5)
        return out


def _jsonable(value):
    try:
        import numpy as np

        if isinstance(value, np.generic):
            return value.item()
    except ImportError:
        pass
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _why(exc: BaseException) -> str:
    text = str(exc) or exc.__class__.__name__
    return text if len(text) < 120 else text[:117] + "..."
