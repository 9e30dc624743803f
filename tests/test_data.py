"""Tests for charrnn.data: vocabulary, text loading, corpora, split and batch streams."""

from __future__ import annotations

import hashlib
import inspect
import platform
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from charrnn import corpora
from charrnn.corpora import Corpus, load_corpus, load_text
from charrnn.data import BatchStream, Vocab, iter_eval_batches, split_corpus, split_train_val
from charrnn.errors import CharRNNError, ConfigError, DataError
from charrnn.model import ModelConfig
from charrnn.train import OptimConfig, TrainConfig, Trainer
from conftest import SHAKESPEARE, SHARED_DATA, compose_cfg, copy_pystdlib_files

pytestmark = pytest.mark.fast  # the engine and config tests: pytest -m fast -n 2


# --------------------------------------------------------------------------- vocab


def test_errors_hierarchy():
    for cls in (DataError, ConfigError):
        assert issubclass(cls, CharRNNError)


def test_vocab_sorted_and_deterministic():
    text = "hello world, hello numpy!\n"
    v1, v2 = Vocab.from_text(text), Vocab.from_text(text[::-1])
    assert v1.chars == sorted(set(text))
    assert v1 == v2 and v1.size == len(set(text)) == len(v1)


def test_encode_decode_roundtrip_unicode():
    text = "Ünïcödé — ok? 🙂\n\tend"
    v = Vocab.from_text(text)
    ix = v.encode(text)
    assert ix.dtype == np.uint8 and ix.shape == (len(text),)  # a byte per character up to 256 characters
    assert [v.chars[i] for i in ix] == list(text)  # same as the gist's char_to_ix lookup
    assert v.decode(ix) == text
    assert v.decode(ix.tolist()) == text
    assert v.encode("").shape == (0,) and v.decode([]) == ""


def test_vocab_keeps_given_order():
    v = Vocab(["z", "a", "\n"])  # e.g. a gist vocabulary stored in a checkpoint
    assert v.encode("a\nz").tolist() == [1, 2, 0]
    assert v.decode([0, 1, 2]) == "za\n"


def test_unknown_char_error_names_chars():
    v = Vocab.from_text("abc")
    with pytest.raises(DataError, match=r"'x'.*'\\n'|'\\n'.*'x'"):
        v.encode("abx\n")


def test_vocab_validation():
    with pytest.raises(DataError, match="duplicate"):
        Vocab(["a", "b", "a"])
    with pytest.raises(DataError):
        Vocab([])
    with pytest.raises(DataError):
        Vocab(["ab"])
    with pytest.raises(DataError, match="outside the vocabulary"):
        Vocab("ab").decode([0, 2])


# --------------------------------------------------------------------------- load_text


def test_load_text_exact(tmp_path):
    p = tmp_path / "a.txt"
    p.write_bytes("line1\r\nzwei ü\n".encode())
    assert load_text(p) == "line1\r\nzwei ü\n"  # no newline translation


def test_load_text_missing(tmp_path):
    with pytest.raises(DataError, match="nope.txt"):
        load_text(tmp_path / "nope.txt")


def test_load_text_empty(tmp_path):
    p = tmp_path / "empty.txt"
    p.write_bytes(b"")
    with pytest.raises(DataError, match="empty"):
        load_text(p)


def test_load_text_non_utf8_names_offset_and_fix(tmp_path):
    p = tmp_path / "latin.txt"
    p.write_bytes(b"caf\xe9 au lait")
    with pytest.raises(DataError) as e:
        load_text(p)
    msg = str(e.value)
    assert "offset 3" in msg and "0xe9" in msg and "\n" not in msg
    # it suggests only what exists: the encoding argument, and no data.encoding key (the config has none)
    assert "encoding='latin-1'" in msg and "load_text" in msg and "data.encoding" not in msg
    assert "encoding" not in compose_cfg().data
    assert all("encoding" in inspect.signature(f).parameters for f in (load_text, load_corpus))
    assert load_text(p, encoding="latin-1") == "café au lait"


def test_load_text_unknown_encoding(tmp_path):
    p = tmp_path / "a.txt"
    p.write_text("abc")
    with pytest.raises(DataError, match="unknown text encoding"):
        load_text(p, encoding="no-such-codec")


# --------------------------------------------------------------------------- corpora


