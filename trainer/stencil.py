"""`stencil` mode: exactly the course template's per-example SGD, made fast.

Each step touches W only through the outer product x (p - y). For binarised MNIST x is
0/1 with ~150 ones in 784, so the step only needs the rows where x = 1:

    l = sum_{i: x_i = 1} W[i] + b          W[i] -= lr (p - y)  for those rows only

Summing those rows in index order is bit-identical to sum_i x_i W[i] in index order (the
other terms are exact zeros), so the weights equal the reference loop's exactly, not just
approximately. That matters: at lr 0.5 with the uncentred init, per-example SGD amplifies a
one-ulp difference to O(1) weight differences within ~1000 examples (measured; see
docs/trainer.md), so "the same weights" needs the same arithmetic.

The loop runs as a compiled kernel when numba is installed (~1.4 us/example) and as numpy
otherwise (~15 us/example); both do the same operations in the same order.
Dense inputs (15-scene, 4096 floats in [0, 1]) take the dense kernel: the same loop over all rows.
"""

from __future__ import annotations

import math
import os

import numpy as np

from trainer.softmax import EPS, softmax_row


def _numba():
    if os.environ.get("FERRY_TRAINER_NUMBA", "1").lower() in ("0", "off", "no"):
        return None
    try:
        import numba
    except ImportError:
        return None
    return numba


def backend() -> str:
    return "numba" if _numba() else "numpy"


def is_binary(X) -> bool:
    return bool(np.all((X == 0) | (X == 1)))


def to_rows(X) -> tuple[np.ndarray, np.ndarray]:
    """CSR-style (indptr, indices) of the nonzero columns of each row of a 0/1 matrix."""
    nz = X != 0
    indptr = np.zeros(len(X) + 1, np.int64)
    np.cumsum(nz.sum(axis=1), out=indptr[1:])
    return indptr, np.nonzero(nz)[1].astype(np.int64)


# ------------------------------------------------------------------ numpy versions
def _sparse_numpy(W, b, indptr, indices, y, order, lr):
    loss = 0.0
    for i in order:
        nz = indices[indptr[i]:indptr[i + 1]]
        p = softmax_row(W[nz].sum(axis=0) + b)
        loss += -math.log(p[y[i]] + EPS)
        p[y[i]] -= 1.0
        step = lr * p
        W[nz] -= step
        b -= step
    return loss


def _dense_numpy(W, b, X, y, order, lr):
    from trainer import reference

    return reference.epoch(W, b, X, y, order, lr)


# ------------------------------------------------------------------ compiled versions
# Plain Python at module level (so numba can cache the machine code next to this file);
# compiled on first use by _kernels(). The softmax is written out in both: max, exp(l - max)
# with a sequential sum, divide -- the same order as softmax_row.
def _sparse_kernel(W, b, indptr, indices, y, order, lr):
    C = W.shape[1]
    l = np.empty(C)
    loss = 0.0
    for i in order:
        for j in range(C):
            l[j] = 0.0
        for k in range(indptr[i], indptr[i + 1]):      # l = sum of the rows where x = 1
            r = indices[k]
            for j in range(C):
                l[j] += W[r, j]
        for j in range(C):
            l[j] = l[j] + b[j]
        m = l[0]
        for j in range(1, C):
            if l[j] > m:
                m = l[j]
        s = 0.0
        for j in range(C):
            l[j] = math.exp(l[j] - m)
            s += l[j]
        for j in range(C):
            l[j] = l[j] / s                            # l is now p
        loss += -math.log(l[y[i]] + 1e-10)
        l[y[i]] -= 1.0                                 # p - y
        for j in range(C):
            l[j] = lr * l[j]
        for k in range(indptr[i], indptr[i + 1]):      # W[rows] -= lr (p - y)
            r = indices[k]
            for j in range(C):
                W[r, j] -= l[j]
        for j in range(C):
            b[j] -= l[j]
    return loss


def _dense_kernel(W, b, X, y, order, lr):
    D, C = W.shape
    l = np.empty(C)
    loss = 0.0
    for i in order:
        for j in range(C):
            l[j] = 0.0
        for r in range(D):                             # l = x W, rows in order
            xr = X[i, r]
            for j in range(C):
                l[j] += xr * W[r, j]
        for j in range(C):
            l[j] = l[j] + b[j]
        m = l[0]
        for j in range(1, C):
            if l[j] > m:
                m = l[j]
        s = 0.0
        for j in range(C):
            l[j] = math.exp(l[j] - m)
            s += l[j]
        for j in range(C):
            l[j] = l[j] / s
        loss += -math.log(l[y[i]] + 1e-10)
        l[y[i]] -= 1.0
        for r in range(D):                             # W -= lr x (p - y)
            xr = X[i, r]
            for j in range(C):
                W[r, j] -= lr * (xr * l[j])
        for j in range(C):
            b[j] -= lr * l[j]
    return loss


_KERNELS = {}


def _kernels():
    if not _KERNELS:
        jit = _numba().njit(cache=True, nogil=True)
        _KERNELS.update(sparse=jit(_sparse_kernel), dense=jit(_dense_kernel))
    return _KERNELS


class Stencil:
    """Holds the data in the layout the per-example loop wants (rows of ones, or dense float64)."""

    def __init__(self, X, y, use_numba: bool | None = None):
        self.y = np.ascontiguousarray(y, np.int64)
        self.sparse = is_binary(X)
        self.numba = (backend() == "numba") if use_numba is None else use_numba
        if self.numba:
            _kernels()  # import numba and load (or compile) the kernels before any timing
        if self.sparse:
            self.indptr, self.indices = to_rows(X)
        else:
            self.X = np.ascontiguousarray(X, np.float64)

    def epoch(self, W, b, order, lr) -> float:
        """One epoch over `order`; W (float64, C-contiguous) and b are updated in place."""
        order = np.ascontiguousarray(order, np.int64)
        lr = float(lr)
        if self.numba:
            k = _kernels()
            if self.sparse:
                return float(k["sparse"](W, b, self.indptr, self.indices, self.y, order, lr))
            return float(k["dense"](W, b, self.X, self.y, order, lr))
        if self.sparse:
            return _sparse_numpy(W, b, self.indptr, self.indices, self.y, order, lr)
        return _dense_numpy(W, b, self.X, self.y, order, lr)
