#!/usr/bin/env python3
"""Benchmark of the trainer on real MNIST: one table, every row measured in this run.

    .venv/bin/python bench/trainer.py [--data-dir DIR] [--epochs 10] [--skip-peers] [--json PATH]
                                      [--tf-pairs 3] [--tf-epochs 1] [--tf-train-samples N] [--tf-only]
                                      [--tf-keras-adam]

Rows: this machine's floor for one epoch (X read once at measured bandwidth; the two
matrix products at measured GEMM rate; the larger), `minibatch` and `stencil` modes, the
straightforward per-example loop (the slow reference), scikit-learn's SGDClassifier(log_loss)
and LogisticRegression, and a Keras Dense(10) softmax model. Times are medians of epochs.
Not a test: nothing is asserted; it prints ratios against baselines from the same process.

Then `tf-quickstart` against the TensorFlow tutorial it reproduces (bench/tf_tutorial.py, the
tutorial's default configuration): --tf-pairs pairs of fresh processes, interleaved (the
order alternates pair by pair, so drift in the machine's load falls on both), each timing
--tf-epochs full epochs; per pair the ratio tutorial / ferry of the epoch time (training
loop + test loop, and training alone), then the medians; import time, peak RSS (wait4's
ru_maxrss of each process) and test accuracy of both.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
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


def run_child(argv):
    """Run argv to completion -> (stdout, peak RSS in MB of that process alone)."""
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
        err = proc.stderr.read()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        proc.stderr.close()
        out.seek(0)
        text = out.read()
    if proc.returncode:
        raise SystemExit(f"{argv[1:4]} failed (exit {proc.returncode}):\n{err[-2000:]}")
    return text, usage.ru_maxrss / 1024


def tf_tutorial(data_dir, epochs, train_samples):
    argv = [sys.executable, str(Path(__file__).with_name("tf_tutorial.py")), str(data_dir), "--epochs", str(epochs)]
    text, rss = run_child(argv + (["--train-samples", str(train_samples)] if train_samples else []))
    result = json.loads(text.strip().splitlines()[-1])
    return {"import_s": result["import_seconds"], "records": result["records"], "rss_MB": rss,
            "threads": result["threads"]}


def tf_ferry(data_dir, epochs, train_samples, extra=()):
    with tempfile.TemporaryDirectory(prefix="ferry-bench-tf-") as out:
        argv = [sys.executable, "-m", "trainer", "tf-quickstart", "--epochs", str(epochs), "--data-dir", str(data_dir),
                "--no-download", "--cache-dir", "off", "--out", out, *extra]
        _, rss = run_child(argv + (["--train-samples", str(train_samples)] if train_samples else []))
        records = [json.loads(line) for line in Path(out, "metrics.jsonl").read_text().splitlines()]
        summary = json.loads(Path(out, "summary.json").read_text())
    return {"import_s": summary["tensorflow_import_seconds"], "records": records, "rss_MB": rss,
            "threads": summary["threads"]}


TF_RUNS = {  # name -> (label, how to run it)
    "tutorial": ("TF tutorial, default configuration", lambda d, e, n: tf_tutorial(d, e, n)),
    "ferry": ("ferry tf-quickstart (defaults)", lambda d, e, n: tf_ferry(d, e, n)),
    "ferry-keras-adam": ("ferry tf-quickstart --adam keras", lambda d, e, n: tf_ferry(d, e, n, ("--adam", "keras"))),
}


def tf_pairs(data_dir, pairs, epochs, train_samples, keras_adam=False):
    """The tutorial and ferry's tf-quickstart (and, with keras_adam, ferry with the tutorial's
    Adam update: what the fused kernel is worth alone), `pairs` rounds, interleaved: each
    round runs them all, in an order rotated round by round."""
    def med(xs):
        return float(np.median(xs))

    def per_epoch(run, key):  # "total": training + test loop; "seconds": training loop
        return med([x["seconds"] + (x["eval_seconds"] if key == "total" else 0) for x in run["records"]])

    names = ["tutorial", "ferry"] + (["ferry-keras-adam"] if keras_adam else [])
    runs = {name: [] for name in names}
    for i in range(pairs):
        for name in names[i % len(names):] + names[:i % len(names)]:
            r = TF_RUNS[name][1](data_dir, epochs, train_samples)
            runs[name].append(r)
            print(f"  round {i + 1}, {name}: epoch {per_epoch(r, 'total'):.1f} s (training {per_epoch(r, 'seconds'):.1f} s), "
                  f"test {r['records'][-1]['test_accuracy']:.2%}, import {r['import_s']:.1f} s, "
                  f"peak RSS {r['rss_MB']:.0f} MB", flush=True)
    out = {"pairs": pairs, "epochs": epochs, "train_samples": train_samples}
    for name, rs in runs.items():
        out[name] = {"epoch_s": med([per_epoch(r, "total") for r in rs]), "train_s": med([per_epoch(r, "seconds") for r in rs]),
                     "import_s": med([r["import_s"] for r in rs]), "rss_MB": med([r["rss_MB"] for r in rs]),
                     "test_accuracy": [r["records"][-1]["test_accuracy"] for r in rs], "threads": rs[0]["threads"]}
        if name != "tutorial":  # per round: tutorial / this, then the median of the rounds' ratios
            out[name]["ratios"] = [per_epoch(t, "total") / per_epoch(f, "total") for t, f in zip(runs["tutorial"], rs)]
            out[name]["train_ratios"] = [per_epoch(t, "seconds") / per_epoch(f, "seconds") for t, f in zip(runs["tutorial"], rs)]
    print(f"\n| tf-quickstart, {pairs} interleaved rounds x {epochs} epoch(s)"
          f"{', ' + str(train_samples) + ' samples' if train_samples else ''} | epoch (s) | training (s) | "
          "tutorial / this, per epoch (median of rounds) | import (s) | peak RSS (MB) | test accuracy (last epoch, each run) |"
          "\n|---|---:|---:|---:|---:|---:|---|")
    for name in names:
        r = out[name]
        ratio = f"{med(r['ratios']):.2f}x" if "ratios" in r else ""
        print(f"| {TF_RUNS[name][0]} | {r['epoch_s']:.2f} | {r['train_s']:.2f} | {ratio} | {r['import_s']:.1f} | "
              f"{r['rss_MB']:.0f} | {', '.join(f'{a:.2%}' for a in r['test_accuracy'])} |")
    t, f = out["tutorial"], out["ferry"]
    print(f"\ntutorial / ferry per epoch (training + test loop): median {med(f['ratios']):.2f}x over {pairs} rounds "
          f"(each: {', '.join(f'{x:.2f}' for x in f['ratios'])}); training loop alone: median {med(f['train_ratios']):.2f}x "
          f"({', '.join(f'{x:.2f}' for x in f['train_ratios'])}). Target >= 1.5x. Peak RSS ferry / tutorial "
          f"{f['rss_MB'] / t['rss_MB']:.2f}; threads tutorial {t['threads']} (0: TensorFlow's choice), ferry {f['threads']}. "
          "Epoch times on a shared 2-core machine are noisy: read the per-round ratios.", flush=True)
    return out


def products_alone(mb, W, repeat=5):
    """Seconds of one minibatch epoch's two products alone, at its shapes (X_B W into L,
    X_B^T L into gW, with out= buffers, every batch of B and the short one): no softmax, no
    update. Spans from offset 0: mb.batches() would draw from the run's RNG."""
    L, gW = np.empty((mb.B, W.shape[1]), np.float32), np.empty_like(W)
    spans = [(s, min(s + mb.B, mb.n)) for s in range(0, mb.n, mb.B)]
    X = mb.X

    def epoch():
        for s, e in spans:
            np.matmul(X[s:e], W, out=L[:e - s])
            np.matmul(X[s:e].T, L[:e - s], out=gW)
    return best_of(epoch, repeat)


