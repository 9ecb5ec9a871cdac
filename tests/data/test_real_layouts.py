"""The public 2D layouts load unchanged: ImageFolder, COCO (RLE + polygons, images/ + annotations/) and
images/ + masks/ with 255 = ignore; ``medssl data inspect`` summaries. Synthetic cases with exact numbers
and small reads of the real sets in ``../shared/data``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from medssl.data.classify import ClassifyDataConfig, open_classification_data
from medssl.data.detect import DetectDataConfig, open_detect_data
from medssl.data.inspect import inspect_path
from medssl.data.io import write_png
from medssl.data.layouts import CocoDataset, find_coco_annotations, imagefolder_files, is_imagefolder
from medssl.data.pretrain import list_pretrain_images
from medssl.errors import MedsslInputError
from medssl.localize.run import list_images
from shared_paths import SHARED

DATA = SHARED / "data"


def _imagefolder(root: Path) -> Path:
    """train/{a: 2 images 8x6, b: 1 image 5x7}, val/{a: 1, b: 1} (sizes (H, W))."""
    for split, counts in (("train", {"a": 2, "b": 1}), ("val", {"a": 1, "b": 1})):
        for cls, n in counts.items():
            for k in range(n):
                shape = (8, 6) if cls == "a" else (5, 7)
                write_png(root / split / cls / f"{cls}{k}.png", np.full(shape, 9, np.uint8))
    return root


def test_imagefolder_listing_and_summary(tmp_path: Path) -> None:
    root = _imagefolder(tmp_path / "ds")
    assert is_imagefolder(root) and is_imagefolder(root / "train") and not is_imagefolder(root / "train" / "a")
    tree = imagefolder_files(root)
    assert {s: {c: [p.name for p in ps] for c, ps in per.items()} for s, per in tree.items()} == {
        "train": {"a": ["a0.png", "a1.png"], "b": ["b0.png"]}, "val": {"a": ["a0.png"], "b": ["b0.png"]}}
    assert list(imagefolder_files(root / "train")) == [""]
    report = inspect_path(root)
    text = report.format()
    assert report.problems == []
    assert "splits:       train, val" in text and "classes:      2 (a, b)" in text
    rows = [line.split() for line in text.splitlines() if line.startswith("  ")]
    assert rows == [["class", "train", "val"], ["a", "2", "1"], ["b", "1", "1"], ["total", "3", "2"]]
    assert "image sizes:  H 5-8, W 6-7 pixels (2 distinct (H, W))" in text


def test_imagefolder_class_missing_from_a_split_is_a_problem(tmp_path: Path) -> None:
    root = _imagefolder(tmp_path / "ds")
    for p in (root / "val" / "b").iterdir():
        p.unlink()
    (root / "val" / "b").rmdir()
    assert inspect_path(root).problems == [f"{root / 'val'}: no images of class 'b' (present in another split)"]


def _coco(root: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    """images/x.png (10x12) with an RLE 'lung' instance and a polygon 'heart' instance; annotations/instances.json."""
    write_png(root / "images" / "x.png", np.zeros((10, 12), np.uint8))
    write_png(root / "images" / "y.png", np.zeros((10, 12), np.uint8))
    lung = np.zeros((10, 12), np.uint8)
    lung[2:6, 1:4] = 1
    rle = mask_utils.encode(np.asfortranarray(lung))
    rle["counts"] = rle["counts"].decode("ascii")
    heart = np.zeros((10, 12), np.uint8)
    data = {"images": [{"id": 1, "file_name": "x.png", "height": 10, "width": 12},
                       {"id": 2, "file_name": "y.png", "height": 10, "width": 12}],
            "categories": [{"id": 1, "name": "lung"}, {"id": 2, "name": "heart"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 2, 3, 4], "segmentation": rle},
                            {"id": 2, "image_id": 1, "category_id": 2, "bbox": [6, 4, 4, 4],
                             "segmentation": [[6, 4, 10, 4, 10, 8, 6, 8]]}]}
    path = root / "annotations" / "instances.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(data))
    return path, lung, heart


def test_coco_images_folder_and_summary(tmp_path: Path) -> None:
    path, lung, _ = _coco(tmp_path / "coco")
    root = tmp_path / "coco"
    assert find_coco_annotations(root) == path
    ds = CocoDataset(root, path)
    assert ds.image_root == root / "images" and ds.image_path(0) == root / "images" / "x.png"
    np.testing.assert_array_equal(ds[0].masks[0], lung)
    text = inspect_path(root).format()
    assert "images:       2 in " + str(root / "images") + " (1 without annotations)" in text
    assert "instances:    2 (0 crowd); segmentations: RLE (compressed) 1, polygons 1" in text
    rows = [line.split() for line in text.splitlines() if line.startswith("  ")]
    assert rows == [["category", "id", "instances", "images"], ["lung", "1", "1", "1"], ["heart", "2", "1", "1"]]


def test_several_coco_files_must_be_named(tmp_path: Path) -> None:
    path, _, _ = _coco(tmp_path / "coco")
    (path.parent / "instances_val.json").write_text(path.read_text())
    with pytest.raises(MedsslInputError, match="several COCO annotation files, name one: instances.json, "
                                               "instances_val.json"):
        find_coco_annotations(tmp_path / "coco")


def test_masks_folder_ignore_fraction(tmp_path: Path) -> None:
    root = tmp_path / "m"
    mask = np.zeros((4, 5), np.uint8)
    mask[0, :2] = 1
    mask[3, 4] = 255
    write_png(root / "images" / "a.png", np.zeros((4, 5), np.uint8))
    write_png(root / "masks" / "a.png", mask)
    write_png(root / "images" / "b.png", np.zeros((4, 5), np.uint8))
    write_png(root / "masks" / "b.png", np.ones((4, 5), np.uint8))
    report = inspect_path(root)
    text = report.format()
    assert report.problems == []
    assert "mask values:  0: 17 (42.50%), 1: 22 (55.00%), 255: 1 (2.50%)" in text
    assert "ignore (255): 2.5000% of mask pixels, in 1 masks (left out by losses and metrics)" in text
    write_png(root / "masks" / "b.png", np.ones((3, 5), np.uint8))
    assert inspect_path(root).problems == [f"{root / 'masks' / 'b.png'}: mask shape (3, 5) differs from its "
                                           "image's (4, 5)"]


# -- the real sets -------------------------------------------------------------------------------


def _rows(text: str) -> list[list[str]]:
    return [line.split() for line in text.splitlines() if line.startswith("  ")]


def test_inspect_real_imagefolders() -> None:
    brain = inspect_path(DATA / "brain_mri_cls")
    assert brain.problems == []
    assert _rows(brain.format())[-1] == ["total", "3195", "684"]
    ct = _rows(inspect_path(DATA / "chest_ct_cls").format())
    assert ct == [["class", "train", "val"], ["covid", "261", "50"], ["noncovid", "267", "68"],
                  ["total", "528", "118"]]


def test_inspect_real_coco_sets() -> None:
    br35h = inspect_path(DATA / "br35h").format()
    assert ["tumor", "1", "564", "500"] in _rows(br35h)
    assert "segmentations: RLE (compressed) 564" in br35h
    cxr = _rows(inspect_path(DATA / "cxr_structures").format())
    assert ["Left", "Lung", "7", "99", "99"] in cxr and ["Right", "Lung", "12", "100", "99"] in cxr


def test_inspect_real_masks_sample(tmp_path: Path) -> None:
    """Three real cxr_lungs pairs (linked, not copied), one of them with an ignore region."""
    from medssl.data.io import read_image

    masks = sorted((DATA / "cxr_lungs" / "masks").iterdir())
    with_ignore = next(m for m in masks if 255 in np.unique(read_image(m).array))
    chosen = [masks[0], masks[1], with_ignore]
    for sub in ("images", "masks"):
        (tmp_path / sub).mkdir()
    total = {0: 0, 1: 0, 255: 0}
    for m in chosen:
        os.symlink(m, tmp_path / "masks" / m.name)
        os.symlink(DATA / "cxr_lungs" / "images" / f"{m.stem}.jpg", tmp_path / "images" / f"{m.stem}.jpg")
        values, counts = np.unique(read_image(m).array, return_counts=True)
        for v, c in zip(values, counts, strict=True):
            total[int(v)] += int(c)
    text = inspect_path(tmp_path).format()
    assert f"ignore (255): {total[255] / sum(total.values()):.4%} of mask pixels, in 1 masks" in text


def test_real_loaders_read_the_layouts_unchanged() -> None:
    data = open_classification_data(ClassifyDataConfig(spec=f"imagefolder:{DATA / 'chest_ct_cls'}",
                                                       val_split="val"), seed=0)
    assert data.classes == ["covid", "noncovid"] and len(data.train) == 528 and len(data.val) == 118
    detect = open_detect_data(DetectDataConfig(root=DATA / "br35h"))
    assert len(detect.train.indices) == 500 and detect.category_names == ["tumor"]
    sample = detect.train.dataset[0]
    assert sample.file_name == "y0.jpg" and sample.masks is not None and sample.masks.shape[1:] == sample.image.shape
    assert len(list_pretrain_images(DATA / "chest_ct_cls" / "val", "all")) == 118
    assert len(list_images([DATA / "chest_ct_cls" / "val"])) == 118
