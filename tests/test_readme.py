"""The README's Python example runs as written and does what its comments say."""
from __future__ import annotations

import math
import re
from pathlib import Path

from charrnn import load_checkpoint

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_engine_example_trains_resumes_and_samples(tmp_path, monkeypatch, capsys):
    section = README.read_text(encoding="utf-8").split("## The engine from Python", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    out = capsys.readouterr().out

    result, resumed, vocab = namespace["result"], namespace["resumed"], namespace["vocab"]
    assert (result.status, result.reason, result.iteration) == ("finished", "reached max_iters=200", 200)
    assert result.val_loss < math.log(vocab.size)  # it learned something: better than a uniform guess
    # the resumed trainer continued the same run to the longer budget
    assert resumed.iteration == 300 and load_checkpoint(tmp_path / "ckpt" / "latest.npz").iteration == 300
    assert load_checkpoint(tmp_path / "ckpt" / "best.npz").iteration in (100, 200, 300)

    # what it prints: the progress lines of the first 200 iterations (samples between them come with each
    # evaluation), then a sample of 200 characters
    progress, printed_sample = out[:-201], out[-201:-1]
    assert [" ".join(line.split()[:3]) for line in progress.splitlines() if line.startswith("iter ")] == [
        "iter 100: train/loss", "iter 100: val/loss", "iter 200: train/loss", "iter 200: val/loss"]
    assert out.endswith("\n") and len(printed_sample) == 200 and set(printed_sample) <= set(vocab.chars)


def test_readme_team_section_has_the_done_when_commands():
    """The issue's done-when: on a fresh machine these two commands, exactly, in the Team server section."""
    section = README.read_text(encoding="utf-8").split("## Team server", 1)[1].split("\n## ", 1)[0]
    commands = [line.split("#", 1)[0].strip() for line in re.findall(r"```bash\n(.*?)```", section, re.S)[0]
                .splitlines()]
    assert "make server" in commands
    assert "charrnn-train tracking.uri=http://127.0.0.1:5000 experiment=grid hydra/launcher=charrnn" in commands
