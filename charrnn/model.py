"""A stack of recurrent layers over characters with a softmax output: forward, loss and backward.

Shapes: T time, B batch, V vocabulary, H hidden, G gates (see ``cells``).

Parameters live in a flat dict named after the lecture's symbols. Layer 0 reads characters: ``Wxh`` (G*H,V),
``Whh`` (G*H,H), ``bh`` (G*H,); layer l >= 1 reads the layer below: ``Wxh.l`` (G*H,H), ``Whh.l``, ``bh.l``;
the GRU adds ``bhn`` / ``bhn.l`` (H,); the output is ``Why`` (V,H), ``by`` (V,). For the one-layer vanilla RNN
these are exactly the arrays of the min-char-rnn gist (with 1-D biases).

Dropout (``ModelConfig.dropout`` > 0) sits on the non-recurrent connections only, where char-rnn and torch-rnn
put it: on each layer's output sequence, which feeds the layer above or the output layer. The caller draws the
masks (``dropout_masks``) and passes them to ``forward``/``loss_and_grads`` while training; without masks
(evaluation, sampling, analysis) the model runs whole.

Only the recurrence loops over time. The character input projection is a row gather (never a one-hot
matmul), and the output layer, the softmax and every weight gradient cover all T*B positions at once.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import numpy as np

from .cells import CELLS
from .checks import check_int, check_number
from .errors import ConfigError

DTYPES = ("float64", "float32")


@dataclass(frozen=True)
class ModelConfig:
    cell: str = "rnn"
    vocab_size: int = 0
    hidden_size: int = 100
    num_layers: int = 1
    dtype: str = "float64"
    dropout: float = 0.0  # probability of zeroing a unit of a layer's output while training

    def __post_init__(self):
        if self.cell not in CELLS:
            raise ConfigError(f"unknown cell {self.cell!r}: choose one of {', '.join(CELLS)}")
        for name in ("hidden_size", "num_layers", "vocab_size"):
            check_int(name, getattr(self, name), 1)
        if self.dtype not in DTYPES:
            raise ConfigError(f"must be one of {', '.join(DTYPES)}, got {self.dtype!r}", "dtype")
        check_number("dropout", self.dropout, minimum=0.0, below=1.0)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


def layer_key(name: str, layer: int) -> str:
    return name if layer == 0 else f"{name}.{layer}"


def init_params(config: ModelConfig, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A one-layer vanilla RNN starts like the gist (N(0, 0.01^2) weights, zero biases); gated cells and deeper
    RNNs use PyTorch's U(-1/sqrt(H), 1/sqrt(H)), which keeps gates away from saturation at larger H. Through
    two layers of 0.01-scaled weights the signal and its gradient shrink ~1e4-fold: such an RNN stayed at the
    unigram loss for hundreds of Adam updates."""
    H, V, G = config.hidden_size, config.vocab_size, CELLS[config.cell].gates
    dtype = np.dtype(config.dtype)

    def weights(shape):
        if config.cell == "rnn" and config.num_layers == 1:
            return rng.standard_normal(shape) * 0.01
        bound = 1.0 / np.sqrt(H)
        return rng.uniform(-bound, bound, shape)

    params: dict[str, np.ndarray] = {}
    for layer in range(config.num_layers):
        params[layer_key("Wxh", layer)] = weights((G * H, V if layer == 0 else H))
        params[layer_key("Whh", layer)] = weights((G * H, H))
        bh = np.zeros(G * H)
        if config.cell == "lstm":
            bh[H : 2 * H] = 1.0  # forget gate bias 1: remember by default
        params[layer_key("bh", layer)] = bh
        if config.cell == "gru":
            params[layer_key("bhn", layer)] = np.zeros(H)
    params["Why"] = weights((V, H))
    params["by"] = np.zeros(V)
    return {name: value.astype(dtype) for name, value in params.items()}


def param_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    H, V, G = config.hidden_size, config.vocab_size, CELLS[config.cell].gates
    shapes: dict[str, tuple[int, ...]] = {}
    for layer in range(config.num_layers):
        shapes[layer_key("Wxh", layer)] = (G * H, V if layer == 0 else H)
        shapes[layer_key("Whh", layer)] = (G * H, H)
        shapes[layer_key("bh", layer)] = (G * H,)
        if config.cell == "gru":
            shapes[layer_key("bhn", layer)] = (H,)
    shapes["Why"] = (V, H)
    shapes["by"] = (V,)
    return shapes


