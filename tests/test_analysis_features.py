"""Feature signals on hand-written texts, the unit ranking on planted activations, and the figures built from them."""

from __future__ import annotations

from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest

from charrnn_analysis.compare import (
    curves_figure,
    feature_scores_figure,
    metric_vs_params_figure,
    param_heatmap_figure,
    swept_params,
)
from charrnn_analysis.errors import AnalysisError
from charrnn_analysis.explorer import write_explorer
from charrnn_analysis.features import FEATURES, compute_features, get_feature, register_feature
from charrnn_analysis.figures import TEXT_CMAP, heatmap_figure, row_starts, text_activation_figure, varying_window
from charrnn_analysis.ranking import average_ranks, pearson_r, rank_units, roc_auc, select_units
from charrnn_analysis.record import Recording
from charrnn_analysis.report import explorer_title
from charrnn_analysis.sources import Model
from charrnn_analysis.streams import validation_streams
from charrnn_analysis.sweep_report import curve_multiples, write_sweep_report
from charrnn_analysis.tables import markdown_table
from conftest import TEXT, small_trainer


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
    text = 'a = \'it\\\'s\' # "no"\n"""x\ny""" b'
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


# --- figures that answer: where the feature varies, titled, labelled, legible --------------------------------------


def contrast_with_black(rgb) -> float:
    """WCAG 2 contrast ratio of black text on the colour ``rgb`` (components in [0, 1])."""
    linear = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in rgb[:3]]
    luminance = 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]
    return (luminance + 0.05) / 0.05


def test_text_figure_colours_keep_black_text_readable():
    assert min(contrast_with_black(TEXT_CMAP(x)) for x in np.linspace(0, 1, 101)) >= 4.5  # WCAG AA
    red, blue = TEXT_CMAP(0.0), TEXT_CMAP(1.0)
    assert red[0] > red[2] + 0.1 and blue[2] > blue[0] + 0.1  # still red at -1 and blue at +1


def test_varying_window_shows_the_lines_where_the_feature_changes():
    plain = "".join(f"line {i} without any\n" for i in range(100))
    quoted = "".join(f'line {i} says "hi" twice "yo"\n' for i in range(10))
    text = plain + quoted + plain
    start, end = varying_window(get_feature("in_double_quotes")(text), text, 80, 8)
    assert text[start:end].count('"') == 8 * 4 and text[start - 1] == "\n"  # eight quoted lines, from a line start
    # another feature on the same text gets its own window: the bracket lines come later
    text2 = quoted + plain + "".join(f"call(f(x[{i}]))\n" for i in range(10))
    start, end = varying_window(get_feature("bracket_depth")(text2), text2, 80, 5)
    assert text2[start:end].count("(") == 5 * 2
    # a line longer than the figure is wrapped into rows, as the figure draws it
    assert row_starts("a" * 25 + "\nbc", 10) == [0, 10, 20, 26]


def test_text_figure_has_a_title_a_labelled_colour_bar_and_a_legend_for_the_underline():
    text = 'a "bc" d\n' * 5
    marks = get_feature("in_double_quotes")(text)
    fig = text_activation_figure(
        text,
        np.linspace(-1, 1, len(text)),
        "in_double_quotes: unit h.0:1",
        marks=marks,
        marks_label="underlined: in_double_quotes",
    )
    text_axes, bar = fig.axes
    assert text_axes.get_title(loc="left") == "in_double_quotes: unit h.0:1"
    assert bar.get_xlabel() == "unit activation: red = -1, white = 0, blue = +1"
    assert [t.get_text() for t in text_axes.get_legend().get_texts()] == ["underlined: in_double_quotes"]


