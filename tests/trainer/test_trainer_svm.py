import numpy as np
import pytest

from trainer import softmax, svm
from trainer.errors import TrainerError
from trainer.minibatch import Minibatch
from trainer.train import svm_epochs


def test_nn_svm_well_above_chance_on_a_separable_problem():
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((4, 30)) * 2
    y = rng.integers(0, 4, 1200)
    X = (centres[y] + rng.standard_normal((1200, 30))).astype(np.float32)
    W, b = softmax.init_params(30, 4, "centred", rng, np.float32)
    mb = Minibatch(X[:800], y[:800], 32, 0.5, rng)
    for _ in range(3):
        mb.epoch(W, b)
    fit = svm.fit(X[:800] @ W + b, y[:800], X[800:] @ W + b, y[800:])
    assert fit["svm_test_accuracy"] > 0.9  # chance is 0.25
    assert fit["svm_train_accuracy"] > 0.9 and fit["svm_squared_hinge"] >= 0


def test_svm_epochs_spec():
    assert svm_epochs("0,last", 10) == [0, 9]
    assert svm_epochs("none", 10) == [] and svm_epochs(None, 3) == []
    assert svm_epochs("all", 3) == [0, 1, 2] and svm_epochs("last", 1) == [0]
    for bad in ("10", "x", "-1"):
        with pytest.raises(TrainerError, match="--svm-epochs"):
            svm_epochs(bad, 10)
