"""Region-guided patch masks (Mask What Matters): the ROI is masked harder than the background.

Per sample, with R the ROI patches and B the background patches, exactly floor(|R| (1 - r_roi)) ROI
patches and floor(|B| (1 - r_bg)) background patches stay visible (the spec's and the reference's rule,
``counts="floor"``), each set drawn uniformly without replacement. ``counts="stochastic"`` rounds each
count up with probability equal to its fractional part instead, so that the masked fractions equal
``r_roi`` and ``r_bg`` on average even on coarse grids (3D), where flooring hides a small ROI completely.
Masks are visibility masks: True = visible.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from medssl.errors import MedsslInputError
from medssl.masking.random_mask import check_ratio, keep_count, select_uniform, stochastic_keep_counts

#: How the kept-patch counts are rounded: the spec's floor, or unbiased stochastic rounding.
COUNT_RULES = ("floor", "stochastic")


def guided_mask(roi_patches: Tensor, r_roi: float, r_bg: float, generator: torch.Generator | None = None,
                counts: Literal["floor", "stochastic"] = "floor") -> Tensor:
    """Draw a fresh region-guided visibility mask.

    Args:
        roi_patches: (B, *grid) bool, True for ROI patches (see ``roi_patch_labels``).
        r_roi: mask ratio inside the ROI, in [0, 1] (e.g. 0.8).
        r_bg: mask ratio in the background, in [0, 1] (e.g. 0.4).
        generator: makes the draw reproducible (device must match ``roi_patches``).
        counts: ``"floor"`` keeps exactly floor(|R| (1 - r_roi)) and floor(|B| (1 - r_bg)) patches
            visible; ``"stochastic"`` rounds each count up with probability equal to its fractional
            part (expected masked fractions exactly ``r_roi`` and ``r_bg``).

    Returns:
        (B, *grid) bool visibility mask. An empty ROI masks the whole image at ``r_bg``; a ROI that
        covers every patch masks everything at ``r_roi``.
    """
    check_ratio(r_roi, "ROI mask ratio")
    check_ratio(r_bg, "background mask ratio")
    if roi_patches.ndim < 2:
        raise MedsslInputError("roi patches", f"expected (B, *grid), got shape {tuple(roi_patches.shape)}")
    roi = roi_patches.bool().flatten(1)
    n_roi = roi.sum(dim=1).tolist()
    n_all = roi.shape[1]
    n_bg = [n_all - n for n in n_roi]
    if counts == "floor":
        keep_roi = torch.tensor([keep_count(n, r_roi, "floor") for n in n_roi], device=roi.device)
        keep_bg = torch.tensor([keep_count(n, r_bg, "floor") for n in n_bg], device=roi.device)
    elif counts == "stochastic":
        keep_roi = stochastic_keep_counts(n_roi, r_roi, generator, roi.device)
        keep_bg = stochastic_keep_counts(n_bg, r_bg, generator, roi.device)
    else:
        raise MedsslInputError("mask counts", f"expected one of {', '.join(COUNT_RULES)}, got {counts!r}")
    visible = select_uniform(roi, keep_roi, generator) | select_uniform(~roi, keep_bg, generator)
    return visible.reshape(roi_patches.shape)


def _masked_fraction(visible: Tensor, members: Tensor) -> float:
    """Mean over samples (with at least one member) of the masked fraction of their members."""
    counts = members.sum(dim=1)
    masked = (members & ~visible).sum(dim=1)
    has = counts > 0
    if not bool(has.any()):
        return math.nan
    return float((masked[has].double() / counts[has].double()).mean())


def mask_ratios(visible: Tensor, roi_patches: Tensor) -> dict[str, float]:
    """Actual masked fractions of a batch, for logging.

    Args:
        visible: (B, *grid) bool visibility mask.
        roi_patches: (B, *grid) bool ROI patch labels.

    Returns:
        ``{"roi": ..., "background": ..., "overall": ...}``: masked fraction of the ROI patches, of the
        background patches and of all patches, each averaged over the samples of the batch (samples
        without any ROI, resp. background, patch are left out; NaN when no sample has any).
    """
    vis = visible.bool().flatten(1)
    roi = roi_patches.bool().flatten(1)
    if vis.shape != roi.shape:
        raise ValueError(f"mask {tuple(visible.shape)} and ROI {tuple(roi_patches.shape)} shapes differ")
    return {"roi": _masked_fraction(vis, roi),
            "background": _masked_fraction(vis, ~roi),
            "overall": _masked_fraction(vis, torch.ones_like(roi))}


def expected_overall_ratio(n_roi: int, n_bg: int, r_roi: float, r_bg: float) -> float:
    """Expected overall mask ratio (|R| r_roi + |B| r_bg) / (|R| + |B|) of the spec (no flooring)."""
    if n_roi < 0 or n_bg < 0 or n_roi + n_bg == 0:
        raise ValueError(f"need non-negative patch counts with a positive total, got {n_roi}, {n_bg}")
    return (n_roi * float(r_roi) + n_bg * float(r_bg)) / (n_roi + n_bg)


__all__ = ["COUNT_RULES", "expected_overall_ratio", "guided_mask", "mask_ratios"]
