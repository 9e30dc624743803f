"""Rank units by how well they track a feature, and the LSTMVis range selection.

Activations come as one matrix ``A`` of shape (N, U): N characters, U units (any mix of layers and states, see
:meth:`Recording.unit_matrix`). Both scores are computed for all units at once with matrix products.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .errors import AnalysisError
from .features import compute_features, get_feature


def pearson_r(A: np.ndarray, signal: np.ndarray) -> np.ndarray:
    """Pearson r between each column of ``A`` (N, U) and ``signal`` (N,) -> (U,); 0 where either is constant."""
    A = np.asarray(A, dtype=np.float64)
    s = np.asarray(signal, dtype=np.float64) - np.mean(signal)
    A_centred = A - A.mean(axis=0)
    denom = np.sqrt((A_centred**2).sum(axis=0) * (s @ s))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (s @ A_centred) / denom
    return np.where(denom > 0, r, 0.0)


def average_ranks(A: np.ndarray) -> np.ndarray:
    """Ranks 1..N of each column of ``A`` (N, U), ties sharing their average rank (float16 recordings tie often)."""
    A = np.asarray(A)
    n = A.shape[0]
    order = np.argsort(A, axis=0, kind="stable")
    sorted_A = np.take_along_axis(A, order, axis=0)
    idx = np.arange(n, dtype=np.int32 if n < 2**31 else np.int64)[:, None]  # small ints: (N, U) temporaries
    new_group = np.ones_like(sorted_A, dtype=bool)
    new_group[1:] = sorted_A[1:] != sorted_A[:-1]
    ends_group = np.ones_like(new_group)
    ends_group[:-1] = new_group[1:]
    # First and last sorted position of each tie group, spread to every member by a running max/min.
    first = np.maximum.accumulate(np.where(new_group, idx, 0), axis=0)
    last = np.minimum.accumulate(np.where(ends_group, idx, n - 1)[::-1], axis=0)[::-1]
    ranks = np.empty(A.shape, dtype=np.float64)
    np.put_along_axis(ranks, order, (first + last) / 2.0 + 1.0, axis=0)
    return ranks


def roc_auc(A: np.ndarray, labels: np.ndarray, ranks: np.ndarray | None = None) -> np.ndarray:
    """ROC AUC of each column of ``A`` (N, U) as a score for binary ``labels`` (N,) -> (U,).

    Mann-Whitney form: AUC = (sum of positives' ranks - P(P+1)/2) / (P * Q). Pass ``ranks`` (from
    :func:`average_ranks`) to reuse them across features. 0.5 when one class is empty.
    """
    y = np.asarray(labels).astype(bool)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return np.full(np.shape(A)[1], 0.5)
    ranks = average_ranks(A) if ranks is None else ranks
    return (y.astype(np.float64) @ ranks - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


def rank_units(
    A: np.ndarray, labels: list[str], text: str, features: list[str] | None = None, top_k: int = 5
) -> pd.DataFrame:
    """The ``top_k`` units per feature as a long table.

    Columns: feature, kind, rank (1 = best), unit (label), score (|r| or |AUC - 0.5| * 2, in [0, 1], what the rank
    sorts by), r (Pearson, signed) or auc (binary features), sign (+1 unit rises with the feature, -1 falls).
    A unit that switches off inside quotes is as informative as one that switches on, hence the two-sided score.
    """
    A = np.asarray(A)
    if A.ndim != 2 or A.shape[0] != len(text) or A.shape[1] != len(labels):
        raise AnalysisError(f"activations {A.shape} do not match text length {len(text)} and {len(labels)} units")
    signals = compute_features(text, features)
    ranks = None
    rows = []
    for name, signal in signals.items():
        kind = get_feature(name).kind
        if kind == "binary":
            ranks = average_ranks(A) if ranks is None else ranks  # shared by every binary feature
            value = roc_auc(A, signal, ranks)
            score = np.abs(value - 0.5) * 2.0
        else:
            value = pearson_r(A, signal)
            score = np.abs(value)
        # Stable sort on -score: equal scores keep unit order, so the table is deterministic.
        for rank, u in enumerate(np.argsort(-score, kind="stable")[:top_k], start=1):
            rows.append(
                {
                    "feature": name,
                    "kind": kind,
                    "rank": rank,
                    "unit": labels[u],
                    "score": float(score[u]),
                    "r": float(value[u]) if kind == "continuous" else np.nan,
                    "auc": float(value[u]) if kind == "binary" else np.nan,
                    "sign": 1 if (value[u] >= (0.5 if kind == "binary" else 0.0)) else -1,
                }
            )
    return pd.DataFrame(rows, columns=["feature", "kind", "rank", "unit", "score", "r", "auc", "sign"])


def select_units(
    A: np.ndarray,
    labels: list[str],
    start: int,
    end: int,
    margin: int | None = None,
    threshold: float = 0.3,
    min_fraction: float = 1.0,
) -> pd.DataFrame:
    """LSTMVis selection: units on (>= ``threshold``) inside ``[start, end)`` and off around it.

    "Around" is ``margin`` characters on each side (default: the range's own length). A unit qualifies when at
    least ``min_fraction`` of the inside steps are on and of the around steps are off (1.0 is LSTMVis' strict
    rule). Units are sorted by mean inside minus mean around. Columns: unit, on_inside, off_around, mean_inside,
    mean_around, score.
    """
    A = np.asarray(A, dtype=np.float32)
    n = A.shape[0]
    if not (0 <= start < end <= n):
        raise AnalysisError(f"range {start}:{end} is out of bounds for a text of {n} characters")
    margin = end - start if margin is None else margin
    if margin < 0:
        raise AnalysisError(f"margin must be >= 0, got {margin}")
    inside = A[start:end]
    around = np.concatenate([A[max(start - margin, 0) : start], A[end : min(end + margin, n)]])
    on_inside = (inside >= threshold).mean(axis=0)
    off_around = (around < threshold).mean(axis=0) if len(around) else np.ones(A.shape[1])
    mean_around = around.mean(axis=0) if len(around) else np.zeros(A.shape[1])
    table = pd.DataFrame(
        {
            "unit": labels,
            "on_inside": on_inside,
            "off_around": off_around,
            "mean_inside": inside.mean(axis=0),
            "mean_around": mean_around,
        }
    )
    table["score"] = table["mean_inside"] - table["mean_around"]
    keep = (table["on_inside"] >= min_fraction) & (table["off_around"] >= min_fraction)
    return table[keep].sort_values("score", ascending=False, kind="stable").reset_index(drop=True)
