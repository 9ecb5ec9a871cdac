"""``import medssl``: the documented entry points, lazily imported; the README's Python section runs as
written on the embedded data."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import medssl

README = Path(__file__).resolve().parents[1] / "README.md"


def python_section_blocks(text: str) -> list[str]:
    """The ```python blocks of the README's "## Python API" section, in order."""
    section = text.split("## Python API", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_import_is_lazy_and_every_entry_point_resolves() -> None:
    code = ("import sys, medssl; heavy = [m for m in ('torch', 'timm', 'monai', 'medssl.engine', 'medssl.methods') "
            "if m in sys.modules]; print(heavy)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "[]"
    for name in medssl.__all__:
        assert getattr(medssl, name) is not None, name
    from medssl.engine.semi import train_semi
    from medssl.methods.coral_loss import CoralConsistencyLoss

    assert medssl.train_semi is train_semi and medssl.CoralConsistencyLoss is CoralConsistencyLoss
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        medssl.nope  # noqa: B018


def test_coral_loss_module_matches_the_composed_functions() -> None:
    from medssl.methods.coral import coral_consistency_loss, coral_vector, select_per_class

    g = torch.Generator().manual_seed(0)
    f1, f2 = torch.randn(40, 8, generator=g), torch.randn(40, 8, generator=g)
    pseudo, conf = torch.arange(40) % 2, torch.rand(40, generator=g)
    anchors = {0: torch.randn(6, 8, generator=g), 1: torch.randn(6, 8, generator=g) * 2}
    sel = select_per_class(pseudo, conf, 2, 16 // 4, both_ends=True)
    expected = coral_consistency_loss(coral_vector(f1, sel, anchors), coral_vector(f2, sel, anchors))
    got = medssl.CoralConsistencyLoss(n_classes=2, num_filtered=16)(f1, f2, pseudo, conf, anchors)
    assert torch.equal(got, expected) and float(got) != 0.0
    empty = medssl.CoralConsistencyLoss(n_classes=2, num_filtered=16)(f1, f2, pseudo, conf, {})
    assert float(empty) == 0.0


def test_readme_python_section_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = python_section_blocks(README.read_text(encoding="utf-8"))
    assert len(blocks) >= 2
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)  # noqa: S102
    run_dir = namespace["run"].run_dir
    assert (run_dir / "checkpoints" / "final.pt").is_file() and (tmp_path / "pred.nii.gz").is_file()
    assert [r["case_id"] for r in namespace["result"].per_case] == ["case_0004", "case_0005"]
    result, root = namespace["result"], namespace["root"]
    dices = []
    for case in ("case_0004", "case_0005"):  # Dice recomputed from the saved prediction and the label file
        pred = medssl.read_image(result.files[f"prediction:{case}"]).array > 0
        gt = medssl.read_image(root / "labels" / f"{case}.nii.gz").array > 0
        dices.append(2.0 * (pred & gt).sum() / (pred.sum() + gt.sum()))
    assert result.mean("dice") == pytest.approx(sum(dices) / 2, abs=1e-6)
    assert namespace["roi"].roi.any() and namespace["visible"].shape == namespace["patches"].shape
    loss = namespace["loss"]
    assert loss.ndim == 0 and float(loss.detach()) > 0 and namespace["f1"].grad is not None
