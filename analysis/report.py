"""Everything ``charrnn-analyze`` writes for one recording: the top-units table, the figures, the explorer and,
on request, an LSTMVis selection -- as files in one folder, so the caller can log the folder to a run."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from .explorer import write_explorer
from .figures import SIGMOID_GATES, plot_gate_saturation, plot_gradient_flow, plot_heatmap, plot_text_activation
from .ranking import rank_units, select_units
from .record import Recording
from .sources import Model
from .tables import write_table

TEXT_FIGURE_WIDTH, TEXT_FIGURE_LINES = 80, 30


@dataclass
class ReportOptions:
    features: list[str] | None = None  # None: every registered feature
    top_k: int = 5
    states: list[str] | None = None  # None: the recording's default (c for LSTM, else h)
    units: list[str] = field(default_factory=list)  # extra units to draw, e.g. ["c.0:17"]
    select: tuple[int, int] | None = None  # LSTMVis range [start, end) in the recorded text
    margin: int | None = None
    threshold: float = 0.3
    heatmap_length: int = 120
    html_chars: int = 4000
    grad_steps: int = 50
    grad_batch: int = 4


@dataclass
class Report:
    top_units: pd.DataFrame
    selection: pd.DataFrame | None
    files: list[Path]


def _file_name(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", label)


def write_report(recording: Recording, out: Path, options: ReportOptions, model: Model | None = None) -> Report:
    out = Path(out)
    figures = out / "figures"
    text = recording.text
    A, labels = recording.unit_matrix(options.states)
    files: list[Path] = []

    top = rank_units(A, labels, text, options.features, options.top_k)
    files += write_table(top, out / "top_units")
    selection = None
    if options.select is not None:
        start, end = options.select
        selection = select_units(A, labels, start, end, options.margin, options.threshold)
        files += write_table(selection, out / "selection")

    shown = TEXT_FIGURE_WIDTH * TEXT_FIGURE_LINES
    best = top[top["rank"] == 1]
    for row in best.itertuples(index=False):
        u = labels.index(row.unit)
        title = f"{row.feature}: unit {row.unit} (score {row.score:.2f}, sign {row.sign:+d})"
        files.append(plot_text_activation(text[:shown], A[:shown, u], figures / f"text_{row.feature}.png", title,
                                          TEXT_FIGURE_WIDTH, TEXT_FIGURE_LINES))
    for label in options.units:
        values = recording.unit(label)
        files.append(plot_text_activation(text[:shown], values[:shown], figures / f"unit_{_file_name(label)}.png",
                                          f"unit {label}", TEXT_FIGURE_WIDTH, TEXT_FIGURE_LINES))

    n = options.heatmap_length
    for state in options.states or [recording.default_state]:
        for layer in range(recording.num_layers):
            values = recording.layer(state, layer)[:n]
            files.append(plot_heatmap(values, text[:n], figures / f"heatmap_{state}{layer}.png",
                                      f"{state} (layer {layer}) over the first {len(values)} characters"))
    if recording.cell in SIGMOID_GATES:
        files.append(plot_gate_saturation(recording, figures / "gate_saturation.png"))
    if model is not None:
        batch = _gradient_batch(model, text, options.grad_steps, options.grad_batch)
        if batch is not None:
            files.append(plot_gradient_flow(model.params, model.config, *batch, figures / "gradient_flow.png"))

    m = options.html_chars
    title = f"charrnn explorer: {recording.meta.get('run_id') or recording.meta.get('checkpoint', '')}"
    files.append(write_explorer(out / "explorer.html", text[:m], A[:m], labels, top, title,
                                int(recording.offsets[0])))
    return Report(top, selection, files)


def _gradient_batch(model: Model, text: str, steps: int, batch: int):
    """(inputs, targets), each (T, B), from consecutive windows at the start of the text; None if too short."""
    batch = min(batch, len(text) // (steps + 1))
    if batch < 1:
        return None
    ix = model.vocab.encode(text[: batch * (steps + 1)]).reshape(batch, steps + 1).T  # (T+1, B)
    return ix[:-1], ix[1:]
