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

TIMING = ("seconds", "examples_per_s", "eval_seconds")


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


def test_resume_with_the_other_adam_is_refused(uninterrupted, fake_mnist, tmp_path, capsys):
    out = tmp_path / "K"  # fused and Keras Adam differ by rounding: a resumed run would not be the same run
    code = main(argv(fake_mnist, out, "--resume", str(uninterrupted / "checkpoints"), "--adam", "keras"))
    err = capsys.readouterr().err
    assert code == 2 and "adam='fused' (checkpoint) vs adam='keras' (this run)" in err and err.count("\n") == 1, err
    assert not (out / "metrics.jsonl").exists()


def test_keras_adam_resumes_bit_for_bit_too(fake_mnist, tmp_path, capsys):
    pytest.importorskip("tensorflow")
    whole, part, rest = tmp_path / "whole", tmp_path / "part", tmp_path / "rest"
    assert main(argv(fake_mnist, whole, "--adam", "keras", "--epochs", "2")) == 0
    assert main(argv(fake_mnist, part, "--adam", "keras", "--epochs", "2")) == 0  # same run again: deterministic
    assert untimed(metrics(part)) == untimed(metrics(whole))
    left = tmp_path / "left"
    left.mkdir()
    shutil.copy(whole / "checkpoints" / "ckpt-000001.ckpt", left)
    assert main(argv(fake_mnist, rest, "--adam", "keras", "--epochs", "2", "--resume", str(left))) == 0
    capsys.readouterr()
    assert untimed(metrics(rest)) == untimed(metrics(whole))
    assert_same_weights(whole / "checkpoints" / "ckpt-000002.ckpt", rest / "checkpoints" / "ckpt-000002.ckpt")


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


def adam_reference(start, grads, one_minus_b1, one_minus_b2, lr=0.001, b1=0.9, b2=0.999, eps=1e-7):
    """The formula of trainer/tfquickstart.py's docstring, in float64."""
    import numpy as np

    w = [x.astype(np.float64) for x in start]
    m, v = [np.zeros_like(x) for x in w], [np.zeros_like(x) for x in w]
    for t, gs in enumerate(grads, 1):
        alpha = lr * np.sqrt(1 - b2 ** t) / (1 - b1 ** t)
        for i, g in enumerate(gs):
            g = g.numpy().astype(np.float64)
            m[i] += (g - m[i]) * one_minus_b1
            v[i] += (g * g - v[i]) * one_minus_b2
            w[i] -= alpha * m[i] / (np.sqrt(v[i]) + eps)
    return w + m + v


def test_fused_adam_is_the_documented_adam_and_keras_is_too():
    """Three steps of the same gradients through Keras's Adam and through the fused kernel,
    each against the documented formula in float64: both match it to float32 rounding (1e-6
    of each array's largest value), on the same slots and counter. The one difference is
    (1 - b2): Keras takes it in double precision (0.001), the fused kernel in float32 from
    float32(0.999) (0.00099998713, 1.3e-5 relative: Adam with b2 = float32(0.999) exactly)."""
    tf = pytest.importorskip("tensorflow")
    import numpy as np

    from trainer.tfquickstart import fused_adam

    rng = np.random.default_rng(0)
    shapes = [(50, 7), (7,), (3, 3, 1, 4)]
    start = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    grads = [[tf.constant(rng.standard_normal(s).astype(np.float32) * 10 ** -k) for s in shapes] for k in range(3)]
    f32 = np.float32
    expected = {False: adam_reference(start, grads, 0.1, 0.001),
                True: adam_reference(start, grads, float(f32(1) - f32(0.9)), float(f32(1) - f32(0.999)))}
    for fused in (False, True):
        variables = [tf.Variable(w) for w in start]
        opt = tf.keras.optimizers.Adam()
        opt.build(variables)
        apply = fused_adam(tf, opt) if fused else (lambda g, v, opt=opt: opt.apply_gradients(zip(g, v)))
        step = tf.function(lambda g, apply=apply, variables=variables: apply(g, variables))
        for g in grads:
            step(g)
        assert int(opt.iterations.numpy()) == 3
        got = variables + list(opt._momentums) + list(opt._velocities)
        assert len(got) == len(expected[fused])
        for a, ref in zip(got, expected[fused]):
            scale = float(np.abs(ref).max())  # moments can cancel to ~0: rounding relative to the array's scale
            assert float(np.abs(a.numpy() - ref).max()) <= 1e-6 * scale, (fused, a.name, scale)
        assert any(not np.array_equal(a.numpy(), w) for a, w in zip(variables, start))  # it did move them


def test_fused_adam_refuses_what_it_does_not_implement():
    tf = pytest.importorskip("tensorflow")
    from trainer.errors import TrainerError
    from trainer.tfquickstart import fused_adam

    with pytest.raises(TrainerError, match="--adam keras"):
        fused_adam(tf, tf.keras.optimizers.Adam(amsgrad=True))


