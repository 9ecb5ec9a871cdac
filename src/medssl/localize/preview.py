"""Overlay previews of a localization: what each step of a backend found on one image.

One PNG per image, one row of panels: the image; the saliency heatmap (if the backend has one); the
coarse mask (binarised saliency or matched structures); the refined (SAM) mask; the final ROI with one
outlined rectangle per box. Panels a backend does not produce are left out.

Display: 3D images show the slice through the centre of the ROI's boxes along the last array axis (the
middle slice when the ROI is empty). Arrays from formats with geometry (NIfTI, NRRD, DICOM) are shown
with array axis 0 across and axis 1 down, other arrays (PNG, HDF5, NumPy) with axis 0 down; pixel
aspect from the voxel spacing; intensities windowed to the 1st-99th percentiles. Rendered with
matplotlib's Agg canvas and written atomically.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np

from medssl.data.io import ImageData
from medssl.data.preview import window
from medssl.localize.base import LocalizationResult, roi_source_label
from medssl.localize.postprocess import Box, union_box
from medssl.runtime.atomic import atomic_path

__all__ = ["preview_slice", "write_localization_preview"]

_GEOMETRY_FORMATS = ("nifti", "nrrd", "dicom", "dicom-series")
_COARSE = "#00c7be"
_REFINED = "#ff9f0a"
_ROI = "#ffd60a"
_TEXT = "white"


def preview_slice(result: LocalizationResult, shape: tuple[int, ...]) -> int | None:
    """Index along the last axis of the shown slice of a 3D image (None for 2D).

    The centre of the union of the ROI's boxes; without boxes the centre of the ROI's voxels; for an
    empty ROI the middle slice.
    """
    if len(shape) < 3:
        return None
    box = union_box(result.boxes)
    if box is not None:
        lo, hi = box[-1]
        return int(min(max((lo + hi - 1) // 2, 0), shape[-1] - 1))
    zs = np.nonzero(np.asarray(result.roi).any(axis=tuple(range(len(shape) - 1))))[0]
    if zs.size:
        return int((zs.min() + zs.max()) // 2)
    return shape[-1] // 2


def _grey(image: ImageData) -> np.ndarray:
    arr = np.asarray(image.array)
    if image.meta.get("channels_last") and arr.ndim == len(image.spacing) + 1:
        return window(arr, colour=True).mean(axis=-1) if arr.dtype == np.uint8 else window(arr.mean(axis=-1))
    return window(arr)


def write_localization_preview(path: str | Path, image: ImageData, result: LocalizationResult,
                               prompt: str = "", title: str | None = None) -> Path:
    """Write the overlay panels of ``result`` on ``image`` (H, W[, 3]) or (H, W, D) to the PNG ``path``.

    Args:
        path: output PNG.
        image: the localized image.
        result: its localization (ROI, boxes and whichever intermediates are present), on the image grid.
        prompt: shown in the title.
        title: replaces the default title (image name, backend, prompt).

    Returns:
        ``path``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    shape = image.spatial_shape
    z = preview_slice(result, shape)
    across_first = bool(image.meta.get("has_geometry")) or image.meta.get("format") in _GEOMETRY_FORMATS

    def show(arr: np.ndarray) -> np.ndarray:
        plane = arr if z is None else arr[..., z]
        return plane.T if across_first else plane

    spacing = image.spacing[:2]
    aspect = spacing[0] / spacing[1] if not across_first else spacing[1] / spacing[0]
    base = show(_grey(image))
    layers: list[tuple[str, str, np.ndarray | None]] = [("image", "", None)]
    if result.saliency is not None:
        layers.append(("saliency", "heat", show(np.asarray(result.saliency, dtype=np.float32))))
    if result.coarse_mask is not None:
        layers.append(("coarse mask", _COARSE, show(np.asarray(result.coarse_mask, dtype=bool))))
    if result.refined_mask is not None:
        layers.append(("refined mask", _REFINED, show(np.asarray(result.refined_mask, dtype=bool))))
    roi = show(np.asarray(result.roi, dtype=bool))
    layers.append((f"ROI: {len(result.boxes)} box{'es' if len(result.boxes) != 1 else ''}", _ROI, roi))

    n = len(layers)
    ratio = base.shape[0] * aspect / base.shape[1]
    panel_w = 3.0
    panel_h = float(np.clip(panel_w * ratio, 1.5, 6.0))
    fig = Figure(figsize=(panel_w * n, panel_h + 0.7), facecolor="black", dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    for i, (name, colour, layer) in enumerate(layers):
        ax = fig.add_subplot(1, n, i + 1)
        ax.set_facecolor("black")
        ax.imshow(base, cmap="gray", vmin=0.0, vmax=1.0, aspect=aspect, interpolation="nearest")
        label = name
        if layer is not None and colour == "heat":
            ax.imshow(layer, cmap="inferno", vmin=0.0, vmax=1.0, alpha=0.55, aspect=aspect, interpolation="bilinear")
            label = "saliency (0-1)"
        elif layer is not None:
            if layer.any():
                tint = np.zeros((*layer.shape, 4), np.float32)
                tint[layer] = (*_rgb(colour), 0.3)
                ax.imshow(tint, aspect=aspect, interpolation="nearest")
                if min(layer.shape) > 1:
                    ax.contour(layer.astype(np.float32), levels=[0.5], colors=[colour], linewidths=1.2)
            else:
                label += " (empty)"
        if i == n - 1:
            for box in result.boxes:
                rect = _box_rect(box, z, across_first)
                if rect is not None:
                    (x0, y0), (w, h) = rect
                    ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), w, h, fill=False, edgecolor=_ROI, linewidth=1.8))
        ax.set_title(label, color=_TEXT, fontsize=9)
        ax.set_axis_off()
    if title is None:
        name = Path(image.source).name if image.source else "image"
        backend = roi_source_label(result.provenance)
        where = "" if z is None else f", slice {z} of {shape[-1]} (last axis)"
        title = (f"{name}: {backend}{where}, ROI {100 * result.roi_fraction:.1f}% of the image\n"
                 f"prompt: {prompt or result.provenance.get('prompt', '')}")
    wrapped = "\n".join(textwrap.fill(line, width=int(panel_w * n * 14)) for line in title.splitlines())
    fig.suptitle(wrapped, color=_TEXT, fontsize=9)
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(str(tmp), format="png", facecolor="black")
    return path


def _rgb(colour: str) -> tuple[float, float, float]:
    from matplotlib.colors import to_rgb

    r, g, b = to_rgb(colour)
    return float(r), float(g), float(b)


def _box_rect(box: Box, z: int | None, across_first: bool) -> tuple[tuple[int, int], tuple[int, int]] | None:
    """((x, y), (width, height)) of ``box`` in the shown slice (display pixels), None if it misses the slice."""
    if z is not None and not box[-1][0] <= z < box[-1][1]:
        return None
    (a0, a1), (b0, b1) = box[0], box[1]
    if across_first:  # axis 0 across (x), axis 1 down (y)
        return (a0, b0), (a1 - a0, b1 - b0)
    return (b0, a0), (b1 - b0, a1 - a0)
