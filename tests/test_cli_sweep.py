"""Multirun sweeps through each launcher: one parent run per sweep, one nested child per job."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from mlflow import MlflowClient

from conftest import tiny

GRID = ["model.hidden_size=8,16", "train.seq_length=8,16"]


def sweep_runs(cwd: Path, experiment: str = "charrnn"):
    client = MlflowClient(f"sqlite:///{cwd}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1, "exactly one parent run per sweep"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(children) == len(runs) - 1, "every job is nested under the parent"
    return client, parents[0], children


def check_children(client, children, n):
    assert len(children) == n
    assert all(c.info.status == "FINISHED" for c in children), \
        [(c.info.status, c.data.tags.get("charrnn.reason")) for c in children]
    assert sorted(int(c.data.tags["charrnn.job"]) for c in children) == list(range(n))
    for c in children:
        # every metric point of every job made it into the shared store
        assert len(client.get_metric_history(c.info.run_id, "train/loss")) == 6
        assert len(client.get_metric_history(c.info.run_id, "val/loss")) == 2
        samples = {a.path for a in client.list_artifacts(c.info.run_id, "samples")}
        assert "samples/iter_00000030.txt" in samples


def test_2x2_sweep_in_parallel_from_a_fresh_store(cli, small_text, tmp_path):
    out = cli("charrnn-train", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=4",
              *tiny(small_text), *GRID)
    assert out.returncode == 0, out.stderr[-3000:]
    client, parent, children = sweep_runs(tmp_path)
    check_children(client, children, 4)
    grid = {(c.data.params["model.hidden_size"], c.data.params["train.seq_length"]) for c in children}
    assert grid == {("8", "8"), ("8", "16"), ("16", "8"), ("16", "16")}
    # the parent carries the sweep's summary: the best child and its params
    best = min(children, key=lambda c: c.data.metrics["val/loss"])
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["charrnn.best_child_run_id"] == best.info.run_id
    assert parent.data.metrics["best/val/loss"] == best.data.metrics["val/loss"]
    assert parent.data.params["best.model.hidden_size"] == best.data.params["model.hidden_size"]


def test_a_failing_job_does_not_stop_the_sweep(cli, small_text, tmp_path):
    out = cli("charrnn-train", "-m", *tiny(small_text), "optim.lr=0,0.1")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "error: lr must be positive" in out.stderr
    client, parent, children = sweep_runs(tmp_path)
    status = {c.data.params["optim.lr"]: c.info.status for c in children}
    assert status == {"0": "FAILED", "0.1": "FINISHED"}
    assert parent.data.tags["charrnn.best_child_run_id"] in {c.info.run_id for c in children
                                                             if c.info.status == "FINISHED"}


@pytest.mark.parametrize("launcher", [
    ["hydra/launcher=submitit_local"],
    ["hydra/launcher=ray", "+hydra.launcher.ray.init.num_cpus=2"],
])
def test_the_same_sweep_runs_through_cluster_launchers(cli, small_text, tmp_path, launcher):
    out = cli("charrnn-train", "-m", *launcher, *tiny(small_text), "model.hidden_size=8,16")
    assert out.returncode == 0, out.stderr[-3000:]
    client, parent, children = sweep_runs(tmp_path)
    check_children(client, children, 2)
    assert parent.data.tags["charrnn.best_child_run_id"] in {c.info.run_id for c in children}


def test_optuna_preset_searches_and_reports_the_best_trial(cli, small_text, tmp_path):
    out = cli("charrnn-train", "experiment=optuna", *tiny(small_text),
              "hydra.sweeper.n_trials=3", "train.seq_length=choice(8,16)",
              "model.hidden_size=choice(8,16)")
    assert out.returncode == 0, out.stderr[-3000:]
    client, parent, children = sweep_runs(tmp_path, experiment="optuna")
    assert len(children) == 3 and all(c.info.status == "FINISHED" for c in children)
    best = min(c.data.metrics["val/loss"] for c in children)
    assert math.isclose(parent.data.metrics["best/val/loss"], best)
    optimization = next(tmp_path.glob("multirun/*/*/optimization_results.yaml")).read_text()
    assert f"best_value: {best}" in optimization


def _log_same_dataset(store_dir: str, experiment_id: str, go: str) -> str:
    """One sweep job's start: open a run, wait for the others, log the shared dataset."""
    import time

    from charrnn_experiments.tracking import MlflowTracker, Store

    tracker = MlflowTracker.start(Store.resolve(None, store_dir), experiment_id)
    (Path(store_dir) / f"ready-{tracker.run_id}").touch()
    while not Path(go).exists():
        time.sleep(0.001)
    tracker.log_dataset("file", "corpus.txt", "ab" * 32, 100)
    return tracker.run_id


def test_parallel_jobs_log_the_same_dataset_without_losing_a_run(tmp_path):
    # Jobs racing to insert the same dataset row hit the store's unique key; each must still link it.
    import multiprocessing
    import time

    from charrnn_experiments.tracking import Store

    for trial in range(3):
        store_dir = tmp_path / str(trial)
        experiment_id = Store.resolve(None, store_dir).ensure_experiment("race")
        go = store_dir / "go"
        with multiprocessing.get_context("spawn").Pool(4) as pool:
            pending = pool.starmap_async(_log_same_dataset, [(str(store_dir), experiment_id, str(go))] * 4)
            while len(list(store_dir.glob("ready-*"))) < 4 and not pending.ready():
                time.sleep(0.01)  # until every job has opened its run
            go.touch()
            run_ids = pending.get(timeout=120)
        client = MlflowClient(f"sqlite:///{store_dir}/mlflow.db")
        for run_id in run_ids:
            assert [d.dataset.name for d in client.get_run(run_id).inputs.dataset_inputs] == ["file"]
