"""One self-contained HTML file to browse a recording: the text coloured by any unit picked from a list, and the
top units per feature beside it with the sign and strength of their relation (click one to show it). No network
access: data, script and style are inline.

Activations are quantised to int8 (value * 127) and embedded base64. The whole recording is embedded up to
:data:`MAX_VALUES` characters x units (a few MB); a larger one is cut to its first characters, and the page says so.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import AnalysisError
from .figures import TEXT_CMAP

MAX_VALUES = 8_000_000  # characters x units embedded: about 11 MB of base64

_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>__TITLE__</title>
<style>
body { font-family: sans-serif; margin: 1em; display: flex; gap: 1.5em; }
#left { flex: 3; min-width: 0; } #right { flex: 1; min-width: 28em; font-size: 12px; }
#text { font-family: monospace; white-space: pre-wrap; word-break: break-all; line-height: 1.5; font-size: 13px;
        border: 1px solid #ccc; padding: .5em; }
#units { width: 100%; font-family: monospace; }
table { border-collapse: collapse; } td, th { padding: 1px 6px; text-align: left; white-space: nowrap; }
tr.unit-row { cursor: pointer; } tr.unit-row:hover { background: #eef; }
#bar, #extent { margin: .4em 0; font-size: 12px; } #help { color: #444; }
</style></head><body>
<div id="left">
  <h3>__TITLE__</h3>
  <p id="extent">__EXTENT__</p>
  <div id="bar">unit <b id="current"></b> &middot; <span id="legend">red = &minus;1, white = 0, blue = +1</span>
    &middot; <span id="hover">hover a character: its position in the corpus and the unit's value</span></div>
  <div id="text"></div>
</div>
<div id="right">
  <label for="units">units</label><br>
  <select id="units" size="16">__OPTIONS__</select>
  <h4>top units per feature</h4>
  <table id="top"><tr><th>feature</th><th>#</th><th>unit</th><th>sign</th>
    <th title="Pearson r for continuous features, ROC AUC for binary ones">r / AUC</th>
    <th title="|r|, or |AUC - 0.5| x 2: 0 = unrelated, 1 = perfect">strength</th></tr>__ROWS__</table>
  <p id="help">
    <b>sign</b> +: the unit is higher (bluer) where the feature is on or high; &minus;: lower (redder).<br>
    <b>r</b>: Pearson correlation with a continuous feature (line position, bracket depth, indentation).<br>
    <b>AUC</b>: for an on/off feature, the chance that a character with the feature on has a higher unit value
    than one with it off: 0.5 = unrelated, 1 = always higher, 0 = always lower.<br>
    <b>strength</b>: what the ranking sorts by, |r| or |AUC &minus; 0.5| &times; 2, from 0 to 1.</p>
</div>
<script id="data" type="application/json">__DATA__</script>
<script>
const data = JSON.parse(document.getElementById("data").textContent);
const raw = atob(data.values);
const values = new Int8Array(raw.length);
for (let i = 0; i < raw.length; i++) values[i] = raw.charCodeAt(i) << 24 >> 24;
const n = data.text.length, textDiv = document.getElementById("text"), spans = [];
for (const ch of data.text) {
  const span = document.createElement("span");
  span.textContent = ch === "\\n" ? "\\u21b5\\n" : ch;
  textDiv.appendChild(span); spans.push(span);
}
let current = 0;
function colour(v) {  // v in [-1, 1]: blend white towards red (-1) or blue (+1), the figures' colours
  const a = Math.min(Math.abs(v), 1), end = v < 0 ? data.red : data.blue;
  return "rgb(" + end.map(c => Math.round(255 + (c - 255) * a)).join(",") + ")";
}
function show(u) {
  current = u;
  const base = u * n;
  for (let t = 0; t < n; t++) spans[t].style.background = colour(values[base + t] / 127);
  document.getElementById("current").textContent = data.units[u];
  document.getElementById("units").value = String(u);
}
spans.forEach((span, t) => span.addEventListener("mouseenter", () => {
  document.getElementById("hover").textContent =
    "corpus character " + (data.offsets0 + t) + " (recorded character " + t + "): " + JSON.stringify(data.text[t]) +
    ", unit value " + (values[current * n + t] / 127).toFixed(2);
}));
document.getElementById("units").addEventListener("change", e => show(Number(e.target.value)));
document.querySelectorAll("tr.unit-row").forEach(row =>
  row.addEventListener("click", () => show(Number(row.dataset.unit))));
show(data.initial);
</script></body></html>
"""


