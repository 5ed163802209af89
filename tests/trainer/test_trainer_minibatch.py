import numpy as np

from trainer import softmax
from trainer.minibatch import Minibatch


def test_one_batch_step_is_the_mean_gradient_step():
    rng = np.random.default_rng(0)
    X, y = rng.random((40, 12)).astype(np.float32), rng.integers(0, 3, 40)
    W0, b0 = softmax.init_params(12, 3, "centred", rng, np.float32)
    mb = Minibatch(X, y, batch_size=64, lr=0.3, rng=np.random.default_rng(1))  # one batch = all data
    W, b = W0.copy(), b0.copy()
    loss = mb.epoch(W, b)
    X64, W64, b64 = X.astype(np.float64), W0.astype(np.float64), b0.astype(np.float64)
    P = softmax.softmax(X64 @ W64 + b64)
    dW, db = softmax.gradients(X64, P, y)
    np.testing.assert_allclose(W, W64 - 0.3 * dW / 40, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(b, b64 - 0.3 * db / 40, rtol=1e-5, atol=1e-6)
    assert loss == np.float32(softmax.cross_entropy(P, y).mean()) or abs(loss - softmax.cross_entropy(P, y).mean()) < 1e-5


def test_every_example_once_per_epoch_and_batches_vary():
    mb = Minibatch(np.zeros((1000, 2), np.float32), np.zeros(1000, int), 64, 0.1, np.random.default_rng(0))
    seen = []
    for _ in range(3):
        spans = mb.batches()
        covered = np.concatenate([np.arange(s, e) for s, e in spans])
        assert sorted(covered) == list(range(1000))
        assert max(e - s for s, e in spans) == 64
        seen.append(spans)
    assert seen[0] != seen[1]


def test_learns_a_separable_problem():
    rng = np.random.default_rng(3)
    centres = rng.standard_normal((5, 20)) * 3
    y = rng.integers(0, 5, 2000)
    X = (centres[y] + rng.standard_normal((2000, 20))).astype(np.float32)
    W, b = softmax.init_params(20, 5, "centred", rng, np.float32)
    mb = Minibatch(X[:1500], y[:1500], 64, 0.5, rng)
    losses = [mb.epoch(W, b) for _ in range(5)]
    assert losses[-1] < losses[0] / 2
    assert (softmax.predict(X[1500:], W, b) == y[1500:]).mean() > 0.95


def test_epoch_equals_plain_mean_gradient_steps_including_the_short_batch():
    rng = np.random.default_rng(5)
    X, y = rng.random((150, 8)).astype(np.float32), rng.integers(0, 3, 150)
    W0, b0 = softmax.init_params(8, 3, "centred", rng, np.float32)
    mb = Minibatch(X, y, 64, 0.4, np.random.default_rng(9))
    twin = Minibatch(X, y, 64, 0.4, np.random.default_rng(9))  # same shuffle and spans
    W, b = W0.copy(), b0.copy()
    mb.epoch(W, b)
    spans = twin.batches()
    assert sorted(e - s for s, e in spans) != [64] * len(spans)  # there is a short batch
    Wr, br = W0.astype(np.float64), b0.astype(np.float64)
    Xs, ys = twin.X.astype(np.float64), twin.y
    for s, e in spans:
        dW, db = softmax.gradients(Xs[s:e], softmax.softmax(Xs[s:e] @ Wr + br), ys[s:e])
        Wr, br = Wr - 0.4 * dW / (e - s), br - 0.4 * db / (e - s)
    np.testing.assert_allclose(W, Wr, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(b, br, rtol=1e-4, atol=1e-5)


def test_fused_cpu_step_matches_the_array_code():
    from trainer.minibatch import fused_step

    if fused_step() is None:
        import pytest
        pytest.skip("numba not installed (or FERRY_TRAINER_NUMBA=0): only the array code runs")
    rng = np.random.default_rng(2)
    X, y = rng.random((500, 30)).astype(np.float32), rng.integers(0, 7, 500)
    out = []
    for fused in (True, False):
        W, b = softmax.init_params(30, 7, "centred", np.random.default_rng(0), np.float32)
        mb = Minibatch(X, y, 64, 0.5, np.random.default_rng(1), fused=fused)
        assert (mb.fused is not None) == fused
        losses = [mb.epoch(W, b) for _ in range(3)]
        out.append((W, b, losses))
    np.testing.assert_allclose(out[0][0], out[1][0], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out[0][1], out[1][1], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out[0][2], out[1][2], rtol=1e-4)
