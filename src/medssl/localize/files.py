"""``files`` backend: ROI maps a user already has, one file per image, matched by name.

For an image ``.../<case>.<ext>`` the ROI map is ``<root>/<case>.<ext2>`` in any format medssl reads
(NIfTI, NRRD, PNG, NumPy, ...; the extensions may differ). The map must lie on the image grid (same
spatial shape; same affine when both files carry geometry); any nonzero voxel is inside the ROI.
The prompt does not change the result (it is recorded in the provenance).

Ground-truth boxes instead of map files (``boxes=<file.json>``, :mod:`medssl.localize.box_lists`): a
box list ``{"<image path relative to the dataset root>": [[x0, y0, x1, y1], ...]}`` (e.g.
``brain_mri_cls/boxes.json``) or a COCO instances file (its ``bbox`` entries, optionally of some
``categories``). The ROI is the union of the image's boxes; an image the file does not list gets an
empty ROI (``missing="empty"``, e.g. the no-tumour images of ``brain_mri_cls``) or is an error
(``missing="error"``). Such ROIs are labelled ``"oracle ROI"`` in the provenance (``roi_source``) and
in every table and preview.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from medssl.data.io import FORMAT_SUFFIXES, ImageData, read_image
from medssl.errors import MedsslInputError
from medssl.localize.base import ORACLE_ROI, LocalizationResult, make_provenance
from medssl.localize.postprocess import boxes_to_mask, component_boxes
from medssl.localize.structures import image_stem

#: Tolerance (mm) on affine entries when comparing a ROI map's geometry with its image's.
AFFINE_ATOL = 1e-3


def folder_fingerprint(root: Path) -> str:
    """sha256 (16 hex) of the names, sizes and modification times of the files in ``root``."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.iterdir() if p.is_file()):
        st = path.stat()
        digest.update(f"{path.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


class FilesLocalizer:
    """Read existing ROI maps from ``root`` (see the module docstring).

    Args:
        root: folder holding one ROI map per image, named like the image.
        boxes: instead of ``root``: a box-list or COCO JSON of ground-truth boxes.
        boxes_root: folder the box list's image paths are relative to (default: the JSON's folder).
        categories: COCO category names whose boxes count (default: all).
        missing: ``"empty"`` (an image the box file does not list gets an empty ROI) or ``"error"``.

    Raises:
        MedsslInputError: neither or both of ``root`` / ``boxes``, a missing folder or file, a bad box file.
    """

    name = "files"
    model_id: str | None = None
    model_revision: str | None = None

    def __init__(self, root: str | Path | None = None, boxes: str | Path | None = None,
                 boxes_root: str | Path | None = None, categories: list[str] | None = None,
                 missing: str = "empty") -> None:
        if (root is None) == (boxes is None):
            raise MedsslInputError("files", "give either root=<folder of ROI maps> or boxes=<box list or COCO JSON>")
        if missing not in ("empty", "error"):
            raise MedsslInputError("missing", f"must be 'empty' or 'error', got {missing!r}")
        self.missing = missing
        self.root = Path(root) if root is not None else None
        self.box_source = None
        if self.root is not None:
            if not self.root.is_dir():
                raise MedsslInputError(self.root, "ROI map folder does not exist")
            self._fingerprint = folder_fingerprint(self.root)
        else:
            from medssl.localize.box_lists import open_box_source
            from medssl.localize.cache import file_content_hash

            self.box_source = open_box_source(boxes, boxes_root, categories)  # type: ignore[arg-type]
            self._fingerprint = file_content_hash(self.box_source.path)[:16]

    def params(self) -> dict[str, Any]:
        """The folder or box file (absolute) and a fingerprint of its content, so edits change the cache key."""
        if self.box_source is None:
            return {"root": str(self.root.resolve()), "fingerprint": self._fingerprint}  # type: ignore[union-attr]
        src = self.box_source
        return {"boxes": str(src.path.resolve()), "kind": src.kind, "fingerprint": self._fingerprint,
                "boxes_root": str(src.root.resolve()) if src.kind == "box list" else None,
                "categories": None if src.categories is None else list(src.categories), "missing": self.missing}

    def find_map(self, image: ImageData) -> Path:
        """The ROI map file for ``image`` (matched on the file name without its format suffix).

        Raises:
            MedsslInputError: in-memory image, no matching file, or several matching files.
        """
        assert self.root is not None
        if not image.source:
            raise MedsslInputError(self.root, "cannot match an in-memory image to a ROI map file by name")
        stem = image_stem(image.source)
        found = [self.root / f"{stem}{suffix}" for suffixes in FORMAT_SUFFIXES.values() for suffix in suffixes
                 if (self.root / f"{stem}{suffix}").is_file()]
        if not found:
            raise MedsslInputError(image.source, f"no ROI map named '{stem}.*' in {self.root}")
        if len(found) > 1:
            raise MedsslInputError(image.source, f"several ROI maps match in {self.root}: "
                                                 f"{', '.join(p.name for p in found)}")
        return found[0]

    def localize(self, image: ImageData, prompt: str, context: dict[str, Any] | None = None) -> LocalizationResult:
        """ROI (H, W[, D]) bool = nonzero voxels of the image's ROI map file.

        ``context["roi_file"]`` overrides the file found by name.

        Raises:
            MedsslInputError: missing, ambiguous, unreadable or mismatched ROI map.
        """
        if self.box_source is not None:
            return self._from_boxes(image, prompt)
        path = Path(context["roi_file"]) if context and context.get("roi_file") else self.find_map(image)
        roi_map = read_image(path)
        shape = image.spatial_shape
        if roi_map.meta.get("channels_last"):
            raise MedsslInputError(path, f"a ROI map must have one channel, got a colour image {roi_map.array.shape}")
        if roi_map.array.shape != shape:
            raise MedsslInputError(path, f"ROI map shape {roi_map.array.shape} does not match the image shape "
                                         f"{shape} of {image.source or 'the image'}")
        if (image.meta.get("has_geometry", True) and roi_map.meta.get("has_geometry", True)
                and not np.allclose(image.affine, roi_map.affine, atol=AFFINE_ATOL)):
            raise MedsslInputError(path, f"ROI map geometry (affine) does not match {image.source or 'the image'}")
        roi = np.asarray(roi_map.array) != 0
        provenance = make_provenance(self, prompt, roi_file=str(path))
        return LocalizationResult(roi=roi, boxes=component_boxes(roi), provenance=provenance)

    def _from_boxes(self, image: ImageData, prompt: str) -> LocalizationResult:
        """ROI (H, W) bool = union of the image's ground-truth boxes (see the module docstring)."""
        src = self.box_source
        assert src is not None
        boxes = src.boxes(image)
        if boxes is None and self.missing == "error":
            raise MedsslInputError(image.source, f"not listed in the box file {src.path}")
        roi = boxes_to_mask(boxes or [], image.spatial_shape)
        provenance = make_provenance(self, prompt, roi_source=ORACLE_ROI, boxes_file=str(src.path),
                                     listed=boxes is not None, n_boxes=len(boxes or []))
        return LocalizationResult(roi=roi, boxes=list(boxes or []), provenance=provenance)
