"""``ct-lung-fields`` backend: a classical lung-field ROI for 2D chest CT slices (no model, no weights).

Lung parenchyma is the dark tissue inside the body. On a slice (H, W) (colour images are averaged over
their channels):

1. Normalise: intensities scaled so the 1st / 99th percentiles map to 0 / 1 (clipped).
2. Dark / bright split: ``dark = value <= threshold`` (``threshold=None``: the deterministic 2-means split
   of :func:`medssl.localize.postprocess.kmeans_binarize`, dark = the darker cluster). Made for lung
   windows; on a soft-tissue window fat and muscle fall into the dark cluster and the ROI is usually
   empty (the image is then masked uniformly at the background ratio).
3. Body: the convex hull of the bright components covering at least ``min_fraction`` of the image each
   (the body wall, mediastinum and spine; small bright marks such as burnt-in letters fall below). The
   hull closes the body outline around the lungs even where a cropped slice cuts the body at the image
   border; the air outside the body stays outside it.
4. Lung fields: the connected components of the dark pixels that lie more than half inside the body
   (the outside air does not; a lung that the hull cuts at a tightly cropped border is kept whole) and
   cover at least ``min_fraction`` of the image (the trachea and small air pockets fall below) → holes
   filled (vessels and nodules inside the lungs) → the ``max_components`` largest.
5. ROI: ``output="boxes"``: one box per lung field, scaled by ``expand_ratio`` about its centre (the
   usual guided-masking ROI); ``output="mask"``: the lung fields themselves.

Boxes are per-axis half-open ``((row0, row1), (col0, col1))`` voxel pairs. The prompt does not change the
result (it is recorded). Provenance: ``roi_source = "classical"``, and every parameter in ``params()``.
No CT lung masks exist in the shared data, so the rule is checked on a phantom (exact boxes) and by eye
on real slices.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

from medssl.components import label_components, largest_components
from medssl.data.io import ImageData
from medssl.errors import MedsslInputError
from medssl.localize.base import CLASSICAL_ROI, LocalizationResult, make_provenance
from medssl.localize.postprocess import boxes_to_mask, component_boxes, expand_box, kmeans_binarize

#: Intensity percentiles mapped to 0 and 1 before thresholding.
PERCENTILES = (1.0, 99.0)


def normalise(slice2d: np.ndarray) -> np.ndarray:
    """(H, W) float64 in [0, 1]: the :data:`PERCENTILES` of ``slice2d`` mapped to 0 / 1, clipped."""
    arr = np.asarray(slice2d, dtype=np.float64)
    lo, hi = np.percentile(arr, PERCENTILES)
    if not hi > lo:
        return np.zeros(arr.shape)
    return np.clip((arr - lo) / (hi - lo), 0.0, 1.0)


def convex_hull_mask(mask: np.ndarray) -> np.ndarray:
    """(H, W) bool: pixels whose centres lie in the convex hull of the centres of ``mask``'s pixels."""
    points = np.argwhere(mask)
    out = np.zeros(mask.shape, dtype=bool)
    if len(points) < 3:
        out[tuple(points.T)] = True
        return out
    try:
        hull = ConvexHull(points)
    except QhullError:  # collinear pixels: the mask is its own hull
        return mask.astype(bool)
    grid = np.indices(mask.shape).reshape(2, -1).T.astype(np.float64)
    inside = np.all(grid @ hull.equations[:, :2].T + hull.equations[:, 2] <= 1e-9, axis=1)
    return inside.reshape(mask.shape)


