"""Feature signals on hand-written texts, and the unit ranking on planted activations."""

from __future__ import annotations

import numpy as np
import pytest

from charrnn_analysis.errors import AnalysisError
from charrnn_analysis.features import FEATURES, compute_features, get_feature, register_feature
from charrnn_analysis.ranking import average_ranks, pearson_r, rank_units, roc_auc, select_units
from charrnn_analysis.tables import markdown_table


def bits(values: np.ndarray) -> str:
    return "".join(str(int(v)) for v in values)


def test_double_quotes_span_lines_and_include_quotes():
    assert bits(get_feature("in_double_quotes")('a "bc\nd" e')) == "0011111100"


def test_single_quotes_end_at_newline():
    # The apostrophe in "don't" would otherwise keep the span open for the rest of the text.
    assert bits(get_feature("in_single_quotes")("x 'y' don't\nab")) == "00111000011000"


def test_line_position_counts_from_newline():
    assert get_feature("line_position")("ab\ncd").tolist() == [1, 2, 0, 1, 2]


def test_bracket_depth_nests_and_never_goes_negative():
    assert get_feature("bracket_depth")("f(a[b]){}))x").tolist() == [0, 1, 1, 2, 2, 2, 1, 1, 1, 0, 0, 0]


def test_indentation_covers_whole_line_with_tabs():
    values = get_feature("indentation")("a\n  b\n\tc")
    assert values.tolist() == [0, 0, 2, 2, 2, 2, 4, 4]


def test_comments_hash_slashes_and_blocks():
    text = 'x # c\ny // d\n/* e\n */z "#"'
    assert bits(get_feature("in_comment")(text)) == "00111" + "0" + "001111" + "0" + "11111" + "111" + "00000"


def test_strings_escapes_triple_quotes_and_hidden_comment_markers():
    text = "a = 'it\\'s' # \"no\"\n\"\"\"x\ny\"\"\" b"
    in_string = bits(get_feature("in_string")(text))
    in_comment = bits(get_feature("in_comment")(text))
    assert in_string == "0000" + "1111111" + "0" + "000000" + "0" + "1" * 9 + "00"
    assert in_comment == "0000" + "0000000" + "0" + "111111" + "0" + "0" * 9 + "00"


def test_unterminated_string_stops_before_newline():
    assert bits(get_feature("in_string")('"ab\ncd')) == "111000"


def test_word_start_and_after_newline():
    assert bits(get_feature("word_start")("ab c_d (e")) == "100100001"
    assert bits(get_feature("after_newline")("a\nb\n\nc")) == "001011"


def test_every_feature_returns_one_value_per_character_even_on_empty_text():
    for name, values in compute_features("").items():
        assert values.shape == (0,), name
    for name, values in compute_features("x = (1)\n").items():
        assert values.shape == (8,), name


def test_registry_is_extensible_and_unknown_names_fail_clearly():
    @register_feature("is_x_test", kind="binary", description="character is x")
    def is_x(text):
        return np.array([c == "x" for c in text])

    try:
        assert bits(compute_features("axx", ["is_x_test"])["is_x_test"]) == "011"
    finally:
        del FEATURES["is_x_test"]
    with pytest.raises(AnalysisError, match="unknown feature 'nope'"):
        get_feature("nope")


def test_scores_match_reference_definitions():
    rng = np.random.default_rng(0)
    A = rng.integers(0, 4, size=(60, 3)).astype(np.float16)  # many ties, as in float16 recordings
    y = rng.random(60) < 0.4
    for u in range(3):
        a = A[:, u].astype(float)
        pairs = (a[y][:, None] > a[~y][None, :]).mean() + 0.5 * (a[y][:, None] == a[~y][None, :]).mean()
        assert roc_auc(A, y)[u] == pytest.approx(pairs)
        ranks = average_ranks(A)[:, u]
        assert ranks.sum() == 60 * 61 / 2 and np.all(ranks[a == a[0]] == ranks[0])  # ties share one rank
        assert np.all(np.diff(ranks[np.argsort(a, kind="stable")]) >= 0)
    s = rng.normal(size=60)
    assert pearson_r(A, s) == pytest.approx([np.corrcoef(A[:, u].astype(float), s)[0, 1] for u in range(3)])
    assert pearson_r(np.ones((5, 1)), np.arange(5.0))[0] == 0.0  # a dead unit scores 0, not nan


def planted(text: str, feature: str, unit: int, sign: float, n_units: int = 20) -> np.ndarray:
    rng = np.random.default_rng(1)
    A = rng.normal(size=(len(text), n_units)).astype(np.float32)
    signal = get_feature(feature)(text).astype(np.float32)
    A[:, unit] = sign * (signal - signal.mean()) / (signal.std() + 1e-9) + 0.5 * rng.normal(size=len(text))
    return A


def test_ranking_recovers_planted_units():
    text = ('x = "abc" + f(y[1], (2))\n    # say "hi"\n' * 20)[:800]
    labels = [f"h.0:{u}" for u in range(20)]
    for feature, unit, sign in [("in_double_quotes", 7, 1.0), ("bracket_depth", 3, -1.0), ("in_comment", 12, -1.0)]:
        table = rank_units(planted(text, feature, unit, sign), labels, text, [feature], top_k=3)
        top = table.iloc[0]
        assert top["unit"] == f"h.0:{unit}" and top["rank"] == 1 and top["sign"] == int(sign)
        assert top["score"] > 0.8 and table["score"].iloc[1] < 0.3
    md = markdown_table(table)
    assert md.startswith("| feature | kind | rank | unit |") and "h.0:12" in md


def test_rank_units_rejects_mismatched_shapes():
    with pytest.raises(AnalysisError, match="do not match"):
        rank_units(np.zeros((3, 2)), ["a", "b"], "abcd")


def test_select_units_finds_unit_on_inside_range_only():
    A = np.full((30, 4), -0.5, dtype=np.float32)
    A[10:15, 2] = 0.9  # on exactly inside the marked range
    A[:, 1] = 0.9  # on everywhere: not selective
    A[10:15, 3] = 0.9
    A[8, 3] = 0.9  # on just before the range: fails the strict rule
    table = select_units(A, ["a", "b", "c", "d"], 10, 15)
    assert table["unit"].tolist() == ["c"]
    assert select_units(A, ["a", "b", "c", "d"], 10, 15, min_fraction=0.8)["unit"].tolist() == ["c", "d"]
    with pytest.raises(AnalysisError, match="out of bounds"):
        select_units(A, ["a", "b", "c", "d"], 25, 40)
