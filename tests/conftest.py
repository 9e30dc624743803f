"""Shared fixtures: the data directory, a small generated text, and running the console scripts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
BIN = Path(sys.executable).parent


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
