"""Tables out: CSV for tools, GitHub markdown for people (pandas' ``to_markdown`` needs the optional
``tabulate``, so the few lines it takes are here)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd


def markdown_table(table: pd.DataFrame, floatfmt: str = ".3f") -> str:
    """The table as GitHub markdown; floats formatted with ``floatfmt``, nan as an empty cell."""

    def cell(v) -> str:
        if isinstance(v, float | np.floating):
            return "" if np.isnan(v) else format(v, floatfmt)
        return str(v).replace("|", "\\|")

    lines = ["| " + " | ".join(map(str, table.columns)) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def write_table(table: pd.DataFrame, stem: str | Path) -> tuple[Path, Path]:
    """``stem``.csv and ``stem``.md side by side; returns both paths."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    csv, md = stem.with_suffix(".csv"), stem.with_suffix(".md")
    table.to_csv(csv, index=False)
    md.write_text(markdown_table(table), encoding="utf-8")
    return csv, md
