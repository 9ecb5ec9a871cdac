"""ROI sources without a vision-language model: structures from COCO categories, files with ground-truth
boxes (oracle ROI), ct-lung-fields (classical) and the shuffled control. Synthetic cases with exact
expectations, small real samples from ``../shared/data`` and ``medssl localize run`` end to end."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from medssl.cli import main
from medssl.data.io import read_image, write_png
from medssl.errors import MedsslInputError
from medssl.localize import RoiCache, create_localizer
from medssl.localize.cache import image_content_hash
from medssl.localize.ct_lungs import CtLungFieldsLocalizer
from medssl.localize.shuffled import carry_roi, derangement, random_boxes
from medssl.localize.structures import SentenceEncoder, StructureScore, select_structures
from shared_paths import SHARED

DATA = SHARED / "data"
LUNGS = "A chest X-ray highlighting both left and right lungs"


def _rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def _box(mask: np.ndarray) -> list[float]:
    rows, cols = np.nonzero(mask)
    return [float(cols.min()), float(rows.min()), float(cols.max() - cols.min() + 1), float(rows.max() - rows.min() + 1)]


def _chest_coco(root: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """images/x.png 30x40 with overlapping 'Left Lung' (RLE), 'Right Lung' (polygon) and 'Cardiomediastinum' masks."""
    masks = {name: np.zeros((30, 40), bool) for name in ("Left Lung", "Right Lung", "Cardiomediastinum")}
    masks["Right Lung"][5:25, 3:15] = True
    masks["Left Lung"][6:24, 24:37] = True
    masks["Cardiomediastinum"][10:28, 12:27] = True  # overlaps both lungs
    write_png(root / "images" / "x.png", np.full((30, 40), 100, np.uint8))
    cats = [{"id": 7, "name": "Left Lung"}, {"id": 12, "name": "Right Lung"}, {"id": 2, "name": "Cardiomediastinum"}]
    anns = [{"id": 1, "image_id": 1, "category_id": 7, "bbox": _box(masks["Left Lung"]),
             "segmentation": _rle(masks["Left Lung"])},
            {"id": 2, "image_id": 1, "category_id": 12, "bbox": _box(masks["Right Lung"]),
             "segmentation": [[3, 5, 15, 5, 15, 25, 3, 25]]},
            {"id": 3, "image_id": 1, "category_id": 2, "bbox": _box(masks["Cardiomediastinum"]),
             "segmentation": _rle(masks["Cardiomediastinum"])}]
    path = root / "annotations" / "instances.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"images": [{"id": 1, "file_name": "x.png", "height": 30, "width": 40}],
                                "categories": cats, "annotations": anns}))
    return path, masks


# -- structures ----------------------------------------------------------------------------------


def test_prompt_naming_several_structures_selects_each() -> None:
    scores = [StructureScore(12, "Right Lung", 0.67, 0.95), StructureScore(7, "Left Lung", 0.69, 0.60),
              StructureScore(1, "Airways", 0.45, 0.66)]
    chosen = select_structures(LUNGS, scores, threshold=0.4, margin=0.15, top_k=None)
    assert [s.name for s in chosen] == ["Right Lung", "Left Lung"]  # Left Lung named word for word
    chosen = select_structures("the right lung", scores, threshold=0.4, margin=0.15, top_k=None)
    assert [s.name for s in chosen] == ["Right Lung"]


def test_structures_from_coco_is_the_exact_union_of_two_categories(tmp_path: Path, encoder: SentenceEncoder) -> None:
    path, masks = _chest_coco(tmp_path / "cxr")
    image = read_image(tmp_path / "cxr" / "images" / "x.png")
    result = create_localizer("structures").localize(image, LUNGS, {"coco": path})
    assert [m["name"] for m in result.provenance["matched"]] == ["Right Lung", "Left Lung"]
    np.testing.assert_array_equal(result.coarse_mask, masks["Left Lung"] | masks["Right Lung"])
    assert result.boxes == [((5, 25), (3, 15)), ((6, 24), (24, 37))]
    assert result.provenance["structures_source"] == str(path)


def test_structures_on_real_cxr_structures_selects_both_lungs(encoder: SentenceEncoder) -> None:
    from medssl.localize.run import backend_context

    root = DATA / "cxr_structures"
    coco = json.loads((root / "annotations" / "instances.json").read_text())
    info = coco["images"][0]
    image_path = root / "images" / info["file_name"]
    context = backend_context("structures", image_path)
    assert context == {"coco": root / "annotations" / "instances.json"}
    result = create_localizer("structures").localize(read_image(image_path), LUNGS, context)
    assert {m["name"] for m in result.provenance["matched"]} == {"Left Lung", "Right Lung"}
    expected = np.zeros((info["height"], info["width"]), bool)
    for ann in coco["annotations"]:
        if ann["image_id"] == info["id"] and ann["category_id"] in (7, 12):
            rle = {**ann["segmentation"], "counts": ann["segmentation"]["counts"].encode()}
            expected |= mask_utils.decode(rle) != 0
    assert expected.sum() > 1000
    np.testing.assert_array_equal(result.coarse_mask, expected)


# -- files: ground-truth boxes -------------------------------------------------------------------


def test_box_list_gives_exact_oracle_boxes(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    for name in ("train/a/x.png", "train/a/y.png", "train/b/z.png"):
        write_png(root / name, np.zeros((20, 30), np.uint8))
    (root / "boxes.json").write_text(json.dumps({"train/a/x.png": [[2.5, 3.0, 10.2, 8.0], [20, 0, 30, 20]],
                                                 "train/a/y.png": []}))
    loc = create_localizer("files", boxes=root / "boxes.json")
    result = loc.localize(read_image(root / "train/a/x.png"), "tumour")
    assert result.boxes == [((3, 8), (2, 11)), ((0, 20), (20, 30))]
    expected = np.zeros((20, 30), bool)
    expected[3:8, 2:11] = True
    expected[:, 20:] = True
    np.testing.assert_array_equal(result.roi, expected)
    assert result.provenance["roi_source"] == "oracle ROI" and result.provenance["listed"] is True
    assert loc.params()["kind"] == "box list" and loc.params()["boxes_root"] == str(root.resolve())
    empty = loc.localize(read_image(root / "train/a/y.png"), "tumour")
    assert not empty.roi.any() and empty.provenance["listed"] is True
    unlisted = loc.localize(read_image(root / "train/b/z.png"), "tumour")
    assert not unlisted.roi.any() and unlisted.provenance["listed"] is False
    strict = create_localizer("files", boxes=root / "boxes.json", missing="error")
    with pytest.raises(MedsslInputError, match=f"^{root / 'train/b/z.png'}: not listed in the box file"):
        strict.localize(read_image(root / "train/b/z.png"), "tumour")


def test_bad_box_files_are_one_line_errors(tmp_path: Path) -> None:
    bad = tmp_path / "boxes.json"
    bad.write_text(json.dumps({"a.png": [[5, 1, 2, 3]]}))
    with pytest.raises(MedsslInputError, match=r"^.*boxes\.json: a\.png: box \[5, 1, 2, 3\] is empty or inverted"):
        create_localizer("files", boxes=bad)
    bad.write_text(json.dumps({"a.png": [[1, 2, 3]]}))
    with pytest.raises(MedsslInputError, match=r"is not \[x0, y0, x1, y1\]"):
        create_localizer("files", boxes=bad)
    with pytest.raises(MedsslInputError, match="give either root="):
        create_localizer("files")


def test_coco_boxes_of_chosen_categories(tmp_path: Path) -> None:
    path, masks = _chest_coco(tmp_path / "cxr")
    image = read_image(tmp_path / "cxr" / "images" / "x.png")
    result = create_localizer("files", boxes=path, categories=["Right Lung"]).localize(image, "lung")
    assert result.boxes == [((5, 25), (3, 15))]
    np.testing.assert_array_equal(result.roi, masks["Right Lung"])
    everything = create_localizer("files", boxes=path).localize(image, "lung")
    assert everything.boxes == [((6, 24), (24, 37)), ((5, 25), (3, 15)), ((10, 28), (12, 27))]
    with pytest.raises(MedsslInputError, match="no categories named Heart"):
        create_localizer("files", boxes=path, categories=["Heart"]).localize(image, "lung")


def test_real_brain_boxes_json() -> None:
    loc = create_localizer("files", boxes=DATA / "brain_mri_cls" / "boxes.json")
    result = loc.localize(read_image(DATA / "brain_mri_cls/train/glioma/glioma_1841.jpg"), "tumour")
    assert result.boxes == [((68, 78), (107, 127))]  # [107.5, 68.2, 126.7, 77.8] -> every pixel touched


# -- ct-lung-fields ------------------------------------------------------------------------------


def _ellipse(shape: tuple[int, int], centre: tuple[float, float], radii: tuple[float, float]) -> np.ndarray:
    rows, cols = np.indices(shape)
    return ((rows - centre[0]) / radii[0]) ** 2 + ((cols - centre[1]) / radii[1]) ** 2 <= 1.0


def _bbox(mask: np.ndarray) -> tuple[tuple[int, int], tuple[int, int]]:
    rows, cols = np.nonzero(mask)
    return ((int(rows.min()), int(rows.max()) + 1), (int(cols.min()), int(cols.max()) + 1))


def test_ct_lung_fields_on_a_phantom() -> None:
    shape = (96, 128)
    body = _ellipse(shape, (48, 64), (40, 58))
    right, left = _ellipse(shape, (46, 38), (26, 17)), _ellipse(shape, (46, 90), (26, 17))
    trachea = _ellipse(shape, (30, 64), (3, 3))
    image = np.where(body, 200.0, 0.0)
    image[right | left | trachea] = 30.0
    image[_ellipse(shape, (46, 38), (2, 2))] = 190.0  # a vessel inside the right lung
    from medssl.data.io import ImageData

    result = CtLungFieldsLocalizer().localize(ImageData(array=image, affine=np.eye(4), spacing=(1.0, 1.0),
                                                        source="", meta={}), "lungs")
    assert len(result.boxes) == 2
    for got, want in zip(sorted(result.boxes), sorted([_bbox(right), _bbox(left)]), strict=True):
        assert all(abs(g - w) <= 1 for ga, wa in zip(got, want, strict=True) for g, w in zip(ga, wa, strict=True))
    assert result.provenance["roi_source"] == "classical"
    assert result.provenance["params"] == {"threshold": None, "min_fraction": 0.01, "max_components": 2,
                                           "expand_ratio": 1.0, "output": "boxes", "percentiles": [1.0, 99.0]}
    mask = CtLungFieldsLocalizer(output="mask").localize(ImageData(array=image, affine=np.eye(4),
                                                                   spacing=(1.0, 1.0), source="", meta={}), "lungs")
    assert not mask.roi[trachea].any() and mask.roi[_ellipse(shape, (46, 38), (2, 2))].all()  # vessel filled


def test_ct_lung_fields_rejects_bad_parameters_and_volumes() -> None:
    with pytest.raises(MedsslInputError, match="output: must be 'boxes' or 'mask'"):
        CtLungFieldsLocalizer(output="outline")
    from medssl.data.io import ImageData

    volume = ImageData(array=np.zeros((4, 4, 4)), affine=np.eye(4), spacing=(1.0, 1.0, 1.0), source="v.nii.gz",
                       meta={})
    with pytest.raises(MedsslInputError, match="v.nii.gz: ct-lung-fields works on 2D slices"):
        CtLungFieldsLocalizer().localize(volume, "lungs")


# -- shuffled ------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [2, 3, 5, 9])
def test_derangement_has_no_fixed_point_and_is_fixed_by_the_seed(n: int) -> None:
    perm = derangement(n, seed=4)
    assert sorted(perm.tolist()) == list(range(n)) and not np.any(perm == np.arange(n))
    np.testing.assert_array_equal(perm, derangement(n, seed=4))
    with pytest.raises(MedsslInputError, match="at least two images"):
        derangement(1, seed=0)


def test_carry_roi_scales_indices() -> None:
    roi = np.zeros((4, 4), bool)
    roi[0:2, 2:4] = True
    np.testing.assert_array_equal(carry_roi(roi, (4, 4)), roi)
    big = carry_roi(roi, (8, 8))
    assert big.sum() == 16 and big[0:4, 4:8].all()


def test_random_boxes_keep_their_sizes_and_do_not_overlap() -> None:
    boxes = [((0, 5), (0, 7)), ((10, 13), (10, 12))]
    moved = random_boxes(boxes, (30, 40), np.random.default_rng(0))
    assert [tuple(hi - lo for lo, hi in b) for b in moved] == [(5, 7), (3, 2)]
    assert all(0 <= lo < hi <= n for b in moved for (lo, hi), n in zip(b, (30, 40), strict=True))
    a, b = moved
    assert not all(x[0] < y[1] and y[0] < x[1] for x, y in zip(a, b, strict=True))


def _boxes_dataset(root: Path) -> Path:
    """Five 24x32 images, each with one ground-truth box of a different size."""
    table = {}
    for k in range(5):
        write_png(root / "imgs" / f"im{k}.png", np.full((24, 32), 10 * k, np.uint8))
        table[f"imgs/im{k}.png"] = [[k, k, k + 3 + k, k + 2 + 2 * k]]
    (root / "boxes.json").write_text(json.dumps(table))
    return root


def test_shuffled_derangement_of_a_cache_preserves_each_roi_exactly(tmp_path: Path) -> None:
    root = _boxes_dataset(tmp_path)
    source = RoiCache(root / "cache")
    oracle = create_localizer("files", boxes=root / "boxes.json")
    images = [read_image(root / "imgs" / f"im{k}.png") for k in range(5)]
    own = [source.get_or_compute(im, "tumour", oracle).roi for im in images]
    loc = create_localizer("shuffled", source=root / "cache", seed=7)
    perm = derangement(5, 7)
    given = [loc.localize(im, "tumour") for im in images]
    for k, result in enumerate(given):
        np.testing.assert_array_equal(result.roi, own[perm[k]])
        assert result.provenance["partner"] == str(root / "imgs" / f"im{perm[k]}.png")
        assert result.provenance["roi_source"] == "shuffled control"
        assert not np.array_equal(result.roi, own[k])
    assert sorted(int(r.roi.sum()) for r in given) == sorted(int(r.sum()) for r in own)
    params = loc.params()
    assert (params["seed"], params["mode"], params["source_kind"]) == (7, "derangement", "cache")
    other = create_localizer("shuffled", source=root / "cache", seed=8).params()
    assert other["source_fingerprint"] == params["source_fingerprint"] and other["seed"] == 8


def test_shuffled_random_box_keeps_the_own_area(tmp_path: Path) -> None:
    root = _boxes_dataset(tmp_path)
    loc = create_localizer("shuffled", data=root / "imgs", source_backend="files",
                           source_params={"boxes": str(root / "boxes.json"), "boxes_root": str(root)},
                           mode="random-box", seed=1)
    for k in range(5):
        image = read_image(root / "imgs" / f"im{k}.png")
        result = loc.localize(image, "tumour")
        assert int(result.roi.sum()) == (3 + k) * (2 + 2 * k)
        assert [tuple(hi - lo for lo, hi in b) for b in result.boxes] == [(2 + 2 * k, 3 + k)]
        np.testing.assert_array_equal(loc.localize(image, "tumour").roi, result.roi)  # fixed by seed + image
    assert loc.params()["source_params"]["kind"] == "box list"


def test_shuffled_image_missing_from_the_source_is_an_error(tmp_path: Path) -> None:
    root = _boxes_dataset(tmp_path)
    oracle = create_localizer("files", boxes=root / "boxes.json")
    cache = RoiCache(root / "cache")
    for k in range(2):
        cache.get_or_compute(read_image(root / "imgs" / f"im{k}.png"), "tumour", oracle)
    loc = create_localizer("shuffled", source=root / "cache")
    stranger = read_image(root / "imgs" / "im3.png")
    assert image_content_hash(stranger)
    with pytest.raises(MedsslInputError, match="im3.png: has no ROI in the source cache"):
        loc.localize(stranger, "tumour")


# -- medssl localize run on small real samples ---------------------------------------------------


def _run(argv: list[str]) -> int:
    try:
        main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def test_cli_real_samples_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture, encoder: SentenceEncoder) -> None:
    cts = sorted((DATA / "chest_ct_cls" / "val" / "covid").iterdir())[:3]
    argv = ["localize", "run", "--prompt", "A chest CT highlighting the lungs", "--cache", str(tmp_path / "ct"),
            "--backend", "ct-lung-fields", "--preview", "1", "--quiet"]
    assert _run([*argv, *(a for f in cts for a in ("--data", str(f)))]) == 0
    assert "Localized 3 of 3 images" in capsys.readouterr().out
    entries = RoiCache(tmp_path / "ct").valid_entries()
    assert len(entries) == 3 and all(e["provenance"]["roi_source"] == "classical" for e in entries)
    assert all(0.2 < e["roi_fraction"] < 1.0 for e in entries)
    assert json.loads((tmp_path / "ct" / "manifest.json").read_text())["backends"] == {"ct-lung-fields (classical)": 3}

    brains = [DATA / "brain_mri_cls/val/glioma" / n for n in sorted(os.listdir(DATA / "brain_mri_cls/val/glioma"))[:3]]
    argv = ["localize", "run", "--prompt", "A brain MRI highlighting the tumour", "--cache", str(tmp_path / "oracle"),
            "--backend", "files", "--param", f"boxes={DATA / 'brain_mri_cls' / 'boxes.json'}", "--param",
            "missing=error", "--quiet"]
    assert _run([*argv, *(a for f in brains for a in ("--data", str(f)))]) == 0
    oracle = RoiCache(tmp_path / "oracle").valid_entries()
    assert len(oracle) == 3 and all(e["provenance"]["roi_source"] == "oracle ROI" and e["roi_voxels"] > 0
                                    for e in oracle)
    assert json.loads((tmp_path / "oracle" / "manifest.json").read_text())["backends"] == {"files (oracle ROI)": 3}

    argv = ["localize", "run", "--prompt", "A brain MRI highlighting the tumour", "--cache", str(tmp_path / "shuf"),
            "--backend", "shuffled", "--param", f"source={tmp_path / 'oracle'}", "--param", "seed=2", "--quiet"]
    assert _run([*argv, *(a for f in brains for a in ("--data", str(f)))]) == 0
    shuffled = RoiCache(tmp_path / "shuf").valid_entries()
    assert sorted(e["roi_voxels"] for e in shuffled) == sorted(e["roi_voxels"] for e in oracle)
    assert all(e["provenance"]["partner"] != e["image_source"] for e in shuffled)

    cxr = DATA / "cxr_structures" / "images" / sorted(os.listdir(DATA / "cxr_structures" / "images"))[0]
    argv = ["localize", "run", "--prompt", LUNGS, "--cache", str(tmp_path / "cxr"), "--data", str(cxr), "--quiet"]
    assert _run(argv) == 0
    (entry,) = RoiCache(tmp_path / "cxr").valid_entries()
    assert {m["name"] for m in entry["provenance"]["matched"]} == {"Left Lung", "Right Lung"}
    assert entry["key_parts"]["context"]["coco"]["file_sha256"]
