"""charrnn-train end to end as a user runs it: single runs, bad input, the run lifecycle, resume."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from charrnn.checkpoint import load_checkpoint, save_checkpoint
from conftest import BIN, TINY, metric_history, only_run, own_stderr, small_trainer, store_client, tiny


def test_single_run_prints_results_and_tracks_everything(cli, small_text, tmp_path):
    out = cli("charrnn-train", *tiny(small_text))
    assert out.returncode == 0, out.stderr
    run_id = re.search(r"run id:\s+([0-9a-f]{32})", out.stdout).group(1)
    val = float(re.search(r"val loss:\s+([0-9.]+) nats/char", out.stdout).group(1))
    assert f"mlflow ui --backend-store-uri sqlite:///{tmp_path.resolve()}/mlflow.db" in out.stdout
    assert not list(tmp_path.glob("outputs/**/mlflow.db")), "store must not be in Hydra's output dir"
    client = store_client(tmp_path)
    run = only_run(client)
    assert (run.info.run_id, run.info.status) == (run_id, "FINISHED")
    assert run.data.metrics["val/loss"] == pytest.approx(val, abs=1e-4)
    assert run.data.params["model.hidden_size"] == "8" and run.data.params["data.name"] == "file"
    assert {"mlflow.source.git.commit", "host", "charrnn.dataset.sha256"} <= set(run.data.tags)
    steps = [m.step for m in client.get_metric_history(run_id, "train/loss")]
    assert steps == list(range(10, 61, 10))
    for key in ("train/smooth_loss", "grad/norm", "throughput/chars_per_s", "val/bpc"):
        assert key in run.data.metrics
    artifacts = {a.path for d in ("", "samples", "checkpoints") for a in client.list_artifacts(run_id, d)}
    assert {
        "config.yaml",
        "samples/iter_00000030.txt",
        "samples/iter_00000060.txt",
        "samples/final.txt",
        "checkpoints/latest.npz",
        "checkpoints/best.npz",
    } <= artifacts
    assert run.inputs.dataset_inputs[0].dataset.name == "file"
    # the checkpoint names its text, so analysis of the bare file finds the same validation split
    ckpt = load_checkpoint(client.download_artifacts(run_id, "checkpoints/latest.npz", str(tmp_path)))
    assert ckpt.metadata["data.name"] == "file" and ckpt.metadata["data.path"] == str(small_text.resolve())
    assert ckpt.metadata["train.val_fraction"] == 0.1 and ckpt.metadata["train.seq_length"] == 8


def test_runs_are_deterministic(cli, small_text, tmp_path):
    for _ in range(2):
        assert cli("charrnn-train", *tiny(small_text)).returncode == 0
    client = store_client(tmp_path)
    a, b = client.search_runs([client.get_experiment_by_name("charrnn").experiment_id])
    hist = [[m.value for m in client.get_metric_history(r.info.run_id, "train/loss")] for r in (a, b)]
    assert hist[0] == hist[1] and len(hist[0]) == 6


@pytest.mark.parametrize(
    "override, words",
    [
        ("model.hidden_size=0", "model.hidden_size must be a positive integer, got 0"),
        ("optim.lr=0", "optim.lr must be positive, got 0.0"),
        ("optim.lr=nan", "optim.lr must be a finite number, got nan"),
        ("train.max_seconds=inf", "train.max_seconds must be a finite number, got inf"),
        ("train.dtype=float16", "train.dtype must be one of float64, float32, got 'float16'"),
        # found before training, not after it
        ("record.length=-1", "record.length must be a positive integer, got -1"),
        ("record.dtype=int8", "record.dtype must be one of float16, float32, got 'int8'"),
        ("model.cell=transformer", "unknown cell 'transformer': choose one of rnn, lstm, gru"),
        (
            "train.seq_length=100000",
            "text has 5540 characters but seq_length=100000 needs at least 100002; use a "
            "shorter seq_length or a longer text",
        ),
        ("data.path=/nonexistent/input.txt", "text file not found: '/nonexistent/input.txt'; check the path"),
    ],
)
def test_bad_input_fails_before_training_with_one_line(cli, small_text, tmp_path, override, words):
    out = cli("charrnn-train", *tiny(small_text, override))
    assert (out.returncode, own_stderr(out)) == (2, f"error: {words}\n"), out.stderr
    run = only_run(store_client(tmp_path))
    assert run.info.status == "FAILED" and run.data.tags["charrnn.reason"] == words
    assert "train/loss" not in run.data.metrics


@pytest.mark.parametrize(
    "override, line",
    [
        (
            "model.hidden_size=abc",
            "error: model.hidden_size: Value 'abc' of type 'str' could not be converted to Integer",
        ),
        (
            "train.max_seconds=null_",
            "error: train.max_seconds: Value 'null_' of type 'str' could not be converted to Float",
        ),
        (
            "model.hiden_size=8",
            "error: unknown key model.hiden_size: did you mean model.hidden_size? (--help lists every key)",
        ),
        ("model=transformer", "error: In 'config': Could not find 'model/transformer': choose one of gru, lstm, rnn"),
        ("record.enabled=yes", "error: record.enabled must be true or false, got 'yes'"),
    ],
)
def test_a_config_hydra_cannot_compose_is_one_line_before_anything_is_created(cli, tmp_path, override, line):
    out = cli("charrnn-train", override)
    assert (out.returncode, out.stderr, out.stdout) == (2, line + "\n", "")
    assert list(tmp_path.iterdir()) == []  # no store, no output folder


def test_cfg_job_shows_the_engine_default_of_a_key_no_yaml_states(cli):
    out = cli("charrnn-train", "--cfg", "job")
    assert out.returncode == 0
    # TrainConfig's own defaults, which conf/ never repeats, next to the main job's stop limits
    for line in (
        "  eval_batch_size: 32\n",
        "  sample_temperature: 1.0\n",
        "  max_iters: null\n",
        "  max_seconds: 120.0\n",
        "  options: {}\n",
    ):
        assert line in out.stdout


def runs_left_running(cwd: Path) -> list:
    client = store_client(cwd)
    experiment = client.get_experiment_by_name("charrnn")
    return client.search_runs([experiment.experiment_id], "attributes.status = 'RUNNING'") if experiment else []


def test_missing_data_path_is_one_clear_line_and_leaves_no_run_running(cli, tmp_path):
    out = cli("charrnn-train", *TINY, "data=file")
    line = "error: corpus 'file' needs a path; pass path=... (data.path=... on the command line)\n"
    assert (out.returncode, own_stderr(out)) == (2, line), out.stderr
    assert runs_left_running(tmp_path) == []


def test_a_bad_interpolation_is_one_line_and_leaves_no_run_running(cli, small_text, tmp_path):
    out = cli("charrnn-train", *tiny(small_text, "model.hidden_size=${nowhere}"))
    # OmegaConf's message goes on with the key and the node's type on lines of their own
    assert (out.returncode, own_stderr(out)) == (
        2,
        "error: model.hidden_size: Interpolation key 'nowhere' not found\n",
    ), out.stderr
    assert runs_left_running(tmp_path) == []


def test_divergence_ends_the_run_failed_with_its_reason(cli, small_text, tmp_path):
    # lr 1e9: finite losses of ~1e9 nats/char, which ended FINISHED before the validation loss had a limit
    out = cli("charrnn-train", *tiny(small_text, "optim.lr=1e9"))
    assert out.returncode == 2 and "diverged" in out.stderr
    run = only_run(store_client(tmp_path))
    assert run.info.status == "FAILED"
    assert run.data.tags["charrnn.status"] == "diverged" and "lr" in run.data.tags["charrnn.reason"]


# charrnn-train with a bug planted in the engine's sampler, which the trainer calls at iteration 30 of tiny()
CHARRNN_TRAIN_WITH_A_BUG = """
import sys
import charrnn.train
from charrnn_experiments.train import main

