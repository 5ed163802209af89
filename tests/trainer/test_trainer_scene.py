import numpy as np
import pytest
from PIL import Image

from trainer.datasets import scene
from trainer.errors import DataError

# (split, class, file, gray level); created out of order on purpose
FILES = [("train", "b_forest", "img_2.jpg", 200), ("train", "a_coast", "img_9.jpg", 30),
         ("train", "a_coast", "img_1.jpg", 10), ("train", "b_forest", "img_0.png", 100),
         ("train", "a_coast", "img_5.jpg", 20), ("train", "b_forest", "img_1.jpg", 150),
         ("test", "b_forest", "t_1.jpg", 240), ("test", "a_coast", "t_0.jpg", 60),
         ("test", "a_coast", "t_1.jpg", 80), ("test", "b_forest", "t_0.jpg", 220)]


def make_tree(root):
    for split, cls, name, gray in FILES:
        (root / split / cls).mkdir(parents=True, exist_ok=True)
        size = (40, 30) if gray % 20 else (25, 50)  # not square, not 8x8
        Image.new("RGB", size, (gray, gray, gray)).save(root / split / cls / name, quality=100)
    return root


def test_loads_sorted_first_n_grayscale_resized(tmp_path):
    root = make_tree(tmp_path / "15scene")
    d = scene.load(root, n_train=2, n_test=1, size=8, download=False, cache_dir=tmp_path / "c")
    assert d["classes"] == ["a_coast", "b_forest"]
    assert d["x_train"].shape == (4, 64) and d["x_test"].shape == (2, 64)
    assert d["x_train"].dtype == np.float32 and 0 <= d["x_train"].min() and d["x_train"].max() <= 1
    np.testing.assert_array_equal(d["y_train"], [0, 0, 1, 1])
    # sorted: a_coast img_1 (10), img_5 (20); b_forest img_0.png (100), img_1 (150); test t_0 each
    np.testing.assert_allclose(d["x_train"].mean(axis=1), np.array([10, 20, 100, 150]) / 255, atol=2 / 255)
    np.testing.assert_allclose(d["x_test"].mean(axis=1), np.array([60, 220]) / 255, atol=2 / 255)
    assert not d["cache_hit"] and d["fingerprint"]["n_files"] == 6


def test_cache_hit_and_invalidation_by_content(tmp_path):
    root = make_tree(tmp_path / "15scene")
    kw = dict(n_train=2, n_test=1, size=8, download=False, cache_dir=tmp_path / "c")
    first = scene.load(root, **kw)
    again = scene.load(root, **kw)
    assert again["cache_hit"] and again["fingerprint"] == first["fingerprint"]
    np.testing.assert_array_equal(again["x_train"], first["x_train"])
    Image.new("L", (40, 30), 250).save(root / "train" / "a_coast" / "img_1.jpg", quality=100)
    changed = scene.load(root, **kw)
    assert not changed["cache_hit"] and changed["x_train"][0].mean() > 0.9
    assert not scene.load(root, **{**kw, "size": 4})["cache_hit"]  # parameters are in the key too


def test_too_few_images_and_class_mismatch(tmp_path):
    root = make_tree(tmp_path / "15scene")
    with pytest.raises(DataError, match="fewer than the 3 asked for"):
        scene.load(root, n_train=2, n_test=3, size=8, download=False, cache_dir=None)
    (root / "test" / "c_extra").mkdir()
    with pytest.raises(DataError, match="differ from train"):
        scene.load(root, n_train=2, n_test=1, size=8, download=False, cache_dir=None)


def test_unreadable_image_is_named(tmp_path):
    root = make_tree(tmp_path / "15scene")
    (root / "train" / "a_coast" / "img_0.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match="img_0.jpg: not a readable image"):
        scene.load(root, n_train=1, n_test=1, size=8, download=False, cache_dir=None)
