"""A full disk under a run, on a real small filesystem (a tmpfs): the run fails at once with the first cause in
one line and in charrnn.reason, the metric points it logged reach the store, and it never waits for "the store".
A full disk under the SQLite store itself stops the run at once with one line that says how to continue it.
"""

from __future__ import annotations

import contextlib
import subprocess
from pathlib import Path

import pytest
from mlflow import MlflowClient

from conftest import metric_history, only_run, store_client, tiny

# Checkpoints of a 64-unit model (some 100 kB) do not fit in 64 kB; the config and the samples do.
FULL_SIZE = "64k"
TRAIN = ("model.hidden_size=64", "train.max_iters=600")


@contextlib.contextmanager
def small_filesystem(folder: Path, size: str = FULL_SIZE):
    """A tmpfs of ``size`` mounted on ``folder``, unmounted at the end; the test is skipped where mounting is not
    allowed (not root, or a container without CAP_SYS_ADMIN)."""
    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.strip() or mounted.returncode}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "--lazy", str(folder)], check=True)


def assert_failed_on_the_full_disk(done: subprocess.CompletedProcess, cwd: Path, where: Path) -> None:
    """Exit 2 with one error line naming the full disk and a path under ``where``, the same cause in the run's
    charrnn.reason tag, the run FAILED, and every train/loss point up to the failure in the store."""
    assert done.returncode == 2, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "No space left on device" in last and str(where) in last, done.stderr
    assert "Traceback" not in done.stderr and "unreachable" not in done.stderr, done.stderr
    client = store_client(cwd)
    run = only_run(client)
    assert run.info.status == "FAILED"
    assert run.data.tags["charrnn.reason"] == last.removeprefix("error: ")
    steps = [step for step, _ in metric_history(client, run.info.run_id, "train/loss")]
    assert steps == list(range(10, steps[-1] + 1, 10)) and steps[-1] >= 30, steps  # through the first checkpoint


def test_a_full_artifacts_folder_fails_the_run_at_once_and_still_delivers_its_metrics(cli, small_text, tmp_path):
    with small_filesystem(tmp_path / "mlartifacts") as artifacts:
        done = cli("charrnn-train", *tiny(small_text, *TRAIN))
    assert_failed_on_the_full_disk(done, tmp_path, artifacts)
    assert "cannot store checkpoints/" in done.stderr


def test_a_full_run_folder_fails_the_run_with_the_checkpoint_path(cli, small_text, tmp_path):
    with small_filesystem(tmp_path / "full") as folder:
        done = cli("charrnn-train", *tiny(small_text, *TRAIN, f"hydra.run.dir={folder}/run"))
    assert_failed_on_the_full_disk(done, tmp_path, folder)
    assert "checkpoints/latest.npz" in done.stderr


def test_a_full_disk_under_the_sqlite_store_stops_the_run_with_one_line_and_how_to_continue(cli, small_text, tmp_path):
    with small_filesystem(tmp_path / "db", size="8m") as folder:
        uri = f"sqlite:///{folder}/mlflow.db"
        MlflowClient(uri).search_experiments()  # MLflow creates the store's tables
        used = int(
            subprocess.run(
                ["df", "--output=used", "-k", str(folder)], capture_output=True, text=True, check=True
            ).stdout.split()[-1]
        )
        subprocess.run(["mount", "-o", f"remount,size={used + 64}k", str(folder)], check=True)  # 64 kB left
        done = cli(
            "charrnn-train",
            *tiny(small_text, "train.max_iters=1000000", "train.log_every=1", f"tracking.uri={uri}"),
            timeout=120,
        )
    assert done.returncode == 2, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: tracking store {uri}: database or disk is full"), done.stderr
    assert "Traceback" not in done.stderr and "unreachable" not in done.stderr, done.stderr
    assert done.stderr.count("error:") == 1, done.stderr
    local = Path(last.rsplit("train.resume=", 1)[1])  # what the line offers to continue from
    assert local.name == "latest.npz" and local.is_file(), last
