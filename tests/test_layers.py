"""The three layers and no import upward: ``charrnn/`` (the engine) <- ``analysis/`` (a pure library over arrays,
text and checkpoints) <- ``experiments/`` (the apps: console scripts, the MLflow adapter, the sweep callback, the
launcher). Each file is parsed, not imported, so a forbidden import fails here wherever it stands (inside a
function, under ``if TYPE_CHECKING``) and whether or not its package is installed."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.fast  # the engine and config tests: pytest -m fast -n 2

ROOT = Path(__file__).resolve().parents[1]
APPS = {"charrnn_experiments", "hydra", "hydra_plugins", "omegaconf", "mlflow"}  # the apps' layer and its tools
FORBIDDEN = {  # folder -> the top-level modules its files may not import
    "charrnn": APPS | {"charrnn_analysis"},
    "analysis": APPS,
}


def imported_modules(tree: ast.AST):
    """(line, module) for every absolute import in ``tree``; relative imports stay inside their package."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            yield node.lineno, node.module


def upward_imports(folder: str) -> list[str]:
    """``file:line: imports module`` for each import of ``folder``'s .py files that goes to a forbidden layer."""
    found = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for line, module in imported_modules(tree):
            if module.partition(".")[0] in FORBIDDEN[folder]:
                found.append(f"{path.relative_to(ROOT)}:{line}: imports {module}")
    return found


@pytest.mark.parametrize("folder", sorted(FORBIDDEN))
def test_no_import_goes_up_a_layer(folder):
    assert list((ROOT / folder).rglob("*.py")), f"no Python files under {folder}/"
    found = upward_imports(folder)
    assert not found, f"{folder}/ may not import {', '.join(sorted(FORBIDDEN[folder]))}:\n" + "\n".join(found)
