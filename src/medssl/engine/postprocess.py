"""Post-processing of predicted segmentation masks."""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage


def largest_connected_component(mask: Any, connectivity: int | None = None) -> np.ndarray:
    """Keep only the largest connected foreground component of a binary mask.

    Args:
        mask: (H, W[, D]) array-like; nonzero = foreground.
        connectivity: neighbourhood order as in ``scipy.ndimage.generate_binary_structure``
            (1 = faces, ndim = full: 8 in 2D, 26 in 3D). ``None`` → full connectivity, the convention
            of the left-atrium post-processing in the literature.

    Returns:
        bool array of the same shape; all False if ``mask`` is empty. Ties between equally large
        components keep the one with the lowest label (first in C order).
    """
    if hasattr(mask, "detach"):
        mask = mask.detach().cpu().numpy()
    m = np.asarray(mask).astype(bool)
    if not m.any():
        return m
    structure = ndimage.generate_binary_structure(m.ndim, m.ndim if connectivity is None else connectivity)
    labels, n = ndimage.label(m, structure=structure)
    if n <= 1:
        return m
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))
