"""``medssl finetune classify`` end to end on a synthesized brain2d set (ResNet-18, 32x32, 2 epochs)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from medssl.cli import main
from medssl.engine.classify import BEST_LABEL, FINAL_LABEL
from medssl.runtime.metrics_log import read_metrics

SIZE = 32
CLASSES = ["glioma_like", "meningioma_like", "metastasis_like", "no_tumor"]
# 12 cases: 9 train (3 of one class, 2 of the others), 3 test; a quarter of train held out -> 4 val, 5 train;
# global batch 2 -> 2 iterations per epoch.
TINY = ["--set", f"model.image_size={SIZE}", "--set", "data.batch_size=2", "--set", "data.val_fraction=0.25",
        "--set", "data.eval_batch_size=4"]


@pytest.fixture(scope="module")
def brain(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from medssl.data.synthetic import synthesize

    return synthesize("brain2d", tmp_path_factory.mktemp("data") / "brain2d", n=12, seed=5, shape=(SIZE, SIZE))


def _args(brain: Path, runs: Path, name: str, *extra: str) -> list[str]:
    return ["finetune", "classify", "--data", f"csv:{brain / 'classes.csv'}", "--backbone", "resnet18",
            "--epochs", "2", "--runs-root", str(runs), "--name", name, "--quiet", "--accelerator", "cpu",
            "--threads", "1", *TINY, *extra]


def _csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path), dtype=np.float64)


def test_scratch_run_reports_best_and_final(brain: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(_args(brain, tmp_path, "scratch", "--config", "classify_brain2d_resnet18"))
    out = capsys.readouterr().out
    assert BEST_LABEL in out and FINAL_LABEL in out and "| test |" in out
    run = tmp_path / "scratch"
    results = json.loads((run / "results.json").read_text())
    assert results["classes"] == CLASSES and results["init"] is None
    assert (results["splits"]["train"]["n"], results["splits"]["val"]["n"], results["splits"]["test"]["n"]) == (5, 4, 3)
    assert results["iterations_per_epoch"] == 2

    # best = highest validation accuracy (earliest on ties) among the per-epoch validation rows
    rows = [r for r in read_metrics(run / "metrics.csv") if r["phase"] == "val"]
    assert [r["iteration"] for r in rows] == [2, 4] and [r["epoch"] for r in rows] == [1.0, 2.0]
    top = max(r["accuracy"] for r in rows)
    best_row = next(r for r in rows if r["accuracy"] == top)
    assert results["best"]["label"] == BEST_LABEL and results["final"]["label"] == FINAL_LABEL
    assert results["best"]["iteration"] == best_row["iteration"]
    assert results["best"]["epoch"] == best_row["iteration"] // 2
    assert results["final"]["epoch"] == 2 and results["final"]["iteration"] == 4
    for key in ("accuracy", "balanced_accuracy", "auprc", "f1", "loss"):
        assert results["best"]["val"][key] == best_row[key]
        assert results["final"]["val"][key] == rows[-1][key]
    assert torch.load(run / "checkpoints" / "best.pt", weights_only=True)["iteration"] == best_row["iteration"]

    # the logged lr (head group, full rate) at the last step: peak 0.008 * 2 / 256 times the cosine floor 0.001
    train_rows = [r for r in read_metrics(run / "metrics.csv") if r["phase"] == "train"]
    assert train_rows[-1]["iteration"] == 4
    assert train_rows[-1]["lr"] == pytest.approx(0.008 * 2 / 256 * 0.001, rel=1e-9)
    ckpt = torch.load(run / "checkpoints" / "final.pt", weights_only=True)
    lrs = sorted(g["lr"] for g in ckpt["optimizer"]["param_groups"])
    assert lrs[0] == pytest.approx(lrs[-1] * 0.7**7, rel=1e-9)  # stem group: 7 layers of decay below the head

    # test metrics reproduced independently from final.pt, the PNG files and the training statistics
    val_paths = {r["image"] for r in _csv_rows(run / "predictions" / "val_final.csv")}
    listed = _csv_rows(brain / "classes.csv")
    train_paths = [str(brain / r["image"]) for r in listed if r["split"] == "train" and str(brain / r["image"]) not in val_paths]
    assert len(train_paths) == 5
    train_pixels = np.stack([_pixels(Path(p)) for p in train_paths])
    mean, std = train_pixels.mean(), train_pixels.std()
    assert results["normalization"]["mean"] == pytest.approx([mean], rel=1e-9)
    assert results["normalization"]["std"] == pytest.approx([std], rel=1e-9)
    net = timm.create_model("resnet18", num_classes=4, in_chans=1)
    net.load_state_dict(torch.load(run / "checkpoints" / "final.pt", weights_only=True)["model"])
    net.eval()
    test_rows = _csv_rows(run / "predictions" / "test_final.csv")
    assert [Path(r["image"]).name for r in test_rows] == [Path(r["image"]).name for r in listed if r["split"] == "test"]
    x = torch.tensor(np.stack([(_pixels(Path(r["image"])) - mean) / std for r in test_rows]), dtype=torch.float32)
    with torch.no_grad():
        probs = torch.softmax(net(x[:, None]), dim=1).numpy()
    saved = np.array([[float(r[f"score_{c}"]) for c in CLASSES] for r in test_rows])
    np.testing.assert_allclose(saved, probs, atol=1e-5)
    labels = [CLASSES.index(r["label"]) for r in test_rows]
    assert results["final"]["test"]["accuracy"] == pytest.approx(np.mean(probs.argmax(1) == labels))


def test_init_file_weights_are_loaded(brain: Path, tmp_path: Path) -> None:
    torch.manual_seed(123)
    encoder = timm.create_model("resnet18", num_classes=0, in_chans=1).state_dict()
    init = tmp_path / "encoder.pt"
    torch.save(encoder, init)  # a plain, strict timm state dict ({"encoder": ...} is covered in tests/engine)
    # the reference recipe (LAMB, mixup/cutmix, BCE, EMA) with a zero learning rate: weights must stay the init's
    main(_args(brain, tmp_path, "init", "--init", str(init), "--set", "optim.base_lr=0"))
    run = tmp_path / "init"
    results = json.loads((run / "results.json").read_text())
    report = results["init"]
    assert report["path"] == str(init) and report["layout"] == "state_dict" and report["in_chans"] == 1
    assert report["missing_keys"] == ["fc.bias", "fc.weight"] and report["tensors_loaded"] == len(encoder)
    assert results["final"]["test_ema"] is not None  # EMA weights scored too
    final = torch.load(run / "checkpoints" / "final.pt", weights_only=True)
    weights = final["model"]
    assert tuple(weights["fc.weight"].shape) == (4, 512)
    for key, value in encoder.items():
        if "running" in key or "num_batches" in key:
            continue
        assert torch.equal(weights[key], value), key
    assert not torch.equal(weights["bn1.running_mean"], encoder["bn1.running_mean"])  # training did run
    assert int(weights["bn1.num_batches_tracked"]) == 4
    assert "ema" in final["extra"]


def test_resume_equals_uninterrupted(brain: Path, tmp_path: Path) -> None:
    main(_args(brain, tmp_path, "straight", "--set", "optim.base_lr=0.05"))
    main(_args(brain, tmp_path, "cut", "--set", "optim.base_lr=0.05"))
    cut = tmp_path / "cut"
    # simulate a run killed after the first epoch's checkpoint
    for name in ("checkpoints/final.pt", "checkpoints/iter_00000004.pt", "results.json", "results.md"):
        (cut / name).unlink()
    if torch.load(cut / "checkpoints" / "best.pt", weights_only=True)["iteration"] > 2:
        (cut / "checkpoints" / "best.pt").unlink()
    shutil.rmtree(cut / "predictions")
    assert (cut / "checkpoints" / "iter_00000002.pt").is_file()  # the resume point: end of epoch 1
    main(["finetune", "classify", "--resume", "--name", "cut", "--runs-root", str(tmp_path), "--quiet"])
    straight = tmp_path / "straight"
    assert (straight / "metrics.csv").read_text() == (cut / "metrics.csv").read_text()
    a = json.loads((straight / "results.json").read_text())
    b = json.loads((cut / "results.json").read_text())
    assert a.pop("run") == "straight" and b.pop("run") == "cut"
    assert a == b
    wa = torch.load(straight / "checkpoints" / "final.pt", weights_only=True)
    wb = torch.load(cut / "checkpoints" / "final.pt", weights_only=True)
    for part in ("model", "extra"):
        flat_a = wa[part] if part == "model" else wa[part]["ema"]
        flat_b = wb[part] if part == "model" else wb[part]["ema"]
        for k, v in flat_a.items():
            assert torch.equal(v, flat_b[k]), k
    manifest = json.loads((cut / "manifest.json").read_text())
    assert len(manifest["resumes"]) == 1


def _fails(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as stop:
        main(args)
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    return err


def test_bad_inputs_exit_2_and_write_nothing(brain: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    other = tmp_path / "resnet34.pt"
    torch.save(timm.create_model("resnet34", num_classes=0, in_chans=1).state_dict(), other)
    runs = tmp_path / "runs"
    err = _fails(_args(brain, runs, "wrong_arch", "--init", str(other)), capsys)
    assert err.startswith(f"medssl: error: {other}:") and "resnet18" in err and "unexpected" in err
    not_weights = tmp_path / "notes.pt"
    torch.save({"format": "medssl-train-v1", "model": {}}, not_weights)
    err = _fails(_args(brain, runs, "ckpt", "--init", str(not_weights)), capsys)
    assert str(not_weights) in err and "training checkpoint" in err

    err = _fails(_args(brain, runs, "bad_split", "--set", "data.val_split=validation"), capsys)
    assert "classes.csv" in err and "'validation'" in err
    err = _fails(_args(brain, runs, "bad_test", "--set", "data.test_split=holdout"), capsys)
    assert "'holdout'" in err
    err = _fails(_args(brain, runs, "bad_backbone", "--backbone", "resnet_nope"), capsys)
    assert "resnet_nope" in err
    assert not runs.exists()  # nothing written for any of them
