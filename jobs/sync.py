"""Code sync by content hash: `trainer/`, the on-VM runner and (a job file's own) workdir to
`ferry/code/` on the VM. A job whose workdir is its own (not ferry's trainer/) has it under
`ferry/code/work/`, with its own `.ferryignore` at the workdir's root; ferry's trainer/ travels
with every job, so a user's job can import ferry's data loaders (`from trainer.datasets import mnist`).

The remote side keeps `ferry/code/.ferry-manifest.json` ({path: sha256}). A first sync (no
manifest) sends one tar.gz archive, unpacked there by python3's tarfile; later syncs send
only the files whose hash changed (many changes: one archive of just those) and remove the
files that are gone. An unchanged tree sends no file data. `.ferryignore` at the repository
root (gitignore-style patterns) is honoured; a payload above FERRY_SYNC_WARN_MB (default 20)
is announced by a warning before it is sent.
"""

from __future__ import annotations

import fnmatch
import hashlib
import io
import json
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from jobs.remote import check

REPO = Path(__file__).resolve().parent.parent
DEST = "ferry/code"
MANIFEST = ".ferry-manifest.json"
IGNORE_FILE = ".ferryignore"
DEFAULT_IGNORE = ("__pycache__/", "*.pyc", "*.pyo", ".DS_Store", ".pytest_cache/", "*.egg-info/", "*.ferry-tmp")
ARCHIVE_OVER = 16  # more changed files than this: send one archive of them
# What goes to the VM: (local path relative to the repository, remote name under ferry/code)
SOURCES = (("trainer", "trainer"), ("jobs/runner.py", "ferry_runner.py"), ("jobs/selftest.py", "ferry_selftest.py"))


@dataclass
class SyncResult:
    code_hash: str
    mode: str  # "archive" (first sync), "files", "archive-of-changes", or "none"
    files_sent: int = 0
    bytes_sent: int = 0
    deleted: list = field(default_factory=list)
    total_files: int = 0


def read_ignore(root: Path) -> list[str]:
    patterns = list(DEFAULT_IGNORE)
    path = root / IGNORE_FILE
    if path.is_file():
        for line in path.read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                patterns.append(line)
    return patterns


def ignored(rel: str, patterns: list[str]) -> bool:
    """gitignore-like: `dir/` matches a folder at any depth, `a/b*` a path, `*.x` a name."""
    parts = rel.split("/")
    for pat in patterns:
        if pat.endswith("/"):
            name = pat.rstrip("/")
            if any(fnmatch.fnmatchcase(p, name) for p in parts[:-1]) or fnmatch.fnmatchcase(rel, name + "/*"):
                return True
        elif "/" in pat.strip("/"):
            segs = pat.strip("/").split("/")
            if len(segs) <= len(parts) and all(fnmatch.fnmatchcase(p, s) for p, s in zip(parts, segs)) and len(segs) == len(parts):
                return True
        elif any(fnmatch.fnmatchcase(p, pat) for p in parts):
            return True
    return False


def local_files(root: Path = REPO, sources=SOURCES) -> dict[str, Path]:
    """{remote relative path: local file} after ignore rules."""
    patterns = read_ignore(root)
    out: dict[str, Path] = {}
    for local, remote in sources:
        src = root / local
        if src.is_file():
            if not ignored(local, patterns):
                out[remote] = src
            continue
        if not src.is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(src):
            dirnames.sort()
            for name in sorted(filenames):
                path = Path(dirpath) / name
                rel_local = path.relative_to(root).as_posix()
                if ignored(rel_local, patterns):
                    continue
                out[remote + "/" + path.relative_to(src).as_posix()] = path
    return out


WORK = "work"  # a job file's own workdir, under ferry/code/
WORKDIR_IGNORE = (".git/", ".venv/", "venv/", "node_modules/", ".ipynb_checkpoints/", IGNORE_FILE)


def workdir_files(workdir: Path) -> dict[str, Path]:
    """{work/relative path: local file} of a job's own workdir, after its .ferryignore."""
    workdir = Path(workdir)
    patterns = [*WORKDIR_IGNORE, *read_ignore(workdir)]
    out: dict[str, Path] = {}
    for dirpath, dirnames, filenames in os.walk(workdir):
        here = Path(dirpath).relative_to(workdir).as_posix()
        here = "" if here == "." else here + "/"
        dirnames[:] = sorted(d for d in dirnames if not ignored(f"{here}{d}/.", patterns))
        for name in sorted(filenames):
            path = Path(dirpath) / name
            rel = path.relative_to(workdir).as_posix()
            if ignored(rel, patterns) or not path.is_file():
                continue
            out[f"{WORK}/{rel}"] = path
    return out


