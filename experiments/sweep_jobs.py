"""A sweep's jobs: which keys it sweeps, how many jobs it plans, each job's short name and its share of the cores.
The launching process writes ``<sweep dir>/sweep.json`` (the swept keys, the BLAS threads per job), which the
launcher and every job read."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from charrnn.errors import ConfigError

SWEEP_FILE = "sweep.json"  # in the sweep dir: the swept keys and BLAS threads per job, read by every job
MAX_NAME = 40  # characters of a child run's name
# Swept keys as they read in a child's name, in this order; any other key reads as its last component, after them.
# A swept key's label in child run names; "" for config groups, whose values name themselves (lstm, adam).
SHORT_KEYS = {
    "model": "",
    "model.cell": "",
    "model.hidden_size": "h",
    "model.num_layers": "L",
    "train.seq_length": "T",
    "train.batch_size": "B",
    "optim": "",
    "optim.name": "",
    "optim.lr": "lr",
    "optim.clip": "clip",
    "study.budget": "",
    "train.seed": "seed",
    "data": "",
    "data.name": "",
}
TAG_JOBS = "charrnn.jobs"  # on the parent: the jobs the sweep planned
TAG_BLAS_THREADS = "charrnn.blas_threads"


def swept_space(config: DictConfig) -> dict[str, str]:
    """{key: values as written} for every swept key: the sweeper's params, then the command line's sweeps.
    A key given one value (a preset's sweep narrowed with hydra.sweeper.params.<key>=<value>) is not swept."""
    params = {str(k): str(v) for k, v in (OmegaConf.select(config, "hydra.sweeper.params") or {}).items()}
    parsed = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()])
    space = {k: v for (k, v), override in zip(params.items(), parsed) if override.is_sweep_override()}
    for override in OverridesParser.create().parse_overrides(list(config.hydra.overrides.task)):
        key = override.get_key_element()
        if override.is_sweep_override():
            space[key] = override.input_line.split("=", 1)[1]
        else:  # one value on the command line pins a key the preset sweeps
            space.pop(key, None)
    return space


def planned_jobs(config: DictConfig, space: dict[str, str]) -> int | None:
    """How many jobs the sweeper will launch, where that is known in advance."""
    if OmegaConf.select(config, "hydra.sweeper.n_trials") is not None:
        return int(config.hydra.sweeper.n_trials)
    if not str(config.hydra.sweeper._target_).endswith("BasicSweeper"):
        return None
    count = 1
    for override in OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in space.items()]):
        count *= len(list(override.sweep_string_iterator())) if override.is_sweep_override() else 1
    return count


def _short_value(value: Any) -> str:
    """Three significant digits; more where rounding to three would carry into a rounder number (0.9999 must
    not read as 1)."""
    if not isinstance(value, float):
        return str(value)
    digits = 3
    while True:  # ends by 17 digits, which give any float back exactly
        short = f"{value:.{digits}g}"
        mantissa = short.split("e")[0].replace("-", "").replace(".", "").lstrip("0")
        if float(short) == value or len(mantissa) >= 3:
            return short
        digits += 1


def short_name(overrides: list[str], keys: list[str]) -> str:
    """``h=64 T=16 lr=0.1 clip=5``: the values of the swept ``keys`` in these job overrides."""
    values = {o.get_key_element(): o.value() for o in OverridesParser.create().parse_overrides(overrides)}
    order = list(SHORT_KEYS)  # the same order in every name, whatever order the sweep was written in
    keys = sorted(keys, key=lambda k: order.index(k) if k in order else len(order))
    labels = {k: SHORT_KEYS.get(k, k.rsplit(".", 1)[-1]) for k in keys}
    parts = [
        f"{labels[k]}={_short_value(values[k])}" if labels[k] else _short_value(values[k]) for k in keys if k in values
    ]
    name = " ".join(parts)
    return name if len(name) <= MAX_NAME else name[: MAX_NAME - 1] + "…"


def read_sweep(sweep_dir: Path) -> dict:
    path = sweep_dir / SWEEP_FILE
    return json.loads(path.read_text()) if path.exists() else {}


def job_label(sweep_dir: Path, overrides: list[str]) -> str | None:
    """A sweep job's short name, from the keys the launching process recorded as swept."""
    keys = read_sweep(sweep_dir).get("keys")
    if keys is None:  # a job not started by this callback: name it by all its overrides
        keys = [o.get_key_element() for o in OverridesParser.create().parse_overrides(overrides)]
    return short_name(overrides, keys) or None


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, which a container or taskset narrows)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def parallel_jobs(n_jobs: int) -> int:
    """Jobs at once for a launcher's ``n_jobs``, counted as joblib counts them: -1 one per usable core, -2 all
    but one, and so on, never fewer than one."""
    if n_jobs == 0:
        raise ConfigError("hydra.launcher.n_jobs=0 runs no job: give a count, or -1 for one per core")
    return n_jobs if n_jobs > 0 else max(1, usable_cores() + 1 + n_jobs)


def blas_threads(config: DictConfig, jobs: int | None) -> int | None:
    """BLAS threads per job, the cores over the jobs that run at once, so that parallel jobs never
    oversubscribe the cores; None: jobs run one at a time. ``jobs``: how many the sweep has, if known."""
    target = str(config.hydra.launcher._target_)
    if target.endswith("BasicLauncher"):
        return None
    n_jobs = OmegaConf.select(config, "hydra.launcher.n_jobs")
    parallel = parallel_jobs(n_jobs) if n_jobs is not None else usable_cores()  # Ray, submitit: one per core
    return max(1, usable_cores() // min(parallel, jobs or parallel))


def sweep_blas_threads(sweep_dir: Path) -> int | None:
    """The BLAS threads each job of a parallel sweep gets (None: jobs run one at a time, in the sweep's process)."""
    return read_sweep(sweep_dir).get("blas_threads")
