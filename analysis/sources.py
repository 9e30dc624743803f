"""Where an analysis gets its model and text: a checkpoint file (the model, and the corpus and split its run
recorded), and a text from a file, a literal string or a named corpus. An MLflow run's checkpoint and params
come through :func:`charrnn_experiments.runs.model_from_run` into the same :class:`Model`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from charrnn.checkpoint import load_checkpoint
from charrnn.corpora import load_corpus, load_text
from charrnn.data import Vocab, split_corpus
from charrnn.model import ModelConfig

from .errors import AnalysisError

# The keys that name a run's corpus and split: charrnn-train's config keys, which it logs as the run's params and
# writes into every checkpoint's metadata, so an analysis rebuilds the run's own validation split from either.
DATA_NAME, DATA_PATH, VAL_FRACTION, SEQ_LENGTH = "data.name", "data.path", "train.val_fraction", "train.seq_length"
DATA_KEYS = (DATA_NAME, DATA_PATH, VAL_FRACTION, SEQ_LENGTH)
DEFAULT_VAL_FRACTION = 0.1  # the harness's train.val_fraction default, for checkpoints that do not say


@dataclass
class Model:
    params: dict[str, np.ndarray]
    config: ModelConfig
    vocab: Vocab
    source: dict = field(default_factory=dict)  # run_id / checkpoint / tracking_uri: provenance for the recording
    data: dict = field(default_factory=dict)  # the run's data.* and train.* params, to rebuild its split


def model_from_checkpoint(path: str) -> Model:
    ckpt = load_checkpoint(path)  # CheckpointError for missing, foreign or pickled files
    # charrnn-train records data.* and the split in the checkpoint's metadata; other checkpoints fall back
    # to pystdlib's default split in validation_text
    data = {k: v for k, v in ckpt.metadata.items() if v is not None}
    # and how it evaluated (eval_batch_size, eval_max_chars), as train.* keys like the run's params
    data.update(
        {f"train.{k}": v for k, v in ckpt.train_config.items() if k.startswith("eval_") and f"train.{k}" not in data}
    )
    return Model(ckpt.params, ckpt.model_config, ckpt.vocab, {"checkpoint": str(Path(path).resolve())}, data)


def validation_text(model: Model, data: str | None = None, data_path: str | None = None) -> tuple[str, int, str]:
    """The model's own validation split -- the run's corpus and split when known -- as (text, offset of the
    text in its corpus, description). ``data``/``data_path`` name another corpus."""
    name = data or model.data.get(DATA_NAME) or "pystdlib"
    path = data_path or (model.data.get(DATA_PATH) if not data else None)
    path = None if path in (None, "None", "null", "") else path
    val_fraction = float(model.data.get(VAL_FRACTION, DEFAULT_VAL_FRACTION))
    seq_length = int(model.data.get(SEQ_LENGTH, 25))
    corpus = load_corpus(name, path)
    train, val = split_corpus(corpus, val_fraction, seq_length)
    if not val:
        raise AnalysisError(f"the run has no validation split (val_fraction={val_fraction}); pass text=<file>")
    # a corpus of files holds out whole files (split_corpus): offsets then count in its training files, then these
    held_out = " (whole files held out across it)" if corpus.file_starts else ""
    return val, len(train), f"validation split of {corpus.name}{held_out} ({corpus.source})"


def choose_text(
    model: Model, text: str | None, string: str | None, data: str | None, data_path: str | None
) -> tuple[str, int, str]:
    """(text, offset in its source, description) from at most one of text=<file>, string=..., data=<corpus>."""
    given = [name for name, value in (("text", text), ("string", string)) if value is not None]
    if len(given) > 1 or (given and (data or data_path)):
        raise AnalysisError("give at most one of text=<file>, string=<text>, data=<corpus>")
    if text is not None:
        return load_text(text), 0, str(Path(text).resolve())
    if string is not None:
        # A shell makes typing a newline awkward, so the two escapes a text needs are understood.
        return string.replace("\\n", "\n").replace("\\t", "\t"), 0, "string"
    return validation_text(model, data, data_path)
