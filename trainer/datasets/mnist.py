"""MNIST from the four gzipped IDX files, checked (magic, sizes, labels) and cached."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from trainer.datasets import cache, idx, sources
from trainer.errors import DataError

FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
         "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}


def read_split(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray, dict]:
    """(images uint8 (N, 28, 28), labels uint8 (N,), {file: content MD5}) of one split."""
    images_file, labels_file = FILES[split]
    images, md5_images = idx.read_idx_gz(folder / images_file)
    labels, md5_labels = idx.read_idx_gz(folder / labels_file)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DataError(f"{folder / images_file}: expected uint8 images (N, rows, cols), got {images.dtype} {images.shape}")
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise DataError(f"{folder / labels_file}: expected uint8 labels (N,), got {labels.dtype} {labels.shape}")
    if len(images) != len(labels):
        raise DataError(f"{folder}: {len(images)} {split} images but {len(labels)} labels")
    if labels.size and labels.max() > 9:
        raise DataError(f"{folder / labels_file}: label {int(labels.max())} out of range 0-9")
    return images, labels, {images_file: md5_images, labels_file: md5_labels}


def load(root: Path, download: bool = True, cache_dir: Path | None = None) -> dict:
    """{"x_train": uint8 (60000, 784), "y_train", "x_test", "y_test", "fingerprint", "canonical", "cache_hit"}."""
    folder = sources.ensure("mnist", root, download)
    # Key the cache on the .gz bytes (cheap to hash); the arrays keep their content MD5s.
    gz = {f: sources.sha256_file(folder / f) for split in FILES.values() for f in split}

    def build():
        out = {}
        for split in FILES:
            images, labels, md5s = read_split(folder, split)
            out[f"x_{split}"] = images.reshape(len(images), -1)
            out[f"y_{split}"] = labels
            for name, md5 in md5s.items():
                out["md5:" + name] = np.array(md5)
        return out

    arrays, hit = cache.cached("mnist", {"gz": gz, "v": 1}, build, cache_dir)
    md5s = {k[4:]: str(v) for k, v in arrays.items() if k.startswith("md5:")}
    canonical = all(md5s.get(f) == s["content_md5"] for f, s in sources.MNIST_FILES.items())
    return {
        "x_train": arrays["x_train"], "y_train": arrays["y_train"],
        "x_test": arrays["x_test"], "y_test": arrays["y_test"],
        "fingerprint": {"content_md5": md5s, "canonical_mnist": canonical},
        "cache_hit": hit, "path": str(folder),
    }


def preprocess(x: np.ndarray, pixels: str, dtype=np.float64) -> np.ndarray:
    """binary: the course's 1 where pixel > 99 else 0; scaled: pixel / 255 in [0, 1]."""
    if pixels == "binary":
        return (x > 99).astype(dtype)
    if pixels == "scaled":
        return x.astype(dtype) / dtype(255)
    raise DataError(f"unknown --pixels {pixels!r}; valid: binary, scaled")
