"""Hydra callback: the MLflow side of a multirun sweep, its names, its summary and how it stops.

Several jobs that open a brand-new SQLite store at once race on its schema migration, so the
store, the experiment and the sweep's parent run are created here, in the launching process,
before any job starts; each job reads the parent from ``<sweep dir>/mlflow_parent.json`` and logs
a nested child run named by its swept values only (``h=64 T=16 lr=0.1 clip=5``).

At the end the parent gets the sweep's summary (the best child by its ``val/best_loss``, the
lowest ``val/loss`` during the run, logged as the parent's ``val/best_loss``; its swept values as
``best.*`` params) and its report (``report/report.html`` and figures,
:mod:`charrnn_experiments.sweep_report`), and the console a leaderboard, the parent run id
and the MLflow UI address of the experiment's runs table.

One SIGINT or SIGTERM to the launching process stops the whole sweep: no new job starts, jobs in
flight get the signal (they save a checkpoint and end KILLED), every child still RUNNING once its
job is gone is ended truthfully, and the command exits 128 + the signal number. A sweep in which
jobs failed says how many and exits 1. Ray's jobs run outside the terminal's process group, so the
signal goes to the process each RUNNING child names as its owner (on this machine), and the sweep
waits for those runs to end before it stops the launcher.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import math
import os
import signal
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback

# Importing it registers hydra/launcher=charrnn before the config is composed, also in an editable install
# (pip install -e), whose hydra_plugins folder Hydra's plugin scan does not see.
from hydra_plugins.charrnn_launcher.config import ProcessLauncherConf
from omegaconf import DictConfig, OmegaConf

from charrnn.errors import CharRNNError, ConfigError
from charrnn.train import METRIC_BEST_VAL_LOSS, StopReason
from charrnn_experiments import tracking
from charrnn_experiments.faults import exit_with_error, first_line, local_fault, unwritable_files_line
from charrnn_experiments.lease import owner_alive, owner_of
from charrnn_experiments.schema import SignalStop
from charrnn_experiments.store import Store

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
STOP_WAIT_SECONDS = 60.0  # how long a stopped Ray or submitit sweep waits for its jobs to end their runs
TAG_LAUNCHER = "charrnn.launcher"
TAG_SWEEPER = "charrnn.sweeper"
TAG_JOBS = "charrnn.jobs"
TAG_BLAS_THREADS = "charrnn.blas_threads"
PROCESS_LAUNCHER = ProcessLauncherConf._target_
RAY_LAUNCHER = "hydra_plugins.hydra_ray_launcher.ray_launcher.RayLauncher"


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
        record, client = _parent_store(self.sweep_dir)
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


# --- the sweep space and the names of its jobs ---------------------------------------------------


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


def _job_run(client, record: dict, job_num: int):
    runs = client.search_runs(
        [record["experiment_id"]],
        filter_string=tracking.children_filter(record["run_id"], f"tags.`{tracking.TAG_JOB}` = '{job_num}'"),
    )
    return runs[0] if runs else None


def _parent_store(sweep_dir: Path) -> tuple[dict[str, str], Any]:
    """The sweep's parent record (written when it started) and a client of the store it lives in."""
    record = tracking.read_parent(sweep_dir)
    return record, Store(record["tracking_uri"], None).client()


def _stopped_by(sweep_dir: Path, job_num: int) -> int | None:
    """The signal that stopped a job of this process (its run ended KILLED), if one did."""
    record, client = _parent_store(sweep_dir)
    run = _job_run(client, record, job_num)
    if run is None or run.info.status != "KILLED":
        return None
    return signal.Signals[run.data.tags.get(tracking.TAG_SIGNAL, "SIGINT")]


# --- the summary -----------------------------------------------------------------------------------


def _last_evaluation(client, run) -> int | None:
    """The last iteration the run was evaluated at (its last val/loss step); None if it never was."""
    history = client.get_metric_history(run.info.run_id, "val/loss")
    return max(m.step for m in history) if history else None


