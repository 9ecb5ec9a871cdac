"""The package's layering rules, checked on the source: what each layer may import, and module sizes."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "medssl"


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at any depth (lazy imports inside functions included)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _importers(layer: str, forbidden: tuple[str, ...]) -> dict[str, list[str]]:
    found = {}
    for path in sorted((SRC / layer).rglob("*.py")):
        bad = sorted(m for m in imported_modules(path) if m.startswith(forbidden))
        if bad:
            found[str(path.relative_to(SRC))] = bad
    return found


def test_models_import_neither_config_nor_runtime() -> None:
    assert _importers("models", ("medssl.config", "medssl.runtime", "medssl.engine")) == {}


def test_data_does_not_reach_up_into_engine_or_methods() -> None:
    assert _importers("data", ("medssl.engine", "medssl.methods", "medssl.cli")) == {}


def test_engine_modules_stay_small() -> None:
    sizes = {p.name: len(p.read_text(encoding="utf-8").splitlines()) for p in (SRC / "engine").glob("*.py")}
    assert max(sizes.values()) <= 420, {k: v for k, v in sizes.items() if v > 420}


def test_one_copy_of_the_shared_helpers() -> None:
    """Largest component, eval-mode switching and tensor-to-numpy live in one place each."""
    offenders = []
    for path in SRC.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        rel = str(path.relative_to(SRC))
        if rel not in ("components.py", "tensors.py") and (
                "def largest_connected_component" in text or "was_training = " in text
                or ".detach().cpu().numpy()" in text):
            offenders.append(rel)
    assert offenders == []
