"""Where an analysis gets its model and text: an MLflow run (its best checkpoint and its own validation split)
or a checkpoint file, and a text from a file, a literal string or a named corpus."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from mlflow import MlflowClient
from mlflow.environment_variables import MLFLOW_TRACKING_URI
from mlflow.exceptions import MlflowException

from charrnn.checkpoint import load_checkpoint, load_model
from charrnn.data import Vocab, load_corpus, load_text, split_corpus
from charrnn.model import ModelConfig
from charrnn_experiments.tracking import Store

from .errors import AnalysisError
from .trained_run import ARTIFACT_DIR

BEST_CHECKPOINT = "best.npz"
CHECKPOINT_PREFERENCE = (BEST_CHECKPOINT, "last.npz", "latest.npz")  # first found wins; any other .npz after these
DEFAULT_VAL_FRACTION = 0.1  # the harness's train.val_fraction default, for checkpoints that do not say


@dataclass
class Model:
    params: dict[str, np.ndarray]
    config: ModelConfig
    vocab: Vocab
    source: dict = field(default_factory=dict)  # run_id / checkpoint / tracking_uri: provenance for the recording
    data: dict = field(default_factory=dict)  # the run's data.* and train.* params, to rebuild its split


def open_client(tracking_uri: str | None) -> MlflowClient:
    """A client for ``tracking_uri``; unset, MLflow's own ``MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db``
    here, like ``charrnn-train``.

    A SQLite store that does not exist yet is an error: opening it would silently create an empty one.
    """
    uri = tracking_uri or MLFLOW_TRACKING_URI.get()
    store = Store.resolve(uri, Path.cwd())
    if store.sqlite_path is not None and not store.sqlite_path.is_file():
        raise AnalysisError(f"no MLflow store at {store.uri} (run from where charrnn-train ran, or set tracking.uri=)")
    return store.client()


def get_run(client: MlflowClient, run_id: str):
    try:
        return client.get_run(run_id)
    except MlflowException:
        raise AnalysisError(f"no MLflow run with id {run_id!r} in {client.tracking_uri}") from None


def _run_checkpoint(client: MlflowClient, run_id: str) -> str:
    """Artifact path of the run's preferred checkpoint (searched one folder deep, e.g. ``checkpoints/``; the
    recordings under ``analysis/`` are not checkpoints)."""
    files = []
    for entry in client.list_artifacts(run_id):
        if entry.path == ARTIFACT_DIR:
            continue
        children = client.list_artifacts(run_id, entry.path) if entry.is_dir else [entry]
        files += [c.path for c in children if not c.is_dir and c.path.endswith(".npz")]
    if not files:
        raise AnalysisError(f"run {run_id} has no checkpoint artifact (.npz); pass checkpoint=<file> instead")
    rank = {name: i for i, name in enumerate(CHECKPOINT_PREFERENCE)}
    return min(sorted(files), key=lambda path: rank.get(Path(path).name, len(rank)))


def model_from_run(client: MlflowClient, run_id: str) -> Model:
    run = get_run(client, run_id)
    artifact = _run_checkpoint(client, run_id)
    with tempfile.TemporaryDirectory() as tmp:
        local = client.download_artifacts(run_id, artifact, tmp)
        params, config, vocab = load_model(local)
    source = {"run_id": run_id, "checkpoint": artifact, "tracking_uri": client.tracking_uri}
    return Model(params, config, vocab, source, dict(run.data.params))


def model_from_checkpoint(path: str) -> Model:
    ckpt = load_checkpoint(path)  # CheckpointError for missing, foreign or pickled files
    # charrnn-train records data.* and the split in the checkpoint's metadata; other checkpoints fall back
    # to pystdlib's default split in validation_text
    return Model(ckpt.params, ckpt.model_config, ckpt.vocab, {"checkpoint": str(Path(path).resolve())},
                 {k: v for k, v in ckpt.metadata.items() if v is not None})


def validation_text(model: Model, data: str | None = None, data_path: str | None = None) -> tuple[str, int, str]:
    """The model's own validation split -- the run's corpus and split when known -- as (text, offset of the
    text in its corpus, description). ``data``/``data_path`` name another corpus."""
    name = data or model.data.get("data.name") or "pystdlib"
    path = data_path or (model.data.get("data.path") if not data else None)
    path = None if path in (None, "None", "null", "") else path
    val_fraction = float(model.data.get("train.val_fraction", DEFAULT_VAL_FRACTION))
    seq_length = int(model.data.get("train.seq_length", 25))
    corpus = load_corpus(name, path)
    train, val = split_corpus(corpus, val_fraction, seq_length)
    if not val:
        raise AnalysisError(f"the run has no validation split (val_fraction={val_fraction}); pass text=<file>")
    # a corpus of files holds out whole files (split_corpus): offsets then count in its training files, then these
    held_out = " (whole files held out across it)" if corpus.file_starts else ""
    return val, len(train), f"validation split of {corpus.name}{held_out} ({corpus.source})"


def choose_text(model: Model, text: str | None, string: str | None, data: str | None,
                data_path: str | None) -> tuple[str, int, str]:
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