def end_sweep(
    sweep_dir: Path,
    record: dict[str, str] | None = None,
    closed: str | None = None,
    signum: int | None = None,
    deaths: dict[int, str] | None = None,
) -> int:
    """End every run of the sweep truthfully, summarise it on the parent and print the leaderboard.

    ``record``: the parent's record, when not read from ``sweep_dir``; ``closed``: why a sweep whose process is
    gone is ended from outside (charrnn-end-sweep): the parent and the children still RUNNING end KILLED.
    ``signum``: the signal that stopped the sweep, if one did; ``deaths``: job number -> how its process died.
    Returns the number of jobs that did not finish: a job a launcher retried (Ray does, after its worker
    died) counts as finished when one of its runs finished.
    """
    record = record or tracking.read_parent(sweep_dir)
    if record is None:
        return 0
    client = Store(record["tracking_uri"], None).client()
    parent_id = record["run_id"]
    parent = client.get_run(parent_id)
    keys = read_sweep(sweep_dir).get("keys") or []
    children = client.search_runs(
        [record["experiment_id"]], filter_string=tracking.children_filter(parent_id), max_results=10_000
    )
    rows = []
    for child in children:
        status = child.info.status
        reason = child.data.tags.get(tracking.TAG_REASON, "")
        if status == "RUNNING":  # its job is gone: the sweep stopped it or its process died
            died = (deaths or {}).get(int(child.data.tags.get(tracking.TAG_JOB, -1)), "for no known reason")
            if closed is not None:
                status, reason = "KILLED", closed
            elif signum is not None:
                status = "KILLED"
                reason = f"the sweep was stopped ({signal.Signals(signum).name}) before this job ended its run"
            else:
                status, reason = "FAILED", f"its job process died ({died}) before ending the run"
            client.set_tag(child.info.run_id, tracking.TAG_REASON, reason)
            client.set_terminated(child.info.run_id, status=status)
        rows.append((status, tracking.best_val_loss(child), _last_evaluation(client, child), child, reason))
    # a job finished when its run did; only runs with a validation loss can be ranked (a preset without a
    # validation split, like minchar, has none)
    finished = [r for r in rows if r[0] == "FINISHED"]
    ranked = [r for r in finished if r[1] is not None and math.isfinite(r[1])]
    capped = [r for r in rows if _hit_time_cap(r[3])]
    summary = {
        "charrnn.children": str(len(rows)),
        "charrnn.finished": str(len(finished)),
        "charrnn.failed": str(len(rows) - len(finished)),
        "charrnn.hit_time_cap": str(len(capped)),
    }
    for key, value in summary.items():
        client.set_tag(parent_id, key, value)
    if ranked:
        _, best_loss, _, best, _ = min(ranked, key=lambda r: r[1])
        client.set_tag(parent_id, tracking.TAG_BEST_CHILD, best.info.run_id)
        client.log_metric(parent_id, METRIC_BEST_VAL_LOSS, best_loss)
        tracking.log_params(
            client, parent_id, {f"best.{k}": best.data.params[k] for k in keys if k in best.data.params}
        )
    if closed is not None or signum is not None:
        client.set_tag(parent_id, tracking.TAG_REASON, closed or f"stopped by {signal.Signals(signum).name}")
        status = "KILLED"
    else:
        status = "FINISHED" if finished else "FAILED"
    client.set_terminated(parent_id, status=status)
    unfinished = int(parent.data.tags.get(TAG_JOBS, len(rows))) - _jobs_in(finished)
    _print_leaderboard(parent, rows, ranked, capped, record, parent_id, status, unfinished)
    # imported here: plotly and the figures cost a second that a sweep's start and its jobs need not pay
    from charrnn_experiments.sweep_report import report_or_say_why

    report_or_say_why(client, parent_id, sweep_dir)
    return unfinished


def _hit_time_cap(run) -> bool:
    return run.data.tags.get(tracking.TAG_STOP) == StopReason.MAX_SECONDS.value


def _jobs_in(rows) -> int:
    """How many distinct jobs these runs belong to (a retried job has several runs)."""
    return len({row[3].data.tags.get(tracking.TAG_JOB, row[3].info.run_id) for row in rows})


def _print_leaderboard(parent, rows, ranked, capped, record, parent_id, status, unfinished) -> None:
    planned = int(parent.data.tags.get(TAG_JOBS, len(rows)))
    counts = {state: sum(r[0] == state for r in rows) for state in ("FINISHED", "FAILED", "KILLED")}
    counts["not started"] = max(0, planned - len(rows))
    lines = [
        f"\nsweep {parent.info.run_name}: {status}, "
        + ", ".join(f"{n} {state.lower()}" for state, n in counts.items() if n)
        + f" of {planned} jobs",
        f"  {'status':<9} {METRIC_BEST_VAL_LOSS:>13} {'iters':>6}  job",
    ]
    for state, best, iters, child, reason in sorted(rows, key=lambda r: (r not in ranked, r[1] or 0.0)):
        loss = f"{best:.4f}" if best is not None else "-"
        note = (
            "  (hit the train.max_seconds safety cap)"
            if _hit_time_cap(child)
            else (f"  ({reason})" if state != "FINISHED" and reason else "")
        )
        lines.append(f"  {state:<9} {loss:>13} {iters if iters is not None else '-':>6}  {child.info.run_name}{note}")
    if capped:
        lines.append(
            f"{len(capped)} job(s) stopped on the wall-clock safety cap before train.max_iters: they did "
            "less work than the others; raise train.max_seconds to compare at equal iterations"
        )
    if ranked:
        best = min(ranked, key=lambda r: r[1])
        lines.append(f"best (lowest val/loss during the run): {best[3].info.run_name}  {best[1]:.4f} nats/char")
    if unfinished:
        lines.append(f"{unfinished} of {planned} jobs did not finish")
    lines.append(f"parent run id: {parent_id}")
    lines.append(f"see it: {Store(record['tracking_uri'], None).ui_address(record['experiment_id'])}")
    print("\n".join(lines), flush=True)
