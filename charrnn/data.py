"""Text in, integer batches out: vocabulary, corpora, train/val split, batch streams.

Shapes: T time (seq_length), B batch (parallel streams). Pure NumPy + stdlib.

The cursor logic of :class:`BatchStream` at B = 1 is exactly the min-char-rnn gist's::

    if p + T + 1 >= len(data) or n == 0:  # reset h and p
        hprev = 0; p = 0
    inputs, targets = data[p:p+T], data[p+1:p+T+1]
    ...
    p += T
"""

from __future__ import annotations

import hashlib
import os
import platform
import sysconfig
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from charrnn.atomic import atomic_write
from charrnn.checks import check_int, check_number
from charrnn.errors import DataError

__all__ = [
    "CORPORA",
    "PYSTDLIB_VERSION",
    "TINYSHAKESPEARE_SHA256",
    "TINYSHAKESPEARE_URL",
    "BatchStream",
    "Corpus",
    "Vocab",
    "data_dir",
    "iter_eval_batches",
    "load_corpus",
    "load_text",
    "split_corpus",
    "split_train_val",
]

# Module constants (not arguments) so tests can point them at a local file:// URL.
TINYSHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
TINYSHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
TINYSHAKESPEARE_FILE = "tinyshakespeare.txt"
DOWNLOAD_TIMEOUT_S = 30.0

CORPORA = ("file", "pystdlib", "tinyshakespeare")

# pystdlib is a fixed list of stdlib files (package data charrnn/corpora/<version>.txt), so its text is the same
# wherever that Python's stdlib is; the reference interpreter builds exactly the text of this sha256.
PYSTDLIB_VERSION = "pystdlib-v1"
PYSTDLIB_REFERENCE_PYTHON = "CPython 3.11.7"
PYSTDLIB_REFERENCE_SHA256 = "029a84b21bec6cba99da7a076ff9be0734e20a6ff3e2e00f093b135a51fca46a"

_MAX_NAMED = 5  # how many offending characters an error message lists
# Long texts are encoded and hashed this many characters at a time, so the temporaries (UTF-32 code points,
# lookup slots) stay a few megabytes whatever the text's length.
_CHUNK_CHARS = 1 << 18


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
        for start in range(0, len(text), _CHUNK_CHARS):
            cps = _codepoints(text[start : start + _CHUNK_CHARS])
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


# --------------------------------------------------------------------------- text files


