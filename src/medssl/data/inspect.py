"""``medssl data inspect``: what an image (and its label) or a dataset folder holds, and what is wrong.

:func:`inspect_path` never stops at the first content problem: NaN / Inf voxels, an empty,
non-binary or misaligned label are listed in :attr:`InspectionReport.problems`. Files that cannot be
read at all raise :class:`medssl.errors.MedsslInputError`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medssl.data import io, validate
from medssl.data.layouts import IGNORE_LABEL, find_coco_annotations, is_imagefolder
from medssl.errors import MedsslInputError

#: Percentiles reported in the intensity statistics.
PERCENTILES: tuple[float, ...] = (1.0, 5.0, 50.0, 95.0, 99.0)

#: File name of the left-atrium HDF5 layout (``<root>/<case>/mri_norm2.h5``).
LA_FILE = "mri_norm2.h5"


@dataclass
class IntensityStats:
    """Statistics over the finite voxels of an image (all channels together)."""

    minimum: float
    maximum: float
    mean: float
    std: float
    percentiles: dict[float, float]
    n_nan: int
    n_inf: int


@dataclass
class LabelStats:
    """What a label holds and whether it fits its image.

    Attributes:
        bbox: per spatial axis (first, last) voxel index of the foreground (inclusive), None if empty.
        foreground_fraction: foreground (non-zero) voxels / all voxels.
        geometry_match: same spatial shape and affine as the image (None without an image).
    """

    source: str
    shape: tuple[int, ...]
    values: list[float]
    counts: dict[float, int]
    foreground_fraction: float
    bbox: tuple[tuple[int, int], ...] | None
    geometry_match: bool | None


@dataclass
class CaseSummary:
    """One case of a dataset folder."""

    name: str
    image_shape: tuple[int, ...] | None
    label_shape: tuple[int, ...] | None
    problems: list[str] = field(default_factory=list)


@dataclass
class InspectionReport:
    """The result of :func:`inspect_path`; :meth:`format` renders it as text."""

    source: str
    kind: str  # "image" or "dataset"
    file_format: str = ""
    shape: tuple[int, ...] = ()
    dtype: str = ""
    spacing: tuple[float, ...] = ()
    orientation: str = ""
    intensity: IntensityStats | None = None
    label: LabelStats | None = None
    layout: str = ""
    cases: list[CaseSummary] = field(default_factory=list)
    summary: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def format(self) -> str:
        """Multi-line human-readable report ending with the problems found (or "problems: none")."""
        lines = [f"path:         {self.source}"]
        if self.kind == "image":
            lines += self._image_lines()
        else:
            lines += self._dataset_lines()
        lines += [f"note:         {n}" for n in self.notes]
        if self.problems:
            lines.append(f"problems ({len(self.problems)}):")
            lines += [f"  - {p}" for p in self.problems]
        else:
            lines.append("problems:     none")
        return "\n".join(lines)

    def _image_lines(self) -> list[str]:
        lines = [
            f"format:       {self.file_format}",
            f"shape:        {self.shape}  ({self.dtype})",
            f"spacing:      {' x '.join(f'{s:.4g}' for s in self.spacing)} mm",
            f"orientation:  {self.orientation}",
        ]
        st = self.intensity
        if st is not None:
            pct = ", ".join(f"p{p:g}={v:.4g}" for p, v in st.percentiles.items())
            lines += [
                f"intensity:    min {st.minimum:.4g}, max {st.maximum:.4g}, mean {st.mean:.4g}, std {st.std:.4g}",
                f"percentiles:  {pct}",
                f"non-finite:   {st.n_nan} NaN, {st.n_inf} Inf",
            ]
        lb = self.label
        if lb is not None:
            counts = ", ".join(f"{v:g}: {c}" for v, c in lb.counts.items())
            bbox = "none (empty)" if lb.bbox is None else " x ".join(f"[{a}, {b}]" for a, b in lb.bbox)
            match = {True: "yes", False: "NO", None: "n/a"}[lb.geometry_match]
            lines += [
                f"label:        {lb.source}",
                f"label shape:  {lb.shape}",
                f"label values: {counts}",
                f"foreground:   {lb.foreground_fraction:.4%} of voxels",
                f"bounding box: {bbox} (voxels, inclusive)",
                f"geometry:     {match}",
            ]
        return lines

    def _dataset_lines(self) -> list[str]:
        if self.summary:  # ImageFolder / COCO / masks: a layout summary instead of one line per case
            return [f"layout:       {self.layout}", *self.summary]
        shapes: dict[tuple[int, ...], int] = {}
        for case in self.cases:
            if case.image_shape is not None:
                shapes[case.image_shape] = shapes.get(case.image_shape, 0) + 1
        n_labelled = sum(c.label_shape is not None for c in self.cases)
        lines = [
            f"layout:       {self.layout}",
            f"cases:        {len(self.cases)} ({n_labelled} with a label)",
            "shapes:       " + (", ".join(f"{s} x{n}" for s, n in sorted(shapes.items())) or "none"),
        ]
        for case in self.cases:
            status = "ok" if not case.problems else f"{len(case.problems)} problem(s)"
            lines.append(f"  {case.name}: image {case.image_shape}, label {case.label_shape}: {status}")
        return lines


def _collect(problems: list[str], check: Callable[..., Any], *args: Any) -> Any:
    """Run one validation; record its message instead of raising. Returns its result or None."""
    try:
        return check(*args)
    except MedsslInputError as err:
        problems.append(str(err))
        return None


def intensity_stats(arr: np.ndarray) -> IntensityStats:
    """Min / max / mean / std / :data:`PERCENTILES` over the finite values of ``arr``, and NaN / Inf counts."""
    values = np.asarray(arr)
    n_nan = int(np.isnan(values).sum()) if np.issubdtype(values.dtype, np.inexact) else 0
    n_inf = int(np.isinf(values).sum()) if np.issubdtype(values.dtype, np.inexact) else 0
    finite = values[np.isfinite(values)] if (n_nan or n_inf) else values.ravel()
    finite = finite.astype(np.float64)
    if finite.size == 0:
        nan = float("nan")
        return IntensityStats(nan, nan, nan, nan, {p: nan for p in PERCENTILES}, n_nan, n_inf)
    pct = np.percentile(finite, PERCENTILES)
    return IntensityStats(
        minimum=float(finite.min()), maximum=float(finite.max()), mean=float(finite.mean()),
        std=float(finite.std()), percentiles={p: float(v) for p, v in zip(PERCENTILES, pct, strict=True)},
        n_nan=n_nan, n_inf=n_inf,
    )


def label_stats(label: io.ImageData, image: io.ImageData | None) -> LabelStats:
    """Values, counts, foreground fraction and bounding box of ``label`` (H, W[, D])."""
    arr = np.asarray(label.array)
    finite = arr[np.isfinite(arr)] if np.issubdtype(arr.dtype, np.inexact) else arr.ravel()
    values, counts = np.unique(finite, return_counts=True)
    fg = np.nan_to_num(arr) != 0
    bbox = None
    if fg.any():
        idx = np.nonzero(fg)
        bbox = tuple((int(i.min()), int(i.max())) for i in idx)
    match = None if image is None else validate.geometry_mismatch(image, label) is None
    return LabelStats(
        source=label.source, shape=tuple(arr.shape),
        values=[float(v) for v in values], counts={float(v): int(c) for v, c in zip(values, counts, strict=True)},
        foreground_fraction=float(fg.mean()), bbox=bbox, geometry_match=match,
    )


def _label_problems(label: io.ImageData, image: io.ImageData | None) -> list[str]:
    problems: list[str] = []
    src = label.source
    if label.meta.get("channels_last"):
        return [f"{src}: a label must have one channel, got a colour image of shape {label.array.shape}"]
    arr = _collect(problems, validate.check_integer_label, label.array, src)
    if arr is not None:
        _collect(problems, validate.as_binary_label, arr, src)
        _collect(problems, validate.check_nonempty_label, arr, src)
    if image is not None:
        _collect(problems, validate.check_same_geometry, image, label)
    return problems


def _read_label_lenient(path: Path) -> io.ImageData:
    if io.image_format(path) == "hdf5":
        return io.read_h5(path, "label", allow_nonfinite=True)
    return io.read_image(path, allow_nonfinite=True)


def _inspect_image(path: Path, label: Path | None) -> InspectionReport:
    image = io.read_image(path, allow_nonfinite=True)
    n_spatial = len(image.spacing)
    report = InspectionReport(
        source=str(path), kind="image", file_format=io.FORMAT_NAMES[image.meta["format"]],
        shape=tuple(image.array.shape), dtype=str(image.array.dtype), spacing=image.spacing,
        orientation=(io.orientation_code(image.affine, n_spatial) if image.meta["has_geometry"]
                     else "none (the file holds no geometry: unit spacing assumed)"),
        intensity=intensity_stats(image.array),
    )
    report.notes += image.meta.get("warnings", [])
    if image.array.ndim > 3 and not image.meta.get("channels_last"):
        report.notes.append(f"{image.array.ndim}D data: medssl models take 2D or 3D images")
    _collect(report.problems, validate.check_finite, image.array, path)
    if label is None and image.meta["format"] == "hdf5" and io.has_h5_dataset(path, "label"):
        label = path
    if label is not None:
        lab = _read_label_lenient(Path(label))
        report.label = label_stats(lab, image)
        report.problems += _label_problems(lab, image)
    return report


def _case_summary(name: str, image_path: Path, label_path: Path | None, h5_label: bool = False) -> CaseSummary:
    case = CaseSummary(name=name, image_shape=None, label_shape=None)
    try:
        image = io.read_image(image_path, allow_nonfinite=True)
    except MedsslInputError as err:
        case.problems.append(str(err))
        return case
    case.image_shape = image.spatial_shape
    _collect(case.problems, validate.check_finite, image.array, image_path)
    if h5_label and not io.has_h5_dataset(image_path, "label"):
        return case
    if label_path is None:
        return case
    try:
        label = _read_label_lenient(label_path)
    except MedsslInputError as err:
        case.problems.append(str(err))
        return case
    case.label_shape = label.spatial_shape
    case.problems += _label_problems(label, image)
    return case


def _holds_dicom(folder: Path) -> bool:
    import pydicom.misc

    return any(p.is_file() and not p.name.startswith(".") and pydicom.misc.is_dicom(str(p))
               for p in folder.iterdir())


def _is_image_file(path: Path) -> bool:
    if not path.is_file() or path.name.startswith("."):
        return False
    name = path.name.lower()
    return any(name.endswith(s) for suffixes in io.FORMAT_SUFFIXES.values() for s in suffixes)


def _stem(path: Path) -> str:
    name = path.name
    for suffixes in io.FORMAT_SUFFIXES.values():
        for s in suffixes:
            if name.lower().endswith(s):
                return name[: -len(s)]
    return name


def _inspect_images_labels(root: Path) -> InspectionReport:
    report = InspectionReport(source=str(root), kind="dataset", layout="images/ + labels/")
    images = sorted(p for p in (root / "images").iterdir() if _is_image_file(p))
    labels_dir = root / "labels"
    labels = {_stem(p): p for p in sorted(labels_dir.iterdir()) if _is_image_file(p)} if labels_dir.is_dir() else {}
    if not images:
        report.problems.append(f"{root / 'images'}: no image files")
    for image_path in images:
        stem = _stem(image_path)
        case = _case_summary(stem, image_path, labels.pop(stem, None))
        report.cases.append(case)
        report.problems += [f"{stem}: {p}" for p in case.problems]
    for stem, orphan in labels.items():
        report.problems.append(f"{orphan}: label without an image (expected images/{stem}.*)")
    return report


def _inspect_la(root: Path, cases: list[Path]) -> InspectionReport:
    report = InspectionReport(source=str(root), kind="dataset", layout=f"left atrium (<case>/{LA_FILE})")
    for folder in cases:
        h5 = folder / LA_FILE
        case = _case_summary(folder.name, h5, h5, h5_label=True)
        report.cases.append(case)
        report.problems += [f"{folder.name}: {p}" for p in case.problems]
    return report


def _inspect_nnunet(root: Path) -> InspectionReport:
    from medssl.data.nnunet import read_nnunet_layout

    layout = read_nnunet_layout(root)  # an invalid dataset.json or file layout stops here (one line)
    names = ", ".join(f"{value} {name}" for name, value in sorted(layout.labels.items(), key=lambda kv: kv[1]))
    report = InspectionReport(source=str(root), kind="dataset",
                              layout=f"nnU-Net raw (dataset.json: {layout.file_ending}, labels {names}; "
                                     f"{len(layout.labelled)} labelled, {len(layout.cases) - len(layout.labelled)} "
                                     "unlabeled)")
    for case in layout.cases:
        summary = _case_summary(case.case_id, case.image, case.label)
        report.cases.append(summary)
        report.problems += [f"{case.case_id}: {p}" for p in summary.problems]
    return report


def _public_layout(root: Path) -> InspectionReport | None:
    """The report of an ImageFolder, COCO (images/ + annotations) or images/ + masks/ folder; None otherwise."""
    from medssl.data import inspect_layouts

    if is_imagefolder(root):
        lines, problems = inspect_layouts.imagefolder_summary(root)
        layout = "ImageFolder (<root>/[<split>/]<class>/<image>)"
    elif (root / "images").is_dir() and not (root / "labels").is_dir() and _has_coco(root):
        lines, problems = inspect_layouts.coco_summary(root, find_coco_annotations(root))
        layout = "COCO instances (images/ + annotation file)"
    elif (root / "images").is_dir() and (root / "masks").is_dir():
        lines, problems = inspect_layouts.masks_summary(root)
        layout = f"images/ + masks/ (value {IGNORE_LABEL} = ignore)"
    else:
        return None
    return InspectionReport(source=str(root), kind="dataset", layout=layout, summary=lines, problems=problems)


def _has_coco(root: Path) -> bool:
    try:
        find_coco_annotations(root)
    except MedsslInputError:
        return False
    return True


def inspect_path(path: str | Path, label: str | Path | None = None) -> InspectionReport:
    """Inspect an image file, a DICOM series folder or a dataset folder.

    For an image: format, shape, dtype, spacing (mm), orientation code, intensity statistics and
    NaN / Inf counts; with ``label`` (or the ``label`` dataset of an HDF5 file): label values, voxel
    counts, foreground fraction, bounding box (voxels) and whether its geometry matches.
    For a folder with ``images/`` (+ ``labels/``, matched by file name), an nnU-Net raw dataset
    (``nnunet:<folder>`` or ``dataset.json`` + ``imagesTr/``) or ``<case>/mri_norm2.h5`` cases: one line per
    case and the problems found. For the public 2D layouts (:mod:`medssl.data.inspect_layouts`): an
    ImageFolder root (classes and counts per split), a COCO folder (categories and instances) or
    ``images/`` + ``masks/`` (mask values, ignore fraction). Any other folder is read as a DICOM series.

    Raises:
        MedsslInputError: the path (or label) cannot be read at all.
    """
    from medssl.data.nnunet import nnunet_root

    raw = nnunet_root(path)
    if raw is not None:
        if label is not None:
            raise MedsslInputError(label, "--label applies to a single image, not to a dataset folder")
        return _inspect_nnunet(raw)
    path = Path(path)
    if not path.exists():
        raise MedsslInputError(path, "no such file or folder")
    if path.is_dir():
        la_cases = sorted(p for p in path.iterdir() if (p / LA_FILE).is_file())
        is_dataset = (path / "images").is_dir() or bool(la_cases) or is_imagefolder(path)
        if is_dataset and label is not None:
            raise MedsslInputError(label, "--label applies to a single image, not to a dataset folder")
        if la_cases:
            return _inspect_la(path, la_cases)
        layout = _public_layout(path)
        if layout is not None:
            return layout
        if (path / "images").is_dir():
            return _inspect_images_labels(path)
        if not _holds_dicom(path):
            raise MedsslInputError(path, "neither a dataset folder (images/ + labels/, or <case>/"
                                         f"{LA_FILE}) nor a DICOM series folder")
    return _inspect_image(path, None if label is None else Path(label))
