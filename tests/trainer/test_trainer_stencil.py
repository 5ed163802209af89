"""stencil must compute exactly the course's per-example updates: same weights as the plain loop."""

import numpy as np
import pytest

from trainer import reference, softmax, stencil


def problem(binary: bool, N=300, D=60, C=4, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, C, N)
    X = rng.random((N, D))
    X += np.eye(C)[y].repeat(D // C, axis=1)  # learnable
    X = (X > 1.0).astype(np.float64) if binary else X / X.max()
    return X, y


def run(X, y, epochs, seed, engine):
    """The course procedure: uniform init, zero bias, a fresh shuffle every epoch."""
    rng = np.random.default_rng(seed)
    W, b = softmax.init_params(X.shape[1], int(y.max()) + 1, "course", rng)
    losses = []
    for _ in range(epochs):
        order = rng.permutation(len(y))
        losses.append(engine(W, b, order))
    return W, b, losses


@pytest.mark.parametrize("binary", [True, False])
def test_stencil_equals_the_reference_loop(binary):
    X, y = problem(binary)
    Wr, br, lr_ = run(X, y, 3, 7, lambda W, b, o: reference.epoch(W, b, X, y, o, 0.5))
    engines = {"numpy": stencil.Stencil(X, y, use_numba=False)}
    if stencil.backend() == "numba":
        engines["numba"] = stencil.Stencil(X, y, use_numba=True)
    for name, eng in engines.items():
        W, b, losses = run(X, y, 3, 7, lambda W, b, o: eng.epoch(W, b, o, 0.5))
        np.testing.assert_allclose(W, Wr, rtol=0, atol=1e-12, err_msg=name)
        np.testing.assert_allclose(b, br, rtol=0, atol=1e-12, err_msg=name)
        np.testing.assert_allclose(losses, lr_, rtol=1e-12, err_msg=name)
    W0, _ = softmax.init_params(X.shape[1], 4, "course", np.random.default_rng(7))
    assert np.abs(Wr - W0).max() > 0.1 and lr_[-1] < lr_[0]  # it actually trained


def test_sparse_path_is_taken_for_binary_input():
    X, y = problem(True)
    s = stencil.Stencil(X, y)
    assert s.sparse and s.indptr[-1] == int(X.sum())
    assert not stencil.Stencil(problem(False)[0], y).sparse


def test_deterministic_for_a_seed_and_seed_matters():
    X, y = problem(True)
    eng = stencil.Stencil(X, y)
    a = run(X, y, 2, 3, lambda W, b, o: eng.epoch(W, b, o, 0.5))
    b = run(X, y, 2, 3, lambda W, b, o: eng.epoch(W, b, o, 0.5))
    c = run(X, y, 2, 4, lambda W, b, o: eng.epoch(W, b, o, 0.5))
    np.testing.assert_array_equal(a[0], b[0])
    assert a[2] == b[2]
    assert not np.array_equal(a[0], c[0])


def test_loss_is_the_sum_of_per_example_losses():
    X, y = problem(True, N=50)
    rng = np.random.default_rng(0)
    W, b = softmax.init_params(X.shape[1], 4, "course", rng)
    expected = softmax.cross_entropy(softmax.softmax(X[:1] @ W + b), y[:1]).sum()
    got = stencil.Stencil(X, y).epoch(W.copy(), b.copy(), np.array([0]), 0.5)
    assert got == pytest.approx(expected, rel=1e-12)
