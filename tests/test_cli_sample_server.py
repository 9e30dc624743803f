"""charrnn-sample from a run, and a job tracked by a real `mlflow server` on loopback."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import time
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


@pytest.mark.parametrize("args, words", [
    ([], "exactly one of run="),
    (["checkpoint=missing.npz"], "missing.npz"),
    (["run=0123456789abcdef0123456789abcdef"], "0123456789abcdef0123456789abcdef"),
])
def test_sample_bad_input_is_one_line(cli, tmp_path, args, words):
    out = cli("charrnn-sample", *args)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith("error: ") and words in out.stderr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rest(base: str, path: str) -> dict:
    with urllib.request.urlopen(f"{base}/api/2.0/mlflow/{path}", timeout=10) as response:
        return json.loads(response.read())


@pytest.fixture
def mlflow_server(tmp_path):
    port = free_port()
    server = subprocess.Popen(
        [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp_path}/server.db",
         "--artifacts-destination", str(tmp_path / "server-artifacts")],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        try:
            urllib.request.urlopen(f"{base}/health", timeout=2)
            break
        except OSError:
            assert server.poll() is None and time.monotonic() < deadline, "mlflow server did not start"
            time.sleep(0.5)
    yield base
    server.terminate()
    server.wait(timeout=30)


def test_job_against_a_real_tracking_server(cli, small_text, tmp_path, mlflow_server):
    work = tmp_path / "work"
    work.mkdir()
    out = cli("charrnn-train", *tiny(small_text), f"tracking.uri={mlflow_server}",
              "tracking.experiment=served", cwd=work)
    assert out.returncode == 0, out.stderr[-3000:]
    assert not (work / "mlflow.db").exists()
    run_id = re.search(r"run id:\s+(\w+)", out.stdout).group(1)
    run = rest(mlflow_server, f"runs/get?run_id={run_id}")["run"]
    assert run["info"]["status"] == "FINISHED"
    metrics = {m["key"]: m for m in run["data"]["metrics"]}
    assert metrics["train/loss"]["step"] == 60 and "val/loss" in metrics
    history = rest(mlflow_server, f"metrics/get-history?run_id={run_id}&metric_key=train/loss")
    assert len(history["metrics"]) == 6
    files = rest(mlflow_server, f"artifacts/list?run_id={run_id}&path=checkpoints")["files"]
    assert {f["path"] for f in files} == {"checkpoints/latest.npz", "checkpoints/best.npz"}
