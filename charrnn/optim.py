"""Optimizers (Adagrad as in the gist, RMSprop, Adam) and gradient clipping.

They work on one flat vector holding every parameter (the trainer keeps the named parameter arrays as views
of it), so an update is a handful of NumPy calls whatever the number of layers: at the gist's sizes the
per-call overhead, not the arithmetic, is what an update costs. Elementwise, the arithmetic is exactly the
per-array one.
"""

from __future__ import annotations

import inspect

import numpy as np

from .checks import check_number
from .errors import ConfigError


def flat_views(arrays: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Copy ``arrays`` into one contiguous 1-D buffer; return it and views of it under the same names."""
    flat = np.concatenate([a.ravel() for a in arrays.values()])
    views, start = {}, 0
    for name, a in arrays.items():
        views[name] = flat[start : start + a.size].reshape(a.shape)
        start += a.size
    return flat, views


class Optimizer:
    """Updates a flat parameter vector in place; state arrays (``slots``) have the same layout."""

    slots: tuple[str, ...] = ()

    def __init__(self, lr: float, eps: float = 1e-8):
        check_number("lr", lr, positive=True)
        check_number("eps", eps, positive=True)
        self.lr = lr
        self.eps = eps
        self.state: dict[str, np.ndarray] = {}
        self.t = 0  # number of updates taken
        self._scratch: tuple[np.ndarray, np.ndarray] | None = None

    def step(self, param: np.ndarray, grad: np.ndarray) -> None:
        if not self.state:
            self.state = {slot: np.zeros_like(param) for slot in self.slots}
        if self._scratch is None or self._scratch[0].shape != param.shape:
            # temporaries reused across steps: fresh ones of this size cost a page fault per page each time
            self._scratch = (np.empty_like(param), np.empty_like(param))
        self.t += 1
        self.update(param, grad, *self._scratch, **self.state)

    def update(
        self, param: np.ndarray, grad: np.ndarray, tmp: np.ndarray, tmp2: np.ndarray, **slots: np.ndarray
    ) -> None:
        raise NotImplementedError

    def state_dict(self) -> dict[str, np.ndarray]:
        return {**self.state, "t": np.array(self.t)}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        self.t = int(state["t"])
        self.state = {k: np.array(v) for k, v in state.items() if k != "t"}


class Adagrad(Optimizer):
    """The gist's update: mem += g*g; p += -lr * g / sqrt(mem + 1e-8)."""

    slots = ("mem",)

    def update(self, param, grad, tmp, tmp2, mem):
        # mem += g*g; param += -lr*g / sqrt(mem + eps), the same operations in the same order, into buffers
        mem += np.multiply(grad, grad, out=tmp)
        denom = np.sqrt(np.add(mem, self.eps, out=tmp), out=tmp)
        param += np.divide(np.multiply(grad, -self.lr, out=tmp2), denom, out=tmp2)


class RMSprop(Optimizer):
    slots = ("cache",)

    def __init__(self, lr: float, decay: float = 0.99, eps: float = 1e-8):
        super().__init__(lr, eps)
        check_number("decay", decay, minimum=0.0, below=1.0)
        self.decay = decay

    def update(self, param, grad, tmp, tmp2, cache):
        # cache = decay*cache + (1-decay)*g^2; param -= lr*g / (sqrt(cache) + eps)
        cache *= self.decay
        cache += np.multiply(np.multiply(grad, grad, out=tmp), 1.0 - self.decay, out=tmp)
        denom = np.add(np.sqrt(cache, out=tmp), self.eps, out=tmp)
        param -= np.divide(np.multiply(grad, self.lr, out=tmp2), denom, out=tmp2)


class Adam(Optimizer):
    slots = ("m", "v")

    def __init__(self, lr: float, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8):
        super().__init__(lr, eps)
        check_number("beta1", beta1, minimum=0.0, below=1.0)
        check_number("beta2", beta2, minimum=0.0, below=1.0)
        self.beta1, self.beta2 = beta1, beta2

    def update(self, param, grad, tmp, tmp2, m, v):
        # m = b1*m + (1-b1)*g; v = b2*v + (1-b2)*g^2; param -= step * m / (sqrt(v) + eps)
        m *= self.beta1
        m += np.multiply(grad, 1.0 - self.beta1, out=tmp)
        v *= self.beta2
        v += np.multiply(np.multiply(grad, grad, out=tmp), 1.0 - self.beta2, out=tmp)
        # bias correction folded into the step size
        step = self.lr * np.sqrt(1.0 - self.beta2**self.t) / (1.0 - self.beta1**self.t)
        denom = np.add(np.sqrt(v, out=tmp), self.eps, out=tmp)
        param -= np.divide(np.multiply(m, step, out=tmp2), denom, out=tmp2)


OPTIMIZERS = {"adagrad": Adagrad, "rmsprop": RMSprop, "adam": Adam}
CLIP_MODES = ("value", "norm")


def make_optimizer(name: str, lr: float, **options) -> Optimizer:
    """The optimizer ``name``; every setting is checked here, with one line naming what is wrong."""
    if name not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer {name!r}: choose one of {', '.join(OPTIMIZERS)}")
    known = [p for p in inspect.signature(OPTIMIZERS[name]).parameters if p != "lr"]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ConfigError(f"{name} has no option {unknown[0]!r}: its options are {', '.join(known)}")
    return OPTIMIZERS[name](lr, **options)


def decay_weights(weights: list[np.ndarray], lr: float, weight_decay: float) -> None:
    """Decoupled weight decay (Loshchilov & Hutter's AdamW, as torch.optim.AdamW does it): w *= 1 - lr * wd,
    in place, before the optimizer's own update."""
    shrink = 1.0 - lr * weight_decay
    for w in weights:
        w *= shrink


def clip_gradients(grad: np.ndarray, clip: float | None, mode: str = "value") -> float:
    """Clip the flat gradient in place, elementwise to [-clip, clip] (the gist's ±5) or by its norm. Returns
    the norm before clipping (NaN/inf when the gradient is not finite, which the trainer treats as
    divergence)."""
    norm = float(np.sqrt(np.vdot(grad, grad)))
    if clip is None or clip <= 0:
        return norm
    if mode == "value":
        np.clip(grad, -clip, clip, out=grad)
    elif mode == "norm":
        if norm > clip:
            grad *= clip / norm
    else:
        raise ConfigError(f"unknown clip_mode {mode!r}: choose one of {', '.join(CLIP_MODES)}")
    return norm
