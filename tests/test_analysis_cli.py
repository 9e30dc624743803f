"""charrnn-analyze and charrnn-compare end to end: from a checkpoint, from an MLflow run, over a sweep, and every
bad input ending as one `error:` line with exit status 2."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from charrnn.checkpoint import Checkpoint, save_checkpoint
from charrnn.data import Vocab
from charrnn.model import ModelConfig, init_params
from charrnn_analysis.cli import analyze_main, compare_main
from charrnn_analysis.record import Recording

TEXT = "".join(f'def f{i}(x):\n    # note {i % 7}\n    return [x, "s{i}", (\'t\' + {i})]\n' for i in range(150))


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A text file, an LSTM checkpoint trained on nothing (random weights suffice for plumbing) and an MLflow
    store holding one run of it and a 2x2 sweep under a parent."""
    root = tmp_path_factory.mktemp("analysis")
    text_file = root / "code.txt"
    text_file.write_text(TEXT, encoding="utf-8")
    vocab = Vocab.from_text(TEXT)
    config = ModelConfig("lstm", vocab.size, 10, 2)
    params = {k: 3 * v for k, v in init_params(config, np.random.default_rng(0)).items()}
    checkpoint = save_checkpoint(root / "ck" / "best.npz", Checkpoint(params, vocab, config))

    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("study", artifact_location=(root / "mlartifacts").as_uri())
    run = client.create_run(experiment, run_name="single").info.run_id
    for key, value in {"data.name": "file", "data.path": str(text_file), "train.val_fraction": 0.2,
                       "train.seq_length": 25, "model.cell": "lstm"}.items():
        client.log_param(run, key, value)
    client.log_artifact(run, str(checkpoint), "checkpoints")
    client.set_terminated(run)

    parent = client.create_run(experiment, run_name="sweep").info.run_id
    children = []
    for hidden, lr in [(32, 0.1), (64, 0.1), (32, 0.01), (64, 0.01)]:
        child = client.create_run(experiment, run_name=f"h{hidden}-lr{lr}",
                                  tags={"mlflow.parentRunId": parent}).info.run_id
        client.log_param(child, "model.hidden_size", hidden)
        client.log_param(child, "optim.lr", lr)
        client.log_param(child, "train.seed", 42)
        for step in range(4):
            client.log_metric(child, "train/loss", 3.0 - step * hidden / 320 - lr, step=100 * step)
            client.log_metric(child, "val/loss", 3.1 - step * hidden / 320 - lr, step=100 * step)
        client.set_terminated(child)
        children.append(child)
    client.set_terminated(parent)
    return {"root": root, "text": text_file, "checkpoint": checkpoint, "uri": uri, "run": run,
            "parent": parent, "children": children}


