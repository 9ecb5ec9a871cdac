"""Connected components of binary masks of any dimensionality ((H, W) or (H, W, D)), numpy / scipy only.

The one implementation used by ROI post-processing (:mod:`medssl.localize.postprocess`) and segmentation
post-processing (``largest_component`` in :mod:`medssl.engine.inference` and :mod:`medssl.engine.evaluate`).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["label_components", "largest_components"]


def _structure(ndim: int, connectivity: int | None) -> np.ndarray:
    """scipy neighbourhood: ``connectivity`` 1 = faces, ``ndim`` = full (8 in 2D, 26 in 3D)."""
    conn = ndim if connectivity is None else int(connectivity)
    if not 1 <= conn <= max(ndim, 1):
        raise ValueError(f"connectivity must lie in 1..{ndim} for {ndim}D masks, got {connectivity}")
    return ndimage.generate_binary_structure(ndim, conn)


def label_components(mask: np.ndarray, connectivity: int | None = None) -> tuple[np.ndarray, int]:
    """Connected components of ``mask`` (H, W[, D]): (int32 labels 1..n in raster order of first voxel, n).

    ``connectivity``: 1 = face neighbours (4 in 2D, 6 in 3D), ``ndim`` = full neighbourhood (8 / 26;
    the default).
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim == 0 or mask.size == 0:
        return np.zeros(mask.shape, np.int32), 0
    labels, n = ndimage.label(mask, structure=_structure(mask.ndim, connectivity))
    return labels.astype(np.int32, copy=False), int(n)


def largest_components(mask: np.ndarray, k: int = 1, connectivity: int | None = None) -> np.ndarray:
    """Keep the ``k`` largest connected components of ``mask`` (H, W[, D]).

    Ties in size are broken deterministically: among equal sizes the component whose first voxel
    comes first in C (raster) order wins. ``k <= 0`` or an empty mask gives an empty mask.
    """
    mask = np.asarray(mask, dtype=bool)
    labels, n = label_components(mask, connectivity)
    if n == 0 or k <= 0:
        return np.zeros(mask.shape, dtype=bool)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    # labels are numbered in raster order of their first voxel: a stable sort on -size keeps that order
    order = np.argsort(-sizes, kind="stable")[:k]
    return np.isin(labels, order + 1)
