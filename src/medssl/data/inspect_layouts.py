"""``medssl data inspect`` summaries of the public 2D layouts: ImageFolder, COCO and images + masks.

Each function returns the summary lines of one layout and the problems found (never raising for content
problems; a folder that is not of the layout is the caller's concern):

* :func:`imagefolder_summary`: ``<root>/[<split>/]<class>/<image>``: images per class and split, image
  sizes (read from the file headers, (H, W) pixels), classes missing from a split.
* :func:`coco_summary`: ``<root>/images/`` + a COCO instances file: images, instances per category
  (name and id), segmentation encodings (RLE / polygons), crowd and unannotated images.
* :func:`masks_summary`: ``<root>/images/`` + ``<root>/masks/`` (matched by file name): mask values
  and their pixel counts over all masks, the :data:`~medssl.data.layouts.IGNORE_LABEL` fraction, the
  images that have ignore regions, unpaired files and mask / image size mismatches.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from medssl.data.layouts import IGNORE_LABEL, CocoDataset, imagefolder_files, strip_suffix
from medssl.errors import MedsslInputError

__all__ = ["coco_summary", "imagefolder_summary", "masks_summary"]


def _header_size(path: Path) -> tuple[int, int]:
    """(H, W) of a 2D image from its header (PIL formats) or its pixels (any other format)."""
    try:
        from PIL import Image

        with Image.open(path) as im:
            return int(im.size[1]), int(im.size[0])
    except (OSError, ValueError):
        from medssl.data.io import read_image

        shape = read_image(path).spatial_shape
        return int(shape[0]), int(shape[1])


def _size_lines(sizes: Iterable[tuple[int, int]]) -> list[str]:
    sizes = list(sizes)
    if not sizes:
        return []
    h = [s[0] for s in sizes]
    w = [s[1] for s in sizes]
    distinct = len(set(sizes))
    return [f"image sizes:  H {min(h)}-{max(h)}, W {min(w)}-{max(w)} pixels ({distinct} distinct (H, W))"]


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[k]) for r in [header, *rows]) for k in range(len(header))]
    return ["  " + "  ".join(c.ljust(widths[k]) if k == 0 else c.rjust(widths[k]) for k, c in enumerate(r))
            for r in [header, *rows]]


def imagefolder_summary(root: Path) -> tuple[list[str], list[str]]:
    """(summary lines, problems) of an ImageFolder root: classes × splits image counts and sizes."""
    tree = imagefolder_files(root)
    splits = list(tree)
    classes = sorted({c for per in tree.values() for c in per})
    problems = [f"{root / s}: no images of class {c!r} (present in another split)"
                for s in splits for c in classes if c not in tree[s]] if len(splits) > 1 else []
    names = [s or "images" for s in splits]
    rows = [[c, *(str(len(tree[s].get(c, []))) for s in splits)] for c in classes]
    rows.append(["total", *(str(sum(len(v) for v in tree[s].values())) for s in splits)])
    sizes: list[tuple[int, int]] = []
    for per in tree.values():
        for files in per.values():
            for path in files:
                try:
                    sizes.append(_header_size(path))
                except MedsslInputError as err:
                    problems.append(str(err))
    lines = [f"splits:       {', '.join(names) if splits != [''] else 'none (one folder per class)'}",
             f"classes:      {len(classes)} ({', '.join(classes)})",
             *_table(["class", *names], rows), *_size_lines(sizes)]
    return lines, problems


def _segmentation_kind(segmentation: object) -> str:
    if isinstance(segmentation, list):
        return "polygons" if segmentation else "none"
    if isinstance(segmentation, dict):
        return "RLE (compressed)" if isinstance(segmentation.get("counts"), str | bytes) else "RLE (uncompressed)"
    return "none"


def coco_summary(root: Path, annotation_json: Path) -> tuple[list[str], list[str]]:
    """(summary lines, problems) of a COCO dataset: categories with instance counts, encodings, images."""
    try:
        dataset = CocoDataset(root, annotation_json)
    except MedsslInputError as err:
        return [f"annotations:  {annotation_json}"], [str(err)]
    raw = json.loads(annotation_json.read_text(encoding="utf-8"))
    anns = [a for i in range(len(dataset)) for a in dataset.annotations(i)]
    per_cat = Counter(int(a["category_id"]) for a in anns)
    images_per_cat = {c: len({int(a["image_id"]) for a in anns if int(a["category_id"]) == c}) for c in per_cat}
    kinds = Counter(_segmentation_kind(a.get("segmentation")) for a in anns)
    unannotated = sum(1 for i in range(len(dataset)) if not dataset.annotations(i))
    rows = [[str(c.get("name", c["id"])), str(c["id"]), str(per_cat.get(int(c["id"]), 0)),
             str(images_per_cat.get(int(c["id"]), 0))] for c in dataset.categories]
    lines = [
        f"annotations:  {annotation_json}",
        f"images:       {len(dataset)} in {dataset.image_root} ({unannotated} without annotations)",
        f"instances:    {len(anns)} ({sum(bool(a.get('iscrowd', 0)) for a in anns)} crowd); segmentations: "
        + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())),
        f"categories:   {len(dataset.categories)}",
        *_table(["category", "id", "instances", "images"], rows),
        *_size_lines((int(im["height"]), int(im["width"])) for im in raw["images"]),
    ]
    return lines, []


def masks_summary(root: Path) -> tuple[list[str], list[str]]:
    """(summary lines, problems) of ``images/`` + ``masks/``: mask values, ignore fraction, pairing."""
    from medssl.data.io import read_image

    def index(folder: Path) -> dict[str, Path]:
        return {strip_suffix(p.name): p for p in sorted(folder.iterdir()) if p.is_file() and not p.name.startswith(".")}

    images, masks = index(root / "images"), index(root / "masks")
    problems = [f"{root / 'images' / images[n].name}: no mask in {root / 'masks'}" for n in images if n not in masks]
    problems += [f"{masks[n]}: mask without an image" for n in masks if n not in images]
    values: Counter[int] = Counter()
    with_ignore = 0
    sizes = []
    for name in sorted(set(images) & set(masks)):
        try:
            mask = np.asarray(read_image(masks[name]).array)
            size = _header_size(images[name])
        except MedsslInputError as err:
            problems.append(str(err))
            continue
        sizes.append(size)
        if mask.shape != size:
            problems.append(f"{masks[name]}: mask shape {mask.shape} differs from its image's {size}")
            continue
        found, counts = np.unique(mask, return_counts=True)
        values.update({int(v): int(c) for v, c in zip(found, counts, strict=True)})
        with_ignore += bool(IGNORE_LABEL in found)
    total = sum(values.values())
    shown = ", ".join(f"{v}: {c} ({c / total:.2%})" for v, c in sorted(values.items())) if total else "none"
    lines = [
        f"pairs:        {len(set(images) & set(masks))} image / mask pairs",
        f"mask values:  {shown}",
        f"ignore ({IGNORE_LABEL}): {values.get(IGNORE_LABEL, 0) / total if total else 0.0:.4%} of mask pixels, in "
        f"{with_ignore} masks (left out by losses and metrics)",
        *_size_lines(sizes),
    ]
    return lines, problems
