"""Segmentation metrics per case: Dice, Jaccard, 95 % Hausdorff distance, average surface distance.

Definitions match medpy 0.5 (``medpy.metric.binary``), the implementation behind every published
left-atrium table (UA-MT, DTC, MC-Net, CAML, CORN):

* Dice ``2|P∩G| / (|P|+|G|)``, Jaccard ``|P∩G| / |P∪G|``; both 1.0 when both masks are empty
  (medpy gives 1.0 for Jaccard but, through a numpy division, NaN for Dice there).
* Surface of a mask = the mask minus its binary erosion by the *face-connected* structuring element
  (``scipy.ndimage.generate_binary_structure(ndim, 1)``, medpy's default ``connectivity=1``), with
  everything outside the array counted as background, so a mask touching the array border has surface
  voxels on that border.
* Directed surface distances P→G: for every surface voxel of P, the Euclidean distance (voxels, or mm
  with a voxel spacing) to the nearest surface voxel of G (exact EDT).
* HD95 = the 95th percentile (linear interpolation, as ``numpy.percentile``) of the directed distances
  P→G and G→P pooled together.
* ASD = the mean of the directed distances P→G only. medpy's ``asd`` (which the literature reports
  as "ASD") is *not* symmetric; the symmetric version (mean of the pooled distances P→G and G→P,
  medpy 0.5's ``assd``) is reported as well under the name ASSD.

Distances are computed on the bounding box of ``P ∪ G`` grown by one voxel (clipped at the array
border), which gives exactly the full-array values and is much faster on large volumes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from scipy import ndimage

from medssl.errors import MedsslInputError
from medssl.tensors import to_numpy

EmptyPolicy = Literal["reference", "nan"]
EMPTY_POLICIES: tuple[str, ...] = ("reference", "nan")

#: Keys of :func:`segmentation_metrics` holding float scores, in report order.
METRIC_KEYS: tuple[str, ...] = (
    "dice",
    "jaccard",
    "hd95_vox",
    "asd_vox",
    "assd_vox",
    "hd95_mm",
    "asd_mm",
    "assd_mm",
)


def _as_bool(mask: Any) -> np.ndarray:
    """Any array-like (numpy, CPU/GPU torch tensor, nested lists) → numpy bool array (nonzero = True)."""
    return np.atleast_1d(to_numpy(mask)).astype(bool)


def _check_pair(pred: np.ndarray, gt: np.ndarray) -> None:
    if pred.shape != gt.shape:
        raise MedsslInputError(
            "segmentation metrics",
            f"prediction shape {pred.shape} differs from ground-truth shape {gt.shape}",
        )


def _check_spacing(spacing: Sequence[float] | None, ndim: int) -> tuple[float, ...] | None:
    if spacing is None:
        return None
    sp = tuple(float(s) for s in spacing)
    if len(sp) != ndim or not all(math.isfinite(s) and s > 0 for s in sp):
        raise MedsslInputError(
            "segmentation metrics", f"voxel spacing {sp} must hold {ndim} positive finite values (mm)"
        )
    return sp


def dice(pred: Any, gt: Any) -> float:
    """Dice coefficient of two binary masks of the same shape (nonzero = foreground); 1.0 if both empty."""
    p, g = _as_bool(pred), _as_bool(gt)
    _check_pair(p, g)
    denom = int(np.count_nonzero(p)) + int(np.count_nonzero(g))
    return 1.0 if denom == 0 else 2.0 * int(np.count_nonzero(p & g)) / denom


def jaccard(pred: Any, gt: Any) -> float:
    """Jaccard index (IoU) of two binary masks of the same shape; 1.0 if both empty."""
    p, g = _as_bool(pred), _as_bool(gt)
    _check_pair(p, g)
    union = int(np.count_nonzero(p | g))
    return 1.0 if union == 0 else int(np.count_nonzero(p & g)) / union


def surface(mask: Any) -> np.ndarray:
    """Surface voxels of a binary mask (any ndim): ``mask & ~erosion(mask)``, face connectivity.

    Voxels outside the array count as background (so the array border can be surface).
    """
    m = _as_bool(mask)
    footprint = ndimage.generate_binary_structure(m.ndim, 1)
    return m & ~ndimage.binary_erosion(m, structure=footprint, iterations=1, border_value=0)


def _joint_crop(p: np.ndarray, g: np.ndarray) -> tuple[slice, ...]:
    """Bounding box of ``p | g`` grown by one voxel, clipped to the array (both must be non-empty)."""
    coords = np.nonzero(p | g)
    return tuple(
        slice(max(int(c.min()) - 1, 0), min(int(c.max()) + 2, n))
        for c, n in zip(coords, p.shape, strict=True)
    )


def directed_surface_distances(
    pred: Any, gt: Any, spacing: Sequence[float] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Directed surface distances between two non-empty binary masks.

    Args:
        pred, gt: binary masks of the same shape (H, W[, D]); both must contain foreground.
        spacing: voxel size in mm per axis; ``None`` → distances in voxels.

    Returns:
        ``(d_pg, d_gp)``: 1D float64 arrays; ``d_pg`` holds, for every surface voxel of ``pred``, the
        distance to the nearest surface voxel of ``gt`` (voxels or mm), and ``d_gp`` the reverse.
    """
    p, g = _as_bool(pred), _as_bool(gt)
    _check_pair(p, g)
    sp = _check_spacing(spacing, p.ndim)
    if not p.any() or not g.any():
        raise MedsslInputError("segmentation metrics", "surface distances need two non-empty masks")
    crop = _joint_crop(p, g)
    # Cropping never moves a mask onto a new array border: each side either is the original border or
    # keeps one background voxel of margin, so erosion (and hence the surface) is unchanged.
    sp_, sg_ = surface(p[crop]), surface(g[crop])
    d_pg = ndimage.distance_transform_edt(~sg_, sampling=sp)[sp_]
    d_gp = ndimage.distance_transform_edt(~sp_, sampling=sp)[sg_]
    return np.asarray(d_pg, dtype=np.float64), np.asarray(d_gp, dtype=np.float64)


