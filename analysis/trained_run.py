"""What every FINISHED training run records: its hidden state on a fixed slice of its validation text.

``charrnn-train`` plugs :class:`FinishedRunRecorder` into its trainer: once training has finished, it records the
final model (:func:`record_finished_run`) on the first ``record.length`` characters (from ``record.start``) of the
validation split -- the same slice for every run on the same data and split, so the runs of a sweep are compared
on the same characters -- ranks the units per feature, and logs ``analysis/recording.npz`` and
``analysis/top_units.csv``/``.md`` to the run.
``charrnn-compare`` reads those tables back for its per-feature unit scores.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from charrnn.data import Vocab
from charrnn.errors import CharRNNError
from charrnn.model import ModelConfig
from charrnn.train import Callback, Trainer, TrainResult

from .errors import AnalysisError
from .ranking import rank_units
from .record import STORED_DTYPES, Recording, record
from .tables import write_table

ARTIFACT_DIR = "analysis"  # the run's artifact folder for everything analysis writes
RECORDING_FILE = "recording.npz"
TOP_UNITS_STEM = "top_units"  # top_units.csv and top_units.md
TOP_K = 5  # units per feature in the logged table


@dataclass(frozen=True)
class RecordSettings:
    """The ``record.*`` keys (defaults in charrnn_experiments.schema.RecordSchema)."""

    start: int
    length: int
    chunk: int
    dtype: str

    @classmethod
    def from_config(cls, cfg: Mapping) -> RecordSettings:
        for key in ("start", "length", "chunk"):
            value = cfg[key]
            if isinstance(value, bool) or not isinstance(value, int) or value < (0 if key == "start" else 1):
                low = "an integer >= 0" if key == "start" else "a positive integer"
                raise AnalysisError(f"record.{key} must be {low}, got {value!r}")
        if cfg["dtype"] not in STORED_DTYPES:
            raise AnalysisError(f"record.dtype must be one of {', '.join(STORED_DTYPES)}, got {cfg['dtype']!r}")
        return cls(cfg["start"], cfg["length"], cfg["chunk"], str(cfg["dtype"]))


def slice_bounds(n_chars: int, settings: RecordSettings) -> tuple[int, int]:
    """[start, end) of the recorded slice of a text of ``n_chars`` characters."""
    if settings.start >= n_chars:
        raise AnalysisError(f"record.start={settings.start} is out of bounds for a text of {n_chars} characters")
    return settings.start, min(settings.start + settings.length, n_chars)


def record_slice(
    params: dict[str, np.ndarray],
    config: ModelConfig,
    vocab: Vocab,
    text: str,
    offset: int,
    settings: RecordSettings,
    meta: dict | None = None,
) -> Recording:
    """Record the ``record.*`` slice of ``text``; ``offset`` is the position of ``text`` in its corpus."""
    start, end = slice_bounds(len(text), settings)
    return record(params, config, vocab, text[start:end], settings.chunk, settings.dtype, offset + start, meta)


def record_finished_run(
    params: dict[str, np.ndarray],
    config: ModelConfig,
    vocab: Vocab,
    val_ix: np.ndarray | None,
    val_offset: int,
    record_cfg: Mapping | None,
    out_dir: Path,
    log_artifacts: Callable[[Path], None],
    run_seconds: float,
) -> pd.DataFrame | None:
    """Record the trained model on its validation slice, rank its units, write and log the files.

    ``val_ix`` is the encoded validation split (as the trainer holds it), ``val_offset`` its position in the corpus;
    ``record_cfg`` is the run's ``record`` config (``enabled: false`` turns this off); ``log_artifacts(folder)``
    logs a local folder's files under the run's ``analysis/``. Prints what it did and what it cost against the
    run's ``run_seconds``; returns the top-units table, or None when nothing was recorded.
    """
    if record_cfg is None or not record_cfg["enabled"]:
        return None
    if val_ix is None or not len(val_ix):
        print("hidden state not recorded: the run has no validation text (train.val_fraction=0)", flush=True)
        return None
    started = time.perf_counter()
    try:
        settings = RecordSettings.from_config(record_cfg)
        start, end = slice_bounds(len(val_ix), settings)
        print(f"recording the hidden state on {end - start} validation characters", flush=True)
        recording = record(
            params,
            config,
            vocab,
            vocab.decode(val_ix[start:end]),
            settings.chunk,
            settings.dtype,
            val_offset + start,
            {"text_source": "validation split", "params": "final"},
        )
    except CharRNNError as err:
        print(f"hidden state not recorded: {err}", flush=True)
        return None
    A, labels = recording.unit_matrix()
    top = rank_units(A, labels, recording.text, top_k=TOP_K)
    out_dir = Path(out_dir)
    recording.save(out_dir / RECORDING_FILE)
    write_table(top, out_dir / TOP_UNITS_STEM)
    log_artifacts(out_dir)
    seconds = time.perf_counter() - started
    share = f" ({100 * seconds / run_seconds:.1f}% of the {run_seconds:.1f} s of training)" if run_seconds > 0 else ""
    print(
        f"recorded the hidden state on {len(recording.text)} validation characters in {seconds:.2f} s{share}: "
        f"{ARTIFACT_DIR}/{RECORDING_FILE}, {ARTIFACT_DIR}/{TOP_UNITS_STEM}.csv",
        flush=True,
    )
    return top


class FinishedRunRecorder(Callback):
    """An engine callback: when a run ends finished (not diverged or interrupted), :func:`record_finished_run` on
    its trainer's final model, validation split and run time. It works in ``on_train_end``, after the callbacks
    before it in the list have seen the end."""

    def __init__(self, record_cfg: Mapping | None, out_dir: Path, log_artifacts: Callable[[Path], None]) -> None:
        """``record_cfg``, ``out_dir`` and ``log_artifacts`` as :func:`record_finished_run` takes them."""
        self.record_cfg, self.out_dir, self.log_artifacts = record_cfg, out_dir, log_artifacts
        self.trainer: Trainer | None = None

    def on_train_start(self, trainer: Trainer) -> None:
        self.trainer = trainer

    def on_train_end(self, result: TrainResult) -> None:
        if result.status != "finished":
            return
        t = self.trainer
        record_finished_run(
            t.params,
            t.model_config,
            t.vocab,
            t.val_ix,
            len(t.train_ix),
            self.record_cfg,
            self.out_dir,
            self.log_artifacts,
            result.elapsed_seconds,
        )
