"""COCO annotations as a ROI source: one image's instances by category, as masks or boxes.

Shared by the ``structures`` backend (named masks: categories are the structure names) and the ``files``
backend (ground-truth boxes). An image is matched to its COCO entry by its path relative to the
dataset's image root (:attr:`medssl.data.layouts.CocoDataset.image_root`), else by its file name when
that is unique in the annotation file.

Coordinate conventions: COCO boxes are ``[x, y, w, h]`` in continuous pixel coordinates (pixel
``(row r, column c)`` covers ``[c, c + 1) x [r, r + 1)``); :func:`pixel_box` turns an ``(x0, y0, x1, y1)``
box into the voxel box ``((floor(y0), ceil(y1)), (floor(x0), ceil(x1)))`` (rows first, half-open) of
every pixel it touches, clipped to the image.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

from medssl.data.io import ImageData
from medssl.data.layouts import CocoDataset
from medssl.errors import MedsslInputError
from medssl.localize.postprocess import Box

__all__ = ["coco_dataset", "coco_image_index", "category_masks", "pixel_box", "image_boxes"]


@lru_cache(maxsize=8)
def _load(path: str, root: str, stamp: int) -> CocoDataset:
    return CocoDataset(Path(root), Path(path))


def coco_dataset(annotation_json: str | Path, root: str | Path | None = None) -> CocoDataset:
    """The parsed (and validated) COCO file, kept in memory while the file is unchanged.

    ``root``: the image root (default: the dataset folder of ``<root>/annotations/<file>.json``, else the
    annotation file's folder).
    """
    path = Path(annotation_json)
    if not path.is_file():
        raise MedsslInputError(path, "COCO annotation file not found")
    if root is None:
        root = path.parent.parent if path.parent.name == "annotations" else path.parent
    return _load(str(path.resolve()), str(Path(root).resolve()), path.stat().st_mtime_ns)


def coco_image_index(dataset: CocoDataset, image: ImageData) -> int:
    """Index of ``image`` (by its source path) in ``dataset``.

    Raises:
        MedsslInputError: an in-memory image, or no (or an ambiguous) entry for the file.
    """
    if not image.source:
        raise MedsslInputError(dataset.annotation_json, "cannot match an in-memory image to a COCO entry")
    source = Path(os.path.abspath(image.source))  # symbolic links are not followed
    names = [str(im["file_name"]).replace("\\", "/") for im in dataset.images]
    try:
        relative = source.relative_to(os.path.abspath(dataset.image_root)).as_posix()
    except ValueError:
        relative = None
    if relative is not None and relative in names:
        return names.index(relative)
    same = [i for i, n in enumerate(names) if Path(n).name == source.name]
    if len(same) == 1:
        return same[0]
    problem = "no entry" if not same else f"{len(same)} entries"
    raise MedsslInputError(image.source, f"{problem} for this image in {dataset.annotation_json}")


def _check_size(dataset: CocoDataset, i: int, image: ImageData) -> tuple[int, int]:
    info = dataset.images[i]
    size = (int(info["height"]), int(info["width"]))
    if tuple(image.spatial_shape) != size:
        raise MedsslInputError(image.source or "image", f"image shape {image.spatial_shape} differs from the "
                               f"{size[0]}x{size[1]} (HxW) of its entry in {dataset.annotation_json}")
    return size


def category_masks(dataset: CocoDataset, image: ImageData, category_ids: Sequence[int]) -> np.ndarray:
    """Union (H, W) bool of the image's instance masks of ``category_ids`` (all False when it has none).

    Raises:
        MedsslInputError: no entry for the image, a size mismatch, or an instance without a segmentation.
    """
    i = coco_image_index(dataset, image)
    height, width = _check_size(dataset, i, image)
    out = np.zeros((height, width), dtype=bool)
    wanted = {int(c) for c in category_ids}
    for ann in dataset.annotations(i):
        if int(ann["category_id"]) not in wanted:
            continue
        if not ann.get("segmentation"):
            raise MedsslInputError(dataset.annotation_json, f"annotation {ann.get('id')}: no segmentation")
        out |= dataset.instance_mask(ann, height, width) != 0
    return out


def pixel_box(x0: float, y0: float, x1: float, y1: float, shape: Sequence[int]) -> Box:
    """Voxel box ((row lo, row hi), (col lo, col hi)), half-open, of the pixels an ``(x0, y0, x1, y1)`` box touches."""
    rows = (max(0, math.floor(y0)), min(int(shape[0]), math.ceil(y1)))
    cols = (max(0, math.floor(x0)), min(int(shape[1]), math.ceil(x1)))
    return (rows, cols)


def image_boxes(dataset: CocoDataset, image: ImageData, category_ids: Sequence[int] | None = None) -> list[Box]:
    """Voxel boxes (see :func:`pixel_box`) of the image's instances (of ``category_ids``; None: all)."""
    i = coco_image_index(dataset, image)
    shape = _check_size(dataset, i, image)
    out = []
    for ann in dataset.annotations(i):
        if category_ids is None or int(ann["category_id"]) in set(category_ids):
            x, y, w, h = (float(v) for v in ann["bbox"])
            out.append(pixel_box(x, y, x + w, y + h, shape))
    return out
