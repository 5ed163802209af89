"""Datasets in the bucket: gs://BUCKET/datasets/<name>/, checksummed, staged once.

Layout in the bucket:
    datasets/<name>/manifest.json     {"name", "objects": [{"name", "sha256", "size", "kind"}], ...}
    datasets/<name>/<object>          MNIST: its four .gz files as they are.
                                      15scene: train.tar and test.tar (4485 small JPEGs travel
                                      better as two objects than as 4485).
The manifest is written last: its presence means the dataset is complete. The VM's runner
downloads the objects, checks each sha256, and skips a dataset whose manifest it already
staged (ferry/data/<name>/.ferry-staged.json).

Sources: `--from DIR|URL`, else FERRY_DATA_SOURCE (a folder laid out as `mnist/*.gz`,
`15scene/{train,test}/<Class>/*.jpg`), else the public source (trainer.datasets.sources
downloads and verifies into $FERRY_HOME/cache/datasets).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tarfile
import tempfile
import time
from pathlib import Path

from infra.errors import CloudError, UsageError, unknown

DATASETS = ("mnist", "15scene")
TAR_SPLITS = {"15scene": ("train", "test")}


def _sha256(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def check_name(name: str) -> None:
    if name not in DATASETS:
        raise unknown("dataset", name, DATASETS)


def source_root(name: str, source: str | None, home: Path, progress=print) -> Path:
    """A local folder holding `<name>/...`, verified (downloads from the public source if needed)."""
    from trainer.datasets import sources
    from trainer.errors import DataError

    source = source or os.environ.get("FERRY_DATA_SOURCE") or None
    if source and "://" not in source:
        root = Path(source).expanduser()
        if not (root / name).is_dir():
            raise UsageError(f"dataset source {root} has no {name}/ folder", hint="expected mnist/*.gz and 15scene/{train,test}/<Class>/*.jpg")
        try:
            sources.verify(name, root)
        except DataError as exc:
            raise UsageError(f"dataset {name} in {root} does not verify: {exc}") from None
        return root
    cache = home / "cache" / "datasets"
    if sources.is_present(name, cache):
        return cache
    progress(f"downloading {name} from its public source into {cache}")
    try:
        sources.fetch(name, cache, urls=[source] if source else None)
    except DataError as exc:
        raise CloudError(f"could not download {name}: {exc}", hint="set FERRY_DATA_SOURCE to a local copy, or pass --from DIR") from None
    return cache


def present(bucket, name: str) -> bool:
    return bucket.blob(f"datasets/{name}/manifest.json").exists()


def _make_tar(src: Path, arcroot: str, dest: Path) -> int:
    files = sorted(p for p in src.rglob("*") if p.is_file())
    _write_tar(dest, files, src, arcroot + "/")
    return len(files)


def _write_tar(dest: Path, files, root: Path, arcprefix: str = "") -> None:
    """FILES (under ROOT) as a reproducible tar: same bytes for the same content (no owners,
    times or modes of this machine), so its checksum says whether anything changed."""
    with tarfile.open(dest, "w", format=tarfile.PAX_FORMAT) as tar:
        for path in files:
            info = tar.gettarinfo(str(path), arcname=arcprefix + path.relative_to(root).as_posix())
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mtime = 0
            info.mode = 0o644
            with open(path, "rb") as f:
                tar.addfile(info, f)


def push(bucket, name: str, root: Path, progress=print) -> dict:
    """Upload root/<name> to gs://BUCKET/datasets/<name>/ with its manifest (written last)."""
    check_name(name)
    t0 = time.time()
    base = root / name
    objects = []
    count = 0
    with tempfile.TemporaryDirectory(prefix="ferry-dataset-") as tmp:
        uploads: list[tuple[str, Path, str]] = []
        if name in TAR_SPLITS:
            for split in TAR_SPLITS[name]:
                tar_path = Path(tmp) / f"{split}.tar"
                count += _make_tar(base / split, split, tar_path)
                uploads.append((f"{split}.tar", tar_path, "tar"))
        else:
            for path in sorted(p for p in base.iterdir() if p.is_file() and not p.name.startswith(".")):
                uploads.append((path.name, path, "file"))
                count += 1
        total = 0
        for obj_name, path, kind in uploads:
            digest, size = _sha256(path)
            progress(f"uploading datasets/{name}/{obj_name} ({size / 1e6:.1f} MB)")
            blob = bucket.blob(f"datasets/{name}/{obj_name}")
            blob.upload_from_filename(str(path), content_type="application/octet-stream")
            objects.append({"name": obj_name, "sha256": digest, "size": size, "kind": kind})
            total += size
    manifest = {
        "name": name,
        "files": count,
        "bytes": total,
        "objects": objects,
        "source": str(root),
        "staged": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    bucket.blob(f"datasets/{name}/manifest.json").upload_from_string(json.dumps(manifest, indent=2) + "\n", content_type="application/json")
    progress(f"dataset {name}: {count} files, {total / 1e6:.1f} MB in gs://{bucket.name}/datasets/{name}/ ({time.time() - t0:.1f} s)")
    return manifest


def ensure(bucket, name: str, home: Path, source: str | None = None, progress=print) -> bool:
    """Seed gs://BUCKET/datasets/<name>/ if absent; True when it had to upload."""
    check_name(name)
    if present(bucket, name):
        return False
    root = source_root(name, source, home, progress)
    push(bucket, name, root, progress)
    return True


# --------------------------------------------------------------------------- a job file's own datasets
GS_URI = re.compile(r"gs://([a-z0-9][a-z0-9._-]{1,220}[a-z0-9])(/.*)?")


def check_gs_uri(uri: str) -> str | None:
    """None when `uri` is gs://BUCKET[/PREFIX], else why not."""
    m = GS_URI.fullmatch(uri)
    if not m:
        return f"{uri!r} is not gs://BUCKET/PREFIX (bucket names: lowercase letters, digits, '-', '_', '.')"
    if ".." in (m.group(2) or "").split("/"):
        return f"{uri!r}: '..' is not allowed in a gs:// prefix"
    return None


def _folder_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != ".ferry-staged.json")


