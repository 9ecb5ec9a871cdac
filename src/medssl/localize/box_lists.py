"""Ground-truth box lists for the ``files`` backend: a ``boxes.json`` table or a COCO instances file.

A box list is a JSON object ``{"<image path relative to the dataset root>": [[x0, y0, x1, y1], ...]}``
with boxes in pixels of the stored image (x = column, y = row, continuous coordinates, ``x0 < x1``,
``y0 < y1``), e.g. ``brain_mri_cls/boxes.json``. A COCO instances file (``images`` / ``annotations`` /
``categories``) gives its ``bbox`` entries (optionally of some categories only).

Boxes become voxel boxes with :func:`medssl.localize.coco.pixel_box`: rows first, half-open, every pixel
the box touches.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from medssl.data.io import ImageData
from medssl.errors import MedsslInputError
from medssl.localize.coco import coco_dataset, image_boxes, pixel_box
from medssl.localize.postprocess import Box

__all__ = ["BoxSource", "open_box_source", "read_box_list"]


def read_box_list(path: Path) -> dict[str, list[tuple[float, float, float, float]]]:
    """``{relative image path: [(x0, y0, x1, y1), ...]}`` of a box-list JSON (paths with ``/``).

    Raises:
        MedsslInputError: not JSON, not a mapping of lists of 4 numbers, or an empty / inverted box.
    """
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise MedsslInputError(path, f"cannot read the box list ({exc.__class__.__name__}: {exc})") from None
    if not isinstance(raw, dict):
        raise MedsslInputError(path, "a box list is a JSON object {image path: [[x0, y0, x1, y1], ...]}")
    out: dict[str, list[tuple[float, float, float, float]]] = {}
    for name, boxes in raw.items():
        if not isinstance(boxes, list):
            raise MedsslInputError(path, f"{name}: expected a list of [x0, y0, x1, y1] boxes")
        parsed = []
        for box in boxes:
            if not (isinstance(box, list) and len(box) == 4
                    and all(isinstance(v, int | float) and not isinstance(v, bool) for v in box)):
                raise MedsslInputError(path, f"{name}: box {box!r} is not [x0, y0, x1, y1] (four numbers)")
            x0, y0, x1, y1 = (float(v) for v in box)
            if not (x0 < x1 and y0 < y1):
                raise MedsslInputError(path, f"{name}: box {box!r} is empty or inverted (needs x0 < x1, y0 < y1)")
            parsed.append((x0, y0, x1, y1))
        out[str(name).replace("\\", "/")] = parsed
    return out


def _is_coco(path: Path) -> bool:
    try:
        with open(path, encoding="utf-8") as fh:
            head = fh.read(1 << 16)
    except OSError as exc:
        raise MedsslInputError(path, f"cannot read the box file ({exc.__class__.__name__})") from None
    return '"annotations"' in head and '"images"' in head


@dataclass
class BoxSource:
    """Ground-truth boxes per image from a box list or a COCO file.

    Attributes:
        path: the JSON file.
        kind: ``"box list"`` or ``"COCO boxes"``.
        root: folder the box list's image paths are relative to (box lists only).
        categories: COCO category names to keep (None: all).
    """

    path: Path
    kind: str
    root: Path
    categories: tuple[str, ...] | None = None

    def boxes(self, image: ImageData) -> list[Box] | None:
        """Voxel boxes of ``image`` ((H, W) grid); None when the file does not list the image.

        Raises:
            MedsslInputError: an in-memory image, or unknown COCO category names.
        """
        if not image.source:
            raise MedsslInputError(self.path, "cannot match an in-memory image to its boxes by name")
        shape = image.spatial_shape
        if self.kind == "COCO boxes":
            dataset = coco_dataset(self.path)
            ids = None
            if self.categories is not None:
                by_name = {str(c.get("name")): int(c["id"]) for c in dataset.categories}
                unknown = [c for c in self.categories if c not in by_name]
                if unknown:
                    raise MedsslInputError(self.path, f"no categories named {', '.join(unknown)} "
                                                      f"(has {', '.join(by_name)})")
                ids = [by_name[c] for c in self.categories]
            return image_boxes(dataset, image, ids)
        try:
            key = Path(os.path.abspath(image.source)).relative_to(os.path.abspath(self.root)).as_posix()
        except ValueError:
            raise MedsslInputError(image.source, f"image is not under the box list's root {self.root}") from None
        table = _box_table(str(self.path), self.path.stat().st_mtime_ns)
        if key not in table:
            return None
        return [pixel_box(*box, shape) for box in table[key]]


_TABLES: dict[tuple[str, int], dict[str, list[tuple[float, float, float, float]]]] = {}


def _box_table(path: str, stamp: int) -> dict[str, list[tuple[float, float, float, float]]]:
    if (path, stamp) not in _TABLES:
        _TABLES.clear()
        _TABLES[(path, stamp)] = read_box_list(Path(path))
    return _TABLES[(path, stamp)]


def open_box_source(path: str | Path, root: str | Path | None = None,
                    categories: Sequence[str] | None = None) -> BoxSource:
    """A :class:`BoxSource` for a box-list or COCO JSON (checked now, so errors come before any image).

    Args:
        path: the JSON file.
        root: folder the box list's paths are relative to (default: the file's folder).
        categories: COCO category names to keep (COCO files only).
    """
    path = Path(path)
    if not path.is_file():
        raise MedsslInputError(path, "box file not found")
    if _is_coco(path):
        coco_dataset(path)
        return BoxSource(path, "COCO boxes", path.parent, None if categories is None else tuple(categories))
    if categories is not None:
        raise MedsslInputError(path, "categories apply to COCO files, not to a box list")
    _box_table(str(path), path.stat().st_mtime_ns)
    return BoxSource(path, "box list", Path(root) if root is not None else path.parent)
