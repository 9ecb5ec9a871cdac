"""``medssl data preview``: a montage PNG of slices with the label outlined.

Display conventions:

* 3D images with geometry (NIfTI, NRRD, DICOM series) are reoriented (axis permutations and flips
  only, no resampling) to LPS and shown as axial slices in the radiological view: anterior at the
  top, the patient's right on the image's left, pixel aspect from the voxel spacing.
* 3D images without geometry (HDF5, NumPy) are sliced along their last axis; axis 0 runs down the
  panel and axis 1 across.
* 2D images: PNG / JPEG as stored (row, column); 2D DICOM / NIfTI / NRRD (i, j) with i across and j
  down, the native DICOM view.

Intensities are windowed to the image's 1st-99th percentiles.
"""

from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medssl.data import io
from medssl.errors import MedsslInputError
from medssl.runtime.atomic import atomic_path

#: Percentiles of the intensity window.
WINDOW_PERCENTILES: tuple[float, float] = (1.0, 99.0)

#: Formats whose arrays are voxel indices (i, j[, k]) with i across the native view.
_IJ_FORMATS = ("dicom", "dicom-series", "nifti", "nrrd")

#: Colour of the label outline.
CONTOUR_COLOUR = "#ff3b30"


@dataclass
class Panel:
    """One montage panel: ``image`` (rows, cols) or (rows, cols, 3) in [0, 1], ``mask`` (rows, cols) or None.

    ``aspect`` is the height / width of one pixel (row spacing / column spacing).
    """

    image: np.ndarray
    mask: np.ndarray | None
    title: str
    aspect: float


