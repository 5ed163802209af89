#!/usr/bin/env python3
"""Benchmark of the trainer on real MNIST: one table, every row measured in this run.

    .venv/bin/python bench/trainer.py [--data-dir DIR] [--epochs 10] [--skip-peers] [--json PATH]

Rows: this machine's floor for one epoch (X read once at measured bandwidth; the two
matrix products at measured GEMM rate; the larger), `minibatch` and `stencil` modes, the
straightforward per-example loop (the slow reference), scikit-learn's SGDClassifier(log_loss)
and LogisticRegression, and a Keras Dense(10) softmax model. Times are medians of epochs.
Not a test: nothing is asserted; it prints ratios against baselines from the same process.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainer import reference, softmax, stencil  # noqa: E402
from trainer.datasets import cache, mnist, sources  # noqa: E402
from trainer.minibatch import Minibatch  # noqa: E402


def best_of(fn, repeat):
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def floor(X, C):
    """Seconds one epoch cannot beat: max(bytes of X / read bandwidth, FLOPs / GEMM rate)."""
    N, D = X.shape
    v = np.ones(N, X.dtype)
    bandwidth = X.nbytes / best_of(lambda: v @ X, 7)          # one streaming pass over X
    A = np.random.default_rng(0).random((2048, 2048), np.float32)
    gemm = 2 * 2048**3 / best_of(lambda: A @ A, 3)
    flops = 2 * (2 * N * D * C)                                 # forward X W and backward X^T G
    Wt, G = np.ones((D, C), np.float32), np.ones((512, C), np.float32)
    skinny = 2 * (2 * 512 * D * C) / best_of(lambda: (X[:512] @ Wt, X[:512].T @ G), 50)
    return {"bandwidth_GBps": bandwidth / 1e9, "gemm_GFLOPs": gemm / 1e9, "skinny_gemm_GFLOPs": skinny / 1e9,
            "memory_s": X.nbytes / bandwidth, "compute_s": flops / gemm, "floor_s": max(X.nbytes / bandwidth, flops / gemm),
            "flops": flops, "bytes": X.nbytes}


def accuracy(X, y, W, b):
    return float((softmax.predict(X, W, b) == y).mean())


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--skip-peers", action="store_true", help="only our modes, the loop and the floor")
    ap.add_argument("--json", metavar="PATH")
    args = ap.parse_args()

    d = mnist.load(sources.data_root(args.data_dir), True, cache.cache_dir())
    ytr, yte = d["y_train"].astype(np.int64), d["y_test"].astype(np.int64)
    Xs, Xst = mnist.preprocess(d["x_train"], "scaled", np.float32), mnist.preprocess(d["x_test"], "scaled", np.float32)
    Xb, Xbt = mnist.preprocess(d["x_train"], "binary"), mnist.preprocess(d["x_test"], "binary")
    N, D, C, E = len(ytr), 784, 10, args.epochs
    rows = []

    def add(name, epoch_s, acc, note):
        rows.append({"name": name, "epoch_s": epoch_s, "test_accuracy": acc, "note": note})
        print(f"  {name}: {epoch_s * 1e3:.1f} ms/epoch, test {acc:.2%}  ({note})", flush=True)

    print(f"numpy {np.__version__}, {len(os.sched_getaffinity(0))} cores, stencil kernel: {stencil.backend()}", flush=True)
    f = floor(Xs, C)
    add("floor (this machine)", f["floor_s"], float("nan"),
        f"X {f['bytes'] / 1e6:.0f} MB at {f['bandwidth_GBps']:.1f} GB/s = {f['memory_s'] * 1e3:.1f} ms; "
        f"{f['flops'] / 1e9:.2f} GFLOP at {f['gemm_GFLOPs']:.0f} GFLOP/s = {f['compute_s'] * 1e3:.1f} ms")

    # minibatch: defaults of the mode (batch 512, lr 0.5, centred init, pixels / 255)
    from threadpoolctl import threadpool_limits
    for threads in (None, 1):
        rng = np.random.default_rng(0)
        W, b = softmax.init_params(D, C, "centred", rng, np.float32)
        mb = Minibatch(Xs, ytr, 512, 0.5, rng)
        times = []
        with threadpool_limits(threads):
            for _ in range(E):
                t = time.perf_counter()
                mb.epoch(W, b)
                times.append(time.perf_counter() - t)
        label = "minibatch (ours)" + (", 1 BLAS thread" if threads == 1 else "")
        add(label, float(np.median(times)), accuracy(Xst, yte, W, b),
            f"batch 512, lr 0.5, {E} epochs; median epoch = {np.median(times) / f['floor_s']:.1f}x floor; "
            f"skinny GEMM runs at {f['skinny_gemm_GFLOPs']:.0f} GFLOP/s")
    mb_s = rows[1]["epoch_s"]

    # stencil: the course procedure; first epoch also compared with the reference loop
    rng = np.random.default_rng(0)
    W0, b0 = softmax.init_params(D, C, "course", rng)
    order0 = rng.permutation(N)
    engine = stencil.Stencil(Xb, ytr)
    W, b = W0.copy(), b0.copy()
    times = []
    for e in range(E):
        order = order0 if e == 0 else rng.permutation(N)
        t = time.perf_counter()
        engine.epoch(W, b, order, 0.5)
        times.append(time.perf_counter() - t)
        if e == 0:
            W_st1, b_st1 = W.copy(), b.copy()
    st_s = float(np.median(times))
    add(f"stencil (ours, {stencil.backend()})", st_s, accuracy(Xbt, yte, W, b),
        f"course settings, {E} epochs, binarised; epoch-1 test {accuracy(Xbt, yte, W_st1, b_st1):.2%}")
    if stencil.backend() == "numba":
        W, b = W0.copy(), b0.copy()
        t = time.perf_counter()
        stencil.Stencil(Xb, ytr, use_numba=False).epoch(W, b, order0, 0.5)
        s = time.perf_counter() - t
        add("stencil (ours, numpy fallback)", s, accuracy(Xbt, yte, W, b),
            f"1 epoch; max|W - stencil W| = {np.abs(W - W_st1).max():.1e}")

    W, b = W0.copy(), b0.copy()
    t = time.perf_counter()
    reference.epoch(W, b, Xb, ytr, order0, 0.5)
    loop_s = time.perf_counter() - t
    W_ref = W.copy()
    dW = float(np.abs(W_ref - W_st1).max())
    add("per-example Python loop (reference)", loop_s, accuracy(Xbt, yte, W, b),
        f"1 epoch; stencil is {loop_s / st_s:.0f}x faster; max|W_loop - W_stencil| after 1 epoch = {dW:.1e}")

    W, b = W0.copy(), b0.copy()
    t = time.perf_counter()
    for i in order0:  # the same loop with the logits by BLAS (x @ W): a different summation order
        x = Xb[i]
        p = softmax.softmax_row(x @ W + b)
        g = p.copy()
        g[ytr[i]] -= 1
        W -= 0.5 * np.outer(x, g)
        b -= 0.5 * g
    blas_s = time.perf_counter() - t
    add("per-example loop, logits by x @ W", blas_s, accuracy(Xbt, yte, W, b),
        f"1 epoch; max|W - W_loop| = {np.abs(W - W_ref).max():.2g}: a 1-ulp difference in the "
        "logits grows to O(1) at lr 0.5")

    if not args.skip_peers:
        import warnings

        from sklearn.exceptions import ConvergenceWarning
        from sklearn.linear_model import LogisticRegression, SGDClassifier
        warnings.simplefilter("ignore", ConvergenceWarning)
        t = time.perf_counter()
        sgd = SGDClassifier(loss="log_loss", max_iter=E, tol=None, random_state=0).fit(Xs, ytr)
        s = time.perf_counter() - t
        add("scikit-learn SGDClassifier(log_loss)", s / E, float(sgd.score(Xst, yte)), f"{E} epochs, total {s:.1f} s")
        t = time.perf_counter()
        lr = LogisticRegression(max_iter=30).fit(Xs, ytr)
        s = time.perf_counter() - t
        add("scikit-learn LogisticRegression (lbfgs)", s / lr.n_iter_[0], float(lr.score(Xst, yte)),
            f"{lr.n_iter_[0]} iterations ('epoch' = 1 iteration), total {s:.1f} s")
        t = time.perf_counter()
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import tensorflow as tf
        tf.config.threading.set_inter_op_parallelism_threads(1)
        tf.config.threading.set_intra_op_parallelism_threads(len(os.sched_getaffinity(0)))
        tf.keras.utils.set_random_seed(0)
        model = tf.keras.Sequential([tf.keras.Input((D,)), tf.keras.layers.Dense(10)])
        model.compile("adam", tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
        import_s = time.perf_counter() - t

        class Clock(tf.keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                self.t = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                times.append(time.perf_counter() - self.t)

        times = []
        model.fit(Xs, ytr, batch_size=128, epochs=E, verbose=0, callbacks=[Clock()])
        acc = float(model.evaluate(Xst, yte, verbose=0)[1])
        add("Keras Dense(10) softmax", float(np.median(times)), acc,
            f"batch 128, Adam, {E} epochs; TF import + build {import_s:.1f} s")

    print("\n| method | epoch (ms) | vs floor | test accuracy | notes |\n|---|---:|---:|---:|---|")
    for r in rows:
        acc = "" if r["test_accuracy"] != r["test_accuracy"] else f"{r['test_accuracy']:.2%}"
        print(f"| {r['name']} | {r['epoch_s'] * 1e3:.1f} | {r['epoch_s'] / f['floor_s']:.1f}x | {acc} | {r['note']} |")
    print(f"\nminibatch: {mb_s / f['floor_s']:.1f}x the floor (target <= 2x), test {rows[1]['test_accuracy']:.2%} after "
          f"{E} epochs (target >= 92%). stencil: {loop_s / st_s:.0f}x faster than the loop (target >= 10x), "
          f"max|dW| = {dW:.1e} after one epoch (target: float tolerance).")
    if args.json:
        Path(args.json).write_text(json.dumps({"floor": f, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
