"""Signals at the edges of a run and a sweep, with real processes and real signals, synchronised on printed lines:
a signal while a serial sweep's job ends its run stops the sweep, SIGTERM during a long end-of-run recording stops
it between chunks, a sweep's parent is guarded from the moment it exists, and charrnn-end-sweep ends the parent
of a sweep whose process was killed or whose store was away at its end."""

from __future__ import annotations

import codecs
import os
import signal
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
from omegaconf import OmegaConf

from charrnn_experiments import sweep_callback
from charrnn_experiments.stopper import Stopper
from charrnn_experiments.train import interrupted_by
from conftest import BIN, run_cli, store_client, tiny, write_small_text

LONG = ("train.max_iters=1000000", "train.eval_every=20")


class Command:
    """A console script started in its own session, its output (stdout and stderr) read on a thread."""

    def __init__(self, name: str, *args: str, cwd: Path) -> None:
        self.proc = subprocess.Popen(
            [str(BIN / name), *args],
            cwd=cwd,
            text=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=lambda: self.lines.extend(self.proc.stdout), daemon=True)
        self._reader.start()

    def wait_for(self, words: str, after: int = 0, timeout: float = 300) -> int:
        """Wait until a line from line ``after`` on holds ``words``; returns the number of lines read by then."""
        deadline = time.monotonic() + timeout
        while not any(words in line for line in self.lines[after:]):
            assert self.proc.poll() is None or self._reader.is_alive(), self.text
            assert time.monotonic() < deadline, f"never printed {words!r}:\n{self.text}"
            time.sleep(0.02)
        return len(self.lines)

    def end(self, timeout: float = 300) -> int:
        try:
            self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
        self._reader.join(10)
        return self.proc.returncode

    @property
    def text(self) -> str:
        return "".join(self.lines[-60:])


def sweep_runs(folder: Path):
    client = store_client(folder)
    runs = client.search_runs([client.get_experiment_by_name("charrnn").experiment_id])
    parents = [run for run in runs if "charrnn.job" not in run.data.tags]
    children = {run.data.tags["charrnn.job"]: run for run in runs if "charrnn.job" in run.data.tags}
    return client, parents, children


def test_a_signal_while_a_serial_sweeps_job_ends_its_run_stops_the_sweep(small_text, tmp_path):
    sweep = Command("charrnn-train", "-m", *tiny(small_text), "model.hidden_size=8,9,10", cwd=tmp_path)
    sweep.wait_for("recorded the hidden state")  # job 0 is ending its run
    sweep.proc.send_signal(signal.SIGTERM)
    assert sweep.end() == 128 + signal.SIGTERM, sweep.text
    _, (parent,), children = sweep_runs(tmp_path)
    assert "2" not in children, "no job starts after the signal"
    assert "RUNNING" not in {run.info.status for run in [parent, *children.values()]}
    assert (parent.info.status, parent.data.tags["charrnn.reason"]) == ("KILLED", "stopped by SIGTERM")
    assert "Traceback" not in sweep.text


@pytest.mark.fast
def test_a_signal_during_the_job_ends_store_query_is_not_forgotten(monkeypatch, tmp_path):
    """The race behind the test above, made certain: the sweep's handler notes a SIGTERM that arrives while
    on_job_end asks the store how the job ended (the store says: not killed); the sweep must still stop."""
    callback = sweep_callback.MlflowSweepCallback()
    callback._pid = os.getpid()
    callback.stop.serial = True

    def query_during_which_the_signal_arrives(sweep_dir, job_num):
        os.kill(os.getpid(), signal.SIGTERM)
        return None

    monkeypatch.setattr(sweep_callback, "_stopped_by", query_during_which_the_signal_arrives)
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}, "job": {"num": 0}}})
    previous = signal.signal(signal.SIGTERM, callback.stop)
    try:
        callback.on_job_start(config)
        with pytest.raises(SystemExit) as stopped:
            callback.on_job_end(config)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert stopped.value.code == 128 + signal.SIGTERM


