"""Mask R-CNN fine-tuning: data splits, batches, schedule, encoder loading, training end to end via the CLI,
exact resume, figures and one-line errors that leave nothing behind."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import typer

import medssl.cli as cli_module
from medssl.cli.finetune_detect import detect
from medssl.config import load_config
from medssl.engine.detect import (
    DetectConfig,
    DetectDataConfig,
    DetectModelConfig,
    DetectOptimConfig,
    SampleStore,
    build_detect_batch_fn,
    build_detector,
    image_tensor,
    lr_multiplier,
    open_detect_data,
    read_resnet_body_init,
    train_detector,
)
from medssl.errors import MedsslInputError
from medssl.runtime.metrics_log import read_metrics

SMALL_MODEL = {"backbone": "resnet18", "min_size": 64, "max_size": 64, "anchor_sizes": [8, 16, 32, 64, 128],
               "fpn_channels": 32, "box_head_dim": 64, "rpn_proposals_train": 64, "rpn_proposals_test": 32,
               "roi_batch_size": 32, "detections_per_image": 5, "trainable_layers": 1}
# one torch thread: on a shared 2-core machine a second thread mostly spins waiting for a busy core
TINY = {"runtime": {"checkpoint_every": 2, "log_every": 1, "quiet": True, "accelerator": "cpu", "threads": 1},
        "data": {"batch_size": 2}, "model": SMALL_MODEL, "optim": {"warmup_iterations": 2},
        "max_iterations": 4, "validate_every": 2, "figures": 2}


def _set_flags(mapping: dict, prefix: str = "") -> list[str]:
    args = []
    for key, value in mapping.items():
        if isinstance(value, dict):
            args += _set_flags(value, f"{prefix}{key}.")
        else:
            args += ["--set", f"{prefix}{key}={json.dumps(value)}"]
    return args


TINY_FLAGS = _set_flags({k: v for k, v in TINY.items() if k != "runtime"}) + [
    "--set", "runtime.checkpoint_every=2", "--set", "runtime.log_every=1", "--accelerator", "cpu", "--threads", "1",
    "--quiet"]


@pytest.fixture(scope="module")
def brain(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from medssl.data.synthetic import synthesize

    return synthesize("brain2d", tmp_path_factory.mktemp("data") / "brain2d", n=6, seed=1, shape=(64, 64))


@pytest.fixture
def medssl_main(monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201
    """``medssl.cli.main`` with ``finetune detect`` mounted (the real one-line error handling)."""
    app = typer.Typer()
    finetune = typer.Typer()

    @finetune.callback()
    def _group() -> None:
        """finetune commands"""

    finetune.command("detect")(detect)
    app.add_typer(finetune, name="finetune")
    monkeypatch.setattr(cli_module, "app", app)
    return lambda args: cli_module.main(["finetune", "detect", *args])


def _timm_state(backbone: str, in_chans: int) -> dict[str, torch.Tensor]:
    import timm

    torch.manual_seed(7)
    net = timm.create_model(backbone, num_classes=0, in_chans=in_chans)
    for m in net.modules():  # non-trivial statistics, so loading them is visible
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return net.state_dict()


def _mask_box(mask: np.ndarray) -> list[float]:
    rows, cols = np.nonzero(mask)
    return [float(cols.min()), float(rows.min()), float(cols.max() + 1), float(rows.max() + 1)]


# ------------------------------------------------------------------------------------------ units
def test_splits_follow_the_lists(brain: Path) -> None:
    data = open_detect_data(DetectDataConfig(root=brain))
    train_ids = (brain / "train.list").read_text().split()
    test_ids = (brain / "test.list").read_text().split()
    assert [data.train.case_id(i) for i in data.train.indices] == train_ids
    assert data.val is not None and [data.val.case_id(i) for i in data.val.indices] == test_ids
    coco = json.loads((brain / "annotations.json").read_text())
    assert data.category_ids == [c["id"] for c in coco["categories"]] and data.num_classes == 4
    assert data.label_of == {1: 1, 2: 2, 3: 3}
    merged = open_detect_data(DetectDataConfig(root=brain, merge_categories=True, val_split="none"))
    assert merged.val is None and merged.num_classes == 2 and set(merged.label_of.values()) == {1}
    everything = open_detect_data(DetectDataConfig(root=brain, train_split="all", val_split=str(brain / "train.list")))
    assert len(everything.train.indices) == 6 and everything.val is not None
    assert [everything.val.case_id(i) for i in everything.val.indices] == train_ids
    bad = brain.parent / "bad.list"
    bad.write_text("case_0001\ncase_9999\n")
    with pytest.raises(MedsslInputError, match="case_9999") as err:
        open_detect_data(DetectDataConfig(root=brain, val_split=str(bad)))
    assert err.value.source == str(bad)


def test_image_tensor_scaling_and_channels() -> None:
    img = np.array([[0, 51], [255, 102]], np.uint8)
    one = image_tensor(img, 1)
    assert one.shape == (1, 2, 2) and torch.allclose(one[0], torch.tensor([[0.0, 0.2], [1.0, 0.4]]))
    three = image_tensor(img, 3)
    assert three.shape == (3, 2, 2) and all(torch.equal(three[c], one[0]) for c in range(3))
    wide = np.array([[100, 300], [500, 700]], np.uint16)  # other types: own min-max
    assert torch.allclose(image_tensor(wide, 1)[0], torch.tensor([[0.0, 1 / 3], [2 / 3, 1.0]]))
    rgb = np.stack([img, img, np.zeros_like(img)], axis=-1)
    assert torch.allclose(image_tensor(rgb, 1)[0], one[0] * 2 / 3)


def test_batches_are_pure_and_flips_keep_boxes_on_masks(brain: Path) -> None:
    data = open_detect_data(DetectDataConfig(root=brain))
    store = SampleStore(data.train, data.label_of, 1, cache=True)
    fn = build_detect_batch_fn(store, data.train.indices, 2, 0.5, seed=3, device=torch.device("cpu"))
    a, b = fn(5), fn(5)
    for x, y in zip(a[0], b[0], strict=True):
        assert torch.equal(x, y)
    flipped = 0
    for it in range(8):
        images, targets = fn(it)
        assert len(images) == 2 and images[0].shape == (1, 64, 64)
        for image, target in zip(images, targets, strict=True):
            originals = [k for k in data.train.indices if torch.equal(store.get(k)[0], image)]
            if not originals:  # not an original image: must be the mirror of one
                originals = [k for k in data.train.indices if torch.equal(store.get(k)[0].flip(-1), image)]
                flipped += 1
            assert len(originals) >= 1
            for box, mask in zip(target["boxes"], target["masks"], strict=True):
                assert box.tolist() == _mask_box(mask.numpy())  # boxes still enclose their masks exactly
    assert 0 < flipped < 16


def test_epochs_visit_every_training_image(brain: Path) -> None:
    data = open_detect_data(DetectDataConfig(root=brain))
    store = SampleStore(data.train, data.label_of, 1, cache=True)
    fn = build_detect_batch_fn(store, data.train.indices, 2, 0.0, seed=3, device=torch.device("cpu"))
    for epoch in range(2):
        images = fn(2 * epoch)[0] + fn(2 * epoch + 1)[0]
        found = sorted(k for k in data.train.indices for im in images if torch.equal(store.get(k)[0], im))
        assert found == sorted(data.train.indices)


def test_warmup_and_step_decay() -> None:
    optim = DetectOptimConfig(warmup_iterations=4, warmup_ratio=0.1, decay_epochs=[1, 1.5], gamma=0.1)
    f = lr_multiplier(optim, steps_per_epoch=10)
    assert f(0) == pytest.approx(0.1) and f(2) == pytest.approx(0.1 + 0.9 * 2 / 4)
    assert f(4) == f(9) == 1.0
    assert f(10) == pytest.approx(0.1) and f(14) == pytest.approx(0.1) and f(15) == pytest.approx(0.01)


def test_default_heads_are_torchvisions_mask_rcnn() -> None:
    import torchvision
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.ops import FrozenBatchNorm2d

    body = torchvision.models.resnet18(weights=None, norm_layer=FrozenBatchNorm2d)
    reference = torchvision.models.detection.MaskRCNN(_resnet_fpn_extractor(body, 3), num_classes=3)
    ours = build_detector(DetectModelConfig(backbone="resnet18"), 3, 3, [0.5] * 3, [0.25] * 3)
    a, b = reference.state_dict(), ours.state_dict()
    assert a.keys() == b.keys() and all(a[k].shape == b[k].shape for k in a)
    assert {n for n, p in reference.named_parameters() if p.requires_grad} == \
        {n for n, p in ours.named_parameters() if p.requires_grad}
    assert (ours.transform.min_size, ours.transform.max_size) == ((800,), 1333)


def test_encoder_weights_land_in_the_backbone_body(tmp_path: Path) -> None:
    state = _timm_state("resnet18", in_chans=1)
    path = tmp_path / "enc.pt"
    torch.save({"encoder": state, "meta": {"epochs": 1}}, path)
    init = read_resnet_body_init(path, "resnet18")
    assert init.in_chans == 1 and init.report["loaded"] == len(state)
    assert init.report["missing"] == ["fc.weight", "fc.bias"] and init.report["unexpected"] == []
    for norm in ("frozen_bn", "bn"):
        net = build_detector(DetectModelConfig(backbone="resnet18", norm=norm), 2, 1, [0.3], [0.2], init)
        body = net.backbone.body.state_dict()
        assert body["conv1.weight"].shape == (64, 1, 7, 7)
        compared = [k for k in state if k in body]
        assert len(compared) >= len(state) - (20 if norm == "frozen_bn" else 0)  # frozen BN keeps no batch counter
        for k in compared:
            assert torch.equal(body[k], state[k]), k
    plain = tmp_path / "plain3.pt"
    torch.save(_timm_state("resnet18", in_chans=3), plain)
    assert read_resnet_body_init(plain, "resnet18").in_chans == 3
    with pytest.raises(MedsslInputError, match="model.in_chans is 1"):
        read_resnet_body_init(plain, "resnet18", in_chans=1)


# ------------------------------------------------------------------------------------ end to end
def _cfg(brain: Path, runs: Path, name: str, **extra: object) -> DetectConfig:
    base = json.loads(json.dumps(TINY))
    base["runtime"].update({"name": name, "runs_root": str(runs)})
    base["data"]["root"] = str(brain)
    return load_config(DetectConfig, base=base, overrides=[f"{k}={v}" for k, v in extra.items()])


def test_training_with_an_encoder_reports_ap_and_draws(brain: Path, tmp_path: Path) -> None:
    state = _timm_state("resnet18", in_chans=1)
    enc = tmp_path / "enc.pt"
    torch.save(state, enc)
    result = train_detector(_cfg(brain, tmp_path, "init", init=str(enc)))
    run = result.run_dir
    summary = json.loads((run / "results.json").read_text())
    assert summary["init"]["path"] == str(enc) and summary["in_chans"] == 1
    assert summary["val_images"] == 2 and summary["train_images"] == 4 and summary["steps_per_epoch"] == 2
    final = summary["final"]["metrics"]
    # the reported numbers are those of the final checkpoint: rescore it independently of the run
    import math

    import yaml

    from medssl.engine.detect import evaluate_detector

    saved = load_config(DetectConfig, base=yaml.safe_load((run / "config.yaml").read_text()))
    data = open_detect_data(saved.data)
    net = build_detector(saved.model, data.num_classes, 1, saved.model.image_mean, saved.model.image_std)
    net.load_state_dict(torch.load(run / "checkpoints" / "final.pt", weights_only=True)["model"])
    assert data.val is not None
    rescored, _, _ = evaluate_detector(net, SampleStore(data.val, data.label_of, 1, cache=False), data.val.indices,
                                       data.category_ids, "cpu")
    for key in ("box_ap", "box_ap50", "box_ap75", "mask_ap", "mask_ap50", "mask_ap75"):
        expected = rescored[key] if math.isfinite(rescored[key]) else None
        assert final[key] == pytest.approx(expected), key
    assert summary["best"]["label"] == "best (selected on validation)" and summary["best"]["iteration"] in (2, 4)
    md = (run / "results.md").read_text()
    assert "| final (iteration 4) |" in md and "best (selected on validation" in md

    rows = read_metrics(run / "metrics.csv")
    assert [r["iteration"] for r in rows if r["phase"] == "train"] == [1, 2, 3, 4]
    assert [r["iteration"] for r in rows if r["phase"] == "val"] == [2, 4]
    assert {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"} <= set(rows[0])
    # lr: 0.02 per 16 images scaled to a batch of 2, warm-up factor 0.001 at the first iteration
    assert rows[0]["lr"] == pytest.approx(0.02 * 2 / 16 * 0.001)
    val_last = [r for r in rows if r["phase"] == "val" and r["iteration"] == 4][0]
    assert val_last["mask_ap"] == pytest.approx(final["mask_ap"])  # the final evaluation is the last validation

    final_state = torch.load(run / "checkpoints" / "final.pt", weights_only=True)["model"]
    for key, value in state.items():  # only layer4 trains (trainable_layers=1): the rest is still the encoder's
        if not key.startswith("layer4.") and "num_batches" not in key:
            assert torch.equal(final_state[f"backbone.body.{key}"], value), key
    assert not torch.equal(final_state["backbone.body.layer4.0.conv1.weight"], state["layer4.0.conv1.weight"])

    figures = sorted((run / "figures").glob("val_*.png"))
    assert [f.name for f in figures] == sorted(f"val_{c}.png" for c in (brain / "test.list").read_text().split())
    from PIL import Image

    assert all(Image.open(f).size[0] >= 300 for f in figures)
    detections = json.loads((run / "predictions" / "val_final.json").read_text())
    assert all({"image_id", "category_id", "bbox", "score", "segmentation"} <= set(d) for d in detections)


def test_cli_scratch_resume_equals_uninterrupted(brain: Path, tmp_path: Path, medssl_main,  # noqa: ANN001
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    common = ["--data", str(brain), "--backbone", "resnet18", "--runs-root", str(tmp_path), *TINY_FLAGS]
    common += ["--set", "figures=0"]
    medssl_main([*common, "--name", "straight", "--iterations", "4"])
    assert "| final (iteration 4) |" in capsys.readouterr().out
    medssl_main([*common, "--name", "split", "--iterations", "2"])
    medssl_main(["--name", "split", "--runs-root", str(tmp_path), "--resume", "--iterations", "4", "--quiet"])
    a, b = tmp_path / "straight", tmp_path / "split"
    assert (a / "metrics.csv").read_text() == (b / "metrics.csv").read_text()
    wa = torch.load(a / "checkpoints" / "final.pt", weights_only=True)["model"]
    wb = torch.load(b / "checkpoints" / "final.pt", weights_only=True)["model"]
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    ra, rb = (json.loads((r / "results.json").read_text()) for r in (a, b))
    assert ra["init"] is None and ra["final"] == rb["final"]
    assert len(json.loads((b / "manifest.json").read_text())["resumes"]) == 1


def test_bad_inputs_exit_2_with_one_line_and_write_nothing(brain: Path, tmp_path: Path, medssl_main,  # noqa: ANN001
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    r50 = tmp_path / "r50.pt"
    torch.save(_timm_state("resnet50", in_chans=3), r50)
    broken = tmp_path / "broken"
    broken.mkdir()
    coco = json.loads((brain / "annotations.json").read_text())
    coco["images"].append({"id": 99, "file_name": "images/missing_case.png", "height": 64, "width": 64})
    (broken / "annotations.json").write_text(json.dumps(coco))
    (broken / "images").symlink_to(brain / "images")
    for args, names, words in [
        (["--data", str(brain), "--backbone", "resnet18", "--init", str(r50)], str(r50), "resnet50"),
        (["--data", str(broken / "annotations.json")], str(broken / "annotations.json"), "missing_case.png"),
        (["--data", str(brain), "--set", "data.train_split=nope"], str(brain / "nope.list"), "not found"),
    ]:
        with pytest.raises(SystemExit) as stop:
            medssl_main([*args, "--runs-root", str(tmp_path / "runs"), "--name", "bad", "--quiet"])
        err = capsys.readouterr().err.strip().splitlines()
        assert stop.value.code == 2 and len(err) == 1, err
        assert names in err[0] and words in err[0], err
        assert not (tmp_path / "runs").exists()  # nothing written
