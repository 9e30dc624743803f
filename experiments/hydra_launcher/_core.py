"""The body of ``hydra/launcher=charrnn`` (process_launcher.py), imported when a sweep starts.

Hydra's joblib launcher runs jobs on a loky pool, where one worker that dies (``kill -9``, the OOM
killer) breaks the pool: every job in flight is killed and the sweep ends in a traceback, leaving
runs RUNNING. Here each job is a process of its own, forked from a server that has already imported
the harness (so a job pays no import time), at most ``n_jobs`` at a time: a job that dies is reported
and its run ended FAILED by the sweep callback, and the others go on. Each job's output lines start
with its short name, and each job gets its share of the cores as BLAS threads.

Job processes are in their own process group: Ctrl-C at the terminal reaches only the launching
process, where the launcher forwards one signal to each job in flight, starts no new one and passes the signal
on to the sweep callback's stop, which it also tells of each job that died.
"""

from __future__ import annotations

import gc
import io
import logging
import multiprocessing
import multiprocessing.connection
import multiprocessing.forkserver
import os
import signal
import sys
from collections import deque
from collections.abc import Sequence
from pathlib import Path

import cloudpickle
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, run_job, setup_globals
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, open_dict

from charrnn.allocator import keep_freed_memory
from charrnn_experiments.sweep_jobs import job_label, parallel_jobs
from charrnn_experiments.sweep_stop import SweepStop, send_signal
from charrnn_experiments.train import FAILED_OBJECTIVE

from .process_launcher import JobProcessLauncher

log = logging.getLogger(__name__)

# Imported once by the fork server, so that jobs start with them loaded (this module too: jobs run its
# _job_process).
PRELOAD = [
    "charrnn_experiments.train",
    "mlflow.store.tracking.sqlalchemy_store",
    "hydra_plugins.charrnn_launcher._core",
]


class LabelledStream(io.TextIOBase):
    """A text stream that starts every line with ``[label] ``: parallel jobs' output stays readable."""

    def __init__(self, stream, label: str) -> None:
        self._stream = stream
        self._prefix = f"[{label}] "
        self._at_line_start = True

    def write(self, text: str) -> int:
        for piece in text.splitlines(keepends=True):
            if self._at_line_start:
                self._stream.write(self._prefix)
            self._stream.write(piece)
            self._at_line_start = piece.endswith("\n")
        return len(text)

    def flush(self) -> None:
        self._stream.flush()

    def isatty(self) -> bool:
        return self._stream.isatty()

    def fileno(self) -> int:
        return self._stream.fileno()


def _run_job(
    idx: int,
    overrides: Sequence[str],
    hydra_context: HydraContext,
    config: DictConfig,
    task_function: TaskFunction,
    singleton_state: dict,
) -> JobReturn:
    """Job number ``idx`` of the sweep, through Hydra's own calls, as its basic launcher runs one."""
    setup_globals()
    Singleton.set_state(singleton_state)
    sweep_config = hydra_context.config_loader.load_sweep_config(config, list(overrides))
    with open_dict(sweep_config):
        sweep_config.hydra.job.id = f"{sweep_config.hydra.job.name}_{idx}"
        sweep_config.hydra.job.num = idx
    return run_job(
        hydra_context=hydra_context,
        task_function=task_function,
        config=sweep_config,
        job_dir_key="hydra.sweep.dir",
        job_subdir_key="hydra.sweep.subdir",
    )


def _job_process(payload: bytes, conn, label: str) -> None:
    """One job, in its own process: run it and send its JobReturn back."""
    os.setpgrp()
    # SIGTERM before the trainer installs its own handler interrupts like Ctrl-C: the run still ends KILLED
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    sys.stdout = LabelledStream(sys.stdout, label)
    sys.stderr = LabelledStream(sys.stderr, label)
    keep_freed_memory()  # as charrnn-train's main() does: this process trains
    job = cloudpickle.loads(payload)
    try:
        ret = _run_job(*job)
    except KeyboardInterrupt:  # stopped outside the task's own handling; the sweep ends its run KILLED
        ret = _died(job[1])
    sys.stdout.flush()
    sys.stderr.flush()
    conn.send_bytes(cloudpickle.dumps(ret))