def test_load_corpus_file(tmp_path):
    p = tmp_path / "a.txt"
    p.write_text("hello there\n", encoding="utf-8")
    c = load_corpus("file", p)
    assert c.text == "hello there\n" and c.source == str(p)
    assert c.sha256 == hashlib.sha256(b"hello there\n").hexdigest()
    with pytest.raises(DataError, match="path"):
        load_corpus("file")


def test_unknown_corpus_lists_names():
    with pytest.raises(DataError) as e:
        load_corpus("linux")
    assert all(n in str(e.value) for n in ("pystdlib", "tinyshakespeare", "file"))


def test_pystdlib_deterministic_and_sized():
    a, b = load_corpus("pystdlib"), load_corpus("pystdlib")
    assert a.sha256 == b.sha256 and a.text == b.text
    assert 1_000_000 <= len(a.text.encode("utf-8")) <= 5_000_000
    assert a.text.startswith("# file: ")
    assert "# file: test/" not in a.text and "site-packages" not in a.text.split("\n", 1)[0]
    Vocab.from_text(a.text).encode(a.text)  # whole text encodes


def file_headers(text: str) -> list[str]:
    return [line[len("# file: ") :] for line in text.splitlines() if line.startswith("# file: ")]


def test_pystdlib_is_its_versioned_file_list_and_on_the_reference_python_its_reference_text():
    corpus = load_corpus("pystdlib")
    listed = corpora._pystdlib_paths()
    assert corpus.version == "pystdlib-v1" and len(listed) == 110 and listed[0] == "__future__.py"
    assert [corpus.text[start:].split("\n", 1)[0] for start in corpus.file_starts] == [f"# file: {p}" for p in listed]
    if platform.python_version() != "3.11.7":
        pytest.skip(f"pystdlib-v1's reference text is built by CPython 3.11.7, this is {platform.python_version()}")
    # the text the unversioned rule (sorted stdlib files until 2,000,000 characters) built on CPython 3.11.7
    assert corpus.sha256 == "029a84b21bec6cba99da7a076ff9be0734e20a6ff3e2e00f093b135a51fca46a"
    assert corpus.differs is None and len(corpus.text) == 2_007_677


def test_pystdlib_from_a_stdlib_that_lacks_or_changed_files_says_its_text_differs(tmp_path):
    root = copy_pystdlib_files(tmp_path / "lib")
    same = corpora._pystdlib_corpus(root)
    assert same.text == load_corpus("pystdlib").text and same.differs == load_corpus("pystdlib").differs

    (root / "colorsys.py").unlink()
    with open(root / "abc.py", "a", encoding="utf-8") as f:
        f.write("# a later Python's change\n")
    other = corpora._pystdlib_corpus(root)
    assert "colorsys.py" not in file_headers(other.text) and len(other.file_starts) == 109
    assert other.sha256 != same.sha256 and other.version == "pystdlib-v1"
    assert other.differs.startswith(
        f"{platform.python_implementation()} {platform.python_version()} builds another "
        f"pystdlib-v1 text (sha256 {other.sha256[:12]}..., lacking 1 of its 110 files "
        "(first colorsys.py)) than the reference CPython 3.11.7 (sha256 029a84b21bec...)"
    )
    assert "\n" not in other.differs


def test_pystdlib_with_none_of_its_files_is_an_error(tmp_path):
    with pytest.raises(DataError, match=r"none of the 110 files of pystdlib-v1 is readable under .*use corpus 'file'"):
        corpora._pystdlib_corpus(tmp_path)


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    d = tmp_path / "cache"
    monkeypatch.setenv("CHARRNN_DATA_DIR", str(d))
    return d


