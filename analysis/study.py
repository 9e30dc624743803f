"""The paper's table from a study: the runs of a sweep that repeats each configuration over ``train.seed``,
grouped by configuration, with the best validation loss as mean and spread over seeds; and its two figures.

A configuration is its corpus, cell, depth, hidden size, lr and dropout (always shown: the paper's columns and
each model's setting) plus any other swept param except the seed. Only FINISHED runs enter the statistics: a
FAILED or KILLED run trained for less, so its loss is no sample of the same thing; it is listed in the row's
``not finished`` column instead of dropped.
"""

from __future__ import annotations

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from .compare import NUM_PARAMS, RANK_BY, ordered_labels, swept_params

SEED = "train.seed"
# the lr and dropout too: a study that gives each model its own (paper_cells) shows each row's setting
CONFIG_KEYS = ("data.name", "model.cell", "model.num_layers", "model.hidden_size", "optim.lr", "model.dropout")
CELL_ORDER = ("rnn", "lstm", "gru")  # the paper's order
MEAN, STD, LOW, HIGH = (f"{RANK_BY} {stat}" for stat in ("mean", "std", "min", "max"))
N_SEEDS, UNFINISHED = "n seeds", "not finished"
SPREAD_MEANING = "mean ± sample std (ddof=1) over the FINISHED seeds; min and max in the CSV"
LINESTYLES = ("-", "--", ":", "-.")


def is_study(table: pd.DataFrame) -> bool:
    """Whether the runs repeat configurations over seeds: the sweep varies ``train.seed``."""
    return SEED in swept_params(table)


def config_keys(table: pd.DataFrame) -> list[str]:
    """The columns that make a configuration: :data:`CONFIG_KEYS` then the other swept params, seed excepted."""
    keys = [k for k in CONFIG_KEYS if k in table.columns]
    return keys + [p for p in swept_params(table) if p not in keys and p != SEED]


def _sort_key(column: pd.Series) -> pd.Series:
    """Cells in the paper's order, numbers as numbers, anything else alphabetically."""
    if column.name == "model.cell":
        return column.map(lambda c: (CELL_ORDER.index(c) if c in CELL_ORDER else len(CELL_ORDER), str(c)))
    numbers = pd.to_numeric(column, errors="coerce")
    return numbers if numbers.notna().all() else column.astype(str)


def study_table(table: pd.DataFrame) -> pd.DataFrame:
    """One row per configuration of :func:`load_runs`' table: its params, ``num params``, the best validation
    loss's mean, sample std, min and max over the FINISHED seeds, their number, and ``not finished`` (e.g.
    ``seed 2 FAILED``) for the others."""
    keys = config_keys(table)
    rows = []
    for values, group in table.groupby(keys, sort=False, dropna=False):
        values = values if isinstance(values, tuple) else (values,)
        finished = group[(group["status"] == "FINISHED") & np.isfinite(group[RANK_BY].astype(float))]
        losses = finished[RANK_BY].to_numpy(float)
        others = group.drop(finished.index)
        rows.append(
            {
                **dict(zip(keys, values)),
                NUM_PARAMS: group[NUM_PARAMS].dropna().iloc[0] if group[NUM_PARAMS].notna().any() else np.nan,
                MEAN: losses.mean() if len(losses) else np.nan,
                STD: losses.std(ddof=1) if len(losses) > 1 else np.nan,
                LOW: losses.min() if len(losses) else np.nan,
                HIGH: losses.max() if len(losses) else np.nan,
                N_SEEDS: len(losses),
                UNFINISHED: ", ".join(f"seed {seed} {status}" for seed, status in zip(others[SEED], others["status"])),
            }
        )
    study = pd.DataFrame(rows)
    return study.sort_values(keys, key=_sort_key, kind="stable").reset_index(drop=True)


def study_markdown_table(study: pd.DataFrame) -> pd.DataFrame:
    """The study for people: ``mean ± std`` in one column, parameter counts as integers."""
    shown = study.drop(columns=[MEAN, STD, LOW, HIGH])
    loss = [
        ("" if np.isnan(m) else f"{m:.3f}" + ("" if np.isnan(s) else f" ± {s:.3f}"))
        for m, s in zip(study[MEAN], study[STD])
    ]
    shown.insert(shown.columns.get_loc(N_SEEDS), f"{RANK_BY} (mean ± std)", loss)
    shown[NUM_PARAMS] = [f"{int(n):,}" if np.isfinite(n) else "" for n in study[NUM_PARAMS]]
    return shown


def _style(study: pd.DataFrame):
    """A colour per cell and a line style per depth, the same in both figures."""
    cells = sorted(
        study["model.cell"].astype(str).unique(),
        key=lambda c: (CELL_ORDER.index(c) if c in CELL_ORDER else len(CELL_ORDER), c),
    )
    palette = matplotlib.colormaps["tab10"]
    colours = {cell: palette(i % 10) for i, cell in enumerate(cells)}
    depths = ordered_labels([str(d) for d in study["model.num_layers"].unique()])
    styles = {depth: LINESTYLES[i % len(LINESTYLES)] for i, depth in enumerate(depths)}
    return colours, styles


def _data_sets(study: pd.DataFrame) -> list[str]:
    return ordered_labels([str(d) for d in study["data.name"].unique()])


