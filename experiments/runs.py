"""Runs in the MLflow store, for charrnn-analyze, charrnn-compare and the sweep's report: open the store, load an
experiment's or a sweep's runs as the table :mod:`charrnn_analysis.compare` draws, and find a run's checkpoint
and the params that name its corpus and split.

Runs come from the client's ``search_runs`` into a pandas table; the "best" columns need each run's metric
history, which a search (latest values only) does not carry, so those come from one history call per run.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.environment_variables import MLFLOW_TRACKING_URI
from mlflow.exceptions import MlflowException

from charrnn.checkpoint import load_model
from charrnn_analysis.compare import CURVE_METRICS, FINAL, NUM_PARAMS, RANK_BY, SCORE_PREFIX
from charrnn_analysis.errors import AnalysisError
from charrnn_analysis.sources import Model
from charrnn_analysis.trained_run import ARTIFACT_DIR, TOP_UNITS_STEM
from charrnn_experiments.store import Store
from charrnn_experiments.tracking import (
    BEST_CHECKPOINT,
    LATEST_CHECKPOINT,
    METRIC_NUM_PARAMS,
    TAG_PARENT,
    best_val_loss,
    children_filter,
)

# the file names of the checkpoints charrnn-train logs: the first found wins; any other .npz after these
CHECKPOINT_PREFERENCE = (Path(BEST_CHECKPOINT).name, Path(LATEST_CHECKPOINT).name)


def open_client(tracking_uri: str | None) -> MlflowClient:
    """A client for ``tracking_uri``; unset, MLflow's own ``MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db``
    here, like ``charrnn-train``.

    A SQLite store that does not exist yet is an error: opening it would silently create an empty one.
    """
    uri = tracking_uri or MLFLOW_TRACKING_URI.get()
    store = Store.resolve(uri, Path.cwd())
    if store.sqlite_path is not None and not store.sqlite_path.is_file():
        raise AnalysisError(f"no MLflow store at {store.uri} (run from where charrnn-train ran, or set tracking.uri=)")
    return store.client()


def get_run(client: MlflowClient, run_id: str):
    try:
        return client.get_run(run_id)
    except MlflowException:
        raise AnalysisError(f"no MLflow run with id {run_id!r} in {client.tracking_uri}") from None


def _run_checkpoint(client: MlflowClient, run_id: str) -> str:
    """Artifact path of the run's preferred checkpoint (searched one folder deep, e.g. ``checkpoints/``; the
    recordings under ``analysis/`` are not checkpoints)."""
    files = []
    for entry in client.list_artifacts(run_id):
        if entry.path == ARTIFACT_DIR:
            continue
        children = client.list_artifacts(run_id, entry.path) if entry.is_dir else [entry]
        files += [c.path for c in children if not c.is_dir and c.path.endswith(".npz")]
    if not files:
        raise AnalysisError(f"run {run_id} has no checkpoint artifact (.npz); pass checkpoint=<file> instead")
    rank = {name: i for i, name in enumerate(CHECKPOINT_PREFERENCE)}
    return min(sorted(files), key=lambda path: rank.get(Path(path).name, len(rank)))


def model_from_run(client: MlflowClient, run_id: str) -> Model:
    """The run's preferred checkpoint, with its params (``data.*``, ``train.*``) to rebuild its split."""
    run = get_run(client, run_id)
    artifact = _run_checkpoint(client, run_id)
    with tempfile.TemporaryDirectory() as tmp:
        local = client.download_artifacts(run_id, artifact, tmp)
        params, config, vocab = load_model(local)
    source = {"run_id": run_id, "checkpoint": artifact, "tracking_uri": client.tracking_uri}
    return Model(params, config, vocab, source, dict(run.data.params))


def find_experiment(client: MlflowClient, name: str):
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        known = sorted(e.name for e in client.search_experiments())
        raise AnalysisError(f"no MLflow experiment named {name!r} (known: {', '.join(known) or 'none'})")
    return experiment


