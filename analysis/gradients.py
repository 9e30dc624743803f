"""The lecture's explode/vanish demonstration on a real model: recurrent spectra and ||dL/dh_t|| over time.

The engine's ``backward`` returns parameter gradients only; the gradient on each hidden state is rebuilt here
from what each cell's ``backward`` does return (``dah``, the gradient on the recurrent pre-activation
``Whh h_{t-1}``): dL/dh_t = (direct gradient at t) + dah_{t+1} Whh, plus for the GRU the gradient that flows
straight through its update gate, dL/dh_{t+1} * z_{t+1}. A finite-difference test keeps this honest.
"""

from __future__ import annotations

import numpy as np

from charrnn.cells import CELLS
from charrnn.model import ModelConfig, forward, init_state, layer_key, softmax_cross_entropy

GATE_NAMES = {"rnn": ("h",), "lstm": ("i", "f", "o", "g"), "gru": ("r", "z", "n")}  # row blocks of Whh


def recurrent_spectra(params: dict[str, np.ndarray], config: ModelConfig) -> dict[str, np.ndarray]:
    """Eigenvalues of every recurrent matrix: one H x H block of ``Whh`` per gate and layer, keyed
    ``"layer 0 / f"``. A largest magnitude above 1 lets signals (and gradients) grow along that path."""
    H = config.hidden_size
    spectra = {}
    for layer in range(config.num_layers):
        Whh = params[layer_key("Whh", layer)].astype(np.float64)
        for g, gate in enumerate(GATE_NAMES[config.cell]):
            spectra[f"layer {layer} / {gate}"] = np.linalg.eigvals(Whh[g * H : (g + 1) * H])
    return spectra


def hidden_state_gradients(
    params: dict[str, np.ndarray],
    config: ModelConfig,
    inputs: np.ndarray,
    targets: np.ndarray,
    last_step_only: bool = True,
) -> list[np.ndarray]:
    """dL/dh_t for every layer (bottom first), each (T, B, H), from a zero state.

    With ``last_step_only`` L is the loss of the final step alone, so the curve over t shows how far back one
    prediction's error reaches -- vanishing or exploding -- rather than each step's own local loss.
    """
    cell = CELLS[config.cell]
    logits, cache, _ = forward(params, config, inputs, init_state(config, inputs.shape[1]))
    _, dlogits = softmax_cross_entropy(logits, targets)
    if last_step_only:
        dlogits[:-1] = 0.0
    dhs = dlogits @ params["Why"]  # (T,B,H): the direct gradient on the top layer
    per_layer = []
    for layer in reversed(range(config.num_layers)):
        layer_cache = cache["layers"][layer]
        dax, dah, _ = cell.backward(dhs, layer_cache)
        Whh = params[layer_key("Whh", layer)]
        z = cell.internals(layer_cache)["z"] if config.cell == "gru" else None
        dh = dhs.copy()
        for t in reversed(range(dh.shape[0] - 1)):
            dh[t] += dah[t + 1] @ Whh
            if z is not None:
                dh[t] += dh[t + 1] * z[t + 1]
        per_layer.append(dh)
        if layer > 0:
            dhs = dax @ params[layer_key("Wxh", layer)]  # what the layer below sends up, as in model.backward
    return per_layer[::-1]


def hidden_gradient_norms(params, config, inputs, targets, last_step_only: bool = True) -> np.ndarray:
    """(num_layers, T): ||dL/dh_t|| over units, averaged over the batch."""
    grads = hidden_state_gradients(params, config, inputs, targets, last_step_only)
    return np.stack([np.linalg.norm(g, axis=2).mean(axis=1) for g in grads])
