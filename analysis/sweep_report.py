"""A sweep's report: the leaderboard, the validation curves as small multiples coloured by each swept key in turn,
val/best_loss against each swept key and a parallel-coordinates view of the swept keys -> val/best_loss, as one
self-contained HTML page (``report.html``) plus PNGs of the same figures.

The page is drawn with plotly: ``to_html(include_plotlyjs=True)`` inlines plotly.js, so the page opens with no
network, as a file and inside MLflow's artifact view; plotly has parallel coordinates as a trace type, and its
hover labels name each run where labels printed on a PNG overlap. (Bokeh's inline resources also make a
self-contained page, but it has no parallel-coordinates glyph.) The PNGs are matplotlib's, from the same table.

Everything here works on :func:`charrnn_experiments.runs.load_runs`' table and histories: the caller reads the
store and uploads the files (the sweep's end in ``charrnn_experiments.sweep_report``, and ``charrnn-compare``).
"""

from __future__ import annotations

import html
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import plotly.graph_objects as go
from matplotlib.colors import to_hex
from matplotlib.figure import Figure
from plotly.subplots import make_subplots

from .compare import (
    RANK_BY,
    axis_positions,
    curves_figure,
    leaderboard,
    metric_vs_params_figure,
    param_colours,
    swept_params,
    value_labels,
)
from .figures import save_figure
from .tables import markdown_table

REPORT_PAGE = "report.html"
VAL_LOSS = "val/loss"
CURVES_DIV = "val-curves-{}"  # the page's element id of the curves coloured by the i-th swept key
PAGE_STYLE = """body { font-family: sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; font-size: 0.9em; } td, th { border: 1px solid #ccc; padding: 2px 8px; }
td { text-align: right; white-space: nowrap; } .multiples { display: flex; flex-wrap: wrap; gap: 8px; }
.wide { overflow-x: auto; }"""


def _best_per_run(table: pd.DataFrame) -> pd.Series:
    return table[RANK_BY].astype(float)


def curve_multiples(table: pd.DataFrame, histories: dict, key: str | None) -> go.Figure:
    """Every run's validation curve in one panel, coloured by ``key``'s value (one colour when None)."""
    colours, legend = param_colours(table[key])[:2] if key is not None else ([None] * len(table), None)
    fig = go.Figure()
    shown = set()
    for run_id, name, colour, label in zip(
        table["run_id"], table["run_name"], colours, value_labels(table[key]) if key else [""] * len(table)
    ):
        steps, values = histories[run_id][VAL_LOSS]
        group = f"{key}={label}" if key else "runs"
        fig.add_trace(
            go.Scatter(
                x=steps,
                y=values,
                mode="lines+markers",
                name=label if key else str(name),
                legendgroup=group,
                showlegend=bool(key) and group not in shown,
                marker={"size": 4},
                line={"color": to_hex(colour) if colour is not None else None, "width": 1.5},
                hovertemplate=f"{html.escape(str(name))}<br>iteration %{{x}}<br>val/loss %{{y:.4f}}<extra></extra>",
            )
        )
        shown.add(group)
    if legend:  # the legend in value order
        order = {f"{key}={label}": i for i, label in enumerate(legend)}
        fig.data = tuple(sorted(fig.data, key=lambda trace: order.get(trace.legendgroup, 0)))
    fig.update_layout(
        title=f"val/loss, coloured by {key}" if key else "val/loss",
        width=560,
        height=380,
        margin={"l": 50, "r": 10, "t": 40, "b": 40},
        legend={"title": {"text": key or ""}},
        xaxis_title="iteration",
        yaxis_title="val/loss (nats/char)",
    )
    return fig


def best_against_keys(table: pd.DataFrame, keys: list[str]) -> go.Figure:
    """val/best_loss against each swept key, one panel per key, each point naming its run on hover."""
    fig = make_subplots(rows=1, cols=len(keys), shared_yaxes=True, subplot_titles=keys)
    best = _best_per_run(table)
    for i, key in enumerate(keys, start=1):
        x, categories = axis_positions(table[key])
        fig.add_trace(
            go.Scatter(
                x=x,
                y=best,
                mode="markers",
                marker={"size": 9, "color": "#1f77b4"},
                text=[str(n) for n in table["run_name"]],
                showlegend=False,
                hovertemplate=f"%{{text}}<br>{key} %{{x}}<br>{RANK_BY} %{{y:.4f}}<extra></extra>",
            ),
            row=1,
            col=i,
        )
        if categories is not None:
            fig.update_xaxes(tickvals=list(range(len(categories))), ticktext=categories, row=1, col=i)
        elif x.min() > 0 and x.max() / x.min() >= 10:
            fig.update_xaxes(type="log", row=1, col=i)
        fig.update_xaxes(title_text=key, row=1, col=i)
    fig.update_yaxes(title_text=f"{RANK_BY} (nats/char)", row=1, col=1)
    fig.update_layout(width=max(420, 300 * len(keys)), height=380, margin={"l": 60, "r": 10, "t": 40, "b": 50})
    return fig


