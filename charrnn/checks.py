"""Checks of numeric settings: each rejects what a key cannot mean (nan, inf, a bool, a fraction where a count
belongs, a value out of range) with one ConfigError line that names the key (its ``field``)."""

from __future__ import annotations

import math
import numbers

from .errors import ConfigError


def check_int(name: str, value, minimum: int, allow_none: bool = False) -> None:
    """``value`` is an integer >= ``minimum`` (or None where ``allow_none``)."""
    if value is None and allow_none:
        return
    wanted = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ConfigError(f"must be {wanted}{' (or None)' if allow_none else ''}, got {value!r}", name)


def check_number(
    name: str,
    value,
    minimum: float = -math.inf,
    below: float = math.inf,
    positive: bool = False,
    allow_none: bool = False,
) -> None:
    """``value`` is a finite real number in [``minimum``, ``below``), > 0 where ``positive`` (or None where
    ``allow_none``)."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(f"must be a number, got {value!r}", name)
    if not math.isfinite(value):
        raise ConfigError(f"must be a finite number, got {value}", name)
    if positive and not value > 0:
        raise ConfigError(f"must be positive, got {value}", name)
    if not minimum <= value < below:
        span = (
            f"in [{minimum:g}, {below:g})"
            if math.isfinite(minimum) and math.isfinite(below)
            else f">= {minimum:g}"
            if math.isfinite(minimum)
            else f"< {below:g}"
        )
        raise ConfigError(f"must be {span}, got {value}", name)
