"""The numpy jobs: load a dataset, train the softmax network in `stencil` or `minibatch`
mode, evaluate train and test accuracy after every epoch, fit the NN+SVM head after the
chosen epochs, and write metrics.jsonl + summary.json.

Defaults live in one place, MODE_DEFAULTS; every value used is reported in the summary.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from trainer import arrays, checkpoint, report, softmax, stopping, svm
from trainer.errors import TrainerError

MODES = ("stencil", "minibatch")
# stencil = the course template exactly; minibatch = fast and accurate.
# minibatch on 15-scene: 4096 uncentred inputs make lr 0.5 diverge; batch 32, lr 0.005 was
# the best of a small sweep (about 20% test after 10 epochs, like the course's network).
MODE_DEFAULTS = {
    ("stencil", "mnist"): {"lr": 0.5, "batch_size": 1, "init": "course", "pixels": "binary"},
    ("stencil", "15scene"): {"lr": 0.5, "batch_size": 1, "init": "course", "pixels": "binary"},
    ("minibatch", "mnist"): {"lr": 0.5, "batch_size": 512, "init": "centred", "pixels": "scaled"},
    ("minibatch", "15scene"): {"lr": 0.005, "batch_size": 32, "init": "centred", "pixels": "scaled"},
}
DATASET_OF = {"mnist-nn": "mnist", "mnist-svm": "mnist", "scene-nn": "15scene", "scene-svm": "15scene"}
PRETTY = {"mnist": "MNIST", "15scene": "SceneRec"}


@dataclass
class Config:
    job: str
    mode: str = "stencil"
    epochs: int = 10
    seed: int = 0
    lr: float | None = None
    batch_size: int | None = None
    init: str | None = None
    pixels: str | None = None            # MNIST only: binary (course) or scaled
    svm_epochs: str | None = None        # none | all | last | comma list, e.g. 0,last
    device: str = "auto"
    data_dir: str | None = None
    cache_dir: str | None = None
    download: bool = True
    out: str = "out"
    train_samples: int | None = None     # MNIST: first N (default all 60000 / 10000)
    test_samples: int | None = None
    train_per_class: int = 100           # 15-scene
    test_per_class: int = 100
    image_size: int = 64
    resume: str | None = None            # a checkpoints folder to continue from
    pace: float = 0.0                    # seconds an epoch takes at least (demos, preemption tests)

    def resolve(self, dataset: str) -> "Config":
        """A copy with the mode's defaults for `dataset` filled in, validated."""
        if self.mode not in MODES:
            raise TrainerError(f"--mode {self.mode!r}: valid: {', '.join(MODES)}")
        cfg = replace(self)
        for key, value in MODE_DEFAULTS[(self.mode, dataset)].items():
            if getattr(cfg, key) is None:
                setattr(cfg, key, value)
        if cfg.epochs < 1:
            raise TrainerError(f"--epochs {cfg.epochs}: must be at least 1")
        if not (math.isfinite(cfg.lr) and cfg.lr > 0):
            raise TrainerError(f"--lr {cfg.lr}: must be a finite number above 0")
        if cfg.batch_size < 1:
            raise TrainerError(f"--batch-size {cfg.batch_size}: must be at least 1")
        if cfg.mode == "stencil" and cfg.batch_size != 1:
            raise TrainerError(f"--batch-size {cfg.batch_size}: stencil mode is per-example (1); "
                               "use --mode minibatch for batches")
        if cfg.init not in ("course", "centred"):
            raise TrainerError(f"--init {cfg.init!r}: valid: course, centred")
        if cfg.pixels not in ("binary", "scaled"):
            raise TrainerError(f"--pixels {cfg.pixels!r}: valid: binary, scaled")
        for name in ("train_samples", "test_samples"):
            v = getattr(cfg, name)
            if v is not None and v < 1:
                raise TrainerError(f"--{name.replace('_', '-')} {v}: must be at least 1")
        return cfg


def svm_epochs(spec: str | None, epochs: int) -> list[int]:
    """'none' | 'all' | 'last' | '0,last' | '0,4,9' -> sorted epoch indices (0-based)."""
    spec = (spec or "none").strip().lower()
    if spec == "none":
        return []
    if spec == "all":
        return list(range(epochs))
    chosen = set()
    for part in spec.split(","):
        part = part.strip()
        if part == "last":
            chosen.add(epochs - 1)
            continue
        try:
            e = int(part)
        except ValueError:
            raise TrainerError(f"--svm-epochs {spec!r}: valid: none, all, last, or a list like 0,last or 0,9") from None
        if not 0 <= e < epochs:
            raise TrainerError(f"--svm-epochs {spec!r}: epoch {e} not in 0..{epochs - 1} (epochs count from 0)")
        chosen.add(e)
    return sorted(chosen)


