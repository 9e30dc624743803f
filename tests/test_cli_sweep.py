"""Multirun sweeps through each launcher: one parent run per sweep, one nested child per job, a readable
summary, and a sweep that stops as a whole and ends every run truthfully under signals and crashes."""

from __future__ import annotations

import math
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from conftest import BIN, SHRINK, jobs_log_one_dataset_at_once, tiny

GRID = ["model.hidden_size=8,16", "train.seq_length=8,16"]
LONG = ["train.max_iters=1000000", "train.eval_every=100", "train.log_every=100"]  # stopped by the test
CORES = len(os.sched_getaffinity(0))  # the cores this process may use: what n_jobs=-1 and BLAS threads share


def sweep_runs(cwd: Path, experiment: str = "charrnn"):
    client = MlflowClient(f"sqlite:///{cwd}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    parents = [r for r in runs if MLFLOW_PARENT_RUN_ID not in r.data.tags]
    assert len(parents) == 1, "exactly one parent run per sweep"
    children = [r for r in runs if r.data.tags.get(MLFLOW_PARENT_RUN_ID) == parents[0].info.run_id]
    assert len(children) == len(runs) - 1, "every job is nested under the parent"
    return client, parents[0], children


def check_children(client, children, n):
    assert len(children) == n
    assert all(c.info.status == "FINISHED" for c in children), [
        (c.info.status, c.data.tags.get("charrnn.reason")) for c in children
    ]
    assert sorted(int(c.data.tags["charrnn.job"]) for c in children) == list(range(n))
    for c in children:
        # every metric point of every job made it into the shared store
        assert len(client.get_metric_history(c.info.run_id, "train/loss")) == 6
        assert len(client.get_metric_history(c.info.run_id, "val/loss")) == 2
        samples = {a.path for a in client.list_artifacts(c.info.run_id, "samples")}
        assert "samples/iter_00000030.txt" in samples


def best_val_loss(client, run) -> float:
    """The definition of a run's best validation loss in docs/sweeps.md: the lowest val/loss during the run (what the
    engine logs as val/best_loss and the sweep's parent summarises under the same name)."""
    return min(m.value for m in client.get_metric_history(run.info.run_id, "val/loss"))


def test_2x2_sweep_in_parallel_from_a_fresh_store(cli, small_text, tmp_path, monkeypatch):
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.delenv(var, raising=False)  # the launcher, not the caller, must keep BLAS within the cores
    out = cli("charrnn-train", "-m", "hydra/launcher=charrnn", "hydra.launcher.n_jobs=4", *tiny(small_text), *GRID)
    assert out.returncode == 0, out.stderr[-3000:]
    client, parent, children = sweep_runs(tmp_path)
    check_children(client, children, 4)
    grid = {(c.data.params["model.hidden_size"], c.data.params["train.seq_length"]) for c in children}
    assert grid == {("8", "8"), ("8", "16"), ("16", "8"), ("16", "16")}
    # children are named by the swept keys only, short
    names = {c.info.run_name for c in children}
    assert names == {"h=8 T=8", "h=8 T=16", "h=16 T=8", "h=16 T=16"}
    # four jobs at once on this machine's cores: each gets its share of them as BLAS threads, at least one
    assert {c.data.tags["charrnn.blas_threads"] for c in children} == {str(max(1, CORES // 4))}
    # the parent: named by preset and time, records the space, launcher and job count, and the best child
    assert re.fullmatch(r"sweep \d\d-\d\d \d\d:\d\d", parent.info.run_name)
    assert parent.data.params["sweep.model.hidden_size"] == "8,16"
    assert parent.data.params["sweep.train.seq_length"] == "8,16"
    assert (parent.data.tags["charrnn.launcher"], parent.data.tags["charrnn.jobs"]) == ("charrnn", "4")
    best = min(children, key=lambda c: best_val_loss(client, c))
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["charrnn.best_child_run_id"] == best.info.run_id
    assert parent.data.metrics["val/best_loss"] == best_val_loss(client, best)
    assert {k for k in parent.data.params if k.startswith("best.")} == {
        "best.model.hidden_size",
        "best.train.seq_length",
    }
    assert parent.data.params["best.model.hidden_size"] == best.data.params["model.hidden_size"]
    # the end of the output: a leaderboard line per child, the parent id and the UI address of the runs table
    leaderboard = out.stdout[out.stdout.index("status    val/best_loss  iters  job") :]
    for c in children:
        assert re.search(rf"FINISHED +{best_val_loss(client, c):.4f} +60  {c.info.run_name}\n", leaderboard)
    assert f"parent run id: {parent.info.run_id}" in out.stdout
    experiment_id = parent.info.experiment_id
    assert (
        f"mlflow ui --backend-store-uri sqlite:///{tmp_path.resolve()}/mlflow.db, then open "
        f"http://127.0.0.1:5000/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
        "&viewStateShareKey=charrnn-losses\n"
    ) in out.stdout
    # each job's output lines carry its short name
    assert re.search(r"^\[h=16 T=8\] .*iter 60 \| .*val/bpc", out.stdout, re.MULTILINE)


def test_hydra_launcher_joblib_is_hydras_own_launcher_and_still_tracked(cli, small_text, tmp_path):
    out = cli(
        "charrnn-train",
        "-m",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        *tiny(small_text),
        "model.hidden_size=8,16",
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Joblib.Parallel(" in out.stderr + out.stdout, "Hydra's joblib launcher ran the jobs"
    assert not re.search(r"^\[h=", out.stdout, re.MULTILINE), "not charrnn's launcher, which labels job output"
    client, parent, children = sweep_runs(tmp_path)
    check_children(client, children, 2)
    assert {c.info.run_name for c in children} == {"h=8", "h=16"}
    assert parent.data.tags["charrnn.launcher"] == "joblib"
    assert parent.data.tags["charrnn.best_child_run_id"] in {c.info.run_id for c in children}
    assert f"parent run id: {parent.info.run_id}" in out.stdout


def test_a_sweep_that_cannot_start_ends_with_one_error_line_and_runs_no_job(small_text, tmp_path):
    # A cloudpickle that raises on import, first on the path: the launcher's body cannot be imported. Hydra turns
    # an exception in a callback into a warning and goes on; the sweep must stop before its first job instead.
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "cloudpickle.py").write_text('raise ImportError("this cloudpickle is broken")\n')
    out = subprocess.run(
        [str(BIN / "charrnn-train"), "-m", "hydra/launcher=charrnn", *tiny(small_text), "model.hidden_size=8,16"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(shim)},
    )
    assert (out.returncode, out.stderr) == (
        2,
        "error: the sweep could not start: ImportError: this cloudpickle is broken\n",
    ), out.stdout[-3000:]
    assert not (tmp_path / "mlflow.db").exists(), "no store, so no parent run and no child run"
    assert not (tmp_path / "multirun").exists(), "no job output folder"


def test_n_jobs_0_is_refused_with_one_error_line_before_anything_is_created(cli, small_text, tmp_path):
    out = cli(
        "charrnn-train",
        "-m",
        "hydra/launcher=charrnn",
        "hydra.launcher.n_jobs=0",
        *tiny(small_text),
        "model.hidden_size=8,16",
    )
    assert (out.returncode, out.stderr) == (
        2,
        "error: hydra.launcher.n_jobs=0 runs no job: give a count, or -1 for one per core\n",
    )
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "multirun").exists()


def test_a_failing_job_does_not_stop_the_sweep_but_fails_the_command(cli, small_text, tmp_path):
    out = cli("charrnn-train", "-m", *tiny(small_text), "optim.lr=0,0.1")
    assert out.returncode == 1, out.stderr[-3000:]
    assert "error: optim.lr must be positive" in out.stderr
    assert "1 of 2 jobs did not finish" in out.stdout
    client, parent, children = sweep_runs(tmp_path)
    status = {c.data.params["optim.lr"]: c.info.status for c in children}
    assert status == {"0.0": "FAILED", "0.1": "FINISHED"}  # params hold the typed value: optim.lr is a float
    assert parent.data.tags["charrnn.best_child_run_id"] in {
        c.info.run_id for c in children if c.info.status == "FINISHED"
    }
    assert "report/report.html" in {a.path for a in client.list_artifacts(parent.info.run_id, "report")}


def test_a_sweep_s_best_is_the_lowest_validation_loss_of_a_job_not_its_last(cli, tmp_path):
    # validated (the last 10%) on characters it never trains on: the better the job learns its text, the higher
    # its val/loss, whatever order BLAS sums in
    text = tmp_path / "ab-then-cd.txt"
    text.write_text("ab" * 900 + "cd" * 100)
    out = cli("charrnn-train", "-m", *tiny(text), "optim.lr=0.1")
    assert out.returncode == 0, out.stderr[-3000:]
    client, parent, [child] = sweep_runs(tmp_path)
    history = [m.value for m in client.get_metric_history(child.info.run_id, "val/loss")]
    assert min(history) < history[-1], history  # the history this test is about
    assert parent.data.metrics["val/best_loss"] == child.data.metrics["val/best_loss"] == min(history)
    assert re.search(rf"FINISHED +{min(history):.4f} +60  {re.escape(child.info.run_name)}\n", out.stdout)
    assert f"best (lowest val/loss during the run): {child.info.run_name}  {min(history):.4f}" in out.stdout


CLUSTER_LAUNCHERS = [
    ["hydra/launcher=submitit_local"],
    # a new local Ray instance, never a cluster another process left running on this machine
    ["hydra/launcher=ray", "+hydra.launcher.ray.init.address=local", "+hydra.launcher.ray.init.num_cpus=2"],
]


@pytest.mark.parametrize("launcher", CLUSTER_LAUNCHERS)
def test_the_same_sweep_runs_through_cluster_launchers(cli, small_text, tmp_path, launcher, monkeypatch):
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.delenv(var, raising=False)
    out = cli("charrnn-train", "-m", *launcher, *tiny(small_text), "model.hidden_size=8,16")
    assert out.returncode == 0, out.stderr[-3000:]
    client, parent, children = sweep_runs(tmp_path)
    check_children(client, children, 2)
    assert parent.data.tags["charrnn.best_child_run_id"] in {c.info.run_id for c in children}
    assert {c.info.run_name for c in children} == {"h=8", "h=16"}
    # the two jobs may run at once: each gets half the cores as BLAS threads (the count its BLAS reported)
    assert {c.data.tags["charrnn.blas_threads"] for c in children} == {str(max(1, CORES // 2))}


def test_optuna_preset_searches_and_reports_the_best_trial(cli, small_text, tmp_path):
    out = cli(
        "charrnn-train",
        "experiment=optuna",
        *tiny(small_text),
        "hydra.sweeper.n_trials=3",
        "train.seq_length=choice(8,16)",
        "model.hidden_size=choice(8,16)",
    )
    assert out.returncode == 0, out.stderr[-3000:]
    client, parent, children = sweep_runs(tmp_path, experiment="optuna")
    assert len(children) == 3 and all(c.info.status == "FINISHED" for c in children)
    assert all(len(c.info.run_name) <= 40 and c.info.run_name.startswith("h=") for c in children), [
        c.info.run_name for c in children
    ]
    assert parent.info.run_name.startswith("optuna ")
    assert parent.data.params["sweep.optim.lr"] == "tag(log, interval(0.01, 0.3))"
    best = min(best_val_loss(client, c) for c in children)
    assert math.isclose(parent.data.metrics["val/best_loss"], best)
    optimization = next(tmp_path.glob("multirun/*/*/optimization_results.yaml")).read_text()
    assert "best_value:" in optimization


def test_grid_preset_runs_every_child_for_the_same_number_of_iterations(cli, small_text, tmp_path):
    # the preset itself, its budget cut to a few iterations and its space to 2x2 (lr and clip pinned)
    out = cli(
        "charrnn-train",
        "experiment=grid",
        "data=file",
        f"data.path={small_text}",
        "train.max_iters=12",
        "train.eval_every=6",
        "train.log_every=6",
        "train.sample_every=6",
        "train.sample_length=10",
        "model.hidden_size=8,16",
        "optim.lr=0.1",
        "optim.clip=5",
    )
    assert out.returncode == 0, out.stderr[-3000:]
    client, parent, children = sweep_runs(tmp_path, experiment="grid")
    assert sorted(c.info.run_name for c in children) == ["h=16 T=16", "h=16 T=32", "h=8 T=16", "h=8 T=32"]
    assert {c.data.params["train.max_iters"] for c in children} == {"12"}
    assert {max(m.step for m in client.get_metric_history(c.info.run_id, "train/loss")) for c in children} == {12}
    # the wall-clock limit is only a safety cap, and no job hit it
    assert {c.data.params["train.max_seconds"] for c in children} == {"600.0"}
    assert {c.data.tags["charrnn.reason"] for c in children} == {"reached max_iters=12"}
    assert {c.data.tags["charrnn.stop"] for c in children} == {"max_iters"}
    assert parent.data.tags["charrnn.hit_time_cap"] == "0"
    assert parent.info.run_name.startswith("grid ")
    assert {k for k in parent.data.params if k.startswith("sweep.")} == {
        "sweep.model.hidden_size",
        "sweep.train.seq_length",
    }


def test_paper_cells_preset_sweeps_cells_and_depths_at_matched_sizes(cli, tmp_path):
    # the preset itself on its offline corpus, one budget and seed pinned and each job cut to 3 updates
    out = cli("charrnn-train", "experiment=paper_cells", "data=pystdlib", "study.budget=50k", "train.seed=1", *SHRINK)
    assert out.returncode == 0, out.stderr[-3000:]
    client, parent, children = sweep_runs(tmp_path, experiment="paper_cells")
    check = [(c.info.status, c.data.tags["charrnn.reason"]) for c in children]
    assert set(check) == {("FINISHED", "reached max_iters=3")}, check
    sizes = {
        (c.data.params["model.cell"], c.data.params["model.num_layers"]): c.data.params["model.hidden_size"]
        for c in children
    }
    assert sizes == {
        ("rnn", "1"): "147",
        ("rnn", "2"): "101",
        ("lstm", "1"): "67",
        ("lstm", "2"): "47",
        ("gru", "1"): "80",
        ("gru", "2"): "56",
    }
    assert {(c.data.params["data.name"], c.data.params["study.budget"]) for c in children} == {("pystdlib", "50k")}
    assert {k for k in parent.data.params if k.startswith("sweep.")} == {"sweep.model", "sweep.model.num_layers"}


def start_sweep(tmp_path: Path, *args: str) -> subprocess.Popen:
    """charrnn-train -m in its own session (a terminal's Ctrl-C reaches the whole group), output to a file."""
    log = open(tmp_path / "sweep.log", "w")
    return subprocess.Popen(
        [str(BIN / "charrnn-train"), "-m", *args],
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        text=True,
    )


def wait_for_output(tmp_path: Path, proc: subprocess.Popen, pattern: str, timeout: float = 180):
    """Wait until `pattern` matches in the sweep's output; returns the matches."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = re.findall(pattern, (tmp_path / "sweep.log").read_text(), re.MULTILINE)
        if found:
            return found
        assert proc.poll() is None, (tmp_path / "sweep.log").read_text()[-3000:]
        time.sleep(0.2)
    proc.kill()
    raise AssertionError(f"no {pattern!r} after {timeout} s:\n" + (tmp_path / "sweep.log").read_text()[-3000:])


def finish(proc: subprocess.Popen, tmp_path: Path) -> str:
    try:
        proc.wait(timeout=120)
    finally:
        proc.kill()
    return (tmp_path / "sweep.log").read_text()


def session_processes(sid: int) -> list[int]:
    """Processes still alive in the sweep's session: orphaned jobs would be here."""
    alive = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getsid(int(entry.name)) == sid and "Z" not in (entry / "stat").read_text().split()[2]:
                    alive.append(int(entry.name))
            except (ProcessLookupError, FileNotFoundError, PermissionError):
                pass
    return alive


def check_stopped(tmp_path: Path, output: str, signame: str, in_flight: int):
    client, parent, children = sweep_runs(tmp_path)
    assert len(children) == in_flight, "jobs not yet started never start"
    assert {c.info.status for c in children} == {"KILLED"}
    assert {c.data.tags["charrnn.reason"] for c in children} == {f"received {signame}"}
    for c in children:  # each saved its checkpoint on the way out
        assert "checkpoints/latest.npz" in {a.path for a in client.list_artifacts(c.info.run_id, "checkpoints")}
    assert parent.info.status == "KILLED"
    assert parent.data.tags["charrnn.reason"] == f"stopped by {signame}"
    assert f"parent run id: {parent.info.run_id}" in output
    assert "Traceback" not in output


def test_sigterm_stops_the_whole_parallel_sweep(small_text, tmp_path):
    proc = start_sweep(
        tmp_path,
        "hydra/launcher=charrnn",
        "hydra.launcher.n_jobs=2",
        *tiny(small_text, *LONG),
        "model.hidden_size=8,12,16",
    )
    for label in ("h=8", "h=12"):  # both jobs in flight are training
        wait_for_output(tmp_path, proc, rf"^\[{label}\] .*iter \d+ \| .*val/bpc")
    proc.send_signal(signal.SIGTERM)
    output = finish(proc, tmp_path)
    assert proc.returncode == 128 + signal.SIGTERM, output[-3000:]
    check_stopped(tmp_path, output, "SIGTERM", in_flight=2)
    deadline = time.monotonic() + 30  # the fork server notices its parent's exit and leaves
    while session_processes(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert session_processes(proc.pid) == [], "no job may outlive the sweep"


def test_ctrl_c_stops_the_whole_serial_sweep(small_text, tmp_path):
    proc = start_sweep(tmp_path, *tiny(small_text, *LONG), "model.hidden_size=8,12,16")
    wait_for_output(tmp_path, proc, r"iter \d+ \| .*val/bpc")
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
    output = finish(proc, tmp_path)
    assert proc.returncode == 128 + signal.SIGINT, output[-3000:]
    check_stopped(tmp_path, output, "SIGINT", in_flight=1)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_sweep_stopped_after_a_job_finished_keeps_that_job_as_its_best(small_text, tmp_path, signum):
    # serial: job 0 (60 iterations) finishes, job 1 trains until the sweep is stopped
    proc = start_sweep(
        tmp_path,
        *tiny(small_text, "train.eval_every=100", "train.log_every=100", "train.sample_every=0"),
        "train.max_iters=60,1000000",
    )
    wait_for_output(tmp_path, proc, r"\t#1 : ")  # the basic launcher starts job 1 once job 0 has ended
    deadline = time.monotonic() + 180
    while True:  # job 1 is training (it has evaluated once) after job 0's run finished
        client, _, children = sweep_runs(tmp_path)
        by_job = {c.data.tags["charrnn.job"]: c for c in children}
        if "1" in by_job and client.get_metric_history(by_job["1"].info.run_id, "val/loss"):
            break
        assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "sweep.log").read_text()[-3000:]
        time.sleep(0.5)
    if signum == signal.SIGINT:
        os.killpg(proc.pid, signum)  # a terminal's Ctrl-C
    else:
        proc.send_signal(signum)
    output = finish(proc, tmp_path)
    assert proc.returncode == 128 + signum, output[-3000:]
    assert "Traceback" not in output
    name = signal.Signals(signum).name
    client, parent, children = sweep_runs(tmp_path)
    by_job = {c.data.tags["charrnn.job"]: c for c in children}
    assert by_job["0"].info.status == "FINISHED"
    assert (by_job["1"].info.status, by_job["1"].data.tags["charrnn.reason"]) == ("KILLED", f"received {name}")
    assert (parent.info.status, parent.data.tags["charrnn.reason"]) == ("KILLED", f"stopped by {name}")
    # the summary of what did finish: job 0 is the best child, with its loss and swept value
    best = by_job["0"]
    assert parent.data.tags["charrnn.best_child_run_id"] == best.info.run_id
    assert parent.data.tags["charrnn.finished"] == "1" and parent.data.tags["charrnn.children"] == "2"
    assert parent.data.metrics["val/best_loss"] == best_val_loss(client, best)
    assert parent.data.params["best.train.max_iters"] == "60"
    assert f"best (lowest val/loss during the run): {best.info.run_name}" in output
    assert "1 of 2 jobs did not finish" in output
    assert "report/report.html" in {a.path for a in client.list_artifacts(parent.info.run_id, "report")}


def test_ctrl_c_stops_the_whole_parallel_sweep(small_text, tmp_path):
    proc = start_sweep(
        tmp_path,
        "hydra/launcher=charrnn",
        "hydra.launcher.n_jobs=2",
        *tiny(small_text, *LONG),
        "model.hidden_size=8,12,16",
    )
    for label in ("h=8", "h=12"):
        wait_for_output(tmp_path, proc, rf"^\[{label}\] .*iter \d+ \| .*val/bpc")
    os.killpg(proc.pid, signal.SIGINT)
    output = finish(proc, tmp_path)
    assert proc.returncode == 128 + signal.SIGINT, output[-3000:]
    check_stopped(tmp_path, output, "SIGINT", in_flight=2)


def stop_cluster_sweep(tmp_path: Path, launcher: list[str], text: Path, signum: int = signal.SIGINT) -> str:
    """A 2-job sweep through ``launcher``, stopped once both jobs are training by Ctrl-C (SIGINT to the terminal's
    process group) or by ``signum`` sent to the command: its output."""
    proc = start_sweep(tmp_path, *launcher, *tiny(text, *LONG), "model.hidden_size=8,12")
    wait_for_output(tmp_path, proc, r"sweep output dir")  # the store exists: reading it cannot race its creation
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:  # both jobs are training: each has evaluated once
        client, _, children = sweep_runs(tmp_path)
        if len(children) == 2 and all(client.get_metric_history(c.info.run_id, "val/loss") for c in children):
            break
        assert proc.poll() is None, (tmp_path / "sweep.log").read_text()[-3000:]
        time.sleep(0.5)
    if signum == signal.SIGINT:
        os.killpg(proc.pid, signal.SIGINT)
    else:
        proc.send_signal(signum)
    output = finish(proc, tmp_path)
    assert proc.returncode == 128 + signum, output[-3000:]
    deadline = time.monotonic() + 30  # launcher processes notice that their jobs ended and leave
    while session_processes(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert session_processes(proc.pid) == [], "no job may outlive the sweep"
    return output


def test_ctrl_c_stops_a_ray_sweep(small_text, tmp_path):
    # Ray's jobs run outside the terminal's process group, with SIGINT blocked: the sweep forwards the signal
    output = stop_cluster_sweep(tmp_path, CLUSTER_LAUNCHERS[1], small_text)
    check_stopped(tmp_path, output, "SIGINT", in_flight=2)


def test_sigterm_stops_a_ray_sweep(small_text, tmp_path):
    # ray.init's own SIGTERM handler would exit at once, the jobs dying with the driver (runs FAILED)
    output = stop_cluster_sweep(tmp_path, CLUSTER_LAUNCHERS[1], small_text, signal.SIGTERM)
    check_stopped(tmp_path, output, "SIGTERM", in_flight=2)


def test_ctrl_c_stops_a_submitit_sweep(small_text, tmp_path):
    output = stop_cluster_sweep(tmp_path, CLUSTER_LAUNCHERS[0], small_text)
    # submitit's controller gets the Ctrl-C too: it prints its own KeyboardInterrupt and SIGKILLs a job still
    # ending its run a second later; the sweep then ends that run KILLED
    client, parent, children = sweep_runs(tmp_path)
    assert len(children) == 2 and {c.info.status for c in children} == {"KILLED"}
    assert {c.data.tags["charrnn.reason"] for c in children} <= {
        "received SIGINT",
        "the sweep was stopped (SIGINT) before this job ended its run",
    }
    assert (parent.info.status, parent.data.tags["charrnn.reason"]) == ("KILLED", "stopped by SIGINT")
    assert f"parent run id: {parent.info.run_id}" in output


def test_kill_9_of_one_job_fails_that_job_only(small_text, tmp_path):
    # job 0 trains until it is killed; job 1 has a bounded budget and must finish despite its sibling's death
    proc = start_sweep(
        tmp_path,
        "hydra/launcher=charrnn",
        "hydra.launcher.n_jobs=2",
        *tiny(small_text, "train.eval_every=100", "train.log_every=100"),
        "train.max_iters=1000000,3000",
    )
    pid = int(wait_for_output(tmp_path, proc, r"started #0 .*\(pid (\d+)\)")[0])
    wait_for_output(tmp_path, proc, r"^\[max_iters=3000\] .*iter \d+ \| .*val/bpc")
    wait_for_output(tmp_path, proc, r"^\[max_iters=1000000\] .*iter \d+ \| .*val/bpc")
    os.kill(pid, signal.SIGKILL)
    output = finish(proc, tmp_path)
    assert proc.returncode == 1, output[-3000:]
    assert "Traceback" not in output
    assert re.search(r"job #0 max_iters=1000000 died \(killed by SIGKILL\)", output)
    assert "1 of 2 jobs did not finish" in output
    client, parent, children = sweep_runs(tmp_path)
    by_job = {c.data.tags["charrnn.job"]: c for c in children}
    assert by_job["0"].info.status == "FAILED"
    assert "died (killed by SIGKILL)" in by_job["0"].data.tags["charrnn.reason"]
    assert by_job["1"].info.status == "FINISHED", by_job["1"].data.tags.get("charrnn.reason")
    assert max(m.step for m in client.get_metric_history(by_job["1"].info.run_id, "train/loss")) == 3000
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["charrnn.best_child_run_id"] == by_job["1"].info.run_id


def test_parallel_jobs_log_the_same_dataset_without_losing_a_run(tmp_path):
    # Jobs racing to insert the same dataset row hit the store's unique key; each must still link it.
    from charrnn_experiments.store import Store

    for trial in range(3):
        store_dir = tmp_path / str(trial)
        uri = Store.resolve(None, store_dir).uri
        experiment_id = Store(uri, None).ensure_experiment("race")
        run_ids = jobs_log_one_dataset_at_once(uri, experiment_id, store_dir)
        client = MlflowClient(uri)
        for run_id in run_ids:
            assert [d.dataset.name for d in client.get_run(run_id).inputs.dataset_inputs] == ["file"]