def study_curves_figure(table: pd.DataFrame, histories: dict, study: pd.DataFrame) -> Figure:
    """Validation loss against iteration, mean over each configuration's FINISHED seeds at each evaluated
    iteration; one panel per corpus, colour per cell, line style per depth, thicker for larger sizes."""
    keys = config_keys(table)
    colours, styles = _style(study)
    data_sets = _data_sets(study)
    fig = Figure(figsize=(6.5 * len(data_sets), 4.6))
    finished = table[table["status"] == "FINISHED"]
    # the larger sizes of a cell and depth draw thicker, so that its budgets tell apart
    size_rank = (
        pd.to_numeric(study["model.hidden_size"], errors="coerce")
        .groupby([study["data.name"], study["model.cell"], study["model.num_layers"]])
        .rank(method="dense")
        .fillna(1)
    )
    for i, data in enumerate(data_sets):
        ax = fig.add_subplot(1, len(data_sets), i + 1)
        rows = study[study["data.name"].astype(str) == data]
        for config, rank in zip(rows[keys].to_dict("records"), size_rank[rows.index]):  # the table's order
            group = finished[np.logical_and.reduce([finished[k].astype(str) == str(v) for k, v in config.items()])]
            if not len(group):
                continue
            curves = pd.DataFrame(
                {
                    run_id: pd.Series(histories[run_id]["val/loss"][1], index=histories[run_id]["val/loss"][0])
                    for run_id in group["run_id"]
                }
            )
            mean = curves.mean(axis=1).sort_index()
            label = (
                f"{config['model.cell']} L={config['model.num_layers']} h={config['model.hidden_size']} "
                f"(n={len(group)})"
            )
            ax.plot(
                mean.index,
                mean.to_numpy(),
                color=colours[str(config["model.cell"])],
                linestyle=styles[str(config["model.num_layers"])],
                lw=0.5 + rank,
                label=label,
                marker="." if len(mean) < 20 else None,
            )
        ax.set(xlabel="iteration", ylabel="val/loss (nats/char), mean over seeds", title=f"data: {data}")
        ax.legend(fontsize=7, title="cell, layers, hidden size")
    fig.suptitle("validation loss by cell (mean over FINISHED seeds)")
    fig.tight_layout()
    return fig


def study_loss_vs_params_figure(study: pd.DataFrame) -> Figure:
    """Best validation loss (mean, error bar: std over seeds) against the parameter count on a log axis; one
    panel per corpus, a line per (cell, depth) through its sizes."""
    colours, styles = _style(study)
    data_sets = _data_sets(study)
    fig = Figure(figsize=(6.5 * len(data_sets), 4.6))
    for i, data in enumerate(data_sets):
        ax = fig.add_subplot(1, len(data_sets), i + 1)
        rows = study[(study["data.name"].astype(str) == data) & study[NUM_PARAMS].notna() & study[MEAN].notna()]
        for (cell, depth), group in rows.groupby(["model.cell", "model.num_layers"], sort=False):
            group = group.sort_values(NUM_PARAMS)
            ax.errorbar(
                group[NUM_PARAMS],
                group[MEAN],
                yerr=group[STD].fillna(0.0),
                color=colours[str(cell)],
                linestyle=styles[str(depth)],
                marker="o",
                capsize=3,
                lw=1.3,
                label=f"{cell}, {depth} layer(s)",
            )
        ax.set_xscale("log")
        ax.set(xlabel="number of parameters (log scale)", ylabel=f"{RANK_BY} (nats/char)", title=f"data: {data}")
        if len(rows):
            ax.legend(fontsize=7, title="cell, depth")
    fig.suptitle("best validation loss vs parameters by depth (mean ± std over seeds)")
    fig.tight_layout()
    return fig


# A search for a study's settings (paper_cells_search): the models it tunes and the settings it tries.
SEARCH_MODEL_KEYS = ("data.name", "model.cell", "model.num_layers", "study.budget")
SEARCH_SETTINGS = {"optim.lr": "lr", "model.dropout": "dropout"}  # param -> its table under study: in the preset


def is_settings_search(table: pd.DataFrame) -> bool:
    """Whether the runs try several settings (lr, dropout) on one of a study's models: the search of a study
    preset. (The study itself also varies the lr, but from model to model, one setting each.)"""
    if not all(k in table.columns for k in SEARCH_MODEL_KEYS):
        return False
    per_model = table.groupby(list(SEARCH_MODEL_KEYS), dropna=False)
    return any(per_model[p].nunique().max() > 1 for p in SEARCH_SETTINGS if p in table.columns)


def chosen_settings(table: pd.DataFrame) -> dict:
    """For each model of a settings search, the lr and dropout of its FINISHED run with the lowest val/best_loss,
    as the tables a study preset reads: {lr: {corpus: {cell: {layers<N>: {budget: value}}}}, dropout: ...}."""
    finished = table[(table["status"] == "FINISHED") & np.isfinite(table[RANK_BY].astype(float))]
    best = finished.sort_values(RANK_BY, kind="stable").groupby(list(SEARCH_MODEL_KEYS), sort=False).head(1)
    best = best.sort_values(list(SEARCH_MODEL_KEYS), key=_sort_key, kind="stable")
    chosen: dict = {name: {} for name in SEARCH_SETTINGS.values()}
    for run in best.to_dict("records"):
        corpus, cell, layers, budget = (str(run[k]) for k in SEARCH_MODEL_KEYS)
        for param, name in SEARCH_SETTINGS.items():
            value = run.get(param)
            tree = chosen[name].setdefault(corpus, {}).setdefault(cell, {}).setdefault(f"layers{layers}", {})
            tree[budget] = None if value is None or pd.isna(value) else float(value)
    return chosen
