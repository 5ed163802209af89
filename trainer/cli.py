"""`python -m trainer JOB [options]`: parse, run one job, exit 0 / 1 / 2.

Bad input of any kind (options, missing or corrupt data) is one line on stderr,
`trainer: error: ...`, and exit status 2; never a traceback. Option names double as the job
parameters that `cli.py run JOB --set KEY=VALUE` passes on (KEY = the option without --,
dashes or underscores).
"""

from __future__ import annotations

import argparse
import math
import sys

from trainer.errors import TrainerError

JOBS = {
    "mnist-nn": "NN on MNIST: the softmax network, 784 -> 10.",
    "mnist-svm": "NN+SVM on MNIST: the network, then LinearSVC on its logits (after epochs 0 and the last).",
    "scene-nn": "NN on 15-scene: the softmax network, 64x64 grayscale -> 15.",
    "scene-svm": "NN+SVM on 15-scene: the network, then LinearSVC on its logits.",
    "q6": "The course's Q6: the four conditions above in one run, with the write-up's table.",
    "tf-quickstart": "TensorFlow 2 'quickstart for experts' CNN on MNIST (Q7).",
}


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (raised, printed by main)
        raise TrainerError(message)


def positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} must be at least 1")
    return value


SEED_MAX = 2**32 - 1  # numpy's legacy seeding (what tf.keras.utils.set_random_seed uses) takes no more


def seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 0 <= value <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"{text} must be from 0 to {SEED_MAX}")
    return value


def learning_rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text} must be a finite number above 0")
    return value


def common(p: argparse.ArgumentParser, epochs: int) -> None:
    p.add_argument("--epochs", type=positive, default=epochs, metavar="N", help=f"passes over the data (default {epochs})")
    p.add_argument("--seed", type=seed, default=0, metavar="N", help=f"seed for init and shuffling, 0 to {SEED_MAX} (default 0)")
    p.add_argument("--data-dir", metavar="DIR", help="holds mnist/ and 15scene/ (default $FERRY_DATA_DIR, "
                   "else ~/.cache/ferry-trainer/data; missing data is downloaded and verified)")
    p.add_argument("--no-download", dest="download", action="store_false", help="fail instead of downloading missing data")
    p.add_argument("--cache-dir", metavar="DIR", help="decoded-array cache (default $FERRY_TRAINER_CACHE, "
                   "$FERRY_HOME/cache/trainer or ~/.cache/ferry-trainer; 'off' disables)")
    p.add_argument("--out", metavar="DIR", help="where metrics.jsonl and summary.json go (default ./trainer-out/JOB)")
    p.add_argument("--train-samples", type=positive, metavar="N", help="MNIST: use the first N training images (default all)")
    p.add_argument("--test-samples", type=positive, metavar="N", help="MNIST: use the first N test images (default all)")
    p.add_argument("--resume", metavar="DIR", help="continue from the newest whole checkpoint in DIR (a job writes one "
                   "after every epoch into OUT/checkpoints); the result equals the run never interrupted")


def numpy_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mode", choices=("stencil", "minibatch"), default="stencil",
                   help="stencil: the course template exactly (per-example SGD, lr 0.5, uniform init, "
                        "binarised MNIST, summed loss; default). minibatch: vectorised SGD, centred init, "
                        "pixels/255, mean loss; MNIST batch 512 lr 0.5, 15-scene batch 32 lr 0.005")
    common(p, 10)
    p.add_argument("--lr", type=learning_rate, metavar="X", help="learning rate, finite and above 0 (default 0.5; minibatch on 15-scene 0.005)")
    p.add_argument("--batch-size", type=positive, metavar="N", help="minibatch size (default 512 for MNIST, 32 for 15-scene; stencil is 1)")
    p.add_argument("--init", choices=("course", "centred"), help="course: W ~ U[0,1); centred: W ~ N(0, 0.01^2) (default per mode)")
    p.add_argument("--pixels", choices=("binary", "scaled"), help="MNIST: binary (pixel > 99) or scaled (/255) (default per mode)")
    p.add_argument("--svm-epochs", metavar="LIST", help="fit the NN+SVM head after these epochs (from 0): "
                   "none, all, last, or e.g. 0,last (default 0,last for *-svm and q6, none for *-nn)")
    p.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto",
                   help="auto: the GPU (CuPy) only where it is faster (minibatch, batch >= 2048); never for stencil")
    p.add_argument("--train-per-class", type=positive, default=100, metavar="N", help="15-scene: first N training images per class (default 100)")
    p.add_argument("--test-per-class", type=positive, default=100, metavar="N", help="15-scene: first N test images per class (default 100)")
    p.add_argument("--image-size", type=positive, default=64, metavar="N", help="15-scene: resize to N x N (default 64)")
    p.add_argument("--pace", type=float, default=0.0, metavar="S", help="hold every epoch to at least S seconds (demos and "
                   "tests of preemption: results are unchanged; default 0)")


