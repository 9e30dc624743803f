"""Everything ``charrnn-analyze`` writes for one recording: the top-units table, the figures, the explorer and,
on request, an LSTMVis selection -- as files in one folder, so the caller can log the folder to a run."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .control import control_table
from .explorer import write_explorer
from .features import compute_features
from .figures import (
    SIGMOID_GATES,
    gate_saturation_figure,
    gate_saturation_table,
    gradient_flow_figure,
    heatmap_figure,
    save_figure,
    text_activation_figure,
    varying_window,
)
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
    grad_steps: int = 50
    grad_batch: int = 4
    control: bool = True  # rank the units again on the controls (needs the model)


@dataclass
class Report:
    top_units: pd.DataFrame
    selection: pd.DataFrame | None
    files: list[Path]
    control: pd.DataFrame | None = None  # each feature's best unit against the controls (control.py)
    saturation: pd.DataFrame | None = None  # per layer and gate, the mean saturated fractions (LSTM, GRU)


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

    offset0 = int(recording.offsets[0])
    best = top[top["rank"] == 1]
    for row in best.itertuples(index=False):
        u = labels.index(row.unit)
        signal = compute_features(text, [row.feature])[row.feature]
        start, end = varying_window(signal, text, TEXT_FIGURE_WIDTH, TEXT_FIGURE_LINES)
        binary = row.kind == "binary"
        title = feature_title(row, offset0 + start, offset0 + end, bool(np.ptp(signal)))
        figure = text_activation_figure(
            text[start:end],
            A[start:end, u],
            title,
            TEXT_FIGURE_WIDTH,
            TEXT_FIGURE_LINES,
            signal[start:end] if binary else None,
            f"underlined: {row.feature}",
        )
        files.append(save_figure(figure, figures / f"text_{row.feature}.png"))
    shown = TEXT_FIGURE_WIDTH * TEXT_FIGURE_LINES
    for label in options.units:
        values = recording.unit(label)
        title = f"unit {label} from character {offset0} of the corpus"
        figure = text_activation_figure(text[:shown], values[:shown], title, TEXT_FIGURE_WIDTH, TEXT_FIGURE_LINES)
        files.append(save_figure(figure, figures / f"unit_{_file_name(label)}.png"))

    n = options.heatmap_length
    for state in options.states or [recording.default_state]:
        for layer in range(recording.num_layers):
            values = recording.layer(state, layer)[:n]
            title = f"{state} (layer {layer}): every unit over the first {len(values)} recorded characters"
            files.append(
                save_figure(heatmap_figure(values, text[:n], title, offset0), figures / f"heatmap_{state}{layer}.png")
            )
    saturation = control = None
    if recording.cell in SIGMOID_GATES:
        files.append(save_figure(gate_saturation_figure(recording), figures / "gate_saturation.png"))
        saturation = gate_saturation_table(recording)
        files += write_table(saturation, out / "gate_saturation")
    if model is not None and options.control:
        control = control_table(top, recording, model, options.states)
        files += write_table(control, out / "control")
    if model is not None:
        batch = _gradient_batch(model, text, options.grad_steps, options.grad_batch)
        if batch is not None:
            files.append(
                save_figure(gradient_flow_figure(model.params, model.config, *batch), figures / "gradient_flow.png")
            )

    title = explorer_title(recording)
    files.append(
        write_explorer(
            out / "explorer.html",
            text,
            A,
            labels,
            top,
            title,
            offset0,
            recording.meta.get("text_source", "its source text"),
        )
    )
    return Report(top, selection, files, control, saturation)


def feature_title(row, first: int, end: int, varies: bool) -> str:
    """What a feature's text figure shows: the unit, how well it tracks the feature and which colour means what."""
    if not varies:
        return (
            f"{row.feature}: constant over the recorded text (no unit can track it); unit {row.unit}, "
            f"corpus characters {first}-{end - 1}"
        )
    if row.kind == "binary":
        measure = f"AUC {row.auc:.2f} (score |AUC-0.5|x2 = {row.score:.2f})"
        where = "inside the feature"
    else:
        measure = f"Pearson r = {row.r:+.2f}"
        where = "where the feature is high"
    colour = "blue (+)" if row.sign > 0 else "red (-)"
    return (
        f"{row.feature}: unit {row.unit}, {measure}; corpus characters {first}-{end - 1}\n"
        f"the window where {row.feature} varies most; the unit leans {colour} {where}"
    )


def _gradient_batch(model: Model, text: str, steps: int, batch: int):
    """(inputs, targets), each (T, B), from consecutive windows at the start of the text; None if too short."""
    batch = min(batch, len(text) // (steps + 1))
    if batch < 1:
        return None
    ix = model.vocab.encode(text[: batch * (steps + 1)]).reshape(batch, steps + 1).T  # (T+1, B)
    return ix[:-1], ix[1:]


def explorer_title(recording: Recording) -> str:
    """What the page shows, as a reader names it: the model, the text, then where it came from."""
    meta = recording.meta
    where = f"run {meta['run_id']}" if meta.get("run_id") else Path(meta.get("checkpoint", "")).name or "a recording"
    return (
        f"{recording.cell} {recording.num_layers}x{meta.get('hidden_size', '?')} on "
        f"{meta.get('text_source', 'its text')} ({where})"
    )
