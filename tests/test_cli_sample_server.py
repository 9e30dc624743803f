"""charrnn-sample from a run, and a job tracked by a real `mlflow server` on loopback."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import urllib.request

import pytest

from conftest import BIN, tiny


def test_sample_from_a_run_id_and_from_a_checkpoint(cli, small_text, tmp_path):
    out = cli("charrnn-train", *tiny(small_text))
    run_id = re.search(r"run id:\s+(\w+)", out.stdout).group(1)
    a = cli("charrnn-sample", f"run={run_id}", "length=50", "prime=def", "seed=3")
    b = cli("charrnn-sample", f"run={run_id}", "length=50", "prime=def", "seed=3")
    assert a.returncode == 0, a.stderr
    assert a.stdout == b.stdout and a.stdout.startswith("def") and len(a.stdout) == 3 + 50 + 1
    ckpt = next(tmp_path.glob("outputs/**/checkpoints/latest.npz"))
    c = cli("charrnn-sample", f"checkpoint={ckpt}", "length=30", "argmax=true")
    assert c.returncode == 0 and len(c.stdout) == 30 + 1


@pytest.mark.parametrize(
    "args, words",
    [
        ([], "exactly one of run="),
        (["checkpoint=missing.npz"], "missing.npz"),
        (["run=0123456789abcdef0123456789abcdef"], "no tracking store at"),
        (["checkpoint=x.npz", "top_k=0"], "top_k must be a positive integer (or None), got 0"),
        (["checkpoint=x.npz", "top_k=2.5"], "top_k must be a positive integer"),
        (["checkpoint=x.npz", "length=-5"], "length must be an integer >= 0, got -5"),
        (["checkpoint=x.npz", "length=ten"], "length must be an integer >= 0, got 'ten'"),
        (["checkpoint=x.npz", "seed=-1"], "seed must be an integer >= 0, got -1"),
        (["checkpoint=x.npz", "seed=1.5"], "seed must be an integer"),
        (["checkpoint=x.npz", "argmax=yes"], "argmax must be true or false, got 'yes'"),
        (["checkpoint=x.npz", "argmax=1"], "argmax must be true or false, got 1"),
        (["checkpoint=x.npz", "temperature=nan"], "temperature must be a finite number, got nan"),
    ],
)
def test_sample_bad_input_is_one_line(cli, tmp_path, args, words):
    out = cli("charrnn-sample", *args)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines() == [f"error: {out.stderr.strip()[7:]}"] and words in out.stderr


def test_a_run_never_evaluated_samples_from_its_latest_checkpoint_and_says_so(cli, small_text, tmp_path):
    out = cli("charrnn-train", *tiny(small_text, "train.val_fraction=0"))  # nothing to evaluate on
    run_id = re.search(r"run id:\s+(\w+)", out.stdout).group(1)
    sampled = cli("charrnn-sample", f"run={run_id}", "length=40", "seed=1")
    assert sampled.returncode == 0, sampled.stderr
    assert f"run {run_id} has no best.npz" in sampled.stderr and "latest checkpoint" in sampled.stderr
    latest = cli("charrnn-sample", f"run={run_id}", "length=40", "seed=1", "which=latest")
    assert sampled.stdout == latest.stdout and len(sampled.stdout) == 41


def test_ctrl_c_during_a_long_sample_keeps_what_was_generated(cli, small_text, tmp_path):
    assert cli("charrnn-train", *tiny(small_text)).returncode == 0
    ckpt = next(tmp_path.glob("outputs/**/checkpoints/latest.npz"))
    proc = subprocess.Popen(
        [str(BIN / "charrnn-sample"), f"checkpoint={ckpt}", "length=100000000", "prime=def", "seed=2"],
        cwd=tmp_path,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    first = proc.stdout.read(1)  # the first buffer of text is out
    proc.send_signal(signal.SIGINT)
    stdout = first + proc.stdout.read()  # (read, not communicate: the text stream holds what it buffered)
    stderr = proc.stderr.read()
    assert proc.wait(timeout=120) == 130, stderr
    assert "/100000000 [" in stderr, "a long sample shows progress"
    kept = int(re.search(r"stopped: received SIGINT after (\d+) of 100000000 characters", stderr).group(1))
    assert kept > 0 and stdout.startswith("def") and len(stdout) == 3 + kept + 1
    # what was kept is the beginning of the same sample
    head = cli("charrnn-sample", f"checkpoint={ckpt}", f"length={kept}", "prime=def", "seed=2")
    assert head.stdout == stdout


def test_train_and_sample_use_mlflow_tracking_uri_when_tracking_uri_is_not_given(
    cli, small_text, tmp_path, monkeypatch
):
    store = tmp_path / "elsewhere" / "store.db"
    store.parent.mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}")
    out = cli("charrnn-train", *tiny(small_text))
    assert out.returncode == 0, out.stderr
    assert store.exists() and not (tmp_path / "mlflow.db").exists()
    run_id = re.search(r"run id:\s+(\w+)", out.stdout).group(1)
    assert f"sqlite:///{store}" in out.stdout
    sampled = cli("charrnn-sample", f"run={run_id}", "length=10")
    assert sampled.returncode == 0 and len(sampled.stdout) == 11, sampled.stderr


def rest(base: str, path: str) -> dict:
    with urllib.request.urlopen(f"{base}/api/2.0/mlflow/{path}", timeout=10) as response:
        return json.loads(response.read())


def test_job_against_a_real_tracking_server(cli, small_text, tmp_path, mlflow_server):
    work = tmp_path / "work"
    work.mkdir()
    url = mlflow_server.url
    out = cli("charrnn-train", *tiny(small_text), f"tracking.uri={url}", "tracking.experiment=served", cwd=work)
    assert out.returncode == 0, out.stderr[-3000:]
    assert not (work / "mlflow.db").exists()
    run_id = re.search(r"run id:\s+(\w+)", out.stdout).group(1)
    run = rest(url, f"runs/get?run_id={run_id}")["run"]
    assert run["info"]["status"] == "FINISHED"
    metrics = {m["key"]: m for m in run["data"]["metrics"]}
    assert metrics["train/loss"]["step"] == 60 and "val/loss" in metrics
    history = rest(url, f"metrics/get-history?run_id={run_id}&metric_key=train/loss")
    assert len(history["metrics"]) == 6
    files = rest(url, f"artifacts/list?run_id={run_id}&path=checkpoints")["files"]
    assert {f["path"] for f in files} == {"checkpoints/latest.npz", "checkpoints/best.npz"}