def count_params(config: ModelConfig) -> int:
    return int(sum(np.prod(shape) for shape in param_shapes(config).values()))


def init_state(config: ModelConfig, batch_size: int) -> list[tuple[np.ndarray, ...]]:
    """Zero state: one tuple per layer, (h,) or (h, c) for the LSTM, each (B,H)."""
    n = len(CELLS[config.cell].state_names)
    shape = (batch_size, config.hidden_size)
    return [tuple(np.zeros(shape, dtype=config.dtype) for _ in range(n)) for _ in range(config.num_layers)]


def _layer_params(params, layer):
    return {name: params.get(layer_key(name, layer)) for name in ("Wxh", "Whh", "bh", "bhn")}


def input_projection(p, x: np.ndarray) -> np.ndarray:
    """ax = Wxh x + bh for a whole sequence at once, (G*H,T,B): units x time x batch, as the cells read it.
    ``x`` is (T,B) characters (layer 0: a column gather, the one-hot product) or the (T,B,H) hidden sequence
    of the layer below (one matmul)."""
    if x.ndim == 2:
        return np.take(p["Wxh"] + p["bh"][:, None], x, axis=1)  # the bias goes onto the V columns first
    ax = np.matmul(p["Wxh"], x.reshape(-1, x.shape[2]).T)  # (G*H, T*B)
    ax += p["bh"][:, None]
    return ax.reshape(-1, *x.shape[:2])


def dropout_masks(rng: np.random.Generator, config: ModelConfig, T: int, B: int) -> list[np.ndarray] | None:
    """One (T,B,H) mask per layer output for a training window, or None when ``config.dropout`` is 0: each
    unit kept with probability 1-p and then scaled by 1/(1-p) (inverted dropout), so that the expected input
    of the next layer is the same as in evaluation, which runs without masks."""
    p = config.dropout
    if p == 0:
        return None
    shape = (T, B, config.hidden_size)
    return [
        (rng.random(shape) >= p).astype(config.dtype) / np.asarray(1.0 - p, dtype=config.dtype)
        for _ in range(config.num_layers)
    ]


