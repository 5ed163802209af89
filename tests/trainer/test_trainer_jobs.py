"""Whole jobs through the command line, in-process (one TensorFlow import per session)."""

import json

import pytest

from trainer.cli import main


def read(out):
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return lines, json.loads((out / "summary.json").read_text())


@pytest.mark.slow
def test_q6_on_real_data(real_data, tmp_path, capsys):
    out = tmp_path / "q6"
    code = main(["q6", "--data-dir", str(real_data), "--no-download", "--epochs", "2", "--train-samples", "6000",
                 "--test-samples", "2000", "--train-per-class", "30", "--test-per-class", "20", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    metrics, summary = read(out)
    assert [(m["dataset"], m["epoch"]) for m in metrics] == [("mnist", 0), ("mnist", 1), ("15scene", 0), ("15scene", 1)]
    for m in metrics:
        assert {"loss", "train_accuracy", "test_accuracy", "seconds", "examples_per_s", "svm_test_accuracy",
                "svm_fit_after_epoch"} <= set(m)
    mn = summary["datasets"]["mnist"]
    assert mn["best_test_accuracy"] > 0.75 and mn["svm"]["best_test_accuracy"] > 0.75  # chance 0.10
    assert summary["datasets"]["15scene"]["dataset"]["n_train"] == 450
    assert metrics[0]["loss"] > 1000  # stencil: the SUM over the epoch, as the course reports it
    assert mn["dataset"]["fingerprint"]["canonical_mnist"] and summary["libraries"]["numpy"]
    text = capsys.readouterr().out
    for name in ("NN on MNIST", "NN+SVM on MNIST", "NN on SceneRec", "NN+SVM on SceneRec", "Epoch 0 loss", "Epoch 1 loss"):
        assert name in text and name in summary["report"]


def test_minibatch_job_and_bad_options(fake_mnist, tmp_path, capsys):
    out = tmp_path / "o"
    assert main(["mnist-nn", "--mode", "minibatch", "--batch-size", "32", "--epochs", "3", "--data-dir",
                 str(fake_mnist), "--no-download", "--out", str(out)]) == 0
    metrics, summary = read(out)
    assert len(metrics) == 3 and summary["config"]["batch_size"] == 32 and summary["device"] == "cpu"
    assert summary["best_test_accuracy"] > 0.9 and summary["config"]["pixels"] == "scaled"
    capsys.readouterr()
    for argv, words in ((["--mode", "stencil", "--batch-size", "8"], "--batch-size 8"),
                        (["--device", "gpu"], "--device gpu"), (["--svm-epochs", "12"], "--svm-epochs"),
                        (["--epochs", "x"], "--epochs")):
        code = main(["mnist-svm", "--data-dir", str(fake_mnist), "--out", str(out), *argv])
        err = capsys.readouterr().err
        assert code == 2 and words in err and err.count("\n") == 1, err


@pytest.mark.slow
def test_tf_quickstart_small(fake_mnist, tmp_path, capsys):
    pytest.importorskip("tensorflow")
    out = tmp_path / "tf"
    code = main(["tf-quickstart", "--epochs", "1", "--train-samples", "300", "--test-samples", "100",
                 "--data-dir", str(fake_mnist), "--no-download", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    metrics, summary = read(out)
    assert len(metrics) == 1 and 0 <= metrics[0]["test_accuracy"] <= 1 and metrics[0]["loss"] > 0
    assert summary["device"] == "CPU" or summary["device"].startswith("GPU")
    assert summary["threads"]["inter_op"] == 1
    assert list((out / "tensorboard" / "train").glob("events.out.tfevents.*"))
    assert list((out / "tensorboard" / "test").glob("events.out.tfevents.*"))
    assert "Epoch 1, Loss:" in capsys.readouterr().out
