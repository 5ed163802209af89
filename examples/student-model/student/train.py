"""Train the student's model on MNIST, read by ferry's own loader (trainer.datasets.mnist).
Writes what ferry reports on: OUT/metrics.jsonl (one line per epoch), OUT/summary.json, and
weights/model.npz in the workdir (the job file's `outputs` bring it back)."""

import argparse
import json
import time
from pathlib import Path

import numpy as np

from student.model import Model
from trainer.datasets import mnist  # ferry's loader: checked IDX files, cached arrays


def main(argv=None):
    p = argparse.ArgumentParser(prog="student.train")
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--lr", type=float, default=0.5)
    p.add_argument("--train-samples", type=int)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    data = mnist.load(a.data_dir, download=False)
    X = mnist.preprocess(data["x_train"], "binary")
    y = data["y_train"].astype(np.int64)
    if a.train_samples:
        X, y = X[:a.train_samples], y[:a.train_samples]
    Xt, yt = mnist.preprocess(data["x_test"], "binary"), data["y_test"].astype(np.int64)
    model = Model(seed=a.seed)
    rng = np.random.default_rng(a.seed)
    best = 0.0
    with open(a.out / "metrics.jsonl", "w") as m:
        for epoch in range(a.epochs):
            t0 = time.time()
            loss = model.epoch(X, y, rng.permutation(len(X)), a.lr)
            acc = model.accuracy(Xt, yt)
            best = max(best, acc)
            print(f"epoch {epoch} loss {loss:.4f} test accuracy {acc:.4f} ({time.time() - t0:.1f} s)", flush=True)
            m.write(json.dumps({"epoch": epoch, "loss": loss, "test_accuracy": acc}) + "\n")
            m.flush()
    Path("weights").mkdir(exist_ok=True)
    np.savez("weights/model.npz", W=model.W, b=model.b)
    (a.out / "summary.json").write_text(json.dumps({"job": "student-model", "best_test_accuracy": best,
                                                    "epochs": a.epochs}))


if __name__ == "__main__":
    main()