def sample(*args, **kwargs):
    raise ZeroDivisionError("a planted bug")

charrnn.train.sample = sample
sys.argv[0] = "charrnn-train"
main()
"""


def test_a_bug_that_stops_training_ends_the_run_failed_with_the_exception(small_text, tmp_path):
    """An exception no check foresaw is a bug: the run ends FAILED naming it, never FINISHED or RUNNING, and
    the command fails with its traceback (a bug is not a user's error line)."""
    out = subprocess.run(
        [sys.executable, "-c", CHARRNN_TRAIN_WITH_A_BUG, *tiny(small_text)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    assert out.returncode == 1, out.stderr[-3000:]
    assert "Traceback" in out.stderr and out.stderr.rstrip().endswith("ZeroDivisionError: a planted bug")
    client = store_client(tmp_path)
    run = only_run(client)
    assert (run.info.status, run.data.tags["charrnn.reason"]) == ("FAILED", "ZeroDivisionError: a planted bug")
    assert [step for step, _ in metric_history(client, run.info.run_id, "train/loss")] == [10, 20, 30]


def test_sigterm_kills_with_checkpoint_and_resume_with_a_stop_limit_logs_the_uninterrupted_numbers(
    cli, small_text, tmp_path
):
    # No iteration limit the machine's speed could race: the run trains until the signal, and the
    # resume gives it the limit the reference run has.
    args = [
        *tiny(small_text),
        "train.max_iters=null",
        "train.max_seconds=1e9",
        "train.log_every=100",
        "train.eval_every=500",
        "train.sample_every=0",
    ]
    proc = subprocess.Popen(
        [str(BIN / "charrnn-train"), *args], cwd=tmp_path, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    for line in proc.stdout:  # the first progress line: training is under way
        if "| train/loss" in line:
            break
    proc.send_signal(signal.SIGTERM)
    rest = proc.stdout.read()
    assert proc.wait(timeout=120) == 130, rest
    assert "stopped: run " in rest and "received SIGTERM" in rest
    client = store_client(tmp_path)
    killed = only_run(client)
    assert killed.info.status == "KILLED" and "SIGTERM" in killed.data.tags["charrnn.reason"]
    assert "checkpoints/latest.npz" in {a.path for a in client.list_artifacts(killed.info.run_id, "checkpoints")}
    stopped_at = max(s for s, _ in metric_history(client, killed.info.run_id, "train/loss"))
    limit = (stopped_at // 500 + 2) * 500

    out = cli(
        "charrnn-train", f"train.resume={killed.info.run_id}", f"train.max_iters={limit}", "train.max_seconds=null"
    )
    assert out.returncode == 0, out.stderr
    assert f"with train.max_iters={limit} (was None), train.max_seconds=None (was 1000000000.0)" in out.stderr
    resumed = only_run(client)
    assert resumed.info.status == "FINISHED"
    reference = tmp_path / "reference"
    reference.mkdir()
    assert (
        cli("charrnn-train", *args, f"train.max_iters={limit}", "train.max_seconds=null", cwd=reference).returncode == 0
    )
    ref_client = store_client(reference)
    ref = only_run(ref_client)
    for key in ("train/loss", "train/smooth_loss", "grad/norm", "val/loss"):
        assert metric_history(client, resumed.info.run_id, key) == metric_history(ref_client, ref.info.run_id, key), key
    steps = [m.step for m in client.get_metric_history(resumed.info.run_id, "throughput/chars_per_s")]
    assert steps == list(range(100, limit + 1, 100)), "one point per step"


def test_resume_refuses_what_it_cannot_continue_and_leaves_the_run_as_it_was(cli, small_text, tmp_path):
    from charrnn_experiments.store import Store
    from charrnn_experiments.tracking import TAG_SWEEP, MlflowTracker

    assert cli("charrnn-train", *tiny(small_text)).returncode == 0
    client = store_client(tmp_path)
    finished = only_run(client).info.run_id
    assert cli("charrnn-train", *tiny(small_text, "optim.lr=0")).returncode == 2
    experiment_id = client.get_experiment_by_name("charrnn").experiment_id
    failed = client.search_runs([experiment_id], "attributes.status = 'FAILED'")[0].info.run_id
    store = Store.resolve(None, tmp_path)
    parent = MlflowTracker.start(store, experiment_id, tags={TAG_SWEEP: str(tmp_path)}).run_id
    client.set_terminated(parent, "FINISHED")
    running = MlflowTracker.start(store, experiment_id).run_id  # written by this (live) process

    def refused(run_id, *more, line):
        """``line``: the error line, a regular expression."""
        before = client.get_run(run_id)
        out = cli("charrnn-train", f"train.resume={run_id}", *more)
        assert out.returncode == 2 and re.fullmatch(f"error: {line}\n", own_stderr(out)), out.stderr
        after = client.get_run(run_id)
        assert (after.info.status, after.info.end_time, after.data.params) == (
            before.info.status,
            before.info.end_time,
            before.data.params,
        )

    refused(
        failed,
        line=re.escape(
            f"cannot resume run {failed}: it has no checkpoint in the store (status FAILED); start a new run instead"
        ),
    )
    refused(
        parent, line=re.escape(f"cannot resume run {parent}: it is a sweep's parent run; resume one of its child runs")
    )
    refused(
        running,
        line=re.escape(
            f"cannot resume run {running}: it is RUNNING (process {os.getpid()} on this "
            "machine is writing it); stop that first"
        ),
    )
    refused(
        finished,
        "model.hidden_size=16",
        line=re.escape(
            "train.resume continues a run with its own config; only the stop limits train.max_iters, "
            "train.max_seconds, train.target_val_loss may change, not model.hidden_size=16"
        ),
    )
    original = small_text.read_text()
    small_text.write_text(original.replace("return", "yield"))
    refused(
        finished,
        line=re.escape(f"cannot resume run {finished}: its data changed: {small_text.resolve()} has sha256 ")
        + r"[0-9a-f]{12}\.\.\., the run was trained on [0-9a-f]{12}\.\.\.; "
        "restore that text or start a new run",
    )
    small_text.write_text(original)
    out = cli("charrnn-train", f"train.resume={finished}", "train.max_iters=60")
    assert out.returncode == 0 and f"resuming run {finished} at iteration 60\n" in out.stderr, out.stderr


def test_resume_from_the_local_checkpoint_of_a_run_whose_store_never_got_it(cli, small_text, tmp_path):
    # A process that died while the store was away leaves its newest checkpoint only in the run's folder.
    assert cli("charrnn-train", *tiny(small_text)).returncode == 0
    client = store_client(tmp_path)
    run = only_run(client)
    run_id = run.info.run_id
    stored = Path(run.info.artifact_uri.removeprefix("file://")) / "checkpoints"
    shutil.rmtree(stored)  # as if the store had never received them
    [local] = tmp_path.glob(f"outputs/*/*/{run_id}/checkpoints/latest.npz")

    out = cli("charrnn-train", f"train.resume={run_id}", "train.max_iters=120")
    assert out.returncode == 2 and "it has no checkpoint in the store" in out.stderr, out.stderr
    out = cli("charrnn-train", f"train.resume={local}", "train.max_iters=120")
    assert out.returncode == 0, out.stderr
    assert f"resuming run {run_id} at iteration 60 from {local} with train.max_iters=120 (was 60)" in out.stderr
    resumed = only_run(client)
    assert resumed.info.status == "FINISHED" and "checkpoints/latest.npz" in {
        a.path for a in client.list_artifacts(run_id, "checkpoints")
    }

    reference = tmp_path / "reference"
    reference.mkdir()
    assert cli("charrnn-train", *tiny(small_text, "train.max_iters=120"), cwd=reference).returncode == 0
    ref_client = store_client(reference)
    ref = only_run(ref_client)
    for key in ("train/loss", "grad/norm", "val/loss"):
        assert metric_history(client, run_id, key) == metric_history(ref_client, ref.info.run_id, key), key


@pytest.mark.parametrize(
    "name, words",
    [
        ("missing.npz", "checkpoint '{path}' does not exist"),
        (
            "engine.npz",
            "the checkpoint does not name its run (it predates charrnn-train writing that into checkpoints); "
            "resume by run id: train.resume=<run id>",
        ),
    ],
)
def test_resume_from_a_file_that_cannot_name_its_run_is_one_line(cli, tmp_path, name, words):
    trainer = small_trainer()
    trainer.train_step()
    save_checkpoint(tmp_path / "engine.npz", trainer.checkpoint())  # the engine's own: no run id in it
    path = tmp_path / name
    out = cli("charrnn-train", f"train.resume={path}")
    assert (out.returncode, own_stderr(out)) == (2, f"error: train.resume={path}: {words.format(path=path)}\n"), (
        out.stderr
    )


def test_two_resumes_of_one_run_started_together_one_continues_the_other_refuses(cli, small_text, tmp_path):
    assert cli("charrnn-train", *tiny(small_text)).returncode == 0
    client = store_client(tmp_path)
    run_id = only_run(client).info.run_id
    # no stop limit the machine's speed could race: the winner trains until the loser has refused and the
    # winner has trained on, then the test stops it
    resume = [str(BIN / "charrnn-train"), f"train.resume={run_id}", "train.max_iters=null", "train.max_seconds=1e9"]
    procs = [
        subprocess.Popen(
            resume, cwd=tmp_path, text=True, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        for _ in range(2)
    ]
    try:
        while all(p.poll() is None for p in procs):
            time.sleep(0.1)
        [loser] = [p for p in procs if p.poll() is not None]
        [winner] = [p for p in procs if p is not loser]
        refused = loser.communicate()[0]
        assert loser.returncode == 2, refused
        errors = [line for line in refused.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and (
            f"cannot resume run {run_id}: it is RUNNING" in errors[0]
            or "is being resumed by another command right now" in errors[0]
        ), refused
        for line in winner.stdout:  # the winner trains past the iteration the run had reached
            if (progress := re.search(r"\] - iter (\d+) \| ", line)) and int(progress[1]) > 60:
                break
        winner.send_signal(signal.SIGTERM)
        rest = winner.communicate(timeout=120)[0]
        assert winner.returncode == 130, rest
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    run = only_run(client)
    assert (run.info.status, run.data.tags["charrnn.reason"]) == ("KILLED", "received SIGTERM")
    steps = [m.step for m in client.get_metric_history(run_id, "train/loss")]
    assert steps == list(range(10, steps[-1] + 1, 10)) and steps[-1] > 60, "each step once, on past 60"
