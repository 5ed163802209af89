"""NN+SVM: a linear SVM (LinearSVC, one-vs-rest, dual=False, C=1) fit on the network's
TRAINING logits XW + b and scored on the test logits, as the course does."""

from __future__ import annotations

import time
import warnings

import numpy as np


def fit(train_logits, y_train, test_logits, y_test, C: float = 1.0) -> dict:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.svm import LinearSVC

    t = time.perf_counter()
    svm = LinearSVC(C=C, dual=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        svm.fit(train_logits, y_train)
    scores = svm.decision_function(train_logits)
    signs = np.where(y_train[:, None] == svm.classes_[None, :], 1.0, -1.0)
    sq_hinge = float((np.maximum(0.0, 1.0 - signs * scores) ** 2).sum(axis=1).mean())
    return {
        "svm_train_accuracy": float((svm.predict(train_logits) == y_train).mean()),
        "svm_test_accuracy": float((svm.predict(test_logits) == y_test).mean()),
        "svm_squared_hinge": sq_hinge,
        "svm_converged": not any(issubclass(w.category, ConvergenceWarning) for w in caught),
        "svm_seconds": round(time.perf_counter() - t, 3),
    }
