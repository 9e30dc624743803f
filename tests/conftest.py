"""Shared fixtures and helpers: the data directory, a small generated text, running the console scripts,
composing the Hydra config, and the tiny training job the CLI tests run. Test modules import helpers from
here, never from one another."""

from __future__ import annotations

import contextlib
import os
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

from charrnn.data import _pystdlib_paths

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SHAKESPEARE = SHARED_DATA / "tinyshakespeare.txt"
BIN = Path(sys.executable).parent

# A job of a few seconds: 60 iterations of an 8-unit RNN, logging, evaluating and sampling along the way.
TINY = ["model.hidden_size=8", "train.seq_length=8", "train.max_seconds=null", "train.max_iters=60",
        "train.log_every=10", "train.eval_every=30", "train.sample_every=30", "train.sample_length=20"]


def tiny(text: Path, *more: str) -> list[str]:
    """charrnn-train overrides for the tiny job on the text file ``text``."""
    return [*TINY, "data=file", f"data.path={text}", *more]


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
    lines = [f"def f{i}(x):\n    return x * {i} + \"{chr(97 + i % 26)}\"  # note {i % 7}\n"
             for i in range(120)]
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
    return subprocess.run([str(BIN / name), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def store_client(cwd: Path) -> MlflowClient:
    assert (cwd / "mlflow.db").exists(), "the store must be in the launch directory"
    return MlflowClient(f"sqlite:///{cwd}/mlflow.db")


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
            [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
             "--backend-store-uri", f"sqlite:///{self.folder}/server.db",
             "--artifacts-destination", str(self.folder / "server-artifacts")],
            cwd=self.folder, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
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
