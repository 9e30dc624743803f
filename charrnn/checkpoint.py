"""Checkpoints: one ``.npz`` of plain arrays, always read with ``allow_pickle=False``.

Layout (keys):
    Wxh, Whh, bh, ..., Why, by   model parameters under their own names -- for the one-layer vanilla RNN
                                 exactly the gist's arrays, so weights move to and from the gist
    chars                        the vocabulary in index order, one character per element
    format                       "charrnn-checkpoint-1"
    model_config, train_config,  JSON strings
    optim_config, progress,
    metadata                     (the last is free-form: the harness records the corpus and split there)
    optim/<slot>                 optimizer state (Adagrad's mem, Adam's m and v...) as one vector over the
                                 parameters in the order above, and optim/t
    hidden/<layer>/<h|c>         the hidden state carried into the next iteration

``progress`` holds the iteration, smoothed loss, best validation loss, data cursor, sampling and dropout RNG
states, elapsed seconds and the partial logging window, so resuming gives exactly the numbers of an
uninterrupted run.
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .atomic import atomic_write
from .data import Vocab
from .errors import CheckpointError
from .model import ModelConfig, param_shapes

FORMAT = "charrnn-checkpoint-1"


@dataclass
class Checkpoint:
    params: dict[str, np.ndarray]
    vocab: Vocab
    model_config: ModelConfig
    train_config: dict = field(default_factory=dict)
    optim_config: dict = field(default_factory=dict)
    optim_state: dict[str, np.ndarray] = field(default_factory=dict)
    hidden: list[tuple[np.ndarray, ...]] = field(default_factory=list)
    progress: dict = field(default_factory=dict)
    metadata: dict = field(default_factory=dict)  # the caller's own notes, e.g. which corpus and split

    @property
    def iteration(self) -> int:
        return int(self.progress.get("iteration", 0))


def save_checkpoint(path: str | os.PathLike, ckpt: Checkpoint) -> Path:
    """Write atomically, so an interrupted save never leaves a torn checkpoint."""
    path = Path(path)
    arrays: dict[str, np.ndarray] = dict(ckpt.params)
    arrays["chars"] = np.array(ckpt.vocab.chars, dtype=str)
    arrays["format"] = np.array(FORMAT)
    arrays["model_config"] = np.array(ckpt.model_config.to_json())
    for key in ("train_config", "optim_config", "progress", "metadata"):
        arrays[key] = np.array(json.dumps(getattr(ckpt, key), sort_keys=True))
    for key, value in ckpt.optim_state.items():
        arrays[f"optim/{key}"] = np.asarray(value)
    for layer, layer_state in enumerate(ckpt.hidden):
        for name, value in zip(("h", "c"), layer_state):
            arrays[f"hidden/{layer}/{name}"] = value
    with atomic_write(path) as f:
        np.savez(f, **arrays)
    return path


def read_npz(path: str | os.PathLike, what: str = "checkpoint") -> dict[str, np.ndarray]:
    """All arrays of an .npz file, or a CheckpointError that says what is wrong with the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} {str(path)!r} does not exist")
    with open(path, "rb") as f:
        if f.read(2) != b"PK":  # every .npz is a zip archive; np.load would take anything else for a pickle
            raise CheckpointError(
                f"{what} {str(path)!r} is not an .npz file (a zip archive of arrays, as np.savez and charrnn write)"
            )
    try:
        with np.load(path, allow_pickle=False) as npz:
            if any(_holds_objects(npz, key) for key in npz.files):
                raise CheckpointError(
                    f"{what} {str(path)!r} contains pickled objects, which charrnn never loads; "
                    "save plain arrays with np.savez"
                )
            return {key: npz[key] for key in npz.files}
    except ValueError as e:
        raise CheckpointError(f"{what} {str(path)!r} is not a valid .npz file ({e})") from None
    except (OSError, EOFError, zipfile.BadZipFile, KeyError) as e:
        raise CheckpointError(f"{what} {str(path)!r} is truncated or not an .npz file ({e})") from None


