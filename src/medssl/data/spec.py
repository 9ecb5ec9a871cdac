"""The volume-dataset interface and ``<layout>:<path>`` data specs.

Every 3D segmentation source in medssl (the left-atrium HDF5 layout, image/label folders, the
embedded synthetic datasets) exposes the same small interface, :class:`VolumeDataset`, which the
semi-supervised engine reads. :func:`open_volume_dataset` turns a spec string such as
``la:/data/LA`` or ``folder:/data/atrium3d`` (or a bare path, whose layout is detected) into one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from medssl.errors import MedsslInputError

LAYOUTS: dict[str, str] = {
    "la": "left-atrium HDF5 layout: <root>/<case>/mri_norm2.h5 (datasets image, label)",
    "folder": "image/label folders: <root>/images/<name> + <root>/labels/<name>",
    "nnunet": "nnU-Net v2 / Decathlon raw layout: <root>/dataset.json, imagesTr/, labelsTr/, imagesTs/",
}


@dataclass
class SegmentationCase:
    """One image volume with its (optional) label and geometry.

    Attributes:
        image: float32 intensities, spatial axes first: (H, W, D) for volumes, (H, W) for 2D images.
        label: uint8 label map of the image's spatial shape, or None for an unlabeled case.
        affine: (4, 4) voxel-to-world matrix (mm).
        spacing: voxel size in mm per spatial axis.
        case_id: the case's name within its dataset.
        source: the file the case was read from.
    """

    image: np.ndarray
    label: np.ndarray | None
    affine: np.ndarray
    spacing: tuple[float, ...]
    case_id: str
    source: str


def freeze_case(case: SegmentationCase) -> SegmentationCase:
    """Make a case's arrays read-only (cached cases are shared, so nobody may change them in place)."""
    case.image.flags.writeable = False
    if case.label is not None:
        case.label.flags.writeable = False
    return case


@runtime_checkable
class VolumeDataset(Protocol):
    """What the semi-supervised engine needs from a segmentation source.

    ``case_ids[i]`` names case ``i``; ``load(i)`` returns it as a :class:`SegmentationCase`.
    Implementations may cache loaded cases in memory; cached arrays are shared between calls, so
    callers must not modify them in place.
    """

    case_ids: list[str]

    def __len__(self) -> int: ...

    def load(self, i: int) -> SegmentationCase: ...


def parse_spec(spec: str) -> tuple[str | None, Path]:
    """Split ``"<layout>:<path>"`` into (layout, path); a bare path gives (None, path).

    A prefix that is not a letter-only word of two or more characters (e.g. a Windows drive
    ``C:``) is treated as part of the path.
    """
    head, sep, tail = spec.partition(":")
    if sep and len(head) >= 2 and head.isalpha():
        layout = head.lower()
        if layout not in LAYOUTS:
            valid = ", ".join(f"{k} ({v})" for k, v in LAYOUTS.items())
            raise MedsslInputError(spec, f"unknown data layout {head!r}; valid layouts: {valid}")
        if not tail:
            raise MedsslInputError(spec, f"no path after '{head}:'")
        return layout, Path(tail).expanduser()
    return None, Path(spec).expanduser()


def detect_layout(root: Path) -> str:
    """Guess the layout of a dataset folder: ``folder`` if it has ``images/``, ``nnunet`` if it has
    ``dataset.json`` and ``imagesTr/``, ``la`` if any sub-folder holds ``mri_norm2.h5``."""
    from medssl.data.nnunet import is_nnunet_folder

    if not root.is_dir():
        raise MedsslInputError(root, "dataset folder not found")
    if (root / "images").is_dir():
        return "folder"
    if is_nnunet_folder(root):
        return "nnunet"
    if any((sub / "mri_norm2.h5").is_file() for sub in root.iterdir() if sub.is_dir()):
        return "la"
    raise MedsslInputError(
        root,
        "cannot tell the dataset layout: expected images/ (+ labels/), dataset.json + imagesTr/ or case "
        "folders with mri_norm2.h5; name it explicitly as 'folder:<path>', 'nnunet:<path>' or 'la:<path>'",
    )


def open_volume_dataset(spec: str, split: str | None = None, **kw: Any) -> VolumeDataset:
    """Open a segmentation dataset from a spec string.

    Args:
        spec: ``la:<root>``, ``folder:<root>``, ``nnunet:<root>`` or a bare ``<root>`` (layout detected).
        split: a split name; the split list ``<root>/<split>.list`` selects the cases
            (None: all cases, unless ``split_file`` / ``case_ids`` is given for ``la``).
        **kw: passed to the layout's dataset class, e.g. ``cache``, ``allow_missing`` and
            ``split_file`` / ``case_ids`` for ``la``; ``labels_required`` / ``binary`` for ``folder``.

    Returns:
        a :class:`VolumeDataset`.
    """
    layout, root = parse_spec(spec)
    if layout is None:
        layout = detect_layout(root)
    if layout == "la":
        from medssl.data.la import LeftAtriumDataset

        if split is not None:
            if kw.get("split_file") is not None or kw.get("case_ids") is not None:
                raise MedsslInputError(spec, "give either a split name or a split file / case list, not both")
            split_path = root / f"{split}.list"
            if not split_path.is_file():
                raise MedsslInputError(split_path, f"split list for split {split!r} not found")
            kw["split_file"] = split_path
        return LeftAtriumDataset(root, **kw)
    if layout == "nnunet":
        from medssl.data.nnunet import NnUNetDataset

        if split is not None:
            raise MedsslInputError(spec, "the nnU-Net layout has no named splits (labelled cases come from labelsTr/)")
        kw.pop("labels_required", None)  # labelsTr/ decides which cases are labelled
        return NnUNetDataset(root, **kw)
    from medssl.data.layouts import FolderSegmentationDataset

    return FolderSegmentationDataset(root, split=split, **kw)
