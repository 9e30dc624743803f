"""Corpora: the training texts charrnn knows by name (the offline ``pystdlib``, ``tinyshakespeare`` downloaded
once and verified) or reads from a file, each with where it came from and its sha256."""

from __future__ import annotations

import hashlib
import os
import platform
import sysconfig
import urllib.error
import urllib.request
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from charrnn.atomic import atomic_write
from charrnn.data import CHUNK_CHARS
from charrnn.errors import DataError

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
    for start in range(0, len(text), CHUNK_CHARS):  # never a second whole copy of the text
        digest.update(text[start : start + CHUNK_CHARS].encode("utf-8", errors="surrogatepass"))
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