def _holds_objects(npz, key: str) -> bool:
    """Whether array ``key`` of an open .npz is stored as Python objects (a pickle): read from the array's header,
    nothing is unpickled."""
    member = f"{key}.npy"
    if member not in npz.zip.namelist():
        return False
    with npz.zip.open(member) as f:
        version = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        return read_header(f)[2].hasobject


def _json(arrays, key, path):
    try:
        return json.loads(str(arrays[key][()]))
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"checkpoint {str(path)!r} has a missing or corrupt {key!r} entry ({e})") from None


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    arrays = read_npz(path)
    if "format" not in arrays or str(arrays["format"][()]) != FORMAT:
        raise CheckpointError(
            f"{str(path)!r} is not a charrnn checkpoint (no format={FORMAT!r} entry); "
            "a file of initial weights goes to train.init_from instead"
        )
    try:
        model_config = ModelConfig(**_json(arrays, "model_config", path))
    except TypeError as e:
        raise CheckpointError(f"checkpoint {str(path)!r} has an unreadable model_config ({e})") from None
    vocab = Vocab([str(c) for c in arrays["chars"]])
    params = _params_from(arrays, model_config, path)
    optim_state = {k[len("optim/") :]: v for k, v in arrays.items() if k.startswith("optim/")}
    hidden = []
    for layer in range(model_config.num_layers):
        names = [n for n in ("h", "c") if f"hidden/{layer}/{n}" in arrays]
        hidden.append(tuple(arrays[f"hidden/{layer}/{n}"] for n in names))
    return Checkpoint(
        params=params,
        vocab=vocab,
        model_config=model_config,
        train_config=_json(arrays, "train_config", path),
        optim_config=_json(arrays, "optim_config", path),
        optim_state=optim_state,
        hidden=hidden if all(hidden) else [],
        progress=_json(arrays, "progress", path),
        metadata=_json(arrays, "metadata", path) if "metadata" in arrays else {},
    )


def _params_from(arrays, config: ModelConfig, path) -> dict[str, np.ndarray]:
    """The model's parameters from a file, checked against the shapes ``config`` needs. Biases stored as
    (n, 1) columns, as the gist keeps them, are accepted and flattened."""
    params = {}
    for name, shape in param_shapes(config).items():
        if name not in arrays:
            raise CheckpointError(f"{str(path)!r} has no array {name!r} needed by a {config.cell} model")
        value = arrays[name]
        if len(shape) == 1 and value.shape == (shape[0], 1):
            value = value[:, 0]
        if value.shape != shape:
            raise CheckpointError(
                f"{str(path)!r}: {name} has shape {value.shape} but the model needs {shape} "
                f"(hidden_size={config.hidden_size}, vocabulary of {config.vocab_size} characters)"
            )
        if not np.issubdtype(value.dtype, np.floating):
            raise CheckpointError(f"{str(path)!r}: {name} has dtype {value.dtype}, expected floating point")
        params[name] = np.ascontiguousarray(value, dtype=config.dtype)
        if not np.isfinite(params[name]).all():  # training from it would "diverge" at once, blamed on the lr
            bad = int(np.size(params[name]) - np.isfinite(params[name]).sum())
            raise CheckpointError(
                f"{str(path)!r}: {name} holds {bad} non-finite values (nan or inf, in "
                f"{config.dtype}); the file is corrupt or comes from a diverged run"
            )
    return params


def load_initial_weights(path: str | os.PathLike, config: ModelConfig, vocab: Vocab) -> dict[str, np.ndarray]:
    """Initial parameters from an .npz holding at least the model's arrays (for the vanilla RNN, the gist's
    five: Wxh, Whh, Why, bh, by). If the file carries a ``chars`` vocabulary it must match the text's."""
    arrays = read_npz(path, what="initial weights file")
    if "chars" in arrays:
        chars = [str(c) for c in arrays["chars"]]
        if chars != vocab.chars:
            raise CheckpointError(
                f"initial weights file {str(path)!r} was made for a different vocabulary "
                f"({len(chars)} characters) than this text's ({vocab.size}); use the same text"
            )
    return _params_from(arrays, config, path)


def load_model(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], ModelConfig, Vocab]:
    """What sampling and analysis need: (params, model config, vocabulary)."""
    ckpt = load_checkpoint(path)
    return ckpt.params, ckpt.model_config, ckpt.vocab
