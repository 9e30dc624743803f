"""The min-char-rnn gist's training loop as the gist is written, ported to Python 3: the speed yardstick.

After Andrej Karpathy's min-char-rnn gist (BSD): column vectors, a one-hot ``xs[t]`` per character, the dicts
``xs, hs, ys, ps`` of one window, ``np.dot`` for every product, inputs encoded from the text through
``char_to_ix`` each iteration, elementwise clipping at 5 and Adagrad, in the gist's order of operations.
What differs is only what a benchmark needs: no sampling; the loop's state lives in a generator instead of
globals; the initial weights and the vocabulary's order are given (the gist draws ``np.random.randn * 0.01``
and takes ``list(set(data))``, whose order changes between runs), so that a run can be repeated and compared;
and the progress ``print`` becomes a ``yield`` of each iteration's loss and smoothed loss, at the end of the
iteration, so that one ``next`` is one whole iteration. N iterations' losses:
``[loss for loss, _ in itertools.islice(gist_training(text, chars, weights), N)]``.

``charrnn.reference.GistRNN`` is the same algorithm kept as the parity oracle of the engine's tests;
``tests/test_gist_port.py`` checks that both give the same losses.
"""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np


def gist_training(data: str, chars: list[str], weights: dict[str, np.ndarray], seq_length: int = 25,
                  learning_rate: float = 1e-1) -> Iterator[tuple[float, float]]:
    """The gist's ``while True`` loop over ``data``; each ``next`` runs one whole iteration (encode a window,
    forward, backward, clip, Adagrad) and returns (its loss summed over the window, the smoothed loss).
    ``weights``: Wxh (H, V), Whh (H, H), Why (V, H), bh (H,) or (H, 1), by (V,) or (V, 1), copied."""
    vocab_size = len(chars)
    char_to_ix = {ch: i for i, ch in enumerate(chars)}
    Wxh, Whh, Why = (np.array(weights[k], dtype=np.float64) for k in ("Wxh", "Whh", "Why"))
    bh = np.array(weights["bh"], dtype=np.float64).reshape(-1, 1)
    by = np.array(weights["by"], dtype=np.float64).reshape(-1, 1)
    hidden_size = Whh.shape[0]

    def loss_fun(inputs, targets, hprev):
        """inputs, targets: lists of indices; hprev: (H, 1). Returns the loss, the clipped gradients and the
        last hidden state."""
        xs, hs, ys, ps = {}, {}, {}, {}
        hs[-1] = np.copy(hprev)
        loss = 0
        # forward: one column per character
        for t in range(len(inputs)):
            xs[t] = np.zeros((vocab_size, 1))  # one-hot
            xs[t][inputs[t]] = 1
            hs[t] = np.tanh(np.dot(Wxh, xs[t]) + np.dot(Whh, hs[t - 1]) + bh)
            ys[t] = np.dot(Why, hs[t]) + by  # logits
            ps[t] = np.exp(ys[t]) / np.sum(np.exp(ys[t]))
            loss += -np.log(ps[t][targets[t], 0])
        # backward through the window, accumulating outer products
        dWxh, dWhh, dWhy = np.zeros_like(Wxh), np.zeros_like(Whh), np.zeros_like(Why)
        dbh, dby = np.zeros_like(bh), np.zeros_like(by)
        dhnext = np.zeros_like(hs[0])
        for t in reversed(range(len(inputs))):
            dy = np.copy(ps[t])
            dy[targets[t]] -= 1  # softmax + cross-entropy
            dWhy += np.dot(dy, hs[t].T)
            dby += dy
            dh = np.dot(Why.T, dy) + dhnext
            dhraw = (1 - hs[t] * hs[t]) * dh  # through tanh
            dbh += dhraw
            dWxh += np.dot(dhraw, xs[t].T)
            dWhh += np.dot(dhraw, hs[t - 1].T)
            dhnext = np.dot(Whh.T, dhraw)
        for dparam in [dWxh, dWhh, dWhy, dbh, dby]:
            np.clip(dparam, -5, 5, out=dparam)
        return loss, dWxh, dWhh, dWhy, dbh, dby, hs[len(inputs) - 1]

    n, p = 0, 0
    mWxh, mWhh, mWhy = np.zeros_like(Wxh), np.zeros_like(Whh), np.zeros_like(Why)
    mbh, mby = np.zeros_like(bh), np.zeros_like(by)  # Adagrad memories
    smooth_loss = -np.log(1.0 / vocab_size) * seq_length
    while True:
        # windows sweep left to right; the hidden state resets at the start and at each wrap
        if p + seq_length + 1 >= len(data) or n == 0:
            hprev = np.zeros((hidden_size, 1))
            p = 0
        inputs = [char_to_ix[ch] for ch in data[p:p + seq_length]]
        targets = [char_to_ix[ch] for ch in data[p + 1:p + seq_length + 1]]
        loss, dWxh, dWhh, dWhy, dbh, dby, hprev = loss_fun(inputs, targets, hprev)
        smooth_loss = smooth_loss * 0.999 + loss * 0.001
        # Adagrad, in place
        for param, dparam, mem in zip([Wxh, Whh, Why, bh, by],
                                      [dWxh, dWhh, dWhy, dbh, dby],
                                      [mWxh, mWhh, mWhy, mbh, mby]):
            mem += dparam * dparam
            param += -learning_rate * dparam / np.sqrt(mem + 1e-8)
        p += seq_length
        n += 1
        yield loss, smooth_loss  # where the gist prints its progress (after the update: a whole iteration)
