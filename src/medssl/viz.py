"""Figures: segmentation overlays (ground-truth and prediction contours on image slices).

Figures are drawn with matplotlib's object API on an Agg canvas (no pyplot, no global state) and
written atomically.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medssl.runtime.atomic import atomic_path
from medssl.tensors import to_numpy

GT_COLOUR = "#00d4ff"  # cyan, solid line
PRED_COLOUR = "#ff8c1a"  # orange, dashed line (the pair stays distinct for red-green colour blindness)


def overlay_slices(gt: np.ndarray | None, pred: np.ndarray | None, depth: int, n_slices: int) -> list[int]:
    """Indices of up to ``n_slices`` slices along the last axis of (H, W, D) masks: fractions
    1/(n+1), …, n/(n+1) of the extent of ``gt ∪ pred`` along that axis (of the whole depth when
    both are empty or ``None``), duplicates removed, ascending."""
    fg = np.zeros(depth, dtype=bool)
    for m in (gt, pred):
        if m is not None:
            fg |= m.reshape(-1, depth).any(axis=0)
    idx = np.flatnonzero(fg)
    lo, hi = (int(idx[0]), int(idx[-1])) if idx.size else (0, depth - 1)
    picks = [lo + round((hi - lo) * (k + 1) / (n_slices + 1)) for k in range(n_slices)]
    return sorted(set(picks))


def segmentation_overlay(
    image: Any,
    gt: Any | None,
    pred: Any | None,
    out: str | Path,
    n_slices: int = 3,
    slices: Sequence[int] | None = None,
    title: str | None = None,
) -> Path:
    """Write a PNG of a few axial slices with ground-truth and prediction contours.

    Args:
        image: (H, W, D) volume (axial slices along the last axis) or a (H, W) image; any intensity
            range (displayed between its 1st and 99th percentiles).
        gt: ground-truth mask of the same shape (nonzero = foreground) or ``None``.
        pred: predicted mask of the same shape or ``None``.
        out: destination PNG path (written atomically).
        n_slices: number of slices when ``slices`` is not given, spread over the foreground extent.
        slices: explicit slice indices along the last axis.
        title: figure title (e.g. the case id and its Dice).

    Ground truth is drawn as a solid cyan contour, the prediction as a dashed orange contour, with a
    legend. Each panel shows ``image[:, :, z]`` with axis 0 vertical (rows) and axis 1 horizontal.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    img = to_numpy(image).astype(np.float32)
    is_2d = img.ndim == 2
    if is_2d:
        img = img[..., None]
    if img.ndim != 3:
        raise ValueError(f"segmentation_overlay expects a (H, W[, D]) image, got shape {img.shape}")
    masks: list[np.ndarray | None] = []
    for m in (gt, pred):
        if m is None:
            masks.append(None)
            continue
        arr = to_numpy(m) > 0
        if is_2d and arr.ndim == 2:
            arr = arr[..., None]
        if arr.shape != img.shape:
            raise ValueError(f"mask shape {arr.shape} differs from image shape {img.shape}")
        masks.append(arr)
    g, p = masks
    zs = list(slices) if slices is not None else overlay_slices(g, p, img.shape[2], n_slices)
    finite = img[np.isfinite(img)]
    lo, hi = np.percentile(finite, [1, 99]) if finite.size else (0.0, 1.0)
    if hi <= lo:
        hi = lo + 1.0

    ncols = len(zs)
    fig = Figure(figsize=(3.2 * ncols, 3.2 * img.shape[0] / img.shape[1] + 0.9), dpi=110)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    for ax, z in zip(axes, zs, strict=True):
        ax.imshow(img[:, :, z], cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
        for mask, colour, style in ((g, GT_COLOUR, "solid"), (p, PRED_COLOUR, "dashed")):
            if mask is not None and mask[:, :, z].any() and not mask[:, :, z].all():
                ax.contour(
                    mask[:, :, z].astype(np.float32),
                    levels=[0.5],
                    colors=[colour],
                    linewidths=1.4,
                    linestyles=style,
                )
        if not is_2d:
            ax.set_title(f"slice {z}", fontsize=9)
        ax.set_axis_off()
    handles = []
    if g is not None:
        handles.append(Line2D([], [], color=GT_COLOUR, lw=2, ls="solid", label="ground truth"))
    if p is not None:
        handles.append(Line2D([], [], color=PRED_COLOUR, lw=2, ls="dashed", label="prediction"))
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False, fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.07 if handles else 0, 1, 1))
    out = Path(out)
    with atomic_path(out, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", facecolor="white")
    return out