def parallel_keys(table: pd.DataFrame, keys: list[str]) -> go.Figure:
    """One line per run that has a val/best_loss, through its swept values to it, coloured by it."""
    runs = table[np.isfinite(_best_per_run(table))]
    dimensions = []
    for key in keys:
        x, categories = axis_positions(runs[key])
        dimension = {"label": key, "values": x}
        if categories is not None:
            dimension.update(tickvals=list(range(len(categories))), ticktext=categories)
        dimensions.append(dimension)
    best = _best_per_run(runs)
    dimensions.append({"label": RANK_BY, "values": best})
    fig = go.Figure(
        go.Parcoords(
            dimensions=dimensions,
            line={
                "color": best,
                "colorscale": "Viridis",
                "reversescale": True,
                "showscale": True,
                "colorbar": {"title": {"text": RANK_BY}},
            },
        )
    )
    fig.update_layout(width=max(520, 170 * (len(keys) + 1)), height=380, margin={"l": 60, "r": 60, "t": 50, "b": 30})
    return fig


def parallel_figure(table: pd.DataFrame, keys: list[str]) -> Figure:
    """The parallel-coordinates view as a PNG: each axis spans its key's values, lines coloured by val/best_loss."""
    runs = table[np.isfinite(_best_per_run(table))]
    best = _best_per_run(runs).to_numpy()
    columns, ticks = [], []
    for key in [*keys, RANK_BY]:
        x, categories = axis_positions(runs[key])
        low, high = (x.min(), x.max()) if len(x) else (0.0, 1.0)
        span = high - low or 1.0
        columns.append((x - low) / span)
        labels = categories or [f"{v:.4g}" for v in sorted(set(x))]
        positions = sorted(set(x)) if categories is None else range(len(categories))
        ticks.append([((p - low) / span, label) for p, label in zip(positions, labels)])
    fig = Figure(figsize=(2.2 * len(columns) + 1.5, 4.2))
    ax = fig.add_subplot()
    norm = matplotlib.colors.Normalize(best.min(), best.max()) if len(best) else None
    cmap = matplotlib.colormaps["viridis_r"]
    for i, value in enumerate(best):
        ax.plot(range(len(columns)), [c[i] for c in columns], color=cmap(norm(value)), lw=1.5, alpha=0.8)
    for j, axis_ticks in enumerate(ticks):
        ax.axvline(j, color="0.5", lw=0.8)
        for y, label in axis_ticks:
            ax.text(j + 0.03, y, label, fontsize=8, va="center")
    ax.set_xticks(range(len(columns)), [*keys, RANK_BY])
    ax.set_yticks([])
    ax.set_ylim(-0.05, 1.05)
    if norm is not None:
        fig.colorbar(matplotlib.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, label=f"{RANK_BY} (nats/char)")
    ax.set_title(f"swept keys -> {RANK_BY} ({len(best)} runs)")
    fig.tight_layout()
    return fig


def _fragment(fig: go.Figure, div_id: str, with_plotlyjs: bool) -> str:
    return fig.to_html(full_html=False, include_plotlyjs=with_plotlyjs, div_id=div_id, config={"displaylogo": False})


def report_page(table: pd.DataFrame, histories: dict, title: str, keys: list[str]) -> str:
    """The whole report as one HTML document with plotly.js inline; ``keys``: the swept params."""
    counts = table["status"].value_counts()
    summary = ", ".join(f"{n} {status.lower()}" for status, n in counts.items())
    board = leaderboard(table, top=len(table)).to_html(
        index=False, float_format=lambda v: f"{v:.4f}", na_rep="-", border=0
    )
    multiples = [
        _fragment(curve_multiples(table, histories, key), CURVES_DIV.format(i), i == 0)
        for i, key in enumerate(keys or [None])
    ]
    parts = [
        f"<h1>{html.escape(title)}</h1>",
        f"<p>{len(table)} runs: {html.escape(summary)}. {RANK_BY} is the lowest val/loss during a run, "
        "in nats per character; hover a point to name its run.</p>",
        "<h2>Leaderboard</h2>",
        f'<div class="wide">{board}</div>',
        "<h2>Validation curves, coloured by each swept key in turn</h2>",
        f'<div class="multiples">{"".join(multiples)}</div>',
    ]
    if keys:
        parts += [
            f"<h2>{RANK_BY} against each swept key</h2>",
            _fragment(best_against_keys(table, keys), "best-vs-keys", False),
            f"<h2>Swept keys to {RANK_BY}</h2>",
            "<p>Drag along an axis to pick a range of its values.</p>",
            _fragment(parallel_keys(table, keys), "parallel", False),
        ]
    body = "\n".join(parts)
    return (
        f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{PAGE_STYLE}</style></head>\n<body>\n{body}\n</body></html>\n"
    )


def write_sweep_report(
    table: pd.DataFrame, histories: dict, out: Path, title: str, keys: list[str] | None = None
) -> list[Path]:
    """Write report.html, runs.csv, leaderboard.md, curves.png and, when the runs differ in some param,
    val_loss_vs_params.png and parallel.png into ``out``; returns the files written. ``keys``: the swept params
    in the order the figures take them (default: :func:`swept_params`' order)."""
    out.mkdir(parents=True, exist_ok=True)
    keys = swept_params(table) if keys is None else keys
    page = out / REPORT_PAGE
    page.write_text(report_page(table, histories, title, keys), encoding="utf-8")
    table.to_csv(out / "runs.csv", index=False)
    (out / "leaderboard.md").write_text(markdown_table(leaderboard(table, top=len(table))), encoding="utf-8")
    files = [
        page,
        out / "runs.csv",
        out / "leaderboard.md",
        save_figure(curves_figure(table, histories, keys), out / "curves.png"),
    ]
    if keys:
        files.append(save_figure(metric_vs_params_figure(table, keys), out / "val_loss_vs_params.png"))
        files.append(save_figure(parallel_figure(table, keys), out / "parallel.png"))
    return files
