"""`minibatch` mode: vectorised minibatch SGD on the mean loss, for speed and accuracy.

    L = X_B W + b;  P = softmax(L);  G = (P - Y) / |B|;  W -= lr X_B^T G;  b -= lr sum(G)

Speed (the epoch is two skinny matrix products per batch): float32; the data shuffled once,
then each epoch takes contiguous batches starting at a random offset, in a random order, so
no epoch copies X (a gather of X costs more than the products); buffers preallocated.
One code for numpy and CuPy (`xp`); on the GPU the whole epoch is queued with no host sync.
"""

from __future__ import annotations

import math

import numpy as np

DTYPE = np.float32


def _softmax_step(L, b, y, step, gb):
    """Fused CPU version of the per-batch softmax part (one call instead of ~12 numpy calls
    on a small array): L = step * (softmax(L + b) - Y) in place, gb = column sums of L;
    returns the summed -ln p_y. Compiled with numba when it is installed."""
    n, C = L.shape
    loss = 0.0
    for j in range(C):
        gb[j] = 0.0
    for i in range(n):
        m = L[i, 0] + b[0]
        for j in range(C):
            L[i, j] += b[j]
            if L[i, j] > m:
                m = L[i, j]
        ly = L[i, y[i]] - m
        z = 0.0
        for j in range(C):
            e = math.exp(L[i, j] - m)
            L[i, j] = e
            z += e
        loss += math.log(z) - ly
        f = step / z
        for j in range(C):
            L[i, j] *= f
        L[i, y[i]] -= step
        for j in range(C):
            gb[j] += L[i, j]
    return loss


_FUSED = []


def fused_step():
    """The numba-compiled _softmax_step, or None (no numba, or FERRY_TRAINER_NUMBA=0)."""
    if not _FUSED:
        from trainer.stencil import _numba

        numba = _numba()
        _FUSED.append(numba.njit(cache=True, nogil=True)(_softmax_step) if numba else None)
    return _FUSED[0]


class Minibatch:
    def __init__(self, X, y, batch_size: int, lr: float, rng: np.random.Generator, xp=np, fused: bool | None = None):
        self.xp = xp
        self.fused = fused_step() if xp is np and fused is not False else None
        shuffle = rng.permutation(len(X))           # once; epochs vary offset and batch order
        self.X = xp.asarray(np.ascontiguousarray(X[shuffle], DTYPE))
        self.y = xp.asarray(np.ascontiguousarray(y[shuffle], np.int64))
        self.n, self.D = X.shape
        self.B = min(int(batch_size), self.n)
        self.lr = DTYPE(lr)
        self.rng = rng
        self.L = xp.empty((self.B, 0), DTYPE)      # sized at the first epoch (needs C)

    def batches(self):
        """(start, stop) of this epoch's batches; the few examples before the offset form
        the last, shorter batch so every example is seen once per epoch."""
        r = int(self.rng.integers(self.B)) if self.n > self.B else 0
        starts = np.arange(r, self.n, self.B)
        spans = [(s, min(s + self.B, self.n)) for s in starts]
        if r:
            spans.append((0, r))
        return [spans[k] for k in self.rng.permutation(len(spans))]

    def epoch(self, W, b) -> float:
        """One epoch; updates W, b (xp arrays) in place; returns the mean of -ln p_y
        (computed as ln sum_k e^{l_k - max} - (l_y - max), exact where p_y underflows)."""
        xp, X, y = self.xp, self.X, self.y
        C = W.shape[1]
        if self.L.shape[1] != C:
            self.L = xp.empty((self.B, C), DTYPE)
            self.gW = xp.empty((self.D, C), DTYPE)
            self.rows = xp.arange(self.B)
        total = xp.zeros((), DTYPE)
        if self.fused is not None:
            gb = np.empty(C, DTYPE)
            loss = 0.0
            for s, e in self.batches():
                L = self.L[:e - s]
                np.matmul(X[s:e], W, out=L)
                loss += self.fused(L, b, y[s:e], self.lr / DTYPE(e - s), gb)
                np.matmul(X[s:e].T, L, out=self.gW)
                W -= self.gW
                b -= gb
            return loss / self.n
        for s, e in self.batches():
            n = e - s
            x, yb, L, rows = X[s:e], y[s:e], self.L[:n], self.rows[:n]
            step = self.lr / DTYPE(n)               # mean loss: lr / |B|
            xp.matmul(x, W, out=L)
            L += b
            L -= L.max(axis=1, keepdims=True)       # stable: exponents <= 0
            ly = L[rows, yb]                        # l_y - max
            xp.exp(L, out=L)
            z = L.sum(axis=1)                       # sum_k e^{l_k - max}
            total += (xp.log(z) - ly).sum()         # -ln p_y = ln z - (l_y - max)
            L *= (step / z)[:, None]                # L = lr/n * P
            L[rows, yb] -= step                     # L = lr/n * (P - Y)
            xp.matmul(x.T, L, out=self.gW)
            W -= self.gW
            b -= L.sum(axis=0)
        return float(total) / self.n