def _experiment_of_parent(client: MlflowClient, parent: str, experiment: str | None):
    try:
        parent_run = client.get_run(parent)
    except MlflowException:
        raise AnalysisError(f"no MLflow run with id {parent!r}") from None
    exp = client.get_experiment(parent_run.info.experiment_id)
    if experiment is not None and exp.name != experiment:
        raise AnalysisError(f"run {parent} is not in experiment {experiment!r} (it is in {exp.name!r})")
    return exp


def feature_scores(client: MlflowClient, run_id: str) -> dict[str, float]:
    """{feature: best unit score} from the run's logged ``analysis/top_units.csv``; {} when it has none."""
    if f"{ARTIFACT_DIR}/{TOP_UNITS_STEM}.csv" not in {a.path for a in client.list_artifacts(run_id, ARTIFACT_DIR)}:
        return {}
    with tempfile.TemporaryDirectory() as tmp:
        top = pd.read_csv(client.download_artifacts(run_id, f"{ARTIFACT_DIR}/{TOP_UNITS_STEM}.csv", tmp))
    return top.groupby("feature", sort=False)["score"].max().to_dict()


def load_runs(client: MlflowClient, experiment: str | None, parent: str | None = None, unit_scores: bool = True):
    """The runs of ``experiment`` (only ``parent``'s children when given) as one row each, their histories, and
    the experiment's name (the parent's when ``experiment`` is None).

    Table columns: run_id, run_name, status, then every param under its own name, ``num params`` (nan for a run
    that never built its model), ``final train/loss``,
    ``final val/loss`` (the last logged values), ``val/best_loss`` (:func:`~.tracking.best_val_loss`; nan for a
    run that never evaluated) and, for runs whose training logged its recording's top-units table,
    ``unit score: <feature>`` per feature (not with ``unit_scores=False``, which downloads nothing); sorted by
    val/best_loss. Sweep parents are left out: they summarise their children rather than train.
    Histories: {run_id: {metric: (steps, values)}} for the learning-curve figure.
    """
    exp = _experiment_of_parent(client, parent, experiment) if parent else find_experiment(client, experiment)
    filter_string = children_filter(parent) if parent else ""
    runs = []
    page = None
    # The client pages through the runs: MLflow's fluent search_runs (a pandas frame) reads the global tracking URI,
    # and setting that (mlflow.set_tracking_uri) also sets MLFLOW_TRACKING_URI for this process and its children.
    while True:
        batch = client.search_runs(
            [exp.experiment_id],
            filter_string,
            max_results=1000,
            page_token=page,
            order_by=["attributes.start_time ASC"],
        )
        runs += batch
        page = batch.token
        if not page:
            break
    if not runs:
        what = f"child runs of {parent}" if parent else "runs"
        raise AnalysisError(f"experiment {exp.name!r} has no {what}")
    parents = {r.data.tags.get(TAG_PARENT) for r in runs}
    runs = [r for r in runs if r.info.run_id not in parents]

    param_names = sorted({name for r in runs for name in r.data.params})
    table = pd.DataFrame(
        [
            {
                "run_id": r.info.run_id,
                "run_name": r.info.run_name,
                "status": r.info.status,
                **{name: r.data.params.get(name) for name in param_names},
                NUM_PARAMS: r.data.metrics.get(METRIC_NUM_PARAMS, np.nan),
            }
            for r in runs
        ]
    )
    histories: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    for run_id in table["run_id"]:
        histories[run_id] = {}
        for key in CURVE_METRICS:
            points = sorted((m.step, m.timestamp, m.value) for m in client.get_metric_history(run_id, key))
            histories[run_id][key] = (np.array([p[0] for p in points]), np.array([p[2] for p in points], float))
    for key in CURVE_METRICS:
        table[FINAL[key]] = [h[key][1][-1] if len(h[key][1]) else np.nan for h in histories.values()]
    table[RANK_BY] = [np.nan if (best := best_val_loss(r)) is None else best for r in runs]
    scores = pd.DataFrame(
        [feature_scores(client, run_id) if unit_scores else {} for run_id in table["run_id"]], index=table.index
    )
    table = pd.concat([table, scores.add_prefix(SCORE_PREFIX)], axis=1)
    table = table.sort_values(RANK_BY, na_position="last", kind="stable").reset_index(drop=True)
    return table, histories, exp.name
