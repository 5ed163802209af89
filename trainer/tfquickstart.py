"""TensorFlow 2 "quickstart for experts" (tensorflow/docs, tutorials/quickstart/advanced),
on MNIST from our data directory instead of `tf.keras.datasets` (which downloads).

The tutorial's model, batch order (shuffle(10000).batch(32)), GradientTape train step and test
step under tf.function, Mean/SparseCategoricalAccuracy metrics reset each epoch, and its printout.
TensorBoard event files go to OUT/tensorboard/{train,test}.

Speed (docs/trainer.md, "tf-quickstart speed"; bench/trainer.py measures it against a copy of
the tutorial): the same Adam, computed by TensorFlow's fused kernel (`--adam fused`, default)
instead of Keras's ~10 elementwise ops per variable; the update is most of a step's time on a
CPU: one pass over Dense(128)'s 2.8M weights and its two moment slots instead of ten. The
batches are gathered inside the step from the whole data set by index, in the order the
tutorial's `shuffle(10000).batch(32)` gives (the same tf.data shuffle, run on the indices), so
no tf.data pipeline copies images, and one call of the compiled function runs 100 steps in a
graph loop instead of a Python call per step. `--adam keras` runs the tutorial's optimizer update.

Adam, both ways (t = optimizer.iterations + 1, the Keras defaults lr 0.001, b1 0.9, b2 0.999,
eps 1e-7; the same slot variables, so checkpoints hold the same state):
    alpha = lr sqrt(1 - b2^t) / (1 - b1^t)
    m += (g - m)(1 - b1);  v += (g^2 - v)(1 - b2);  w -= alpha m / (sqrt(v) + eps)
Keras's Adam.update_step and TF's ApplyAdam CPU kernel (use_nesterov=False) both compute
exactly this, eps outside the square root and not bias-corrected. One difference besides float
rounding: Keras takes (1 - b2) in double precision (0.001), the kernel in float32 from
float32(0.999) (0.00099998713, 1.3e-5 relative; likewise 1 - b1, 2e-7): the fused kernel is
Adam with b2 = float32(0.999). Training amplifies these as it does any rounding difference;
accuracy is the same within run-to-run noise (docs/trainer.md).

Checkpoints (trainer/checkpoint.py): after every epoch, OUT/checkpoints/ckpt-NNNNNN.ckpt holds
the model's and the optimizer's variables (a tf.train.Checkpoint, packed as the ferry
checkpoint's files), the epoch and the records so far. `--resume DIR` restores the newest one
and continues with the next epoch. Epoch e shuffles with its own seed (from --seed and e), so
its order does not depend on how many epochs this process has run: with --deterministic (TF op
determinism) a resumed run ends with the same weights and metrics as the run never interrupted.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from trainer import checkpoint, report, stopping
from trainer.errors import TrainerError


@dataclass
class TFConfig:
    epochs: int = 5
    batch_size: int = 32
    shuffle_buffer: int = 10000
    train_samples: int | None = None
    test_samples: int | None = None
    seed: int = 0
    data_dir: str | None = None
    cache_dir: str | None = None
    download: bool = True
    out: str = "out"
    intra_threads: int | None = None   # default: the cores we may use
    inter_threads: int = 1
    jit: bool = False
    resume: str | None = None          # a directory of checkpoints to continue from
    deterministic: bool = False        # tf.config.experimental.enable_op_determinism()
    adam: str = "fused"                # fused: tf.raw_ops.ResourceApplyAdam; keras: Keras's update


JOB = "tf-quickstart"
ADAM = ("fused", "keras")
EVAL_BATCHES = 32  # test batches per test-step call
STEPS_PER_CALL = 100  # training steps per train_steps call
# Where a run reads and writes, not what it computes: free to differ on --resume.
NOT_IDENTITY = ("out", "data_dir", "cache_dir", "download", "resume")
TF_PREFIX = "tf"  # the tf.train.Checkpoint's files: tf.index, tf.data-00000-of-00001


def identity(cfg: TFConfig) -> dict:
    params = {k: v for k, v in asdict(cfg).items() if k not in NOT_IDENTITY}
    return {"job": JOB, "params": params, "code_hash": checkpoint.code_hash()}


def epoch_seed(seed: int, epoch: int) -> int:
    """Epoch `epoch`'s shuffle seed: a function of the run's seed and the epoch alone."""
    import numpy as np

    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def tf_checkpoint_files(tracked) -> dict[str, bytes]:
    """`tracked` (a tf.train.Checkpoint) written to a temporary directory -> its files."""
    with tempfile.TemporaryDirectory(prefix="ferry-tf-ckpt-") as tmp:
        tracked.write(os.path.join(tmp, TF_PREFIX))
        return {f.name: f.read_bytes() for f in sorted(Path(tmp).iterdir())}


def restore_tf_checkpoint(tracked, files: dict[str, bytes], name: str) -> None:
    """Every variable of `tracked` (already built) from a checkpoint's files, exactly."""
    if not any(key.startswith(TF_PREFIX + ".index") for key in files):
        raise TrainerError(f"checkpoint {name} has no TensorFlow variables (files: {sorted(files)})")
    with tempfile.TemporaryDirectory(prefix="ferry-tf-ckpt-") as tmp:
        for key, data in files.items():
            (Path(tmp) / Path(key).name).write_bytes(data)
        try:  # eager: the variables exist, so reading assigns them now, before tmp goes
            tracked.read(os.path.join(tmp, TF_PREFIX)).assert_consumed()
        except (AssertionError, ValueError) as exc:
            text = " ".join(str(exc).split())
            raise TrainerError(f"checkpoint {name} does not fit this model: "
                               f"{text if len(text) < 200 else text[:197] + '...'}") from None


