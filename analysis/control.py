"""Cells found, not hoped for: each feature's best unit on the real text against two controls.

- shuffled text: the same model on the same slice with the characters of every line permuted (a fixed seed).
  Line lengths and each line's characters stay, the structure goes. The features are computed on the shuffled
  text too, so a feature the shuffle destroys (quotes, brackets) is measured against what is left of it, and the
  control measures the model, not the feature;
- untrained model: a model of the same shape at its initial weights (``init_params``, fixed seed) on the real text:
  what a random network's units give by chance.

Scores are the ranking's (:func:`rank_units`): |r| for continuous features, |AUC - 0.5| x 2 for binary ones. The
paper's bar is |r| >= 0.8 or AUC >= 0.95 (or <= 0.05: a unit that switches off), i.e. a score >= 0.8 or >= 0.9.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from charrnn.model import init_params

from .features import compute_features
from .ranking import rank_units
from .record import Recording, record
from .sources import Model

CONTROL_SEED = 0
PAPER_BAR = {"continuous": 0.8, "binary": 0.9}  # score = |r|; score = |AUC - 0.5| x 2, so AUC >= 0.95 is 0.9
SCORE_CONVENTION = (
    "score: |r| (continuous) or |AUC-0.5|x2 (binary); the paper's bar: |r| >= 0.8 or "
    "AUC >= 0.95 / <= 0.05 (score >= 0.9)"
)


def shuffle_within_lines(text: str, seed: int = CONTROL_SEED) -> str:
    """``text`` with the characters of each line permuted; newlines stay where they are."""
    rng = np.random.default_rng(seed)
    return "\n".join("".join(line[i] for i in rng.permutation(len(line))) for line in text.split("\n"))


def _best(recording: Recording, states: list[str] | None, features: list[str] | None) -> pd.DataFrame:
    A, labels = recording.unit_matrix(states)
    return rank_units(A, labels, recording.text, features, top_k=1).set_index("feature")


def control_table(
    top_units: pd.DataFrame, recording: Recording, model: Model, states: list[str] | None = None
) -> pd.DataFrame:
    """One row per feature of ``top_units`` (:func:`rank_units` on ``recording``): its best unit and score on the
    recorded text, the best score on each control, the fraction of characters whose feature value the shuffle
    changed, and whether the paper's bar is met."""
    real = top_units[top_units["rank"] == 1].set_index("feature")
    features = list(real.index)
    dtype, chunk = recording.meta.get("dtype", "float16"), int(recording.meta.get("chunk_size", 1024))
    shuffled_text = shuffle_within_lines(recording.text)
    shuffled = record(model.params, model.config, model.vocab, shuffled_text, chunk, dtype)
    untrained_params = init_params(model.config, np.random.default_rng(CONTROL_SEED))
    untrained = record(untrained_params, model.config, model.vocab, recording.text, chunk, dtype)
    on_shuffled, on_untrained = _best(shuffled, states, features), _best(untrained, states, features)
    before, after = compute_features(recording.text, features), compute_features(shuffled_text, features)
    rows = []
    for feature, row in real.iterrows():
        rows.append(
            {
                "feature": feature,
                "kind": row.kind,
                "best unit": row.unit,
                "score": row.score,
                "r or AUC": row.r if row.kind == "continuous" else row.auc,
                "shuffled-text score": on_shuffled.loc[feature, "score"],
                "untrained score": on_untrained.loc[feature, "score"],
                "feature changed by shuffle": float(np.mean(before[feature] != after[feature])),
                "matches the paper": "yes" if row.score >= PAPER_BAR[row.kind] else "no",
            }
        )
    return pd.DataFrame(rows)
