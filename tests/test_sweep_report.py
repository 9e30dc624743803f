"""The sweep's own report on its parent, made at every sweep's end, and the evaluation cadence that gives its
curves a shape: real sweeps through charrnn-train into a real SQLite store."""

from __future__ import annotations

import base64
import json
import zlib

from mlflow import MlflowClient
from test_cli_sweep import sweep_runs

from charrnn_experiments.store import Store
from conftest import tiny

REPORT_FILES = {
    "report/report.html",
    "report/runs.csv",
    "report/leaderboard.md",
    "report/curves.png",
    "report/val_loss_vs_params.png",
    "report/parallel.png",
}


def test_a_short_sweep_at_the_default_cadence_draws_curves_and_reports_on_its_parent(cli, small_text, tmp_path):
    out = cli(
        "charrnn-train",
        "-m",
        *tiny(small_text, "train.eval_every=null", "train.sample_every=0"),
        "model.hidden_size=8,16",
    )
    assert out.returncode == 0, out.stderr[-3000:]
    client, parent, children = sweep_runs(tmp_path)
    for child in children:  # 60 iterations: a round at least every 6
        assert len(client.get_metric_history(child.info.run_id, "val/loss")) >= 10
        assert "None" not in child.data.params.values(), "a null key is no param"
    experiment = client.get_experiment(parent.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development", "MLflow's model-training view"
    assert experiment.tags["mlflow.experiment.primaryMetric.name"] == "val/loss"
    assert experiment.tags["mlflow.experiment.primaryMetric.greaterIsBetter"] == "False"
    assert "mlflow.sharedViewState.charrnn-losses" in experiment.tags, "the saved view the printed address opens"
    assert "&viewStateShareKey=charrnn-losses" in out.stdout
    assert REPORT_FILES <= {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    page = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").download_artifacts(
        parent.info.run_id, "report/report.html", str(tmp_path)
    )
    text = open(page, encoding="utf-8").read()
    assert all(child.info.run_name in text for child in children)
    assert f"report: {tmp_path}" in out.stdout and "(on the parent run under report/report.html)" in out.stdout


def test_a_report_that_cannot_be_written_says_so_in_one_line_and_the_sweep_still_succeeds(cli, small_text, tmp_path):
    sweep_dir = tmp_path / "sweep"
    sweep_dir.mkdir()
    (sweep_dir / "report").write_text("a file where the report's folder goes")
    out = cli("charrnn-train", "-m", *tiny(small_text), "model.hidden_size=8,16", f"hydra.sweep.dir={sweep_dir}")
    assert out.returncode == 0, out.stderr[-3000:]
    warnings = [line for line in out.stderr.splitlines() if "sweep report" in line]
    assert warnings == [next(line for line in warnings if line.startswith("warning: no sweep report: "))]
    assert "Traceback" not in out.stderr
    assert "parent run id: " in out.stdout


def test_an_experiment_made_elsewhere_is_marked_as_model_training_and_gets_the_losses_view(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    store = Store(uri, None)
    made_elsewhere = MlflowClient(uri).create_experiment("elsewhere")
    assert store.ensure_experiment("elsewhere") == made_elsewhere
    MlflowClient(uri).create_experiment(
        "chosen", tags={"mlflow.experimentKind": "genai_development", "mlflow.sharedViewState.charrnn-losses": "edited"}
    )
    store.ensure_experiment("chosen")
    tags = {e.name: e.tags for e in MlflowClient(uri).search_experiments()}
    assert tags["elsewhere"]["mlflow.experimentKind"] == "custom_model_development"
    assert tags["chosen"]["mlflow.experimentKind"] == "genai_development", "a kind someone chose stays"
    assert tags["elsewhere"]["mlflow.experiment.primaryMetric.name"] == "val/loss"
    assert tags["chosen"]["mlflow.experiment.primaryMetric.name"] == "val/loss", "the primary metric joins the kind"
    view = json.loads(tags["elsewhere"]["mlflow.sharedViewState.charrnn-losses"])
    assert tags["chosen"]["mlflow.sharedViewState.charrnn-losses"] == "edited", "a view someone changed stays"
    # MLflow 3.17's envelope, and its state as "deflate;" + base64 of zlib (what its Views menu writes)
    assert view["name"] and isinstance(view["createdAt"], int) and view["state"].startswith("deflate;")
    state = json.loads(zlib.decompress(base64.b64decode(view["state"].removeprefix("deflate;"))))
    first = state["compareRunSections"][0]["uuid"]
    assert [(c["metricKey"], c["displayName"]) for c in state["compareRunCharts"] if c["metricSectionId"] == first] == [
        ("train/loss", "train/loss"),
        ("val/loss", "val/loss"),
    ]
    assert state["isAccordionReordered"], "else MLflow sorts the sections by name"
