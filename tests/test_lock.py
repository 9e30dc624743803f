"""uv.lock is the environment: it matches pyproject.toml, and the packages the tests run with are its versions."""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def uv() -> str:
    """The uv that `make` installs in .tools/, else one on PATH."""
    pinned = ROOT / ".tools" / "bin" / "uv"
    found = str(pinned) if pinned.exists() else shutil.which("uv")
    if found is None:
        pytest.skip("uv is not installed: `make test` installs it in .tools/")
    return found


def lock_check(folder: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "UV_PYTHON": sys.executable, "UV_PYTHON_DOWNLOADS": "never"}
    return subprocess.run(
        [uv(), "lock", "--check", "--directory", str(folder)], capture_output=True, text=True, env=env, timeout=240
    )


def project_copy(folder: Path) -> Path:
    """pyproject.toml and uv.lock alone: enough for uv to judge whether the lock is current."""
    folder.mkdir()
    for name in ("pyproject.toml", "uv.lock", "README.md"):
        shutil.copy(ROOT / name, folder / name)
    return folder


@pytest.mark.timeout(600)
def test_the_lock_matches_pyproject_and_a_stale_one_fails(tmp_path):
    current = lock_check(project_copy(tmp_path / "current"))
    assert current.returncode == 0, f"uv.lock is stale: run `make lock` and commit it\n{current.stderr[-2000:]}"

    stale = project_copy(tmp_path / "stale")
    pyproject = stale / "pyproject.toml"
    pyproject.write_text(
        pyproject.read_text().replace("dependencies = [\n", 'dependencies = [\n    "tomli-w>=1.0",\n', 1)
    )
    changed = lock_check(stale)
    assert changed.returncode != 0, "uv lock --check accepted a pyproject.toml with a dependency the lock lacks"
    # refused for the stale lock, not for a failure of its own (no index, no interpreter)
    assert "needs to be updated" in changed.stderr, changed.stderr[-2000:]


def locked_versions() -> dict[str, set[str]]:
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    versions: dict[str, set[str]] = {}
    for package in lock["package"]:
        versions.setdefault(package["name"], set()).add(package.get("version", ""))
    return versions


def normalise(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def test_every_installed_package_is_the_locked_version():
    """What the tests run against is the lock: a package pip or an extra moved to another version shows here."""
    locked = locked_versions()
    build_tools = {"pip", "setuptools", "wheel"}  # the venv's own, not the project's
    off = []
    for dist in importlib.metadata.distributions():
        name = normalise(dist.metadata["Name"])
        if name in build_tools or name == "charrnn":
            continue
        if name not in locked:
            off.append(f"{name} {dist.version} is not in uv.lock")
        elif dist.version not in locked[name]:
            off.append(f"{name} {dist.version}, locked {sorted(locked[name])}")
    assert not off, "this environment is not uv.lock's (make test installs it): " + "; ".join(sorted(off))
