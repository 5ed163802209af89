"""Checkpoints: a numpy job interrupted after any epoch and resumed with --resume finishes with
exactly the weights and metrics of the same job never interrupted."""

import json
import zipfile

import numpy as np
import pytest

from trainer import checkpoint
from trainer.cli import main

TIMING = {"seconds", "examples_per_s", "eval_seconds", "svm_seconds"}


def metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def untimed(rows):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def last_weights(out):
    meta, arrays, _ = checkpoint.read(checkpoint.candidates(out / "checkpoints")[0])
    return meta, arrays


@pytest.fixture
def interrupt_after(monkeypatch):
    """Make the job stop (KeyboardInterrupt, what SIGTERM becomes) right after epoch `step`
    of the job is reported (its checkpoint, line and metrics are one commit)."""
    from trainer import report

    real = report.Run.epoch

    def arm(step):
        def epoch(self, *a, **k):
            real(self, *a, **k)
            if len(self.records) == step:
                raise KeyboardInterrupt
        monkeypatch.setattr(report.Run, "epoch", epoch)

    yield arm
    monkeypatch.setattr(report.Run, "epoch", real)


def run_interrupted(argv, out, stops, interrupt_after, capsys):
    """Run `argv` into `out`, stopped after each step in `stops`, resumed each time."""
    resume = []
    for step in stops:
        interrupt_after(step)
        assert main([*argv, "--out", str(out), *resume]) == 130
        resume = ["--resume", str(out / "checkpoints")]
    interrupt_after(-1)
    assert main([*argv, "--out", str(out), *resume]) == 0, capsys.readouterr().err


@pytest.mark.parametrize("mode", ["stencil", "minibatch"])
def test_mnist_preempted_twice_equals_uninterrupted(fake_mnist, tmp_path, mode, interrupt_after, capsys):
    argv = ["mnist-nn", "--mode", mode, "--epochs", "6", "--seed", "7", "--data-dir", str(fake_mnist),
            "--no-download", "--cache-dir", "off"]
    if mode == "minibatch":
        argv += ["--batch-size", "16"]  # many batches: the random offsets and orders matter
    a, b = tmp_path / "a", tmp_path / "b"
    assert main([*argv, "--out", str(a)]) == 0
    capsys.readouterr()
    run_interrupted(argv, b, (2, 4), interrupt_after, capsys)
    out = capsys.readouterr().out
    assert out.count("resumed from checkpoint ckpt-000002.ckpt") == 1 and "ckpt-000004.ckpt" in out
    assert all(out.count(f"epoch {e}:") == 1 for e in range(2, 6))  # the resumed runs print only new epochs
    ma, mb = metrics(a), metrics(b)
    assert [m["epoch"] for m in mb] == list(range(6)) and untimed(ma) == untimed(mb)
    (meta_a, wa), (meta_b, wb) = last_weights(a), last_weights(b)
    assert meta_a["step"] == meta_b["step"] == 6
    assert wa["W"].tobytes() == wb["W"].tobytes() and wa["b"].tobytes() == wb["b"].tobytes()
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (a, b))
    assert sa["best_test_accuracy"] == sb["best_test_accuracy"] and sb["checkpoint"]["resumed_from"] == "ckpt-000004.ckpt"
    assert sa["checkpoint"]["count"] == 6 and sb["checkpoint"]["count"] == 2


def test_scene_svm_resumes_bit_identically(real_data, tmp_path, interrupt_after, capsys):
    argv = ["scene-svm", "--epochs", "4", "--svm-epochs", "all", "--data-dir", str(real_data), "--no-download",
            "--train-per-class", "8", "--test-per-class", "4", "--image-size", "16"]
    a, b = tmp_path / "a", tmp_path / "b"
    assert main([*argv, "--out", str(a)]) == 0
    run_interrupted(argv, b, (1, 3), interrupt_after, capsys)
    ma, mb = metrics(a), metrics(b)
    assert untimed(ma) == untimed(mb) and all("svm_test_accuracy" in m for m in mb)
    assert last_weights(a)[1]["W"].tobytes() == last_weights(b)[1]["W"].tobytes()


