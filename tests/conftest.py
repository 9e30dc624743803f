"""Shared fixtures and helpers: the data directory, a small generated text, running the console scripts,
composing the Hydra config, and the tiny training job the CLI tests run. Test modules import helpers from
here, never from one another."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.request
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from mlflow import MlflowClient

from charrnn.corpora import _pystdlib_paths
from charrnn.data import Vocab
from charrnn.model import ModelConfig
from charrnn.train import Callback, OptimConfig, TrainConfig, Trainer

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SHAKESPEARE = SHARED_DATA / "tinyshakespeare.txt"
# The console scripts the tests start: this environment's, or the one CHARRNN_APP_BIN names (`make test-user-env`
# points it at the core-only environment `make train` builds).
BIN = Path(os.environ.get("CHARRNN_APP_BIN") or Path(sys.executable).parent)

# A job of a few seconds: 60 iterations of an 8-unit RNN, logging, evaluating and sampling along the way.
TINY = [
    "model.hidden_size=8",
    "train.seq_length=8",
    "train.max_seconds=null",
    "train.max_iters=60",
    "train.log_every=10",
    "train.eval_every=30",
    "train.sample_every=30",
    "train.sample_length=20",
]


# 668 characters: at seq_length 25 the gist's cursor wraps after 26 iterations.
PARITY_TEXT = (
    "The recurrent network reads one character at a time and keeps a hidden state that summarises what it has "
    "seen so far. At every step it predicts the next character, and the loss is the negative log probability "
    "it gave to the character that actually came next.\n"
    "Training unrolls the network for a few dozen steps, backpropagates through that window, and carries the "
    "hidden state forward into the next window without a gradient. Adagrad divides each update by the root of "
    "the running sum of squared gradients, and clipping keeps the rare large gradient from undoing the work.\n"
    "When the pointer reaches the end of the text it returns to the start and the memory is cleared.\n"
)
TEXT = PARITY_TEXT * 6


def small_trainer(
    cell="rnn", layers=1, batch_size=2, checkpoint_dir=None, optim="adagrad", dropout=0.0, optim_extra=None, **train
):
    """An engine Trainer of a 16-unit model on TEXT (90% train, 10% validation), 40 iterations by default;
    ``optim_extra``: more OptimConfig fields."""
    vocab = Vocab.from_text(TEXT)
    split = len(TEXT) * 9 // 10
    cfg = dict(
        seq_length=10,
        batch_size=batch_size,
        max_iters=40,
        log_every=5,
        eval_every=10,
        sample_every=10,
        sample_length=30,
        eval_batch_size=4,
    )
    cfg.update(train)
    return Trainer(
        ModelConfig(cell, vocab.size, 16, layers, dropout=dropout),
        TrainConfig(**cfg),
        OptimConfig(**{"name": optim, "lr": 0.05 if optim == "adagrad" else 0.01, "clip": 5.0, **(optim_extra or {})}),
        vocab,
        TEXT[:split],
        TEXT[split:],
        checkpoint_dir,
    )


class Recorder(Callback):
    """Keeps everything a Trainer reports."""

    def __init__(self):
        self.metrics, self.samples, self.checkpoints, self.result = [], [], [], None

    def on_metrics(self, metrics, step):
        self.metrics.append((step, dict(metrics)))

    def on_sample(self, text, step):
        self.samples.append((step, text))

    def on_checkpoint(self, path, step, is_best):
        self.checkpoints.append((step, is_best))

    def on_train_end(self, result):
        self.result = result


# a preset's run cut to a few updates of a few characters: its code path in seconds
SHRINK = [
    "train.max_iters=3",
    "train.batch_size=2",
    "train.seq_length=16",
    "train.eval_every=3",
    "train.eval_max_chars=500",
    "train.sample_length=10",
    "record.length=200",
]


def tiny(text: Path, *more: str) -> list[str]:
    """charrnn-train overrides for the tiny job on the text file ``text``."""
    return [*TINY, "data=file", f"data.path={text}", *more]


def emitted_metric_counts(folder: Path, *overrides: str) -> dict[str, int]:
    """Per metric key, how many points a charrnn-train job with ``overrides`` logs: its trainer run here
    (the engine is deterministic in what it emits per iteration) with a Recorder, plus the one
    model/num_params point the harness adds. The truth a tracked run's store is counted against."""
    from collections import Counter

    from charrnn_experiments.tracking import METRIC_NUM_PARAMS
    from charrnn_experiments.train import build_trainer

    trainer = build_trainer(compose_cfg(*overrides), folder / "checkpoints")[1]
    recorder = Recorder()
    trainer.run([recorder])
    counts = Counter(key for _, metrics in recorder.metrics for key in metrics)
    counts[METRIC_NUM_PARAMS] += 1
    return dict(counts)


def compose_cfg(*overrides: str, hydra: bool = False):
    """The charrnn-train config as Hydra composes it, without running the app."""
    with initialize_config_module("charrnn_conf", version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=hydra)


@pytest.fixture(autouse=True, scope="session")
def charrnn_data_dir(tmp_path_factory) -> Path:
    """CHARRNN_DATA_DIR: ../shared/data beside the repo when it exists, else an empty temp dir."""
    path = SHARED_DATA if SHARED_DATA.is_dir() else tmp_path_factory.mktemp("charrnn-data")
    os.environ["CHARRNN_DATA_DIR"] = str(path)
    return path


@pytest.fixture
def small_text(tmp_path) -> Path:
    return write_small_text(tmp_path)