def accuracy(X, y, W, b):
    return float((softmax.predict(X, W, b) == y).mean())


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--skip-peers", action="store_true", help="only our modes, the loop and the floor")
    ap.add_argument("--json", metavar="PATH")
    ap.add_argument("--tf-pairs", type=int, default=3, metavar="N", help="tutorial/tf-quickstart process pairs (0: none)")
    ap.add_argument("--tf-epochs", type=int, default=1, metavar="N", help="epochs per TF process (default 1)")
    ap.add_argument("--tf-train-samples", type=int, metavar="N", help="TF runs on the first N training images "
                    "(quick iterations; default all: the numbers to quote are full epochs)")
    ap.add_argument("--tf-only", action="store_true", help="only the TF comparison")
    ap.add_argument("--tf-keras-adam", action="store_true", help="also ferry with --adam keras in each round")
    args = ap.parse_args()
    data_root = sources.data_root(args.data_dir)
    if args.tf_only:
        tf = tf_pairs(data_root, args.tf_pairs, args.tf_epochs, args.tf_train_samples, args.tf_keras_adam)
        if args.json:
            Path(args.json).write_text(json.dumps({"tf_quickstart": tf}, indent=2))
        return

    d = mnist.load(data_root, True, cache.cache_dir())
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
    mb_rows = []
    for threads in (None, 1):
        rng = np.random.default_rng(0)
        W, b = softmax.init_params(D, C, "centred", rng, np.float32)
        mb = Minibatch(Xs, ytr, 512, 0.5, rng)
        times, gemm_times = [], []
        with threadpool_limits(threads):
            for _ in range(E):  # interleaved: the products alone, then a whole epoch
                gemm_times.append(products_alone(mb, W, 1))
                t = time.perf_counter()
                mb.epoch(W, b)
                times.append(time.perf_counter() - t)
        label = "minibatch (ours)" + (", 1 BLAS thread" if threads == 1 else "")
        epoch_s, gemm_s = float(np.median(times)), float(np.median(gemm_times))
        # The floor again, with the products at the rate this machine runs these skinny shapes
        # (measured just now, at this thread count), not at the square-GEMM rate.
        skinny_rate = f["flops"] / gemm_s
        skinny_floor = max(f["memory_s"], gemm_s)
        mb_rows.append({"threads": threads or "default", "epoch_s": epoch_s, "products_s": gemm_s,
                        "skinny_GFLOPs": skinny_rate / 1e9, "skinny_floor_s": skinny_floor})
        add(label, epoch_s, accuracy(Xst, yte, W, b),
            f"batch 512, lr 0.5, {E} epochs; median epoch = {epoch_s / f['floor_s']:.1f}x floor; its two products "
            f"alone take {gemm_s * 1e3:.1f} ms ({skinny_rate / 1e9:.0f} GFLOP/s, {gemm_s / epoch_s:.0%} of the epoch) "
            f"= {gemm_s / f['floor_s']:.1f}x floor; {epoch_s / skinny_floor:.2f}x the floor at that rate")
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
    best = min(mb_rows, key=lambda r: r["epoch_s"])
    print(f"minibatch, why not 2x: the floor prices the products at the square-GEMM rate ({f['gemm_GFLOPs']:.0f} GFLOP/s, "
          f"{f['compute_s'] * 1e3:.1f} ms) but this machine's BLAS runs the epoch's skinny shapes (512x784 by 784x10 "
          f"and 784x512 by 512x10) at {best['skinny_GFLOPs']:.0f} GFLOP/s ({best['threads']} threads): the two products "
          f"alone, nothing else, take {best['products_s'] * 1e3:.1f} ms = {best['products_s'] / f['floor_s']:.1f}x the "
          f"floor. Against the floor at that measured rate (max(X read {f['memory_s'] * 1e3:.1f} ms, products "
          f"{best['products_s'] * 1e3:.1f} ms) = {best['skinny_floor_s'] * 1e3:.1f} ms) minibatch's best epoch "
          f"({best['epoch_s'] * 1e3:.1f} ms) is {best['epoch_s'] / best['skinny_floor_s']:.2f}x (target <= 2x): "
          f"the softmax and update add {max(best['epoch_s'] - best['products_s'], 0) * 1e3:.1f} ms.", flush=True)
    tf = None
    if args.tf_pairs > 0:
        print(f"\ntf-quickstart vs the TF tutorial: {args.tf_pairs} interleaved pairs of processes", flush=True)
        tf = tf_pairs(data_root, args.tf_pairs, args.tf_epochs, args.tf_train_samples, args.tf_keras_adam)
    if args.json:
        Path(args.json).write_text(json.dumps({"floor": f, "rows": rows, "minibatch": mb_rows, "tf_quickstart": tf},
                                              indent=2, default=str))


if __name__ == "__main__":
    main()
