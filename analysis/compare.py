"""Compare the runs of an experiment or a sweep: one table row per run, a leaderboard, and figures.

Runs come from the client's ``search_runs`` into a pandas table; the "best" columns need each run's metric
history, which a search (latest values only) does not carry, so those come from one history call per run.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from .errors import AnalysisError
from .figures import save_figure

PARENT_TAG = "mlflow.parentRunId"
CURVE_METRICS = ("train/loss", "val/loss")
BEST_METRICS = ("train/loss", "val/loss", "val/bpc")  # all lower-is-better
RANK_BY = "best val/loss"


def find_experiment(client: MlflowClient, name: str):
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        known = sorted(e.name for e in client.search_experiments())
        raise AnalysisError(f"no MLflow experiment named {name!r} (known: {', '.join(known) or 'none'})")
    return experiment


def load_runs(client: MlflowClient, experiment: str, parent: str | None = None) -> tuple[pd.DataFrame, dict]:
    """The runs of ``experiment`` (only ``parent``'s children when given) as one row each, and their histories.

    Table columns: run_id, run_name, status, then every param under its own name, then ``final <metric>`` (the
    last logged value) and ``best <metric>`` (the minimum over the run) for each metric; sorted by best
    validation loss. Sweep parents are left out: they summarise their children rather than train.
    Histories: {run_id: {metric: (steps, values)}} for the learning-curve figure.
    """
    exp = find_experiment(client, experiment)
    if parent is not None:
        try:
            parent_run = client.get_run(parent)
        except MlflowException:
            raise AnalysisError(f"no MLflow run with id {parent!r}") from None
        if parent_run.info.experiment_id != exp.experiment_id:
            raise AnalysisError(f"run {parent} is not in experiment {experiment!r}")
    filter_string = f"tags.`{PARENT_TAG}` = '{parent}'" if parent else ""
    runs = []
    page = None
    while True:  # the client pages through the runs; MLflow's fluent search_runs would need a global store URI
        batch = client.search_runs([exp.experiment_id], filter_string, max_results=1000, page_token=page,
                                   order_by=["attributes.start_time ASC"])
        runs += batch
        page = batch.token
        if not page:
            break
    if not runs:
        what = f"child runs of {parent}" if parent else "runs"
        raise AnalysisError(f"experiment {experiment!r} has no {what}")
    parents = {r.data.tags.get(PARENT_TAG) for r in runs}
    runs = [r for r in runs if r.info.run_id not in parents]

    param_names = sorted({name for r in runs for name in r.data.params})
    table = pd.DataFrame(
        [{"run_id": r.info.run_id, "run_name": r.info.run_name, "status": r.info.status,
          **{name: r.data.params.get(name) for name in param_names}} for r in runs]
    )
    histories: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    for run_id in table["run_id"]:
        histories[run_id] = {}
        for key in sorted(set(CURVE_METRICS) | set(BEST_METRICS)):
            points = sorted((m.step, m.timestamp, m.value) for m in client.get_metric_history(run_id, key))
            histories[run_id][key] = (np.array([p[0] for p in points]), np.array([p[2] for p in points], float))
    for key in BEST_METRICS:
        table[f"final {key}"] = [h[key][1][-1] if len(h[key][1]) else np.nan for h in histories.values()]
        table[f"best {key}"] = [np.nanmin(h[key][1]) if len(h[key][1]) else np.nan for h in histories.values()]
    table = table.sort_values(RANK_BY, na_position="last", kind="stable").reset_index(drop=True)
    return table, histories


def swept_params(table: pd.DataFrame) -> list[str]:
    """Params that take more than one value across the runs: what the sweep varied."""
    params = [c for c in table.columns if c not in ("run_id", "run_name", "status") and " " not in c]
    return [p for p in params if table[p].nunique(dropna=True) > 1]


def leaderboard(table: pd.DataFrame, top: int = 10) -> pd.DataFrame:
    columns = ["run_name", "status", *swept_params(table), "final val/loss", RANK_BY]
    return table[columns].head(top)


def _as_numbers(column: pd.Series) -> pd.Series | None:
    """The column as floats when every value parses (MLflow stores params as strings), else None."""
    numbers = pd.to_numeric(column, errors="coerce")
    return numbers if numbers.notna().all() else None


def _labels(values: pd.Series) -> list[str]:
    """Param values as category labels; a run that lacks the param gets "n/a"."""
    return [str(v) if pd.notna(v) else "n/a" for v in values]


def _colours(values: pd.Series):
    """One colour per run from a param: a viridis scale for numbers, tab10 categories otherwise;
    returns (colours, legend entries or None, scalar mappable or None)."""
    numbers = _as_numbers(values)
    if numbers is not None and numbers.nunique() > 2:
        norm = Normalize(numbers.min(), numbers.max())
        cmap = matplotlib.colormaps["viridis"]
        mappable = matplotlib.cm.ScalarMappable(norm=norm, cmap=cmap)
        return [cmap(norm(v)) for v in numbers], None, mappable
    labels = _labels(values)
    palette = matplotlib.colormaps["tab10"]
    lookup = {c: palette(i % 10) for i, c in enumerate(sorted(set(labels)))}
    return [lookup[label] for label in labels], lookup, None


def plot_curves(table: pd.DataFrame, histories: dict, color_by: str, path: str | Path) -> Path:
    """Training and validation loss of every run overlaid, coloured by the param ``color_by``."""
    if color_by not in table.columns:
        raise AnalysisError(f"unknown param {color_by!r} to colour by (params: {', '.join(swept_params(table))})")
    colours, legend, mappable = _colours(table[color_by])
    fig = Figure(figsize=(11, 4))
    for i, key in enumerate(CURVE_METRICS):
        ax = fig.add_subplot(1, 2, i + 1)
        for run_id, colour in zip(table["run_id"], colours):
            steps, values = histories[run_id][key]
            ax.plot(steps, values, color=colour, lw=1, alpha=0.8, marker="." if len(steps) < 20 else None)
        ax.set(xlabel="iteration", ylabel=f"{key} (nats/char)", title=key)
    if legend:
        handles = [matplotlib.lines.Line2D([], [], color=c, label=label) for label, c in legend.items()]
        fig.axes[-1].legend(handles=handles, title=color_by, fontsize=7)
    else:
        fig.colorbar(mappable, ax=fig.axes, label=color_by)
    return save_figure(fig, path)


def plot_metric_vs_params(table: pd.DataFrame, params: list[str], path: str | Path,
                          metric: str = "final val/loss") -> Path:
    """``metric`` against each swept param, one panel per param (log x for numbers spanning a decade)."""
    if not params:
        raise AnalysisError("no swept params: every run has the same params")
    fig = Figure(figsize=(3.6 * len(params), 3.4))
    for i, param in enumerate(params):
        ax = fig.add_subplot(1, len(params), i + 1)
        numbers = _as_numbers(table[param])
        if numbers is not None:
            ax.scatter(numbers, table[metric])
            if numbers.min() > 0 and numbers.max() / numbers.min() >= 10:
                ax.set_xscale("log")
        else:
            labels = _labels(table[param])
            categories = sorted(set(labels))
            ax.scatter([categories.index(label) for label in labels], table[metric])
            ax.set_xticks(range(len(categories)), categories)
        ax.set(xlabel=param, ylabel=metric if i == 0 else "")
    fig.tight_layout()
    return save_figure(fig, path)


def plot_param_heatmap(table: pd.DataFrame, x: str, y: str, path: str | Path, metric: str = RANK_BY) -> Path:
    """Mean ``metric`` over the runs in each (x, y) cell of two params, annotated with its value."""
    for param in (x, y):
        if param not in table.columns:
            raise AnalysisError(f"unknown param {param!r} for the heatmap (params: {', '.join(swept_params(table))})")

    def order(values):  # numeric params sort as numbers, not as strings ("100" after "32")
        numbers = _as_numbers(pd.Series(values))
        return list(np.asarray(values)[np.argsort(numbers.to_numpy(), kind="stable")]) if numbers is not None \
            else sorted(values)

    grid = table.pivot_table(index=y, columns=x, values=metric, aggfunc="mean")
    grid = grid.loc[order(list(grid.index)), order(list(grid.columns))]
    fig = Figure(figsize=(1.2 * grid.shape[1] + 2.5, 0.9 * grid.shape[0] + 1.8))
    ax = fig.add_subplot()
    values = grid.to_numpy(float)
    image = ax.imshow(values, cmap="viridis_r", aspect="auto")
    for (r, c), value in np.ndenumerate(values):
        if np.isfinite(value):
            bright = image.norm(value) < 0.5  # viridis_r is light at low values: dark text there
            ax.text(c, r, f"{value:.3f}", ha="center", va="center", fontsize=8, color="k" if bright else "w")
    ax.set_xticks(range(grid.shape[1]), grid.columns)
    ax.set_yticks(range(grid.shape[0]), grid.index)
    ax.set(xlabel=x, ylabel=y, title=metric)
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    return save_figure(fig, path)

