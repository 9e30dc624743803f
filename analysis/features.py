"""Per-character feature signals: plain functions ``text -> np.ndarray`` of shape (N,), one value per character.

Convention: a span feature (quotes, comments, strings) marks every character of the span, delimiters included,
so a figure of the feature lines up with the text a reader sees. Binary features are 0/1 ``int8`` arrays and are
ranked by ROC AUC; continuous ones are ``float32`` and ranked by Pearson correlation.

Adding a feature takes a few lines::

    from charrnn_analysis.features import register_feature

    @register_feature("is_vowel", kind="binary", description="character is a vowel")
    def is_vowel(text):
        return np.fromiter((c in "aeiouAEIOU" for c in text), dtype=np.int8, count=len(text))
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np

from .errors import AnalysisError

FeatureKind = Literal["binary", "continuous"]
TAB_WIDTH = 4  # columns a tab counts for in `indentation`
OPEN_BRACKETS, CLOSE_BRACKETS = "([{", ")]}"


@dataclass(frozen=True)
class Feature:
    name: str
    kind: FeatureKind
    description: str
    fn: Callable[[str], np.ndarray]

    def __call__(self, text: str) -> np.ndarray:
        values = np.asarray(self.fn(text))
        if values.shape != (len(text),):
            raise AnalysisError(f"feature {self.name!r} returned shape {values.shape}, expected ({len(text)},)")
        return values.astype(np.int8 if self.kind == "binary" else np.float32, copy=False)


FEATURES: dict[str, Feature] = {}


def register_feature(name: str, kind: FeatureKind, description: str = ""):
    """Decorator adding ``fn(text) -> (N,) array`` to :data:`FEATURES` under ``name``."""
    if kind not in ("binary", "continuous"):
        raise AnalysisError(f"feature kind must be 'binary' or 'continuous', got {kind!r}")

    def decorate(fn: Callable[[str], np.ndarray]) -> Callable[[str], np.ndarray]:
        FEATURES[name] = Feature(name, kind, description or (fn.__doc__ or "").strip(), fn)
        return fn

    return decorate


def get_feature(name: str) -> Feature:
    try:
        return FEATURES[name]
    except KeyError:
        raise AnalysisError(f"unknown feature {name!r} (known: {', '.join(sorted(FEATURES))})") from None


def compute_features(text: str, names: list[str] | None = None) -> dict[str, np.ndarray]:
    """Every requested feature (all registered ones by default) evaluated on ``text``."""
    features = [get_feature(n) for n in (names if names is not None else list(FEATURES))]
    return {f.name: f(text) for f in features}


def _toggle_span(text: str, quote: str, reset_at_newline: bool) -> np.ndarray:
    # A quote opens a span and the next one closes it; both quotes belong to the span.
    out = np.zeros(len(text), dtype=np.int8)
    inside = False
    for t, ch in enumerate(text):
        if ch == "\n" and reset_at_newline:
            inside = False
        if ch == quote:
            out[t] = 1
            inside = not inside
        else:
            out[t] = inside
    return out


@register_feature("in_double_quotes", "binary", 'between a pair of double quotes (" included), across lines')
def in_double_quotes(text: str) -> np.ndarray:
    # Prose quotations (the paper's quote cell) span lines, so a newline does not close the span.
    return _toggle_span(text, '"', reset_at_newline=False)


@register_feature("in_single_quotes", "binary", "between a pair of single quotes (' included) on one line")
def in_single_quotes(text: str) -> np.ndarray:
    # Apostrophes ("don't") leave a quote unpaired; ending the span at the newline stops it leaking on.
    return _toggle_span(text, "'", reset_at_newline=True)


@register_feature("line_position", "continuous", "characters since the last newline (0 at the newline itself)")
def line_position(text: str) -> np.ndarray:
    t = np.arange(len(text))
    is_newline = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32) == ord("\n")
    last_newline = np.maximum.accumulate(np.where(is_newline, t, -1))
    # Before the first newline, count from a virtual newline at -1 so the first character is at position 1.
    return (t - last_newline).astype(np.float32)


@register_feature("bracket_depth", "continuous", "nesting depth of (), [] and {} (brackets count at their own depth)")
def bracket_depth(text: str) -> np.ndarray:
    out = np.zeros(len(text), dtype=np.float32)
    depth = 0
    for t, ch in enumerate(text):
        if ch in OPEN_BRACKETS:
            depth += 1
            out[t] = depth
        elif ch in CLOSE_BRACKETS:
            out[t] = depth
            depth = max(depth - 1, 0)  # an unmatched closer must not drive the depth negative
        else:
            out[t] = depth
    return out


@register_feature("indentation", "continuous", f"leading-whitespace width of the character's line (tab = {TAB_WIDTH})")
def indentation(text: str) -> np.ndarray:
    out = np.zeros(len(text), dtype=np.float32)
    start = 0
    for line in text.split("\n"):
        stripped = line.lstrip(" \t")
        leading = line[: len(line) - len(stripped)]
        width = leading.count(" ") + TAB_WIDTH * leading.count("\t")
        end = start + len(line) + 1  # the newline belongs to the line it ends
        out[start:end] = width
        start = end
    return out


def _lex_strings_and_comments(text: str) -> tuple[np.ndarray, np.ndarray]:
    """(in_string, in_comment) for Python- and C-like code, each (N,) int8.

    A small lexer rather than two independent toggles, because each construct hides the other: a ``#`` inside a
    string is not a comment and a quote inside a comment opens no string. Handles ``#``/``//`` line comments,
    ``/* */`` block comments, '...' and "..." strings with backslash escapes (ended by a newline if unterminated)
    and triple-quoted strings spanning lines.
    """
    n = len(text)
    in_string = np.zeros(n, dtype=np.int8)
    in_comment = np.zeros(n, dtype=np.int8)
    t = 0
    while t < n:
        ch = text[t]
        if ch == "#" or text.startswith("//", t):
            end = text.find("\n", t)
            end = n if end < 0 else end  # the newline itself is outside the comment
            in_comment[t:end] = 1
            t = end
        elif text.startswith("/*", t):
            end = text.find("*/", t + 2)
            end = n if end < 0 else end + 2
            in_comment[t:end] = 1
            t = end
        elif ch in "'\"":
            quote = ch * 3 if text.startswith(ch * 3, t) else ch
            end = t + len(quote)
            while end < n:
                if text.startswith(quote, end):
                    end += len(quote)
                    break
                if text[end] == "\\":
                    end += 2  # an escaped character never closes the string
                    continue
                if text[end] == "\n" and len(quote) == 1:
                    break  # an unterminated one-line string stops before the newline
                end += 1
            end = min(end, n)
            in_string[t:end] = 1
            t = end
        else:
            t += 1
    return in_string, in_comment


@register_feature("in_comment", "binary", "inside a #, // or /* */ comment (markers included)")
def in_comment(text: str) -> np.ndarray:
    return _lex_strings_and_comments(text)[1]


@register_feature("in_string", "binary", "inside a string literal ('', \"\", triple-quoted; quotes included)")
def in_string(text: str) -> np.ndarray:
    return _lex_strings_and_comments(text)[0]


def _is_word_char(text: str) -> np.ndarray:
    return np.fromiter((c.isalnum() or c == "_" for c in text), dtype=bool, count=len(text))


@register_feature("word_start", "binary", "first character of a word (letters, digits, _)")
def word_start(text: str) -> np.ndarray:
    word = _is_word_char(text)
    previous = np.concatenate([[False], word[:-1]])
    return (word & ~previous).astype(np.int8)


@register_feature("after_newline", "binary", "the character right after a newline")
def after_newline(text: str) -> np.ndarray:
    out = np.zeros(len(text), dtype=np.int8)
    if len(text) > 1:
        out[1:] = np.frombuffer(text[:-1].encode("utf-32-le"), dtype=np.uint32) == ord("\n")
    return out
