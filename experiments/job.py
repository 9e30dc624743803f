"""Where a charrnn-train job runs (alone or in a sweep) and how it ended when not by finishing."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

from charrnn_experiments.sweep_jobs import job_label


@dataclass(frozen=True)
class Job:
    """Where this job runs: the launch directory and, in a sweep, its place in it."""

    base_dir: Path
    output_dir: Path
    multirun: bool
    sweep_dir: Path | None
    job_num: int | None
    name: str | None  # in a sweep, the job's swept values: "h=8 lr=0.1"

    @classmethod
    def from_hydra(cls) -> Job:
        hc = HydraConfig.get()
        base = Path(hc.runtime.cwd)
        multirun = hc.mode == RunMode.MULTIRUN
        sweep_dir = (base / hc.sweep.dir).resolve() if multirun else None
        return cls(
            base,
            Path(hc.runtime.output_dir),
            multirun,
            sweep_dir,
            hc.job.num if multirun else None,
            job_label(sweep_dir, list(hc.overrides.task)) if multirun else None,
        )


class JobFailed(Exception):
    """Training could not run or ended FAILED; the message is the one-line reason."""


class JobKilled(Exception):
    """SIGINT/SIGTERM stopped training; a checkpoint was saved and the run ended KILLED."""
