"""Learning-rate schedules: the lr of each update as a pure function of how many updates came before it, so a
resumed run continues its schedule exactly.

    constant  the base lr throughout (the default)
    step      char-rnn's decay: the updates from ``step_start`` on (counting from 0) run at lr * step_factor,
              and the lr is multiplied by step_factor again every ``step_every`` updates after that
    cosine    nanoGPT's: down from the base lr along half a cosine to ``min_lr_fraction`` of it at update
              ``decay_iters`` (None: the run's max_iters), then flat

Any of them may begin with a linear warmup over ``warmup_iters`` updates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from .checks import check_int, check_number
from .errors import ConfigError

SCHEDULES = ("constant", "step", "cosine")


@dataclass(frozen=True)
class ScheduleConfig:
    name: str = "constant"
    warmup_iters: int = 0
    step_start: int = 0
    step_every: int = 1000
    step_factor: float = 0.5
    decay_iters: int | None = None
    min_lr_fraction: float = 0.1

    def __post_init__(self):
        if self.name not in SCHEDULES:
            raise ConfigError(f"must be one of {', '.join(SCHEDULES)}, got {self.name!r}", "schedule.name")
        check_int("schedule.warmup_iters", self.warmup_iters, 0)
        check_int("schedule.step_start", self.step_start, 0)
        check_int("schedule.step_every", self.step_every, 1)
        check_number("schedule.step_factor", self.step_factor, minimum=0.0, below=1.0, positive=True)
        check_int("schedule.decay_iters", self.decay_iters, 1, allow_none=True)
        check_number("schedule.min_lr_fraction", self.min_lr_fraction, minimum=0.0, below=1.0)
        if self.decay_iters is not None and self.warmup_iters >= self.decay_iters:
            raise ConfigError(
                f"must be below schedule.decay_iters={self.decay_iters}, got {self.warmup_iters}",
                "schedule.warmup_iters",
            )

    def for_run(self, max_iters: int | None) -> ScheduleConfig:
        """This schedule with its horizon fixed for a run of ``max_iters`` updates (None: no iteration limit);
        a run keeps the result in its checkpoints, so a resume that raises max_iters keeps the same curve."""
        if max_iters is not None and self.warmup_iters > max_iters:
            raise ConfigError(
                f"must be at most max_iters={max_iters} (the run would end before its lr warms up), "
                f"got {self.warmup_iters}",
                "schedule.warmup_iters",
            )
        if self.name != "cosine" or self.decay_iters is not None:
            return self
        if max_iters is None:
            raise ConfigError(
                "must be set for the cosine schedule when max_iters is not set (a run bounded by "
                "time has no last update to decay to)",
                "schedule.decay_iters",
            )
        if self.warmup_iters == max_iters:
            raise ConfigError(
                f"must be below max_iters={max_iters} for the cosine schedule (it decays over the "
                f"updates after warmup), got {self.warmup_iters}",
                "schedule.warmup_iters",
            )
        return replace(self, decay_iters=max_iters)


def learning_rate(schedule: ScheduleConfig, base_lr: float, done: int) -> float:
    """The lr of the update that follows ``done`` updates (0 for the first one)."""
    # 1) linear warmup: the first update at base_lr / warmup_iters, update warmup_iters at base_lr
    if done < schedule.warmup_iters:
        return base_lr * (done + 1) / schedule.warmup_iters
    if schedule.name == "constant":
        return base_lr
    if schedule.name == "step":
        # 2) char-rnn: one multiplication by step_factor at step_start, then one per step_every updates
        if done < schedule.step_start:
            return base_lr
        return base_lr * schedule.step_factor ** ((done - schedule.step_start) // schedule.step_every + 1)
    # 3) cosine from base_lr at the end of warmup to the floor at decay_iters, then the floor
    min_lr = base_lr * schedule.min_lr_fraction
    if done >= schedule.decay_iters:
        return min_lr
    progress = (done - schedule.warmup_iters) / (schedule.decay_iters - schedule.warmup_iters)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (base_lr - min_lr)