def test_data_dir_defaults(monkeypatch, tmp_path):
    monkeypatch.delenv("CHARRNN_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert corpora.data_dir() == tmp_path / "charrnn"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert corpora.data_dir() == Path.home() / ".cache" / "charrnn"


def _fake_shakespeare(monkeypatch, tmp_path) -> Path:
    """A stand-in source file; the expected digest is patched to match it."""
    src = tmp_path / "input.txt"
    src.write_text("First Citizen:\nBefore we proceed any further, hear me speak.\n", encoding="utf-8")
    monkeypatch.setattr(corpora, "TINYSHAKESPEARE_SHA256", hashlib.sha256(src.read_bytes()).hexdigest())
    return src


def test_tinyshakespeare_from_shared_data_dir(monkeypatch, tmp_path):
    if SHAKESPEARE.is_file():
        monkeypatch.setenv("CHARRNN_DATA_DIR", str(SHARED_DATA))
        expected_len = 1115394
    else:  # no shared copy: exercise the same code path on a fake cached file
        src = _fake_shakespeare(monkeypatch, tmp_path)
        d = tmp_path / "cache"
        d.mkdir()
        (d / "tinyshakespeare.txt").write_bytes(src.read_bytes())
        monkeypatch.setenv("CHARRNN_DATA_DIR", str(d))
        expected_len = len(src.read_text())
    # Never downloads here: a network attempt would fail loudly.
    monkeypatch.setattr(corpora, "TINYSHAKESPEARE_URL", "http://127.0.0.1:9/input.txt")
    c = load_corpus("tinyshakespeare")
    assert len(c.text) == expected_len
    assert hashlib.sha256(Path(c.source).read_bytes()).hexdigest() == corpora.TINYSHAKESPEARE_SHA256
    if SHAKESPEARE.is_file():
        assert c.sha256 == "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"


def test_tinyshakespeare_download_file_url(monkeypatch, tmp_path, cache_dir):
    src = _fake_shakespeare(monkeypatch, tmp_path)
    monkeypatch.setattr(corpora, "TINYSHAKESPEARE_URL", src.as_uri())
    c = load_corpus("tinyshakespeare")
    cached = cache_dir / "tinyshakespeare.txt"
    assert cached.read_bytes() == src.read_bytes() and c.text == src.read_text()
    assert [p.name for p in cache_dir.iterdir()] == ["tinyshakespeare.txt"]  # no temp file left
    # Second call uses the cache, not the URL.
    monkeypatch.setattr(corpora, "TINYSHAKESPEARE_URL", "http://127.0.0.1:9/input.txt")
    assert load_corpus("tinyshakespeare").sha256 == c.sha256


def test_tinyshakespeare_download_bad_digest_not_cached(monkeypatch, tmp_path, cache_dir):
    src = tmp_path / "input.txt"
    src.write_text("not shakespeare\n")
    monkeypatch.setattr(corpora, "TINYSHAKESPEARE_URL", src.as_uri())
    with pytest.raises(DataError, match="sha256"):
        load_corpus("tinyshakespeare")
    assert not (cache_dir / "tinyshakespeare.txt").exists()


def test_tinyshakespeare_corrupt_cache(cache_dir):
    cache_dir.mkdir()
    (cache_dir / "tinyshakespeare.txt").write_text("truncated")
    with pytest.raises(DataError, match="delete it"):
        load_corpus("tinyshakespeare")


def test_tinyshakespeare_offline_error(monkeypatch, cache_dir):
    url = "http://127.0.0.1:9/input.txt"  # discard port: nothing listens
    monkeypatch.setattr(corpora, "TINYSHAKESPEARE_URL", url)
    monkeypatch.setattr(corpora, "DOWNLOAD_TIMEOUT_S", 5.0)
    with pytest.raises(DataError) as e:
        load_corpus("tinyshakespeare")
    msg = str(e.value)
    assert url in msg and "CHARRNN_DATA_DIR" in msg and "\n" not in msg


def test_loading_and_encoding_a_long_text_costs_a_few_bytes_per_character(tmp_path):
    """Reading, hashing, splitting and encoding 8 MB of ASCII for a trainer: the text, its two halves and a
    byte per encoded character, plus bounded temporaries (it peaked at 28 bytes per character)."""
    path = tmp_path / "long.txt"
    block = "".join(f"def f{i}(x):\n    return x * {i} + 'abc'  # note {i % 7}\n" for i in range(1000))
    path.write_text(block * (8_000_000 // len(block)), encoding="utf-8")
    n_chars = path.stat().st_size
    del block
    tracemalloc.start()
    try:
        corpus = load_corpus("file", path)
        vocab = Vocab.from_text(corpus.text)
        train_text, val_text = split_train_val(corpus.text, 0.1, 25)
        trainer = Trainer(ModelConfig("rnn", vocab.size, 8), TrainConfig(), OptimConfig(), vocab, train_text, val_text)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert trainer.train_ix.nbytes + trainer.val_ix.nbytes == n_chars  # one byte per character
    assert peak / n_chars < 5, f"peak {peak / n_chars:.1f} bytes per character"


# --------------------------------------------------------------------------- split


def test_split_sizes():
    text = "".join(chr(97 + i % 26) for i in range(1000))
    train, val = split_train_val(text, 0.1, 25)
    assert train + val == text and len(val) == 100 and len(train) == 900
    train, val = split_train_val(text, 0.0, 25)
    assert train == text and val == ""


def test_split_text_too_short_is_the_gists_index_error():
    with pytest.raises(DataError) as e:
        split_train_val("a" * 26, 0.0, 25)
    assert "26" in str(e.value) and "27" in str(e.value) and "seq_length=25" in str(e.value)
    assert split_train_val("a" * 27, 0.0, 25)[0] == "a" * 27


def test_split_val_too_short_and_train_too_short():
    with pytest.raises(DataError, match=r"gives 10 validation characters.*at least 26"):
        split_train_val("a" * 100, 0.1, 25)
    with pytest.raises(DataError, match=r"leaves 20 for training.*at least 27"):
        split_train_val("a" * 100, 0.8, 25)


def files_corpus(lengths: list[int]) -> Corpus:
    """A corpus of whole files, file i being its number and then dots up to lengths[i] characters."""
    files = [f"{i:03d}".ljust(n, ".") for i, n in enumerate(lengths)]
    starts = tuple(sum(lengths[:i]) for i in range(len(lengths)))
    return Corpus("files", "".join(files), "test", "", starts)


def test_split_corpus_of_files_holds_out_whole_files_drawn_across_it():
    corpus = files_corpus([50] * 40)
    train, val = split_corpus(corpus, 0.1, 25)
    # equal files: a file is held out each time validation falls below 10% of the text before it
    assert val == "".join(f"{i:03d}".ljust(50, ".") for i in (1, 11, 21, 31))
    assert train == "".join(f"{i:03d}".ljust(50, ".") for i in range(40) if i not in (1, 11, 21, 31))
    assert split_corpus(corpus, 0.0, 25) == (corpus.text, "")


def test_split_corpus_of_unequal_files_comes_within_one_file_of_the_fraction():
    lengths = [30 + (i * 37) % 400 for i in range(200)]  # 30 to 429 characters, in no order
    corpus = files_corpus(lengths)
    for fraction in (0.05, 0.1, 0.3):
        train, val = split_corpus(corpus, fraction, 25)
        held = [int(val[start : start + 3]) for start in range(len(val)) if val[start : start + 3].isdigit()]
        assert held == sorted(held) and held[0] < 20 and held[-1] > 180  # whole files, in order, across it all
        assert sorted(held + [int(train[s : s + 3]) for s in range(len(train)) if train[s : s + 3].isdigit()]) == list(
            range(200)
        )
        assert abs(len(val) - fraction * len(corpus.text)) <= max(lengths)


def test_split_corpus_of_one_text_splits_off_its_end():
    text = "".join(chr(97 + i % 26) for i in range(1000))
    for starts in ((), (0,)):
        assert split_corpus(Corpus("file", text, "test", "", starts), 0.1, 25) == split_train_val(text, 0.1, 25)


def test_split_corpus_of_files_too_short_for_seq_length():
    with pytest.raises(DataError, match=r"gives 50 validation characters, but seq_length=60 needs at least 61"):
        split_corpus(files_corpus([50] * 11), 0.1, 60)


def test_split_bad_config():
    with pytest.raises(ConfigError):
        split_train_val("a" * 100, 1.0, 5)
    with pytest.raises(ConfigError):
        split_train_val("a" * 100, 0.1, 0)


# --------------------------------------------------------------------------- BatchStream


def gist_cursor_reference(data: list[int], seq_length: int, n_iters: int):
    """The gist's loop, verbatim in structure: yields (p, inputs, targets, reset_h)."""
    n, p = 0, 0
    while n < n_iters:
        reset = False
        if p + seq_length + 1 >= len(data) or n == 0:
            reset = True  # hprev = np.zeros(...)
            p = 0
        inputs = data[p : p + seq_length]
        targets = data[p + 1 : p + seq_length + 1]
        yield p, inputs, targets, reset
        p += seq_length
        n += 1


@pytest.mark.parametrize("n_chars,T", [(100, 25), (101, 7), (27, 25), (53, 5)])
def test_batchstream_b1_matches_gist(n_chars, T):
    rng = np.random.default_rng(0)
    data_ix = rng.integers(0, 10, size=n_chars)
    s = BatchStream(data_ix, 1, T)
    n_resets = 0
    for p, inp, tgt, reset in gist_cursor_reference(data_ix.tolist(), T, 100):
        assert s.cursor == (p if not reset else s.cursor)  # cursor is the gist's p before the check
        x, y, r = s.next_batch()
        assert x.shape == (T, 1) and y.shape == (T, 1) and x.dtype == y.dtype == np.int64
        assert x[:, 0].tolist() == inp and y[:, 0].tolist() == tgt and r == reset
        assert s.cursor == p + T
        n_resets += reset
    assert n_resets >= 4  # wrapped several times


def test_batchstream_streams_contiguous_across_calls():
    data_ix = np.arange(1003)  # value == position, so continuity is visible
    B, T = 4, 10
    s = BatchStream(data_ix, B, T)
    L = 1003 // B
    assert s.segment_length == L
    x0, y0, r0 = s.next_batch()
    x1, y1, r1 = s.next_batch()
    assert r0 and not r1
    np.testing.assert_array_equal(x0[:, 0], np.arange(T))
    np.testing.assert_array_equal(x0[0], np.arange(B) * L)  # one stream per segment
    np.testing.assert_array_equal(y0, x0 + 1)
    np.testing.assert_array_equal(x1[0], x0[-1] + 1)  # stream b continues where it stopped
    # Run to the wrap: no window crosses a segment boundary, and reset comes exactly at the wrap.
    seen_reset = False
    for _ in range(60):
        x, y, r = s.next_batch()
        assert (y < (np.arange(B) + 1) * L).all()
        if r:
            seen_reset = True
            np.testing.assert_array_equal(x[0], np.arange(B) * L)
    assert seen_reset


def test_batchstream_state_restore():
    data_ix = np.random.default_rng(1).integers(0, 50, size=500)
    a = BatchStream(data_ix, 3, 8)
    for _ in range(13):
        a.next_batch()
    b = BatchStream(data_ix, 3, 8, **a.state())
    c = BatchStream(data_ix, 3, 8)
    c.load_state(a.state())
    for _ in range(30):
        xa, ya, ra = a.next_batch()
        for s in (b, c):
            xs, ys, rs = s.next_batch()
            np.testing.assert_array_equal(xa, xs)
            np.testing.assert_array_equal(ya, ys)
            assert ra == rs
    # A fresh (not started) stream resets on its first call even at cursor 0.
    assert BatchStream(data_ix, 3, 8, cursor=0, started=False).next_batch()[2] is True
    assert BatchStream(data_ix, 3, 8, cursor=0, started=True).next_batch()[2] is False


def test_batchstream_errors():
    with pytest.raises(DataError, match=r"100 characters in batch_size=8 streams gives 12 per stream.*at least 13"):
        BatchStream(np.zeros(100, dtype=np.int64), 8, 11)
    with pytest.raises(ConfigError):
        BatchStream(np.zeros(100, dtype=np.int64), 0, 10)
    with pytest.raises(DataError, match="cursor"):
        BatchStream(np.zeros(100, dtype=np.int64), 1, 10, cursor=100)
    with pytest.raises(DataError, match="1-D integer"):
        BatchStream(np.zeros(100), 1, 10)


# --------------------------------------------------------------------------- eval batches


@pytest.mark.parametrize("n,B,T", [(1000, 4, 25), (103, 1, 10), (30, 8, 25), (26, 1, 25), (57, 3, 5)])
def test_iter_eval_batches_covers_once(n, B, T):
    data_ix = np.arange(n)
    batches = list(iter_eval_batches(data_ix, B, T))
    Bp = batches[0][0].shape[1]
    assert 1 <= Bp <= B
    L = n // Bp
    assert [r for *_, r in batches] == [True] + [False] * (len(batches) - 1)
    assert all(x.shape[0] <= T for x, _, _ in batches)
    targets = np.concatenate([y for _, y, _ in batches])  # (sum t, B')
    inputs = np.concatenate([x for x, _, _ in batches])
    # Each stream is contiguous and predicts every character of its segment but the first.
    for b in range(Bp):
        np.testing.assert_array_equal(inputs[:, b], np.arange(b * L, (b + 1) * L - 1))
        np.testing.assert_array_equal(targets[:, b], np.arange(b * L + 1, (b + 1) * L))


def test_iter_eval_batches_max_chars():
    batches = list(iter_eval_batches(np.arange(1000), 2, 10, max_chars=101))
    ys = np.concatenate([y for _, y, _ in batches])
    assert ys.max() < 101 and ys.size == 2 * 49
    with pytest.raises(DataError):
        list(iter_eval_batches(np.arange(1), 1, 10))
