"""Segmentation metrics: agreement with medpy and with hand-computed geometry."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from medpy.metric import binary as medpy_binary
from scipy import ndimage

from medssl.errors import MedsslInputError
from medssl.metrics import (
    asd,
    assd,
    dice,
    directed_surface_distances,
    hd95,
    jaccard,
    segmentation_metrics,
    surface,
)

DISTANCE_KEYS = ("hd95_vox", "asd_vox", "assd_vox", "hd95_mm", "asd_mm", "assd_mm")


def _blob(rng: np.random.Generator, shape: tuple[int, ...], sigma: float = 1.5) -> np.ndarray:
    return ndimage.gaussian_filter(rng.random(shape), sigma) > 0.5


def _cube(shape: tuple[int, ...], start: tuple[int, ...], side: int) -> np.ndarray:
    m = np.zeros(shape, dtype=bool)
    m[tuple(slice(s, s + side) for s in start)] = True
    return m


@pytest.mark.parametrize("shape", [(14, 12, 10), (13, 17, 9), (30, 26)])
def test_matches_medpy_on_random_blobs(shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(sum(shape))
    checked = 0
    for _ in range(6):
        a, b = _blob(rng, shape), _blob(rng, shape)
        if not a.any() or not b.any():
            continue
        spacing = tuple(float(s) for s in rng.uniform(0.4, 2.5, size=len(shape)))
        got = segmentation_metrics(a, b, spacing)
        expected = {
            "dice": medpy_binary.dc(a, b),
            "jaccard": medpy_binary.jc(a, b),
            "hd95_vox": medpy_binary.hd95(a, b),
            "asd_vox": medpy_binary.asd(a, b),
            "assd_vox": medpy_binary.assd(a, b),
            "hd95_mm": medpy_binary.hd95(a, b, voxelspacing=spacing),
            "asd_mm": medpy_binary.asd(a, b, voxelspacing=spacing),
            "assd_mm": medpy_binary.assd(a, b, voxelspacing=spacing),
        }
        for key, value in expected.items():
            assert got[key] == pytest.approx(value, rel=1e-12, abs=1e-12), key
        assert got["pred_voxels"] == int(a.sum()) and got["gt_voxels"] == int(b.sum())
        assert got["empty_pred"] is False and got["empty_gt"] is False
        checked += 1
    assert checked >= 4


def test_matches_medpy_for_masks_touching_the_array_border() -> None:
    # Everything outside the array is background, so a full mask has its outer shell as surface.
    full = np.ones((6, 7, 5), dtype=bool)
    inner = _cube((6, 7, 5), (2, 2, 1), 2)
    assert surface(full).sum() == 6 * 7 * 5 - 4 * 5 * 3
    got = segmentation_metrics(inner, full, (1.0, 2.0, 0.5))
    assert got["hd95_vox"] == pytest.approx(medpy_binary.hd95(inner, full))
    assert got["asd_vox"] == pytest.approx(medpy_binary.asd(inner, full))
    assert got["asd_mm"] == pytest.approx(medpy_binary.asd(inner, full, voxelspacing=(1.0, 2.0, 0.5)))


def test_surface_uses_face_connectivity() -> None:
    # A 3x3x3 cube: only the centre voxel has all 6 face neighbours inside, so 26 surface voxels.
    cube = _cube((5, 5, 5), (1, 1, 1), 3)
    s = surface(cube)
    assert s.sum() == 26 and not s[2, 2, 2]


def test_concentric_cubes_exact_overlap_and_distance() -> None:
    shape = (10, 10, 10)
    outer = _cube(shape, (1, 1, 1), 8)
    inner = _cube(shape, (3, 3, 3), 4)
    got = segmentation_metrics(inner, outer, None)
    assert got["dice"] == pytest.approx(2 * 4**3 / (4**3 + 8**3))
    assert got["jaccard"] == pytest.approx(4**3 / 8**3)
    # Every surface voxel of the inner cube is exactly 2 voxels from the nearest outer face.
    assert got["asd_vox"] == pytest.approx(2.0)
    d_in_out, d_out_in = directed_surface_distances(inner, outer)
    assert np.all(d_in_out == 2.0)
    # ASD is directed (pred -> gt): the outer cube's corners are farther from the inner surface.
    assert asd(outer, inner) > 2.0
    assert assd(inner, outer) == pytest.approx(np.concatenate([d_in_out, d_out_in]).mean())
    assert all(math.isnan(got[k]) for k in ("hd95_mm", "asd_mm", "assd_mm"))  # no spacing given


@pytest.mark.parametrize("shift", [1, 2, 3])
def test_shifted_cube_known_hausdorff(shift: int) -> None:
    side, shape = 6, (14, 10, 10)
    gt = _cube(shape, (2, 2, 2), side)
    pred = _cube(shape, (2 + shift, 2, 2), side)
    got = segmentation_metrics(pred, gt, spacing=(2.0, 0.5, 0.5))
    assert got["dice"] == pytest.approx((side - shift) / side)
    assert got["jaccard"] == pytest.approx((side - shift) / (side + shift))
    # The far faces are exactly `shift` voxels from the other cube's surface, nothing is farther, and
    # those faces hold 2 * side**2 of the 2 * (side**3 - (side - 2)**3) pooled distances (> 5 %).
    assert got["hd95_vox"] == pytest.approx(float(shift))
    assert got["hd95_mm"] == pytest.approx(2.0 * shift)  # the shift is along the 2 mm axis
    assert hd95(pred, gt) == pytest.approx(medpy_binary.hd95(pred, gt))
    assert got["asd_vox"] == pytest.approx(medpy_binary.asd(pred, gt))


def test_anisotropic_spacing_follows_the_axis() -> None:
    shape = (10, 14, 10)
    gt = _cube(shape, (2, 2, 2), 6)
    pred = _cube(shape, (2, 4, 2), 6)  # shifted by 2 along axis 1
    got = segmentation_metrics(pred, gt, spacing=(2.0, 0.5, 3.0))
    assert got["hd95_vox"] == pytest.approx(2.0)
    assert got["hd95_mm"] == pytest.approx(1.0)
    unit = segmentation_metrics(pred, gt, spacing=(1.0, 1.0, 1.0))
    assert unit["hd95_mm"] == unit["hd95_vox"] and unit["asd_mm"] == unit["asd_vox"]


def test_empty_prediction_policies() -> None:
    gt = _cube((8, 8, 8), (2, 2, 2), 4)
    empty = np.zeros_like(gt)
    ref = segmentation_metrics(empty, gt, (1.0, 1.0, 2.0))
    assert ref["empty_pred"] is True and ref["empty_gt"] is False
    assert [ref[k] for k in ("dice", "jaccard", *DISTANCE_KEYS)] == [0.0] * 8
    nan = segmentation_metrics(empty, gt, (1.0, 1.0, 2.0), empty_policy="nan")
    assert nan["dice"] == 0.0 and nan["jaccard"] == 0.0
    assert all(math.isnan(nan[k]) for k in DISTANCE_KEYS)


def test_empty_ground_truth_and_both_empty() -> None:
    pred = _cube((8, 8, 8), (2, 2, 2), 3)
    empty = np.zeros_like(pred)
    for policy in ("reference", "nan"):
        got = segmentation_metrics(pred, empty, None, empty_policy=policy)
        assert got["empty_gt"] is True and got["dice"] == 0.0 and got["jaccard"] == 0.0
        assert all(math.isnan(got[k]) for k in DISTANCE_KEYS)
    # The reference code looks at the prediction only: an empty prediction scores 0 even here.
    ref = segmentation_metrics(empty, empty, (1.0, 1.0, 1.0))
    assert ref["dice"] == 0.0 and ref["hd95_vox"] == 0.0
    nan = segmentation_metrics(empty, empty, (1.0, 1.0, 1.0), empty_policy="nan")
    assert nan["dice"] == 1.0 and nan["jaccard"] == 1.0 and nan["hd95_vox"] == 0.0 and nan["asd_mm"] == 0.0
    assert dice(empty, empty) == 1.0 and jaccard(empty, empty) == 1.0


def test_accepts_torch_and_integer_labels() -> None:
    gt = _cube((8, 8, 8), (2, 2, 2), 4).astype(np.uint8)
    pred = torch.from_numpy(_cube((8, 8, 8), (3, 2, 2), 4).astype(np.int64) * 2)  # nonzero = foreground
    got = segmentation_metrics(pred, gt)
    assert got["dice"] == pytest.approx(0.75)


def test_bad_inputs_are_user_errors() -> None:
    a = np.ones((4, 4, 4), dtype=bool)
    with pytest.raises(MedsslInputError, match="differs from ground-truth shape"):
        segmentation_metrics(a, np.ones((4, 4, 5), dtype=bool))
    with pytest.raises(MedsslInputError, match="spacing"):
        segmentation_metrics(a, a, spacing=(1.0, 1.0))
    with pytest.raises(MedsslInputError, match="spacing"):
        segmentation_metrics(a, a, spacing=(1.0, 0.0, 1.0))
    with pytest.raises(MedsslInputError, match="empty_policy"):
        segmentation_metrics(a, a, empty_policy="zero")  # type: ignore[arg-type]
    with pytest.raises(MedsslInputError, match="non-empty"):
        hd95(a, np.zeros_like(a))
