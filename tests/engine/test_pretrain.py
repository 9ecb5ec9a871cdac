"""Masked pretraining end to end: CLI runs (2D guided / random, 3D guided), exact mask ratios, schedules,
resume, export into timm / the V-Net encoder / medssl semi, and bad input."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from medssl.cli import main
from medssl.data.io import read_image, write_png
from medssl.data.layouts import strip_suffix
from medssl.localize import RoiCache, create_localizer
from medssl.runtime.checkpoint import load_checkpoint
from medssl.runtime.metrics_log import read_metrics

HEART_PROMPT = "A chest X-ray highlighting the heart"
ATRIUM_PROMPT = "A cardiac MRI highlighting the left atrium"
# Heart boxes of the four 64x64 images; with 32-pixel patches and the top-left rule they hold 1, 2, 0 and 1
# ROI patches, also after a horizontal flip.
HEART_BOXES = {"case_0": (slice(0, 32), slice(0, 32)), "case_1": (slice(0, 64), slice(0, 32)),
               "case_2": None, "case_3": (slice(10, 50), slice(10, 50))}
ROI_PATCHES = {"case_0": 1, "case_1": 2, "case_2": 0, "case_3": 1}
N_PATCHES = 4
TINY_2D = ["--backbone", "resnet18", "--image-size", "64", "--batch-size", "2", "--epochs", "2", "--quiet",
           "--accelerator", "cpu", "--threads", "1", "--set", "model.decoder_width=64",
           "--set", "optim.warmup_epochs=1", "--set", "optim.base_lr=0.01", "--set", "runtime.log_every=1",
           "--set", "preview_images=0"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 2D images/ + structures/ layout (heart boxes above), a 3D atrium3d set, and ROI caches filled by
    the structures backend."""
    from medssl.data.synthetic import synthesize

    root = tmp_path_factory.mktemp("pretrain")
    chest = root / "chest"
    rng = np.random.default_rng(7)
    for case, box in HEART_BOXES.items():
        structures = np.zeros((64, 64), np.uint8)
        structures[40:60, 2:8] = 2  # a 'left lung' strip
        if box is not None:
            structures[box] = 1
        image = (rng.integers(0, 60, (64, 64)) + 120 * (structures == 1)).astype(np.uint8)
        write_png(chest / "images" / f"{case}.png", image)
        write_png(chest / "structures" / f"{case}.png", structures)
    (chest / "structures.json").write_text(json.dumps({"1": "heart", "2": "left lung", "3": "right lung"}))
    (chest / "train.list").write_text("".join(f"{c}\n" for c in HEART_BOXES))
    atrium = synthesize("atrium3d", root / "atrium3d", n=4, seed=3, shape=(32, 32, 16))
    localizer = create_localizer("structures")
    for folder, prompt, cache in ((chest / "images", HEART_PROMPT, root / "chest_roi"),
                                  (atrium / "images", ATRIUM_PROMPT, root / "atrium_roi")):
        rc = RoiCache(cache)
        for path in sorted(folder.iterdir()):
            rc.get_or_compute(read_image(path), prompt, localizer)
    partial = RoiCache(root / "partial_roi")  # case_3 has no entry here
    for case in ("case_0", "case_1", "case_2"):
        partial.get_or_compute(read_image(chest / "images" / f"{case}.png"), HEART_PROMPT, localizer)
    return {"chest": chest, "chest_roi": root / "chest_roi", "atrium": atrium, "atrium_roi": root / "atrium_roi",
            "partial_roi": root / "partial_roi"}


def _expected_fractions(names: list[str], r_roi: float, r_bg: float) -> dict[str, float]:
    """Masked fractions of fixed-count guided masks for samples with these ROI patch counts (by hand)."""
    roi, bg, overall = [], [], []
    for name in names:
        n_roi = ROI_PATCHES[name]
        n_bg = N_PATCHES - n_roi
        keep_roi, keep_bg = math.floor(n_roi * (1 - r_roi) + 1e-9), math.floor(n_bg * (1 - r_bg) + 1e-9)
        if n_roi:
            roi.append(1 - keep_roi / n_roi)
        if n_bg:
            bg.append(1 - keep_bg / n_bg)
        overall.append(1 - (keep_roi + keep_bg) / N_PATCHES)
    mean = lambda v: sum(v) / len(v) if v else math.nan  # noqa: E731
    return {"mask_ratio_roi": mean(roi), "mask_ratio_bg": mean(bg), "mask_ratio": mean(overall)}


