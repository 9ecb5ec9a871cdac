"""Localization quality of a ROI product (coarse mask, refined mask, boxes) against a ground-truth mask.

The reference localization table scores each product with Dice, normalised surface Dice (NSD), precision
(the reference calls it "coverage": the share of the ROI that lies on the target) and recall (the share
of the target inside the ROI).

* ``precision = |P∩G| / |P|``, ``recall = |P∩G| / |G|``, ``dice = 2|P∩G| / (|P|+|G|)``.
* ``nsd``: surfaces as in :mod:`medssl.metrics.segmentation` (mask minus its face-connected erosion,
  array border counts as background). With ``S_P``, ``S_G`` the surface voxels and ``d`` the exact
  Euclidean distance (voxels, or mm with a voxel spacing) to the other mask's nearest surface voxel::

      nsd = (#{p in S_P: d(p, S_G) <= tol} + #{g in S_G: d(g, S_P) <= tol}) / (|S_P| + |S_G|)

  i.e. the fraction of both surfaces within ``tol`` of the other one. Every surface voxel counts once
  (no per-voxel surface area weights).

Empty policy (the same for every score here): both masks empty → 1.0 (nothing to find, nothing
claimed); exactly one mask empty → 0.0 (an empty ROI found nothing, a ROI on an empty target is all
false positive). :func:`localization_metrics` also reports ``empty_pred`` / ``empty_gt`` so such cases can
be filtered.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from medssl.errors import MedsslInputError
from medssl.metrics.segmentation import dice, directed_surface_distances
from medssl.tensors import to_numpy

#: Score keys of :func:`localization_metrics`, in report order.
LOCALIZATION_METRIC_KEYS: tuple[str, ...] = ("dice", "nsd", "precision", "recall")

__all__ = ["LOCALIZATION_METRIC_KEYS", "localization_metrics", "normalized_surface_dice", "precision", "recall"]


def _pair(pred: Any, gt: Any) -> tuple[np.ndarray, np.ndarray]:
    p = np.atleast_1d(to_numpy(pred)).astype(bool)
    g = np.atleast_1d(to_numpy(gt)).astype(bool)
    if p.shape != g.shape:
        raise MedsslInputError("localization metrics", f"prediction shape {p.shape} differs from ground-truth "
                                                       f"shape {g.shape}")
    return p, g


def _share(inter: int, den: int, other_empty: bool) -> float:
    """``inter / den``; an empty denominator set scores 1.0 if the other mask is empty too, else 0.0."""
    if den == 0:
        return 1.0 if other_empty else 0.0
    return inter / den


def precision(pred: Any, gt: Any) -> float:
    """``|P∩G| / |P|`` of two binary masks (H, W[, D]) of one shape (nonzero = inside); empty policy above."""
    p, g = _pair(pred, gt)
    return _share(int(np.count_nonzero(p & g)), int(np.count_nonzero(p)), not g.any())


def recall(pred: Any, gt: Any) -> float:
    """``|P∩G| / |G|`` of two binary masks (H, W[, D]) of one shape (nonzero = inside); empty policy above."""
    p, g = _pair(pred, gt)
    return _share(int(np.count_nonzero(p & g)), int(np.count_nonzero(g)), not p.any())


def normalized_surface_dice(pred: Any, gt: Any, tolerance: float, spacing: Sequence[float] | None = None) -> float:
    """Fraction of both surfaces lying within ``tolerance`` of the other surface (see the module docstring).

    Args:
        pred, gt: binary masks (H, W[, D]) of one shape; nonzero = inside.
        tolerance: largest accepted distance, in mm with ``spacing``, else in voxels (>= 0).
        spacing: voxel size (mm) per axis; ``None`` = 1 voxel.

    Returns:
        NSD in [0, 1]; both empty → 1.0, exactly one empty → 0.0.
    """
    if not tolerance >= 0:
        raise MedsslInputError("tolerance", f"must be >= 0, got {tolerance}")
    p, g = _pair(pred, gt)
    has_p, has_g = bool(p.any()), bool(g.any())
    if not (has_p and has_g):
        return 1.0 if has_p == has_g else 0.0
    d_pg, d_gp = directed_surface_distances(p, g, spacing)
    within = int(np.count_nonzero(d_pg <= tolerance)) + int(np.count_nonzero(d_gp <= tolerance))
    return within / (d_pg.size + d_gp.size)


def localization_metrics(pred: Any, gt: Any, tolerance: float = 2.0,
                         spacing: Sequence[float] | None = None) -> dict[str, Any]:
    """Dice, NSD, precision and recall of one ROI product against a ground-truth mask.

    Args:
        pred: the product (coarse mask, refined mask or ROI box map), (H, W[, D]), nonzero = inside.
        gt: ground-truth mask of the same shape.
        tolerance: NSD tolerance (mm with ``spacing``, voxels without).
        spacing: voxel size in mm per axis, or None.

    Returns:
        ``dice``, ``nsd``, ``precision``, ``recall`` (floats in [0, 1], empty policy in the module
        docstring), ``empty_pred``, ``empty_gt`` (bool), ``pred_voxels``, ``gt_voxels`` (int).
    """
    p, g = _pair(pred, gt)
    n_p, n_g = int(np.count_nonzero(p)), int(np.count_nonzero(g))
    return {
        "dice": 1.0 if n_p == n_g == 0 else (0.0 if n_p == 0 or n_g == 0 else dice(p, g)),
        "nsd": normalized_surface_dice(p, g, tolerance, spacing),
        "precision": precision(p, g),
        "recall": recall(p, g),
        "empty_pred": n_p == 0,
        "empty_gt": n_g == 0,
        "pred_voxels": n_p,
        "gt_voxels": n_g,
    }