# ------------------------------------------------------------------------ data
def load(cfg: Config, dataset: str) -> dict:
    from trainer.datasets import cache, mnist, scene, sources

    root = sources.data_root(cfg.data_dir)
    cdir = cache.cache_dir(cfg.cache_dir)
    t = time.perf_counter()
    if dataset == "mnist":
        d = mnist.load(root, cfg.download, cdir)
        ntr, nte = cfg.train_samples or len(d["y_train"]), cfg.test_samples or len(d["y_test"])
        dtype = np.float64 if cfg.mode == "stencil" else np.float32
        data = {"x_train": mnist.preprocess(d["x_train"][:ntr], cfg.pixels, dtype),
                "x_test": mnist.preprocess(d["x_test"][:nte], cfg.pixels, dtype),
                "y_train": d["y_train"][:ntr].astype(np.int64), "y_test": d["y_test"][:nte].astype(np.int64),
                "classes": [str(c) for c in range(10)]}
        preprocessing = f"{cfg.pixels} pixels" + (" (1 where pixel > 99)" if cfg.pixels == "binary" else " (/255)")
    else:
        d = scene.load(root, cfg.train_per_class, cfg.test_per_class, cfg.image_size, cfg.download, cdir)
        dtype = np.float64 if cfg.mode == "stencil" else np.float32
        data = {"x_train": d["x_train"].astype(dtype), "x_test": d["x_test"].astype(dtype),
                "y_train": d["y_train"].astype(np.int64), "y_test": d["y_test"].astype(np.int64),
                "classes": d["classes"]}
        preprocessing = f"grayscale, resized to {cfg.image_size}x{cfg.image_size}, [0, 1]"
    data["info"] = {"name": dataset, "path": d["path"], "fingerprint": d["fingerprint"],
                    "cache_hit": d["cache_hit"], "n_train": len(data["y_train"]), "n_test": len(data["y_test"]),
                    "preprocessing": preprocessing, "load_seconds": round(time.perf_counter() - t, 3)}
    return data


# ------------------------------------------------------------------------ training
RUN_ONLY = ("out", "data_dir", "cache_dir", "download", "resume", "pace")  # where, not what: not in a checkpoint's identity


def identity(cfg: Config) -> dict:
    """What a checkpoint must have been written with to be continued by this run."""
    return {"job": cfg.job, "params": {k: v for k, v in asdict(cfg).items() if k not in RUN_ONLY},
            "code_hash": checkpoint.code_hash()}


