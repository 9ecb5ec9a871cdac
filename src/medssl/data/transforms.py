"""Training augmentations for left-atrium volumes (numpy, seeded by an ``np.random.Generator``).

All functions take an image and its label (or None for an unlabeled sample) with the same spatial
shape, spatial axes first ((H, W, D) volumes; 2D (H, W) works too), apply the same geometric
operation to both and return new contiguous arrays (inputs are never modified, so cached,
read-only arrays are fine). Padding is with zeros for both image and label.

Random crop and centre crop pad an axis shorter than the patch by ``(patch - dim) // 2 + 3`` voxels
on each side first, as the left-atrium reference pipeline does; crop offsets are then drawn
uniformly over every valid position ``[0, dim - patch]`` of the (padded) axis.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _check(image: np.ndarray, label: np.ndarray | None) -> None:
    if label is not None and label.shape != image.shape:
        raise ValueError(f"label shape {label.shape} differs from image shape {image.shape}")


def _out(image: np.ndarray, label: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    return np.array(image, copy=True, order="C"), None if label is None else np.array(label, copy=True, order="C")


def random_rot_flip(
    image: np.ndarray, label: np.ndarray | None, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray | None]:
    """Rotate by ``k * 90`` degrees in the (0, 1) plane, k uniform in {0, 1, 2, 3}, then flip along
    axis 0 or axis 1 (uniformly chosen; a flip always happens). Because the flip is not optional,
    the result is always one of the 4 reflections of the (0, 1) plane (each drawn with probability
    1/4), never a pure rotation. Shapes: (H, W[, D]) in, (H, W[, D]) or (W, H[, D]) out.
    """
    _check(image, label)
    k = int(rng.integers(0, 4))
    axis = int(rng.integers(0, 2))
    image = np.flip(np.rot90(image, k, axes=(0, 1)), axis=axis)
    if label is not None:
        label = np.flip(np.rot90(label, k, axes=(0, 1)), axis=axis)
    return _out(image, label)


def pad_to_patch(
    image: np.ndarray, label: np.ndarray | None, patch: Sequence[int]
) -> tuple[np.ndarray, np.ndarray | None, tuple[int, ...]]:
    """Zero-pad every axis shorter than ``patch`` by ``(patch - dim) // 2 + 3`` voxels on both sides.

    Returns:
        (image, label, pads) with ``pads[a]`` the voxels added before (and after) axis ``a``.
    """
    _check(image, label)
    if len(patch) != image.ndim:
        raise ValueError(f"patch {tuple(patch)} has {len(patch)} axes, image has {image.ndim}")
    pads = tuple((int(p) - d) // 2 + 3 if d < int(p) else 0 for d, p in zip(image.shape, patch, strict=True))
    if any(pads):
        width = [(q, q) for q in pads]
        image = np.pad(image, width, mode="constant", constant_values=0)
        if label is not None:
            label = np.pad(label, width, mode="constant", constant_values=0)
    return image, label, pads


def _crop(image: np.ndarray, label: np.ndarray | None, start: Sequence[int], patch: Sequence[int]):
    region = tuple(slice(s, s + int(p)) for s, p in zip(start, patch, strict=True))
    return _out(image[region], None if label is None else label[region])


def random_crop(
    image: np.ndarray, label: np.ndarray | None, patch: Sequence[int], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray | None]:
    """A random ``patch``-sized crop (after :func:`pad_to_patch`); offsets uniform in [0, dim - patch]
    per axis, drawn in axis order. Shapes: (H, W, D) in, ``patch`` out.
    """
    image, label, _ = pad_to_patch(image, label, patch)
    start = [int(rng.integers(0, d - int(p), endpoint=True)) for d, p in zip(image.shape, patch, strict=True)]
    return _crop(image, label, start, patch)


def center_crop(
    image: np.ndarray, label: np.ndarray | None, patch: Sequence[int]
) -> tuple[np.ndarray, np.ndarray | None]:
    """The central ``patch``-sized crop (after :func:`pad_to_patch`); offset ``round((dim - patch) / 2)``
    per axis (Python rounding, halves to even). Shapes: (H, W, D) in, ``patch`` out.
    """
    image, label, _ = pad_to_patch(image, label, patch)
    start = [int(round((d - int(p)) / 2)) for d, p in zip(image.shape, patch, strict=True)]
    return _crop(image, label, start, patch)


class LeftAtriumAugment:
    """The left-atrium training augmentation: :func:`random_rot_flip`, then :func:`random_crop`.

    Args:
        patch: crop size in voxels, e.g. (112, 112, 80).
        rng: default generator; ``__call__`` may receive a per-sample generator instead (e.g. one
            seeded with :func:`medssl.data.samplers.sample_seed`, which makes augmentation a pure
            function of the iteration).
    """

    def __init__(self, patch: Sequence[int], rng: np.random.Generator | None = None) -> None:
        self.patch = tuple(int(p) for p in patch)
        if any(p < 1 for p in self.patch):
            raise ValueError(f"patch sizes must be positive, got {self.patch}")
        self.rng = rng if rng is not None else np.random.default_rng()

    def __call__(
        self, image: np.ndarray, label: np.ndarray | None, rng: np.random.Generator | None = None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Augment one (H, W, D) image and label; returns ``patch``-shaped arrays."""
        rng = self.rng if rng is None else rng
        image, label = random_rot_flip(image, label, rng)
        return random_crop(image, label, self.patch, rng)
