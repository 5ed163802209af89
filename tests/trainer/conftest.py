"""Fixtures for the trainer's tests: real data (skipped cleanly when absent), fake MNIST."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import pytest

from trainer.datasets.idx import encode_idx

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """Never touch the user's cache; one cache for the whole session (real data decodes once)."""
    monkeypatch.setenv("FERRY_TRAINER_CACHE", str(tmp_path_factory.getbasetemp() / "trainer-cache"))


@pytest.fixture(scope="session")
def real_data() -> Path:
    value = os.environ.get("FERRY_DATA_DIR")
    root = Path(value) if value else REPO.parent / "shared" / "datasets"
    if not ((root / "mnist").is_dir() and (root / "15scene").is_dir()):
        where = "FERRY_DATA_DIR" if value else "the default ../shared/datasets"
        pytest.skip(f"real datasets not found: no mnist/ and 15scene/ under {root} ({where}); "
                    "set FERRY_DATA_DIR to a folder that has them")
    return root


def write_fake_mnist(root: Path, n_train: int = 300, n_test: int = 100, seed: int = 0) -> Path:
    """MNIST-format files of class-dependent blobs (learnable), under root/mnist."""
    rng = np.random.default_rng(seed)
    folder = root / "mnist"
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
        for i, c in enumerate(labels):  # a bright 6x6 square whose place encodes the class
            r, q = divmod(int(c), 5)
            images[i, 4 + 10 * r:10 + 10 * r, 1 + 5 * q:6 + 5 * q] = 250
        for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
            with gzip.open(folder / f"{split}-{kind}-ubyte.gz", "wb") as f:
                f.write(encode_idx(array))
    return root


@pytest.fixture
def fake_mnist(tmp_path) -> Path:
    return write_fake_mnist(tmp_path / "data")