def tf_options(p: argparse.ArgumentParser) -> None:
    common(p, 5)
    p.add_argument("--batch-size", type=positive, default=32, metavar="N", help="default 32 (the tutorial)")
    p.add_argument("--adam", choices=("fused", "keras"), default="fused",
                   help="fused: the same Adam by TensorFlow's fused kernel (default; ~1.2x faster epochs on 2 CPU cores); "
                        "keras: Keras's update, as the tutorial")
    p.add_argument("--jit", action="store_true", help="XLA-compile the steps (not in the tutorial; measured "
                   "slower on a 2-core CPU, for trying on GPUs)")
    p.add_argument("--intra-threads", type=positive, metavar="N", help="TF intra-op threads (default: usable cores)")
    p.add_argument("--inter-threads", type=positive, default=1, metavar="N", help="TF inter-op threads (default 1)")
    p.add_argument("--deterministic", action="store_true", help="enable TF op determinism: a resumed run then equals "
                   "the run never interrupted (slower on GPU)")


def parser() -> Parser:
    top = Parser(prog="python -m trainer", description="ferry's trainer: the course's softmax network (numpy), "
                 "NN+SVM, and TensorFlow's quickstart. Writes metrics.jsonl and summary.json into --out.",
                 epilog="`python -m trainer JOB --help` lists a job's options.")
    sub = top.add_subparsers(dest="job", metavar="JOB", parser_class=Parser)
    sub.required = True
    for job, text in JOBS.items():
        p = sub.add_parser(job, help=text, description=text)
        tf_options(p) if job == "tf-quickstart" else numpy_options(p)
    return top


def check(argv: list[str]) -> None:
    """Validate a job's command line exactly as a run would, without loading any data or
    TensorFlow: raises TrainerError with the one-line message a run would fail with."""
    args = vars(parser().parse_args(argv))
    job = args.pop("job")
    args["out"] = args["out"] or f"trainer-out/{job}"
    if job == "tf-quickstart":
        return
    from trainer.train import DATASET_OF, Config, svm_epochs

    cfg = Config(job=job, **args)
    for dataset in (("mnist", "15scene") if job == "q6" else (DATASET_OF[job],)):
        cfg.resolve(dataset)
    chosen = svm_epochs(cfg.svm_epochs or ("0,last" if job.endswith("-svm") or job == "q6" else "none"), cfg.epochs)
    if job == "q6" and not chosen:
        raise TrainerError("--svm-epochs none: q6 reports NN+SVM, choose at least one epoch (e.g. 0,last)")


def main(argv: list[str] | None = None) -> int:
    from trainer import stopping

    stopping.install()
    try:
        args = vars(parser().parse_args(argv))
        job = args.pop("job")
        args["out"] = args["out"] or f"trainer-out/{job}"
        if job == "tf-quickstart":
            from trainer.tfquickstart import TFConfig, run
            run(TFConfig(**args))
        else:
            from trainer.train import Config, run_job, run_q6
            (run_q6 if job == "q6" else run_job)(Config(job=job, **args))
        return 0
    except TrainerError as e:
        print(f"trainer: error: {e}", file=sys.stderr, flush=True)
        return e.exit_code
    except KeyboardInterrupt:
        print("trainer: interrupted", file=sys.stderr, flush=True)
        return 130