def write_small_text(folder: Path) -> Path:
    """A deterministic ~6 kB UTF-8 text with code-like structure, written as folder/small.txt."""
    lines = [f'def f{i}(x):\n    return x * {i} + "{chr(97 + i % 26)}"  # note {i % 7}\n' for i in range(120)]
    path = folder / "small.txt"
    path.write_text("".join(lines), encoding="utf-8")
    return path


def copy_pystdlib_files(root: Path, leave_out: str | None = None) -> Path:
    """pystdlib-v1's files (but ``leave_out``) copied from this interpreter's stdlib into root: the stdlib of
    another interpreter."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for rel in _pystdlib_paths():
        if rel != leave_out:
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes((stdlib / rel).read_bytes())
    return root


@pytest.fixture
def cli(tmp_path):
    """cli("charrnn-train", *overrides) runs a console script of this environment without a
    terminal, in tmp_path unless cwd= says otherwise."""

    def run(name: str, *args: str, cwd: Path | None = None, timeout: float = 300):
        return run_cli(name, *args, cwd=cwd or tmp_path, timeout=timeout)

    return run


def run_cli(name: str, *args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / name), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )


# MLflow's own lines on stderr: creating a fresh SQLite store, and its progress bar of a download (whose carriage
# returns a text-mode pipe turns into line ends)
MLFLOW_LINES = re.compile(
    r"^(\d{4}/\d\d/\d\d \d\d:\d\d:\d\d INFO mlflow\.store\.db\.utils: "
    r"(Creating initial MLflow database tables\.\.\.|Updating database tables)\n"
    r"|\n?(Downloading artifacts: [^\n]*\n)+)",
    re.MULTILINE,
)


def own_stderr(out: subprocess.CompletedProcess) -> str:
    """What a command printed on stderr itself: its output without MLflow's own lines. An error test compares it
    whole, so an error printed over several lines fails."""
    return MLFLOW_LINES.sub("", out.stderr)


def store_client(cwd: Path) -> MlflowClient:
    assert (cwd / "mlflow.db").exists(), "the store must be in the launch directory"
    return MlflowClient(f"sqlite:///{cwd}/mlflow.db")


def metric_history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    """A run's (step, value) points of metric ``key``, in step order."""
    return [(m.step, m.value) for m in client.get_metric_history(run_id, key)]


def only_run(client: MlflowClient, experiment: str = "charrnn"):
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert len(runs) == 1
    return runs[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    """A real `mlflow server` on loopback over a SQLite store in ``folder``; it can be stopped and started
    again on the same port (the store and its URL outlive it)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port: int | None = None
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        # A free port can be taken between picking and binding it; a server that cannot bind exits, and
        # the first start picks another. A restart keeps its port (the client knows only that one).
        for _ in range(5):
            port = self.port or free_port()
            if self._serve(port):
                self.port = port
                return
            time.sleep(1)
        raise AssertionError(f"mlflow server did not start (last port tried: {port})")

    def _serve(self, port: int) -> bool:
        self.process = subprocess.Popen(
            [
                str(BIN / "mlflow"),
                "server",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                "1",
                "--backend-store-uri",
                f"sqlite:///{self.folder}/server.db",
                "--artifacts-destination",
                str(self.folder / "server-artifacts"),
            ],
            cwd=self.folder,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            env=WITHOUT_JOB_RUNNER,
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                return True
            except OSError:
                time.sleep(0.5)
        self.stop()
        return False

    def stop(self) -> None:
        if self.process is not None:
            stop_process_group(self.process)


# `mlflow server` and `mlflow ui` without MLflow 3's job runner, as the team server runs: eight processes and
# ~0.5 GB fewer per server, which nothing the tests check uses
WITHOUT_JOB_RUNNER = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def stop_process_group(process: subprocess.Popen) -> None:
    """End a process started with start_new_session=True and everything it started: `mlflow server` and
    `mlflow ui` run uvicorn, a job runner and its huey consumers, which outlive a signal to the parent alone."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass
    except ProcessLookupError:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # whatever of the group is left
    process.wait()


@pytest.fixture
def mlflow_server(tmp_path):
    server = MlflowServer(tmp_path)
    server.start()
    yield server
    server.stop()


def _log_the_shared_dataset(uri: str, experiment_id: str, ready: str, go: str) -> str:
    """One sweep job's start, in its own process: open a run, wait for the others, log the shared dataset."""
    from charrnn_experiments.store import Store
    from charrnn_experiments.tracking import MlflowTracker

    tracker = MlflowTracker.start(Store.resolve(uri, ready), experiment_id)
    (Path(ready) / tracker.run_id).touch()
    while not Path(go).exists():
        time.sleep(0.001)
    tracker.log_dataset("file", "corpus.txt", "ab" * 32, 100)
    return tracker.run_id


def jobs_log_one_dataset_at_once(uri: str, experiment_id: str, folder: Path, jobs: int = 4) -> list[str]:
    """``jobs`` processes open their runs, then log the same dataset at the same moment, as a sweep's jobs do;
    their run ids. The dataset row's unique key makes all but one insert fail: each must still link it."""
    import multiprocessing

    ready, go = folder / "ready", folder / "go"
    ready.mkdir(parents=True)
    with multiprocessing.get_context("spawn").Pool(jobs) as pool:
        pending = pool.starmap_async(_log_the_shared_dataset, [(uri, experiment_id, str(ready), str(go))] * jobs)
        while len(list(ready.iterdir())) < jobs and not pending.ready():
            time.sleep(0.01)  # until every job has opened its run
        go.touch()
        return pending.get(timeout=300)
