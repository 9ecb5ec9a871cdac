"""Writing a synthetic dataset to disk in the generic ``images/`` + ``labels/`` layout.

Layout of ``<out>`` (names are case ids such as ``case_0000``)::

    dataset.json               name, version, seed, n, shape, spacing_mm, description, structures,
                               label_structures, classes, generator_parameters
    images/<case>.nii.gz       3D: float32, affine diag(spacing_mm)   | 2D: images/<case>.png, uint8
    labels/<case>.nii.gz       uint8 {0, 1} target                    | labels/<case>.png
    structures/<case>.nii.gz   uint8 map of named structures          | structures/<case>.png
    structures.json            {"1": "<name>", ...}, the same ids for every case
    train.list, test.list      case ids, one per line (the last 20 %, at least one, are test)
    classes.csv                (sets with classes) image,label,split; image relative to <out>
    annotations.json           (2D sets with instances) COCO instances, file_name relative to <out>

The set is generated into a hidden temporary sibling of ``<out>`` and renamed into place at the end,
so an interrupted or failed run leaves nothing partial behind.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medssl.data.io import affine_from_spacing, write_nifti, write_png
from medssl.data.synthetic._common import (
    bbox_xywh,
    case_id,
    case_seeds,
    class_of_case,
    coco_rle,
    split_case_ids,
)
from medssl.errors import MedsslInputError
from medssl.runtime.atomic import write_json_atomic, write_text_atomic
from medssl.runtime.progress import progress_bar

#: A case generator: ``(rng, class name or None) -> case dict`` (see :class:`SyntheticDataset`).
CaseFn = Callable[[np.random.Generator, "str | None"], dict[str, Any]]


@dataclass(frozen=True)
class SyntheticDataset:
    """Description of one embedded synthetic dataset.

    Attributes:
        name: registry name (``atrium3d``, ``brain2d``, ...).
        version: generator version; bumped whenever the same seed would produce different files.
        description: one paragraph for ``dataset.json``.
        ndim: 2 (PNG images) or 3 (NIfTI volumes).
        shape: default image shape (H, W[, D]) in voxels.
        spacing_mm: voxel size (mm) for ``shape``; :attr:`spacing_for` scales it for other shapes.
        structures: names of the structure ids 1, 2, ... in order.
        label_structures: the structures whose union is the binary target in ``labels/``.
        classes: class names (empty: no classification labels).
        coco_categories: COCO category names (empty: no ``annotations.json``).
        parameters: generator parameters recorded in ``dataset.json``.
        case_factory: ``(shape, spacing_mm) -> CaseFn``; loads shared resources once and returns the
            per-case generator. A case dict holds ``image`` (float32 3D / uint8 2D), ``label`` (uint8),
            ``structures`` (uint8), and when relevant ``class`` (str) and ``instances``
            (list of ``(category name, bool mask (H, W))``).
    """

    name: str
    version: str
    description: str
    ndim: int
    shape: tuple[int, ...]
    spacing_mm: tuple[float, ...]
    structures: tuple[str, ...]
    label_structures: tuple[str, ...]
    case_factory: Callable[[tuple[int, ...], tuple[float, ...]], CaseFn]
    classes: tuple[str, ...] = ()
    coco_categories: tuple[str, ...] = ()
    parameters: Mapping[str, Any] = field(default_factory=dict)

    def spacing_for(self, shape: tuple[int, ...]) -> tuple[float, ...]:
        """Voxel size (mm) that keeps the default field of view for another ``shape``."""
        return tuple(float(sp * s0 / s) for sp, s0, s in zip(self.spacing_mm, self.shape, shape, strict=True))

    @property
    def extension(self) -> str:
        """File extension of images, labels and structure maps."""
        return ".nii.gz" if self.ndim == 3 else ".png"


def check_output_folder(out: Path, overwrite: bool) -> None:
    """Raise MedsslInputError unless ``out`` is absent, an empty folder, or ``overwrite`` is set."""
    if out.exists() and not out.is_dir():
        raise MedsslInputError(out, "exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise MedsslInputError(out, "folder is not empty (pass --overwrite to replace it)")


def _replace_folder(tmp: Path, out: Path) -> None:
    """Move the finished folder ``tmp`` onto ``out``, replacing an existing ``out``."""
    if not out.exists():
        os.replace(tmp, out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
    os.replace(out, old)  # onto the empty folder just made
    try:
        os.replace(tmp, out)
    except BaseException:
        os.replace(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def synthesize_dataset(spec: SyntheticDataset, out: str | Path, n: int, seed: int, overwrite: bool = False,
                       shape: tuple[int, ...] | None = None, quiet: bool = True) -> Path:
    """Generate ``n`` cases of ``spec`` from ``seed`` and write them under ``out`` (layout above).

    The same ``(spec, n, seed, shape)`` writes byte-identical files; case ``i`` comes from child seed
    ``i`` of ``SeedSequence(seed)`` and is the same for every ``n > i``. ``quiet=False`` shows a
    progress bar.
    """
    out = Path(out)
    if n < 2:
        raise MedsslInputError("--n", f"needs at least 2 cases (one train, one test), got {n}")
    if seed < 0:
        raise MedsslInputError("--seed", f"must be a non-negative integer, got {seed}")
    shape = spec.shape if shape is None else tuple(int(s) for s in shape)
    if len(shape) != spec.ndim or min(shape) < 16:
        raise MedsslInputError(spec.name, f"shape must be {spec.ndim} sizes of at least 16 voxels, got {shape}")
    check_output_folder(out, overwrite)
    spacing = spec.spacing_for(shape)
    generate = spec.case_factory(shape, spacing)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        ids = [case_id(i) for i in range(n)]
        train, test = split_case_ids(ids)
        split_of = {**{cid: "train" for cid in train}, **{cid: "test" for cid in test}}
        ext = spec.extension
        class_rows: list[tuple[str, str, str]] = []
        coco = _CocoBuilder(spec.coco_categories)
        with progress_bar(n, f"synthesize {spec.name}", quiet=quiet) as bar:
            for i, child in enumerate(case_seeds(seed, n)):
                cid = ids[i]
                cls = class_of_case(seed, i, spec.classes) if spec.classes else None
                case = generate(np.random.default_rng(child), cls)
                _write_case(tmp, cid, case, ext, spacing)
                if spec.classes:
                    class_rows.append((f"images/{cid}{ext}", str(case["class"]), split_of[cid]))
                if spec.coco_categories:
                    coco.add_image(f"images/{cid}{ext}", case["label"].shape, case.get("instances", []))
                bar.update(i + 1)

        write_text_atomic(tmp / "train.list", "".join(f"{c}\n" for c in train))
        write_text_atomic(tmp / "test.list", "".join(f"{c}\n" for c in test))
        write_json_atomic(tmp / "structures.json", {str(k + 1): s for k, s in enumerate(spec.structures)})
        if spec.classes:
            buf = io.StringIO()
            writer = csv.writer(buf, lineterminator="\n")
            writer.writerow(["image", "label", "split"])
            writer.writerows(class_rows)
            write_text_atomic(tmp / "classes.csv", buf.getvalue())
        if spec.coco_categories:
            write_json_atomic(tmp / "annotations.json", coco.to_json(spec))
        write_json_atomic(tmp / "dataset.json", _dataset_json(spec, seed, n, shape, spacing))
        _replace_folder(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _write_case(root: Path, cid: str, case: Mapping[str, Any], ext: str, spacing: tuple[float, ...]) -> None:
    if ext == ".png":
        write_png(root / "images" / f"{cid}.png", np.asarray(case["image"], np.uint8))
        write_png(root / "labels" / f"{cid}.png", np.asarray(case["label"], np.uint8))
        write_png(root / "structures" / f"{cid}.png", np.asarray(case["structures"], np.uint8))
        return
    affine = affine_from_spacing(spacing)
    write_nifti(root / "images" / f"{cid}{ext}", np.asarray(case["image"], np.float32), affine)
    write_nifti(root / "labels" / f"{cid}{ext}", np.asarray(case["label"], np.uint8), affine)
    write_nifti(root / "structures" / f"{cid}{ext}", np.asarray(case["structures"], np.uint8), affine)


def _dataset_json(spec: SyntheticDataset, seed: int, n: int, shape: tuple[int, ...],
                  spacing: tuple[float, ...]) -> dict[str, Any]:
    info: dict[str, Any] = {
        "name": spec.name,
        "version": spec.version,
        "seed": seed,
        "n": n,
        "shape": list(shape),
        "spacing_mm": [round(s, 6) for s in spacing],
        "description": spec.description,
        "structures": {str(k + 1): s for k, s in enumerate(spec.structures)},
        "label_structures": list(spec.label_structures),
        "generator_parameters": dict(spec.parameters),
    }
    if spec.classes:
        info["classes"] = list(spec.classes)
    if spec.coco_categories:
        info["coco_categories"] = list(spec.coco_categories)
    return info


class _CocoBuilder:
    """Accumulates COCO ``images`` and instance ``annotations`` (RLE masks, exact boxes)."""

    def __init__(self, categories: tuple[str, ...]) -> None:
        self.category_id = {name: k + 1 for k, name in enumerate(categories)}
        self.images: list[dict[str, Any]] = []
        self.annotations: list[dict[str, Any]] = []

    def add_image(self, file_name: str, shape: tuple[int, ...], instances: list[tuple[str, np.ndarray]]) -> None:
        image_id = len(self.images) + 1
        self.images.append({"id": image_id, "file_name": file_name, "height": int(shape[0]),
                            "width": int(shape[1])})
        for category, mask in instances:
            mask = np.asarray(mask, bool)
            if not mask.any():
                continue
            self.annotations.append({
                "id": len(self.annotations) + 1,
                "image_id": image_id,
                "category_id": self.category_id[category],
                "bbox": bbox_xywh(mask),
                "area": int(mask.sum()),
                "iscrowd": 0,
                "segmentation": coco_rle(mask),
            })

    def to_json(self, spec: SyntheticDataset) -> dict[str, Any]:
        return {
            "info": {"description": f"medssl synthetic {spec.name}", "version": spec.version},
            "images": self.images,
            "annotations": self.annotations,
            "categories": [{"id": i, "name": name, "supercategory": "finding"}
                           for name, i in self.category_id.items()],
        }
