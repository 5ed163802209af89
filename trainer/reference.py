"""The straightforward per-example loop: the course's procedure written as the equations
read. Slow (tens of microseconds per example); the yardstick `stencil` must match."""

from __future__ import annotations

import math

import numpy as np

from trainer.softmax import EPS, softmax_row


def epoch(W, b, X, y, order, lr):
    """One epoch of per-example SGD over `order`; updates W, b in place, returns the summed loss."""
    loss = 0.0
    for i in order:
        x = X[i]
        l = (x[:, None] * W).sum(axis=0) + b   # l_j = sum_i x_i w_ij + b_j
        p = softmax_row(l)
        loss += -math.log(p[y[i]] + EPS)
        g = p.copy()
        g[y[i]] -= 1.0                          # p - y_onehot
        W -= lr * np.outer(x, g)                # dL/dW = x (p - y)
        b -= lr * g
    return loss