def test_analyze_checkpoint_writes_recording_tables_figures_and_explorer(workspace, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = [f"checkpoint={workspace['checkpoint']}", f"text={workspace['text']}", "length=1500",
            "features=in_comment,bracket_depth,line_position", "top_k=3", "units=h.1:2", "select=30:36"]
    assert analyze_main(args) == 0
    out = tmp_path / "outputs" / "analysis" / "best"
    printed = capsys.readouterr().out
    assert "| in_comment | binary |" in printed and "units on inside 30:36" in printed
    top = pd.read_csv(out / "top_units.csv")
    assert len(top) == 9 and set(top["feature"]) == {"in_comment", "bracket_depth", "line_position"}
    assert (out / "top_units.md").read_text().startswith("| feature |")
    assert (out / "selection.csv").is_file()
    figures = sorted(p.name for p in (out / "figures").iterdir())
    assert figures == ["gate_saturation.png", "gradient_flow.png", "heatmap_c0.png", "heatmap_c1.png",
                       "text_bracket_depth.png", "text_in_comment.png", "text_line_position.png", "unit_h.1_2.png"]
    assert all((out / "figures" / name).stat().st_size > 5000 for name in figures)
    assert "c.1:9" in (out / "explorer.html").read_text()
    rec = Recording.load(out / "recording.npz")
    assert rec.text == TEXT[:1500] and rec.meta["checkpoint"] == str(workspace["checkpoint"].resolve())

    # The recording is reusable without the model (recording twice is compared in test_analysis_record).
    assert analyze_main([f"recording={out / 'recording.npz'}", "features=in_comment", "top_k=3",
                         f"out={tmp_path / 'again'}"]) == 0
    assert pd.read_csv(tmp_path / "again" / "top_units.csv").equals(top[top["feature"] == "in_comment"]
                                                                     .reset_index(drop=True))


def test_analyze_run_uses_its_validation_split_and_logs_artifacts(workspace, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = workspace["run"]
    assert analyze_main([f"run={run}", f"tracking_uri={workspace['uri']}", "length=800", "top_k=2"]) == 0
    rec = Recording.load(tmp_path / "outputs" / "analysis" / run / "recording.npz")
    val_start = len(TEXT) - int(len(TEXT) * 0.2)
    assert rec.text == TEXT[val_start : val_start + 800] and rec.offsets[0] == val_start
    assert rec.meta["run_id"] == run and rec.meta["checkpoint"] == "checkpoints/best.npz"
    client = MlflowClient(workspace["uri"])
    logged = {a.path for a in client.list_artifacts(run, "analysis")}
    assert {"analysis/recording.npz", "analysis/top_units.csv", "analysis/explorer.html", "analysis/figures"} <= logged


@pytest.mark.parametrize(
    "args, message",
    [
        (["checkpoint=missing.npz"], "checkpoint 'missing.npz' does not exist"),
        (["run=0123456789abcdef"], "no MLflow run with id '0123456789abcdef'"),
        (["features=nope"], "unknown feature 'nope'"),
        (["start=100000"], "out of bounds"),
        (["select=5:2"], "out of bounds"),
        (["units=c.7:1"], "no 'c' in layer 7"),
        (["colour=red"], "unknown argument 'colour'"),
        (["length=many"], "bad value for length"),
        (["string=\u00e9"], "not in the vocabulary"),
        ([], "give exactly one of"),
    ],
)
def test_analyze_bad_input_is_one_error_line(workspace, tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    base = []
    if args and not args[0].startswith(("checkpoint=", "run=")):
        base = [f"checkpoint={workspace['checkpoint']}"]
        base += [] if args[0].startswith("string=") else [f"text={workspace['text']}"]
    if args and args[0].startswith("run="):
        base = [f"tracking_uri={workspace['uri']}"]
    assert analyze_main(base + args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1 and "Traceback" not in err


def test_compare_sweep_has_one_row_per_child_and_logs_figures_to_parent(workspace, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    parent = workspace["parent"]
    assert compare_main(["experiment=study", f"parent={parent}", f"tracking_uri={workspace['uri']}"]) == 0
    out = tmp_path / "outputs" / "compare" / "study"
    table = pd.read_csv(out / "runs.csv")
    assert sorted(table["run_id"]) == sorted(workspace["children"])
    assert table["best val/loss"].is_monotonic_increasing
    assert table.iloc[0]["model.hidden_size"] == 64 and table.iloc[0]["optim.lr"] == 0.1
    assert table.iloc[0]["best val/loss"] == pytest.approx(3.1 - 3 * 64 / 320 - 0.1)
    assert "h64-lr0.1" in capsys.readouterr().out.splitlines()[2]  # the leaderboard's first row
    for name in ("curves.png", "val_loss_vs_params.png", "heatmap.png"):
        assert (out / name).stat().st_size > 5000
    logged = {a.path for a in MlflowClient(workspace["uri"]).list_artifacts(parent, "compare")}
    assert {"compare/runs.csv", "compare/curves.png", "compare/heatmap.png"} <= logged

    # Without a parent the whole experiment is listed, minus the sweep's parent itself.
    assert compare_main(["experiment=study", f"tracking_uri={workspace['uri']}", f"out={tmp_path / 'all'}"]) == 0
    assert len(pd.read_csv(tmp_path / "all" / "runs.csv")) == 5


@pytest.mark.parametrize(
    "args, message",
    [
        (["experiment=nope"], "no MLflow experiment named 'nope'"),
        (["experiment=study", "parent=ffff"], "no MLflow run with id 'ffff'"),
        (["experiment=study", "color_by=optim.nope"], "unknown param 'optim.nope'"),
        ([], "experiment=<name> is required"),
    ],
)
def test_compare_bad_input_is_one_error_line(workspace, tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    assert compare_main(args + [f"tracking_uri={workspace['uri']}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_console_scripts_report_a_missing_store_in_one_line(cli, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # another test in this worker may have set it
    result = cli("charrnn-compare", "experiment=x")
    assert result.returncode == 2 and result.stderr.startswith("error: no MLflow store at")
    assert not (tmp_path / "mlflow.db").exists()  # reading never creates an empty store


def test_help_lists_every_argument(capsys):
    assert analyze_main(["help"]) == 0 and compare_main(["--help"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("usage: charrnn-analyze") and "usage: charrnn-compare" in printed
    assert all(f"  {name} " in printed for name in ("run", "checkpoint", "select", "experiment", "color_by"))
