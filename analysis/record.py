"""Run a trained model over a text once and keep what every layer did at every character.

A :class:`Recording` holds the text, each character's offset in its source, the model's loss on the next
character, and for every layer the hidden state h (LSTM: also the cell c and gates i f o g; GRU: gates r z and
candidate n), each (N, H). It is saved as one ``.npz`` (float16 activations by default, metadata as a JSON string;
uncompressed: activations barely compress and zlib made saving the slowest step) and loaded with
``allow_pickle=False``, so every analysis reuses it without re-running the model.
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from charrnn.atomic import atomic_write
from charrnn.data import Vocab
from charrnn.model import ModelConfig, forward, init_state

from .errors import AnalysisError

FORMAT_VERSION = 1
STORED_DTYPES = ("float16", "float32")


@dataclass
class Recording:
    text: str
    offsets: np.ndarray  # (N,) int64: position of each character in the source text
    loss: np.ndarray  # (N,) float32: nats on text[t+1] after reading text[t]; nan at the last character
    arrays: dict[str, np.ndarray]  # "h.0", "c.0", "i.0", ... -> (N, H)
    meta: dict = field(default_factory=dict)  # cell, hidden_size, num_layers, source, run_id, checkpoint, ...

    @property
    def cell(self) -> str:
        return self.meta["cell"]

    @property
    def num_layers(self) -> int:
        return int(self.meta["num_layers"])

    @property
    def states(self) -> list[str]:
        """Recorded names, e.g. ['h', 'c', 'i', 'f', 'o', 'g'] for an LSTM."""
        return list(dict.fromkeys(key.split(".")[0] for key in self.arrays))

    @property
    def default_state(self) -> str:
        # The paper colours LSTM text by the cell (as tanh(c)); other cells only have h to show.
        return "c" if "c" in self.states else "h"

    def layer(self, state: str, layer: int) -> np.ndarray:
        """(N, H) float32 activations of one state in one layer; ``c`` is returned as tanh(c), in [-1, 1]."""
        key = f"{state}.{layer}"
        if key not in self.arrays:
            raise AnalysisError(
                f"no {state!r} in layer {layer} of this recording (states: {', '.join(self.states)}; "
                f"layers: 0..{self.num_layers - 1})"
            )
        values = self.arrays[key].astype(np.float32)
        return np.tanh(values) if state == "c" else values

    def unit_matrix(self, states: list[str] | None = None) -> tuple[np.ndarray, list[str]]:
        """All units of the given states (default: :attr:`default_state`) in every layer: (N, U) and labels
        like ``c.0:17`` (state c, layer 0, unit 17)."""
        blocks, labels = [], []
        for state in states or [self.default_state]:
            for layer in range(self.num_layers):
                values = self.layer(state, layer)
                blocks.append(values)
                labels += [f"{state}.{layer}:{u}" for u in range(values.shape[1])]
        return np.concatenate(blocks, axis=1), labels

    def unit(self, label: str) -> np.ndarray:
        """(N,) activations of one unit named like ``c.0:17``."""
        try:
            key, index = label.split(":")
            state, layer = key.split(".")
            layer, index = int(layer), int(index)
        except ValueError:
            raise AnalysisError(f"unknown unit {label!r}: expected state.layer:index, e.g. h.0:3") from None
        layer_values = self.layer(state, layer)
        if not 0 <= index < layer_values.shape[1]:
            raise AnalysisError(
                f"unit {label!r} is out of range: layer {layer} of {state!r} has units 0..{layer_values.shape[1] - 1}"
            )
        return layer_values[:, index]

    def save(self, path: str | os.PathLike) -> Path:
        """Write atomically (temp file + rename), so a crash never leaves a half-written recording."""
        path = Path(path)
        meta = dict(self.meta, format_version=FORMAT_VERSION)
        with atomic_write(path) as f:
            np.savez(
                f,
                text=np.array(self.text),
                offsets=self.offsets,
                loss=self.loss,
                meta=np.array(json.dumps(meta, sort_keys=True)),
                **{f"act/{key}": value for key, value in self.arrays.items()},
            )
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Recording:
        try:
            with np.load(path, allow_pickle=False) as npz:
                meta = json.loads(str(npz["meta"]))
                arrays = {key[len("act/") :]: npz[key] for key in npz.files if key.startswith("act/")}
                return cls(str(npz["text"]), npz["offsets"], npz["loss"], arrays, meta)
        except FileNotFoundError:
            raise AnalysisError(f"recording {path} does not exist") from None
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, json.JSONDecodeError) as exc:
            raise AnalysisError(f"{path} is not a charrnn recording ({type(exc).__name__}: {exc})") from None


def record(
    params: dict[str, np.ndarray],
    config: ModelConfig,
    vocab: Vocab,
    text: str,
    chunk_size: int = 1024,
    dtype: str = "float16",
    offset: int = 0,
    meta: dict | None = None,
) -> Recording:
    """Run the model over ``text`` (batch of one, from a zero state) and record every internal signal.

    The text streams through the engine ``chunk_size`` characters at a time with the state carried across chunks,
    so the engine's caches stay bounded; the result is identical to a single pass. ``offset`` is the position
    of ``text`` in its source, stored per character.
    """
    if dtype not in STORED_DTYPES:
        raise AnalysisError(f"dtype must be one of {', '.join(STORED_DTYPES)}, got {dtype!r}")
    if not text:
        raise AnalysisError("cannot record an empty text")
    if chunk_size <= 0:
        raise AnalysisError(f"chunk_size must be positive, got {chunk_size}")
    ix = vocab.encode(text)  # DataError naming any character the model has never seen
    n = len(ix)
    arrays: dict[str, np.ndarray] = {}
    loss = np.full(n, np.nan, dtype=np.float32)
    state = init_state(config, 1)
    for start in range(0, n, chunk_size):
        end = min(start + chunk_size, n)
        inputs = ix[start:end, None]  # (T, 1)
        logits, _, state, internals = forward(params, config, inputs, state, return_internals=True)
        for name, per_layer in internals.items():
            for layer, values in enumerate(per_layer):
                key = f"{name}.{layer}"
                if key not in arrays:
                    arrays[key] = np.empty((n, values.shape[2]), dtype=dtype)
                arrays[key][start:end] = values[:, 0, :]
        # Loss on the next character: known for every step but the text's last.
        steps = np.arange(start, min(end, n - 1))
        if len(steps):
            z = logits[: len(steps), 0, :].astype(np.float64)
            z -= z.max(axis=1, keepdims=True)
            log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
            loss[steps] = -log_p[np.arange(len(steps)), ix[steps + 1]]
    info = {
        "cell": config.cell,
        "hidden_size": config.hidden_size,
        "num_layers": config.num_layers,
        "vocab_size": config.vocab_size,
        "dtype": dtype,
        "chunk_size": chunk_size,
    }
    info.update(meta or {})
    return Recording(text, offset + np.arange(n, dtype=np.int64), loss, arrays, info)
