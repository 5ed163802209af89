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
    with tarfile.open(dest, "w", format=tarfile.PAX_FORMAT) as tar:
        for path in files:
            info = tar.gettarinfo(str(path), arcname=f"{arcroot}/{path.relative_to(src).as_posix()}")
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mtime = 0
            info.mode = 0o644
            with open(path, "rb") as f:
                tar.addfile(info, f)
    return len(files)


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
