"""The min-char-rnn gist's algorithm, one character at a time, ported to Python 3 with a sorted vocabulary.

This is the parity oracle, not the engine: the parity tests check that ``charrnn`` reproduces its losses. The
benchmarks' speed yardstick is the gist's own loop (benchmarks/gist_port.py), which a test checks against this
class to the last bit. It keeps the gist's column vectors, one-hot inputs and per-step outer products on purpose.
"""

from __future__ import annotations

import numpy as np


class GistRNN:
    """State of the gist's training loop: weights (Wxh H×V, Whh H×H, Why V×H, bh H×1, by V×1), Adagrad
    memories, the data pointer p, the hidden state and the iteration counter n."""

    def __init__(
        self,
        data_ix: np.ndarray,
        vocab_size: int,
        weights: dict[str, np.ndarray],
        seq_length: int = 25,
        learning_rate: float = 0.1,
    ):
        self.data = np.asarray(data_ix)
        self.V, self.T, self.lr = vocab_size, seq_length, learning_rate
        self.Wxh, self.Whh, self.Why = (weights[k].astype(np.float64).copy() for k in ("Wxh", "Whh", "Why"))
        self.bh = weights["bh"].reshape(-1, 1).astype(np.float64).copy()
        self.by = weights["by"].reshape(-1, 1).astype(np.float64).copy()
        self.H = self.Whh.shape[0]
        self.mem = [np.zeros_like(w) for w in (self.Wxh, self.Whh, self.Why, self.bh, self.by)]
        self.n, self.p = 0, 0
        self.hprev = np.zeros((self.H, 1))
        self.smooth_loss = -np.log(1.0 / vocab_size) * seq_length

    def loss_fun(self, inputs, targets, hprev):
        xs, hs, ps = {}, {-1: np.copy(hprev)}, {}
        loss = 0.0
        for t in range(len(inputs)):
            xs[t] = np.zeros((self.V, 1))
            xs[t][inputs[t]] = 1
            hs[t] = np.tanh(self.Wxh @ xs[t] + self.Whh @ hs[t - 1] + self.bh)
            y = self.Why @ hs[t] + self.by
            ps[t] = np.exp(y) / np.sum(np.exp(y))
            loss += -np.log(ps[t][targets[t], 0])
        dWxh, dWhh, dWhy = np.zeros_like(self.Wxh), np.zeros_like(self.Whh), np.zeros_like(self.Why)
        dbh, dby = np.zeros_like(self.bh), np.zeros_like(self.by)
        dhnext = np.zeros_like(hs[0])
        for t in reversed(range(len(inputs))):
            dy = np.copy(ps[t])
            dy[targets[t]] -= 1
            dWhy += dy @ hs[t].T
            dby += dy
            dh = self.Why.T @ dy + dhnext
            dhraw = (1 - hs[t] * hs[t]) * dh
            dbh += dhraw
            dWxh += dhraw @ xs[t].T
            dWhh += dhraw @ hs[t - 1].T
            dhnext = self.Whh.T @ dhraw
        grads = [dWxh, dWhh, dWhy, dbh, dby]
        for g in grads:
            np.clip(g, -5, 5, out=g)
        return loss, grads, hs[len(inputs) - 1]

    def step(self) -> float:
        """One iteration of the gist's `while True` body (without the sampling); returns the summed loss."""
        if self.p + self.T + 1 >= len(self.data) or self.n == 0:
            self.hprev = np.zeros((self.H, 1))
            self.p = 0
        inputs = self.data[self.p : self.p + self.T]
        targets = self.data[self.p + 1 : self.p + self.T + 1]
        loss, grads, self.hprev = self.loss_fun(inputs, targets, self.hprev)
        self.smooth_loss = self.smooth_loss * 0.999 + loss * 0.001
        for param, dparam, mem in zip((self.Wxh, self.Whh, self.Why, self.bh, self.by), grads, self.mem):
            mem += dparam * dparam
            param += -self.lr * dparam / np.sqrt(mem + 1e-8)
        self.p += self.T
        self.n += 1
        return float(loss)
