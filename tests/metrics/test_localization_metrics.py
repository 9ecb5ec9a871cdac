"""Localization metrics: NSD on known geometry and against a brute-force reference, precision / recall, empties."""

from __future__ import annotations

import numpy as np
import pytest

from medssl.errors import MedsslInputError
from medssl.metrics.localization import localization_metrics, normalized_surface_dice, precision, recall


def _squares(k: int) -> tuple[np.ndarray, np.ndarray]:
    """Two 6x6 squares in a 12x12 image, the second shifted by ``k`` columns."""
    p = np.zeros((12, 12), bool)
    g = np.zeros((12, 12), bool)
    p[2:8, 2:8] = True
    g[2:8, 2 + k:8 + k] = True
    return p, g


def _brute_nsd(p: np.ndarray, g: np.ndarray, tol: float, spacing: tuple[float, ...]) -> float:
    """NSD from first principles: surface = foreground voxel with a face neighbour outside (or off the array)."""

    def surface_points(m: np.ndarray) -> np.ndarray:
        padded = np.pad(m, 1)
        pts = []
        for idx in np.argwhere(m):
            neighbours = []
            for axis in range(m.ndim):
                for step in (-1, 1):
                    nb = idx + 1
                    nb[axis] += step
                    neighbours.append(padded[tuple(nb)])
            if not all(neighbours):
                pts.append(idx)
        return np.asarray(pts, dtype=float) * np.asarray(spacing)

    sp, sg = surface_points(p), surface_points(g)
    d = np.sqrt(((sp[:, None, :] - sg[None, :, :]) ** 2).sum(-1))
    within = (d.min(1) <= tol).sum() + (d.min(0) <= tol).sum()
    return within / (len(sp) + len(sg))


@pytest.mark.parametrize(("k", "tol", "expected"), [
    (1, 0.5, 20 / 40),  # 10 of 20 ring pixels of each square lie on the other ring, the rest 1 pixel away
    (1, 1.0, 1.0),
    (2, 0.5, 16 / 40),  # distances per ring: 8 at 0, 4 at 1, 8 at 2 (worked out by hand)
    (2, 1.0, 24 / 40),
    (2, 2.0, 1.0),
    (0, 0.0, 1.0),
])
def test_nsd_of_shifted_squares_by_hand(k: int, tol: float, expected: float) -> None:
    p, g = _squares(k)
    assert normalized_surface_dice(p, g, tol) == pytest.approx(expected)
    assert normalized_surface_dice(g, p, tol) == pytest.approx(expected)


def test_nsd_tolerance_is_in_mm_with_spacing() -> None:
    p, g = _squares(1)  # shifted by one column of 2 mm
    # within 1 mm: the 10 shared ring pixels, plus the right-edge pixels in rows 3 and 6, which lie one
    # 1-mm row from the other square's top / bottom edge: 12 of 20 per ring
    assert normalized_surface_dice(p, g, 1.0, spacing=(1.0, 2.0)) == pytest.approx(24 / 40)
    assert normalized_surface_dice(p, g, 2.0, spacing=(1.0, 2.0)) == pytest.approx(1.0)
    assert normalized_surface_dice(p, g, 1.0, spacing=(2.0, 1.0)) == pytest.approx(1.0)  # rows are 2 mm


def test_nsd_matches_brute_force_on_random_3d_blobs() -> None:
    rng = np.random.default_rng(3)
    from scipy import ndimage

    for trial in range(3):
        p = ndimage.binary_opening(rng.random((9, 8, 7)) > 0.45)
        g = ndimage.binary_opening(rng.random((9, 8, 7)) > 0.45)
        p[0, 0, 0] = g[8, 7, 6] = True  # never empty
        spacing = (1.0, 1.5, 2.5)
        for tol in (0.0, 1.2, 2.6):
            assert normalized_surface_dice(p, g, tol, spacing) == pytest.approx(_brute_nsd(p, g, tol, spacing)), trial


@pytest.mark.parametrize("k", [0, 1, 2, 3])
def test_dice_precision_recall_of_shifted_squares(k: int) -> None:
    p, g = _squares(k)
    overlap = 6 * (6 - k)
    out = localization_metrics(p, g, tolerance=1.0)
    assert out["dice"] == pytest.approx(2 * overlap / (p.sum() + g.sum()))
    assert out["precision"] == pytest.approx(overlap / p.sum())
    assert out["recall"] == pytest.approx(overlap / g.sum())
    assert out["pred_voxels"] == 36 and out["gt_voxels"] == int(g.sum())


def test_precision_and_recall_are_not_symmetric() -> None:
    gt = np.zeros((10, 10), bool)
    gt[3:5, 3:5] = True  # 4 pixels
    roi = np.zeros((10, 10), bool)
    roi[2:7, 2:7] = True  # a box of 25 pixels holding the target
    assert precision(roi, gt) == pytest.approx(4 / 25)
    assert recall(roi, gt) == 1.0
    assert precision(gt, roi) == 1.0 and recall(gt, roi) == pytest.approx(4 / 25)


def test_empty_policy() -> None:
    empty = np.zeros((5, 5), bool)
    full = np.zeros((5, 5), bool)
    full[1:3, 1:3] = True
    both = localization_metrics(empty, empty)
    assert [both[k] for k in ("dice", "nsd", "precision", "recall")] == [1.0] * 4
    assert both["empty_pred"] and both["empty_gt"]
    for pred, gt in ((empty, full), (full, empty)):
        one = localization_metrics(pred, gt)
        assert [one[k] for k in ("dice", "nsd", "precision", "recall")] == [0.0] * 4
        assert one["empty_pred"] == (not pred.any()) and one["empty_gt"] == (not gt.any())


def test_bad_inputs() -> None:
    with pytest.raises(MedsslInputError, match="differs from ground-truth shape"):
        localization_metrics(np.ones((3, 3)), np.ones((3, 4)))
    with pytest.raises(MedsslInputError, match="tolerance"):
        normalized_surface_dice(np.ones((3, 3)), np.ones((3, 3)), -1.0)
