"""The one-layer softmax network, as the course writes it.

    logits   l = x W + b                    (W: D x C, b: C)
    softmax  p_j = e^{l_j - m} / sum_k e^{l_k - m},  m = max_k l_k   (stable: exponents <= 0)
    loss     L = -ln(p_y + 1e-10)
    grads    dL/dW = x^T (p - y_onehot),  dL/db = p - y_onehot

Batched functions take an array module `xp` (numpy or cupy) so one code runs on CPU and GPU.
`softmax_row` is the per-example version the stencil kernels and the reference loop share:
plain scalar arithmetic in a fixed order, so all three give bit-identical results.
"""

from __future__ import annotations

import math

import numpy as np

EPS = 1e-10


def softmax(L, xp=np):
    Z = L - L.max(axis=1, keepdims=True)
    E = xp.exp(Z)
    return E / E.sum(axis=1, keepdims=True)


def cross_entropy(P, y, xp=np):
    """Per-example -ln(p_y + 1e-10)."""
    return -xp.log(P[xp.arange(len(y)), y] + EPS)


def gradients(X, P, y, xp=np):
    """Summed over the batch: dW = X^T (P - Y), db = sum(P - Y)."""
    G = P.copy()
    G[xp.arange(len(y)), y] -= 1
    return X.T @ G, G.sum(axis=0)


def softmax_row(l) -> np.ndarray:
    """Stable softmax of one logit vector: max, exp(l - max), sequential sum, divide."""
    values = l.tolist()
    m = max(values)
    e = [math.exp(v - m) for v in values]
    s = 0.0
    for v in e:
        s += v
    return np.array([v / s for v in e])


def init_params(D: int, C: int, init: str, rng: np.random.Generator, dtype=np.float64):
    """course: W uniform on [0, 1), b = 0 (the template).  centred: W ~ N(0, 0.01^2), b = 0."""
    if init == "course":
        W = rng.random((D, C))
    elif init == "centred":
        W = rng.standard_normal((D, C)) * 0.01
    else:
        raise ValueError(f"unknown init {init!r}")
    return W.astype(dtype), np.zeros(C, dtype)


def predict(X, W, b):
    return (X @ W + b).argmax(axis=1)