def test_heatmap_labels_both_axes_and_its_colour_bar():
    fig = heatmap_figure(np.zeros((20, 4)), "x" * 20, "h (layer 0)", first_offset=300)
    heat, bar = fig.axes
    assert heat.get_title() == "h (layer 0)" and heat.get_ylabel() == "unit"
    assert {t.get_fontsize() for t in heat.get_xticklabels()} == {9.0}, "character ticks a reader can read"
    assert heat.get_xlabel() == "character read (characters 300-319 of the corpus)"
    assert bar.get_ylabel() == "activation (red -1, blue +1)"


def sweep_table() -> tuple[pd.DataFrame, dict]:
    rows, histories = [], {}
    for i, (hidden, lr) in enumerate([(32, 0.1), (64, 0.1), (128, 0.01), (64, 0.01)]):
        run_id = f"run{i}"
        rows.append(
            {
                "run_id": run_id,
                "run_name": f"h={hidden} lr={lr}",
                "status": "FINISHED",
                "model.hidden_size": str(hidden),
                "optim.lr": str(lr),
                "val/best_loss": 2.0 - hidden / 1000,
                "final val/loss": 2.0,
                "unit score: line_position": hidden / 200,
                "unit score: in_comment": lr,
            }
        )
        histories[run_id] = {key: (np.array([0, 100]), np.array([3.0, 2.0])) for key in ("train/loss", "val/loss")}
    return pd.DataFrame(rows), histories


def test_compare_figures_say_what_they_show():
    table, histories = sweep_table()
    curves = curves_figure(table, histories, ["model.hidden_size", "optim.lr"])
    assert curves.get_suptitle() == "learning curves of 4 runs"
    assert [ax.get_title() for ax in curves.axes] == [
        f"{m}, coloured by {k}" for k in ("model.hidden_size", "optim.lr") for m in ("train/loss", "val/loss")
    ]
    legends = [ax.get_legend() for ax in curves.axes if ax.get_legend()]
    assert [legend.get_title().get_text() for legend in legends] == ["model.hidden_size", "optim.lr"]
    assert [t.get_text() for t in legends[0].get_texts()] == ["32", "64", "128"]  # numeric order, one per value
    lr_colours = [line.get_color() for line in curves.axes[3].get_lines()]
    assert lr_colours[0] != lr_colours[3], "h=32 lr=0.1 and h=64 lr=0.01 differ in colour where lr colours"

    scatter = metric_vs_params_figure(table, ["model.hidden_size", "optim.lr"])
    for ax, param in zip(scatter.axes, ["model.hidden_size", "optim.lr"]):
        assert ax.get_title() == f"val/best_loss vs {param}" and ax.get_xlabel() == param
        assert ax.get_ylabel() == "val/best_loss (nats/char)"
    # one label per value, on its best run: no two labels in one column
    assert sorted(t.get_text() for t in scatter.axes[0].texts) == ["h=128 lr=0.01", "h=32 lr=0.1", "h=64 lr=0.1"]
    assert sorted(t.get_text() for t in scatter.axes[1].texts) == ["h=128 lr=0.01", "h=64 lr=0.1"]

    scores = feature_scores_figure(table, "model.hidden_size")
    ax = scores.axes[0]
    assert ax.get_title() == "best unit score per feature vs model.hidden_size (4 runs; lines: mean)"
    assert ax.get_ylabel() == "best unit score (|r|, or |AUC-0.5|x2)" and ax.get_xlabel() == "model.hidden_size"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["line_position", "in_comment"]
    line = ax.get_lines()[0]  # line_position's mean per hidden size
    assert line.get_xdata().tolist() == [32, 64, 128] and line.get_ydata().tolist() == [0.16, 0.32, 0.64]

    heat = param_heatmap_figure(table, "model.hidden_size", "optim.lr")
    ax, bar = heat.axes
    assert ax.get_title() == "val/best_loss, mean over runs per cell"
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("model.hidden_size", "optim.lr")
    assert [t.get_text() for t in ax.get_xticklabels()] == ["32", "64", "128"]
    assert bar.get_ylabel() == "val/best_loss (nats/char, lower is better)"


