"""Checks on images and labels, each raising a one-line :class:`MedsslInputError` naming the file.

Used by the readers (:mod:`medssl.data.io`), the datasets and the ``medssl data`` commands.
"""

from __future__ import annotations

from itertools import product
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from medssl.errors import MedsslInputError

if TYPE_CHECKING:
    from medssl.data.io import ImageData

#: Two grids match when every voxel centre of one lies within this fraction of the smallest voxel
#: size (mm) of the corresponding voxel centre of the other.
GEOMETRY_TOL_VOXELS = 0.01


def _shown_values(values: np.ndarray, limit: int = 8) -> str:
    shown = ", ".join(f"{v:g}" for v in values[:limit].tolist())
    return shown + (f", ... ({len(values)} values)" if len(values) > limit else "")


def check_finite(arr: np.ndarray, source: str | Path) -> None:
    """Raise if ``arr`` (any shape) holds NaN or infinite values."""
    arr = np.asarray(arr)
    if not np.issubdtype(arr.dtype, np.inexact):
        return
    n_nan = int(np.isnan(arr).sum())
    n_inf = int(np.isinf(arr).sum())
    if n_nan or n_inf:
        raise MedsslInputError(source, f"contains {n_nan} NaN and {n_inf} infinite voxel values "
                                       f"(out of {arr.size})")


def check_ndim(arr: np.ndarray, ndim: int, source: str | Path, *, channels_last: bool = False) -> None:
    """Raise unless ``arr`` has ``ndim`` spatial axes (a trailing colour axis excluded if ``channels_last``)."""
    arr = np.asarray(arr)
    spatial = arr.ndim - 1 if channels_last else arr.ndim
    if spatial != ndim:
        raise MedsslInputError(source, f"expected a {ndim}D image, got {spatial}D data of shape {arr.shape}")


def check_integer_label(arr: np.ndarray, source: str | Path) -> np.ndarray:
    """Raise unless ``arr`` holds finite, non-negative whole numbers; return it as uint8 or int32."""
    arr = np.asarray(arr)
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8)
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise MedsslInputError(source, f"a label must hold integer values, got data of type {arr.dtype}")
    if np.issubdtype(arr.dtype, np.floating):
        check_finite(arr, source)
        fractional = arr[arr != np.round(arr)]
        if fractional.size:
            raise MedsslInputError(source, f"a label must hold integer values, found {fractional.size} "
                                           f"non-integer voxels (e.g. {float(fractional.flat[0]):g})")
    if arr.size and arr.min() < 0:
        raise MedsslInputError(source, f"a label must be non-negative, found {arr.min():g}")
    top = arr.max(initial=0)
    if top > np.iinfo(np.int32).max:
        raise MedsslInputError(source, f"label value {top:g} is too large")
    return arr.astype(np.uint8 if top < 256 else np.int32)


def check_binary_label(arr: np.ndarray, source: str | Path) -> None:
    """Raise unless every value of ``arr`` is 0 or 1."""
    values = np.unique(np.asarray(arr))
    if not np.isin(values, (0, 1)).all():
        raise MedsslInputError(source, f"label must be binary (0/1), found values {_shown_values(values)}")


def as_binary_label(arr: np.ndarray, source: str | Path) -> np.ndarray:
    """Map a {0, 1} or {0, 255} label to uint8 {0, 1}; raise for any other set of values."""
    arr = np.asarray(arr)
    values = np.unique(arr)
    if np.isin(values, (0, 255)).all() and 255 in values:
        return (arr == 255).astype(np.uint8)
    if not np.isin(values, (0, 1)).all():
        raise MedsslInputError(source, f"label must be binary (0/1 or 0/255), found values "
                                       f"{_shown_values(values)}")
    return arr.astype(np.uint8)


def check_nonempty_label(arr: np.ndarray, source: str | Path) -> None:
    """Raise if ``arr`` has no foreground (non-zero) voxel."""
    if not np.any(np.asarray(arr)):
        raise MedsslInputError(source, "label is empty (no foreground voxel)")


def geometry_mismatch(image: ImageData, label: ImageData, tol_voxels: float = GEOMETRY_TOL_VOXELS) -> str | None:
    """Why ``label`` does not lie on the voxel grid of ``image``, or None if it does.

    Shapes compare the spatial axes. Affines compare by where they put the corner voxels of the
    grid: the largest distance (mm) between the two mappings over the grid's corners must not
    exceed ``tol_voxels`` times the smallest voxel size of ``image``.
    """
    shape_i, shape_l = image.spatial_shape, label.spatial_shape
    if shape_i != shape_l:
        return f"shape {shape_l} does not match the image's {shape_i} ({image.source or 'image'})"
    diff = np.asarray(image.affine, dtype=np.float64) - np.asarray(label.affine, dtype=np.float64)
    corners = np.array([[*c, *([0] * (3 - len(c))), 1.0]
                        for c in product(*[(0, n - 1) for n in shape_i[:3]])])
    worst = float(np.linalg.norm(corners @ diff[:3].T, axis=1).max())
    allowed = tol_voxels * float(min(image.spacing)) if image.spacing else tol_voxels
    if worst > allowed:
        return (f"geometry does not match the image's ({image.source or 'image'}): voxel positions differ "
                f"by up to {worst:.3g} mm (affine {_affine_text(label.affine)} vs {_affine_text(image.affine)})")
    return None


def _affine_text(affine: np.ndarray) -> str:
    rows = np.asarray(affine, dtype=np.float64)[:3]
    return "[" + "; ".join(" ".join(f"{v:.4g}" for v in row) for row in rows) + "]"


def check_same_geometry(image: ImageData, label: ImageData, tol_voxels: float = GEOMETRY_TOL_VOXELS) -> None:
    """Raise (naming the label file) unless ``label`` has the shape and affine of ``image``.

    See :func:`geometry_mismatch` for the tolerance.
    """
    problem = geometry_mismatch(image, label, tol_voxels)
    if problem is not None:
        raise MedsslInputError(label.source or "label", problem)