def start_fork_server():
    """Start the server jobs are forked from, which imports PRELOAD (the first job waits for those imports to
    finish); the context that starts jobs from it."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    multiprocessing.forkserver.ensure_running()
    return ctx


def _died(overrides: Sequence[str]) -> JobReturn:
    """What a job that ended without its own JobReturn reports to the sweeper: what a failed job reports."""
    ret = JobReturn(overrides=list(overrides), status=JobStatus.COMPLETED)
    ret.return_value = FAILED_OBJECTIVE
    return ret


def _how(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        return f"killed by {signal.Signals(-exitcode).name}"
    return f"exit status {exitcode}"


def launch(
    launcher: JobProcessLauncher, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
) -> Sequence[JobReturn]:
    """Run the jobs of a JobProcessLauncher, each in its own process, at most its ``n_jobs`` at a time."""
    config = launcher.config
    setup_globals()
    configure_log(config.hydra.hydra_logging, config.hydra.verbose)
    sweep_dir = Path(str(config.hydra.sweep.dir))
    sweep_dir.mkdir(parents=True, exist_ok=True)
    n_jobs = parallel_jobs(launcher.n_jobs)
    log.info(
        f"Launching {len(job_overrides)} jobs, {n_jobs} at a time, each in its own process; "
        f"sweep output dir: {sweep_dir}"
    )
    labels = []
    for idx, overrides in enumerate(job_overrides):
        labels.append(job_label(sweep_dir.resolve(), list(overrides)) or f"#{initial_job_idx + idx}")
        log.info(f"\t#{initial_job_idx + idx} {labels[-1]} : {' '.join(filter_overrides(overrides))}")
    ctx = start_fork_server()  # already running when the sweep callback started it
    state = Singleton.get_state()
    waiting = deque(range(len(job_overrides)))
    running: dict[int, tuple] = {}  # index -> (process, receiving end of its pipe)
    results: dict[int, JobReturn] = {}
    # While jobs run, signals come here: the sweep callback's stop, the handler this displaces, learns of each
    # signal and each job that died; the job processes are this launcher's own.
    sweep = signal.getsignal(signal.SIGINT)
    sweep = sweep if isinstance(sweep, SweepStop) else SweepStop()

    def forward(signum, frame) -> None:
        first = sweep.request(signum)
        for process, _ in list(running.values()):  # a second signal kills what is still running
            send_signal(process.pid, signum if first else signal.SIGKILL)

    sweep_handlers = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while (waiting and sweep.signum is None) or running:
            while waiting and len(running) < n_jobs and sweep.signum is None:
                idx = waiting.popleft()
                receive, send = ctx.Pipe(duplex=False)
                payload = cloudpickle.dumps(
                    (
                        initial_job_idx + idx,
                        job_overrides[idx],
                        launcher.hydra_context,
                        config,
                        launcher.task_function,
                        state,
                    )
                )
                process = ctx.Process(target=_job_process, args=(payload, send, labels[idx]))
                process.start()
                running[idx] = (process, receive)
                send.close()
                log.info(f"started #{initial_job_idx + idx} {labels[idx]} (pid {process.pid})")
            if not running:
                break
            multiprocessing.connection.wait([end for p, r in running.values() for end in (p.sentinel, r)], timeout=1.0)
            for idx, (process, receive) in list(running.items()):
                if idx not in results and receive.poll():  # read before the job exits: a full pipe blocks it
                    try:
                        results[idx] = cloudpickle.loads(receive.recv_bytes())
                    except EOFError:  # it died before sending
                        pass
                if process.is_alive():
                    continue
                process.join()
                del running[idx]
                if idx not in results:
                    how = _how(process.exitcode)
                    sweep.job_died(initial_job_idx + idx, how)
                    log.error(f"job #{initial_job_idx + idx} {labels[idx]} died ({how}); the other jobs go on")
                    results[idx] = _died(job_overrides[idx])
                receive.close()
    finally:
        for sig, handler in sweep_handlers.items():
            signal.signal(sig, handler)
        for process, _ in running.values():  # only on an error in this loop
            process.kill()
    if sweep.signum is not None:
        raise SystemExit(sweep.exit_code())
    return [results[i] for i in range(len(job_overrides))]


# The last of the fork server's preloads: what it has imported is never garbage, so the collector skips it from
# now on, in the server and in every job forked from it; the server's exit at the end of a sweep, which the
# sweep's output waits for, no longer walks it (seconds).
gc.freeze()
