"""tf-quickstart's checkpoints: a run resumed after epoch k ends with the same weights and the
same metrics as the run never interrupted (--deterministic). One uninterrupted 3-epoch run is
shared by every test; each resume starts from copies of its checkpoints, which is what an
interrupted run of the same job would have left behind."""

import json
import os
import shutil
import tempfile
import zipfile

import pytest

from trainer.cli import main

pytestmark = pytest.mark.slow  # TensorFlow

TIMING = ("seconds", "examples_per_s")


def argv(data, out, *extra):
    return ["tf-quickstart", "--epochs", "3", "--train-samples", "300", "--test-samples", "100", "--seed", "0",
            "--data-dir", str(data), "--no-download", "--cache-dir", "off", "--deterministic", "--out", str(out), *extra]


def metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def untimed(records):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in records]


def tf_variables(path):
    """A ferry checkpoint's TensorFlow variables, by checkpoint key, as numpy arrays."""
    import tensorflow as tf

    with tempfile.TemporaryDirectory() as tmp, zipfile.ZipFile(path) as zf:
        for member in zf.namelist():
            if member.startswith("files/"):
                with open(os.path.join(tmp, member[len("files/"):]), "wb") as f:
                    f.write(zf.read(member))
        reader = tf.train.load_checkpoint(os.path.join(tmp, "tf"))
        return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map() if k != "_CHECKPOINTABLE_OBJECT_GRAPH"}


def assert_same_weights(a, b):
    import numpy as np

    va, vb = tf_variables(a), tf_variables(b)
    assert sorted(va) == sorted(vb)
    assert any(k.startswith("optimizer/_variables/") for k in va)  # Adam's moments are in there
    different = [k for k in va if not np.array_equal(va[k], vb[k])]
    assert not different, different


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return {"root": tmp_path_factory.mktemp("tf-checkpoint")}


@pytest.fixture
def uninterrupted(store, fake_mnist, capsys):
    """OUT of the uninterrupted run (made once per module)."""
    pytest.importorskip("tensorflow")
    if "A" not in store:
        out = store["root"] / "A"
        code = main(argv(fake_mnist, out))
        assert code == 0, capsys.readouterr().err
        store["A"] = out
    capsys.readouterr()
    return store["A"]


def checkpoints(out):
    return sorted(p.name for p in (out / "checkpoints").iterdir())


def test_uninterrupted_run_checkpoints_every_epoch(uninterrupted):
    out = uninterrupted
    assert checkpoints(out) == ["ckpt-000001.ckpt", "ckpt-000002.ckpt", "ckpt-000003.ckpt"]
    summary = json.loads((out / "summary.json").read_text())
    ck = summary["checkpoint"]
    assert ck["count"] == 3 and ck["resumed_from"] is None and ck["bytes"] > 0 and ck["median_seconds"] > 0
    with zipfile.ZipFile(out / "checkpoints" / "ckpt-000002.ckpt") as zf:
        meta = json.loads(zf.read("meta.json"))
    assert meta["identity"]["job"] == "tf-quickstart" and meta["identity"]["params"]["batch_size"] == 32
    assert not {"out", "data_dir", "cache_dir", "download", "resume"} & set(meta["identity"]["params"])
    assert meta["state"]["epoch"] == 1 and meta["state"]["records"] == metrics(out)[:2]


def test_resume_after_epoch_1_equals_uninterrupted(uninterrupted, fake_mnist, tmp_path, capsys):
    left = tmp_path / "left"  # what a run of this job stopped after epoch 1 leaves
    left.mkdir()
    shutil.copy(uninterrupted / "checkpoints" / "ckpt-000001.ckpt", left)
    out = tmp_path / "C"
    code = main(argv(fake_mnist, out, "--resume", str(left)))
    text = capsys.readouterr()
    assert code == 0, text.err
    assert f"resumed from {left / 'ckpt-000001.ckpt'}: epoch 1 of 3 done" in text.out
    assert "Epoch 1," not in text.out and "Epoch 2," in text.out and "Epoch 3," in text.out
    a, c = metrics(uninterrupted), metrics(out)
    assert c[0] == a[0]  # restored as it was, timing included
    assert untimed(c) == untimed(a)  # exact floats: loss, accuracies, test loss
    assert checkpoints(out) == ["ckpt-000002.ckpt", "ckpt-000003.ckpt"]
    assert_same_weights(uninterrupted / "checkpoints" / "ckpt-000003.ckpt", out / "checkpoints" / "ckpt-000003.ckpt")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["checkpoint"]["resumed_from"] == "ckpt-000001.ckpt" and summary["checkpoint"]["count"] == 2
    assert summary["final_test_accuracy"] == a[-1]["test_accuracy"]
    assert list((out / "tensorboard" / "train").glob("events.out.tfevents.*"))


def test_resume_with_other_batch_size_is_refused(uninterrupted, fake_mnist, tmp_path, capsys):
    out = tmp_path / "X"
    code = main(argv(fake_mnist, out, "--resume", str(uninterrupted / "checkpoints"), "--batch-size", "16"))
    err = capsys.readouterr().err
    assert code == 2 and "batch_size" in err and err.count("\n") == 1, err
    assert not (out / "metrics.jsonl").exists()  # refused before anything was written


def test_corrupt_newest_checkpoint_falls_back_to_the_previous(uninterrupted, fake_mnist, tmp_path, capsys):
    out = tmp_path / "D"  # resumed in place: --resume OUT/checkpoints --out OUT
    shutil.copytree(uninterrupted / "checkpoints", out / "checkpoints")
    newest = out / "checkpoints" / "ckpt-000003.ckpt"
    with open(newest, "r+b") as f:
        f.truncate(newest.stat().st_size // 2)
    code = main(argv(fake_mnist, out, "--resume", str(out / "checkpoints")))
    text = capsys.readouterr()
    assert code == 0, text.err
    warnings = [line for line in text.out.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "ckpt-000003.ckpt is corrupt" in warnings[0], text.out
    assert "falling back to ckpt-000002.ckpt" in warnings[0]
    assert "Epoch 3," in text.out and "Epoch 2," not in text.out
    assert untimed(metrics(out)) == untimed(metrics(uninterrupted))
    assert_same_weights(uninterrupted / "checkpoints" / "ckpt-000003.ckpt", newest)  # rewritten whole


def test_resume_from_the_last_epoch_only_writes_the_summary(uninterrupted, fake_mnist, tmp_path, capsys):
    out = tmp_path / "E"
    code = main(argv(fake_mnist, out, "--resume", str(uninterrupted / "checkpoints")))
    text = capsys.readouterr()
    assert code == 0, text.err
    assert "epoch 3 of 3 done, nothing left to train" in text.out and "Epoch " not in text.out
    assert (out / "metrics.jsonl").read_text() == (uninterrupted / "metrics.jsonl").read_text()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["checkpoint"]["count"] == 0 and summary["checkpoint"]["resumed_from"] == "ckpt-000003.ckpt"
    assert summary["best_test_accuracy"] == json.loads((uninterrupted / "summary.json").read_text())["best_test_accuracy"]