def train(cfg: Config, data: dict, run: report.Run, svm_at: list[int], label: str,
          ckpt: checkpoint.Checkpointer, done: dict | None = None) -> dict:
    """Train one network; every epoch goes to `run`, after a checkpoint with everything
    needed to continue bit for bit (W, b, the RNG -- which also drives the minibatch offsets
    and orders --, every record so far, and `done`: the finished trainings of a q6 run).
    Continues from `ckpt`'s restored state when it is this training's. Returns its summary."""
    rng = np.random.default_rng(cfg.seed)
    Xtr, ytr, Xte, yte = data["x_train"], data["y_train"], data["x_test"], data["y_test"]
    N, D = Xtr.shape
    C = len(data["classes"])
    device, why = arrays.choose(cfg.device, cfg.mode, cfg.batch_size)
    xp = arrays.module(device)
    W, b = softmax.init_params(D, C, cfg.init, rng, np.float64 if cfg.mode == "stencil" else np.float32)
    if cfg.mode == "stencil":
        from trainer.stencil import Stencil, backend
        engine = Stencil(Xtr, ytr)
        step = lambda: engine.epoch(W, b, rng.permutation(N), cfg.lr)  # noqa: E731
        evaluation = (Xtr, ytr, Xte, yte)
        detail = {"kernel": backend(), "loss": "sum over the epoch of -ln(p_y + 1e-10)"}
    else:
        from trainer.minibatch import Minibatch
        engine = Minibatch(Xtr, ytr, cfg.batch_size, cfg.lr, rng, xp)
        W, b = xp.asarray(W), xp.asarray(b)
        step = lambda: engine.epoch(W, b)  # noqa: E731
        evaluation = (engine.X, engine.y, xp.asarray(Xte), xp.asarray(yte))
        detail = {"loss": "mean over the epoch of -ln(p_y + 1e-10)",
                  "shuffle": "once, then per epoch a random batch offset and batch order"}
    gpu = arrays.gpu_name(xp)
    start, epochs = 0, []
    state = ckpt.state
    if state and state["current"]["label"] == label:  # W, b, the RNG, the records: as they were
        W[...] = xp.asarray(ckpt.arrays["W"])
        b[...] = xp.asarray(ckpt.arrays["b"])
        rng.bit_generator.state = state["current"]["rng"]
        start = state["current"]["epoch"] + 1
        epochs = [r for r in state["records"] if r["job"] == label]
        report.say(f"[{label}] resumed from checkpoint {ckpt.resumed_from}: epochs 0..{start - 1} done")
    report.say(f"[{label}] {cfg.mode} mode, lr {cfg.lr}, batch {cfg.batch_size}, init {cfg.init}, "
               f"{N} train / {len(yte)} test, device {device}{' ' + gpu if gpu else ''} ({why})"
               + (f", SVM after epochs {svm_at}" if svm_at else ""))
    for e in range(start, cfg.epochs):
        t = t_epoch = time.perf_counter()
        loss = step()
        if device == "gpu":
            xp.cuda.Device().synchronize()
        seconds = time.perf_counter() - t
        t = time.perf_counter()
        Xa, ya, Xb, yb = evaluation
        train_logits, test_logits = Xa @ W + b, Xb @ W + b
        rec = {"job": label, "dataset": data["info"]["name"], "epoch": e, "loss": float(loss),
               "loss_kind": "sum" if cfg.mode == "stencil" else "mean",
               "train_accuracy": float((train_logits.argmax(axis=1) == ya).mean()),
               "test_accuracy": float((test_logits.argmax(axis=1) == yb).mean()),
               "seconds": round(seconds, 4), "examples_per_s": round(N / seconds, 1)}
        line = (f"[{label}] epoch {e}: loss {rec['loss']:.6g} ({rec['loss_kind']}), train {rec['train_accuracy']:.2%}, "
                f"test {rec['test_accuracy']:.2%}, {seconds:.3f}s, {rec['examples_per_s']:.0f} ex/s")
        if e in svm_at:
            fit = svm.fit(arrays.to_numpy(train_logits), arrays.to_numpy(ya),
                          arrays.to_numpy(test_logits), arrays.to_numpy(yb))
            rec.update(fit, svm_fit_after_epoch=e)
            line += f" | NN+SVM (fit after epoch {e}): train {fit['svm_train_accuracy']:.2%}, test {fit['svm_test_accuracy']:.2%}"
        rec["eval_seconds"] = round(time.perf_counter() - t, 4)
        epochs.append(rec)
        with stopping.commit():  # checkpoint, line and metrics: all three or none
            ckpt.save({"current": {"label": label, "epoch": e, "rng": rng.bit_generator.state},
                       "records": [*run.records, rec], "done": done or {}},
                      {"W": arrays.to_numpy(W), "b": arrays.to_numpy(b)})
            run.epoch(rec, line)  # reported done only once its checkpoint is written
        if cfg.pace > 0:
            time.sleep(max(0.0, cfg.pace - (time.perf_counter() - t_epoch)))
    best = max(epochs, key=lambda r: r["test_accuracy"])
    out = {"best_test_accuracy": best["test_accuracy"], "best_epoch": best["epoch"],
           "final_test_accuracy": epochs[-1]["test_accuracy"],
           "device": device, "device_reason": why, "gpu": gpu, "dataset": data["info"], "mode_detail": detail,
           "median_epoch_seconds": float(np.median([r["seconds"] for r in epochs]))}
    fits = [r for r in epochs if "svm_test_accuracy" in r]
    if fits:
        sbest = max(fits, key=lambda r: r["svm_test_accuracy"])
        out["svm"] = {"fit_after_epochs": [r["epoch"] for r in fits], "best_test_accuracy": sbest["svm_test_accuracy"],
                      "best_after_epoch": sbest["epoch"], "C": 1.0, "model": "LinearSVC(one-vs-rest, dual=False, C=1)"}
    out["epochs"] = epochs
    return out


