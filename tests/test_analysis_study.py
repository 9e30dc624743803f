"""What makes any sweep a study of units: every finished run records its hidden state, compare reads it back.
(The study presets themselves are tested in test_study_presets.py.)"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from charrnn.data import Vocab
from charrnn.model import ModelConfig, count_params, init_params
from charrnn_analysis.record import Recording
from charrnn_analysis.study import is_settings_search
from charrnn_analysis.trained_run import FinishedRunRecorder, record_finished_run
from conftest import small_trainer, tiny

# --- every finished training run records its hidden state; a sweep's compare reads it back ---------------------


def finished_runs(cwd: Path) -> list:
    client = MlflowClient(f"sqlite:///{cwd}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("charrnn").experiment_id])
    return client, [r for r in runs if r.info.status == "FINISHED"]


def test_every_finished_run_records_its_validation_slice_and_compare_reads_the_unit_scores(cli, small_text, tmp_path):
    out = cli("charrnn-train", "-m", *tiny(small_text), "model.hidden_size=4,8", "record.length=300")
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("recorded the hidden state on 300 validation characters in ") == 2
    client, runs = finished_runs(tmp_path)
    children = [r for r in runs if MLFLOW_PARENT_RUN_ID in r.data.tags]
    assert len(children) == 2
    text = small_text.read_text()
    val_start = len(text) - int(len(text) * 0.1)  # train.val_fraction's default split
    for child in children:
        logged = {a.path for a in client.list_artifacts(child.info.run_id, "analysis")}
        assert logged == {"analysis/recording.npz", "analysis/top_units.csv", "analysis/top_units.md"}
        rec = Recording.load(client.download_artifacts(child.info.run_id, "analysis/recording.npz", str(tmp_path)))
        # the same fixed slice for every run on this data: the head of the validation split
        assert rec.text == text[val_start : val_start + 300] and rec.offsets[0] == val_start
        assert rec.meta["hidden_size"] == int(child.data.params["model.hidden_size"])

    parent = children[0].data.tags[MLFLOW_PARENT_RUN_ID]
    compared = cli("charrnn-compare", f"parent={parent}", f"out={tmp_path / 'cmp'}", "tracking.uri=sqlite:///mlflow.db")
    assert compared.returncode == 0, compared.stderr
    table = pd.read_csv(tmp_path / "cmp" / "runs.csv")
    scores = table[[c for c in table.columns if c.startswith("unit score: ")]]
    assert scores.shape == (2, 9) and scores.notna().all().all() and ((scores >= 0) & (scores <= 1)).all().all()
    assert (tmp_path / "cmp" / "unit_scores_vs_param.png").stat().st_size > 5000


def test_record_enabled_false_records_nothing(cli, small_text, tmp_path):
    out = cli("charrnn-train", *tiny(small_text), "record.enabled=false")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "recorded the hidden state" not in out.stdout
    client, runs = finished_runs(tmp_path)
    assert len(runs) == 1 and client.list_artifacts(runs[0].info.run_id, "analysis") == []


def test_a_run_without_validation_text_skips_recording_with_a_message(capsys, tmp_path):
    vocab = Vocab.from_text("abc")
    config = ModelConfig("rnn", vocab.size, 4)
    params = init_params(config, np.random.default_rng(0))
    settings = {"enabled": True, "start": 0, "length": 100, "chunk": 64, "dtype": "float16"}
    logged = []
    assert record_finished_run(params, config, vocab, None, 0, settings, tmp_path, logged.append, 1.0) is None
    assert (
        capsys.readouterr().out == "hidden state not recorded: the run has no validation text (train.val_fraction=0)\n"
    )
    assert logged == [] and list(tmp_path.iterdir()) == []
    # a validation text shorter than record.length is recorded whole
    val = vocab.encode("abcab" * 4)
    top = record_finished_run(params, config, vocab, val, 7, settings, tmp_path, logged.append, 1.0)
    assert logged == [tmp_path] and len(top) == 9 * 4  # every feature, all four units
    assert Recording.load(tmp_path / "recording.npz").text == "abcab" * 4


def test_the_recorder_callback_records_a_finished_training_and_not_a_stopped_one(capsys, tmp_path):
    settings = {"enabled": True, "start": 0, "length": 50, "chunk": 16, "dtype": "float16"}
    logged = []
    finished, stopped = small_trainer(max_iters=10), small_trainer(max_iters=10)
    finished.run([FinishedRunRecorder(settings, tmp_path / "finished", logged.append)])
    stopped.request_stop()
    stopped.run([FinishedRunRecorder(settings, tmp_path / "stopped", logged.append)])
    assert logged == [tmp_path / "finished"] and not (tmp_path / "stopped").exists()
    recording = Recording.load(tmp_path / "finished" / "recording.npz")
    assert recording.text == finished.vocab.decode(finished.val_ix[:50])
    assert "recorded the hidden state on 50 validation characters" in capsys.readouterr().out


def test_compare_of_a_seed_sweep_writes_the_study_table_with_mean_and_std_over_seeds(cli, small_text, tmp_path):
    """Two cells x seeds 1, 2 and -1 (refused: those runs end FAILED) -> one row per cell, its statistics over the
    two FINISHED seeds, checked against the val/loss histories read straight from the store."""
    out = cli("charrnn-train", "-m", *tiny(small_text), "model=rnn,gru", "train.seed=1,2,-1", "record.length=300")
    assert out.returncode == 1, out.stderr[-3000:]  # a sweep with failed jobs exits 1
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("charrnn").experiment_id])
    parent = next(r.info.run_id for r in runs if MLFLOW_PARENT_RUN_ID not in r.data.tags)
    children = [r for r in runs if r.data.tags.get(MLFLOW_PARENT_RUN_ID) == parent]
    assert len(children) == 6

    compared = cli("charrnn-compare", f"parent={parent}", f"out={tmp_path / 'cmp'}", "tracking.uri=sqlite:///mlflow.db")
    assert compared.returncode == 0, compared.stderr
    study = pd.read_csv(tmp_path / "cmp" / "study.csv").set_index("model.cell")
    assert list(study.index) == ["rnn", "gru"]  # the paper's order
    vocab_size = Vocab.from_text(small_text.read_text()).size
    for cell in ("rnn", "gru"):
        mine = [r for r in children if r.data.params["model.cell"] == cell]
        best = [
            min(m.value for m in client.get_metric_history(r.info.run_id, "val/loss"))
            for r in mine
            if r.info.status == "FINISHED"
        ]
        assert sorted(r.data.params["train.seed"] for r in mine if r.info.status == "FINISHED") == ["1", "2"]
        row = study.loc[cell]
        assert row["n seeds"] == 2 and row["not finished"] == "seed -1 FAILED"
        assert row["val/best_loss mean"] == pytest.approx(np.mean(best), rel=1e-12)
        assert row["val/best_loss std"] == pytest.approx(np.std(best, ddof=1), rel=1e-9)
        assert (row["val/best_loss min"], row["val/best_loss max"]) == pytest.approx((min(best), max(best)), rel=1e-12)
        assert row["num params"] == count_params(ModelConfig(cell, vocab_size, 8))
        assert (row["data.name"], row["model.num_layers"], row["model.hidden_size"]) == ("file", 1, 8)
        assert (row["optim.lr"], row["model.dropout"]) == (0.1, 0.0)  # the setting of the row
    printed = compared.stdout
    assert "study: val/best_loss per configuration, mean ± sample std (ddof=1)" in printed
    rnn = study.loc["rnn"]
    assert (
        f"| file | rnn | 1 | 8 | 0.1 | 0.0 | {int(rnn['num params']):,} | {rnn['val/best_loss mean']:.3f} ± "
        f"{rnn['val/best_loss std']:.3f} | 2 | seed -1 FAILED |" in printed
    )
    for name in ("study_val_curves.png", "study_loss_vs_params.png"):
        assert (tmp_path / "cmp" / name).stat().st_size > 5000
    logged = {a.path for a in client.list_artifacts(parent, "compare")}
    assert {
        "compare/study.csv",
        "compare/study.md",
        "compare/study_val_curves.png",
        "compare/study_loss_vs_params.png",
    } <= logged


def test_a_settings_search_tries_several_lrs_on_one_model_and_a_study_tries_one_per_model():
    model = {
        "data.name": "pystdlib",
        "model.cell": "lstm",
        "model.num_layers": 1,
        "study.budget": "50k",
        "model.dropout": 0.0,
    }
    search = pd.DataFrame([{**model, "optim.lr": lr} for lr in (0.002, 0.005, 0.01)])
    assert is_settings_search(search)
    # paper_cells: the lr differs between models, each at its one chosen lr (and two seeds)
    study = pd.DataFrame(
        [
            {**model, "model.cell": cell, "optim.lr": lr, "train.seed": seed}
            for cell, lr in (("rnn", 0.002), ("lstm", 0.01))
            for seed in (1, 2)
        ]
    )
    assert not is_settings_search(study)
    assert is_settings_search(study.assign(**{"model.dropout": [0.0, 0.1, 0.0, 0.0]}))