def job_files(job=None) -> dict[str, Path]:
    """Everything a job needs on the VM: ferry's code, and the job's own workdir when it has one."""
    files = local_files()
    if job is not None and getattr(job, "own_workdir", False):
        files.update(workdir_files(job.workdir))
    return files


def workdir_hash(files: dict[str, Path]) -> str:
    """The code hash of the job's own workdir alone (a setup's cache key)."""
    return code_hash(manifest({k: v for k, v in files.items() if k.startswith(WORK + "/")}))


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def manifest(files: dict[str, Path]) -> dict[str, str]:
    return {rel: sha256(path) for rel, path in sorted(files.items())}


def code_hash(m: dict[str, str]) -> str:
    h = hashlib.sha256()
    for rel, digest in sorted(m.items()):
        h.update(f"{rel}\0{digest}\n".encode())
    return h.hexdigest()[:16]


def archive(files: dict[str, Path], names) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=6) as tar:
        for rel in sorted(names):
            info = tar.gettarinfo(str(files[rel]), arcname=rel)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mtime = 0
            with open(files[rel], "rb") as f:
                tar.addfile(info, f)
    return buf.getvalue()


def _warn_threshold() -> int:
    try:
        return int(float(os.environ.get("FERRY_SYNC_WARN_MB", "20")) * 1e6)
    except ValueError:
        return 20_000_000


UNPACK = (
    "import sys, tarfile, os\n"
    "a, d = sys.argv[1], sys.argv[2]\n"
    "with tarfile.open(a) as t:\n"
    "    kw = {'filter': 'data'} if hasattr(tarfile, 'data_filter') else {}\n"
    "    t.extractall(d, **kw)\n"
    "os.remove(a)\n"
)


def sync(remote, root: Path = REPO, dest: str = DEST, warn=None, sources=SOURCES, files=None) -> SyncResult:
    """Make `dest` on the remote hold exactly the local tree (or `files`, {remote: local});
    send as little as possible."""
    files = local_files(root, sources) if files is None else files
    local_m = manifest(files)
    digest = code_hash(local_m)
    raw = remote.read(f"{dest}/{MANIFEST}")
    try:
        remote_m = json.loads(raw)["files"] if raw else None
    except (ValueError, KeyError, TypeError):
        remote_m = None
    result = SyncResult(code_hash=digest, mode="none", total_files=len(files))
    if remote_m is None:
        changed = sorted(local_m)
        gone = []
    else:
        changed = sorted(rel for rel, d in local_m.items() if remote_m.get(rel) != d)
        gone = sorted(rel for rel in remote_m if rel not in local_m)
    if not changed and not gone:
        return result
    payload = sum(files[rel].stat().st_size for rel in changed)
    use_archive = remote_m is None or len(changed) > ARCHIVE_OVER
    if use_archive:
        blob = archive(files, changed)
        if len(blob) > _warn_threshold() and warn:
            warn(f"syncing {len(blob) / 1e6:.1f} MB of code ({len(changed)} files); add patterns to {IGNORE_FILE} to leave files out")
        tmp = f"{dest}/.ferry-sync.tgz"
        remote.write(tmp, blob)
        check(remote.run(["python3", "-c", UNPACK, tmp, dest]), "unpacking the code archive")
        result.mode = "archive" if remote_m is None else "archive-of-changes"
        result.bytes_sent = len(blob)
    else:
        if payload > _warn_threshold() and warn:
            warn(f"syncing {payload / 1e6:.1f} MB of code ({len(changed)} files); add patterns to {IGNORE_FILE} to leave files out")
        for rel in changed:
            data = files[rel].read_bytes()
            remote.write(f"{dest}/{rel}", data, mode=files[rel].stat().st_mode & 0o777)
            result.bytes_sent += len(data)
        result.mode = "files"
    for rel in gone:
        remote.remove(f"{dest}/{rel}")
    result.files_sent = len(changed)
    result.deleted = gone
    remote.write(f"{dest}/{MANIFEST}", json.dumps({"code_hash": digest, "files": local_m}, indent=1).encode())
    return result
