"""The server that ``hydra/launcher=joblib`` sweeps fork their jobs from, and ``charrnn-train``'s entry point.

The server imports the harness once (PRELOAD), so a job pays no import time. This module imports nothing
heavy: when the command line picks the parallel launcher, ``charrnn-train`` starts the server before it
imports the harness itself, and the two imports run side by side on two cores instead of one after the
other (about 2 s of every parallel sweep). A launcher picked anywhere else (a preset, a config file) starts
the server as the sweep starts.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.forkserver
import sys

PRELOAD = ["charrnn_experiments.train", "mlflow.store.tracking.sqlalchemy_store",
           "hydra_plugins.charrnn_launcher.process_launcher"]
PARALLEL_LAUNCHER = "hydra/launcher=joblib"
# Hydra flags after which no job runs
NO_JOBS = {"--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "-i", "--version", "--shell-completion", "-sc"}


def start():
    """Start the server (once per process) and return the multiprocessing context that forks from it."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    multiprocessing.forkserver.ensure_running()
    return ctx


def wanted(argv: list[str]) -> bool:
    """Whether this command line runs jobs on the parallel launcher."""
    return not NO_JOBS.intersection(argv) and any(arg.lstrip("+") == PARALLEL_LAUNCHER for arg in argv)


def train_main() -> None:
    """``charrnn-train``."""
    if wanted(sys.argv[1:]):
        start()
    from charrnn_experiments.train import main

    main()