def folder_digest(folder: Path) -> tuple[str, int, int]:
    """(sha256 over every file's relative name and sha256, files, bytes) of a local folder."""
    h = hashlib.sha256()
    count = total = 0
    for path in _folder_files(folder):
        digest, size = _sha256(path)
        h.update(f"{path.relative_to(folder).as_posix()}\0{digest}\n".encode())
        count += 1
        total += size
    return h.hexdigest(), count, total


def _push_folder(bucket, name: str, folder: Path, source: str, content: str, progress=print) -> dict:
    """A folder as gs://BUCKET/datasets/NAME/data.tar (members relative to it) + manifest.json (last)."""
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="ferry-dataset-") as tmp:
        tar_path = Path(tmp) / "data.tar"
        files = _folder_files(folder)
        _write_tar(tar_path, files, folder)
        digest, size = _sha256(tar_path)
        progress(f"uploading datasets/{name}/data.tar ({len(files)} files, {size / 1e6:.1f} MB)")
        bucket.blob(f"datasets/{name}/data.tar").upload_from_filename(str(tar_path), content_type="application/x-tar")
    manifest = {"name": name, "files": len(files), "bytes": size, "source": source, "content": content,
                "objects": [{"name": "data.tar", "sha256": digest, "size": size, "kind": "tar"}],
                "staged": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    bucket.blob(f"datasets/{name}/manifest.json").upload_from_string(json.dumps(manifest, indent=2) + "\n",
                                                                     content_type="application/json")
    progress(f"dataset {name}: {len(files)} files from {source} in gs://{bucket.name}/datasets/{name}/ "
             f"({time.time() - t0:.1f} s)")
    return manifest


def _staged_content(bucket, name: str) -> str | None:
    blob = bucket.blob(f"datasets/{name}/manifest.json")
    try:
        return json.loads(blob.download_as_bytes()).get("content")
    except Exception:
        return None


def check_source(ds) -> None:
    """Before anything is created: a local folder must exist (gs:// is checked when staged)."""
    if ds.kind == "local" and not Path(ds.source).is_dir():
        raise UsageError(f"dataset {ds.name}: folder {ds.source} does not exist")


def ensure_source(bucket, ds, home: Path, progress=print) -> bool:
    """Stage one dataset of a job file (jobs.jobfile.Dataset) -> True when it uploaded. A
    built-in one as `ensure`; a local folder or a gs:// prefix as data.tar with a checksummed
    manifest, re-staged only when its content changed (sha256 of every file; for gs:// the
    objects' names, sizes and crc32c)."""
    if ds.kind == "builtin":
        return ensure(bucket, ds.name, home, progress=progress)
    if ds.kind == "local":
        folder = Path(ds.source)
        check_source(ds)
        content, _, _ = folder_digest(folder)
        if _staged_content(bucket, ds.name) == content:
            return False
        _push_folder(bucket, ds.name, folder, ds.source, content, progress)
        return True
    # gs://BUCKET/PREFIX: copied through this machine, then staged like a folder
    m = GS_URI.fullmatch(ds.source)
    src_bucket = bucket.client.bucket(m.group(1))
    prefix = (m.group(2) or "/").lstrip("/")
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    try:
        blobs = [b for b in src_bucket.list_blobs(prefix=prefix) if not b.name.endswith("/")]
    except Exception as exc:
        raise CloudError(f"dataset {ds.name}: cannot list {ds.source} ({exc.__class__.__name__}: {exc})") from None
    if not blobs:
        raise UsageError(f"dataset {ds.name}: {ds.source} holds no objects")
    h = hashlib.sha256()
    for b in blobs:
        h.update(f"{b.name[len(prefix):]}\0{b.size}\0{b.crc32c}\n".encode())
    content = "gs:" + h.hexdigest()
    if _staged_content(bucket, ds.name) == content:
        return False
    progress(f"dataset {ds.name}: copying {len(blobs)} object(s) from {ds.source}")
    with tempfile.TemporaryDirectory(prefix="ferry-gs-") as tmp:
        for b in blobs:
            rel = b.name[len(prefix):]
            if rel.startswith("/") or ".." in rel.split("/"):
                raise UsageError(f"dataset {ds.name}: refusing object name {b.name!r}")
            dest = Path(tmp) / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            b.download_to_filename(str(dest))
        _push_folder(bucket, ds.name, Path(tmp), ds.source, content, progress)
    return True
