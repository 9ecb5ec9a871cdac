"""Resampling of whole segmentation datasets (e.g. 2x downsampled volumes for CPU experiments)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from medssl.data.spec import SegmentationCase, VolumeDataset


def zoom_image(image: np.ndarray, factor: float) -> np.ndarray:
    """Resample an image (H, W[, D]) by ``factor`` per axis with linear interpolation (float32).

    The one image resampling of medssl: training volumes (:func:`zoom_case`) and scans predicted by a
    run trained on resampled volumes go through it, so the network sees the same grid in both.
    """
    return ndimage.zoom(np.asarray(image, dtype=np.float32), factor, order=1).astype(np.float32)


def zoom_probabilities_to(probs: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Resample class probabilities [C, *grid] linearly onto a grid of ``shape`` (the source grid).

    Linear interpolation of probabilities keeps them in [0, 1] and summing to one per voxel; the
    factors ``shape / grid`` per axis undo :func:`zoom_image` exactly in shape.
    """
    probs = np.asarray(probs, dtype=np.float32)
    if tuple(probs.shape[1:]) == tuple(shape):
        return probs
    factors = [1.0] + [a / b for a, b in zip(shape, probs.shape[1:], strict=True)]
    out = ndimage.zoom(probs, factors, order=1).astype(np.float32)
    if tuple(out.shape[1:]) != tuple(shape):  # guard against a rounding surprise of ndimage.zoom
        raise ValueError(f"resampling gave {out.shape[1:]}, expected {tuple(shape)}")
    return out


def zoom_case(case: SegmentationCase, factor: float) -> SegmentationCase:
    """Resample a case by ``factor`` per spatial axis (0.5 = half the voxels per axis).

    The image is interpolated linearly, the label with nearest neighbour; spacing and affine are
    scaled so that world coordinates stay the same (up to the half-voxel shift of the grid).
    """
    if factor == 1.0:
        return case
    image = zoom_image(case.image, factor)
    label = None if case.label is None else ndimage.zoom(case.label, factor, order=0).astype(np.uint8)
    scales = [a / b for a, b in zip(case.image.shape, image.shape, strict=True)]
    affine = case.affine.copy()
    for axis, s in enumerate(scales[:3]):
        affine[:3, axis] *= s
    spacing = tuple(float(sp * s) for sp, s in zip(case.spacing, scales, strict=True))
    return SegmentationCase(image=image, label=label, affine=affine, spacing=spacing,
                            case_id=case.case_id, source=case.source)


class ZoomedDataset:
    """A :class:`~medssl.data.spec.VolumeDataset` view of ``base`` resampled by ``factor`` (cached)."""

    def __init__(self, base: VolumeDataset, factor: float, cache: bool = True) -> None:
        if not 0 < factor <= 4:
            raise ValueError(f"zoom factor must be in (0, 4], got {factor}")
        self.base, self.factor, self.cache = base, float(factor), cache
        self.case_ids = list(base.case_ids)
        self._cache: dict[int, SegmentationCase] = {}

    def __len__(self) -> int:
        return len(self.base)

    def load(self, i: int) -> SegmentationCase:
        if i in self._cache:
            return self._cache[i]
        case = zoom_case(self.base.load(i), self.factor)
        if self.cache:
            self._cache[i] = case
        return case
