"""Hydra callback: the MLflow side of a multirun sweep.

Several jobs that open a brand-new SQLite store at once race on its schema migration, so the
store, the experiment and the sweep's parent run are created here, in the launching process,
before any job starts; each job reads the parent from ``<sweep dir>/mlflow_parent.json`` and logs
a nested child run named by its swept values only (``h=64 T=16 lr=0.1 clip=5``, :mod:`.sweep_jobs`).

At the end the parent gets the sweep's summary and report (:mod:`.sweep_summary`). A signal stops the whole
sweep (:mod:`.sweep_stop`); a sweep in which jobs failed says how many and exits 1.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import signal
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from hydra_plugins.charrnn_launcher.config import ProcessLauncherConf
from omegaconf import DictConfig, OmegaConf

from charrnn.errors import CharRNNError
from charrnn_experiments import tracking
from charrnn_experiments.faults import exit_with_error, first_line, local_fault, unwritable_files_line
from charrnn_experiments.store import Store
from charrnn_experiments.sweep_jobs import (
    SWEEP_FILE,
    TAG_JOBS,
    blas_threads,
    planned_jobs,
    sweep_blas_threads,
    swept_space,
)
from charrnn_experiments.sweep_stop import SweepStop
from charrnn_experiments.sweep_summary import end_sweep, job_run, parent_store

TAG_LAUNCHER = "charrnn.launcher"
TAG_SWEEPER = "charrnn.sweeper"
PROCESS_LAUNCHER = ProcessLauncherConf._target_
RAY_LAUNCHER = "hydra_plugins.hydra_ray_launcher.ray_launcher.RayLauncher"


def start_process_launcher(config: DictConfig) -> None:
    """Under ``hydra/launcher=charrnn``, import the launcher's body and start its fork server now: a broken
    install fails before anything is created, and the server's imports overlap with the store's creation."""
    if str(config.hydra.launcher._target_) != PROCESS_LAUNCHER:
        return
    from hydra.core.plugins import Plugins
    from hydra_plugins.charrnn_launcher.process_launcher import JobProcessLauncher, start_fork_server

    Plugins.instance().register(JobProcessLauncher)  # the plugin scan misses an editable install's, as above
    start_fork_server()


def start_ray_first(config: DictConfig) -> None:
    """Under ``hydra/launcher=ray``, start Ray (as the launcher would, from ``hydra.launcher.ray.init``) before
    the sweep installs its signal handlers: ``ray.init`` replaces the SIGTERM handler with its own, which exits
    at once, so the jobs died with the driver and their runs ended FAILED. The launcher uses the Ray it finds."""
    if str(config.hydra.launcher._target_) != RAY_LAUNCHER:
        return
    import ray

    if not ray.is_initialized():
        init = OmegaConf.select(config, "hydra.launcher.ray.init")
        ray.init(**(OmegaConf.to_container(init, resolve=True) if init else {}))


@contextlib.contextmanager
def exit_on_error(what: str):
    """Any exception ends the command with one error line and exit status 2: Hydra turns an exception in a
    callback into a warning and goes on (a sweep whose start failed ran every job with no parent run, or
    against a dead store). ``what`` names the step for an error that is not the user's to fix."""
    try:
        yield
    except Exception as err:
        exit_with_error(error_line(err, what))


def error_line(err: Exception, what: str | None = None) -> str:
    """The one line a command prints for ``err``; ``what`` names the step for an error that is not the user's to
    fix (one that is neither a CharRNNError nor a local fault)."""
    if isinstance(err, CharRNNError):  # a store that cannot be used, a bad setting: its message says what to do
        return str(err)
    fault = local_fault(err)  # a read-only or full folder: the user's to fix, in the same words as elsewhere
    if fault:
        return unwritable_files_line(fault)
    return f"{what + ': ' if what else ''}{type(err).__name__}: {first_line(err)}"


# --- the callback ----------------------------------------------------------------------------------


