"""Optimizers (Adagrad as in the gist, RMSprop, Adam) and gradient clipping. All update parameters in place."""
from __future__ import annotations

import numpy as np

from .errors import ConfigError


class Optimizer:
    """Holds per-parameter state arrays named ``{slot}.{param}``, so checkpoints can store them as plain arrays."""

    slots: tuple[str, ...] = ()

    def __init__(self, lr: float, eps: float = 1e-8):
        if not lr > 0:
            raise ConfigError(f"learning rate must be positive, got lr={lr}")
        self.lr = lr
        self.eps = eps
        self.state: dict[str, np.ndarray] = {}
        self.t = 0  # number of updates taken

    def _slot(self, slot: str, name: str, like: np.ndarray) -> np.ndarray:
        key = f"{slot}.{name}"
        if key not in self.state:
            self.state[key] = np.zeros_like(like)
        return self.state[key]

    def step(self, params: dict[str, np.ndarray], grads: dict[str, np.ndarray]) -> None:
        self.t += 1
        for name, param in params.items():
            self.update(name, param, grads[name])

    def update(self, name: str, param: np.ndarray, grad: np.ndarray) -> None:
        raise NotImplementedError

    def state_dict(self) -> dict[str, np.ndarray]:
        return {**self.state, "t": np.array(self.t)}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        self.t = int(state["t"])
        self.state = {k: np.array(v) for k, v in state.items() if k != "t"}


class Adagrad(Optimizer):
    """The gist's update: mem += g*g; p -= lr * g / sqrt(mem + 1e-8)."""

    slots = ("mem",)

    def update(self, name, param, grad):
        mem = self._slot("mem", name, param)
        mem += grad * grad
        param += -self.lr * grad / np.sqrt(mem + self.eps)


class RMSprop(Optimizer):
    slots = ("cache",)

    def __init__(self, lr: float, decay: float = 0.99, eps: float = 1e-8):
        super().__init__(lr, eps)
        self.decay = decay

    def update(self, name, param, grad):
        cache = self._slot("cache", name, param)
        cache *= self.decay
        cache += (1.0 - self.decay) * grad * grad
        param -= self.lr * grad / (np.sqrt(cache) + self.eps)


class Adam(Optimizer):
    slots = ("m", "v")

    def __init__(self, lr: float, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8):
        super().__init__(lr, eps)
        self.beta1, self.beta2 = beta1, beta2

    def update(self, name, param, grad):
        m, v = self._slot("m", name, param), self._slot("v", name, param)
        m *= self.beta1
        m += (1.0 - self.beta1) * grad
        v *= self.beta2
        v += (1.0 - self.beta2) * grad * grad
        # bias correction folded into the step size
        step = self.lr * np.sqrt(1.0 - self.beta2**self.t) / (1.0 - self.beta1**self.t)
        param -= step * m / (np.sqrt(v) + self.eps)


OPTIMIZERS = {"adagrad": Adagrad, "rmsprop": RMSprop, "adam": Adam}
CLIP_MODES = ("value", "norm")


def make_optimizer(name: str, lr: float, **options) -> Optimizer:
    if name not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer {name!r}: choose one of {', '.join(OPTIMIZERS)}")
    return OPTIMIZERS[name](lr, **options)


def clip_gradients(grads: dict[str, np.ndarray], clip: float | None, mode: str = "value") -> float:
    """Clip in place, elementwise to [-clip, clip] (the gist's ±5) or by global norm. Returns the global norm
    before clipping (NaN/inf when the gradients are not finite, which the trainer treats as divergence)."""
    norm = float(np.sqrt(sum(float(np.vdot(g, g)) for g in grads.values())))
    if clip is None or clip <= 0:
        return norm
    if mode == "value":
        for g in grads.values():
            np.clip(g, -clip, clip, out=g)
    elif mode == "norm":
        if norm > clip:
            for g in grads.values():
                g *= clip / norm
    else:
        raise ConfigError(f"unknown clip_mode {mode!r}: choose one of {', '.join(CLIP_MODES)}")
    return norm
