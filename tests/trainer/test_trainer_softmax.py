import numpy as np

from trainer import softmax as sm


def loss_sum(X, y, W, b):
    return sm.cross_entropy(sm.softmax(X @ W + b), y).sum()


def test_gradients_match_finite_differences():
    rng = np.random.default_rng(1)
    N, D, C = 6, 5, 4
    X, y = rng.standard_normal((N, D)), rng.integers(0, C, N)
    W, b = rng.standard_normal((D, C)), rng.standard_normal(C)
    dW, db = sm.gradients(X, sm.softmax(X @ W + b), y)
    h = 1e-6
    numeric_W = np.zeros_like(W)
    for i in range(D):
        for j in range(C):
            Wp, Wm = W.copy(), W.copy()
            Wp[i, j] += h
            Wm[i, j] -= h
            numeric_W[i, j] = (loss_sum(X, y, Wp, b) - loss_sum(X, y, Wm, b)) / (2 * h)
    numeric_b = np.array([(loss_sum(X, y, W, b + h * e) - loss_sum(X, y, W, b - h * e)) / (2 * h) for e in np.eye(C)])
    np.testing.assert_allclose(dW, numeric_W, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(db, numeric_b, rtol=1e-5, atol=1e-7)
    assert np.abs(dW).max() > 1e-3  # not a vacuous comparison of zeros


def test_softmax_is_stable_at_huge_logits():
    L = np.array([[1e4, -1e4, 0.0], [-1e4, -1e4, -1e4], [1e4, 1e4, -1e4]])
    P = sm.softmax(L)
    assert np.all(np.isfinite(P))
    np.testing.assert_allclose(P, [[1, 0, 0], [1 / 3, 1 / 3, 1 / 3], [0.5, 0.5, 0]], atol=1e-12)
    for row, expected in zip(L, P):
        np.testing.assert_allclose(sm.softmax_row(row), expected, atol=1e-12)
    loss = sm.cross_entropy(P, np.array([1, 0, 2]))
    assert np.all(np.isfinite(loss)) and loss[0] > 20  # -ln(0 + 1e-10) = 23.03, not inf


def test_softmax_row_agrees_with_batched_softmax():
    L = np.random.default_rng(2).standard_normal((20, 15)) * 30
    np.testing.assert_allclose(np.array([sm.softmax_row(r) for r in L]), sm.softmax(L), rtol=1e-12)


def test_course_init_is_uniform_nonnegative_and_zero_bias():
    W, b = sm.init_params(784, 10, "course", np.random.default_rng(0))
    assert W.min() >= 0 and W.max() < 1 and 0.45 < W.mean() < 0.55 and not b.any()
    W, _ = sm.init_params(784, 10, "centred", np.random.default_rng(0))
    assert abs(W.mean()) < 1e-3 and 0.005 < W.std() < 0.02