def _batch_names(run: Path, iterations: int) -> list[list[str]]:
    """The case names of each batch of a run (batch size 2)."""
    from medssl.data.pretrain import PretrainBatches, open_pretrain_dataset
    from medssl.engine.pretrain import read_pretrain_config

    cfg = read_pretrain_config(run)
    dataset, _ = open_pretrain_dataset(cfg.data, dims=cfg.model.dims, seed=cfg.runtime.seed)
    batches = PretrainBatches(dataset, 2, cfg.runtime.seed)
    return [[strip_suffix(dataset.files[i].name) for i in batches.indices(it)[0]] for it in range(iterations)]


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, abs=1e-12)


def test_cli_guided_2d_logs_exact_mask_ratios_and_schedules(data: dict[str, Path], tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    main(["pretrain", "run", "--data", str(data["chest"]), "--roi-cache", str(data["chest_roi"]),
          "--masking", "guided", "--ratios", "0.8,0.4", "--runs-root", str(tmp_path), "--name", "g", *TINY_2D,
          "--set", "preview_every=1", "--set", "preview_images=2"])
    out = capsys.readouterr().out
    run = tmp_path / "g"
    assert f"run: {run}" in out
    rows = read_metrics(run / "metrics.csv")
    train = [r for r in rows if r["phase"] == "train"]
    assert [r["iteration"] for r in train] == [1, 2, 3, 4]
    peak = 0.01 * 2 / 256
    batch_names = _batch_names(run, 4)
    for row in train:
        i = row["iteration"] - 1
        names = batch_names[i]
        for key, value in _expected_fractions(names, 0.8, 0.4).items():
            assert _same(row[key], value), (i, names, key, row[key], value)
        assert row["roi_patch_fraction"] == pytest.approx(sum(ROI_PATCHES[n] for n in names) / 8)
        # warm-up over epoch 1 (iterations 0, 1), then a cosine over iterations 2..3 down to 0.001 x
        factor = 0.005 + 0.995 * i / 2 if i < 2 else 0.001 + 0.999 * (1 + math.cos(math.pi * (i - 2))) / 2
        assert row["lr"] == pytest.approx(peak * factor, rel=1e-12)
        assert row["wd"] == pytest.approx(0.2 + (0.04 - 0.2) * (1 + math.cos(math.pi * i / 3)) / 2, rel=1e-12)
        assert math.isfinite(row["loss"])
    epochs = [r for r in rows if r["phase"] == "epoch"]
    assert [(r["iteration"], r["epoch"]) for r in epochs] == [(2, 1.0), (4, 2.0)]
    for r, pair in zip(epochs, (train[:2], train[2:]), strict=True):
        assert r["loss"] == pytest.approx((pair[0]["loss"] + pair[1]["loss"]) / 2, rel=1e-6)
        assert r["mask_ratio"] == pytest.approx((pair[0]["mask_ratio"] + pair[1]["mask_ratio"]) / 2, abs=1e-12)
    summary = json.loads((run / "summary.json").read_text())
    manifest = json.loads((run / "manifest.json").read_text())
    expected = manifest["extra"]["pretrain"]["expected_mask_ratio"]
    # spec formula per image: (|R| 0.8 + |B| 0.4) / 4 for |R| = 1, 2, 0, 1
    assert expected["overall"] == pytest.approx(np.mean([(r * 0.8 + (4 - r) * 0.4) / 4 for r in (1, 2, 0, 1)]))
    assert expected["overall_fixed_count"] == pytest.approx(np.mean([0.75, 0.75, 0.5, 0.75]))
    assert summary["expected_mask_ratio"] == expected and summary["iterations"] == 4
    figures = sorted(p.name for p in (run / "figures").iterdir())
    assert figures == ["preview_epoch_0001.png", "preview_epoch_0002.png", "preview_final.png"]


def test_stochastic_counts_each_step_floor_or_ceil(data: dict[str, Path], tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """``--counts stochastic``: every sample keeps floor or ceil of the exact count (each logged batch mean is
    one of those combinations) and the manifest's fixed-count expectation is the spec's exact ratio."""
    import itertools

    main(["pretrain", "run", "--data", str(data["chest"]), "--roi-cache", str(data["chest_roi"]),
          "--masking", "guided", "--ratios", "0.7,0.3", "--counts", "stochastic", "--runs-root", str(tmp_path),
          "--name", "st", *TINY_2D])
    run = tmp_path / "st"
    assert "(stochastic counts " in capsys.readouterr().out
    train = [r for r in read_metrics(run / "metrics.csv") if r["phase"] == "train"]
    names = _batch_names(run, len(train))

    def outcomes(n: int, ratio: float) -> set[float]:
        kept = n * (1 - ratio)
        return {1 - math.floor(kept + 1e-9) / n, 1 - math.ceil(kept - 1e-9) / n} if n else set()

    for row, batch in zip(train, names, strict=True):
        for key, ratio, count in (("mask_ratio_roi", 0.7, lambda c: ROI_PATCHES[c]),
                                  ("mask_ratio_bg", 0.3, lambda c: N_PATCHES - ROI_PATCHES[c])):
            options = [outcomes(count(c), ratio) for c in batch if count(c)]
            means = {sum(combo) / len(combo) for combo in itertools.product(*options)} if options else set()
            assert any(abs(row[key] - m) < 1e-9 for m in means) or (not means and math.isnan(row[key])), \
                (batch, key, row[key], means)
    expected = json.loads((run / "summary.json").read_text())["expected_mask_ratio"]
    assert expected["overall_fixed_count"] == pytest.approx(expected["overall"], abs=1e-12)
    from medssl.engine.pretrain import draw_mask, read_pretrain_config
    from medssl.masking import guided_mask

    masking = read_pretrain_config(run).masking
    assert masking.counts == "stochastic"
    roi = torch.zeros(64, 3, 3, 2, dtype=torch.bool)
    roi[:, 0, :2, :2] = True  # 4 ROI patches at 0.7: floor keeps 1, stochastic 1 or 2
    drawn = draw_mask(masking, roi, torch.Generator().manual_seed(4))
    assert torch.equal(drawn, guided_mask(roi, 0.7, 0.3, torch.Generator().manual_seed(4), counts="stochastic"))
    assert set((drawn & roi).flatten(1).sum(1).tolist()) == {1, 2}


def test_resume_continues_exactly(data: dict[str, Path], tmp_path: Path) -> None:
    """A run interrupted after iteration 3 (mid-epoch) and resumed equals the uninterrupted run."""
    whole = tmp_path / "whole"
    main(["pretrain", "run", "--data", str(data["chest"]), "--roi-cache", str(data["chest_roi"]),
          "--masking", "guided", "--ratios", "0.7,0.3", "--runs-root", str(tmp_path), "--name", "whole", *TINY_2D,
          "--set", "runtime.checkpoint_every=3"])
    cut = tmp_path / "cut"
    shutil.copytree(whole, cut)
    assert sorted(p.name for p in (cut / "checkpoints").iterdir()) == ["final.pt", "iter_00000003.pt",
                                                                        "iter_00000004.pt"]
    for name in ("iter_00000004.pt", "final.pt"):  # the interruption: nothing after iteration 3 was saved
        (cut / "checkpoints" / name).unlink()
    main(["pretrain", "run", "--name", "cut", "--runs-root", str(tmp_path), "--resume", "--quiet"])
    a = load_checkpoint(whole / "checkpoints" / "final.pt")["model"]
    b = load_checkpoint(cut / "checkpoints" / "final.pt")["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert read_metrics(whole / "metrics.csv") == read_metrics(cut / "metrics.csv")  # epoch means included
    assert len(json.loads((cut / "manifest.json").read_text())["resumes"]) == 1


def test_cli_random_2d_and_timm_export(data: dict[str, Path], tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    import timm

    main(["pretrain", "run", "--data", str(data["chest"]), "--roi-cache", str(data["chest_roi"]), "--masking",
          "random", "--ratio", "0.7", "--runs-root", str(tmp_path), "--name", "r", *TINY_2D, "--epochs", "1"])
    rows = [r for r in read_metrics(tmp_path / "r" / "metrics.csv") if r["phase"] == "train"]
    assert len(rows) == 2
    batch_names = _batch_names(tmp_path / "r", 2)
    for row in rows:  # round(4 * 0.3) = 1 patch of 4 stays visible in every image
        assert row["mask_ratio"] == pytest.approx(0.75, abs=1e-12)
        names = batch_names[row["iteration"] - 1]
        if any(ROI_PATCHES[n] for n in names):
            assert 0.0 <= row["mask_ratio_roi"] <= 1.0
    capsys.readouterr()
    out = tmp_path / "enc.pt"
    main(["pretrain", "export", str(tmp_path / "r"), "--format", "timm", "--out", str(out)])
    printed = capsys.readouterr().out
    assert "loaded strictly into timm.create_model('resnet18', num_classes=0, in_chans=1)" in printed
    saved = torch.load(out, weights_only=True)
    weights, meta = saved["state_dict"], saved["medssl_encoder"]  # self-describing: the record is inside
    assert (meta["architecture"], meta["in_chans"], meta["dims"], meta["iteration"]) == ("resnet18", 1, 2, 2)
    assert meta["source_run"] == str((tmp_path / "r").resolve())
    assert meta["source_checkpoint"].endswith("final.pt") and meta["normalization"]["std"] > 0
    manifest = json.loads((tmp_path / "r" / "manifest.json").read_text())
    assert meta["commit"] == ({"commit": manifest["git_commit"], "dirty": manifest["git_dirty"]}
                              if manifest["git_commit"] else None)
    model = timm.create_model("resnet18", pretrained=False, num_classes=0, in_chans=1, checkpoint_path=str(out))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in weights.items())  # timm reads the file as is
    final = load_checkpoint(tmp_path / "r" / "checkpoints" / "final.pt")["model"]
    assert torch.equal(weights["conv1.weight"], final["sparse_encoder.encoder.conv1.weight"])
    sidecar = json.loads((tmp_path / "enc.pt.json").read_text())
    assert sidecar["backbone"] == "resnet18" and sidecar["iteration"] == 2 and sidecar["normalization"]["std"] > 0
    with pytest.raises(SystemExit) as stop:
        main(["pretrain", "export", str(tmp_path / "r"), "--format", "vnet", "--out", str(tmp_path / "v.pt")])
    assert stop.value.code == 2 and "--format timm" in capsys.readouterr().err
    assert not (tmp_path / "v.pt").exists()


def test_cli_guided_3d_export_initialises_semi(data: dict[str, Path], tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    from medssl.config import load_config
    from medssl.engine.semi import SemiTrainConfig, train_semi
    from medssl.models.vnet import VNetEncoder

    main(["pretrain", "run", "--data", str(data["atrium"]), "--roi-cache", str(data["atrium_roi"]), "--dims", "3",
          "--backbone", "vnet", "--masking", "guided", "--ratios", "0.5,0.25", "--rule", "fraction>=0.125",
          "--batch-size", "2",
          "--epochs", "2",
          "--runs-root", str(tmp_path), "--name", "v", "--quiet", "--accelerator", "cpu", "--threads", "1",
          "--set", "model.vnet_width=4", "--set", "data.crop_size=[32,32,16]", "--set", "runtime.log_every=1"])
    run = tmp_path / "v"
    rows = [r for r in read_metrics(run / "metrics.csv") if r["phase"] == "train"]
    assert [r["iteration"] for r in rows] == [1, 2] and all(math.isfinite(r["loss"]) for r in rows)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["grid"] == [2, 2, 1] and summary["patch_size"] == 16
    # ROI patch counts under the 'fraction>=0.125' rule (at least 512 ROI voxels in a block of 16 x 16 x 16),
    # from the cached ROI maps; flips map the 2 x 2 x 1 blocks onto each other, so the counts hold in every batch
    counts = {}
    cache = RoiCache(data["atrium_roi"])
    for entry in cache.valid_entries():
        roi = read_image(cache.entries_dir / entry["roi_file"]).array != 0
        blocks = roi.reshape(2, 16, 2, 16, 1, 16).sum(axis=(1, 3, 5))
        counts[strip_suffix(Path(entry["image_source"]).name)] = int((blocks >= 512).sum())
    assert len(set(counts.values())) > 1  # the layouts differ
    assert summary["expected_mask_ratio"]["images_with_roi_patches"] == sum(
        1 for c in (data["atrium"] / "train.list").read_text().split() if counts[c])
    for row, names in zip(rows, _batch_names(run, 2), strict=True):
        kept = [math.floor(counts[n] * 0.5 + 1e-9) + math.floor((4 - counts[n]) * 0.75 + 1e-9) for n in names]
        assert row["mask_ratio"] == pytest.approx(np.mean([1 - k / 4 for k in kept]), abs=1e-12)
    assert (run / "figures" / "preview_final.png").is_file()
    capsys.readouterr()
    out = tmp_path / "vnet4.pt"
    main(["pretrain", "export", str(run), "--format", "vnet", "--out", str(out)])
    assert "loaded strictly into medssl.models.vnet.VNetEncoder(in_channels=1, base_width=4)" in capsys.readouterr().out
    saved = torch.load(out, weights_only=True)
    VNetEncoder(1, base_width=4).load_state_dict(saved["state_dict"], strict=True)
    assert (saved["medssl_encoder"]["architecture"], saved["medssl_encoder"]["in_chans"]) == ("vnet", 1)
    assert saved["medssl_encoder"]["vnet_width"] == 4
    with pytest.raises(SystemExit) as stop:
        main(["pretrain", "export", str(run), "--format", "timm", "--out", str(tmp_path / "t.pt")])
    assert stop.value.code == 2 and "3D V-Net run" in capsys.readouterr().err

    cfg = load_config(SemiTrainConfig, base={
        "runtime": {"name": "semi", "runs_root": str(tmp_path), "quiet": True, "accelerator": "cpu",
                    "log_every": 1, "checkpoint_every": 1},
        "data": {"spec": f"folder:{data['atrium']}", "labeled": 2, "n_val": 1, "patch": [32, 32, 16],
                 "labeled_bs": 1, "unlabeled_bs": 0},
        "method": "supervised", "method_config": {"network": {"base_width": 4}}, "max_iterations": 1,
        "evaluate_after": False, "init_encoder": str(out)})
    result = train_semi(cfg)
    assert f"initialised net.encoder from {out}" in capsys.readouterr().out
    assert (result.run_dir / "checkpoints" / "final.pt").is_file()


@pytest.mark.parametrize("args, expected", [
    (["--roi-cache", "{partial_roi}", "--masking", "guided"], "case_3.png: no ROI map"),
    (["--masking", "random", "--ratio", "1.5"], "masking.ratio"),
    (["--masking", "guided", "--roi-cache", "{chest_roi}", "--ratios", "0.8,1.2"], "masking.ratios"),
    (["--masking", "random", "--dims", "3", "--backbone", "vnet"], "expected a 3D image"),
    (["--masking", "guided"], "needs ROI maps"),
])
def test_bad_input_is_one_line_and_writes_nothing(data: dict[str, Path], tmp_path: Path, args: list[str],
                                                  expected: str, capsys: pytest.CaptureFixture[str]) -> None:
    args = [a.format(**{k: str(v) for k, v in data.items()}) for a in args]
    with pytest.raises(SystemExit) as stop:
        main(["pretrain", "run", "--data", str(data["chest"]), "--runs-root", str(tmp_path), "--name", "bad",
              *TINY_2D, *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(err) == 1 and expected in err[0], err
    assert not (tmp_path / "bad").exists()


def test_ddp_two_processes_pretrain_guided(data: dict[str, Path], tmp_path: Path) -> None:
    """Guided 2D pretraining through Fabric DDP on 2 CPU processes (gloo): the global batch of 2 is split
    one image per rank, one metrics file and one final checkpoint are written, and the logged overall mask
    ratio (averaged over the ranks) is the exact fixed-count value of the two images of each step."""
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "medssl.cli", "pretrain", "run", "--data", str(data["chest"]),
           "--roi-cache", str(data["chest_roi"]), "--masking", "guided", "--ratios", "0.5,0.5",
           "--runs-root", str(tmp_path), "--name", "ddp", *TINY_2D, "--epochs", "1",
           "--devices", "2", "--strategy", "ddp"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("run: ") == 1  # rank 0 reports
    rows = [r for r in read_metrics(tmp_path / "ddp" / "metrics.csv") if r["phase"] == "train"]
    assert [r["iteration"] for r in rows] == [1, 2]  # 4 images / global batch 2
    names = _batch_names(tmp_path / "ddp", 2)  # the global batch of each step; rank r takes image r
    for row in rows:  # the ranks' per-image overall ratios, averaged over the ranks by the loop
        expected = _expected_fractions(names[row["iteration"] - 1], 0.5, 0.5)["mask_ratio"]
        assert row["mask_ratio"] == pytest.approx(expected, abs=1e-12)
    manifest = json.loads((tmp_path / "ddp" / "manifest.json").read_text())
    assert "2" in json.dumps(manifest["device"])
    assert (tmp_path / "ddp" / "checkpoints" / "final.pt").is_file()
