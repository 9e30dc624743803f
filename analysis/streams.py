"""The validation loss stream by stream, measured as charrnn-train measures val/loss: B contiguous streams over the
head of the validation text, each from the zero state. One stream a model reads badly (an LSTM whose cell state,
from a cold start at an unlucky place, runs away and never recovers) lifts val/loss while the rest read well."""

from __future__ import annotations

import pandas as pd

from charrnn.train import TrainConfig, evaluate_streams

from .sources import SEQ_LENGTH, Model

# charrnn-train's keys for how it evaluates, as a run logs them and checkpoints keep them
EVAL_BATCH_SIZE, EVAL_MAX_CHARS = "train.eval_batch_size", "train.eval_max_chars"


def _setting(model: Model, key: str, default: int | None) -> int | None:
    value = model.data.get(key, default)
    return None if value in (None, "None", "null") else int(value)


def validation_streams(model: Model, text: str, offset: int) -> pd.DataFrame:
    """One row per stream: where it starts in the corpus, the characters it predicts and its loss (nats/char),
    with the settings of the model's run (the engine's defaults where the run does not say)."""
    defaults = TrainConfig()
    batch_size = _setting(model, EVAL_BATCH_SIZE, defaults.eval_batch_size)
    seq_length = _setting(model, SEQ_LENGTH, defaults.seq_length)
    max_chars = _setting(model, EVAL_MAX_CHARS, defaults.eval_max_chars)
    streams = evaluate_streams(model.params, model.config, model.vocab.encode(text), batch_size, seq_length, max_chars)
    return pd.DataFrame(
        {
            "stream": range(len(streams.starts)),
            "start": offset + streams.starts,
            "chars": streams.chars,
            "loss": streams.per_stream,
        }
    )


def streams_summary(table: pd.DataFrame, offset: int) -> str:
    """Two lines for the terminal: the mean (val/loss) beside the median and the worst stream, and how to record
    the worst one from its cold start."""
    loss = (table["loss"] * table["chars"]).sum() / table["chars"].sum()
    worst = table.loc[table["loss"].idxmax()]
    length = int(worst["chars"]) + 1
    return (
        f"validation loss by stream ({len(table)} streams of {length} characters, as charrnn-train evaluates): "
        f"val/loss {loss:.4f}, median stream {table['loss'].median():.4f}, worst stream {int(worst['stream'])} "
        f"{worst['loss']:.4f} (from character {int(worst['start'])})\n"
        f"record the worst stream from its cold start: record.start={int(worst['start']) - offset} "
        f"record.length={length}\n"
    )
