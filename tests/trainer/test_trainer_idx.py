import gzip

import numpy as np
import pytest

from trainer.datasets import idx, mnist
from trainer.errors import DataError


def test_round_trip_images_and_labels(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (7, 28, 28)).astype(np.uint8)
    labels = np.arange(7, dtype=np.uint8)
    for name, array in (("a.gz", images), ("b.gz", labels)):
        with gzip.open(tmp_path / name, "wb") as f:
            f.write(idx.encode_idx(array))
    got, md5 = idx.read_idx_gz(tmp_path / "a.gz")
    np.testing.assert_array_equal(got, images)
    assert len(md5) == 32
    np.testing.assert_array_equal(idx.read_idx_gz(tmp_path / "b.gz")[0], labels)


@pytest.mark.parametrize("blob, words", [
    (b"", "truncated"),
    (b"\x00\x00\x08", "truncated"),
    (b"\x1f\x8b\x08\x03" + b"\x00" * 12, "not an IDX"),
    (b"\x00\x00\x08\x03\x00\x00\x00\x02", "truncated IDX header"),
    (idx.encode_idx(np.zeros((2, 3, 3), np.uint8))[:-1], "truncated"),
    (idx.encode_idx(np.zeros((2, 3, 3), np.uint8)) + b"\x00", "trailing"),
])
def test_bad_idx_names_the_file(blob, words):
    with pytest.raises(DataError, match=words) as e:
        idx.parse_idx(blob, "some/file.gz")
    assert "some/file.gz" in str(e.value)


def test_truncated_and_corrupt_gzip(tmp_path):
    good = gzip.compress(idx.encode_idx(np.zeros((50, 28, 28), np.uint8)))
    (tmp_path / "cut.gz").write_bytes(good[: len(good) // 2])
    (tmp_path / "junk.gz").write_bytes(b"this is not gzip at all")
    for name in ("cut.gz", "junk.gz"):
        with pytest.raises(DataError, match="corrupt or truncated gzip") as e:
            idx.read_idx_gz(tmp_path / name)
        assert name in str(e.value)


def test_images_and_labels_must_agree(fake_mnist):
    folder = fake_mnist / "mnist"
    with gzip.open(folder / "t10k-labels-idx1-ubyte.gz", "wb") as f:
        f.write(idx.encode_idx(np.zeros(99, np.uint8)))
    with pytest.raises(DataError, match="100 test images but 99 labels"):
        mnist.read_split(folder, "test")
    with gzip.open(folder / "t10k-labels-idx1-ubyte.gz", "wb") as f:
        f.write(idx.encode_idx(np.full(100, 12, np.uint8)))
    with pytest.raises(DataError, match="label 12 out of range"):
        mnist.read_split(folder, "test")


def test_cli_reports_a_truncated_file_in_one_line(fake_mnist, tmp_path, capsys):
    from trainer.cli import main

    path = fake_mnist / "mnist" / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:200])
    code = main(["mnist-nn", "--data-dir", str(fake_mnist), "--no-download", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "train-images-idx3-ubyte.gz" in err and "Traceback" not in err


def test_binarise_like_the_course():
    x = np.array([[0, 99, 100, 255]], np.uint8)
    np.testing.assert_array_equal(mnist.preprocess(x, "binary"), [[0, 0, 1, 1]])
    np.testing.assert_allclose(mnist.preprocess(x, "scaled"), [[0, 99 / 255, 100 / 255, 1]])
