"""The course's stencil, as a student writes it: a one-layer softmax network trained by
per-example SGD. x: 784 binary pixels, W: 784 x 10, b: 10; p = softmax(x W + b);
loss = -log p[y]; dW = x (p - onehot(y)), db = p - onehot(y)."""

import numpy as np


def softmax(z):
    z = z - z.max()
    e = np.exp(z)
    return e / e.sum()


class Model:
    def __init__(self, n_in=784, n_out=10, seed=0):
        rng = np.random.default_rng(seed)
        self.W = rng.random((n_in, n_out))     # the course's W ~ U[0, 1)
        self.b = np.zeros(n_out)

    def epoch(self, X, y, order, lr):
        """One pass of per-example SGD in `order`; returns the mean loss."""
        loss = 0.0
        for i in order:
            x = X[i]
            p = softmax(x @ self.W + self.b)
            loss -= np.log(p[y[i]] + 1e-12)
            p[y[i]] -= 1.0
            self.W -= lr * np.outer(x, p)
            self.b -= lr * p
        return loss / len(order)

    def accuracy(self, X, y):
        return float(((X @ self.W + self.b).argmax(axis=1) == y).mean())