def write_explorer(
    path: str | Path,
    text: str,
    A: np.ndarray,
    labels: list[str],
    top_units: pd.DataFrame | None = None,
    title: str = "charrnn explorer",
    offset: int = 0,
    source: str = "its source text",
) -> Path:
    """Write the explorer for text (N chars) and activations ``A`` (N, U) in [-1, 1] named by ``labels``.

    ``top_units`` is a table from :func:`ranking.rank_units`; its strongest unit is shown on opening. ``offset`` is the
    position of ``text`` in ``source``, shown on hover.
    """
    A = np.asarray(A, dtype=np.float32)
    if A.shape != (len(text), len(labels)):
        raise AnalysisError(f"activations {A.shape} do not match {len(text)} characters and {len(labels)} units")
    shown = min(len(text), MAX_VALUES // max(len(labels), 1))
    extent = (
        f"All {len(text)} recorded characters"
        if shown == len(text)
        else f"The first {shown} of the {len(text)} recorded characters (the rest would make this file too large)"
    )
    extent += (
        f": characters {offset}-{offset + len(text) - 1} of {source}. Hovering shows a character's position "
        "in that text and in the recording."
    )
    quantised = np.round(np.clip(A[:shown], -1.0, 1.0) * 127).astype(np.int8)
    index = {label: u for u, label in enumerate(labels)}
    rows = []
    top_units = (
        top_units
        if top_units is not None
        else pd.DataFrame(columns=["feature", "kind", "rank", "unit", "score", "r", "auc", "sign"])
    )
    for row in top_units.itertuples(index=False):
        if row.unit in index:
            value = f"AUC {row.auc:.2f}" if row.kind == "binary" else f"r {row.r:+.2f}"
            rows.append(
                f'<tr class="unit-row" data-unit="{index[row.unit]}"><td>{html.escape(row.feature)}</td>'
                f"<td>{row.rank}</td><td>{html.escape(row.unit)}</td><td>{'+' if row.sign > 0 else '&minus;'}</td>"
                f"<td>{value}</td><td>{row.score:.2f}</td></tr>"
            )
    # open on the strongest unit of the table, whichever feature it tracks
    initial = (
        index.get(top_units["unit"].iloc[int(np.argmax(top_units["score"].to_numpy(float)))], 0)
        if len(top_units)
        else 0
    )
    red, blue = (np.round(np.asarray(TEXT_CMAP(x)[:3]) * 255).astype(int).tolist() for x in (0.0, 1.0))
    data = {
        "text": text[:shown],
        "units": labels,
        "offsets0": int(offset),
        "initial": int(initial),
        "red": red,
        "blue": blue,
        "values": base64.b64encode(np.ascontiguousarray(quantised.T).tobytes()).decode("ascii"),
    }
    # A "<" in the text could end the data's script element early ("</script>"); \u003c is the same to JSON.
    payload = json.dumps(data, ensure_ascii=True).replace("<", "\\u003c")
    options = "".join(f'<option value="{u}">{html.escape(label)}</option>' for u, label in enumerate(labels))
    page = (
        _PAGE.replace("__TITLE__", html.escape(title))
        .replace("__EXTENT__", html.escape(extent))
        .replace("__OPTIONS__", options)
        .replace("__ROWS__", "".join(rows))
        .replace("__DATA__", payload)
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path
