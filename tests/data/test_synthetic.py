"""Tests of the embedded synthetic datasets: layout, determinism, geometry, labels, COCO, hardness."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import itertools
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from scipy import ndimage

from medssl.cli import main as cli_main
from medssl.data.synthetic import (
    SYNTHETIC_DATASETS,
    generate_atrium3d_case,
    generate_brain3d_case,
    load_brain_atlas,
    synthesize,
)
from medssl.data.synthetic._common import class_of_case, low_frequency_field, tube_level
from medssl.data.synthetic._writer import synthesize_dataset
from medssl.errors import MedsslInputError

ATRIUM_SMALL = (48, 48, 32)


def _read(path: Path) -> np.ndarray:
    if path.name.endswith(".nii.gz"):
        return np.asanyarray(nib.load(str(path)).dataobj)
    return np.array(Image.open(path))


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _best_threshold_dice(image: np.ndarray, label: np.ndarray) -> float:
    """Exact best Dice of ``image > t`` against ``label`` over all thresholds t."""
    order = np.argsort(-image.ravel(), kind="stable")
    tp = np.cumsum(label.ravel()[order] > 0)
    k = np.arange(1, tp.size + 1)
    return float(np.max(2.0 * tp / (k + label.sum())))


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum()))


# --------------------------------------------------------------------------------------------------
# atrium3d statistics (in memory)
# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def atrium_cases() -> list[dict]:
    children = np.random.SeedSequence(2024).spawn(6)
    return [generate_atrium3d_case(np.random.default_rng(c), ATRIUM_SMALL) for c in children]


def _sid(name: str) -> int:
    return SYNTHETIC_DATASETS["atrium3d"].structures.index(name) + 1


def test_atrium3d_case_arrays(atrium_cases: list[dict]) -> None:
    for case in atrium_cases:
        image, label, st = case["image"], case["label"], case["structures"]
        assert image.shape == label.shape == st.shape == ATRIUM_SMALL
        assert image.dtype == np.float32 and label.dtype == np.uint8 and st.dtype == np.uint8
        assert abs(float(image.mean())) < 1e-3 and abs(float(image.std()) - 1.0) < 1e-3  # z-scored
        assert set(np.unique(label)) == {0, 1}
        assert np.array_equal(label > 0, np.isin(st, [_sid("left atrium"), _sid("left atrial appendage")]))
        assert st.max() <= len(SYNTHETIC_DATASETS["atrium3d"].structures)
        for name in ("left atrial appendage", "aorta", "left ventricle", "right atrium", "pulmonary artery"):
            assert (st == _sid(name)).sum() > 20, name


def test_atrium3d_foreground_fraction_is_plausible(atrium_cases: list[dict]) -> None:
    # the real preprocessed left-atrium crops have 6-10 % foreground; the phantoms' field of view is larger
    fractions = [float(c["label"].mean()) for c in atrium_cases]
    assert all(0.02 < f < 0.13 for f in fractions), fractions


def test_atrium3d_has_four_veins_attached_to_the_atrium(atrium_cases: list[dict]) -> None:
    for case in atrium_cases:
        st, label = case["structures"], case["label"] > 0
        comps, n = ndimage.label(st == _sid("pulmonary veins"), structure=np.ones((3, 3, 3)))
        assert n == 4
        grown = ndimage.binary_dilation(label, structure=np.ones((3, 3, 3)))
        for k in range(1, n + 1):
            assert (grown & (comps == k)).any(), "vein not reaching the atrium"
        # veins leave the posterior wall: their centroid lies posterior (axis 1) to the body's
        vein_y = np.argwhere(st == _sid("pulmonary veins"))[:, 1].mean()
        body_y = np.argwhere(st == _sid("left atrium"))[:, 1].mean()
        assert vein_y > body_y


def test_atrium3d_thresholding_fails(atrium_cases: list[dict]) -> None:
    """Neighbours overlap the atrium in intensity: no single threshold segments it."""
    best = [_best_threshold_dice(c["image"], c["label"]) for c in atrium_cases]
    assert max(best) < 0.8 and float(np.mean(best)) < 0.6, best
    for case in atrium_cases:
        image, label = case["image"], case["label"] > 0
        q25 = np.percentile(image[label], 25)
        # many non-atrium voxels are as bright as the atrium's lower quartile (at least half as many
        # as there are atrium voxels)
        assert (image[~label] > q25).sum() > 0.5 * label.sum()
        # and at least two bright neighbours touch or nearly touch it (within 2 voxels)
        near = ndimage.binary_dilation(label, iterations=2)
        touching = [n for n in ("aorta", "left ventricle", "right atrium", "pulmonary artery")
                    if (near & (case["structures"] == _sid(n))).any()]
        assert len(touching) >= 2, touching


def test_atrium3d_shape_varies(atrium_cases: list[dict]) -> None:
    labels = [c["label"] > 0 for c in atrium_cases]
    pairwise = [_dice(a, b) for a, b in itertools.combinations(labels, 2)]
    assert float(np.mean(pairwise)) < 0.75, pairwise
    volumes = np.array([m.sum() for m in labels], float)
    assert volumes.std() / volumes.mean() > 0.15, volumes
    kinds = {c["meta"]["appendage"] for c in atrium_cases}
    assert len(kinds) >= 2


# --------------------------------------------------------------------------------------------------
# files: determinism, layout, splits
# --------------------------------------------------------------------------------------------------
def test_atrium3d_files_deterministic_and_independent_of_n(tmp_path: Path) -> None:
    shape = (32, 32, 24)
    a = synthesize("atrium3d", tmp_path / "a", n=2, seed=5, shape=shape)
    b = synthesize("atrium3d", tmp_path / "b", n=2, seed=5, shape=shape)
    c = synthesize("atrium3d", tmp_path / "c", n=3, seed=5, shape=shape)
    d = synthesize("atrium3d", tmp_path / "d", n=2, seed=6, shape=shape)
    da, db, dc, dd = _digest(a), _digest(b), _digest(c), _digest(d)
    assert da == db
    for rel in ("images/case_0000.nii.gz", "labels/case_0001.nii.gz", "structures/case_0001.nii.gz"):
        assert da[rel] == dc[rel]           # case i does not depend on n
    assert da["images/case_0000.nii.gz"] != dd["images/case_0000.nii.gz"]
    assert da["labels/case_0000.nii.gz"] != dd["labels/case_0000.nii.gz"]
    # geometry and dtypes on disk
    spacing = [1.25 * 96 / 32, 1.25 * 96 / 32, 1.25 * 64 / 24]
    img = nib.load(str(a / "images" / "case_0000.nii.gz"))
    assert img.get_data_dtype() == np.float32 and img.shape == shape
    np.testing.assert_allclose(img.affine, np.diag([*spacing, 1.0]), atol=1e-6)
    assert nib.load(str(a / "labels" / "case_0000.nii.gz")).get_data_dtype() == np.uint8
    info = json.loads((a / "dataset.json").read_text())
    assert info["name"] == "atrium3d" and info["n"] == 2 and info["seed"] == 5 and info["shape"] == list(shape)
    np.testing.assert_allclose(info["spacing_mm"], spacing, atol=1e-5)
    assert info["label_structures"] == ["left atrium", "left atrial appendage"]
    assert "classes" not in info and not (a / "classes.csv").exists() and not (a / "annotations.json").exists()


def test_chest2d_bytes_deterministic(tmp_path: Path) -> None:
    a = synthesize("chest2d", tmp_path / "a", n=3, seed=11, shape=(64, 64))
    b = synthesize("chest2d", tmp_path / "b", n=3, seed=11, shape=(64, 64))
    c = synthesize("chest2d", tmp_path / "c", n=3, seed=12, shape=(64, 64))
    assert _digest(a) == _digest(b)
    assert _digest(a)["images/case_0000.png"] != _digest(c)["images/case_0000.png"]


def _check_layout(root: Path, name: str, n: int, shape: tuple[int, ...]) -> list[str]:
    spec = SYNTHETIC_DATASETS[name]
    ext = spec.extension
    ids = [f"case_{i:04d}" for i in range(n)]
    n_test = max(1, -(-n // 5))
    assert (root / "train.list").read_text().split() == ids[: n - n_test]
    assert (root / "test.list").read_text().split() == ids[n - n_test:]
    for sub in ("images", "labels", "structures"):
        assert sorted(p.name for p in (root / sub).iterdir()) == [f"{c}{ext}" for c in ids]
    structures = json.loads((root / "structures.json").read_text())
    assert structures == {str(i + 1): s for i, s in enumerate(spec.structures)}
    info = json.loads((root / "dataset.json").read_text())
    for key in ("name", "version", "seed", "n", "spacing_mm", "shape", "description", "structures",
                "generator_parameters"):
        assert key in info
    assert info["shape"] == list(shape) and info["structures"] == structures
    label_ids = [spec.structures.index(s) + 1 for s in spec.label_structures]
    for cid in ids:
        image = _read(root / "images" / f"{cid}{ext}")
        label = _read(root / "labels" / f"{cid}{ext}")
        st = _read(root / "structures" / f"{cid}{ext}")
        assert image.shape == label.shape == st.shape == shape
        assert label.dtype == np.uint8 and st.dtype == np.uint8
        assert st.max() <= len(spec.structures)
        assert np.array_equal(label > 0, np.isin(st, label_ids))  # label = its structures exactly
    return ids


def _check_classes(root: Path, name: str, ids: list[str]) -> dict[str, str]:
    spec = SYNTHETIC_DATASETS[name]
    with open(root / "classes.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["image", "label", "split"]
    test_ids = set((root / "test.list").read_text().split())
    classes = {}
    for (image, cls, split), cid in zip(rows[1:], ids, strict=True):
        assert image == f"images/{cid}{spec.extension}" and (root / image).is_file()
        assert cls in spec.classes
        assert split == ("test" if cid in test_ids else "train")
        classes[cid] = cls
    counts = [list(classes.values()).count(c) for c in spec.classes]
    k = len(spec.classes)
    assert all(len(ids) // k <= c <= -(-len(ids) // k) for c in counts), counts  # balanced blocks
    return classes


def _check_coco(root: Path, name: str, classes: dict[str, str], lesion_category: dict[str, set[str]]) -> None:
    coco = COCO(str(root / "annotations.json"))
    cats = {c["id"]: c["name"] for c in coco.loadCats(coco.getCatIds())}
    assert sorted(cats.values()) == sorted(SYNTHETIC_DATASETS[name].coco_categories)
    assert len(coco.getImgIds()) == len(classes)
    for img in coco.loadImgs(coco.getImgIds()):
        cid = Path(img["file_name"]).name.split(".")[0]
        label = _read(root / "labels" / Path(img["file_name"]).name) > 0
        assert (root / img["file_name"]).is_file() and (img["height"], img["width"]) == label.shape
        anns = coco.loadAnns(coco.getAnnIds(imgIds=img["id"]))
        union = np.zeros_like(label)
        for ann in anns:
            mask = mask_utils.decode(ann["segmentation"]).astype(bool)
            rows, cols = np.nonzero(mask)
            assert ann["bbox"] == [cols.min(), rows.min(), cols.max() - cols.min() + 1, rows.max() - rows.min() + 1]
            assert ann["area"] == mask.sum() and ann["iscrowd"] == 0
            assert not (union & mask).any()           # instances do not overlap
            union |= mask
            assert cats[ann["category_id"]] in lesion_category[classes[cid]]
        assert np.array_equal(union, label)           # instances partition the label
        assert bool(anns) == bool(lesion_category[classes[cid]])


def test_chest2d_layout_classes_coco_and_anatomy(tmp_path: Path) -> None:
    shape = (64, 64)
    root = synthesize("chest2d", tmp_path / "chest", n=7, seed=3, shape=shape)
    ids = _check_layout(root, "chest2d", 7, shape)
    classes = _check_classes(root, "chest2d", ids)
    _check_coco(root, "chest2d", classes,
                {"normal": set(), "pneumonia_like": {"consolidation"}, "nodule": {"nodule"}})
    spec = SYNTHETIC_DATASETS["chest2d"]
    sid = {s: i + 1 for i, s in enumerate(spec.structures)}
    for cid in ids:
        image, st = _read(root / "images" / f"{cid}.png"), _read(root / "structures" / f"{cid}.png")
        assert image.dtype == np.uint8
        cols = {s: np.argwhere(st == sid[s])[:, 1].mean() for s in ("heart", "left lung", "right lung")}
        # PA film: the subject's left (heart, left lung) on the image's right
        assert cols["heart"] > shape[1] / 2 and cols["left lung"] > cols["right lung"]
        lungs = np.isin(st, [sid["left lung"], sid["right lung"]])
        assert image[lungs].mean() < image[st == sid["heart"]].mean() - 30  # air-filled lungs are darker
        if classes[cid] == "normal":
            assert not _read(root / "labels" / f"{cid}.png").any()


@pytest.fixture(scope="module")
def brain_atlas():
    return load_brain_atlas()


def test_brain2d_layout_classes_coco(tmp_path: Path) -> None:
    shape = (64, 64)
    root = synthesize("brain2d", tmp_path / "brain2d", n=6, seed=1, shape=shape)
    ids = _check_layout(root, "brain2d", 6, shape)
    classes = _check_classes(root, "brain2d", ids)
    _check_coco(root, "brain2d", classes, {"no_tumor": set(), "glioma_like": {"glioma_like"},
                                           "meningioma_like": {"meningioma_like"},
                                           "metastasis_like": {"metastasis_like"}})


def test_brain3d_layout_and_anatomy(tmp_path: Path, brain_atlas) -> None:
    shape = (32, 32, 32)
    root = synthesize("brain3d", tmp_path / "brain3d", n=4, seed=2, shape=shape)
    ids = _check_layout(root, "brain3d", 4, shape)
    classes = _check_classes(root, "brain3d", ids)
    assert sorted(classes.values()) == sorted(SYNTHETIC_DATASETS["brain3d"].classes)
    assert not (root / "annotations.json").exists()
    img = nib.load(str(root / "images" / f"{ids[0]}.nii.gz"))
    np.testing.assert_allclose(img.affine, np.diag([7.0, 7.0, 7.0, 1.0]), atol=1e-6)
    for cid in ids:
        has_tumour = _read(root / "labels" / f"{cid}.nii.gz").any()
        assert has_tumour == (classes[cid] != "no_tumor")

    # in memory, at a finer grid: anatomy and lesion morphology by class
    sid = {s: i + 1 for i, s in enumerate(SYNTHETIC_DATASETS["brain3d"].structures)}
    rng = np.random.default_rng(7)
    for cls in ("no_tumor", "metastasis_like"):
        case = generate_brain3d_case(rng, brain_atlas, cls, shape=(48, 48, 48))
        image, st = case["image"], case["structures"]
        wm = image[st == sid["white matter"]].mean()
        assert image[st == sid["ventricles"]].mean() < 0.6 * wm      # ventricles are dark CSF
        assert image[st == sid["gray matter"]].mean() < wm            # T1: gray darker than white
        n_lesions = len(case["meta"]["lesions"])
        if cls == "metastasis_like":
            assert 2 <= n_lesions <= 5 and case["label"].any()
            _, n_comp = ndimage.label(case["label"])
            assert n_comp >= 2
        else:
            assert n_lesions == 0 and not case["label"].any()


def test_brain_case_is_deterministic(brain_atlas) -> None:
    a = generate_brain3d_case(np.random.default_rng(3), brain_atlas, "glioma_like", shape=(24, 24, 24))
    b = generate_brain3d_case(np.random.default_rng(3), brain_atlas, "glioma_like", shape=(24, 24, 24))
    assert np.array_equal(a["image"], b["image"]) and np.array_equal(a["structures"], b["structures"])


# --------------------------------------------------------------------------------------------------
# output folder rules and the command line
# --------------------------------------------------------------------------------------------------
def test_output_folder_rules(tmp_path: Path) -> None:
    out = tmp_path / "set"
    out.mkdir()
    synthesize("chest2d", out, n=2, seed=0, shape=(32, 32))          # an empty folder is fine
    (out / "keep.txt").write_text("mine")
    with pytest.raises(MedsslInputError, match="not empty"):
        synthesize("chest2d", out, n=2, seed=0, shape=(32, 32))
    assert (out / "keep.txt").read_text() == "mine"
    synthesize("chest2d", out, n=3, seed=0, shape=(32, 32), overwrite=True)
    assert not (out / "keep.txt").exists() and len(list((out / "images").iterdir())) == 3
    with pytest.raises(MedsslInputError, match="unknown synthetic dataset"):
        synthesize("liver9d", tmp_path / "x", n=2)
    with pytest.raises(MedsslInputError, match="at least 2"):
        synthesize("chest2d", tmp_path / "x", n=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set"]       # nothing else written


def test_failure_leaves_nothing_partial(tmp_path: Path) -> None:
    base = SYNTHETIC_DATASETS["chest2d"]
    real_factory = base.case_factory

    def failing_factory(shape, spacing):
        generate = real_factory(shape, spacing)
        calls = []

        def case(rng, cls):
            if len(calls) == 2:  # the third case fails, after two were written
                raise RuntimeError("generator failed")
            calls.append(cls)
            return generate(rng, cls)

        return case

    spec = dataclasses.replace(base, case_factory=failing_factory)
    with pytest.raises(RuntimeError, match="generator failed"):
        synthesize_dataset(spec, tmp_path / "out", n=4, seed=0, shape=(32, 32))
    assert list(tmp_path.iterdir()) == []


def test_cli_synth(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    cli_main(["data", "synth", "chest2d", "--out", str(out), "--n", "3", "--seed", "4"])
    assert (out / "classes.csv").is_file() and len(list((out / "labels").iterdir())) == 3
    with pytest.raises(SystemExit) as bad:
        cli_main(["data", "synth", "chest2d", "--out", str(out), "--n", "3"])
    assert bad.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(out) in err[0] and "not empty" in err[0]


# --------------------------------------------------------------------------------------------------
# building blocks
# --------------------------------------------------------------------------------------------------
def test_class_of_case_balanced_and_independent_of_n() -> None:
    classes = ("a", "b", "c")
    drawn = [class_of_case(9, i, classes) for i in range(30)]
    for block in range(10):
        assert sorted(drawn[3 * block: 3 * block + 3]) == ["a", "b", "c"]
    assert drawn != [class_of_case(10, i, classes) for i in range(30)]


def test_low_frequency_field_and_tube_geometry() -> None:
    f = low_frequency_field(np.random.default_rng(0), (40, 30), (4, 3))
    assert f.shape == (40, 30) and abs(f.mean()) < 1e-5 and abs(f.std() - 1) < 1e-4
    assert np.abs(np.diff(f, axis=0)).max() < 0.5                    # smooth at the pixel scale
    # a straight tube of radius 3 mm along axis 0 on a 1 mm grid: distance to the axis < 3
    level = tube_level((20, 15, 15), (1.0, 1.0, 1.0), np.array([[2.0, 7.0, 7.0], [17.0, 7.0, 7.0]]),
                       np.array([3.0, 3.0]))
    i, j, k = np.meshgrid(np.arange(20), np.arange(15), np.arange(15), indexing="ij")
    seg_t = np.clip((i - 2.0) / 15.0, 0, 1)
    expected = np.sqrt((i - (2 + 15 * seg_t)) ** 2 + (j - 7.0) ** 2 + (k - 7.0) ** 2) < 3.0
    assert np.array_equal(level < 0, expected)
