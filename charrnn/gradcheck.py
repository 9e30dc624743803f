"""Numerical gradient checks: call these on your own modifications of a cell or the model.

>>> from charrnn.gradcheck import check_gradients
>>> errors = check_gradients("lstm", num_layers=2, batch_size=3)
>>> max(errors.values()) < 1e-6
True
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .model import ModelConfig, dropout_masks, init_params, init_state, loss_and_grads, loss_only


def numerical_gradient(f: Callable[[], float], x: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    """Centred differences (f(x+eps) - f(x-eps)) / 2eps of a scalar function of the array x, in place."""
    grad = np.zeros_like(x)
    flat_x, flat_grad = x.reshape(-1), grad.reshape(-1)
    for i in range(flat_x.size):
        saved = flat_x[i]
        flat_x[i] = saved + eps
        f_plus = f()
        flat_x[i] = saved - eps
        f_minus = f()
        flat_x[i] = saved
        flat_grad[i] = (f_plus - f_minus) / (2 * eps)
    return grad


def relative_error(analytic: np.ndarray, numeric: np.ndarray) -> float:
    """||a - n|| / (||a|| + ||n||) over one parameter; 0 when both vanish."""
    denom = np.linalg.norm(analytic) + np.linalg.norm(numeric)
    return 0.0 if denom == 0 else float(np.linalg.norm(analytic - numeric) / denom)


def check_gradients(
    cell: str = "rnn",
    num_layers: int = 1,
    batch_size: int = 2,
    seq_length: int = 5,
    vocab_size: int = 6,
    hidden_size: int = 4,
    seed: int = 0,
    params: dict[str, np.ndarray] | None = None,
    dropout: float = 0.0,
) -> dict[str, float]:
    """Compare backprop with centred numerical gradients of the training loss for every parameter.

    Runs in float64 on random characters from a random (non-zero) initial state, so the gradient path into
    the carried state is exercised too. Returns {parameter name: relative error}; healthy code gives < 1e-6.
    Pass ``params`` to check a model of your own (its shapes must match the other arguments). With ``dropout``
    > 0 one set of masks is drawn and held fixed, so the loss is a function of the parameters alone.
    """
    config = ModelConfig(cell, vocab_size, hidden_size, num_layers, "float64", dropout)
    rng = np.random.default_rng(seed)
    if params is None:
        # larger weights than the training init so that every path carries a visible gradient
        params = {k: v + rng.normal(0.0, 0.5, v.shape) for k, v in init_params(config, rng).items()}
    inputs = rng.integers(0, vocab_size, (seq_length, batch_size))
    targets = rng.integers(0, vocab_size, (seq_length, batch_size))
    state = [tuple(rng.normal(0.0, 0.5, s.shape) for s in layer) for layer in init_state(config, batch_size)]

    masks = dropout_masks(rng, config, seq_length, batch_size)

    _, grads, _ = loss_and_grads(params, config, inputs, targets, state, masks)

    def loss() -> float:
        return loss_only(params, config, inputs, targets, state, masks)[0]

    return {name: relative_error(grads[name], numerical_gradient(loss, params[name])) for name in params}
