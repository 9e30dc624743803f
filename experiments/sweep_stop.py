"""How a multirun sweep stops. One SIGINT or SIGTERM to the launching process stops the whole sweep: no new job
starts, jobs in flight get the signal (they save a checkpoint and end KILLED), every child still RUNNING once its
job is gone is ended truthfully, and the command exits 128 + the signal number. Ray's jobs run outside the
terminal's process group, so the signal goes to the process each RUNNING child names as its owner (on this
machine), and the sweep waits for those runs to end before it stops the launcher."""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from pathlib import Path

from charrnn_experiments import tracking
from charrnn_experiments.lease import owner_alive, owner_of
from charrnn_experiments.schema import SignalStop
from charrnn_experiments.sweep_summary import parent_store

STOP_WAIT_SECONDS = 60.0  # how long a stopped Ray or submitit sweep waits for its jobs to end their runs


class SweepStop:
    """How the launching process stops its sweep: the sweep callback's own state, installed as the process's SIGINT
    and SIGTERM handler once the sweep has started. Whoever takes those signals over for a while finds it there and
    passes on what it got: charrnn's launcher while it runs jobs (each signal, each job that died), a job inside
    this process when it ends (stop_serial_sweep)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.serial = False  # jobs run inside this process (Hydra's basic launcher)
        self.in_job = False  # ... and one is running now
        self.sweep_dir: Path | None = None
        self.job_pids: set[int] = set()  # Ray's or submitit's job processes that got the signal
        self.deaths: dict[int, str] = {}  # job number -> how its process died (charrnn's launcher says)
        self.exit_status_lost = False  # the launcher may turn our SystemExit into another status

    def request(self, signum: int) -> bool:
        """Note a stop by ``signum``; whether it is the first (a later one kills the jobs still running)."""
        first = self.signum is None
        self.signum = self.signum or signum
        if first:
            print(
                f"\nstopping the sweep ({signal.Signals(signum).name}): no new job starts, jobs in "
                "flight save a checkpoint and end KILLED",
                file=sys.stderr,
                flush=True,
            )
        for pid in list(self.job_pids):
            send_signal(pid, signum if first else signal.SIGKILL)
        return first

    def job_died(self, job_num: int, how: str) -> None:
        self.deaths[job_num] = how

    def exit_code(self) -> int:
        return 128 + int(self.signum or signal.SIGINT)

    def __call__(self, signum, frame) -> None:
        """The handler of SIGINT and SIGTERM from the sweep's start to its end."""
        self.request(signum)
        if self.serial and not self.in_job:
            return  # the next job's start ends the sweep
        if self.serial:
            # the job in this process ends KILLED; between its own handler's end and on_job_end this reaches the
            # command's exit, which must still report the signal
            raise SignalStop(signum)
        # Ray, submitit: the jobs in flight end their runs KILLED, then leaving stops the launcher, so that no
        # queued job starts, and the exit ends what is left (_end_if_running)
        self._stop_jobs_elsewhere(signum)
        self.exit_status_lost = True
        raise SystemExit(self.exit_code())

    def exit_if_stopped(self) -> None:
        """At the exit: a sweep stopped inside Ray's or submitit's launcher exits 128 + the signal."""
        if not self.exit_status_lost:
            return
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(self.exit_code())

    def _stop_jobs_elsewhere(self, signum: int) -> None:
        """Send ``signum`` to the process of every child run still RUNNING (its owner tag names it) on this
        machine and wait, at most STOP_WAIT_SECONDS, until those processes have ended their runs or are gone; a
        second signal kills them (request). What is left RUNNING the sweep's end ends KILLED."""
        record, client = parent_store(self.sweep_dir)
        deadline = time.monotonic() + STOP_WAIT_SECONDS
        while time.monotonic() < deadline:
            running = client.search_runs(
                [record["experiment_id"]],
                filter_string=tracking.children_filter(record["run_id"], "attributes.status = 'RUNNING'"),
            )
            pids = {
                owner.pid
                for run in running
                if (owner := owner_of(run)) is not None and owner.local and owner_alive(run)
            }
            if not pids:
                return
            for pid in pids - self.job_pids:
                self.job_pids.add(pid)
                send_signal(pid, signum)
            time.sleep(0.2)


def send_signal(pid: int, signum: int) -> None:
    """``signum`` to process ``pid``, unless it is gone already."""
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def stop_serial_sweep(signum: int) -> None:
    """A signal that a job inside the launching process took while ending its run stops the sweep there too (the
    job's own handler had it, not the sweep's, which is back in place now); a job in a process of its own finds
    no sweep's handler and has nothing to stop."""
    sweep = signal.getsignal(signum)
    if isinstance(sweep, SweepStop) and sweep.serial:
        sweep.request(signum)
