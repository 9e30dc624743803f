"""The rounds a run is sure to get under the automatic evaluation cadence (``TrainConfig.eval_every=None``).

The evaluation budget (``eval_max_fraction`` of the wall time) alone left short runs with two validation points,
one early and one at the end, since an early round measured on a busy machine spaced the next one far out. So a
run whose length is known also evaluates every ``1/MIN_EVAL_ROUNDS`` of it, whatever the budget says: every
``max_iters // MIN_EVAL_ROUNDS`` iterations (a multiple of ``log_every`` when that is at least ``log_every``, so
validation points line up with training points), and at every ``k * max_seconds / MIN_EVAL_ROUNDS`` seconds of
run time, counted from the run's start (the time budget counts evaluations too, so the spacing is measured on the
same clock, not estimated from a step rate that evaluations would skew). Spaced from the previous round's end
instead, each evaluation pushed every later round back: a run whose evaluation took a third of the spacing got 8.
The budget adds rounds in between where it allows.
"""

from __future__ import annotations

MIN_EVAL_ROUNDS = 10  # the fewest rounds of a run with max_iters or max_seconds: a validation curve with a shape


def iterations_between_rounds(max_iters: int | None, log_every: int) -> int | None:
    """The most iterations between two sure rounds of a run limited to ``max_iters``; None without that limit."""
    if max_iters is None:
        return None
    spacing = max(1, max_iters // MIN_EVAL_ROUNDS)
    return spacing - spacing % log_every if spacing >= log_every else spacing


def sure_round_due(
    iteration: int,
    run_seconds: float,
    last_round_end: float,
    max_iters: int | None,
    max_seconds: float | None,
    log_every: int,
) -> bool:
    """Whether the run's length calls for a round at ``iteration``, ``run_seconds`` into the run, the last round
    having ended ``last_round_end`` seconds into it: a time-limited run's round is due once the run time has
    passed a multiple of ``max_seconds / MIN_EVAL_ROUNDS`` that the last round ended before."""
    spacing = iterations_between_rounds(max_iters, log_every)
    if spacing is not None and iteration % spacing == 0:
        return True
    if max_seconds is None:
        return False
    seconds = max_seconds / MIN_EVAL_ROUNDS
    return run_seconds // seconds > last_round_end // seconds
