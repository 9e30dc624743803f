"""One self-contained HTML file to browse a recording: the text coloured by any unit picked from a list, and the
top units per feature beside it (click one to show it). No network access: data, script and style are inline.

Activations are quantised to int8 (value * 127) and embedded base64, so a few thousand characters times a few
hundred units stay a few MB.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import AnalysisError

_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>__TITLE__</title>
<style>
body { font-family: sans-serif; margin: 1em; display: flex; gap: 1.5em; }
#left { flex: 3; min-width: 0; } #right { flex: 1; font-size: 12px; }
#text { font-family: monospace; white-space: pre-wrap; word-break: break-all; line-height: 1.5; font-size: 13px;
        border: 1px solid #ccc; padding: .5em; }
#units { width: 100%; font-family: monospace; }
table { border-collapse: collapse; } td, th { padding: 1px 6px; text-align: left; }
tr.unit-row { cursor: pointer; } tr.unit-row:hover { background: #eef; }
#bar { margin: .4em 0; font-size: 12px; }
</style></head><body>
<div id="left">
  <h3>__TITLE__</h3>
  <div id="bar">unit <b id="current"></b> &middot; red = &minus;1, white = 0, blue = +1 &middot;
    <span id="hover">hover a character</span></div>
  <div id="text"></div>
</div>
<div id="right">
  <label for="units">units</label><br>
  <select id="units" size="16">__OPTIONS__</select>
  <h4>top units per feature</h4>
  <table id="top"><tr><th>feature</th><th>#</th><th>unit</th><th>score</th></tr>__ROWS__</table>
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
function colour(v) {  // v in [-1, 1]: blend white towards red (-1) or blue (+1)
  const a = Math.min(Math.abs(v), 1), end = v < 0 ? [202, 0, 32] : [5, 113, 176];
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
    "char " + (data.offsets0 + t) + ": " + JSON.stringify(data.text[t]) + " = " + (values[current * n + t] / 127).toFixed(2);
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
) -> Path:
    """Write the explorer for text (N chars) and activations ``A`` (N, U) in [-1, 1] named by ``labels``.

    ``top_units`` is a table from :func:`ranking.rank_units`; its first unit is shown on opening.
    """
    A = np.asarray(A, dtype=np.float32)
    if A.shape != (len(text), len(labels)):
        raise AnalysisError(f"activations {A.shape} do not match {len(text)} characters and {len(labels)} units")
    quantised = np.round(np.clip(A, -1.0, 1.0) * 127).astype(np.int8)
    index = {label: u for u, label in enumerate(labels)}
    rows = []
    top_units = top_units if top_units is not None else pd.DataFrame(columns=["feature", "rank", "unit", "score"])
    for row in top_units.itertuples(index=False):
        if row.unit in index:
            rows.append(
                f'<tr class="unit-row" data-unit="{index[row.unit]}"><td>{html.escape(row.feature)}</td>'
                f"<td>{row.rank}</td><td>{html.escape(row.unit)}</td><td>{row.score:.2f}</td></tr>"
            )
    initial = index.get(top_units["unit"].iloc[0], 0) if len(top_units) else 0
    data = {
        "text": text,
        "units": labels,
        "offsets0": int(offset),
        "initial": int(initial),
        "values": base64.b64encode(np.ascontiguousarray(quantised.T).tobytes()).decode("ascii"),
    }
    # A "<" in the text could end the data's script element early ("</script>"); \u003c is the same to JSON.
    payload = json.dumps(data, ensure_ascii=True).replace("<", "\\u003c")
    options = "".join(f'<option value="{u}">{html.escape(label)}</option>' for u, label in enumerate(labels))
    page = (
        _PAGE.replace("__TITLE__", html.escape(title))
        .replace("__OPTIONS__", options)
        .replace("__ROWS__", "".join(rows))
        .replace("__DATA__", payload)
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path
