"""Compare the runs of an experiment or a sweep: one table row per run (with each run's metric histories), a
leaderboard, and figures.

The table and histories come from the store through :func:`charrnn_experiments.runs.load_runs`; everything here
works on them alone.
"""

from __future__ import annotations

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from charrnn.train import METRIC_BEST_VAL_LOSS

from .errors import AnalysisError

CURVE_METRICS = ("train/loss", "val/loss")
# The table's column of each run's best validation loss, which ranks the runs: the engine's metric under its own
# name (the run's latest val/best_loss, as the table's loader reads it), so a table, a figure and the store agree.
RANK_BY = METRIC_BEST_VAL_LOSS
NUM_PARAMS = "num params"  # the model's parameter count, as charrnn-train logged it
SCORE_PREFIX = "unit score: "  # + feature name: the run's best unit score for that feature
SCORE_MEANING = "best unit score (|r|, or |AUC-0.5|x2)"
RUN_COLUMNS = ("run_id", "run_name", "status")  # which run a row is; every other column is a param or a measurement
FINAL = {key: f"final {key}" for key in CURVE_METRICS}  # the column of each curve's last logged value
MEASURED = (NUM_PARAMS, RANK_BY, *FINAL.values())


def swept_params(table: pd.DataFrame) -> list[str]:
    """Params that take more than one value across the runs: what the sweep varied."""
    not_params = {*RUN_COLUMNS, *MEASURED}
    params = [c for c in table.columns if c not in not_params and not c.startswith(SCORE_PREFIX)]
    return [p for p in params if table[p].nunique(dropna=True) > 1]


def feature_score_columns(table: pd.DataFrame) -> list[str]:
    return [c for c in table.columns if c.startswith(SCORE_PREFIX)]


def leaderboard(table: pd.DataFrame, top: int = 10) -> pd.DataFrame:
    """One line per run, best first: status, swept values, val/best_loss and final val/loss, then the per-feature
    best unit scores under the feature's name."""
    columns = ["run_name", "status", *swept_params(table), RANK_BY, FINAL["val/loss"], *feature_score_columns(table)]
    board = table[columns].head(top)
    return board.rename(columns={c: c[len(SCORE_PREFIX) :] for c in feature_score_columns(table)})


def as_numbers(column: pd.Series) -> pd.Series | None:
    """The column as floats when every value parses (MLflow stores params as strings), else None."""
    numbers = pd.to_numeric(column, errors="coerce")
    return numbers if numbers.notna().all() else None


def value_labels(values: pd.Series) -> list[str]:
    """Param values as category labels; a run that lacks the param gets "n/a"."""
    return [str(v) if pd.notna(v) else "n/a" for v in values]


def ordered_labels(values: list[str]) -> list[str]:
    """Distinct labels in order: numerically when they all parse ("100" after "32"), else alphabetically."""
    distinct = sorted(set(values))
    numbers = as_numbers(pd.Series(distinct))
    return [distinct[i] for i in np.argsort(numbers.to_numpy(), kind="stable")] if numbers is not None else distinct


MAX_LEGEND_ENTRIES = 10  # more distinct values than this: a colour bar instead of a legend


def param_colours(values: pd.Series):
    """One colour per run from a param: a legend entry per value (viridis for numbers, tab10 otherwise) when
    there are few values, a viridis colour bar for many numbers; returns (colours, legend or None, mappable or None)."""
    labels = value_labels(values)
    distinct = ordered_labels(labels)
    numbers = as_numbers(values)
    if numbers is not None and len(distinct) > MAX_LEGEND_ENTRIES:
        norm = Normalize(numbers.min(), numbers.max())
        cmap = matplotlib.colormaps["viridis"]
        return [cmap(norm(v)) for v in numbers], None, matplotlib.cm.ScalarMappable(norm=norm, cmap=cmap)
    if numbers is not None:
        palette = matplotlib.colormaps["viridis"].resampled(max(len(distinct), 2))
        lookup = {label: palette(i / max(len(distinct) - 1, 1)) for i, label in enumerate(distinct)}
    else:
        palette = matplotlib.colormaps["tab10"]
        lookup = {label: palette(i % 10) for i, label in enumerate(distinct)}
    return [lookup[label] for label in labels], lookup, None


def check_param(table: pd.DataFrame, param: str, what: str) -> None:
    if param not in table.columns:
        raise AnalysisError(f"unknown param {param!r} {what} (params: {', '.join(swept_params(table))})")


def curves_figure(table: pd.DataFrame, histories: dict, keys: list[str]) -> Figure:
    """Training and validation loss of every run overlaid, one row per param in ``keys``, each row coloured by its
    param (a legend, or a colour bar for many numbers): runs that differ in any swept param differ in colour in
    some row. No keys: one row in one colour."""
    for key in keys:
        check_param(table, key, "to colour by")
    rows = keys or [None]
    # constrained layout: a colour bar spanning a row's two axes is outside what tight_layout can place
    fig = Figure(figsize=(11, 3.6 * len(rows)), layout="constrained")
    for r, key in enumerate(rows):
        colours, legend, mappable = param_colours(table[key]) if key else (["tab:blue"] * len(table), None, None)
        for c, metric in enumerate(CURVE_METRICS):
            ax = fig.add_subplot(len(rows), 2, 2 * r + c + 1)
            for run_id, colour in zip(table["run_id"], colours):
                steps, values = histories[run_id][metric]
                ax.plot(steps, values, color=colour, lw=1, alpha=0.8, marker="." if len(steps) < 20 else None)
            ax.set(
                xlabel="iteration",
                ylabel=f"{metric} (nats/char)",
                title=f"{metric}, coloured by {key}" if key else metric,
            )
        if legend:
            handles = [matplotlib.lines.Line2D([], [], color=c, label=label) for label, c in legend.items()]
            fig.axes[-1].legend(handles=handles, title=key, fontsize=7, loc="upper right")
        elif mappable is not None:
            fig.colorbar(mappable, ax=fig.axes[-2:], label=key)
    fig.suptitle(f"learning curves of {len(table)} runs")
    return fig


