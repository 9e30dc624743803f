"""PNG figures from recordings and models, drawn with matplotlib's object API on the Agg canvas.

``Figure`` objects are created directly instead of through ``pyplot``, so nothing here touches a global backend
or leaks open figures when called many times from a script or a test.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.colors import LinearSegmentedColormap, Normalize
from matplotlib.figure import Figure

from charrnn.model import ModelConfig

from .errors import AnalysisError
from .gradients import hidden_gradient_norms, recurrent_spectra
from .record import Recording

CELL_INCHES, ROW_INCHES = 0.1, 0.2  # one character's cell in the text figure
MONO_ADVANCE_EM = 0.602  # DejaVu Sans Mono's advance width, in em: fits a font size to the cells
ACTIVATION_LEGEND = "unit activation: red = -1, white = 0, blue = +1"
SATURATION_LOW, SATURATION_HIGH = 0.1, 0.9
SIGMOID_GATES = {"lstm": ("i", "f", "o"), "gru": ("r", "z")}  # tanh outputs (g, n) have no 0/1 saturation
# The paper's colours (-1 red, +1 blue) mixed half with white, so black text stays readable on every cell
# (WCAG contrast >= 4.5 against black); the explorer uses the same two end colours.
TEXT_CMAP = LinearSegmentedColormap.from_list(
    "RdBu_text", 0.5 + 0.5 * matplotlib.colormaps["RdBu"](np.linspace(0, 1, 256))[:, :3]
)
HEATMAP_CMAP = "RdBu"


def save_figure(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


def tick_label(ch: str) -> str:
    """A character as a heatmap tick label: layout characters spelled out so they can be seen."""
    return {"\n": "\\n", "\t": "\\t", " ": "\u2423"}.get(ch, ch)


def row_starts(text: str, line_width: int) -> list[int]:
    """Where each row of the text figure begins: after a newline, or after ``line_width`` characters of a long line."""
    starts, col = [0], 0
    for t, ch in enumerate(text[:-1]):
        col += 1
        if ch == "\n" or col == line_width:
            starts.append(t + 1)
            col = 0
    return starts


def varying_window(signal: np.ndarray, text: str, line_width: int, max_lines: int) -> tuple[int, int]:
    """[start, end) of the ``max_lines`` consecutive rows of ``text`` over which ``signal`` varies most (largest
    variance; the earliest such window), so a feature's figure shows the feature changing."""
    starts = row_starts(text, line_width)
    bounds = np.array(starts + [len(text)])
    k = min(max_lines, len(starts))
    signal = np.asarray(signal, dtype=np.float64)
    s1 = np.concatenate([[0.0], np.cumsum(signal)])
    s2 = np.concatenate([[0.0], np.cumsum(signal**2)])
    a, b = bounds[: len(starts) - k + 1], bounds[k:]
    n = b - a
    variance = (s2[b] - s2[a]) / n - ((s1[b] - s1[a]) / n) ** 2
    best = int(np.argmax(np.round(variance, 9)))  # rounding: equal windows tie, and the first wins
    return int(a[best]), int(b[best])


def text_grid(text: str, values: np.ndarray, line_width: int, max_lines: int) -> tuple[np.ndarray, list]:
    """Lay ``text`` out in lines as a reader sees it (wrapping at ``line_width``): a (rows, line_width) grid of
    values (nan where no character) and the (row, col, char) of every character placed."""
    grid = np.full((max_lines, line_width), np.nan)
    placed = []
    row = col = 0
    for ch, value in zip(text, values):
        if col == line_width:
            row, col = row + 1, 0
        if row == max_lines:
            break
        grid[row, col] = value
        placed.append((row, col, ch))
        if ch == "\n":
            row, col = row + 1, 0
        else:
            col += 1
    rows = row + 1 if col else row
    return grid[: max(rows, 1)], placed