class MlflowSweepCallback(Callback):
    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        # Before Hydra makes the run's output folder: a store that does not answer leaves nothing behind.
        with exit_on_error("the run could not start"):
            Store.resolve(config.tracking.uri, os.getcwd()).check_reachable()

    def __init__(self) -> None:
        self.stop = SweepStop()
        self._end_tried = False  # the sweep's end was tried: the exit does not try again

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):  # noted until the parent run exists and can be ended
            signal.signal(sig, lambda signum, frame: self.stop.request(signum))
        with exit_on_error("the sweep could not start"):  # before any job starts: none runs untracked
            self._start_sweep(config)

    def _start_sweep(self, config: DictConfig) -> None:
        space = swept_space(config)
        jobs = planned_jobs(config, space)
        threads = blas_threads(config, jobs)  # a bad n_jobs fails here, before anything is created
        start_process_launcher(config)
        store = Store.resolve(config.tracking.uri, os.getcwd())
        store.check_writable()
        experiment_id = store.ensure_experiment(config.tracking.experiment)  # before any job or the sweep's folder
        sweep_dir = Path(config.hydra.sweep.dir).resolve()
        choices = config.hydra.runtime.choices
        preset = choices.get("experiment") or "sweep"
        sweep_dir.mkdir(parents=True, exist_ok=True)
        (sweep_dir / SWEEP_FILE).write_text(json.dumps({"keys": list(space), "blas_threads": threads}))
        tags = {
            tracking.TAG_SWEEP: str(sweep_dir),
            TAG_LAUNCHER: str(choices.get("hydra/launcher")),
            TAG_SWEEPER: str(choices.get("hydra/sweeper")),
        }
        if jobs is not None:
            tags[TAG_JOBS] = str(jobs)
        parent = tracking.MlflowTracker.start(
            store, experiment_id, run_name=f"{preset} {datetime.now():%m-%d %H:%M}", tags=tags
        )
        try:
            tracking.log_params(parent.client, parent.run_id, {f"sweep.{k}": v for k, v in space.items()})
            tracking.write_parent(sweep_dir, store, experiment_id, parent.run_id)
        except Exception as err:  # no job will start: the parent must not stay RUNNING
            parent.finish("FAILED", reason=f"the sweep could not start: {first_line(err)}")
            raise
        self._pid = os.getpid()
        # Registered first, run last: a sweep stopped inside Ray's or submitit's launcher exits 128 + the signal
        # whatever the launcher made of the SystemExit that stopped it (Ray turns it into SystemExit(1)).
        atexit.register(self.stop.exit_if_stopped)
        self.stop.serial = str(config.hydra.launcher._target_).endswith("BasicLauncher")
        self.stop.sweep_dir = sweep_dir
        # A sweep stopped before on_multirun_end (a signal, a crash) must not leave its runs RUNNING.
        atexit.register(self._end_if_running, sweep_dir)
        # Ray after those two (its own exit handler, ray.shutdown, must run before them) and before the signal
        # handlers (ray.init replaces SIGTERM's)
        start_ray_first(config)
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self.stop)
        if self.stop.signum is not None:  # a signal while the sweep started: the exit ends its parent KILLED
            raise SystemExit(self.stop.exit_code())

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        if os.getpid() == getattr(self, "_pid", None):  # a job inside the launching process
            self.stop.in_job = True  # first: from here a signal interrupts, it is not left for this check
            if self.stop.signum is not None:
                raise SystemExit(self.stop.exit_code())
            return
        # Ray's workers block SIGINT; a job takes it like any process (the sweep forwards Ctrl-C to it)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        threads = sweep_blas_threads(Path(config.hydra.sweep.dir).resolve())
        if threads is not None:  # NumPy's BLAS is loaded already: its threads are set here, not through env
            from threadpoolctl import threadpool_limits

            threadpool_limits(limits=threads, user_api="blas")

    def on_job_end(self, config: DictConfig, job_return: Any = None, **kwargs: Any) -> None:
        if os.getpid() == getattr(self, "_pid", None):
            self.stop.in_job = False
            if self.stop.signum is None:
                # never assigns None: a signal that arrives during this store query is noted by the handler
                killed_by = _stopped_by(Path(config.hydra.sweep.dir).resolve(), config.hydra.job.num)
                if killed_by is not None:
                    self.stop.signum = self.stop.signum or killed_by
            if self.stop.signum is not None:
                raise SystemExit(self.stop.exit_code())

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        failed = self._end_sweep_or_say_how(Path(config.hydra.sweep.dir).resolve())
        if self.stop.signum is not None:
            raise SystemExit(self.stop.exit_code())
        if failed is None:
            raise SystemExit(2)
        if failed:
            raise SystemExit(1)

    def _end_if_running(self, sweep_dir: Path) -> None:
        if not self._end_tried:
            self._end_sweep_or_say_how(sweep_dir)

    def _end_sweep_or_say_how(self, sweep_dir: Path) -> int | None:
        """end_sweep, once, if the parent is still RUNNING; where its store cannot take that (away, full, broken),
        one error line naming the command that ends the sweep later, and None: its runs stay RUNNING."""
        self._end_tried = True
        record = tracking.read_parent(sweep_dir)
        if record is None:
            return 0
        try:
            # Store.client probes the store first: a server that is away fails in seconds, not after MLflow's
            # retries
            client = Store(record["tracking_uri"], None).client()
            if client.get_run(record["run_id"]).info.status != "RUNNING":
                return 0
            return end_sweep(sweep_dir, record, signum=self.stop.signum, deaths=self.stop.deaths)
        except Exception as err:
            print(
                f"error: the sweep could not end its runs: {error_line(err)}. They stay RUNNING; once the store "
                f"works again, end them with: charrnn-end-sweep parent={record['run_id']} "
                f"tracking.uri={record['tracking_uri']}",
                file=sys.stderr,
                flush=True,
            )
            return None


def _stopped_by(sweep_dir: Path, job_num: int) -> int | None:
    """The signal that stopped a job of this process (its run ended KILLED), if one did."""
    record, client = parent_store(sweep_dir)
    run = job_run(client, record, job_num)
    if run is None or run.info.status != "KILLED":
        return None
    return signal.Signals[run.data.tags.get(tracking.TAG_SIGNAL, "SIGINT")]
