"""charrnn-analyze and charrnn-compare end to end: from a checkpoint, from an MLflow run, over a sweep, and every
bad input ending as one `error:` line with exit status 2. The command bodies run in-process on configs composed by
Hydra from the installed charrnn_conf; the console scripts themselves run as processes."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_module
from mlflow import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from charrnn.checkpoint import Checkpoint, save_checkpoint
from charrnn.data import Vocab
from charrnn.model import ModelConfig, init_params
from charrnn_analysis.record import Recording
from charrnn_analysis.tables import write_table
from charrnn_experiments.analyze import analyze, compare, run_reporting_errors

TEXT = "".join(f"def f{i}(x):\n    # note {i % 7}\n    return [x, \"s{i}\", ('t' + {i})]\n" for i in range(150))


def config(name: str, *overrides: str):
    """The command's config as its console script composes it from ``key=value`` arguments."""
    with initialize_config_module(config_module="charrnn_conf", version_base="1.3"):
        return compose(name, overrides=list(overrides))


def analyze_main(args: list[str]) -> int:
    return run_reporting_errors(analyze, config("analyze", *args))


def compare_main(args: list[str]) -> int:
    return run_reporting_errors(compare, config("compare", *args))


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
    for key, value in {
        "data.name": "file",
        "data.path": str(text_file),
        "train.val_fraction": 0.2,
        "train.seq_length": 25,
        "model.cell": "lstm",
    }.items():
        client.log_param(run, key, value)
    client.log_artifact(run, str(checkpoint), "checkpoints")
    client.set_terminated(run)

    parent = client.create_run(experiment, run_name="sweep").info.run_id
    children = []
    for hidden, lr in [(32, 0.1), (64, 0.1), (32, 0.01), (64, 0.01)]:
        child = client.create_run(
            experiment, run_name=f"h{hidden}-lr{lr}", tags={MLFLOW_PARENT_RUN_ID: parent}
        ).info.run_id
        client.log_param(child, "model.hidden_size", hidden)
        client.log_param(child, "optim.lr", lr)
        client.log_param(child, "train.seed", 42)
        for step in range(4):
            client.log_metric(child, "train/loss", 3.0 - step * hidden / 320 - lr, step=100 * step)
        # each evaluation as the engine logs it: val/loss and val/best_loss, the lowest val/loss so far; the last
        # evaluation is worse than the best: "best" must be the minimum, never the last value
        val = [3.1 - step * hidden / 320 - lr for step in range(4)] + [3.2]
        for step, (loss, best) in enumerate(zip(val, np.minimum.accumulate(val))):
            client.log_metric(child, "val/loss", loss, step=100 * step)
            client.log_metric(child, "val/best_loss", float(best), step=100 * step)
        # the top-units table charrnn-train logs at the end of a run, with scores that say which child it is
        top = pd.DataFrame(
            {
                "feature": ["line_position", "line_position", "in_comment"],
                "kind": ["continuous"] * 2 + ["binary"],
                "rank": [1, 2, 1],
                "unit": ["h.0:1", "h.0:2", "h.0:3"],
                "score": [hidden / 100, hidden / 200, lr],
                "r": [0.5, -0.2, np.nan],
                "auc": [np.nan, np.nan, 0.4],
                "sign": [1, -1, -1],
            }
        )
        write_table(top, root / child / "top_units")
        client.log_artifacts(child, str(root / child), "analysis")
        client.set_terminated(child)
        children.append(child)
    client.set_terminated(parent)
    return {
        "root": root,
        "text": text_file,
        "checkpoint": checkpoint,
        "uri": uri,
        "run": run,
        "parent": parent,
        "children": children,
    }