def test_q6_resumes_in_its_second_training(real_data, tmp_path, interrupt_after, capsys):
    argv = ["q6", "--epochs", "2", "--data-dir", str(real_data), "--no-download", "--train-samples", "500",
            "--test-samples", "200", "--train-per-class", "6", "--test-per-class", "3", "--image-size", "16"]
    a, b = tmp_path / "a", tmp_path / "b"
    assert main([*argv, "--out", str(a)]) == 0
    run_interrupted(argv, b, (3,), interrupt_after, capsys)  # after scene's epoch 0: mnist is done
    assert untimed(metrics(a)) == untimed(metrics(b))
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (a, b))
    assert sa["conditions_best"] == sb["conditions_best"] and sa["report"] == sb["report"]


def test_refuses_other_parameters_and_falls_back_past_a_torn_checkpoint(fake_mnist, tmp_path, capsys):
    argv = ["mnist-nn", "--epochs", "3", "--data-dir", str(fake_mnist), "--no-download", "--cache-dir", "off"]
    a = tmp_path / "a"
    assert main([*argv, "--out", str(a)]) == 0
    ckpts = a / "checkpoints"
    capsys.readouterr()
    code = main([*argv, "--lr", "0.1", "--out", str(tmp_path / "x"), "--resume", str(ckpts)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "lr=0.5 (checkpoint) vs lr=0.1 (this run)" in err, err
    assert not (tmp_path / "x" / "metrics.jsonl").exists()  # refused before anything was written

    newest = ckpts / "ckpt-000003.ckpt"
    newest.write_bytes(newest.read_bytes()[:-200])  # torn
    with zipfile.ZipFile(ckpts / "ckpt-000002.ckpt") as zf:
        assert json.loads(zf.read("meta.json"))["state"]["current"]["epoch"] == 1
    assert main([*argv, "--out", str(tmp_path / "c"), "--resume", str(ckpts)]) == 0
    out = capsys.readouterr().out
    assert "ckpt-000003.ckpt is corrupt" in out and "falling back to ckpt-000002.ckpt" in out
    assert untimed(metrics(a)) == untimed(metrics(tmp_path / "c"))

    for bad in (tmp_path / "empty", ckpts):
        if bad == ckpts:
            for p in ckpts.iterdir():
                p.write_bytes(b"garbage")
        else:
            bad.mkdir()
        code = main([*argv, "--out", str(tmp_path / "y"), "--resume", str(bad)])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and ("no checkpoint" in err or "every checkpoint" in err), err


def test_a_write_leaves_no_torn_checkpoint_under_its_name(tmp_path, monkeypatch):
    import os

    calls = []
    real = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: calls.append((a, b)) or real(a, b))
    path = checkpoint.write(tmp_path, 1, {"job": "x", "state": {}}, {"W": np.arange(6.0).reshape(2, 3)})
    (src, dst), = calls
    assert str(dst) == str(path) and os.path.basename(str(src)).startswith(".") and not os.path.exists(src)
    assert checkpoint.candidates(tmp_path) == [path]  # the hidden temporary never counts
    meta, arrays, _ = checkpoint.read(path)
    assert meta["step"] == 1 and arrays["W"].tolist() == [[0, 1, 2], [3, 4, 5]]


def test_sigterm_waits_for_the_epochs_commit():
    import os
    import signal

    from trainer import stopping

    old = signal.getsignal(signal.SIGTERM)
    stopping.install()
    done = []
    try:
        with pytest.raises(KeyboardInterrupt):
            with stopping.commit():
                os.kill(os.getpid(), signal.SIGTERM)
                done.append("checkpoint, line and metrics")  # still runs: the signal waits
        assert done
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)  # outside a commit: at once
            for _ in range(1000):
                pass
    finally:
        signal.signal(signal.SIGTERM, old)
