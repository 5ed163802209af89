#!/usr/bin/env python3
"""The TensorFlow 2 "quickstart for experts" tutorial (tensorflow/docs, site/en/tutorials/
quickstart/advanced.ipynb) as published, in its default configuration: the baseline that
bench/trainer.py runs interleaved with ferry's `tf-quickstart`.

    .venv/bin/python bench/tf_tutorial.py DATA_DIR [--epochs 5] [--train-samples N] [--test-samples N]

Changes from the tutorial, none of which touch what it computes: MNIST comes from DATA_DIR
(the same uint8 arrays `tf.keras.datasets.mnist.load_data()` returns, which downloads);
--epochs / --*-samples for shorter runs; each epoch's training and test loops are timed; the
last line of stdout is one JSON object (import seconds, per-epoch records). No threading
settings, seeds or tf.data options: TensorFlow's defaults, as the tutorial leaves them.
"""

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ap = argparse.ArgumentParser()
ap.add_argument("data_dir")
ap.add_argument("--epochs", type=int, default=5)
ap.add_argument("--train-samples", type=int)
ap.add_argument("--test-samples", type=int)
args = ap.parse_args()

from trainer.datasets import cache, mnist, sources  # noqa: E402

d = mnist.load(sources.data_root(args.data_dir), False, cache.cache_dir("off"))

t0 = time.perf_counter()
import tensorflow as tf  # noqa: E402

import_seconds = time.perf_counter() - t0
print("TensorFlow version:", tf.__version__)

from tensorflow.keras import Model  # noqa: E402
from tensorflow.keras.layers import Conv2D, Dense, Flatten  # noqa: E402

# (x_train, y_train), (x_test, y_test) = mnist.load_data(): uint8 images and labels
x_train, y_train = d["x_train"].reshape(-1, 28, 28)[:args.train_samples], d["y_train"][:args.train_samples]
x_test, y_test = d["x_test"].reshape(-1, 28, 28)[:args.test_samples], d["y_test"][:args.test_samples]
x_train, x_test = x_train / 255.0, x_test / 255.0

# Add a channels dimension
x_train = x_train[..., tf.newaxis].astype("float32")
x_test = x_test[..., tf.newaxis].astype("float32")

train_ds = tf.data.Dataset.from_tensor_slices((x_train, y_train)).shuffle(10000).batch(32)
test_ds = tf.data.Dataset.from_tensor_slices((x_test, y_test)).batch(32)


class MyModel(Model):
    def __init__(self):
        super().__init__()
        self.conv1 = Conv2D(32, 3, activation="relu")
        self.flatten = Flatten()
        self.d1 = Dense(128, activation="relu")
        self.d2 = Dense(10)

    def call(self, x):
        x = self.conv1(x)
        x = self.flatten(x)
        x = self.d1(x)
        return self.d2(x)


# Create an instance of the model
model = MyModel()

loss_object = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)
optimizer = tf.keras.optimizers.Adam()

train_loss = tf.keras.metrics.Mean(name="train_loss")
train_accuracy = tf.keras.metrics.SparseCategoricalAccuracy(name="train_accuracy")
test_loss = tf.keras.metrics.Mean(name="test_loss")
test_accuracy = tf.keras.metrics.SparseCategoricalAccuracy(name="test_accuracy")


@tf.function
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


@tf.function
def test_step(images, labels):
    # training=False is only needed if there are layers with different
    # behavior during training versus inference (e.g. Dropout).
    predictions = model(images, training=False)
    t_loss = loss_object(labels, predictions)

    test_loss(t_loss)
    test_accuracy(labels, predictions)


EPOCHS = args.epochs
records = []
for epoch in range(EPOCHS):
    # Reset the metrics at the start of the next epoch
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
    eval_seconds = time.perf_counter() - t - seconds

    print(
        f"Epoch {epoch + 1}, "
        f"Loss: {train_loss.result():0.2f}, "
        f"Accuracy: {train_accuracy.result() * 100:0.2f}, "
        f"Test Loss: {test_loss.result():0.2f}, "
        f"Test Accuracy: {test_accuracy.result() * 100:0.2f}"
    )
    records.append({"epoch": epoch, "seconds": seconds, "eval_seconds": eval_seconds,
                    "test_accuracy": float(test_accuracy.result())})
print(json.dumps({"import_seconds": import_seconds, "records": records,
                  "threads": {"inter_op": tf.config.threading.get_inter_op_parallelism_threads(),
                              "intra_op": tf.config.threading.get_intra_op_parallelism_threads()}}))