def text_activation_figure(
    text: str,
    values: np.ndarray,
    title: str = "",
    line_width: int = 80,
    max_lines: int = 30,
    marks: np.ndarray | None = None,
    marks_label: str = "",
) -> Figure:
    """The paper's figure: each character's background coloured by one unit's activation in [-1, 1], with a
    colour bar; ``marks`` (0/1 per character, e.g. a binary feature) are underlined and named by ``marks_label``."""
    values = np.asarray(values, dtype=np.float64)
    if values.shape != (len(text),):
        raise AnalysisError(f"{values.shape[0]} activations for a text of {len(text)} characters")
    grid, placed = text_grid(text, values, line_width, max_lines)
    rows = grid.shape[0]
    top, bottom = 0.7, 1.0  # inches: title; colour bar and its label
    width, height = CELL_INCHES * line_width + 0.4, ROW_INCHES * rows + top + bottom
    fig = Figure(figsize=(width, height))
    ax = fig.add_axes((0.2 / width, bottom / height, 1 - 0.4 / width, 1 - (top + bottom) / height))
    image = ax.imshow(grid, cmap=TEXT_CMAP, norm=Normalize(-1, 1), aspect="auto", interpolation="nearest")
    # One monospace string per line, sized so one character advance is one cell: thousands of per-character
    # artists would make each figure take a second to draw.
    lines = [[" "] * line_width for _ in range(rows)]
    for row, col, ch in placed:
        lines[row][col] = "\u2192" if ch == "\t" else (" " if ch == "\n" else ch)
    fontsize = CELL_INCHES * 72 / MONO_ADVANCE_EM
    for row, line in enumerate(lines):
        ax.text(
            -0.5,
            row,
            "".join(line).rstrip(),
            ha="left",
            va="center",
            family="DejaVu Sans Mono",
            fontsize=fontsize,
            parse_math=False,
        )
    if marks is not None:
        on = [(row, col) for (row, col, _), mark in zip(placed, marks) if mark]
        ax.hlines(
            [row + 0.42 for row, _ in on],
            [col - 0.5 for _, col in on],
            [col + 0.5 for _, col in on],
            color="k",
            lw=1.0,
            label=marks_label,
        )
        if on:
            ax.legend(loc="lower right", bbox_to_anchor=(1.0, 1.0), fontsize=7, frameon=False, borderaxespad=0.1)
    ax.set_axis_off()
    ax.set_title(title, fontsize=9, loc="left", pad=14)
    bar = fig.add_axes((0.3 / width, 0.5 / height, min(3.0 / width, 0.5), 0.12 / height))
    fig.colorbar(image, cax=bar, orientation="horizontal", ticks=[-1, 0, 1])
    bar.tick_params(labelsize=7)
    bar.set_xlabel(ACTIVATION_LEGEND, fontsize=7)
    return fig


def heatmap_figure(
    values: np.ndarray, text: str, title: str = "", first_offset: int = 0, vmin: float = -1.0, vmax: float = 1.0
) -> Figure:
    """Units x time heatmap of a (T, H) window; the characters label the time axis when there are few enough.
    ``first_offset`` is the position of the window's first character in its corpus."""
    values = np.asarray(values, dtype=np.float64)
    T, H = values.shape
    fig = Figure(figsize=(min(max(T * 0.16, 6), 26), min(max(H * 0.12, 3), 16) + 0.6))  # 0.16 in: a 9 pt tick
    ax = fig.add_subplot()
    image = ax.imshow(values.T, cmap=HEATMAP_CMAP, norm=Normalize(vmin, vmax), aspect="auto", interpolation="nearest")
    fig.colorbar(image, ax=ax, fraction=0.03, label="activation (red -1, blue +1)")
    where = f"characters {first_offset}-{first_offset + T - 1} of the corpus"
    if T <= 160:
        ax.set_xticks(np.arange(T), [tick_label(c) for c in text[:T]], family="monospace", fontsize=9, parse_math=False)
        ax.set_xlabel(f"character read ({where})")
    else:
        ax.set_xlabel(f"character index in the window ({where})")
    ax.set_ylabel("unit")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def gate_saturation(recording: Recording) -> dict[tuple[int, str], tuple[np.ndarray, np.ndarray]]:
    """{(layer, gate): (fraction of steps < 0.1, fraction > 0.9)}, each (H,), for every sigmoid gate."""
    gates = SIGMOID_GATES.get(recording.cell)
    if not gates:
        raise AnalysisError(f"a {recording.cell!r} model has no gates to measure saturation on (lstm or gru only)")
    out = {}
    for layer in range(recording.num_layers):
        for gate in gates:
            values = recording.layer(gate, layer)
            out[layer, gate] = (values < SATURATION_LOW).mean(axis=0), (values > SATURATION_HIGH).mean(axis=0)
    return out


