"""Text in, integer batches out: vocabulary, train/val split, batch streams (the texts: :mod:`charrnn.corpora`).

Shapes: T time (seq_length), B batch (parallel streams). Pure NumPy + stdlib.

The cursor logic of :class:`BatchStream` at B = 1 is exactly the min-char-rnn gist's::

    if p + T + 1 >= len(data) or n == 0:  # reset h and p
        hprev = 0; p = 0
    inputs, targets = data[p:p+T], data[p+1:p+T+1]
    ...
    p += T
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

import numpy as np

from charrnn.checks import check_int, check_number
from charrnn.errors import DataError

if TYPE_CHECKING:
    from charrnn.corpora import Corpus

__all__ = ["BatchStream", "Vocab", "iter_eval_batches", "split_corpus", "split_train_val"]


_MAX_NAMED = 5  # how many offending characters an error message lists
# Long texts are encoded and hashed this many characters at a time, so the temporaries (UTF-32 code points,
# lookup slots) stay a few megabytes whatever the text's length.
CHUNK_CHARS = 1 << 18


# --------------------------------------------------------------------------- vocabulary


class Vocab:
    """Character vocabulary: index i <-> ``chars[i]``.

    ``Vocab.from_text`` sorts the characters, so the same text always gives the same
    indices (the gist's ``list(set(data))`` does not). ``Vocab(chars)`` keeps the given
    order, so a vocabulary stored in a checkpoint round-trips unchanged.
    """

    __slots__ = ("_chars", "_codes_sorted", "_order", "index_dtype")

    def __init__(self, chars: Iterable[str]) -> None:
        chars = list(chars)
        if not chars:
            raise DataError("empty vocabulary: the text has no characters; use a non-empty text")
        bad = [c for c in chars if not isinstance(c, str) or len(c) != 1]
        if bad:
            shown = ", ".join(repr(c) for c in bad[:_MAX_NAMED])
            raise DataError(f"vocabulary entries must be single characters, got {shown}")
        if len(set(chars)) != len(chars):
            dups = sorted({c for c in chars if chars.count(c) > 1})
            shown = ", ".join(repr(c) for c in dups[:_MAX_NAMED])
            raise DataError(f"vocabulary has duplicate characters {shown}; each character must appear once")
        self._chars = chars
        codes = _codepoints("".join(chars))
        # searchsorted needs sorted keys; _order maps a sorted slot back to the vocab index.
        # the smallest type that holds every index: a byte per character for up to 256 characters
        self.index_dtype = np.min_scalar_type(len(chars) - 1)
        self._order = np.argsort(codes, kind="stable").astype(self.index_dtype)
        self._codes_sorted = codes[self._order]

    @classmethod
    def from_text(cls, text: str) -> Vocab:
        """The sorted set of the characters of ``text``."""
        if not text:
            raise DataError("cannot build a vocabulary from empty text; use a non-empty text")
        return cls(sorted(set(text)))

    @property
    def chars(self) -> list[str]:
        """Characters in index order (a copy)."""
        return list(self._chars)

    @property
    def size(self) -> int:
        """Number of characters V."""
        return len(self._chars)

    def __len__(self) -> int:
        return len(self._chars)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocab) and self._chars == other._chars

    def __hash__(self) -> int:
        return hash(tuple(self._chars))

    def __repr__(self) -> str:
        return f"Vocab(size={self.size}, chars={''.join(self._chars)!r})"

    def encode(self, text: str) -> np.ndarray:
        """Indices of the characters of ``text``: (len(text),) of type ``index_dtype`` (uint8 up to 256
        characters), so an encoded text takes about a byte per character.

        Vectorised (UTF-32 code points + searchsorted) a chunk at a time: a megabyte encodes in milliseconds.
        """
        ix = np.empty(len(text), dtype=self.index_dtype)
        for start in range(0, len(text), CHUNK_CHARS):
            cps = _codepoints(text[start : start + CHUNK_CHARS])
            slot = np.searchsorted(self._codes_sorted, cps)
            np.minimum(slot, self.size - 1, out=slot)  # keep the lookup in bounds; mismatches caught below
            if not (self._codes_sorted[slot] == cps).all():
                self._raise_unknown(text)
            ix[start : start + len(cps)] = self._order[slot]
        return ix

    def _raise_unknown(self, text: str) -> None:
        unknown = sorted(set(text) - set(self._chars))
        shown = ", ".join(repr(c) for c in unknown[:_MAX_NAMED])
        more = f" (and {len(unknown) - _MAX_NAMED} more)" if len(unknown) > _MAX_NAMED else ""
        raise DataError(
            f"text contains {len(unknown)} character(s) not in the vocabulary: {shown}{more}; "
            f"use only characters of the training text ({self.size} in the vocabulary)"
        )

    def decode(self, ixs: Iterable[int] | np.ndarray) -> str:
        """The string for a sequence of indices (any shape is flattened in C order)."""
        ix = np.asarray(ixs if isinstance(ixs, np.ndarray) else list(ixs), dtype=np.int64).ravel()
        if ix.size == 0:
            return ""
        if ix.min() < 0 or ix.max() >= self.size:
            bad = ix[(ix < 0) | (ix >= self.size)]
            raise DataError(
                f"index {int(bad[0])} is outside the vocabulary (valid: 0..{self.size - 1}); "
                "decode with the vocabulary the indices came from"
            )
        codes = np.empty(self.size, dtype="<u4")
        codes[self._order] = self._codes_sorted
        return codes[ix].tobytes().decode("utf-32-le", errors="surrogatepass")


def _codepoints(text: str) -> np.ndarray:
    """Unicode code points of ``text``: (len(text),) uint32."""
    # surrogatepass: lone surrogates (e.g. from surrogateescape'd input) are still one code point each.
    return np.frombuffer(text.encode("utf-32-le", errors="surrogatepass"), dtype="<u4")


# --------------------------------------------------------------------------- split


def split_corpus(corpus: Corpus, val_fraction: float, seq_length: int) -> tuple[str, str]:
    """The train/validation split of a corpus: every tool that rebuilds a run's validation text calls this.

    A corpus built from files holds out whole files drawn across it, so validation measures the same mix of
    files as training: going through the files in order, a file goes to validation whenever the validation share
    of the text before it is below ``val_fraction``. The share comes within one file of ``val_fraction``; each
    split keeps the files' corpus order. A single text (a file, tinyshakespeare) splits off its last
    ``val_fraction`` (:func:`split_train_val`). ``val_fraction`` 0 trains on the whole text either way.
    """
    if len(corpus.file_starts) < 2:
        return split_train_val(corpus.text, val_fraction, seq_length)
    check_number("val_fraction", val_fraction, minimum=0.0, below=1.0)
    check_int("seq_length", seq_length, 1)
    bounds = (*corpus.file_starts, len(corpus.text))
    train_files: list[str] = []
    val_files: list[str] = []
    n_val = 0
    for start, end in zip(bounds, bounds[1:]):
        if n_val < val_fraction * start:
            val_files.append(corpus.text[start:end])
            n_val += end - start
        else:
            train_files.append(corpus.text[start:end])
    return _checked_split("".join(train_files), "".join(val_files), val_fraction, seq_length)


def split_train_val(text: str, val_fraction: float, seq_length: int) -> tuple[str, str]:
    """Split off the last ``val_fraction`` of ``text`` as validation text.

    Train needs >= T + 2 characters (the gist reads data[p+1 : p+T+1] and wraps when
    p + T + 1 >= len); val, when requested, needs >= T + 1 (one evaluation window).
    """
    check_number("val_fraction", val_fraction, minimum=0.0, below=1.0)
    check_int("seq_length", seq_length, 1)
    n = len(text)
    if n < seq_length + 2:
        # This is the gist's "IndexError: list index out of range" on small files.
        raise DataError(
            f"text has {n} characters but seq_length={seq_length} needs at least {seq_length + 2}; "
            "use a shorter seq_length or a longer text"
        )
    n_val = int(n * val_fraction)
    return _checked_split(text[: n - n_val], text[n - n_val :], val_fraction, seq_length)


def _checked_split(train: str, val: str, val_fraction: float, seq_length: int) -> tuple[str, str]:
    n = len(train) + len(val)
    if len(train) < seq_length + 2:
        raise DataError(
            f"val_fraction={val_fraction} of {n} characters leaves {len(train)} for training, "
            f"but seq_length={seq_length} needs at least {seq_length + 2}; "
            "use a smaller val_fraction or seq_length, or a longer text"
        )
    if val_fraction > 0 and len(val) < seq_length + 1:
        raise DataError(
            f"val_fraction={val_fraction} of {n} characters gives {len(val)} validation characters, "
            f"but seq_length={seq_length} needs at least {seq_length + 1}; "
            "use a larger val_fraction (or 0 for none), a shorter seq_length, or a longer text"
        )
    return train, val


# --------------------------------------------------------------------------- batches


def _as_index_array(data_ix: np.ndarray) -> np.ndarray:
    """The indices as they are (uint8 from Vocab.encode: no 8-byte copy of a long text); windows cut from them
    are int64."""
    data = np.asarray(data_ix)
    if data.ndim != 1 or not np.issubdtype(data.dtype, np.integer):
        raise DataError(f"data must be a 1-D integer array of character indices, got shape {data.shape} {data.dtype}")
    return data


def _check_sizes(batch_size: int, seq_length: int) -> None:
    check_int("batch_size", batch_size, 1)
    check_int("seq_length", seq_length, 1)


class BatchStream:
    """B parallel contiguous streams over ``data_ix`` for truncated BPTT.

    The data is cut into B equal segments of L = len(data) // B characters (the
    remainder is dropped); stream b reads segment b left to right, so its hidden state
    can be carried from one batch to the next. At B = 1 this is the gist's cursor
    exactly. Resume with ``BatchStream(data, B, T, **stream.state())``.
    """

    def __init__(
        self, data_ix: np.ndarray, batch_size: int, seq_length: int, cursor: int = 0, started: bool = False
    ) -> None:
        _check_sizes(batch_size, seq_length)
        data = _as_index_array(data_ix)
        B, T = batch_size, seq_length
        L = len(data) // B
        if L < T + 2:
            raise DataError(
                f"{len(data)} characters in batch_size={B} streams gives {L} per stream, "
                f"but seq_length={T} needs at least {T + 2}; "
                "use a smaller batch_size or seq_length, or a longer text"
            )
        if not 0 <= cursor < L:
            raise DataError(
                f"cursor {cursor} is outside the stream length {L}; resume with the same text, "
                "batch_size and seq_length the state was saved with"
            )
        self._data = data
        self.batch_size = B
        self.seq_length = T
        self.segment_length = L
        self.cursor = int(cursor)
        self.started = bool(started)
        self._offsets = np.arange(B, dtype=np.int64) * L  # (B,) start of each segment
        self._steps = np.arange(T + 1, dtype=np.int64)  # (T+1,) inputs and the shifted targets

    def next_batch(self) -> tuple[np.ndarray, np.ndarray, bool]:
        """(inputs (T,B) int64, targets (T,B) int64, reset); reset=True: zero the hidden state."""
        T, L = self.seq_length, self.segment_length
        reset = not self.started or self.cursor + T + 1 >= L
        if reset:
            self.cursor = 0
            self.started = True
        idx = self._offsets[None, :] + (self.cursor + self._steps)[:, None]  # (T+1, B)
        window = self._data[idx].astype(np.int64)
        self.cursor += T
        return window[:-1], window[1:], reset

    def state(self) -> dict[str, int | bool]:
        """What a checkpoint must store to resume exactly: ``{"cursor", "started"}``."""
        return {"cursor": self.cursor, "started": self.started}

    def load_state(self, state: dict[str, int | bool]) -> None:
        """Restore a dict from :meth:`state`."""
        cursor = int(state["cursor"])
        if not 0 <= cursor < self.segment_length:
            raise DataError(
                f"cursor {cursor} is outside the stream length {self.segment_length}; resume with the same "
                "text, batch_size and seq_length the state was saved with"
            )
        self.cursor = cursor
        self.started = bool(state["started"])

    def __repr__(self) -> str:
        return (
            f"BatchStream(chars={len(self._data)}, batch_size={self.batch_size}, seq_length={self.seq_length}, "
            f"cursor={self.cursor}, started={self.started})"
        )


def iter_eval_batches(
    data_ix: np.ndarray, batch_size: int, seq_length: int, max_chars: int | None = None
) -> Iterator[tuple[np.ndarray, np.ndarray, bool]]:
    """Windows covering (the first ``max_chars`` of) ``data_ix`` once, for validation loss.

    Yields (inputs (t,B') int64, targets (t,B') int64, reset) with t = T except possibly a
    shorter last window, so weight each window's per-char loss by t*B'. Streams are
    contiguous, so carry the hidden state between windows; reset is True only on the
    first. B' = min(batch_size, len // (T + 1)) (at least 1), so every stream gets a full
    window even when the validation text is short; start the state with B' = inputs.shape[1].
    Each stream predicts all but its first character; the remainder len % B' is dropped.
    """
    _check_sizes(batch_size, seq_length)
    data = _as_index_array(data_ix)
    check_int("max_chars", max_chars, 2, allow_none=True)
    if max_chars is not None:
        data = data[:max_chars]
    n, T = len(data), seq_length
    if n < 2:
        raise DataError(f"validation text has {n} characters; it needs at least 2 (use a larger val_fraction)")
    offsets = eval_stream_starts(n, batch_size, T)  # (B,)
    L = n // len(offsets)
    for p in range(0, L - 1, T):
        t = min(T, L - 1 - p)
        idx = offsets[None, :] + np.arange(p, p + t + 1, dtype=np.int64)[:, None]  # (t+1, B)
        window = data[idx].astype(np.int64)
        yield window[:-1], window[1:], p == 0


def eval_stream_starts(n: int, batch_size: int, seq_length: int) -> np.ndarray:
    """Where each of :func:`iter_eval_batches`' streams starts in a text of ``n`` characters (after its
    ``max_chars`` cut): B' = min(batch_size, n // (T + 1)), at least 1, streams of n // B' characters."""
    streams = max(1, min(batch_size, n // (seq_length + 1)))
    return np.arange(streams, dtype=np.int64) * (n // streams)