def load_text(path: str | os.PathLike[str], encoding: str = "utf-8") -> str:
    """Read a whole text file; one-line DataError if it is missing, empty or badly encoded."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise DataError(f"text file not found: {str(p)!r}; check the path") from None
    except IsADirectoryError:
        raise DataError(f"{str(p)!r} is a directory, not a text file; pass the path of a file") from None
    except OSError as e:
        raise DataError(f"cannot read text file {str(p)!r}: {e.strerror or e}") from None
    if not raw:
        raise DataError(f"text file {str(p)!r} is empty; training needs some text")
    try:
        # Decode bytes ourselves (no universal newlines), so the text is exactly the file.
        text = raw.decode(encoding)
    except LookupError:
        raise DataError(
            f"unknown text encoding {encoding!r}; pass a Python codec name such as utf-8 or latin-1"
        ) from None
    except UnicodeDecodeError as e:
        bad = raw[e.start : e.start + 1].hex()
        raise DataError(
            f"{str(p)!r} is not valid {encoding}: byte 0x{bad} at offset {e.start} ({e.reason}); "
            f"convert it to UTF-8 (e.g. iconv -f latin1 -t utf-8 {p.name} > {p.stem}.utf8{p.suffix}), "
            "or from Python pass its encoding to load_text or load_corpus (encoding='latin-1')"
        ) from None
    if not text:
        raise DataError(f"text file {str(p)!r} is empty after decoding as {encoding}; training needs some text")
    return text


# --------------------------------------------------------------------------- corpora


@dataclass(frozen=True)
class Corpus:
    """A training text and where it came from."""

    name: str
    text: str
    source: str  # path, URL or description
    sha256: str  # of the text's UTF-8 bytes
    # where each whole file starts in ``text``, for a corpus built from files (validation holds out whole
    # files, see split_corpus); empty for a single text
    file_starts: tuple[int, ...] = ()
    version: str | None = None  # a versioned corpus's version, e.g. "pystdlib-v1"
    differs: str | None = None  # one line, when this text is not the version's reference text

    def __repr__(self) -> str:
        return (
            f"Corpus(name={self.name!r}, chars={len(self.text)}, source={self.source!r}, sha256={self.sha256[:12]}...)"
        )


def _sha256_text(text: str) -> str:
    digest = hashlib.sha256()
    for start in range(0, len(text), _CHUNK_CHARS):  # never a second whole copy of the text
        digest.update(text[start : start + _CHUNK_CHARS].encode("utf-8", errors="surrogatepass"))
    return digest.hexdigest()


def load_corpus(name: str, path: str | os.PathLike[str] | None = None, encoding: str = "utf-8") -> Corpus:
    """Load a built-in corpus (``pystdlib``, ``tinyshakespeare``) or a text file (``file`` + ``path``)."""
    if name == "file":
        if path is None:
            raise DataError("corpus 'file' needs a path; pass path=... (data.path=... on the command line)")
        text = load_text(path, encoding)
        return Corpus("file", text, str(path), _sha256_text(text))
    if name == "pystdlib":
        return _pystdlib_corpus(Path(sysconfig.get_paths()["stdlib"]))
    if name == "tinyshakespeare":
        file = _tinyshakespeare_file()
        text = load_text(file, "utf-8")
        return Corpus("tinyshakespeare", text, str(file), _sha256_text(text))
    raise DataError(f"unknown corpus {name!r}; choose one of {', '.join(CORPORA)}")


def data_dir() -> Path:
    """Cache directory for downloaded corpora.

    $CHARRNN_DATA_DIR, else $XDG_CACHE_HOME/charrnn, else ~/.cache/charrnn.
    """
    env = os.environ.get("CHARRNN_DATA_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "charrnn"


def _pystdlib_paths() -> list[str]:
    """The relative stdlib paths of :data:`PYSTDLIB_VERSION`, in corpus order (its shipped file list)."""
    listing = resources.files("charrnn").joinpath("corpora", f"{PYSTDLIB_VERSION}.txt").read_text(encoding="utf-8")
    return [line for line in listing.splitlines() if line and not line.startswith("#")]


def _pystdlib_corpus(root: Path) -> Corpus:
    """The files of :data:`PYSTDLIB_VERSION` read from the stdlib at ``root``, each preceded by a
    ``# file: <relative/path.py>`` line so file boundaries are visible.

    A file this Python lacks (or cannot decode as UTF-8) is left out, not altered; the corpus then says in
    ``differs`` that its text is not the reference text, as it does when a file's contents differ.
    """
    if not root.is_dir():
        raise DataError(f"standard library not found at {str(root)!r}; use corpus 'file' or 'tinyshakespeare'")
    paths = _pystdlib_paths()
    parts: list[str] = []
    starts: list[int] = []
    missing: list[str] = []
    n_chars = 0
    for rel in paths:
        try:
            src = (root / rel).read_bytes().decode("utf-8")
        except (OSError, UnicodeDecodeError):
            missing.append(rel)
            continue
        src = src.replace("\r\n", "\n")  # same text whatever the platform's line endings
        if src and not src.endswith("\n"):
            src += "\n"
        starts.append(n_chars)
        parts.append(f"# file: {rel}\n{src}")
        n_chars += len(parts[-1])
    if not parts:
        raise DataError(
            f"none of the {len(paths)} files of {PYSTDLIB_VERSION} is readable under {str(root)!r}; "
            "use corpus 'file' or 'tinyshakespeare'"
        )
    text = "".join(parts)
    sha256 = _sha256_text(text)
    python = f"{platform.python_implementation()} {platform.python_version()}"
    differs = None
    if sha256 != PYSTDLIB_REFERENCE_SHA256:
        lacking = f", lacking {len(missing)} of its {len(paths)} files (first {missing[0]})" if missing else ""
        differs = (
            f"{python} builds another {PYSTDLIB_VERSION} text (sha256 {sha256[:12]}...{lacking}) than the "
            f"reference {PYSTDLIB_REFERENCE_PYTHON} (sha256 {PYSTDLIB_REFERENCE_SHA256[:12]}...): "
            "its losses are not comparable with numbers taken on the reference text"
        )
    source = f"{PYSTDLIB_VERSION}: {len(parts)} .py files of the {python} standard library ({root})"
    return Corpus("pystdlib", text, source, sha256, tuple(starts), PYSTDLIB_VERSION, differs)


def _tinyshakespeare_file() -> Path:
    """Path of the verified cached tinyshakespeare.txt, downloading it once if absent."""
    cache = data_dir()
    file = cache / TINYSHAKESPEARE_FILE
    if file.is_file():
        digest = hashlib.sha256(file.read_bytes()).hexdigest()
        if digest != TINYSHAKESPEARE_SHA256:
            raise DataError(
                f"cached {str(file)!r} has sha256 {digest}, expected {TINYSHAKESPEARE_SHA256}; "
                "delete it to download it again"
            )
        return file

    url = TINYSHAKESPEARE_URL
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as resp:
            raw = resp.read()
    except (TimeoutError, urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        raise DataError(
            f"tinyshakespeare is not cached in {str(cache)!r} and downloading {url} failed ({reason}); "
            f"connect once, or set CHARRNN_DATA_DIR to a directory holding {TINYSHAKESPEARE_FILE}"
        ) from None
    digest = hashlib.sha256(raw).hexdigest()
    if digest != TINYSHAKESPEARE_SHA256:
        raise DataError(
            f"download from {url} has sha256 {digest}, expected {TINYSHAKESPEARE_SHA256}; "
            f"nothing was cached; place a correct {TINYSHAKESPEARE_FILE} in CHARRNN_DATA_DIR"
        )
    try:
        with atomic_write(file) as f:
            f.write(raw)
    except OSError as e:
        raise DataError(
            f"cannot write {str(file)!r} ({e.strerror or e}); set CHARRNN_DATA_DIR to a writable directory"
        ) from None
    return file


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