def dropout_forward(x: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """x * mask, (T,B,H); x itself without a mask."""
    return x if mask is None else x * mask


def dropout_backward(dout: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """The gradient on x from the one on x * mask: the same mask, since it is a constant of the window."""
    return dout if mask is None else dout * mask


def forward(
    params,
    config: ModelConfig,
    inputs: np.ndarray,
    state,
    return_internals: bool = False,
    masks: list[np.ndarray] | None = None,
):
    """inputs (T,B) int -> logits (T,B,V), cache, new state [, internals].

    internals maps a name (h; c i f o g for the LSTM; r z n for the GRU) to one (T,B,H) array per layer.
    ``masks`` (from ``dropout_masks``, training only) drops units of each layer's output.
    """
    cell = CELLS[config.cell]
    caches, new_state = [], []
    x = inputs  # (T,B) characters for layer 0, then (T,B,H) the hidden sequence of the layer below
    for layer in range(config.num_layers):
        p = _layer_params(params, layer)
        hs, layer_state, cache = cell.forward(input_projection(p, x), state[layer], p)
        cache["x"] = x
        caches.append(cache)
        new_state.append(layer_state)
        x = dropout_forward(hs, None if masks is None else masks[layer])
    logits = x @ params["Why"].T + params["by"]
    cache = {"config": config, "params": params, "layers": caches, "top": x, "masks": masks}
    if return_internals:
        per_layer = [cell.internals(c) for c in caches]
        internals = {name: [d[name] for d in per_layer] for name in per_layer[0]}
        return logits, cache, new_state, internals
    return logits, cache, new_state


def _scatter_rows(ix, values, num_rows):
    """out[v] = sum of values[n] over the n with ix[n] == v: the transpose of the row gather ``W[ix]``.

    Same sums, in the same order, as ``np.add.at(out, ix, values)``, which is an order of magnitude slower
    for wide rows: sort the rows by character, then add each character's block in one reduction."""
    out = np.zeros((num_rows, values.shape[1]), dtype=values.dtype)
    sorted_values = values[np.argsort(ix, kind="stable")]
    start = 0
    for v, count in enumerate(np.bincount(ix, minlength=num_rows).tolist()):
        if count:
            np.add.reduce(sorted_values[start : start + count], axis=0, out=out[v])
            start += count
    return out


def _log_softmax_parts(logits):
    """Shifted logits, their exponentials and the row sums: the stable pieces of log-softmax."""
    shifted = logits - logits.max(axis=2, keepdims=True)
    exp = np.exp(shifted)
    return shifted, exp, exp.sum(axis=2, keepdims=True)


def softmax_cross_entropy(logits: np.ndarray, targets: np.ndarray):
    """Stable softmax cross-entropy via log-sum-exp: no inf or NaN at large logits.

    Returns (loss, dlogits) where loss is the sum over time of the mean over the batch, in nats -- the gist's
    summed loss at B=1 -- and dlogits (T,B,V) its gradient. Divide loss by T for nats per character.
    """
    T, B, V = logits.shape
    shifted, exp, sumexp = _log_softmax_parts(logits)
    at_target = (np.arange(T * B), targets.reshape(-1))  # (row, target) of each of the T*B positions
    log_p_target = shifted.reshape(-1, V)[at_target] - np.log(sumexp.reshape(-1))
    loss = -log_p_target.sum() / B
    dlogits = exp / sumexp
    dlogits.reshape(-1, V)[at_target] -= 1.0
    dlogits /= B
    return float(loss), dlogits


def backward(dlogits: np.ndarray, cache) -> dict[str, np.ndarray]:
    """Gradients of the loss on every parameter; weight gradients are single matmuls over all T*B."""
    config, params, caches, masks = cache["config"], cache["params"], cache["layers"], cache["masks"]
    cell = CELLS[config.cell]
    V = dlogits.shape[2]
    top = cache["top"]  # the top layer's output as the output layer read it (after dropout)
    H = top.shape[2]
    flat_dlogits = dlogits.reshape(-1, V)
    grads = {"Why": flat_dlogits.T @ top.reshape(-1, H), "by": flat_dlogits.sum(axis=0)}
    dx = dlogits @ params["Why"]  # (T,B,H), on the input of the output layer
    for layer in reversed(range(config.num_layers)):
        c = caches[layer]
        dhs = dropout_backward(dx, None if masks is None else masks[layer])
        dax, dah, extra = cell.backward(dhs, c)
        GH = dax.shape[2]
        flat_dax = dax.reshape(-1, GH)
        grads[layer_key("Whh", layer)] = dah.reshape(-1, GH).T @ c["h_prev"].reshape(-1, H)
        grads[layer_key("bh", layer)] = flat_dax.sum(axis=0)
        for name, value in extra.items():
            grads[layer_key(name, layer)] = value
        Wxh = params[layer_key("Wxh", layer)]
        if layer == 0:
            # scatter-add: the transpose of the row gather in forward
            grads["Wxh"] = _scatter_rows(c["x"].reshape(-1), flat_dax, Wxh.shape[1]).T.copy()
        else:
            grads[layer_key("Wxh", layer)] = flat_dax.T @ c["x"].reshape(-1, H)
            dx = dax @ Wxh
    return grads


def loss_and_grads(params, config: ModelConfig, inputs, targets, state, masks=None):
    """One truncated-BPTT window: (loss summed over time, mean over batch, in nats; grads; state after it).
    ``masks``: the window's dropout masks (``dropout_masks``), None without dropout."""
    logits, cache, new_state = forward(params, config, inputs, state, masks=masks)
    loss, dlogits = softmax_cross_entropy(logits, targets)
    return loss, backward(dlogits, cache), new_state


def loss_only(params, config: ModelConfig, inputs, targets, state, masks=None):
    """Forward pass only, for gradient checks (fixed masks): (summed loss as in ``loss_and_grads``, new state)."""
    nats, new_state = stream_nats(params, config, inputs, targets, state, masks)
    return float(nats.sum() / inputs.shape[1]), new_state


def stream_nats(params, config: ModelConfig, inputs, targets, state, masks=None):
    """Forward pass only: (nats summed over the window for each of the B streams, (B,) float64; new state)."""
    logits, _, new_state = forward(params, config, inputs, state, masks=masks)
    T, B, V = logits.shape
    shifted, _, sumexp = _log_softmax_parts(logits)
    at_target = shifted.reshape(-1, V)[np.arange(T * B), targets.reshape(-1)].reshape(T, B)
    return (np.log(sumexp.reshape(T, B)) - at_target).sum(axis=0, dtype=np.float64), new_state
