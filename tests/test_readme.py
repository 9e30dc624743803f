"""The README and the docs/ pages: the Python example runs as written and does what its comments say, every
relative link and image resolves, every page is linked from the README, and every console-script command line
in their ```bash blocks composes and validates as the app would."""

from __future__ import annotations

import math
import re
import shlex
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from charrnn import load_checkpoint
from charrnn.errors import CharRNNError
from charrnn_experiments.schema import (
    AnalyzeAppSchema,
    CompareAppSchema,
    EndSweepAppSchema,
    SampleAppSchema,
    TrainAppSchema,
    boolean_override_error,
    config_error_line,
)
from charrnn_experiments.train import engine_configs

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = [README, *sorted(DOCS.glob("*.md"))]


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
        "iter 100: train/loss",
        "iter 100: val/loss",
        "iter 200: train/loss",
        "iter 200: val/loss",
    ]
    assert out.endswith("\n") and len(printed_sample) == 200 and set(printed_sample) <= set(vocab.chars)


def test_team_server_page_has_the_done_when_commands():
    """The issue's done-when: on a fresh machine these two commands, exactly, on the Team server page."""
    section = (DOCS / "team-server.md").read_text(encoding="utf-8")
    commands = [
        line.split("#", 1)[0].strip() for line in re.findall(r"```bash\n(.*?)```", section, re.S)[0].splitlines()
    ]
    assert "make server" in commands
    assert "charrnn-train tracking.uri=http://127.0.0.1:5000 experiment=grid hydra/launcher=charrnn" in commands


FENCE = re.compile(r"^```.*?^```", re.S | re.M)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def prose(page: Path) -> str:
    """The page without its fenced code blocks (a `#` or a `[x](y)` there is code, not a heading or a link)."""
    return FENCE.sub("", page.read_text(encoding="utf-8"))


def anchors(page: Path) -> set[str]:
    """The anchors of the page's headings, as GitHub makes them: lower case, punctuation dropped, spaces to -."""
    return {
        re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        for heading in re.findall(r"^#{1,6} (.+)$", prose(page), re.M)
    }


def relative_links(page: Path) -> list[str]:
    return [target for target in LINK.findall(prose(page)) if not re.match(r"[a-z]+:", target)]


@pytest.mark.fast
@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_every_relative_link_and_image_resolves(page):
    broken = []
    for target in relative_links(page):
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target}: no file {file}")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target}: no heading #{anchor} in {file.name}")
    assert not broken, f"{page.name}: " + "; ".join(broken)


@pytest.mark.fast
def test_the_architecture_page_names_every_module():
    """docs/architecture.md's module map stays whole: each module of the three packages is in it."""
    page = (DOCS / "architecture.md").read_text(encoding="utf-8")
    modules = [
        path.relative_to(ROOT / folder).as_posix()
        for folder in ("charrnn", "analysis", "experiments")
        for path in sorted((ROOT / folder).glob("*.py"))
        if path.name != "__init__.py"
    ]
    missing = [name for name in modules if f"`{name}`" not in page]
    assert not missing, f"docs/architecture.md does not name {missing}"


@pytest.mark.fast
def test_every_docs_page_is_linked_from_the_readme():
    linked = {(ROOT / target.partition("#")[0]).resolve() for target in relative_links(README)}
    assert DOCS.is_dir() and PAGES[1:], "no docs/ pages"
    assert [page.name for page in PAGES[1:] if page.resolve() not in linked] == []


# Each console script: its config (conf/<name>.yaml) and its schema.
APPS = {
    "charrnn-train": ("config", TrainAppSchema),
    "charrnn-sample": ("sample", SampleAppSchema),
    "charrnn-analyze": ("analyze", AnalyzeAppSchema),
    "charrnn-compare": ("compare", CompareAppSchema),
    "charrnn-end-sweep": ("end_sweep", EndSweepAppSchema),
}
FLAGS_WITH_A_VALUE = {"--cfg", "-c", "--package", "-p", "--config-name", "-cn", "--config-dir", "-cd"}


def documented_commands() -> list[tuple[str, str, list[str]]]:
    """(where, script, overrides) for every console-script line in the pages' ```bash blocks.

    What is left out of the overrides, and why:
    - flags (`-m`, `--help`, `--cfg job`): not config;
    - `hydra/...` and `hydra.*` overrides (launchers, sweepers, Ray and SLURM settings): Hydra's own config,
      whose launcher plugins compose only where installed and which the app does not validate;
    - a sweep (`-m` line) is composed at the first value of each comma list, as its first job would be.
    Placeholders such as `<run id>` or `<head:port>` become the word `placeholder`, so the key is still checked
    (a placeholder in a key that takes a number would fail here: write a real value there instead)."""
    commands = []
    for page in PAGES:
        for block in re.findall(r"```bash\n(.*?)```", page.read_text(encoding="utf-8"), re.S):
            for line in block.replace("\\\n", " ").splitlines():
                words = shlex.split(re.sub(r"<[^<>]+>", "placeholder", line), comments=True)
                if not words or words[0].removeprefix(".venv/bin/") not in APPS:
                    continue
                overrides, skip_next = [], False
                for word in words[1:]:
                    if skip_next or word.startswith("-"):
                        skip_next = not skip_next and word in FLAGS_WITH_A_VALUE
                        continue
                    overrides.append(word)
                commands.append(
                    (f"{page.relative_to(ROOT)}: {line.strip()}", words[0].removeprefix(".venv/bin/"), overrides)
                )
    return commands


def first_job(overrides: list[str]) -> list[str]:
    """The overrides of a sweep's first job, without Hydra's own keys."""
    job = []
    for override in OverridesParser.create().parse_overrides(overrides):
        if override.key_or_group.lstrip("+~").startswith("hydra"):
            continue
        if override.is_choice_sweep():
            value = Override._get_value_element_as_str(override.value().list[0])
            job.append(f"{override.get_key_element()}={value}")
        else:
            job.append(override.input_line)
    return job


def config_problem(script: str, overrides: list[str]) -> str | None:
    """What the app would say about these overrides before it starts (None: nothing), in its own one line."""
    config_name, schema = APPS[script]
    job = first_job(overrides)
    problem = boolean_override_error(job, schema)
    if problem:
        return problem
    try:
        with initialize_config_module(config_module="charrnn_conf", version_base="1.3"):
            cfg = compose(config_name, overrides=job)
        if script == "charrnn-train":
            engine_configs(cfg, vocab_size=10)  # the engine's range checks, named by key
    except (HydraException, OmegaConfBaseException) as err:
        return config_error_line(err, schema)
    except CharRNNError as err:
        return str(err)
    return None


COMMANDS = documented_commands()


@pytest.mark.fast
def test_the_docs_show_console_script_commands():
    scripts = {script for _, script, _ in COMMANDS}
    assert {"charrnn-train", "charrnn-sample", "charrnn-analyze", "charrnn-compare"} <= scripts


@pytest.mark.fast
@pytest.mark.parametrize("where, script, overrides", COMMANDS, ids=[where for where, _, _ in COMMANDS])
def test_every_documented_command_line_composes(where, script, overrides):
    problem = config_problem(script, overrides)
    assert problem is None, f"{where}\n  error: {problem}"