def lung_fields(slice2d: np.ndarray, threshold: float | None = None, min_fraction: float = 0.01,
                max_components: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """(lung fields (H, W) bool, body (H, W) bool) of one CT slice (steps 1-4 of the module docstring)."""
    values = normalise(slice2d)
    bright = kmeans_binarize(values) if threshold is None else values > threshold
    body = convex_hull_mask(_components_at_least(bright, min_fraction * values.size))
    labels, n = label_components(~bright)
    inside = np.bincount(labels[body].ravel(), minlength=n + 1)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    keep = [i for i in range(1, n + 1) if 2 * inside[i] > sizes[i] and sizes[i] >= min_fraction * values.size]
    fields = ndimage.binary_fill_holes(np.isin(labels, keep))
    return largest_components(fields, max_components), body


def _components_at_least(mask: np.ndarray, size: float) -> np.ndarray:
    """The connected components of ``mask`` with at least ``size`` pixels (the largest one if none has)."""
    labels, n = label_components(mask)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    keep = [i for i in range(1, n + 1) if sizes[i] >= size]
    return np.isin(labels, keep) if keep else largest_components(mask, 1)


class CtLungFieldsLocalizer:
    """Classical lung fields of 2D chest CT slices (see the module docstring).

    Args:
        threshold: normalised intensity at or below which a pixel is dark (None: 2-means split).
        min_fraction: smallest lung field, as a fraction of the image's pixels.
        max_components: at most this many lung fields (the largest).
        expand_ratio: box scale about its centre (``output="boxes"``).
        output: ``"boxes"`` (one box per lung field) or ``"mask"`` (the fields themselves).
    """

    name = "ct-lung-fields"
    model_id: str | None = None
    model_revision: str | None = None

    def __init__(self, threshold: float | None = None, min_fraction: float = 0.01, max_components: int = 2,
                 expand_ratio: float = 1.0, output: str = "boxes") -> None:
        if threshold is not None and not 0.0 < threshold < 1.0:
            raise MedsslInputError("threshold", f"must lie in (0, 1) or be None, got {threshold}")
        if not 0.0 <= min_fraction < 1.0:
            raise MedsslInputError("min_fraction", f"must lie in [0, 1), got {min_fraction}")
        if max_components < 1:
            raise MedsslInputError("max_components", f"must be >= 1, got {max_components}")
        if expand_ratio <= 0:
            raise MedsslInputError("expand_ratio", f"must be positive, got {expand_ratio}")
        if output not in ("boxes", "mask"):
            raise MedsslInputError("output", f"must be 'boxes' or 'mask', got {output!r}")
        self.threshold = None if threshold is None else float(threshold)
        self.min_fraction = float(min_fraction)
        self.max_components = int(max_components)
        self.expand_ratio = float(expand_ratio)
        self.output = output

    def params(self) -> dict[str, Any]:
        return {"threshold": self.threshold, "min_fraction": self.min_fraction,
                "max_components": self.max_components, "expand_ratio": self.expand_ratio, "output": self.output,
                "percentiles": list(PERCENTILES)}

    def localize(self, image: ImageData, prompt: str, context: dict[str, Any] | None = None) -> LocalizationResult:
        """ROI (H, W) bool of the lung fields of a 2D slice (array (H, W) or (H, W, C)).

        Raises:
            MedsslInputError: the image is not 2D.
        """
        arr = np.asarray(image.array)
        if image.meta.get("channels_last"):
            arr = arr.mean(axis=-1)
        if arr.ndim != 2:
            raise MedsslInputError(image.source or "image", f"ct-lung-fields works on 2D slices, got shape {arr.shape}")
        fields, body = lung_fields(arr, self.threshold, self.min_fraction, self.max_components)
        tight = component_boxes(fields)
        if self.output == "mask":
            roi, boxes = fields, tight
        else:
            boxes = [expand_box(b, self.expand_ratio, arr.shape) for b in tight]
            roi = boxes_to_mask(boxes, arr.shape)
        provenance = make_provenance(self, prompt, roi_source=CLASSICAL_ROI, n_components=len(tight),
                                     body_fraction=round(float(body.mean()), 6))
        return LocalizationResult(roi=roi, coarse_mask=fields, boxes=boxes, provenance=provenance)