def epoch_order(tf, n: int, buffer: int, seed: int):
    """The example indices in the order `Dataset.from_tensor_slices(data).shuffle(buffer,
    seed=seed, reshuffle_each_iteration=False)` yields them: the shuffle draws the same
    random numbers whatever the elements are, so shuffling the indices gives its order."""
    order = tf.data.Dataset.range(n).shuffle(buffer, seed=seed, reshuffle_each_iteration=False)
    return order.batch(n).get_single_element().numpy()


def fused_adam(tf, optimizer):
    """apply(gradients, variables): one Adam step of `optimizer` (a built Keras Adam) by TF's
    fused ApplyAdam kernel, on the optimizer's own slots and iteration counter (module
    docstring: the formula). Only Adam's defaults: no amsgrad, clipping or weight decay."""
    if (optimizer.amsgrad or optimizer.weight_decay or optimizer.clipnorm or optimizer.clipvalue
            or optimizer.global_clipnorm or optimizer.use_ema):
        raise TrainerError("the fused Adam implements plain Adam only: use --adam keras")
    f32 = tf.float32
    b1, b2, eps = (tf.constant(x, f32) for x in (optimizer.beta_1, optimizer.beta_2, optimizer.epsilon))

    def apply(gradients, variables):
        t = tf.cast(optimizer.iterations + 1, f32)
        lr = tf.cast(optimizer.learning_rate, f32)
        b1_power, b2_power = tf.pow(b1, t), tf.pow(b2, t)
        for g, var in zip(gradients, variables):
            i = optimizer._get_variable_index(var)
            tf.raw_ops.ResourceApplyAdam(var=var.handle, m=optimizer._momentums[i].handle,
                                         v=optimizer._velocities[i].handle, beta1_power=b1_power,
                                         beta2_power=b2_power, lr=lr, beta1=b1, beta2=b2, epsilon=eps, grad=g)
        optimizer.iterations.assign_add(1)
    return apply


def import_tensorflow(cfg: TFConfig):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import tensorflow as tf
    except ImportError:
        raise TrainerError("tf-quickstart needs TensorFlow: pip install 'tensorflow==2.21.0' "
                           "(or ferry's [tf] extra)", exit_code=1) from None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:  # must happen before TF runs any op; harmless if this process already ran one
        tf.config.threading.set_inter_op_parallelism_threads(cfg.inter_threads)
        tf.config.threading.set_intra_op_parallelism_threads(cfg.intra_threads or cores)
    except RuntimeError:
        pass
    return tf


