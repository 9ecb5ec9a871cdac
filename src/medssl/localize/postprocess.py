"""From saliency to ROI map: binarisation, connected components, boxes and box expansion.

Everything here works on spatial arrays of any dimensionality ((H, W) or (H, W, D), indices in
voxels) with numpy / scipy only.

Box convention: a box is a tuple of per-axis ``(min, max)`` index pairs, half-open, in voxels:
``((r0, r1), (c0, c1)[, (s0, s1)])`` covers ``array[r0:r1, c0:c1[, s0:s1]]``.

Empty input gives empty output everywhere (an all-zero saliency → an empty mask → no boxes → an empty
ROI map); an empty ROI map later means the image is masked uniformly at the background ratio.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from medssl.components import label_components

#: A box: per-axis half-open ``(min, max)`` voxel index pairs.
Box = tuple[tuple[int, int], ...]

#: Tolerance used when rounding expanded box edges outward (absorbs float error in ``centre ± half``).
_ROUND_EPS = 1e-9


def kmeans_binarize(saliency: np.ndarray, max_iter: int = 100) -> np.ndarray:
    """Foreground mask from a 2-cluster split of the saliency values (brighter cluster = foreground).

    A deterministic one-dimensional 2-means (Lloyd's algorithm on the values): the centres start at
    the minimum and maximum value; each value goes to the nearer centre (ties to the darker one, i.e.
    the foreground is ``value > (c_dark + c_bright) / 2``); centres are recomputed as cluster means
    until the assignment stops changing. No random initialisation, so the result is reproducible.

    Args:
        saliency: float array (H, W[, D]), any range (typically [0, 1]).
        max_iter: upper bound on Lloyd iterations (1-D 2-means converges in a few).

    Returns:
        bool array of the same shape; all False when the values are constant (nothing stands out)
        or the input is empty.
    """
    values = np.asarray(saliency, dtype=np.float64)
    out = np.zeros(values.shape, dtype=bool)
    if values.size == 0:
        return out
    lo, hi = float(values.min()), float(values.max())
    if not hi > lo:
        return out
    dark, bright = lo, hi
    fg = values > (dark + bright) / 2.0
    for _ in range(max_iter):
        dark, bright = float(values[~fg].mean()), float(values[fg].mean())
        new_fg = values > (dark + bright) / 2.0
        if np.array_equal(new_fg, fg):
            break
        fg = new_fg
    return fg


def threshold_binarize(saliency: np.ndarray, t: float = 0.3) -> np.ndarray:
    """Foreground mask ``saliency > t`` (bool, same shape as ``saliency`` (H, W[, D]))."""
    return np.asarray(saliency) > t


def component_boxes(mask: np.ndarray, connectivity: int | None = None) -> list[Box]:
    """One tight half-open box per connected component of ``mask`` (H, W[, D]).

    Returned in component order (raster order of each component's first voxel); empty list for an
    empty mask.
    """
    labels, n = label_components(mask, connectivity)
    if n == 0:
        return []
    return [tuple((int(s.start), int(s.stop)) for s in sl) for sl in ndimage.find_objects(labels)]


def expand_box(box: Box, ratio: float, shape: Sequence[int]) -> Box:
    """Scale ``box`` about its centre by ``ratio`` per axis, round outward, clip to ``shape``.

    For an axis ``(lo, hi)``: centre ``c = (lo + hi) / 2``, half-size ``h = ratio * (hi - lo) / 2``,
    new axis ``(floor(c - h), ceil(c + h))`` clipped to ``[0, size]``. Rounding outward means an
    expanded box always contains the exact scaled box; ``ratio = 1`` returns the box unchanged
    (inside the image). Example: ``(2, 5)`` with ratio 1.5 → ``c = 3.5, h = 2.25`` → ``(1, 6)``.

    Args:
        box: per-axis half-open ``(min, max)`` pairs, in voxels.
        ratio: scale factor (> 0); 1.5 makes every side 50 % longer.
        shape: the image's spatial shape (H, W[, D]).
    """
    if ratio <= 0:
        raise ValueError(f"expand ratio must be positive, got {ratio}")
    if len(box) != len(shape):
        raise ValueError(f"box has {len(box)} axes but the image shape {tuple(shape)} has {len(shape)}")
    out = []
    for (lo, hi), size in zip(box, shape, strict=True):
        centre = (lo + hi) / 2.0
        half = ratio * (hi - lo) / 2.0
        new_lo = math.floor(centre - half + _ROUND_EPS)
        new_hi = math.ceil(centre + half - _ROUND_EPS)
        out.append((max(0, new_lo), min(int(size), new_hi)))
    return tuple(out)


def boxes_to_mask(boxes: Sequence[Box], shape: Sequence[int]) -> np.ndarray:
    """Union of filled boxes as a bool array of ``shape`` (H, W[, D]); no boxes → all False."""
    mask = np.zeros(tuple(int(s) for s in shape), dtype=bool)
    for box in boxes:
        if len(box) != mask.ndim:
            raise ValueError(f"box {box} does not match a {mask.ndim}D shape {mask.shape}")
        mask[tuple(slice(max(lo, 0), max(hi, 0)) for lo, hi in box)] = True
    return mask


def union_box(boxes: Sequence[Box]) -> Box | None:
    """The smallest box holding every box in ``boxes`` (None when there are none)."""
    if not boxes:
        return None
    ndim = len(boxes[0])
    return tuple((min(b[a][0] for b in boxes), max(b[a][1] for b in boxes)) for a in range(ndim))