def test_analyze_checkpoint_writes_recording_tables_figures_and_explorer(workspace, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = [
        f"checkpoint={workspace['checkpoint']}",
        f"text={workspace['text']}",
        "record.length=1500",
        "features=[in_comment,bracket_depth,line_position]",
        "top_k=3",
        "units=[h.1:2]",
        "select=30:36",
    ]
    assert analyze_main(args) == 0
    out = tmp_path / "outputs" / "analysis" / "best"
    printed = capsys.readouterr().out
    assert "| in_comment | binary |" in printed and "units on inside 30:36" in printed
    top = pd.read_csv(out / "top_units.csv")
    assert len(top) == 9 and set(top["feature"]) == {"in_comment", "bracket_depth", "line_position"}
    assert (out / "top_units.md").read_text().startswith("| feature |")
    assert (out / "selection.csv").is_file()
    figures = sorted(p.name for p in (out / "figures").iterdir())
    assert figures == [
        "gate_saturation.png",
        "gradient_flow.png",
        "heatmap_c0.png",
        "heatmap_c1.png",
        "text_bracket_depth.png",
        "text_in_comment.png",
        "text_line_position.png",
        "unit_h.1_2.png",
    ]
    assert all((out / "figures" / name).stat().st_size > 5000 for name in figures)
    assert "c.1:9" in (out / "explorer.html").read_text()
    rec = Recording.load(out / "recording.npz")
    assert rec.text == TEXT[:1500] and rec.meta["checkpoint"] == str(workspace["checkpoint"].resolve())

    # The recording is reusable without the model (recording twice is compared in test_analysis_record).
    assert (
        analyze_main(
            [f"recording={out / 'recording.npz'}", "features=[in_comment]", "top_k=3", f"out={tmp_path / 'again'}"]
        )
        == 0
    )
    assert pd.read_csv(tmp_path / "again" / "top_units.csv").equals(
        top[top["feature"] == "in_comment"].reset_index(drop=True)
    )


def test_analyze_run_uses_its_validation_split_and_logs_artifacts(workspace, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = workspace["run"]
    assert analyze_main([f"run={run}", f"tracking.uri={workspace['uri']}", "record.length=800", "top_k=2"]) == 0
    rec = Recording.load(tmp_path / "outputs" / "analysis" / run / "recording.npz")
    val_start = len(TEXT) - int(len(TEXT) * 0.2)
    assert rec.text == TEXT[val_start : val_start + 800] and rec.offsets[0] == val_start
    assert rec.meta["run_id"] == run and rec.meta["checkpoint"] == "checkpoints/best.npz"
    client = MlflowClient(workspace["uri"])
    logged = {a.path for a in client.list_artifacts(run, "analysis")}
    assert {"analysis/recording.npz", "analysis/top_units.csv", "analysis/explorer.html", "analysis/figures"} <= logged

    # analysing again finds the checkpoint, not the recording it logged under analysis/
    assert (
        analyze_main(
            [
                f"run={run}",
                f"tracking.uri={workspace['uri']}",
                "record.length=300",
                "log=false",
                f"out={tmp_path / 'again'}",
            ]
        )
        == 0
    )


def test_analyze_run_without_best_checkpoint_uses_its_latest_and_says_so(workspace, tmp_path, monkeypatch, capsys):
    """A finished run that never evaluated has only latest.npz (issue 7)."""
    monkeypatch.chdir(tmp_path)
    client = MlflowClient(workspace["uri"])
    run = client.create_run(client.get_experiment_by_name("study").experiment_id).info.run_id
    latest = tmp_path / "latest.npz"
    latest.write_bytes(workspace["checkpoint"].read_bytes())
    client.log_artifact(run, str(latest), "checkpoints")
    client.set_terminated(run)
    assert (
        analyze_main(
            [
                f"run={run}",
                f"tracking.uri={workspace['uri']}",
                f"text={workspace['text']}",
                "record.length=300",
                "log=false",
                "features=[in_comment]",
            ]
        )
        == 0
    )
    assert (
        f"run {run} has no best.npz (it never evaluated on validation text): analysing its "
        "checkpoints/latest.npz" in capsys.readouterr().out
    )
    assert (
        Recording.load(tmp_path / "outputs" / "analysis" / run / "recording.npz").meta["checkpoint"]
        == "checkpoints/latest.npz"
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["checkpoint=missing.npz"], "checkpoint 'missing.npz' does not exist"),
        (["run=0123456789abcdef"], "no MLflow run with id '0123456789abcdef'"),
        (["features=[nope]"], "unknown feature 'nope'"),
        (["record.start=100000"], "record.start=100000 is out of bounds"),
        (["record.length=0"], "record.length must be a positive integer, got 0"),
        (["select=5:2"], "out of bounds"),
        (["select=5"], "select must be START:END"),
        (["top_k=many"], "top_k must be a positive integer (or None), got 'many'"),
        (["threshold=nan"], "threshold must be a finite number, got nan"),
        (["top_k=inf"], "top_k must be a positive integer (or None), got inf"),
        (["top_k=nan"], "top_k must be a positive integer (or None), got nan"),
        (["margin=nan"], "margin must be an integer >= 0 (or None), got nan"),
        (["control=maybe"], "control must be true or false, got 'maybe'"),
        (["log=1"], "log must be true or false, got 1"),
        (["units=[c.7:1]"], "no 'c' in layer 7"),
        (["units=[h.1:10]"], "unit 'h.1:10' is out of range: layer 1 of 'h' has units 0..9"),
        (["units=[h1:3]"], "unknown unit 'h1:3': expected state.layer:index"),
        (["string='\u00e9'"], "not in the vocabulary"),
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
        base = [f"tracking.uri={workspace['uri']}"]
    assert analyze_main(base + args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1 and "Traceback" not in err


def test_compare_sweep_has_one_row_per_child_and_logs_figures_to_parent(workspace, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    parent = workspace["parent"]
    # the experiment comes from the parent run
    assert compare_main([f"parent={parent}", f"tracking.uri={workspace['uri']}"]) == 0
    out = tmp_path / "outputs" / "compare" / "study"
    table = pd.read_csv(out / "runs.csv")
    assert sorted(table["run_id"]) == sorted(workspace["children"])
    assert table["val/best_loss"].is_monotonic_increasing
    assert table.iloc[0]["model.hidden_size"] == 64 and table.iloc[0]["optim.lr"] == 0.1
    assert table.iloc[0]["val/best_loss"] == pytest.approx(3.1 - 3 * 64 / 320 - 0.1)  # the minimum, not the last
    assert (table["final val/loss"] == 3.2).all()
    # per child, the best unit score of each feature from its logged top-units table
    assert table["unit score: line_position"].tolist() == pytest.approx(table["model.hidden_size"] / 100)
    assert table["unit score: in_comment"].tolist() == pytest.approx(table["optim.lr"])
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith(
        "| run_name | status | model.hidden_size | optim.lr | val/best_loss | final "
        "val/loss | line_position | in_comment |"
    )
    assert "h64-lr0.1" in printed[2]  # the leaderboard's first row
    for name in (
        "report.html",
        "curves.png",
        "val_loss_vs_params.png",
        "parallel.png",
        "heatmap.png",
        "unit_scores_vs_param.png",
    ):
        assert (out / name).stat().st_size > 5000
    assert all(name in (out / "report.html").read_text() for name in table["run_name"])  # the sweep's report
    logged = {a.path for a in MlflowClient(workspace["uri"]).list_artifacts(parent, "compare")}
    assert {
        "compare/report.html",
        "compare/runs.csv",
        "compare/leaderboard.md",
        "compare/curves.png",
        "compare/heatmap.png",
        "compare/unit_scores_vs_param.png",
    } <= logged

    # Without a parent the whole experiment is listed, minus the sweep's parent itself.
    assert (
        compare_main(["tracking.experiment=study", f"tracking.uri={workspace['uri']}", f"out={tmp_path / 'all'}"]) == 0
    )
    listed = pd.read_csv(tmp_path / "all" / "runs.csv")
    assert parent not in set(listed["run_id"]) and set(workspace["children"]) <= set(listed["run_id"])


@pytest.mark.parametrize(
    "args, message",
    [
        (["tracking.experiment=nope"], "no MLflow experiment named 'nope'"),
        (["parent=ffff"], "no MLflow run with id 'ffff'"),
        (["tracking.experiment=study", "color_by=optim.nope"], "unknown param 'optim.nope'"),
        (["tracking.experiment=study", "heatmap=[optim.lr]"], "heatmap needs two params"),
        (["tracking.experiment=study", "top=0"], "top must be a positive integer (or None), got 0"),
        (["tracking.experiment=study", "top=inf"], "top must be a positive integer (or None), got inf"),
        ([], "give tracking.experiment=<name> or parent=<sweep parent run id>"),
    ],
)
def test_compare_bad_input_is_one_error_line(workspace, tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    assert compare_main(args + [f"tracking.uri={workspace['uri']}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_compare_parent_in_another_experiment_is_an_error(workspace, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    MlflowClient(workspace["uri"]).create_experiment("other")
    assert (
        compare_main([f"parent={workspace['parent']}", "tracking.experiment=other", f"tracking.uri={workspace['uri']}"])
        == 2
    )
    assert "is not in experiment 'other' (it is in 'study')" in capsys.readouterr().err


@pytest.mark.parametrize(
    "command, old, new",
    [
        ("charrnn-analyze", "tracking_uri=sqlite:///mlflow.db", "tracking.uri"),
        ("charrnn-analyze", "data_path=x.txt", "data.path"),
        ("charrnn-analyze", "length=500", "record.length"),
        ("charrnn-compare", "tracking_uri=sqlite:///mlflow.db", "tracking.uri"),
        # experiment is a config group of charrnn-train, so Hydra, not the schema, refuses it here
        ("charrnn-compare", "experiment=grid", None),
    ],
)
def test_old_spellings_fail_with_one_line_naming_the_new_key(cli, tmp_path, command, old, new):
    result = cli(command, old)
    key = old.split("=", 1)[0]
    assert result.returncode == 2
    if new is None:
        assert result.stderr == f"error: Could not override '{key}'. No match in the defaults list.\n"
    else:
        assert result.stderr == f"error: unknown key {key}: did you mean {new}? (--help lists every key)\n"
    assert list(tmp_path.iterdir()) == []


def test_console_scripts_honour_mlflow_tracking_uri_and_leave_only_their_output(cli, workspace, tmp_path, monkeypatch):
    """MLFLOW_TRACKING_URI stands in for tracking.uri; out=null is the default folder, not one named "null"; no
    Hydra output folder, .hydra/ or log file appears."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", workspace["uri"])
    result = cli("charrnn-compare", f"parent={workspace['parent']}", "out=null")
    assert result.returncode == 0, result.stderr
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_dir()) == [
        "outputs",
        "outputs/compare",
        "outputs/compare/study",
    ]
    assert not list(tmp_path.rglob("*.log"))


def test_console_scripts_report_a_missing_store_in_one_line(cli, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # another test in this worker may have set it
    result = cli("charrnn-compare", "tracking.experiment=x")
    assert result.returncode == 2 and result.stderr.startswith("error: no MLflow store at")
    assert result.stderr.count("\n") == 1 and "tracking.uri=" in result.stderr
    assert not (tmp_path / "mlflow.db").exists()  # reading never creates an empty store


@pytest.mark.parametrize(
    "command, arg, line",
    [
        ("charrnn-compare", "parnt=abc", "error: unknown key parnt: did you mean parent? (--help lists every key)"),
        (
            "charrnn-compare",
            "tracking.experimnt=x",
            "error: unknown key tracking.experimnt: did you mean tracking.experiment? (--help lists every key)",
        ),
        (
            "charrnn-analyze",
            "record.lenth=500",
            "error: unknown key record.lenth: did you mean record.length? (--help lists every key)",
        ),
        # the hand-parsed CLI's spellings of before, and keys without their group
        (
            "charrnn-analyze",
            "start=100",
            "error: unknown key start: did you mean record.start? (--help lists every key)",
        ),
        (
            "charrnn-analyze",
            "tracking_uri=x",
            "error: unknown key tracking_uri: did you mean tracking.uri? (--help lists every key)",
        ),
        (
            "charrnn-analyze",
            "record.length=many",
            "error: record.length: Value 'many' of type 'str' could not be converted to Integer",
        ),
    ],
)
def test_an_unknown_key_or_a_bad_type_is_one_line_naming_the_key(cli, tmp_path, command, arg, line):
    result = cli(command, arg)
    assert (result.returncode, result.stderr, result.stdout) == (2, line + "\n", "")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "command, keys",
    [
        (
            "charrnn-analyze",
            [
                "run:",
                "checkpoint:",
                "recording:",
                "record:",
                "length:",
                "select:",
                "tracking:",
                "uri:",
                "data:",
                "path:",
            ],
        ),
        ("charrnn-compare", ["parent:", "color_by:", "heatmap:", "tracking:", "experiment:", "uri:"]),
    ],
)
def test_help_lists_every_key(cli, command, keys):
    result = cli(command, "--help")
    assert result.returncode == 0 and result.stdout.startswith(f"{command}: ")
    assert all(f"\n{key}" in result.stdout or f" {key}" in result.stdout for key in keys), result.stdout


def test_analyze_splits_the_validation_loss_by_stream_and_says_how_to_record_the_worst(
    workspace, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    run = workspace["run"]
    assert (
        analyze_main(
            [f"run={run}", f"tracking.uri={workspace['uri']}", "record.length=300", "log=false", "top_k=1", "out=first"]
        )
        == 0
    )
    printed = capsys.readouterr().out
    streams = pd.read_csv(tmp_path / "first" / "val_streams.csv")
    val_start = len(TEXT) - int(len(TEXT) * 0.2)
    # the run logged no eval_batch_size: the engine's default of 32 streams, each of the same length
    assert len(streams) == 32 and streams["chars"].nunique() == 1 and streams["start"].iloc[0] == val_start
    worst = streams.loc[streams["loss"].idxmax()]
    hint = re.search(r"record the worst stream from its cold start: (record.start=(\d+) record.length=(\d+))", printed)
    assert int(hint.group(2)) == worst["start"] - val_start and int(hint.group(3)) == worst["chars"] + 1
    # the hint records exactly that stream: its text, from where it starts in the corpus
    assert (
        analyze_main(
            [
                f"run={run}",
                f"tracking.uri={workspace['uri']}",
                *hint.group(1).split(),
                "log=false",
                "top_k=1",
                "out=worst",
            ]
        )
        == 0
    )
    rec = Recording.load(tmp_path / "worst" / "recording.npz")
    assert rec.offsets[0] == worst["start"] and len(rec.text) == worst["chars"] + 1
