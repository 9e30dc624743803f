"""Sampling text from a model: temperature, top-k, a priming text, greedy (argmax) decoding."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from .checks import check_int, check_number
from .data import Vocab
from .model import ModelConfig, forward, init_state


def generate(
    params: dict[str, np.ndarray],
    config: ModelConfig,
    vocab: Vocab,
    length: int = 200,
    temperature: float = 1.0,
    top_k: int | None = None,
    prime: str = "",
    argmax: bool = False,
    seed: int | None = None,
    rng: np.random.Generator | None = None,
) -> Iterator[str]:
    """Generate ``length`` characters after ``prime`` (the prime is not included), one at a time, so a
    caller can show progress and keep what it has.

    With an empty prime the first character is drawn from the model's prediction given a zero state.
    Pass ``rng`` to continue a random stream (the trainer does, so sampling is part of exact resume),
    else ``seed`` makes a fresh one.
    """
    check_int("length", length, 0)
    if not argmax:
        check_number("temperature", temperature, positive=True)
    check_int("top_k", top_k, 1, allow_none=True)
    check_int("seed", seed, 0, allow_none=True)
    rng = rng if rng is not None else np.random.default_rng(seed)
    state = init_state(config, 1)
    if prime:
        primed = vocab.encode(prime)  # DataError naming characters outside the vocabulary
        logits, _, state = forward(params, config, primed[:, None], state)
        last = logits[-1, 0]
    else:
        top_h = np.zeros(config.hidden_size, dtype=config.dtype)
        last = params["Why"] @ top_h + params["by"]

    chars = vocab.chars
    for _ in range(length):
        ix = _pick(last.astype(np.float64), temperature, top_k, argmax, rng)
        yield chars[ix]
        logits, _, state = forward(params, config, np.array([[ix]]), state)
        last = logits[0, 0]


def sample(*args, **kwargs) -> str:
    """:func:`generate`'s characters (same arguments) as one string."""
    return "".join(generate(*args, **kwargs))


def _pick(logits: np.ndarray, temperature: float, top_k: int | None, argmax: bool, rng) -> int:
    if argmax:
        return int(np.argmax(logits))
    scaled = logits / temperature
    if top_k is not None and top_k < scaled.size:
        kth = np.partition(scaled, -top_k)[-top_k]
        scaled = np.where(scaled >= kth, scaled, -np.inf)
    p = np.exp(scaled - scaled.max())
    p /= p.sum()
    return int(rng.choice(p.size, p=p))
