"""Cells against controls and gate saturation, on a tiny 2-layer LSTM trained through charrnn-train: the control
scores are the ranking on the shuffled text (features recomputed on it) and on an untrained model of the same
shape; the saturation table is the direct fraction of recorded gate values below 0.1 and above 0.9."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from charrnn.checkpoint import load_model
from charrnn.model import init_params
from charrnn_analysis.control import shuffle_within_lines
from charrnn_analysis.ranking import rank_units
from charrnn_analysis.record import Recording, record
from conftest import run_cli, tiny, write_small_text

FEATURES = ["in_double_quotes", "line_position", "bracket_depth", "indentation", "in_string", "after_newline"]


@pytest.fixture(scope="module")
def analysed(tmp_path_factory):
    """A 2-layer LSTM trained for 60 iterations, then `charrnn-analyze run=<id>` on up to 600 validation chars."""
    root = tmp_path_factory.mktemp("control")
    text = write_small_text(root)
    trained = run_cli(
        "charrnn-train", *tiny(text, "model=lstm", "model.num_layers=2", "record.enabled=false"), cwd=root
    )
    assert trained.returncode == 0, trained.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{root}/mlflow.db")
    run = client.search_runs([client.get_experiment_by_name("charrnn").experiment_id])[0].info.run_id
    out = root / "out"
    analysed = run_cli(
        "charrnn-analyze", f"run={run}", "record.length=600", f"features=[{','.join(FEATURES)}]", f"out={out}", cwd=root
    )
    assert analysed.returncode == 0, analysed.stderr[-3000:]
    model = load_model(client.download_artifacts(run, "checkpoints/best.npz", str(root)))
    return {
        "client": client,
        "run": run,
        "out": out,
        "stdout": analysed.stdout,
        "model": model,
        "recording": Recording.load(out / "recording.npz"),
    }


def test_shuffle_within_lines_keeps_each_line_s_characters_and_length_and_is_deterministic(tmp_path):
    text = write_small_text(tmp_path).read_text()
    shuffled = shuffle_within_lines(text)
    assert len(shuffled) == len(text) and shuffled != text
    lines, shuffled_lines = text.split("\n"), shuffled.split("\n")
    assert len(lines) == len(shuffled_lines)
    assert all(sorted(a) == sorted(b) for a, b in zip(lines, shuffled_lines))
    assert sum(a != b for a, b in zip(lines, shuffled_lines)) > len(lines) // 2
    assert shuffle_within_lines(text) == shuffled and shuffle_within_lines(text, seed=1) != shuffled


def best_scores(params, model, text: str, states=None) -> pd.Series:
    """Each feature's best unit score, ranking a fresh recording of ``text`` (c for an LSTM, as analyze ranks)."""
    config, vocab = model[1], model[2]
    A, labels = record(params, config, vocab, text).unit_matrix(states)
    return rank_units(A, labels, text, FEATURES, top_k=1).set_index("feature")["score"]


def test_control_table_ranks_the_shuffled_text_and_an_untrained_model(analysed):
    control = pd.read_csv(analysed["out"] / "control.csv").set_index("feature")
    assert list(control.index) == FEATURES
    rec, (params, config, _) = analysed["recording"], analysed["model"]
    real = rank_units(*rec.unit_matrix(), rec.text, FEATURES, top_k=1).set_index("feature")
    assert control["best unit"].tolist() == real["unit"].tolist()
    assert control["score"].to_numpy() == pytest.approx(real["score"].to_numpy(), abs=1e-12)

    shuffled = shuffle_within_lines(rec.text)
    assert [sorted(line) for line in shuffled.split("\n")] == [sorted(line) for line in rec.text.split("\n")]
    on_shuffled = best_scores(params, analysed["model"], shuffled)
    assert control["shuffled-text score"].to_numpy() == pytest.approx(on_shuffled[FEATURES].to_numpy(), abs=1e-12)
    # features recomputed on the shuffled text: a shuffle moves quotes and brackets, never newlines
    changed = control["feature changed by shuffle"]
    assert changed["line_position"] == 0 and changed["after_newline"] == 0
    assert changed["bracket_depth"] > 0.1 and changed["indentation"] > 0.1

    untrained = init_params(config, np.random.default_rng(0))
    on_untrained = best_scores(untrained, analysed["model"], rec.text)
    assert control["untrained score"].to_numpy() == pytest.approx(on_untrained[FEATURES].to_numpy(), abs=1e-12)

    bar = np.where(control["kind"] == "binary", 0.9, 0.8)  # AUC >= 0.95 or <= 0.05; |r| >= 0.8
    assert (control["matches the paper"] == np.where(control["score"] >= bar, "yes", "no")).all()
    assert "best unit per feature against the controls (score: |r| (continuous) or |AUC-0.5|x2" in analysed["stdout"]
    logged = {a.path for a in analysed["client"].list_artifacts(analysed["run"], "analysis")}
    assert {"analysis/control.csv", "analysis/control.md", "analysis/gate_saturation.csv"} <= logged


def test_gate_saturation_table_is_the_fraction_of_steps_below_and_above_the_bounds(analysed):
    rec = analysed["recording"]
    table = pd.read_csv(analysed["out"] / "gate_saturation.csv")
    assert list(zip(table["layer"], table["gate"])) == [(0, "i"), (0, "f"), (0, "o"), (1, "i"), (1, "f"), (1, "o")]
    for row in table.itertuples(index=False):
        gate = rec.arrays[f"{row.gate}.{row.layer}"]  # the stored float16 values, straight from the .npz
        assert gate.shape == (len(rec.text), 8) and row.units == 8
        left, right = (gate < 0.1).mean(), (gate > 0.9).mean()
        assert (row[3], row[4]) == pytest.approx((left, right), abs=1e-12)
        assert row[5] == pytest.approx(1 - left - right, abs=1e-12)
    assert "gate saturation, mean over units:" in analysed["stdout"]
    assert (analysed["out"] / "figures" / "gate_saturation.png").stat().st_size > 5000


def test_a_recording_alone_has_no_model_for_the_controls_and_says_so(analysed, tmp_path):
    result = run_cli(
        "charrnn-analyze",
        f"recording={analysed['out'] / 'recording.npz'}",
        "features=[in_string]",
        f"out={tmp_path / 'again'}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "(no controls: a recording= has no model to run on shuffled text)" in result.stdout
    assert not (tmp_path / "again" / "control.csv").exists() and (tmp_path / "again" / "gate_saturation.csv").exists()
