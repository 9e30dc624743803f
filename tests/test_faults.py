"""The run lifecycle under faults, with real processes and signals: nothing left RUNNING, nothing lost.

Each test's verdict holds wherever the fault lands (the fault points are random or race the run), so
a faster or slower machine changes where a run is stopped, never whether the test passes.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import random
import re
import signal
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from charrnn.checkpoint import load_checkpoint
from conftest import BIN, MlflowServer, free_port, metric_history, only_run, store_client, tiny

HISTORY_KEYS = ("train/loss", "train/smooth_loss", "grad/norm", "val/loss", "val/bpc")
PROGRESS_LINE = re.compile(r"\] - iter (\d+) \|")  # charrnn-train's progress (and evaluation) log line


@pytest.fixture
def start():
    """start(*overrides, cwd=...) launches charrnn-train with its output piped; whatever still runs when the
    test ends (a failed test's training) is killed."""
    procs = []

    def launch(*args: str, cwd: Path) -> subprocess.Popen:
        procs.append(
            subprocess.Popen(
                [str(BIN / "charrnn-train"), *args],
                cwd=cwd,
                text=True,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
        )
        return procs[-1]

    yield launch
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


class Output:
    """A process's output, read on a thread so that the test can wait for a line."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def _read(self, proc: subprocess.Popen) -> None:
        for line in proc.stdout:
            self.lines.append(line)

    def wait_for(self, words: str, timeout: float = 300) -> None:
        self.wait_until(lambda: any(words in line for line in self.lines), f"printed {words!r}", timeout)

    def wait_until(self, condition, what: str, timeout: float = 300, every: float = 0.05) -> None:
        """Poll ``condition`` while the process runs; fail if it ends or ``timeout`` passes first."""
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline and self._thread.is_alive(), (
                f"never {what}:\n{''.join(self.lines[-30:])}"
            )
            time.sleep(every)

    def iteration(self) -> int:
        """The last iteration the process reported in a progress line (0 before the first)."""
        for line in reversed(self.lines):
            if found := PROGRESS_LINE.search(line):
                return int(found[1])
        return 0

    @property
    def text(self) -> str:
        self._thread.join(timeout=60)
        return "".join(self.lines)


def train_until_the_server_goes_away(start, server: MlflowServer, args: list[str], cwd: Path):
    """charrnn-train ``args`` into ``server``, which is stopped once the run has stored its first points;
    returns the process, its Output, a client of the server and the run id."""
    proc = start(*args, f"tracking.uri={server.url}", cwd=cwd)
    output = Output(proc)
    output.wait_for("| train/loss")
    client = MlflowClient(server.url)
    run_id = client.search_runs([client.get_experiment_by_name("charrnn").experiment_id])[0].info.run_id
    while not client.get_metric_history(run_id, "train/loss"):
        time.sleep(0.2)
    server.stop()
    return proc, output, client, run_id


def run_ids_in(db: Path) -> list[str]:
    """Run ids in a SQLite store, read without opening it through MLflow (which would migrate it)."""
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as conn:
            return [row[0] for row in conn.execute("select run_uuid from runs")]
    except sqlite3.OperationalError:  # not created yet
        return []


def read_store(db: Path, query: str, *args):
    """The first row of a query on an existing SQLite store. Read-write: after a kill -9 mid-write the reader
    must roll the dead writer's journal back (as any next writer would), which a read-only connection cannot."""
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=rw", uri=True, timeout=30)) as conn:
        return conn.execute(query, args).fetchone()


def run_status(db: Path, run_id: str) -> str:
    return read_store(db, "select status from runs where run_uuid = ?", run_id)[0]


def last_step(db: Path, run_id: str, key: str = "train/loss") -> int:
    """The last step of ``key`` that the store has for the run (0 for none)."""
    return read_store(db, "select max(step) from metrics where run_uuid = ? and key = ?", run_id, key)[0] or 0


def test_sigterm_from_the_moment_the_run_exists_ends_it_killed(start, tmp_path):
    # a text large enough that loading it takes a while: the signal lands in the loading or soon after
    big = tmp_path / "big.txt"
    big.write_text("".join(f"line {i}: {'abcdefghij' * (i % 7)}\n" for i in range(120_000)))
    proc = start(*tiny(big, "train.max_iters=null", "train.max_seconds=1e9"), cwd=tmp_path)
    while not run_ids_in(tmp_path / "mlflow.db"):
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 130, out
    assert "stopped: received SIGTERM" in out or "stopped: run " in out, out
    run = only_run(store_client(tmp_path))
    assert run.info.status == "KILLED" and "received SIGTERM" in run.data.tags["charrnn.reason"]
    assert run.data.tags["charrnn.signal"] == "SIGTERM"  # what a sweep reads, not the reason's wording


def test_ctrl_c_again_and_again_while_the_run_ends_still_ends_it_killed(start, small_text, tmp_path):
    proc = start(
        *tiny(small_text, "train.max_iters=null", "train.max_seconds=1e9", "train.log_every=100"), cwd=tmp_path
    )
    output = Output(proc)
    output.wait_for("| train/loss")  # training is under way
    while proc.poll() is None:  # a burst of Ctrl-C: some land in the checkpoint, some in the run's ending
        proc.send_signal(signal.SIGINT)
        time.sleep(0.05)
    text = output.text
    assert proc.returncode == 130, text
    stopped = [line for line in text.splitlines() if line.startswith("stopped:")]
    assert len(stopped) == 1 and "received SIGINT" in stopped[0], text
    client = store_client(tmp_path)
    run = only_run(client)
    assert run.info.status == "KILLED" and run.data.tags["charrnn.reason"] == "received SIGINT"
    assert "checkpoints/latest.npz" in {a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")}


def _claim(store_dir: str, run_id: str, ready: str, go: str) -> bool:
    """One resume's claim of run_id: it reads the run, says so with a file in ``ready``, and claims it when the
    file ``go`` appears."""
    from charrnn_experiments.lease import claim
    from charrnn_experiments.store import Store, TrackingError

    client = Store.resolve(None, store_dir).client()
    run = client.get_run(run_id)
    (Path(ready) / str(os.getpid())).touch()
    while not Path(go).exists():
        time.sleep(0.001)
    try:
        claim(client, run)
        return True
    except TrackingError:
        return False


def test_of_simultaneous_resumes_of_one_run_exactly_one_claims_it(tmp_path):
    from charrnn_experiments.store import Store
    from charrnn_experiments.tracking import MlflowTracker

    store = Store.resolve(None, tmp_path)
    tracker = MlflowTracker.start(store, store.ensure_experiment("claims"))
    tracker.client.set_terminated(tracker.run_id, "KILLED")
    for trial in range(3):
        ready, go = tmp_path / f"ready-{trial}", tmp_path / f"go-{trial}"
        ready.mkdir()
        with multiprocessing.get_context("spawn").Pool(4) as pool:
            pending = pool.starmap_async(_claim, [(str(tmp_path), tracker.run_id, str(ready), str(go))] * 4)
            while len(list(ready.iterdir())) < 4 and not pending.ready():
                time.sleep(0.01)  # until every worker has read the run: all four claim a run they saw unclaimed
            go.touch()
            claimed = pending.get(timeout=300)
        assert sum(claimed) == 1, claimed
        tracker.client.set_terminated(tracker.run_id, "KILLED")  # the winner's run ends; the next trial


@pytest.mark.timeout(600)  # ten resumes' start-ups: some 2 min on a loaded 2-core machine
def test_kill_9_at_random_iterations_then_resume_continues_with_the_uninterrupted_history(
    cli, start, small_text, tmp_path
):
    # Kill points are iterations, not wall-clock times: each round kills its process once that process has
    # printed an evaluation at or past a random target iteration and the store holds this round's progress,
    # so every kill lands mid-training whatever the machine's speed. The budget is far beyond where the ten
    # kills can get (targets advance at most `spacing` plus a few evaluations' overshoot per round).
    budget, spacing = 15_000, 600
    args = tiny(
        small_text, f"train.max_iters={budget}", "train.log_every=50", "train.eval_every=100", "train.sample_every=0"
    )
    reference = tmp_path / "reference"
    reference.mkdir()
    assert cli("charrnn-train", *args, cwd=reference).returncode == 0
    ref_client = store_client(reference)
    ref = only_run(ref_client).info.run_id

    work = tmp_path / "work"
    work.mkdir()
    seed = int(os.environ.get("CHARRNN_FAULT_SEED") or random.randrange(1 << 30))  # set it to replay a failure
    rng = random.Random(seed)
    db = work / "mlflow.db"
    run_id, stored, rounds = None, 0, []  # stored: the last train/loss step the store had after a kill

    def why() -> str:
        return f"CHARRNN_FAULT_SEED={seed}, rounds so far {rounds}"

    for _ in range(10):  # the first start, then nine resumes, each killed mid-training
        proc = start(*(args if run_id is None else [f"train.resume={run_id}"]), cwd=work)
        output = Output(proc)
        target = stored + rng.randint(1, spacing)
        if run_id is None:
            output.wait_until(lambda: run_ids_in(db), what="the run's creation")
            run_id = run_ids_in(db)[0]
            # both checkpoints reach the store as they are written, while the run is RUNNING (not at its end)
            client = store_client(work)
            output.wait_until(
                lambda: (
                    {"checkpoints/latest.npz", "checkpoints/best.npz"}
                    <= {a.path for a in client.list_artifacts(run_id, "checkpoints")}  # noqa: B023 (waited on here)
                ),
                what="both checkpoints in the store",
            )
            assert proc.poll() is None and run_status(db, run_id) == "RUNNING", why()
        # this process trains past the target, and the store has its progress (it has not only restarted)
        output.wait_until(
            lambda: output.iteration() >= target and last_step(db, run_id) > stored,  # noqa: B023 (waited on here)
            what=f"iteration {target} in the output and a step past {stored} in the store",
            every=0.01,
        )
        time.sleep(rng.uniform(0, 0.05))  # a random phase between two evaluations
        printed = output.iteration()
        alive = proc.poll() is None
        proc.kill()
        proc.wait()
        now = last_step(db, run_id)
        resumed = re.search(r"resuming run \w+ at iteration (\d+)", output.text)
        rounds.append(
            {"target": target, "printed": printed, "resumed_from": resumed and int(resumed[1]), "stored": now}
        )
        assert alive and proc.returncode == -signal.SIGKILL, f"{why()}:\n{output.text[-3000:]}"
        assert stored < now < budget, why()  # killed mid-training: after progress, before the budget's end
        stored = now
    out = cli("charrnn-train", f"train.resume={run_id}", cwd=work)
    assert out.returncode == 0, f"{why()}:\n{out.stderr}"
    client = store_client(work)
    run = only_run(client)
    assert run.info.status == "FINISHED"
    for key in HISTORY_KEYS:
        assert metric_history(client, run_id, key) == metric_history(ref_client, ref, key), (key, why())
    steps = [m.step for m in client.get_metric_history(run_id, "throughput/chars_per_s")]
    assert steps == list(range(50, budget + 1, 50)), why()  # every point, once


def test_a_few_metric_points_reach_the_store_within_seconds_while_the_run_runs(tmp_path):
    from charrnn_experiments.outbox import METRICS_PER_BATCH
    from charrnn_experiments.store import Store
    from charrnn_experiments.tracking import MlflowTracker

    # A run that logs rarely (a big model, a long log_every) must not hold its points until a batch fills, a
    # checkpoint is queued or the run ends: the sender delivers on a time bound. Three points, no file, no end.
    store = Store.resolve(None, tmp_path)
    tracker = MlflowTracker.start(store, store.ensure_experiment("flush"))
    for step in (1, 2, 3):
        tracker.on_metrics({"train/loss": 1.0 / step}, step)
    assert 3 < METRICS_PER_BATCH
    reader = store_client(tmp_path)
    try:
        # nothing but the sender's time bound (FLUSH_SECONDS) can deliver them now: they arrive while the run is
        # RUNNING, or the test's time limit fails it
        while len(reader.get_metric_history(tracker.run_id, "train/loss")) < 3:
            time.sleep(0.1)
        assert reader.get_run(tracker.run_id).info.status == "RUNNING"
    finally:
        tracker.finish("FINISHED")
    assert metric_history(reader, tracker.run_id, "train/loss") == [(1, 1.0), (2, 0.5), (3, 1 / 3)]


def test_a_tracking_server_killed_and_restarted_mid_run_gets_every_point(start, mlflow_server, small_text, tmp_path):
    server = mlflow_server
    args = tiny(
        small_text,
        "train.max_iters=null",
        "train.max_seconds=1e9",
        "train.log_every=100",
        "train.eval_every=200",
        "train.sample_every=200",
    )
    proc, output, client, run_id = train_until_the_server_goes_away(start, server, args, tmp_path)
    output.wait_for("tracking store", timeout=120)
    assert any("unreachable" in line and "training goes on" in line for line in output.lines), output.lines
    server.start()  # on the same port
    output.wait_for("is back after")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=300) == 130, output.text
    text = output.text
    assert len([line for line in text.splitlines() if "unreachable" in line]) == 1, text
    # training went on while the store was away: evaluations printed between the sender's two words
    lines = text.splitlines()
    away = next(i for i, line in enumerate(lines) if "unreachable" in line)
    back = next(i for i, line in enumerate(lines) if "is back after" in line)
    outage = [int(m[1]) for line in lines[away:back] if (m := PROGRESS_LINE.search(line)) and "val/loss" in line]
    assert len(outage) >= 2, text  # the restart alone takes seconds: thousands of iterations
    run = client.get_run(run_id)
    assert run.info.status == "KILLED"
    steps = [m.step for m in client.get_metric_history(run_id, "train/loss")]
    last = steps[-1]
    assert steps == list(range(100, last + 1, 100)), "every point, once"
    evals = [m.step for m in client.get_metric_history(run_id, "val/loss")]
    assert evals == list(range(200, last + 1, 200))
    assert set(outage) <= set(evals), "what was trained during the outage reached the store"
    assert "checkpoints/latest.npz" in {a.path for a in client.list_artifacts(run_id, "checkpoints")}


def test_an_unreachable_tracking_server_fails_at_once_with_one_line(cli, small_text, tmp_path):
    # "at once" measured against the same job on a working store, just before, under the same load
    healthy = tmp_path / "healthy"
    healthy.mkdir()
    started = time.monotonic()
    assert cli("charrnn-train", *tiny(small_text), cwd=healthy).returncode == 0
    healthy_seconds = time.monotonic() - started
    started = time.monotonic()
    port = free_port()
    out = cli("charrnn-train", *tiny(small_text), f"tracking.uri=http://127.0.0.1:{port}")
    seconds = time.monotonic() - started
    assert out.returncode == 2 and re.fullmatch(
        rf"error: cannot reach the tracking server http://127\.0\.0\.1:{port} \([^\n]*\); start it, or set "
        r"tracking\.uri \(or MLFLOW_TRACKING_URI\) to a store that runs\n",
        out.stderr,
    ), out.stderr
    assert not list(tmp_path.glob("outputs/**/checkpoints"))
    # MLflow's client would retry for minutes: the error comes before the job could have run anywhere
    assert seconds < 2 * healthy_seconds, (seconds, healthy_seconds)


def test_six_runs_started_together_in_a_fresh_directory_all_succeed_each_in_its_own_folder(start, small_text, tmp_path):
    procs = [start(*tiny(small_text, f"train.seed={seed}", "train.max_iters=30"), cwd=tmp_path) for seed in range(6)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out
    client = store_client(tmp_path)
    runs = client.search_runs([client.get_experiment_by_name("charrnn").experiment_id])
    assert sorted(r.data.params["train.seed"] for r in runs) == [str(s) for s in range(6)]
    for run in runs:
        assert run.info.status == "FINISHED"
        # the stored checkpoint is this run's model, whoever started in the same second
        stored = client.download_artifacts(run.info.run_id, "checkpoints/latest.npz", str(tmp_path / "dl"))
        assert load_checkpoint(stored).train_config["seed"] == int(run.data.params["train.seed"])
        assert len(list(tmp_path.glob(f"outputs/**/{run.info.run_id}/checkpoints/latest.npz"))) == 1
    assert re.search(r"run id:\s+[0-9a-f]{32}", outs[0])


def test_a_run_ended_while_its_server_is_away_continues_from_its_local_checkpoint(
    start, mlflow_server, cli, small_text, tmp_path
):
    server = mlflow_server
    args = tiny(
        small_text,
        "train.max_iters=null",
        "train.max_seconds=1e9",
        "train.log_every=100",
        "train.eval_every=200",
        "train.sample_every=0",
    )
    proc, output, client, run_id = train_until_the_server_goes_away(start, server, args, tmp_path)
    output.wait_for("training goes on", timeout=120)
    proc.send_signal(signal.SIGTERM)  # training stops and saves a checkpoint; the store is still away
    output.wait_for("waiting up to")
    proc.send_signal(signal.SIGINT)  # give up waiting
    assert proc.wait(timeout=120) != 0
    text = output.text
    resume_line = re.search(r"from here with train\.resume=(\S+\.npz)", text)
    assert resume_line and f"train.resume={run_id} (every metric point)" in text, text
    local = Path(resume_line.group(1))
    stopped_at = load_checkpoint(local).iteration

    server.start()  # on the same port
    assert client.get_run(run_id).info.status == "RUNNING"
    stored_through = client.get_metric_history(run_id, "train/loss")[-1].step
    limit = (stopped_at // 100 + 3) * 100
    out = cli(
        "charrnn-train",
        f"train.resume={local}",
        f"train.max_iters={limit}",
        "train.max_seconds=null",
        f"tracking.uri={server.url}",
    )
    assert out.returncode == 0, out.stderr
    assert f"resuming run {run_id} at iteration {stopped_at} from {local}" in out.stderr
    assert client.get_run(run_id).info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(run_id, "train/loss")]
    # trained on for seconds while the store was away: logged, never delivered
    missing = list(range(stored_through + 100, stopped_at + 1, 100))
    assert missing and "were never delivered and stay missing" in out.stderr, out.stderr
    assert steps == [s for s in range(100, limit + 1, 100) if s not in missing], "once each, the rest"

    reference = tmp_path / "reference"
    reference.mkdir()
    assert (
        cli("charrnn-train", *args, f"train.max_iters={limit}", "train.max_seconds=null", cwd=reference).returncode == 0
    )
    ref_client = store_client(reference)
    ref = only_run(ref_client).info.run_id
    for key in ("train/loss", "val/loss"):
        ours, theirs = dict(metric_history(client, run_id, key)), dict(metric_history(ref_client, ref, key))
        assert ours == {step: theirs[step] for step in ours}, key
