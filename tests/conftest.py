"""Shared fixtures and helpers: the data directory, a small generated text, running the console scripts,
composing the Hydra config, and the tiny training job the CLI tests run. Test modules import helpers from
here, never from one another."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SHAKESPEARE = SHARED_DATA / "tinyshakespeare.txt"
BIN = Path(sys.executable).parent

# A job of a few seconds: 60 iterations of an 8-unit RNN, logging, evaluating and sampling along the way.
TINY = ["model.hidden_size=8", "train.seq_length=8", "train.max_seconds=null", "train.max_iters=60",
        "train.log_every=10", "train.eval_every=30", "train.sample_every=30", "train.sample_length=20"]


def tiny(text: Path, *more: str) -> list[str]:
    """charrnn-train overrides for the tiny job on the text file ``text``."""
    return [*TINY, "data=file", f"data.path={text}", *more]


def compose_cfg(*overrides: str, hydra: bool = False):
    """The charrnn-train config as Hydra composes it, without running the app."""
    with initialize_config_module("charrnn_conf", version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=hydra)


@pytest.fixture(autouse=True, scope="session")
def charrnn_data_dir(tmp_path_factory) -> Path:
    """CHARRNN_DATA_DIR: ../shared/data beside the repo when it exists, else an empty temp dir."""
    path = SHARED_DATA if SHARED_DATA.is_dir() else tmp_path_factory.mktemp("charrnn-data")
    os.environ["CHARRNN_DATA_DIR"] = str(path)
    return path


@pytest.fixture
def small_text(tmp_path) -> Path:
    """A deterministic ~6 kB UTF-8 text with code-like structure."""
    lines = [f"def f{i}(x):\n    return x * {i} + \"{chr(97 + i % 26)}\"  # note {i % 7}\n"
             for i in range(120)]
    path = tmp_path / "small.txt"
    path.write_text("".join(lines), encoding="utf-8")
    return path


@pytest.fixture
def cli(tmp_path):
    """cli("charrnn-train", *overrides) runs a console script of this environment without a
    terminal, in tmp_path unless cwd= says otherwise."""

    def run(name: str, *args: str, cwd: Path | None = None, timeout: float = 300):
        return subprocess.run([str(BIN / name), *args], cwd=cwd or tmp_path, capture_output=True,
                              text=True, timeout=timeout, stdin=subprocess.DEVNULL)

    return run
