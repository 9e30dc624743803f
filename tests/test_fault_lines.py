"""Faults outside the project's own error classes end in one line naming the real cause, never a traceback, with a
non-zero exit where the request failed and no run left RUNNING: a broken or read-only store, a read-only working
folder, a folder name that is no valid URI, Ctrl-C in the analysis commands, empty or non-finite inputs, a
diverged validation loss; and a sweep without validation text counts its jobs finished."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient

from charrnn.data import Vocab
from charrnn.model import ModelConfig, param_shapes
from charrnn_experiments.store import Store
from conftest import BIN, only_run, small_trainer, store_client, tiny


def error_line(done: subprocess.CompletedProcess) -> str:
    """The command's last stderr line, checked to be its one error line (no traceback before it)."""
    assert "Traceback" not in done.stderr, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), done.stderr
    return last


@contextlib.contextmanager
def mounted(*args: str, at: Path, read_only: bool = False):
    """``mount *args at`` (then made read-only), unmounted at the end; the test is skipped where mounting is not
    allowed."""
    done = subprocess.run(["mount", *args, str(at)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount here: {done.stderr.strip() or done.returncode}")
    try:
        if read_only:
            subprocess.run(["mount", "-o", "remount,ro" + (",bind" if "--bind" in args else ""), str(at)], check=True)
        yield at
    finally:
        subprocess.run(["umount", "--lazy", str(at)], check=True)


def made_store(folder: Path) -> Path:
    """An empty MLflow store (mlflow.db) made in ``folder`` as charrnn-train makes it."""
    Store.resolve(None, folder).client()
    return folder / "mlflow.db"


def initial_weights(path: Path, text: Path, scale: float, nan: bool = False) -> Path:
    """A train.init_from file for the tiny job's 8-unit RNN on ``text``: random weights times ``scale``."""
    vocab = Vocab.from_text(text.read_text(encoding="utf-8"))
    rng = np.random.default_rng(0)
    arrays = {
        name: rng.standard_normal(shape) * scale
        for name, shape in param_shapes(ModelConfig("rnn", vocab.size, 8, 1)).items()
    }
    if nan:
        arrays["Whh"][0, 0] = np.nan
    np.savez(path, **arrays)
    return path


def test_a_corrupt_store_is_one_line_that_says_so(cli, small_text, tmp_path):
    (tmp_path / "mlflow.db").write_text("not a database, whatever it once was\n" * 100)
    done = cli("charrnn-train", *tiny(small_text))
    assert done.returncode == 2
    assert "is not a readable MLflow database (file is not a database)" in error_line(done)


def test_a_read_only_store_is_one_line_that_says_so_and_no_run_starts(cli, small_text, tmp_path):
    db = made_store(tmp_path)
    with mounted("--bind", str(db), at=db, read_only=True):
        done = cli("charrnn-train", *tiny(small_text))
    assert done.returncode == 2
    assert f"tracking store {db} cannot be written (Read-only file system: {db})" in error_line(done)
    client = store_client(tmp_path)
    assert client.search_runs([client.get_experiment_by_name("Default").experiment_id]) == []
    assert client.get_experiment_by_name("charrnn") is None


@pytest.mark.parametrize("sweep", [False, True], ids=["run", "sweep"])
def test_a_read_only_working_folder_is_one_line(cli, small_text, tmp_path, sweep):
    folder = tmp_path / "ro"
    folder.mkdir()
    with mounted("-t", "tmpfs", "-o", "size=1m", "tmpfs", at=folder, read_only=True):
        done = cli("charrnn-train", *(["-m"] if sweep else []), *tiny(small_text), cwd=folder)
    assert done.returncode == 2
    assert f"cannot write the command's files (Read-only file system: {folder}" in error_line(done)


def test_a_folder_named_with_uri_characters_keeps_its_store_inside(cli, small_text, tmp_path):
    folder = tmp_path / "a?b#c%41d"
    folder.mkdir()
    done = cli("charrnn-train", *tiny(small_text), cwd=folder)
    assert done.returncode == 0, done.stderr
    assert sorted(tmp_path.rglob("mlflow.db")) == [folder / "mlflow.db"]  # no stray store beside the folder
    assert only_run(MlflowClient(Store.resolve(None, folder).uri)).info.status == "FINISHED"


def test_an_empty_train_resume_is_refused_before_any_store(cli, tmp_path):
    done = cli("charrnn-train", "train.resume=")
    assert done.returncode == 2
    assert error_line(done).startswith("error: train.resume is empty")
    assert not (tmp_path / "mlflow.db").exists()


def test_non_finite_initial_weights_are_named_not_blamed_on_the_lr(cli, small_text, tmp_path):
    weights = initial_weights(tmp_path / "init.npz", small_text, 0.01, nan=True)
    done = cli("charrnn-train", *tiny(small_text, f"train.init_from={weights}"))
    assert done.returncode == 2
    line = error_line(done)
    assert "Whh holds 1 non-finite values" in line and "lr" not in line
    assert only_run(store_client(tmp_path)).info.status == "FAILED"


def test_a_validation_loss_of_thousands_of_nats_ends_the_run_diverged(cli, small_text, tmp_path):
    # weights 10^4 times too large make the model certain of wrong characters: finite, absurd losses
    weights = initial_weights(tmp_path / "init.npz", small_text, 1e4)
    done = cli("charrnn-train", *tiny(small_text, f"train.init_from={weights}"))
    assert done.returncode == 2
    assert "diverged: validation loss" in error_line(done) and "uniform guessing" in done.stderr
    run = only_run(store_client(tmp_path))
    assert run.info.status == "FAILED" and run.data.tags["charrnn.status"] == "diverged"


def test_a_sweep_without_validation_text_counts_its_jobs_finished_and_names_them_exactly(cli, small_text, tmp_path):
    done = cli(
        "charrnn-train",
        "-m",
        "experiment=minchar",
        *tiny(small_text, "model.hidden_size=8", "optim.lr=0.1,0.9999", "train.max_iters=20"),
    )
    assert done.returncode == 0, done.stderr
    assert "FINISHED, 2 finished of 2 jobs" in done.stdout and "did not finish" not in done.stdout
    client = store_client(tmp_path)
    runs = client.search_runs([client.get_experiment_by_name("charrnn").experiment_id])
    assert sorted(run.info.run_name for run in runs if "charrnn.job" in run.data.tags) == ["lr=0.1", "lr=0.9999"]
    (parent,) = [run for run in runs if "charrnn.job" not in run.data.tags]
    assert parent.info.status == "FINISHED"


def wait_until_asleep_in(proc: subprocess.Popen, kernel_waits: tuple[str, ...]) -> None:
    """Wait until the command's main thread sleeps in one of ``kernel_waits`` (its /proc wchan): a SIGINT that
    lands just before a blocking read starts is taken by Python's handler and the read then blocks for good, so
    the signal must come once the read is under way. Where the kernel hides wchan, return at once."""
    wchan = Path(f"/proc/{proc.pid}/wchan")
    for _ in range(600):
        try:
            where = wchan.read_text()
        except OSError:
            return
        if where in ("", "0") or any(wait in where for wait in kernel_waits):
            return
        time.sleep(0.1)
    raise AssertionError(f"the command never blocked in {kernel_waits} (last: {where})")


def interrupted(command: list[str], cwd: Path, blocked, kernel_waits: tuple[str, ...]) -> subprocess.CompletedProcess:
    """Start ``command``, wait until ``blocked()`` (a context manager) says it is inside its work and its main
    thread sleeps in one of ``kernel_waits``, send SIGINT while it stays blocked, and return how it ended."""
    proc = subprocess.Popen(
        command, cwd=cwd, text=True, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        with blocked():
            wait_until_asleep_in(proc, kernel_waits)
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    return subprocess.CompletedProcess(command, proc.returncode, out, err)


def test_ctrl_c_in_charrnn_analyze_stops_with_one_line(tmp_path):
    trainer = small_trainer(checkpoint_dir=tmp_path / "checkpoints", max_iters=10)
    trainer.run()
    fifo = tmp_path / "text"
    os.mkfifo(fifo)  # the analysis blocks reading it: it is inside its work, past every import

    @contextlib.contextmanager
    def reading():
        for _ in range(600):
            with contextlib.suppress(OSError):  # ENXIO until a reader has it open
                writer = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
                break
            time.sleep(0.1)
        else:
            raise AssertionError("charrnn-analyze never opened the text")
        try:
            yield  # the write end stays open: the reader waits for text
        finally:
            os.close(writer)

    done = interrupted(
        [str(BIN / "charrnn-analyze"), f"checkpoint={tmp_path}/checkpoints/latest.npz", f"text={fifo}"],
        tmp_path,
        reading,
        ("pipe_read",),
    )
    assert done.returncode == 130, done.stderr
    assert done.stderr.strip().splitlines()[-1] == "stopped: interrupted" and "Traceback" not in done.stderr


def test_ctrl_c_in_charrnn_compare_stops_with_one_line(tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as server:  # a tracking server that never answers
        port = server.getsockname()[1]
        server.settimeout(60)

        @contextlib.contextmanager
        def asking():
            while True:  # the reachability check connects and leaves; the request then waits for an answer
                conn, _ = server.accept()
                if conn.recv(4096).startswith(b"POST"):
                    break
                conn.close()
            with conn:  # held open, unanswered
                yield

        done = interrupted(
            [str(BIN / "charrnn-compare"), f"tracking.uri=http://127.0.0.1:{port}", "tracking.experiment=charrnn"],
            tmp_path,
            asking,
            ("poll_schedule_timeout", "wait_woken", "sk_wait_data"),
        )
    assert done.returncode == 130, done.stderr
    assert done.stderr.strip().splitlines()[-1] == "stopped: interrupted" and "Traceback" not in done.stderr
