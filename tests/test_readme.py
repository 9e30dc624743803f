"""The README's Python example runs as written."""
from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_engine_example_runs(tmp_path, monkeypatch, capsys):
    section = README.read_text(encoding="utf-8").split("## The engine from Python", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "iter 100: train/loss" in out and "val/loss" in out
    assert (tmp_path / "ckpt" / "latest.npz").is_file() and (tmp_path / "ckpt" / "best.npz").is_file()
    from charrnn import load_checkpoint
    assert load_checkpoint(tmp_path / "ckpt" / "latest.npz").iteration == 300
    assert len(out.rstrip().splitlines()[-1]) > 0
