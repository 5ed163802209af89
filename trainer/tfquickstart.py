"""TensorFlow 2 "quickstart for experts" (tensorflow/docs, tutorials/quickstart/advanced),
on MNIST from our data directory instead of `tf.keras.datasets` (which downloads).

The tutorial's model, tf.data pipeline, GradientTape train step and test step under
tf.function, Mean/SparseCategoricalAccuracy metrics reset each epoch, and its printout.
TensorBoard event files go to OUT/tensorboard/{train,test}.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path


from trainer import report
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
    device = device_name(tf)
    import_seconds = time.perf_counter() - t0  # import + runtime start-up
    run_ = report.Run(Path(cfg.out))
    report.say(f"[tf-quickstart] TensorFlow {tf.__version__} on {device}; {ntr} train / {nte} test, "
               f"batch {cfg.batch_size}, {cfg.epochs} epochs (import {import_seconds:.1f}s)")

    train_ds = tf.data.Dataset.from_tensor_slices((x_train, y_train)).shuffle(cfg.shuffle_buffer, seed=cfg.seed).batch(cfg.batch_size)
    test_ds = tf.data.Dataset.from_tensor_slices((x_test, y_test)).batch(cfg.batch_size)

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
    train_loss = tf.keras.metrics.Mean(name="train_loss")
    train_accuracy = tf.keras.metrics.SparseCategoricalAccuracy(name="train_accuracy")
    test_loss = tf.keras.metrics.Mean(name="test_loss")
    test_accuracy = tf.keras.metrics.SparseCategoricalAccuracy(name="test_accuracy")

    @tf.function(jit_compile=cfg.jit or None)
    def train_step(images, labels):
        with tf.GradientTape() as tape:
            # training=True is only needed if there are layers with different
            # behavior during training versus inference (e.g. Dropout).
            predictions = model(images, training=True)
            loss = loss_object(labels, predictions)
        gradients = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables))
        train_loss(loss)
        train_accuracy(labels, predictions)

    @tf.function(jit_compile=cfg.jit or None)
    def test_step(images, labels):
        predictions = model(images, training=False)
        t_loss = loss_object(labels, predictions)
        test_loss(t_loss)
        test_accuracy(labels, predictions)

    logs = Path(cfg.out) / "tensorboard"
    train_writer = tf.summary.create_file_writer(str(logs / "train"))
    test_writer = tf.summary.create_file_writer(str(logs / "test"))
    for epoch in range(cfg.epochs):
        train_loss.reset_state()
        train_accuracy.reset_state()
        test_loss.reset_state()
        test_accuracy.reset_state()
        t = time.perf_counter()
        for images, labels in train_ds:
            train_step(images, labels)
        seconds = time.perf_counter() - t
        for test_images, test_labels in test_ds:
            test_step(test_images, test_labels)
        rec = {"job": "tf-quickstart", "epoch": epoch, "loss": float(train_loss.result()),
               "train_accuracy": float(train_accuracy.result()), "test_loss": float(test_loss.result()),
               "test_accuracy": float(test_accuracy.result()), "seconds": round(seconds, 3),
               "examples_per_s": round(ntr / seconds, 1)}
        scalar(tf, train_writer, epoch, loss=rec["loss"], accuracy=rec["train_accuracy"])
        scalar(tf, test_writer, epoch, loss=rec["test_loss"], accuracy=rec["test_accuracy"])
        # The tutorial's printout (epochs from 1), then our timing.
        run_.epoch(rec, f"Epoch {epoch + 1}, Loss: {rec['loss']}, Accuracy: {rec['train_accuracy'] * 100}, "
                        f"Test Loss: {rec['test_loss']}, Test Accuracy: {rec['test_accuracy'] * 100} "
                        f"[{seconds:.1f}s, {rec['examples_per_s']:.0f} ex/s]")
    train_writer.flush()
    test_writer.flush()
    best = max(run_.records, key=lambda r: r["test_accuracy"])
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
    })