def test_epoch_order_is_the_tutorials_shuffle():
    tf = pytest.importorskip("tensorflow")
    import numpy as np

    from trainer.tfquickstart import epoch_order

    x = np.random.default_rng(1).random((2500, 4, 4, 1), np.float32)
    y = np.arange(2500)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(1000, seed=77, reshuffle_each_iteration=False).batch(32)
    tutorial = np.concatenate([labels.numpy() for _, labels in ds])
    order = epoch_order(tf, 2500, 1000, 77)
    assert np.array_equal(order, tutorial) and not np.array_equal(order, y)


def test_test_metrics_are_the_tutorials_batch_by_batch(uninterrupted, fake_mnist):
    """The test loop runs many batches per call; its metrics must be the tutorial's: the mean of
    per-batch mean losses over batches of 32 (100 images: 32, 32, 32, 4) and the accuracy,
    recomputed here the tutorial's way from the weights in the last checkpoint."""
    tf = pytest.importorskip("tensorflow")
    import numpy as np

    from trainer.datasets import mnist

    class MyModel(tf.keras.Model):  # the tutorial's model: same layer names, so the checkpoint fits
        def __init__(self):
            super().__init__()
            self.conv1 = tf.keras.layers.Conv2D(32, 3, activation="relu")
            self.flatten = tf.keras.layers.Flatten()
            self.d1 = tf.keras.layers.Dense(128, activation="relu")
            self.d2 = tf.keras.layers.Dense(10)

        def call(self, x):
            return self.d2(self.d1(self.flatten(self.conv1(x))))

    d = mnist.load(fake_mnist, False, None)
    x = (d["x_test"][:100].reshape(-1, 28, 28, 1) / 255.0).astype("float32")
    y = d["y_test"][:100].astype("int64")
    model = MyModel()
    model(x[:1])
    with tempfile.TemporaryDirectory() as tmp, zipfile.ZipFile(uninterrupted / "checkpoints" / "ckpt-000003.ckpt") as zf:
        for member in zf.namelist():
            if member.startswith("files/"):
                with open(os.path.join(tmp, member[len("files/"):]), "wb") as f:
                    f.write(zf.read(member))
        tf.train.Checkpoint(model=model).read(os.path.join(tmp, "tf")).expect_partial()
    loss_object = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    test_loss, test_accuracy = tf.keras.metrics.Mean(), tf.keras.metrics.SparseCategoricalAccuracy()
    for images, labels in tf.data.Dataset.from_tensor_slices((x, y)).batch(32):
        predictions = model(images, training=False)
        test_loss(loss_object(labels, predictions))
        test_accuracy(labels, predictions)
    last = metrics(uninterrupted)[-1]
    assert int(test_loss.count.numpy()) == 4
    assert last["test_accuracy"] == float(test_accuracy.result())
    assert abs(last["test_loss"] - float(test_loss.result())) <= 1e-6 * abs(float(test_loss.result()))
    assert np.isfinite(last["test_loss"]) and last["test_loss"] > 0


def test_many_steps_per_call_train_as_one_call_per_step(uninterrupted, fake_mnist, tmp_path, monkeypatch, capsys):
    """The training loop runs STEPS_PER_CALL steps in one compiled call; with 4 per call (300
    images: calls of 4, 4, 1 full batches and the 12-image rest) the run must end with the
    weights, Adam state and metrics of one call per step, bit for bit, and of the shared run
    (100 per call)."""
    from trainer import tfquickstart

    monkeypatch.setattr(tfquickstart, "STEPS_PER_CALL", 1)
    assert main(argv(fake_mnist, tmp_path / "one")) == 0, capsys.readouterr().err
    monkeypatch.setattr(tfquickstart, "STEPS_PER_CALL", 4)
    assert main(argv(fake_mnist, tmp_path / "four")) == 0, capsys.readouterr().err
    last = "checkpoints/ckpt-000003.ckpt"
    assert_same_weights(tmp_path / "one" / last, tmp_path / "four" / last)
    assert_same_weights(tmp_path / "one" / last, uninterrupted / last)
    assert untimed(metrics(tmp_path / "one")) == untimed(metrics(tmp_path / "four")) == untimed(metrics(uninterrupted))
    steps = [v for k, v in tf_variables(tmp_path / "four" / last).items() if "iteration" in k]
    assert [int(v) for v in steps] == [3 * 10]  # 3 epochs of ceil(300 / 32) steps: the rest was trained


def test_jit_runs_and_trains_like_the_graph(uninterrupted, fake_mnist, tmp_path, capsys):
    """--jit compiles both steps with XLA (the test loop's per-batch means included: no op
    without an XLA kernel) and gives the same run up to float rounding."""
    code = main(argv(fake_mnist, tmp_path / "jit", "--jit"))
    assert code == 0, capsys.readouterr().err
    for a, b in zip(metrics(tmp_path / "jit"), metrics(uninterrupted)):
        for key in ("loss", "test_loss", "train_accuracy", "test_accuracy"):
            assert abs(a[key] - b[key]) <= 1e-3 * max(1.0, abs(b[key])), (key, a, b)