def gate_saturation_table(recording: Recording) -> pd.DataFrame:
    """Per layer and gate, the units' mean fraction of steps left-saturated (< 0.1), right-saturated (> 0.9) and
    in between."""
    rows = [
        {
            "layer": layer,
            "gate": gate,
            "units": len(left),
            f"mean fraction < {SATURATION_LOW}": left.mean(),
            f"mean fraction > {SATURATION_HIGH}": right.mean(),
            "mean fraction unsaturated": 1 - left.mean() - right.mean(),
        }
        for (layer, gate), (left, right) in gate_saturation(recording).items()
    ]
    return pd.DataFrame(rows)


def gate_saturation_figure(recording: Recording) -> Figure:
    """The paper's saturation plot: per unit, the fraction of steps left- against right-saturated, one panel per
    gate, one colour per layer."""
    saturation = gate_saturation(recording)
    gates = SIGMOID_GATES[recording.cell]
    fig = Figure(figsize=(3.6 * len(gates) + 0.6, 4.2))
    palette = matplotlib.colormaps["tab10"]
    for i, gate in enumerate(gates):
        ax = fig.add_subplot(1, len(gates), i + 1)
        ax.plot([0, 1], [1, 0], color="0.8", lw=0.8)  # x + y = 1: always saturated one way or the other
        for layer in range(recording.num_layers):
            left, right = saturation[layer, gate]
            ax.scatter(left, right, s=12, alpha=0.7, color=palette(layer % 10), label=f"layer {layer}")
        ax.set(
            xlim=(-0.02, 1.02),
            ylim=(-0.02, 1.02),
            xlabel=f"fraction left-saturated (< {SATURATION_LOW})",
            ylabel=f"fraction right-saturated (> {SATURATION_HIGH})",
            title=f"{gate} gate",
        )
        ax.legend(fontsize=7)
    fig.suptitle(
        f"gate saturation per unit ({recording.cell}, {len(recording.text)} characters)\n"
        "near a corner: a gate used as an on/off switch",
        fontsize=9,
    )
    fig.tight_layout()
    return fig


def gradient_flow_figure(
    params: dict[str, np.ndarray], config: ModelConfig, inputs: np.ndarray, targets: np.ndarray
) -> Figure:
    """Left: largest |eigenvalue| of each recurrent matrix (1 is the explode/vanish boundary). Right: the norm of
    dL/dh_t of the batch's final-step loss against t, per layer, on a log scale."""
    spectra = recurrent_spectra(params, config)
    norms = hidden_gradient_norms(params, config, inputs, targets, last_step_only=True)
    fig = Figure(figsize=(11, 4))
    ax = fig.add_subplot(1, 2, 1)
    radii = [np.abs(eig).max() for eig in spectra.values()]
    ax.barh(np.arange(len(radii)), radii, color="tab:blue")
    ax.set_yticks(np.arange(len(radii)), list(spectra), fontsize=7)
    ax.axvline(1.0, color="tab:red", lw=1)
    ax.invert_yaxis()
    ax.set(
        xlabel="largest |eigenvalue| of the block (red line: 1)",
        ylabel="recurrent matrix (Whh block)",
        title=f"recurrent spectra ({config.cell})",
    )
    ax = fig.add_subplot(1, 2, 2)
    for layer, curve in enumerate(norms):
        ax.semilogy(np.arange(len(curve)), np.maximum(curve, 1e-300), label=f"layer {layer}")
    ax.set(xlabel="t (loss at the last step)", ylabel="||dL/dh_t||", title="gradient flow back through time")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
