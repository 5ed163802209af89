"""Where the datasets come from, how to check them, and fetch-and-verify into a directory.

Public API (jobs/ reuses it to stage datasets into the bucket):
    DATASETS                      -> ("mnist", "15scene")
    MNIST_FILES, MNIST_MIRRORS    MNIST file names, canonical checksums, mirror URLs
    SCENE_URLS, scene_manifest()  15-scene archive URLs, sha256 of every file of our layout
    data_root(arg)                the data directory setting (--data-dir, $FERRY_DATA_DIR, default)
    is_present(name, root)        the files are there (cheap, no hashing)
    verify(name, root)            hash everything; DataError naming the first bad file
    fetch(name, root, urls=None)  download, verify, then move into root/<name>
    ensure(name, root, download)  is_present or fetch; the offline failure says what to do

Layout under a data root: `mnist/<the four .gz files>`, `15scene/{train,test}/<Class>/*.jpg`
(the layout of ../shared/datasets).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from functools import lru_cache
from pathlib import Path

from trainer.errors import DataError

DATASETS = ("mnist", "15scene")
MANIFESTS = Path(__file__).with_name("manifests")

# MD5 of the UNCOMPRESSED content (authoritative: it holds however the .gz was compressed),
# the MD5 of the .gz as the public mirrors serve it, and the SHA-256 of our mirror's .gz
# (its train-images was recompressed with `gzip -n -9`). Verification uses the content MD5,
# so both .gz encodings are accepted.
MNIST_FILES = {
    "train-images-idx3-ubyte.gz": {"content_md5": "6bbc9ace898e44ae57da46a324031adb",
                                   "published_gz_md5": "f68b3c2dcbeaaa9fbdd348bbdeb94873"},
    "train-labels-idx1-ubyte.gz": {"content_md5": "a25bea736e30d166cdddb491f175f624",
                                   "published_gz_md5": "d53e105ee54ea40749a09fcbcd1e9432"},
    "t10k-images-idx3-ubyte.gz": {"content_md5": "2646ac647ad5339dbf082846283269ea",
                                  "published_gz_md5": "9fb629c4189551a2d022fa330f9573f3"},
    "t10k-labels-idx1-ubyte.gz": {"content_md5": "27ae3e4e09519cfbb04c329615203637",
                                  "published_gz_md5": "ec29112dd5afa0611ce80d1b7f02629c"},
}
MNIST_MIRRORS = (
    "https://storage.googleapis.com/cvdf-datasets/mnist/",  # TensorFlow's mirror
    "https://ossci-datasets.s3.amazonaws.com/mnist/",      # PyTorch's mirror
)
# 15-Scene (Lazebnik, Schmid, Ponce 2006). Files are placed by CONTENT: every file of an
# archive is hashed and put wherever our manifest lists that sha256, so any archive holding
# the original JPEGs works whatever its folder names. NOT TESTED against these URLs (no
# network where this was written); set FERRY_15SCENE_URL to a copy you trust (a bucket,
# file:///..., a .zip or .tar.gz) if they fail.
SCENE_URLS = (
    "https://figshare.com/ndownloader/articles/7007177/versions/1",  # "15-Scene Image Dataset", figshare
    "https://www-cvr.ai.uiuc.edu/ponce_grp/data/scene_categories/scene_categories.zip",  # original
)
DEFAULT_DATA_ROOT = Path.home() / ".cache" / "ferry-trainer" / "data"


def data_root(arg: str | Path | None = None) -> Path:
    """--data-dir, else $FERRY_DATA_DIR, else ~/.cache/ferry-trainer/data."""
    value = str(arg) if arg else os.environ.get("FERRY_DATA_DIR")
    return Path(value).expanduser() if value else DEFAULT_DATA_ROOT


@lru_cache(maxsize=None)
def scene_manifest() -> dict[str, str]:
    """{"train/Bedroom/image_0001.jpg": sha256, ...} for all 4485 files of our layout."""
    return json.loads((MANIFESTS / "15scene.json").read_text())


def mnist_gz_sha256() -> dict[str, str]:
    """SHA-256 of the .gz files of the mirror this project was built against."""
    return json.loads((MANIFESTS / "mnist-gz.json").read_text())


def scene_manifest_digest() -> str:
    text = "".join(f"{h}  {p}\n" for p, h in sorted(scene_manifest().items()))
    return hashlib.sha256(text.encode()).hexdigest()


def sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def is_present(name: str, root: Path) -> bool:
    _check_name(name)
    if name == "mnist":
        return all((root / "mnist" / f).is_file() for f in MNIST_FILES)
    scene = root / "15scene"
    return (scene / "train").is_dir() and (scene / "test").is_dir()


def verify(name: str, root: Path) -> str:
    """Hash every file of `name` under root; returns a fingerprint, raises DataError on a mismatch."""
    _check_name(name)
    if name == "mnist":
        for fname, sums in MNIST_FILES.items():
            path = root / "mnist" / fname
            md5 = _content_md5(path)
            if md5 != sums["content_md5"]:
                raise DataError(f"{path}: content MD5 {md5}, expected {sums['content_md5']}")
        return "mnist-md5:" + hashlib.sha256(
            "".join(s["content_md5"] for s in MNIST_FILES.values()).encode()).hexdigest()[:16]
    for rel, digest in scene_manifest().items():
        path = root / "15scene" / rel
        if not path.is_file():
            raise DataError(f"{path}: missing (15-scene has {len(scene_manifest())} files)")
        if sha256_file(path) != digest:
            raise DataError(f"{path}: sha256 differs from the manifest")
    return "15scene-manifest:" + scene_manifest_digest()[:16]


def fetch(name: str, root: Path, urls: list[str] | tuple[str, ...] | None = None) -> Path:
    """Download `name` from its public source (or `urls`), verify, move into root/<name>."""
    _check_name(name)
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root, prefix=f".fetch-{name}-") as tmp:
        tmp = Path(tmp)
        stage = tmp / name
        if name == "mnist":
            bases = urls or ([os.environ["FERRY_MNIST_URL"]] if os.environ.get("FERRY_MNIST_URL") else MNIST_MIRRORS)
            stage.mkdir()
            for fname in MNIST_FILES:
                _download_first(bases, fname, stage / fname)
        else:
            sources = urls or ([os.environ["FERRY_15SCENE_URL"]] if os.environ.get("FERRY_15SCENE_URL") else SCENE_URLS)
            archive = tmp / "archive"
            url = _download_first(sources, None, archive)
            _place_scene(archive, tmp / "unpacked", stage, url)
        verify(name, tmp)
        target = root / name
        if target.exists():
            shutil.rmtree(target)
        os.replace(stage, target)
    return root / name


def ensure(name: str, root: Path, download: bool = True) -> Path:
    if is_present(name, root):
        return root / name
    if not download:
        raise DataError(f"{name} not found under {root} and downloading is off: {_what_to_do(name, root)}")
    return fetch(name, root)


# ---------------------------------------------------------------------------- helpers
def _check_name(name: str) -> None:
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; valid: {', '.join(DATASETS)}")


def _what_to_do(name: str, root: Path) -> str:
    return (f"put the {name} files under {root / name} (layout: mnist/<the four .gz files>, 15scene/{{train,test}}/<Class>/*.jpg), or point "
            f"--data-dir / FERRY_DATA_DIR at a folder that has {name}/")


def _content_md5(path: Path) -> str:
    try:
        with gzip.open(path, "rb") as f:
            return hashlib.file_digest(f, "md5").hexdigest()
    except FileNotFoundError:
        raise DataError(f"{path}: missing") from None
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: corrupt or truncated gzip ({e})") from None


def _download_first(bases, fname, dest: Path) -> str:
    errors = []
    for base in bases:
        url = base + fname if fname else base
        try:
            with urllib.request.urlopen(url, timeout=60) as r, open(dest, "wb") as f:
                shutil.copyfileobj(r, f, 1 << 20)
            return url
        except (urllib.error.URLError, OSError, ValueError) as e:
            errors.append(f"{url}: {getattr(e, 'reason', e)}")
    name = fname or "the archive"
    raise DataError(f"could not download {name} ({'; '.join(errors)}). Offline? Copy the dataset "
                    f"by hand and point --data-dir / FERRY_DATA_DIR at it (layout: mnist/<the four .gz files>, 15scene/{{train,test}}/<Class>/*.jpg)")


def _place_scene(archive: Path, unpacked: Path, stage: Path, url: str) -> None:
    """Unpack, hash every file, and copy each manifest entry from the file with its sha256."""
    unpacked.mkdir()
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as z:
                z.extractall(unpacked)
        else:
            with tarfile.open(archive) as t:
                t.extractall(unpacked, filter="data")
    except (tarfile.TarError, zipfile.BadZipFile, OSError) as e:
        raise DataError(f"{url}: not a readable .zip or .tar archive ({e})") from None
    by_digest = {}
    for path in unpacked.rglob("*"):
        if path.is_file():
            by_digest.setdefault(sha256_file(path), path)
    missing = [rel for rel, h in scene_manifest().items() if h not in by_digest]
    if missing:
        raise DataError(f"{url}: {len(missing)} of {len(scene_manifest())} 15-scene files not in the "
                        f"archive (first: {missing[0]}); it is not the original 15-scene JPEGs")
    for rel, digest in scene_manifest().items():
        (stage / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(by_digest[digest], stage / rel)
