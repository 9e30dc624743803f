"""``hydra/launcher=charrnn``: each sweep job in a process of its own, forked from a server that has already
imported the harness, at most ``n_jobs`` at a time. A job that dies is reported and the others go on.

This module is imported whenever Hydra discovers its plugins, at every command's start, so it stays light:
the launcher's body (``_core.py``) is imported when a sweep starts.
"""

from __future__ import annotations

from collections.abc import Sequence

from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class JobProcessLauncher(Launcher):
    def __init__(self, n_jobs: int = -1) -> None:
        self.n_jobs = n_jobs
        self.config: DictConfig | None = None
        self.task_function: TaskFunction | None = None
        self.hydra_context: HydraContext | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.task_function = task_function
        self.hydra_context = hydra_context

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from . import _core

        return _core.launch(self, job_overrides, initial_job_idx)


def start_fork_server() -> None:
    """Import the launcher's body and start the server its jobs are forked from: the sweep callback calls this as
    the sweep starts, so that a broken install fails before anything is created, and the server's imports overlap
    with the store's creation."""
    from . import _core

    _core.start_fork_server()