def axis_positions(values: pd.Series) -> tuple[np.ndarray, list[str] | None]:
    """Numbers stay numbers; categories become 0, 1, ... with their labels as ticks."""
    numbers = as_numbers(values)
    if numbers is not None:
        return numbers.to_numpy(float), None
    labels = value_labels(values)
    categories = ordered_labels(labels)
    return np.array([categories.index(label) for label in labels], float), categories


def _log_x_if_wide(ax, x: np.ndarray, categories) -> None:
    if categories is None and x.min() > 0 and x.max() / x.min() >= 10:
        ax.set_xscale("log")


def metric_vs_params_figure(table: pd.DataFrame, params: list[str], metric: str = RANK_BY) -> Figure:
    """``metric`` against each swept param, one panel per param; the best run at each value is labelled."""
    if not params:
        raise AnalysisError("no swept params: every run has the same params")
    fig = Figure(figsize=(4.2 * len(params), 3.8))
    for i, param in enumerate(params):
        ax = fig.add_subplot(1, len(params), i + 1)
        x, categories = axis_positions(table[param])
        y = table[metric].to_numpy(float)
        ax.scatter(x, y, zorder=2)
        # one label per value, on its best run: the runs sharing a value sit in one column, where labels overlap
        for xi in np.unique(x):
            at = np.flatnonzero((x == xi) & np.isfinite(y))
            if len(at):
                best = at[np.argmin(y[at])]
                ax.annotate(
                    str(table["run_name"].iloc[best]),
                    (xi, y[best]),
                    xytext=(4, -10),
                    textcoords="offset points",
                    fontsize=7,
                )
        if categories is not None:
            ax.set_xticks(range(len(categories)), categories)
        _log_x_if_wide(ax, x, categories)
        ax.set(xlabel=param, ylabel=f"{metric} (nats/char)", title=f"{metric} vs {param}")
    fig.tight_layout()
    return fig


def feature_scores_figure(table: pd.DataFrame, param: str) -> Figure:
    """Per feature, each run's best unit score against ``param`` (points) and its mean per value (line): does a
    unit tracking the feature appear as the param grows?"""
    check_param(table, param, "for the unit-score figure")
    columns = feature_score_columns(table)
    x, categories = axis_positions(table[param])
    fig = Figure(figsize=(7.5, 4.5))
    ax = fig.add_subplot()
    palette = matplotlib.colormaps["tab10"]
    for i, column in enumerate(columns):
        y = table[column].to_numpy(float)
        colour = palette(i % 10)
        ax.scatter(x, y, color=colour, s=14, alpha=0.7)
        means = pd.Series(y).groupby(x).mean()
        ax.plot(
            means.index,
            means.to_numpy(),
            color=colour,
            lw=1.2,
            label=column[len(SCORE_PREFIX) :],
            linestyle="-" if i < 10 else "--",
        )
    if categories is not None:
        ax.set_xticks(range(len(categories)), categories)
    _log_x_if_wide(ax, x, categories)
    ax.set(
        xlabel=param,
        ylabel=SCORE_MEANING,
        ylim=(0, 1.02),
        title=f"best unit score per feature vs {param} ({len(table)} runs; lines: mean)",
    )
    ax.legend(title="feature", fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    return fig


def param_heatmap_figure(table: pd.DataFrame, x: str, y: str, metric: str = RANK_BY) -> Figure:
    """Mean ``metric`` over the runs in each (x, y) cell of two params, annotated with its value."""
    for param in (x, y):
        check_param(table, param, "for the heatmap")
    grid = table.pivot_table(index=y, columns=x, values=metric, aggfunc="mean")
    grid = grid.loc[ordered_labels(list(grid.index)), ordered_labels(list(grid.columns))]
    fig = Figure(figsize=(1.2 * grid.shape[1] + 3, 0.9 * grid.shape[0] + 2))
    ax = fig.add_subplot()
    values = grid.to_numpy(float)
    image = ax.imshow(values, cmap="viridis_r", aspect="auto")
    for (r, c), value in np.ndenumerate(values):
        if np.isfinite(value):
            bright = image.norm(value) < 0.5  # viridis_r is light at low values: dark text there
            ax.text(c, r, f"{value:.3f}", ha="center", va="center", fontsize=8, color="k" if bright else "w")
    ax.set_xticks(range(grid.shape[1]), grid.columns)
    ax.set_yticks(range(grid.shape[0]), grid.index)
    ax.set(xlabel=x, ylabel=y, title=f"{metric}, mean over runs per cell")
    fig.colorbar(image, ax=ax, label=f"{metric} (nats/char, lower is better)")
    fig.tight_layout()
    return fig
