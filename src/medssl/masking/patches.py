"""Patch grids: ROI maps -> per-patch ROI labels, patch masks -> pixel/voxel masks.

A patch is the encoder's total stride (32 pixels for ResNet / ConvNeXt, 16 voxels for the V-Net
encoder), so a (H, W) image has an (H / p, W / p) grid of patches and a (H, W, D) volume an
(H / p, W / p, D / p) grid. Everything here works for any number of spatial dimensions.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import torch
from torch import Tensor

from medssl.errors import MedsslInputError

RULES = ("topleft", "any", "center", "fraction>=t")
_FRACTION_RULE = re.compile(r"^fraction\s*>=\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)$")


def as_patch_tuple(patch: int | Sequence[int], ndim: int) -> tuple[int, ...]:
    """``patch`` as one positive size (voxels) per spatial dimension."""
    sizes = (int(patch),) * ndim if isinstance(patch, int) else tuple(int(p) for p in patch)
    if len(sizes) != ndim or any(p < 1 for p in sizes):
        raise MedsslInputError("patch size", f"expected {ndim} positive patch sizes, got {patch!r}")
    return sizes


def patch_grid(spatial: Sequence[int], patch: int | Sequence[int]) -> tuple[int, ...]:
    """Grid of patches for an image of size ``spatial`` (voxels); every size must divide evenly."""
    sizes = as_patch_tuple(patch, len(spatial))
    if any(s % p for s, p in zip(spatial, sizes, strict=True)):
        raise MedsslInputError("patch size", f"image size {tuple(spatial)} is not divisible by the patch "
                               f"size {sizes} (the encoder's total stride)")
    return tuple(s // p for s, p in zip(spatial, sizes, strict=True))


def parse_rule(rule: str) -> tuple[str, float]:
    """Validate a labelling rule; returns ``(kind, threshold)`` (threshold only used by ``fraction``).

    Rules: ``"topleft"`` (a patch is ROI iff its first pixel/voxel is; nearest downsampling),
    ``"any"`` (any ROI voxel), ``"center"`` (the voxel at index ``p // 2`` along every axis),
    ``"fraction>=t"`` with ``0 < t <= 1`` (at least a fraction ``t`` of the patch is ROI).
    """
    text = rule.strip().lower()
    if text in ("topleft", "any", "center"):
        return text, 0.0
    match = _FRACTION_RULE.match(text)
    if match is None:
        raise MedsslInputError("patch rule", f"unknown rule {rule!r}; expected topleft, any, center or "
                               "fraction>=t (e.g. fraction>=0.5)")
    threshold = float(match.group(1))
    if not 0.0 < threshold <= 1.0:
        raise MedsslInputError("patch rule", f"fraction threshold must be in (0, 1], got {threshold}")
    return "fraction", threshold


def _blocks(x: Tensor, patch: tuple[int, ...]) -> Tensor:
    """(B, *spatial) -> (B, *grid, prod(patch)): the voxels of each patch in row-major order."""
    b, spatial = x.shape[0], x.shape[1:]
    grid = patch_grid(spatial, patch)
    interleaved: list[int] = []
    for g, p in zip(grid, patch, strict=True):
        interleaved += [g, p]
    d = len(grid)
    x = x.reshape(b, *interleaved)
    order = [0] + [1 + 2 * i for i in range(d)] + [2 + 2 * i for i in range(d)]
    return x.permute(order).reshape(b, *grid, math.prod(patch))


def roi_patch_labels(roi: Tensor, patch: int | Sequence[int], rule: str = "topleft") -> Tensor:
    """Label each patch as ROI or background.

    Args:
        roi: (B, *spatial) ROI map (bool, or any dtype where nonzero means ROI); spatial sizes in
            voxels must be divisible by the patch size.
        patch: patch size in voxels (one int for all axes, or one per axis).
        rule: ``"topleft"`` (default, the reference's nearest downsampling), ``"any"``, ``"center"`` or
            ``"fraction>=t"``; see :func:`parse_rule`.

    Returns:
        (B, *grid) bool, True where the patch counts as ROI.
    """
    if roi.ndim < 2:
        raise MedsslInputError("roi", f"expected a (B, *spatial) ROI map, got shape {tuple(roi.shape)}")
    kind, threshold = parse_rule(rule)
    sizes = as_patch_tuple(patch, roi.ndim - 1)
    blocks = _blocks(roi != 0, sizes)
    if kind == "topleft":
        return blocks[..., 0].clone()
    if kind == "any":
        return blocks.any(dim=-1)
    if kind == "center":
        flat = 0
        for p in sizes:
            flat = flat * p + p // 2
        return blocks[..., flat].clone()
    # Compare counts, not a float mean, so fraction>=0.5 of 1024 voxels means exactly >= 512 voxels.
    needed = math.ceil(threshold * blocks.shape[-1] - 1e-9)
    return blocks.sum(dim=-1) >= needed


def upsample_mask(visible: Tensor, spatial: Sequence[int]) -> Tensor:
    """Nearest-neighbour upsampling of a patch mask to a feature or image resolution.

    Args:
        visible: (B, *grid) bool patch mask (True = visible).
        spatial: target size (voxels), one per grid axis; usually a multiple of the grid.

    Returns:
        (B, 1, *spatial) bool; output index ``i`` takes grid index ``floor(i * grid / size)`` (the
        same rule as ``torch.nn.functional.interpolate(mode="nearest")``). Multiply an image by it
        to zero the masked pixels.
    """
    spatial = tuple(int(s) for s in spatial)
    if len(spatial) != visible.ndim - 1:
        raise ValueError(f"mask with grid {tuple(visible.shape[1:])} cannot be upsampled to {spatial}")
    out = visible.bool()
    for axis, size in enumerate(spatial, start=1):
        grid = out.shape[axis]
        if size == grid:
            continue
        index = torch.div(torch.arange(size, device=out.device) * grid, size, rounding_mode="floor")
        out = out.index_select(axis, index)
    return out.unsqueeze(1)


__all__ = ["RULES", "as_patch_tuple", "parse_rule", "patch_grid", "roi_patch_labels", "upsample_mask"]
