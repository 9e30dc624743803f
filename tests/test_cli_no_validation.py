"""charrnn-train with no validation text (train.val_fraction=0, as experiment=minchar trains): the run finishes,
says there is no validation loss and keeps its checkpoint."""

from __future__ import annotations

from mlflow import MlflowClient

from conftest import tiny


def test_a_run_without_validation_text_finishes_with_its_checkpoint(cli, small_text, tmp_path):
    # 55 iterations: the budget ends between evaluations (every 30), where the final evaluation used to crash
    out = cli("charrnn-train", *tiny(small_text, "train.val_fraction=0", "train.max_iters=55"))
    assert out.returncode == 0, out.stderr
    assert "val loss:  none (no validation text) after 55 iterations" in out.stdout
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("charrnn").experiment_id])
    assert run.info.status == "FINISHED" and not any(key.startswith("val/") for key in run.data.metrics)
    assert [a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")] == ["checkpoints/latest.npz"]