def test_the_swept_params_are_the_params_that_vary_not_the_best_loss_column():
    table, _ = sweep_table()
    assert swept_params(table) == ["model.hidden_size", "optim.lr"]


def test_the_sweep_report_is_one_page_that_needs_no_network(tmp_path):
    table, histories = sweep_table()
    keys = ["model.hidden_size", "optim.lr"]
    by_lr = curve_multiples(table, histories, "optim.lr")
    assert len(by_lr.data) == 4 and by_lr.layout.legend.title.text == "optim.lr"
    assert [t.showlegend for t in by_lr.data].count(True) == 2, "one legend entry per lr"
    assert len(set(t.line.color for t in by_lr.data)) == 2
    files = write_sweep_report(table, histories, tmp_path, "sweep demo", keys)
    assert [f.name for f in files] == [
        "report.html",
        "runs.csv",
        "leaderboard.md",
        "curves.png",
        "val_loss_vs_params.png",
        "parallel.png",
    ]
    page = (tmp_path / "report.html").read_text()
    scripts = ScriptTags()
    scripts.feed(page)
    assert scripts.count >= 1 and scripts.sources == [], "plotly.js is inline: no script loads anything"
    assert all(f'id="val-curves-{i}"' in page for i in range(len(keys))) and '"type":"parcoords"' in page
    assert all(name in page for name in table["run_name"])


class ScriptTags(HTMLParser):
    """Counts a page's script elements and keeps the src of those that load one (the parser skips script bodies)."""

    def __init__(self):
        super().__init__()
        self.count, self.sources = 0, []

    def handle_starttag(self, tag, attrs):
        if tag == "script":
            self.count += 1
            self.sources += [value for name, value in attrs if name == "src"]


def test_the_explorer_opens_on_the_strongest_unit_and_is_titled_by_what_it_shows(tmp_path):
    text = "ab" * 20
    A = np.stack([np.linspace(-1, 1, len(text))] * 3, axis=1)
    top = pd.DataFrame(
        {
            "feature": ["f", "g", "g"],
            "kind": ["continuous"] * 3,
            "rank": [1, 1, 2],
            "unit": ["h.0:0", "h.0:2", "h.0:1"],
            "score": [0.2, 0.9, 0.5],
            "r": [0.2, 0.9, 0.5],
            "auc": [np.nan] * 3,
            "sign": [1, 1, 1],
        }
    )
    page = write_explorer(tmp_path / "explorer.html", text, A, ["h.0:0", "h.0:1", "h.0:2"], top, "t", 0, "corpus")
    assert '"initial": 2' in page.read_text(), "h.0:2 scores 0.9, above the first feature's unit"
    recording = Recording(
        text,
        np.arange(len(text)),
        np.zeros(len(text), np.float32),
        {"h.0": A},
        {
            "cell": "lstm",
            "num_layers": 2,
            "hidden_size": 64,
            "run_id": "abc123",
            "text_source": "the validation text of pystdlib",
        },
    )
    assert explorer_title(recording) == "lstm 2x64 on the validation text of pystdlib (run abc123)"


def test_validation_streams_are_the_loss_training_measured_stream_by_stream():
    trainer = small_trainer("lstm", layers=2, max_iters=20)
    trainer.run()
    split = len(TEXT) * 9 // 10
    model = Model(
        trainer.params,
        trainer.model_config,
        trainer.vocab,
        {},
        {"train.eval_batch_size": "4", "train.seq_length": "10", "train.eval_max_chars": "None"},
    )
    table = validation_streams(model, TEXT[split:], split)
    streams = trainer.evaluate_streams()
    assert list(table["start"]) == list(split + streams.starts) and list(table["loss"]) == list(streams.per_stream)
    assert (table["loss"] * table["chars"]).sum() / table["chars"].sum() == pytest.approx(trainer.evaluate(), rel=1e-12)