def _distance_scores(d_pg: np.ndarray, d_gp: np.ndarray) -> tuple[float, float, float]:
    """(hd95, asd, assd) from directed distances, medpy's definitions."""
    hd95 = float(np.percentile(np.concatenate([d_pg, d_gp]), 95))
    asd = float(d_pg.mean())
    assd = float(np.concatenate([d_pg, d_gp]).mean())
    return hd95, asd, assd


def hd95(pred: Any, gt: Any, spacing: Sequence[float] | None = None) -> float:
    """95 % Hausdorff distance (voxels, or mm with ``spacing``) of two non-empty binary masks (medpy)."""
    return _distance_scores(*directed_surface_distances(pred, gt, spacing))[0]


def asd(pred: Any, gt: Any, spacing: Sequence[float] | None = None) -> float:
    """Average surface distance pred→gt (voxels, or mm with ``spacing``), medpy's ``asd`` (not symmetric)."""
    return _distance_scores(*directed_surface_distances(pred, gt, spacing))[1]


def assd(pred: Any, gt: Any, spacing: Sequence[float] | None = None) -> float:
    """Average symmetric surface distance (voxels, or mm with ``spacing``), medpy's ``assd``."""
    return _distance_scores(*directed_surface_distances(pred, gt, spacing))[2]


def segmentation_metrics(
    pred: Any,
    gt: Any,
    spacing: Sequence[float] | None = None,
    empty_policy: EmptyPolicy = "reference",
) -> dict[str, Any]:
    """All per-case binary segmentation metrics, in voxels and in mm.

    Args:
        pred: predicted mask (H, W[, D]); nonzero = foreground.
        gt: ground-truth mask, same shape.
        spacing: voxel size in mm per axis. ``None`` → the ``*_mm`` values are NaN (size unknown).
        empty_policy: what an empty prediction or an empty ground truth scores.

            * ``"reference"`` (default, what the published left-atrium evaluation code does): an empty
              prediction scores **0 on all four metrics** (Dice, Jaccard, HD95, ASD; the zero
              distances flatter it — check ``empty_pred``). A non-empty prediction against an empty
              ground truth scores Dice = Jaccard = 0 and NaN distances (the reference code cannot
              score it).
            * ``"nan"``: Dice and Jaccard keep their defined values (0 when exactly one mask is
              empty); distances are NaN when exactly one mask is empty. Two empty masks score
              Dice = Jaccard = 1 and distances 0.

    Returns:
        ``dice``, ``jaccard`` (fractions in [0, 1]), ``hd95_vox``, ``asd_vox``, ``assd_vox`` (voxels,
        spacing 1, the literature's convention), ``hd95_mm``, ``asd_mm``, ``assd_mm`` (mm),
        ``empty_pred``, ``empty_gt`` (bool), ``pred_voxels``, ``gt_voxels`` (int).
        ``asd`` is medpy's one-directional pred→gt mean (what the literature reports as ASD);
        ``assd`` is the symmetric mean.
    """
    if empty_policy not in EMPTY_POLICIES:
        raise MedsslInputError(
            "empty_policy", f"unknown value {empty_policy!r}; expected one of {EMPTY_POLICIES}"
        )
    p, g = _as_bool(pred), _as_bool(gt)
    _check_pair(p, g)
    sp = _check_spacing(spacing, p.ndim)
    n_p, n_g = int(np.count_nonzero(p)), int(np.count_nonzero(g))
    out: dict[str, Any] = {
        "dice": dice(p, g),
        "jaccard": jaccard(p, g),
        "empty_pred": n_p == 0,
        "empty_gt": n_g == 0,
        "pred_voxels": n_p,
        "gt_voxels": n_g,
    }
    nan = float("nan")
    if n_p == 0 and empty_policy == "reference":
        distances = (0.0, 0.0, 0.0)
        out["dice"] = out["jaccard"] = 0.0
        out.update(dict(zip(("hd95_vox", "asd_vox", "assd_vox"), distances, strict=True)))
        out.update(dict(zip(("hd95_mm", "asd_mm", "assd_mm"), distances, strict=True)))
    elif n_p == 0 and n_g == 0:
        out.update({k: 0.0 for k in ("hd95_vox", "asd_vox", "assd_vox", "hd95_mm", "asd_mm", "assd_mm")})
    elif n_p == 0 or n_g == 0:
        out.update({k: nan for k in ("hd95_vox", "asd_vox", "assd_vox", "hd95_mm", "asd_mm", "assd_mm")})
    else:
        vox = _distance_scores(*directed_surface_distances(p, g, None))
        out.update(dict(zip(("hd95_vox", "asd_vox", "assd_vox"), vox, strict=True)))
        if sp is not None:
            same = all(s == 1.0 for s in sp)
            mm = vox if same else _distance_scores(*directed_surface_distances(p, g, sp))
            out.update(dict(zip(("hd95_mm", "asd_mm", "assd_mm"), mm, strict=True)))
    if sp is None:
        out.update({k: nan for k in ("hd95_mm", "asd_mm", "assd_mm")})
    return {k: out[k] for k in (*METRIC_KEYS, "empty_pred", "empty_gt", "pred_voxels", "gt_voxels")}
