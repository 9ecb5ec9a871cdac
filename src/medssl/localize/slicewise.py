"""3D volumes through a 2D localizer: slice by slice, then one 3D ROI from the stacked masks.

For a volume (H, W, D) and a slice ``axis`` (default 2, the last axis):

1. every ``stride``-th slice (indices 0, stride, 2·stride, ...) is localized by the 2D backend; a slice
   that is not run takes the masks and saliency of the nearest run slice (the lower one on a tie), so
   a structure seen on neighbouring run slices stays one connected component;
2. the per-slice masks are stacked back along ``axis``: the refined (SAM) masks when the backend made
   them, else the coarse (binarised saliency) masks, else the per-slice ROI maps;
3. 3D connected components of that stack → the ``components`` largest → one 3D box each → expansion by
   ``expand_ratio`` about the centre → ROI = union of the filled 3D boxes.

Boxes follow :mod:`medssl.localize.postprocess`: per-axis half-open ``(min, max)`` voxel pairs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from medssl.components import largest_components
from medssl.data.io import ImageData, affine_from_spacing
from medssl.errors import MedsslInputError
from medssl.localize.base import LocalizationResult, Localizer, make_provenance
from medssl.localize.postprocess import boxes_to_mask, component_boxes, expand_box


def check_slicewise_params(axis: int, stride: int, components: int, expand_ratio: float) -> int:
    """Validate the slice-wise settings; returns ``axis`` as 0, 1 or 2.

    Raises:
        MedsslInputError: a value out of range.
    """
    if int(axis) not in (-3, -2, -1, 0, 1, 2):
        raise MedsslInputError("slice_axis", f"must be 0, 1 or 2 for a 3D volume, got {axis}")
    if int(stride) < 1:
        raise MedsslInputError("slice_stride", f"must be >= 1, got {stride}")
    if int(components) < 1:
        raise MedsslInputError("components", f"must be >= 1, got {components}")
    if not expand_ratio > 0:
        raise MedsslInputError("expand_ratio", f"must be positive, got {expand_ratio}")
    return int(axis) % 3


def slice_image(image: ImageData, axis: int, index: int) -> ImageData:
    """Slice ``index`` along ``axis`` of a volume (H, W, D) as a 2D image (spacing of the other two axes)."""
    spacing = tuple(float(s) for i, s in enumerate(image.spacing) if i != axis)
    return ImageData(array=np.take(image.array, index, axis=axis), affine=affine_from_spacing(spacing),
                     spacing=spacing, source=image.source,
                     meta={"has_geometry": False, "slice_axis": axis, "slice_index": index})


def run_slices(depth: int, stride: int) -> list[int]:
    """Indices of the slices that are localized: 0, stride, 2·stride, ... below ``depth``."""
    return list(range(0, depth, stride))


def nearest_run_slice(depth: int, run: list[int]) -> list[int]:
    """For every slice index below ``depth``, the nearest index in ``run`` (the lower one on a tie)."""
    ran = np.asarray(run)
    return [int(ran[np.argmin(np.abs(ran - d))]) for d in range(depth)]


def _mask_of(result: LocalizationResult, kind: str) -> np.ndarray | None:
    return {"refined_mask": result.refined_mask, "coarse_mask": result.coarse_mask, "roi": result.roi}[kind]


def slicewise_localize(inner: Localizer, image: ImageData, prompt: str, context: dict[str, Any] | None = None, *,
                       axis: int = 2, stride: int = 1, components: int = 1, expand_ratio: float = 1.0,
                       connectivity: int | None = None, provenance_of: Localizer | None = None) -> LocalizationResult:
    """Localize a volume (H, W, D) slice by slice with the 2D ``inner`` backend (see the module docstring).

    Args:
        inner: a 2D localizer; called with each slice (an :class:`ImageData` (H', W')) and ``context``
            plus ``"slice_axis"`` / ``"slice_index"``.
        axis, stride: slice axis and step between localized slices.
        components: 3D components kept; expand_ratio: box scale about the centre.
        connectivity: 3D component neighbourhood (1 = faces ... 3 = full, the default).
        provenance_of: the localizer named in the provenance (default ``inner``).

    Returns:
        A 3D result: ``roi``, ``boxes`` (3D), and the stacked per-slice ``saliency``, ``coarse_mask`` and
        ``refined_mask`` where the backend made them. Provenance extras: ``slice_axis``, ``slice_stride``,
        ``slices_run``, ``slices_with_mask``, ``mask_used``, ``slice_empty_at`` (count of run slices per
        step at which they became empty), ``n_components``, ``empty_at`` (``None``, or ``"slices"`` when
        no slice found anything).
    """
    axis = check_slicewise_params(axis, stride, components, expand_ratio)
    shape = image.spatial_shape
    if len(shape) != 3:
        raise MedsslInputError(image.source or "image", f"slice-wise localization needs a 3D volume, got {shape}")
    depth = shape[axis]
    if depth == 0 or 0 in shape:
        raise MedsslInputError(image.source or "image", f"empty volume {shape}")
    run = run_slices(depth, stride)
    results: dict[int, LocalizationResult] = {}
    for index in run:
        ctx = {**(context or {}), "slice_axis": axis, "slice_index": index}
        results[index] = inner.localize(slice_image(image, axis, index), prompt, ctx)
    kinds = ("refined_mask", "coarse_mask", "roi")
    mask_used = next(k for k in kinds if all(_mask_of(r, k) is not None for r in results.values()))
    source_of = nearest_run_slice(depth, run)

    def stacked(plane: Callable[[LocalizationResult], np.ndarray | None], dtype: Any) -> np.ndarray | None:
        if any(plane(r) is None for r in results.values()):
            return None
        return np.stack([np.asarray(plane(results[s]), dtype=dtype) for s in source_of], axis=axis)

    chosen = np.stack([np.asarray(_mask_of(results[s], mask_used), dtype=bool) for s in source_of], axis=axis)
    kept = largest_components(chosen, components, connectivity)
    boxes = [expand_box(b, expand_ratio, shape) for b in component_boxes(kept, connectivity)]
    roi = boxes_to_mask(boxes, shape)
    empty_counts: dict[str, int] = {}
    for r in results.values():
        step = r.provenance.get("empty_at")
        if step:
            empty_counts[str(step)] = empty_counts.get(str(step), 0) + 1
    provenance = make_provenance(
        provenance_of if provenance_of is not None else inner, prompt,
        slice_axis=axis, slice_stride=int(stride), slices_run=len(run),
        slices_with_mask=sum(1 for r in results.values() if np.any(_mask_of(r, mask_used))),
        mask_used=mask_used, slice_empty_at=empty_counts, n_components=len(boxes),
        empty_at=None if boxes else "slices",
    )
    return LocalizationResult(roi=roi, saliency=stacked(lambda r: r.saliency, np.float32),
                              coarse_mask=stacked(lambda r: r.coarse_mask, bool),
                              refined_mask=stacked(lambda r: r.refined_mask, bool), boxes=boxes, provenance=provenance)


class SliceWiseLocalizer:
    """Any 2D localizer applied to 3D volumes slice by slice (see the module docstring).

    2D images go straight to ``inner``. ``name`` is ``"<inner name>/slicewise"``; ``model_id`` and
    ``model_revision`` are the inner backend's; :meth:`params` holds the slice-wise settings and the
    inner backend's parameters.

    Args:
        inner: the 2D localizer.
        axis: slice axis of the volume (0, 1 or 2).
        stride: localize every ``stride``-th slice.
        components: 3D components kept (the largest).
        expand_ratio: 3D box scale about its centre.
        connectivity: 3D component neighbourhood (1 = faces ... 3 = full, the default).
    """

    def __init__(self, inner: Localizer, axis: int = 2, stride: int = 1, components: int = 1,
                 expand_ratio: float = 1.0, connectivity: int | None = None) -> None:
        self.axis = check_slicewise_params(axis, stride, components, expand_ratio)
        self.inner = inner
        self.stride = int(stride)
        self.components = int(components)
        self.expand_ratio = float(expand_ratio)
        self.connectivity = connectivity

    @property
    def name(self) -> str:
        return f"{self.inner.name}/slicewise"

    @property
    def model_id(self) -> str | None:
        return self.inner.model_id

    @property
    def model_revision(self) -> str | None:
        return self.inner.model_revision

    def params(self) -> dict[str, Any]:
        return {"axis": self.axis, "stride": self.stride, "components": self.components,
                "expand_ratio": self.expand_ratio, "connectivity": self.connectivity,
                "inner_backend": self.inner.name, "inner": self.inner.params()}

    def localize(self, image: ImageData, prompt: str, context: dict[str, Any] | None = None) -> LocalizationResult:
        """ROI of ``image``: (H, W, D) volumes slice by slice, 2D images by the inner backend directly."""
        if len(image.spatial_shape) != 3:
            return self.inner.localize(image, prompt, context)
        return slicewise_localize(self.inner, image, prompt, context, axis=self.axis, stride=self.stride,
                                  components=self.components, expand_ratio=self.expand_ratio,
                                  connectivity=self.connectivity, provenance_of=self)