def device_name(tf) -> str:
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return "CPU"
    details = tf.config.experimental.get_device_details(gpus[0])
    return f"GPU {details.get('device_name', gpus[0].name)}"


def scalar(tf, writer, step: int, **values) -> None:
    """TensorBoard scalars through TF's core summary op (tf.summary.scalar needs the
    tensorboard package, which TensorFlow 2.21 no longer installs)."""
    from tensorflow.core.framework import summary_pb2

    meta = summary_pb2.SummaryMetadata(plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"))
    with writer.as_default():
        for tag, value in values.items():
            tf.summary.write(tag, tf.constant(value, tf.float32), step=step, metadata=meta)


def run(cfg: TFConfig) -> dict:
    for name in ("epochs", "batch_size", "train_samples", "test_samples"):
        v = getattr(cfg, name)
        if v is not None and v < 1:
            raise TrainerError(f"--{name.replace('_', '-')} {v}: must be at least 1")
    if cfg.adam not in ADAM:
        raise TrainerError(f"--adam {cfg.adam}: must be one of {', '.join(ADAM)}")
    # Before any data, TensorFlow or --out's metrics.jsonl: a refused --resume costs nothing.
    ckpt = checkpoint.Checkpointer(cfg.out, identity(cfg), resume=cfg.resume, say=report.say)
    state = ckpt.state
    if ckpt.resumed_from is not None and not (isinstance(state, dict) and isinstance(state.get("epoch"), int)
                                              and isinstance(state.get("records"), list)):
        raise TrainerError(f"--resume {cfg.resume}: {ckpt.resumed_from} has no epoch and records in its state")
    import numpy as np

    from trainer.datasets import cache, mnist, sources

    d = mnist.load(sources.data_root(cfg.data_dir), cfg.download, cache.cache_dir(cfg.cache_dir))
    ntr, nte = cfg.train_samples or len(d["y_train"]), cfg.test_samples or len(d["y_test"])
    # The tutorial: x / 255.0, then a channel axis.
    x_train = (d["x_train"][:ntr].reshape(-1, 28, 28, 1) / 255.0).astype("float32")
    x_test = (d["x_test"][:nte].reshape(-1, 28, 28, 1) / 255.0).astype("float32")
    y_train, y_test = d["y_train"][:ntr].astype("int64"), d["y_test"][:nte].astype("int64")

    t0 = time.perf_counter()
    tf = import_tensorflow(cfg)
    tf.keras.utils.set_random_seed(cfg.seed)   # Python, numpy and TF together
    if cfg.deterministic:
        tf.config.experimental.enable_op_determinism()
    device = device_name(tf)
    import_seconds = time.perf_counter() - t0  # import + runtime start-up
    run_ = report.Run(Path(cfg.out))
    report.say(f"[tf-quickstart] TensorFlow {tf.__version__} on {device}; {ntr} train / {nte} test, "
               f"batch {cfg.batch_size}, {cfg.epochs} epochs (import {import_seconds:.1f}s)")

    # The data once as tensors; a step gathers its batch by index (captured by the steps,
    # not copied into their graphs).
    x_all, y_all = tf.constant(x_train), tf.constant(y_train)
    x_tst, y_tst = tf.constant(x_test), tf.constant(y_test)

    def train_calls(epoch: int):
        """The epoch's batches as index arrays [steps, batch], STEPS_PER_CALL batches per array
        and the last, smaller batch (if any) alone: the tutorial's shuffle(10000).batch(32),
        with a seed of the epoch's own instead of one iterator reshuffling, so epoch e sees
        the same order in a resumed process."""
        order = epoch_order(tf, ntr, cfg.shuffle_buffer, epoch_seed(cfg.seed, epoch))
        full = ntr // cfg.batch_size * cfg.batch_size
        batches = order[:full].reshape(-1, cfg.batch_size)
        calls = [batches[s:s + STEPS_PER_CALL] for s in range(0, len(batches), STEPS_PER_CALL)]
        return calls + ([order[full:][None]] if full < ntr else [])

    index_spec = [tf.TensorSpec([None], tf.int64)]
    # The test loop evaluates EVAL_BATCHES of the tutorial's batches per call (one pass over
    # Dense(128)'s weights for 1024 images, not 32) and feeds the metrics the same values:
    # each batch's mean loss and every prediction.
    chunk = cfg.batch_size * EVAL_BATCHES
    test_chunks = [np.arange(s, min(s + chunk, nte)) for s in range(0, nte, chunk)]

    class MyModel(tf.keras.Model):
        def __init__(self):
            super().__init__()
            self.conv1 = tf.keras.layers.Conv2D(32, 3, activation="relu")
            self.flatten = tf.keras.layers.Flatten()
            self.d1 = tf.keras.layers.Dense(128, activation="relu")
            self.d2 = tf.keras.layers.Dense(10)

        def call(self, x):
            x = self.conv1(x)
            x = self.flatten(x)
            x = self.d1(x)
            return self.d2(x)

    model = MyModel()
    loss_object = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    optimizer = tf.keras.optimizers.Adam()
    model(x_train[:1])                              # create the variables and Adam's slots
    optimizer.build(model.trainable_variables)
    apply_adam = fused_adam(tf, optimizer) if cfg.adam == "fused" else None
    train_loss = tf.keras.metrics.Mean(name="train_loss")
    train_accuracy = tf.keras.metrics.SparseCategoricalAccuracy(name="train_accuracy")
    test_loss = tf.keras.metrics.Mean(name="test_loss")
    test_accuracy = tf.keras.metrics.SparseCategoricalAccuracy(name="test_accuracy")

    def train_step(index):
        images, labels = tf.gather(x_all, index), tf.gather(y_all, index)
        with tf.GradientTape() as tape:
            # training=True is only needed if there are layers with different
            # behavior during training versus inference (e.g. Dropout).
            predictions = model(images, training=True)
            loss = loss_object(labels, predictions)
        gradients = tape.gradient(loss, model.trainable_variables)
        if apply_adam is None:
            optimizer.apply_gradients(zip(gradients, model.trainable_variables))
        else:
            apply_adam(gradients, model.trainable_variables)
        train_loss(loss)
        train_accuracy(labels, predictions)

    # One call runs a [steps, batch] array of batches, one train_step after another in a
    # graph loop (each step's updates before the next step's reads: the same results as a
    # call per step, bit for bit): a call per step costs ~2 ms of Python and dispatch, a
    # sixth of the step. A signal is handled between calls (STEPS_PER_CALL steps, ~1 s).
    @tf.function(jit_compile=cfg.jit or None, input_signature=[tf.TensorSpec([None, None], tf.int64)])
    def train_steps(batches):
        for s in tf.range(tf.shape(batches)[0]):
            train_step(batches[s])

    @tf.function(jit_compile=cfg.jit or None, input_signature=index_spec)  # one trace for every batch size
    def test_step(index):
        images, labels = tf.gather(x_tst, index), tf.gather(y_tst, index)
        predictions = model(images, training=False)
        per_example = tf.keras.losses.sparse_categorical_crossentropy(labels, predictions, from_logits=True)
        # The tutorial's batch means, one each: the losses zero-padded to whole batches, summed
        # per batch, divided by each batch's size (segment_mean has no XLA kernel: --jit).
        n, size = tf.shape(per_example)[0], cfg.batch_size
        sums = tf.reduce_sum(tf.reshape(tf.pad(per_example, [[0, (size - n % size) % size]]), [-1, size]), 1)
        sizes = tf.minimum(size, n - tf.range(tf.shape(sums)[0]) * size)
        test_loss(sums / tf.cast(sizes, sums.dtype))
        test_accuracy(labels, predictions)

    tracked = tf.train.Checkpoint(model=model, optimizer=optimizer)
    start, tf_write_seconds = 0, []
    if ckpt.resumed_from is not None:
        restore_tf_checkpoint(tracked, ckpt.files or {}, ckpt.resumed_from)
        start = state["epoch"] + 1
        run_.restore(state["records"])
        left = (f"continuing with epoch {start + 1}" if start < cfg.epochs else "nothing left to train")
        report.say(f"[tf-quickstart] resumed from {Path(cfg.resume) / ckpt.resumed_from}: "
                   f"epoch {start} of {cfg.epochs} done, {left}")

    logs = Path(cfg.out) / "tensorboard"
    train_writer = tf.summary.create_file_writer(str(logs / "train"))
    test_writer = tf.summary.create_file_writer(str(logs / "test"))
    for epoch in range(start, cfg.epochs):
        train_loss.reset_state()
        train_accuracy.reset_state()
        test_loss.reset_state()
        test_accuracy.reset_state()
        t = time.perf_counter()
        for batches in train_calls(epoch):
            train_steps(batches)
        seconds = time.perf_counter() - t
        for index in test_chunks:
            test_step(index)
        eval_seconds = time.perf_counter() - t - seconds
        rec = {"job": "tf-quickstart", "epoch": epoch, "loss": float(train_loss.result()),
               "train_accuracy": float(train_accuracy.result()), "test_loss": float(test_loss.result()),
               "test_accuracy": float(test_accuracy.result()), "seconds": round(seconds, 3),
               "examples_per_s": round(ntr / seconds, 1), "eval_seconds": round(eval_seconds, 3)}
        scalar(tf, train_writer, epoch, loss=rec["loss"], accuracy=rec["train_accuracy"])
        scalar(tf, test_writer, epoch, loss=rec["test_loss"], accuracy=rec["test_accuracy"])
        train_writer.flush()
        test_writer.flush()
        # The checkpoint before the record: a run stopped between the two gets the record
        # back from the checkpoint's state on --resume.
        tw = time.perf_counter()
        files = tf_checkpoint_files(tracked)
        tf_write_seconds.append(time.perf_counter() - tw)
        with stopping.commit():  # checkpoint, line and metrics: all three or none
            ckpt.save({"epoch": epoch, "records": [*run_.records, rec]}, files=files)
            # The tutorial's printout (epochs from 1), then our timing.
            run_.epoch(rec, f"Epoch {epoch + 1}, Loss: {rec['loss']}, Accuracy: {rec['train_accuracy'] * 100}, "
                            f"Test Loss: {rec['test_loss']}, Test Accuracy: {rec['test_accuracy'] * 100} "
                            f"[{seconds:.1f}s, {rec['examples_per_s']:.0f} ex/s]")
    train_writer.flush()
    test_writer.flush()
    best = max(run_.records, key=lambda r: r["test_accuracy"])
    epoch_seconds = sorted(r["seconds"] for r in run_.records)[len(run_.records) // 2]
    ckpt_summary = ckpt.summary(epoch_seconds)
    if tf_write_seconds:  # save() times the ferry file; before it, the tf.train.Checkpoint's write
        total = sorted(w + z for w, z in zip(tf_write_seconds, ckpt.seconds))[len(tf_write_seconds) // 2]
        ckpt_summary.update(tf_write_median_seconds=round(sorted(tf_write_seconds)[len(tf_write_seconds) // 2], 6),
                            total_median_seconds=round(total, 6),
                            total_share_of_epoch=round(total / epoch_seconds, 5) if epoch_seconds else None)
    return run_.summary({
        "job": "tf-quickstart", "mode": "tutorial", "seed": cfg.seed, "config": asdict(cfg),
        "device": device, "gpu": device[4:] if device.startswith("GPU") else None,
        "best_test_accuracy": best["test_accuracy"], "best_epoch": best["epoch"],
        "final_test_accuracy": run_.records[-1]["test_accuracy"],
        "dataset": {"name": "mnist", "path": d["path"], "fingerprint": d["fingerprint"], "n_train": ntr,
                    "n_test": nte, "preprocessing": "x / 255, channel axis"},
        "tensorflow_import_seconds": round(import_seconds, 2),
        "threads": {"inter_op": tf.config.threading.get_inter_op_parallelism_threads(),
                    "intra_op": tf.config.threading.get_intra_op_parallelism_threads()},
        "tensorboard": str(logs),
        "checkpoint": ckpt_summary,
    })
