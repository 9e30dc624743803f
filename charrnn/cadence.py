"""The rounds a run is sure to get under the automatic evaluation cadence (``TrainConfig.eval_every=None``).

The evaluation budget (``eval_max_fraction`` of the wall time) alone left short runs with two validation points,
one early and one at the end, since an early round measured on a busy machine spaced the next one far out. So a
run whose length is known also evaluates every ``1/MIN_EVAL_ROUNDS`` of it, whatever the budget says: every
``max_iters // MIN_EVAL_ROUNDS`` iterations (a multiple of ``log_every`` when that is at least ``log_every``, so
validation points line up with training points), and every ``max_seconds / MIN_EVAL_ROUNDS`` seconds of wall
time (the time budget counts evaluations too, so the spacing is measured on the same clock, not estimated from
a step rate that evaluations would skew). The budget adds rounds in between where it allows.
"""
from __future__ import annotations

MIN_EVAL_ROUNDS = 10  # the fewest rounds of a run with max_iters or max_seconds: a validation curve with a shape


def iterations_between_rounds(max_iters: int | None, log_every: int) -> int | None:
    """The most iterations between two sure rounds of a run limited to ``max_iters``; None without that limit."""
    if max_iters is None:
        return None
    spacing = max(1, max_iters // MIN_EVAL_ROUNDS)
    return spacing - spacing % log_every if spacing >= log_every else spacing


def sure_round_due(iteration: int, seconds_since_round: float, max_iters: int | None, max_seconds: float | None,
                   log_every: int) -> bool:
    """Whether the run's length calls for a round at ``iteration``, ``seconds_since_round`` after the last one."""
    spacing = iterations_between_rounds(max_iters, log_every)
    if spacing is not None and iteration % spacing == 0:
        return True
    return max_seconds is not None and seconds_since_round >= max_seconds / MIN_EVAL_ROUNDS
