"""Hydra callback: set up MLflow once in the launching process of a multirun.

Several jobs that open a brand-new SQLite store at once race on its schema migration, so the
store, the experiment and the sweep's parent run are created here, before any job starts; each
job reads the parent from ``<sweep dir>/mlflow_parent.json`` and logs a nested child run.
At the end the parent gets the sweep's summary: the best child and its parameters.
"""

from __future__ import annotations

import atexit
import math
import os
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from charrnn_experiments import tracking


class MlflowSweepCallback(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        store = tracking.Store.resolve(config.tracking.uri, os.getcwd())
        experiment_id = store.ensure_experiment(config.tracking.experiment)
        sweep_dir = Path(config.hydra.sweep.dir).resolve()
        parent = tracking.MlflowTracker.start(store, experiment_id, run_name=sweep_dir.name,
                                              tags={tracking.TAG_SWEEP: str(sweep_dir)})
        tracking.write_parent(sweep_dir, store, experiment_id, parent.run_id)
        # A sweep stopped before on_multirun_end (Ctrl-C, a crash) must not leave the parent RUNNING.
        atexit.register(_kill_if_running, store, parent.run_id)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir).resolve()
        record = tracking.read_parent(sweep_dir)
        if record is None:
            return
        summarize_sweep(tracking.Store(record["tracking_uri"], None).client(),
                        record["experiment_id"], record["run_id"])


def _kill_if_running(store: tracking.Store, run_id: str) -> None:
    client = store.client()
    if client.get_run(run_id).info.status == "RUNNING":
        client.set_terminated(run_id, status="KILLED")


def summarize_sweep(client, experiment_id: str, parent_run_id: str) -> None:
    """Tag the parent with its best child (lowest final val/loss) and log that child's params."""
    children = client.search_runs(
        [experiment_id], filter_string=f"tags.`{tracking.TAG_PARENT}` = '{parent_run_id}'",
        max_results=10_000)
    scored = [(c.data.metrics.get("val/loss", math.inf), c) for c in children]
    scored = [(v, c) for v, c in scored if math.isfinite(v)]
    client.set_tag(parent_run_id, "charrnn.children", str(len(children)))
    if scored:
        best_loss, best = min(scored, key=lambda vc: vc[0])
        client.set_tag(parent_run_id, tracking.TAG_BEST_CHILD, best.info.run_id)
        client.log_metric(parent_run_id, "best/val/loss", best_loss)
        tracking.log_params(client, parent_run_id,
                            {f"best.{k}": v for k, v in best.data.params.items()})
    status = "FINISHED" if scored else "FAILED"
    client.set_terminated(parent_run_id, status=status)