def condition_report(name: str, result: dict, with_svm: bool) -> str:
    """The course write-up's shape: highest accuracy, then epochs 0 and the last."""
    eps = result["epochs"]
    if not with_svm:
        lines = [f"{name}: {result['best_test_accuracy']:.2%} (highest accuracy, epoch {result['best_epoch']})"]
        for r in (eps[0], eps[-1]):
            lines.append(f"  Epoch {r['epoch']} loss: {r['loss']:.6g} Accuracy: {r['test_accuracy']:.2%}")
        return "\n".join(lines)
    fits = [r for r in eps if "svm_test_accuracy" in r]
    s = result["svm"]
    lines = [f"{name}: {s['best_test_accuracy']:.2%} (highest accuracy of the SVM fits after epochs "
             f"{s['fit_after_epochs']}, best after epoch {s['best_after_epoch']})"]
    for r in (fits[0], fits[-1]) if len(fits) > 1 else fits:
        lines.append(f"  Epoch {r['epoch']} loss: {r['loss']:.6g} Accuracy: {r['svm_test_accuracy']:.2%}"
                     f"  (loss: the network's epoch loss; SVM squared hinge {r['svm_squared_hinge']:.4g})")
    return "\n".join(lines)


def run_job(cfg: Config) -> dict:
    dataset = DATASET_OF[cfg.job]
    cfg = cfg.resolve(dataset)
    svm_at = svm_epochs(cfg.svm_epochs or ("0,last" if cfg.job.endswith("-svm") else "none"), cfg.epochs)
    ckpt = checkpoint.Checkpointer(cfg.out, identity(cfg), cfg.resume, report.say)  # a bad --resume fails first
    data = load(cfg, dataset)
    run = report.Run(Path(cfg.out))
    if ckpt.state:
        run.restore(ckpt.state["records"])
    result = train(cfg, data, run, svm_at, cfg.job, ckpt)
    name = f"NN{'+SVM' if svm_at else ''} on {PRETTY[dataset]}"
    text = condition_report(name, result, bool(svm_at))
    report.say(text)
    epochs = result.pop("epochs")
    return run.summary({"job": cfg.job, "mode": cfg.mode, "seed": cfg.seed, "config": _config(cfg),
                        **result, "report": text, "n_epochs": len(epochs),
                        "checkpoint": ckpt.summary(result["median_epoch_seconds"])})


def run_q6(cfg: Config) -> dict:
    """The four conditions: one network per dataset; NN+SVM fits the SVM on that same
    network's logits after the chosen epochs (default 0 and the last)."""
    configs = {d: cfg.resolve(d) for d in ("mnist", "15scene")}  # validate both before any work
    svm_at = svm_epochs(cfg.svm_epochs or "0,last", cfg.epochs)
    if not svm_at:
        raise TrainerError("--svm-epochs none: q6 reports NN+SVM, choose at least one epoch (e.g. 0,last)")
    ckpt = checkpoint.Checkpointer(cfg.out, identity(cfg), cfg.resume, report.say)
    run = report.Run(Path(cfg.out))
    done = dict((ckpt.state or {}).get("done") or {})
    if ckpt.state:
        run.restore(ckpt.state["records"])
    conditions, texts = {}, []
    for dataset, label in (("mnist", "mnist"), ("15scene", "scene")):
        if label in done:  # trained before the interruption: its figures are in the checkpoint
            result = {**done[label], "epochs": [r for r in run.records if r["job"] == label]}
        else:
            data = load(configs[dataset], dataset)
            result = train(configs[dataset], data, run, svm_at, label, ckpt, done)
            result["config"] = _config(configs[dataset])
            done[label] = {k: v for k, v in result.items() if k != "epochs"}
        texts += [condition_report(f"NN on {PRETTY[dataset]}", result, False),
                  condition_report(f"NN+SVM on {PRETTY[dataset]}", result, True)]
        result.pop("epochs")
        conditions[dataset] = result
    text = "\n".join(texts)
    report.say(text)
    best = {f"{'NN' if not s else 'NN+SVM'} on {PRETTY[d]}": (r["svm"]["best_test_accuracy"] if s else r["best_test_accuracy"])
            for d, r in conditions.items() for s in (False, True)}
    return run.summary({"job": "q6", "mode": cfg.mode, "seed": cfg.seed, "config": _config(cfg),
                        "best_test_accuracy": max(best.values()), "conditions_best": best,
                        "datasets": conditions, "report": text,
                        "checkpoint": ckpt.summary(float(np.median([r["seconds"] for r in run.records]))),
                        "note": "NN and NN+SVM share one trained network per dataset; the SVM figures "
                                "come from fits on its logits after the listed epochs"})


def _config(cfg: Config) -> dict:
    return asdict(cfg)
