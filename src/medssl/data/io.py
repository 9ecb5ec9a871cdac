"""Reading and writing medical images with their geometry.

Writers (this section) are the ones every generator and prediction writer in medssl uses.
All writes are atomic (see :mod:`medssl.runtime.atomic`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medssl.runtime.atomic import atomic_path


@dataclass
class ImageData:
    """An image array with its geometry.

    Attributes:
        array: voxel/pixel values, spatial axes first: (H, W) or (H, W, D); a trailing channel axis
            (H, W, C) only for colour 2D images.
        affine: (4, 4) voxel-to-world (RAS, mm) matrix; identity-like for formats without geometry.
        spacing: voxel size in mm per spatial axis.
        source: the file or folder the image was read from ("" for in-memory images).
        meta: format-specific metadata (e.g. original dtype, DICOM tags of interest).
    """

    array: np.ndarray
    affine: np.ndarray
    spacing: tuple[float, ...]
    source: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """Shape of the spatial axes."""
        return tuple(self.array.shape[: len(self.spacing)])


def affine_from_spacing(spacing: tuple[float, ...], origin: tuple[float, ...] | None = None) -> np.ndarray:
    """A diagonal (4, 4) affine for axis-aligned voxels of size ``spacing`` (mm)."""
    affine = np.eye(4)
    for i, s in enumerate(spacing[:3]):
        affine[i, i] = float(s)
    if origin is not None:
        affine[: len(origin[:3]), 3] = origin[:3]
    return affine


def write_nifti(path: str | Path, array: np.ndarray, affine: np.ndarray | None = None) -> Path:
    """Write ``array`` (H, W[, D]) as NIfTI (.nii or .nii.gz) with ``affine`` (4, 4), atomically.

    Integer arrays keep their integer type (labels); floating arrays are stored as float32.
    """
    import nibabel as nib

    path = Path(path)
    arr = np.asarray(array)
    if arr.dtype == np.float64 or arr.dtype == np.float16:
        arr = arr.astype(np.float32)
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8)
    aff = np.eye(4) if affine is None else np.asarray(affine, dtype=np.float64)
    img = nib.Nifti1Image(arr, aff)
    img.header.set_xyzt_units("mm")
    img.set_qform(aff, code=1)
    img.set_sform(aff, code=1)
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))
    return path


def write_png(path: str | Path, array: np.ndarray) -> Path:
    """Write a 2D array (H, W) or (H, W, 3) as PNG, atomically.

    uint8 / uint16 arrays are written as they are (labels keep their values); floating arrays must
    already lie in [0, 1] and are scaled to uint8.
    """
    from PIL import Image

    arr = np.asarray(array)
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8)
    if np.issubdtype(arr.dtype, np.floating):
        arr = np.clip(np.rint(arr * 255.0), 0, 255).astype(np.uint8)
    if arr.dtype not in (np.uint8, np.uint16):
        arr = arr.astype(np.uint8 if arr.max(initial=0) < 256 else np.uint16)
    with atomic_path(path) as tmp:
        Image.fromarray(arr).save(str(tmp), format="PNG")
    return Path(path)