def window(arr: np.ndarray, colour: bool = False) -> np.ndarray:
    """Scale ``arr`` to [0, 1]: colour uint8 by 255, otherwise by the :data:`WINDOW_PERCENTILES` window."""
    arr = np.asarray(arr)
    if colour and arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    values = arr.astype(np.float64)
    lo, hi = np.percentile(values, WINDOW_PERCENTILES)
    if hi <= lo:
        lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return np.zeros(arr.shape, dtype=np.float32)
    return np.clip((values - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def slice_indices(depth: int, n_slices: int) -> list[int]:
    """``min(n_slices, depth)`` distinct indices at the centres of equal bins over ``depth`` slices."""
    n = min(n_slices, depth)
    return [int((i + 0.5) * depth / n) for i in range(n)]


def _to_lps(image: io.ImageData, arrays: list[np.ndarray]) -> tuple[list[np.ndarray], tuple[float, ...]]:
    """Permute / flip 3D arrays (first three axes) to LPS; return them with the permuted spacing (mm)."""
    from nibabel import orientations as ornt

    current = ornt.io_orientation(image.affine)
    transform = ornt.ornt_transform(current, ornt.axcodes2ornt(("L", "P", "S")))
    spacing = [0.0, 0.0, 0.0]
    for axis, (target, _) in enumerate(transform):
        spacing[int(target)] = image.spacing[axis]
    return [ornt.apply_orientation(a, transform) for a in arrays], tuple(spacing)


def preview_panels(image: io.ImageData, label: io.ImageData | None, n_slices: int = 9) -> list[Panel]:
    """The montage panels of ``image`` (H, W[, 3]) or (H, W, D[, 3]) with ``label`` (same spatial shape)."""
    colour = bool(image.meta.get("channels_last"))
    shown = window(image.array, colour)
    mask = None if label is None else np.asarray(label.array) > 0
    n_spatial = image.array.ndim - (1 if colour else 0)
    spacing = image.spacing
    transpose = bool(image.meta.get("has_geometry")) or image.meta.get("format") in _IJ_FORMATS
    if n_spatial == 2:
        if transpose:
            shown = np.swapaxes(shown, 0, 1)
            mask = None if mask is None else mask.T
            spacing = (spacing[1], spacing[0])
        return [Panel(shown, mask, "", spacing[0] / spacing[1])]
    if image.meta.get("has_geometry"):
        arrays = [shown] + ([] if mask is None else [mask])
        arrays, spacing = _to_lps(image, arrays)
        shown, mask = arrays[0], (arrays[1] if mask is not None else None)
    depth = shown.shape[2]
    panels = []
    for k in slice_indices(depth, n_slices):
        img2d = shown[:, :, k]
        m2d = None if mask is None else mask[:, :, k]
        aspect = spacing[0] / spacing[1]
        if transpose:
            img2d = np.swapaxes(img2d, 0, 1)
            m2d = None if m2d is None else m2d.T
            aspect = spacing[1] / spacing[0]
        panels.append(Panel(img2d, m2d, f"slice {k}/{depth}", aspect))
    return panels


def render_montage(panels: list[Panel], title: str, out: str | Path) -> Path:
    """Draw ``panels`` in a near-square grid on a black background and write the PNG atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = len(panels)
    ncols = math.ceil(math.sqrt(n))
    nrows = math.ceil(n / ncols)
    ratio = float(np.mean([p.image.shape[0] * p.aspect / p.image.shape[1] for p in panels]))
    panel_w = 2.6 if n > 1 else 4.0
    panel_h = float(np.clip(panel_w * ratio, 1.2, 5.0)) + (0.25 if n > 1 else 0.0)
    fig = Figure(figsize=(panel_w * ncols, panel_h * nrows + 0.45), facecolor="black")
    FigureCanvasAgg(fig)
    for i, panel in enumerate(panels):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        ax.set_facecolor("black")
        ax.imshow(panel.image, cmap="gray", vmin=0.0, vmax=1.0, aspect=panel.aspect,
                  interpolation="nearest", origin="upper")
        if panel.mask is not None and panel.mask.any() and min(panel.mask.shape) > 1:
            ax.contour(panel.mask.astype(np.float32), levels=[0.5], colors=[CONTOUR_COLOUR], linewidths=1.0)
        if panel.title:
            ax.set_title(panel.title, color="white", fontsize=8)
        ax.set_axis_off()
    fig.suptitle(textwrap.fill(title, width=int(panel_w * ncols * 13)), color="white", fontsize=8)
    fig.tight_layout(rect=(0.0, 0.0, 1.0, 0.97))
    out = Path(out)
    with atomic_path(out) as tmp:
        fig.savefig(str(tmp), format="png", dpi=100, facecolor="black")
    return out


def write_preview(path: str | Path, out: str | Path, label: str | Path | None = None, n_slices: int = 9) -> Path:
    """Write a montage PNG of ``n_slices`` evenly spaced axial slices of a 3D image (or the 2D image).

    The label (``label``, or the ``label`` dataset of an HDF5 file) is outlined in red; it must be a
    binary, non-empty mask on the image's grid. Nothing is written when any input is invalid.

    Returns:
        The written PNG path.

    Raises:
        MedsslInputError: unreadable image or label, NaN / Inf voxels, not a 2D or 3D image, a label
            that is empty, non-binary or does not match the image, an output that is not .png, or
            ``n_slices`` < 1.
    """
    path, out = Path(path), Path(out)
    if out.suffix.lower() != ".png":
        raise MedsslInputError(out, "the preview is a PNG image: give an output name ending in .png")
    if n_slices < 1:
        raise MedsslInputError("--slices", f"must be at least 1, got {n_slices}")
    image = io.read_image(path)
    colour = bool(image.meta.get("channels_last"))
    n_spatial = image.array.ndim - (1 if colour else 0)
    if n_spatial not in (2, 3):
        raise MedsslInputError(path, f"expected a 2D or 3D image, got {n_spatial}D data of shape "
                                     f"{image.array.shape}")
    lab = None
    if label is not None:
        lab = io.read_label(label, like=image)
    elif image.meta["format"] == "hdf5" and io.has_h5_dataset(path, "label"):
        lab = io.read_label(path, like=image)
    panels = preview_panels(image, lab, n_slices)
    spacing = " x ".join(f"{s:.3g}" for s in image.spacing)
    title = f"{path.name}  {tuple(image.array.shape)}  {spacing} mm"
    if lab is not None:
        title += f"  (label: {Path(lab.source).name})"
    return render_montage(panels, title, out)