@pytest.mark.fast
def test_an_interrupt_python_rewrote_inside_a_codec_is_reported_in_the_signals_words():
    """Python rewrites an exception raised inside a codec ("decoding with ... codec failed (KeyboardInterrupt:
    ...)"), as it did to a SIGTERM that landed in the recording's text decoding on CI; the run's reason and the
    stop line keep the stopper's own words."""

    def interrupted_decode(data, errors="strict"):
        raise KeyboardInterrupt("received SIGTERM")

    def search(name):
        if name == "charrnn_interrupted":
            return codecs.CodecInfo(encode=codecs.utf_8_encode, decode=interrupted_decode, name=name)
        return None

    codecs.register(search)
    try:
        with pytest.raises(KeyboardInterrupt) as caught:
            b"x".decode("charrnn_interrupted")
    finally:
        codecs.unregister(search)
    assert "codec failed" in str(caught.value)  # what Python made of the message
    stopper = Stopper(exits_after=False)
    stopper.reason = "received SIGTERM"
    assert interrupted_by(caught.value, stopper) == "received SIGTERM"


def test_sigterm_during_a_long_recording_stops_it_and_ends_the_run_killed(tmp_path):
    text = tmp_path / "big.txt"
    text.write_text(write_small_text(tmp_path).read_text() * 300)  # 1.8 MB: 0.9 MB of validation text
    run = Command(
        "charrnn-train",
        *tiny(text, "train.val_fraction=0.5", "train.eval_max_chars=2000", "record.length=1000000", "record.chunk=64"),
        cwd=tmp_path,
    )
    run.wait_for("recording the hidden state on")
    run.proc.send_signal(signal.SIGTERM)
    assert run.end() == 130, run.text
    assert "stopped: received SIGTERM" in run.text and "recorded the hidden state" not in run.text
    (only,) = store_client(tmp_path).search_runs(["1"])
    assert (only.info.status, only.data.tags["charrnn.reason"]) == ("KILLED", "received SIGTERM")


def test_sigterm_the_moment_a_sweeps_parent_exists_ends_it_killed(small_text, tmp_path):
    sweep = Command("charrnn-train", "-m", *tiny(small_text), "model.hidden_size=8,9", cwd=tmp_path)
    db = tmp_path / "mlflow.db"
    deadline = time.monotonic() + 300
    while True:  # the parent is the first run in the store
        assert sweep.proc.poll() is None and time.monotonic() < deadline, sweep.text
        try:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as store:
                if store.execute("select count(*) from runs").fetchone()[0]:
                    break
        except sqlite3.Error:  # not there, or its tables not made yet
            pass
        time.sleep(0.005)
    sweep.proc.send_signal(signal.SIGTERM)
    assert sweep.end() == 128 + signal.SIGTERM, sweep.text
    _, (parent,), children = sweep_runs(tmp_path)
    assert (parent.info.status, parent.data.tags["charrnn.reason"]) == ("KILLED", "stopped by SIGTERM")
    assert "RUNNING" not in {run.info.status for run in children.values()}


def test_charrnn_end_sweep_ends_a_killed_sweeps_parent_with_the_summary_of_its_finished_jobs(small_text, tmp_path):
    # serial: job 0 (60 iterations) finishes, job 1 trains until its process is killed with -9
    sweep = Command("charrnn-train", "-m", *tiny(small_text), "train.max_iters=60,1000000", cwd=tmp_path)
    started = sweep.wait_for("\t#1 : ")  # the basic launcher starts job 1 once job 0 has ended
    sweep.wait_for("val/bpc", after=started)  # job 1 is training
    os.killpg(sweep.proc.pid, signal.SIGKILL)
    sweep.end()
    _, (parent,), children = sweep_runs(tmp_path)
    assert parent.info.status == children["1"].info.status == "RUNNING"  # what no sweep can end itself

    done = run_cli("charrnn-end-sweep", f"parent={parent.info.run_id}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    client, (parent,), children = sweep_runs(tmp_path)
    assert parent.info.status == "KILLED" and "charrnn-end-sweep" in parent.data.tags["charrnn.reason"]
    assert children["0"].info.status == "FINISHED" and children["1"].info.status == "KILLED"
    assert parent.data.tags["charrnn.best_child_run_id"] == children["0"].info.run_id
    assert parent.data.params["best.train.max_iters"] == "60"
    assert f"parent run id: {parent.info.run_id}" in done.stdout and "1 of 2 jobs did not finish" in done.stdout

    again = run_cli("charrnn-end-sweep", f"parent={parent.info.run_id}", cwd=tmp_path)
    assert again.returncode == 0 and "has ended already (KILLED)" in again.stdout
    child = run_cli("charrnn-end-sweep", f"parent={children['0'].info.run_id}", cwd=tmp_path)
    assert child.returncode == 2 and child.stderr.strip().splitlines()[-1].startswith("error: parent=")


def test_a_store_away_at_a_sweeps_end_is_one_line_naming_charrnn_end_sweep(mlflow_server, small_text, tmp_path):
    # charrnn's launcher runs the job in a child process: the launching process is held (SIGSTOP) until the job
    # has ended its run, the server is stopped, and the sweep's end meets a store that is away
    sweep = Command(
        "charrnn-train",
        "-m",
        *tiny(small_text),
        "hydra/launcher=charrnn",
        "hydra.launcher.n_jobs=1",
        f"tracking.uri={mlflow_server.url}",
        cwd=tmp_path,
    )
    sweep.wait_for("recorded the hidden state")
    os.kill(sweep.proc.pid, signal.SIGSTOP)
    try:
        client = MlflowClient(mlflow_server.url)
        deadline = time.monotonic() + 120
        while not [
            run for run in client.search_runs(["1"]) if "charrnn.job" in run.data.tags and run.info.status == "FINISHED"
        ]:
            assert time.monotonic() < deadline, sweep.text
            time.sleep(0.05)
        mlflow_server.stop()
    finally:
        os.kill(sweep.proc.pid, signal.SIGCONT)
    assert sweep.end() == 2, sweep.text
    errors = [line for line in sweep.lines if line.startswith("error:") or "Traceback" in line]
    assert len(errors) == 1 and "cannot reach the tracking server" in errors[0], sweep.text
    command = errors[0].split("end them with: ", 1)[1].split()
    assert command[0] == "charrnn-end-sweep" and command[2] == f"tracking.uri={mlflow_server.url}", errors[0]

    mlflow_server.start()  # on the same port
    parent = client.get_run(command[1].removeprefix("parent="))
    assert parent.info.status == "RUNNING"  # what the sweep could not end
    done = run_cli(*command, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    parent = client.get_run(parent.info.run_id)
    (child,) = client.search_runs(
        [parent.info.experiment_id], f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent.info.run_id}'"
    )
    assert (parent.info.status, child.info.status) == ("KILLED", "FINISHED")
    assert parent.data.tags["charrnn.best_child_run_id"] == child.info.run_id


def test_jobs_stopped_by_the_time_cap_are_named_in_the_leaderboard_and_counted_on_the_parent(small_text, tmp_path):
    done = run_cli(
        "charrnn-train",
        "-m",
        *tiny(small_text),
        "model.hidden_size=8,9",
        "train.max_iters=1000000",
        "train.max_seconds=1",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("(hit the train.max_seconds safety cap)") == 2, done.stdout
    assert "2 job(s) stopped on the wall-clock safety cap" in done.stdout, done.stdout
    _, (parent,), children = sweep_runs(tmp_path)
    assert parent.data.tags["charrnn.hit_time_cap"] == "2"
    assert {run.data.tags["charrnn.stop"] for run in children.values()} == {"max_seconds"}
