"""The left-atrium benchmark: the HDF5 layout, its split protocol, and preparation from raw files.

Layout: ``<root>/<case>/mri_norm2.h5`` with datasets ``image`` (float32, z-scored) and ``label``
(uint8, 1 = atrium), isotropic 0.625 mm voxels.

Axis order: arrays are in the NRRD index order of the 2018 Atrial Segmentation Challenge files,
axis 0 = x, axis 1 = y (the in-plane axes, 576 or 640 voxels in the raw scans) and axis 2 = z
(the 88 slices). This is the order a default ``nrrd.read`` returns and the order of the widely
used public ``mri_norm2.h5`` files, whose preprocessing crops axes 0 and 1 and keeps axis 2 whole.
:func:`prepare_la` follows the same convention: it crops x and y and leaves z whole.
"""

from __future__ import annotations

import warnings
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from medssl.data.spec import SegmentationCase, freeze_case
from medssl.errors import MedsslInputError
from medssl.runtime.atomic import atomic_path

H5_NAME = "mri_norm2.h5"
LA_SPACING_MM = 0.625
RAW_IMAGE = "lgemri.nrrd"
RAW_LABEL = "laendo.nrrd"
_SHOW = 5  # how many names an error message lists before "(+N more)"


def _names(items: Sequence[str]) -> str:
    shown = ", ".join(items[:_SHOW])
    return shown + (f" (+{len(items) - _SHOW} more)" if len(items) > _SHOW else "")


# ----------------------------------------------------------------------------- split lists
def read_split(path: str | Path) -> list[str]:
    """Read a split list: one case per line, either a bare id or a path such as
    ``.../<case>/mri_norm2.h5`` or ``.../<case>/``; blank lines and ``#`` comments are skipped.

    Returns:
        the case ids in file order.
    """
    path = Path(path)
    if not path.is_file():
        raise MedsslInputError(path, "split list not found")
    ids: list[str] = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        p = PurePosixPath(line.replace("\\", "/").rstrip("/"))
        ids.append(p.parent.name if p.suffix.lower() in (".h5", ".hdf5") else p.name)
    if not ids:
        raise MedsslInputError(path, "split list is empty")
    dupes = sorted({c for c in ids if ids.count(c) > 1})
    if dupes:
        raise MedsslInputError(path, f"split list names {len(dupes)} case(s) twice: {_names(dupes)}")
    return ids


@dataclass(frozen=True)
class LASplits:
    """Case ids of the left-atrium training protocol: labeled + unlabeled training, validation."""

    labeled: list[str]
    unlabeled: list[str]
    val: list[str]


def la_default_splits(train_list: Sequence[str] | str | Path, n_labeled: int, n_val: int = 16) -> LASplits:
    """The medssl protocol for the 80 public training cases of the left-atrium benchmark.

    The last ``n_val`` entries of ``train.list`` are validation; the entries before them are
    training, of which the first ``n_labeled`` are labeled and the rest unlabeled (with the standard
    80-case list: 64 training, 16 validation). The 20 test cases of ``test.list`` are never used here.

    Args:
        train_list: the ordered case ids, or the path of ``train.list``.
        n_labeled: number of labeled training cases (4, 8, 16 for the 5 / 10 / 20 % settings).
        n_val: number of validation cases taken from the end of the list.
    """
    ids = read_split(train_list) if isinstance(train_list, (str, Path)) else list(train_list)
    if n_val < 0 or n_val >= len(ids):
        raise MedsslInputError("n_val", f"must be in [0, {len(ids) - 1}] for {len(ids)} training entries, got {n_val}")
    train = ids[: len(ids) - n_val]
    if not 0 <= n_labeled <= len(train):
        raise MedsslInputError("n_labeled", f"must be in [0, {len(train)}], got {n_labeled}")
    return LASplits(labeled=train[:n_labeled], unlabeled=train[n_labeled:], val=ids[len(ids) - n_val :])


# ----------------------------------------------------------------------------- dataset
class LeftAtriumDataset:
    """Left-atrium volumes in the ``<root>/<case>/mri_norm2.h5`` layout (a :class:`VolumeDataset`).

    Args:
        root: the folder holding one sub-folder per case.
        case_ids: the cases, in order; or
        split_file: a split list read with :func:`read_split`; with neither, every sub-folder that
            holds ``mri_norm2.h5`` (sorted by name).
        allow_missing: cases named by the list but absent from ``root`` are skipped with a warning
            instead of raising.
        cache: keep loaded cases in memory (their arrays are then read-only).

    ``load(i)`` returns image float32 (X, Y, Z), label uint8 (X, Y, Z) or None when the file has no
    ``label`` dataset, spacing 0.625 mm (or the ``spacing`` attribute written by :func:`prepare_la`)
    and the matching diagonal affine.
    """

    def __init__(
        self,
        root: str | Path,
        case_ids: Sequence[str] | None = None,
        split_file: str | Path | None = None,
        allow_missing: bool = False,
        cache: bool = True,
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise MedsslInputError(self.root, "left-atrium data folder not found")
        if case_ids is not None and split_file is not None:
            raise MedsslInputError(split_file, "give either case_ids or a split file, not both")
        source: Path = self.root
        if split_file is not None:
            source = Path(split_file)
            wanted = read_split(split_file)
        elif case_ids is not None:
            wanted = [str(c) for c in case_ids]
        else:
            wanted = sorted(p.name for p in self.root.iterdir() if (p / H5_NAME).is_file())
            if not wanted:
                raise MedsslInputError(self.root, f"no <case>/{H5_NAME} files found")
        missing = [c for c in wanted if not (self.root / c / H5_NAME).is_file()]
        if missing:
            problem = f"{len(missing)} of {len(wanted)} listed case(s) have no {H5_NAME} under {self.root}: {_names(missing)}"
            if not allow_missing:
                raise MedsslInputError(source, problem)
            warnings.warn(f"{source}: {problem}; using the {len(wanted) - len(missing)} present", stacklevel=2)
        absent = set(missing)
        self.case_ids: list[str] = [c for c in wanted if c not in absent]
        if not self.case_ids:
            raise MedsslInputError(source, "no cases left to load")
        self.cache = cache
        self._cache: dict[int, SegmentationCase] = {}

    def __len__(self) -> int:
        return len(self.case_ids)

    def path(self, i: int) -> Path:
        """The HDF5 file of case ``i``."""
        return self.root / self.case_ids[i] / H5_NAME

    def load(self, i: int) -> SegmentationCase:
        """Read case ``i`` (from the in-memory cache when enabled)."""
        if i in self._cache:
            return self._cache[i]
        case = read_la_h5(self.path(i), case_id=self.case_ids[i])
        if self.cache:
            self._cache[i] = freeze_case(case)
        return case


def read_la_h5(path: str | Path, case_id: str | None = None) -> SegmentationCase:
    """Read one ``mri_norm2.h5`` file into a :class:`SegmentationCase` (image (X, Y, Z) float32)."""
    import h5py

    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            if "image" not in f:
                raise MedsslInputError(path, f"no 'image' dataset (found: {', '.join(f.keys()) or 'none'})")
            image = np.asarray(f["image"][()], dtype=np.float32)
            label = np.asarray(f["label"][()]) if "label" in f else None
            spacing_attr = f.attrs.get("spacing")
    except OSError as err:
        raise MedsslInputError(path, f"cannot read HDF5 file ({err})") from err
    if image.ndim != 3:
        raise MedsslInputError(path, f"'image' must be 3D (X, Y, Z), got shape {image.shape}")
    if not np.isfinite(image).all():
        raise MedsslInputError(path, "'image' contains NaN or infinite values")
    if label is not None:
        if label.shape != image.shape:
            raise MedsslInputError(path, f"'label' shape {label.shape} differs from 'image' shape {image.shape}")
        if label.size and (label.min() < 0 or label.max() > 255):
            raise MedsslInputError(path, "'label' values must lie in [0, 255]")
        label = label.astype(np.uint8)
    if spacing_attr is not None and len(spacing_attr) == 3:
        spacing = tuple(float(s) for s in spacing_attr)
    else:
        spacing = (LA_SPACING_MM,) * 3
    affine = np.diag([*spacing, 1.0])
    return SegmentationCase(image=image, label=label, affine=affine, spacing=spacing,
                            case_id=case_id or path.parent.name, source=str(path))


# ----------------------------------------------------------------------------- preparation
def crop_bounds(lo: int, hi: int, dim: int, margins: tuple[int, int], min_size: int) -> tuple[int, int]:
    """The crop [start, stop) along one axis around the box [lo, hi] (inclusive voxel indices).

    The box is widened by ``margins`` = (before, after) voxels; a crop shorter than ``min_size``
    is widened symmetrically (the odd voxel after), shifted back inside the volume where it
    crosses a border, and finally clipped to [0, dim) (so it is shorter than ``min_size`` only
    when the volume itself is).
    """
    start, stop = lo - margins[0], hi + 1 + margins[1]
    if stop - start < min_size:
        deficit = min_size - (stop - start)
        start -= deficit // 2
        stop += deficit - deficit // 2
        if start < 0:
            stop, start = stop - start, 0
        if stop > dim:
            start, stop = start - (stop - dim), dim
    return max(start, 0), min(stop, dim)


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of ``values`` (maximises the between-class variance of a histogram)."""
    hist, edges = np.histogram(values, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist).astype(np.float64)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres)
    with np.errstate(divide="ignore", invalid="ignore"):
        mu0 = m0 / w0
        mu1 = (m0[-1] - m0) / w1
        between = w0 * w1 * (mu0 - mu1) ** 2
    between = np.nan_to_num(between, nan=-1.0)
    return float(edges[int(np.argmax(between)) + 1])


def foreground_box(image: np.ndarray, axes: Sequence[int] = (0, 1), tail: float = 0.005) -> list[tuple[int, int]]:
    """A robust bounding box of the bright (body) part of ``image``, from the image alone.

    Foreground = voxels above Otsu's threshold; along each axis in ``axes`` the box spans the
    ``tail`` and ``1 - tail`` quantiles of the foreground voxels' coordinates, so isolated bright
    noise voxels do not stretch it. Returns inclusive (lo, hi) voxel indices per axis.
    """
    mask = image > otsu_threshold(image)
    total = int(mask.sum())
    box = []
    for axis in axes:
        if total == 0:
            box.append((0, image.shape[axis] - 1))
            continue
        other = tuple(a for a in range(image.ndim) if a != axis)
        cum = np.cumsum(mask.sum(axis=other)) / total
        lo = int(np.searchsorted(cum, tail, side="right"))
        hi = int(np.searchsorted(cum, 1.0 - tail, side="left"))
        box.append((lo, max(hi, lo)))
    return box


def _case_rng(seed: int, case_id: str) -> np.random.Generator:
    """A generator that depends only on (seed, case id), not on which other cases are present."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), zlib.crc32(case_id.encode("utf-8"))]))


@dataclass
class _CasePlan:
    case_id: str
    image_path: Path
    label_path: Path | None
    start: tuple[int, int]
    stop: tuple[int, int]
    margins: tuple[int, int, int, int]
    spacing: tuple[float, ...]
    shape: tuple[int, ...]


def _read_raw_case(case_dir: Path, need_label: bool, label_crop: bool):
    """Read and validate one raw case; returns (image ImageData, label {0, 1} uint8 array or None).

    ``need_label``: a missing label file is an error; ``label_crop``: so is an empty label.
    """
    from medssl.data.io import read_image, read_label

    image_path = case_dir / RAW_IMAGE
    label_path = case_dir / RAW_LABEL
    if not image_path.is_file():
        raise MedsslInputError(image_path, "missing")
    img = read_image(image_path)
    arr = np.asarray(img.array)
    if arr.ndim != 3:
        raise MedsslInputError(image_path, f"expected a 3D volume, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise MedsslInputError(image_path, "contains NaN or infinite values")
    if float(arr.std()) == 0.0:
        raise MedsslInputError(image_path, "constant image (cannot be z-scored)")
    if not label_path.is_file():
        if need_label:
            raise MedsslInputError(label_path, "missing (needed for the label-based crop)")
        return img, None
    # binary: {0, 255} (255 = atrium) or {0, 1}, mapped to {0, 1}; any other value is an error
    lab = np.asarray(read_label(label_path, like=img, binary=True, allow_empty=True).array)
    if lab.shape != arr.shape:
        raise MedsslInputError(label_path, f"shape {lab.shape} differs from {RAW_IMAGE} shape {arr.shape}")
    lab = (lab > 0).astype(np.uint8)
    if label_crop and not lab.any():
        raise MedsslInputError(label_path, "empty label (no atrium voxel), cannot crop around it")
    return img, lab


def prepare_la(
    raw: str | Path,
    out: str | Path,
    seed: int = 0,
    label_free_crop: bool = False,
    overwrite: bool = False,
    margin: tuple[int, int] = (10, 20),
    min_size: int = 112,
    normalize_over: str = "crop",
) -> list[Path]:
    """Convert raw challenge cases to the ``<out>/<case>/mri_norm2.h5`` layout.

    Input: ``<raw>/<case>/lgemri.nrrd`` (LGE-MRI intensities) and ``laendo.nrrd`` (255 = atrium),
    read with :func:`medssl.data.io.read_image` / ``read_label`` as (X, Y, Z) arrays.

    Per case: the x and y axes are cropped to a box plus a random margin drawn uniformly from
    ``margin`` = [low, high] voxels (both inclusive) independently for each side, each side at least
    ``min_size`` voxels (widened symmetrically, kept inside the volume; see :func:`crop_bounds`);
    z is kept whole. The box is the label's bounding box, or with ``label_free_crop`` the robust
    intensity-foreground box of the image (:func:`foreground_box`), so the label is never used
    to place the crop and cases without ``laendo.nrrd`` are accepted (written without ``label``).
    The margins come from a generator seeded by (``seed``, case id): the same seed gives identical
    files whatever other cases are present. ``image`` is stored float32, z-scored over the cropped
    volume (``normalize_over="volume"``: over the whole uncropped scan, as the widely shared
    public files were); ``label`` uint8 {0, 1}. Attributes record spacing (mm), the crop
    ([start, stop) per axis, in raw voxels), the margins and the seed.

    Every case is read and checked before anything is written; one bad case (missing or
    unreadable file, shape mismatch, unexpected label values, empty label, existing output without
    ``overwrite``) raises a single :class:`MedsslInputError` and writes nothing. Each file is
    written atomically.

    Returns:
        the written ``mri_norm2.h5`` paths, in case order.
    """
    raw, out = Path(raw), Path(out)
    if not raw.is_dir():
        raise MedsslInputError(raw, "raw left-atrium folder not found")
    if normalize_over not in ("crop", "volume"):
        raise MedsslInputError("normalize_over", f"must be 'crop' or 'volume', got {normalize_over!r}")
    lo_m, hi_m = int(margin[0]), int(margin[1])
    if not 0 <= lo_m <= hi_m:
        raise MedsslInputError("margin", f"must be 0 <= low <= high, got {margin}")
    if min_size < 1:
        raise MedsslInputError("min_size", f"must be >= 1, got {min_size}")
    case_dirs = sorted(p for p in raw.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not case_dirs:
        raise MedsslInputError(raw, "no case folders found (expected <raw>/<case>/lgemri.nrrd)")

    plans: list[_CasePlan] = []
    problems: list[str] = []
    for case_dir in case_dirs:
        dest = out / case_dir.name / H5_NAME
        if dest.exists() and not overwrite:
            problems.append(f"{dest}: already exists (use overwrite)")
            continue
        try:
            img, lab = _read_raw_case(case_dir, need_label=not label_free_crop, label_crop=not label_free_crop)
        except MedsslInputError as err:
            problems.append(str(err))
            continue
        arr = np.asarray(img.array)
        if label_free_crop:
            box = foreground_box(arr, axes=(0, 1))
        else:
            nz = np.nonzero(lab)
            box = [(int(nz[a].min()), int(nz[a].max())) for a in (0, 1)]
        rng = _case_rng(seed, case_dir.name)
        m = tuple(int(v) for v in rng.integers(lo_m, hi_m, size=4, endpoint=True))
        bounds = [crop_bounds(box[a][0], box[a][1], arr.shape[a], (m[2 * a], m[2 * a + 1]), min_size)
                  for a in (0, 1)]
        if float(arr[bounds[0][0]:bounds[0][1], bounds[1][0]:bounds[1][1]].std()) == 0.0:
            problems.append(f"{case_dir / RAW_IMAGE}: constant intensities inside the crop (cannot be z-scored)")
            continue
        plans.append(_CasePlan(
            case_id=case_dir.name, image_path=case_dir / RAW_IMAGE,
            label_path=(case_dir / RAW_LABEL) if lab is not None else None,
            start=(bounds[0][0], bounds[1][0]), stop=(bounds[0][1], bounds[1][1]), margins=(m[0], m[1], m[2], m[3]),
            spacing=tuple(float(s) for s in img.spacing), shape=arr.shape))
    if problems:
        raise MedsslInputError(raw, f"{len(problems)} bad case(s), nothing written: " + "; ".join(problems[:_SHOW])
                               + (f" (+{len(problems) - _SHOW} more)" if len(problems) > _SHOW else ""))

    written = []
    for plan in plans:
        written.append(_write_case(plan, out, seed, label_free_crop, normalize_over))
    return written


def _write_case(plan: _CasePlan, out: Path, seed: int, label_free_crop: bool, normalize_over: str) -> Path:
    import h5py

    img, lab = _read_raw_case(plan.image_path.parent, need_label=plan.label_path is not None, label_crop=False)
    full = np.asarray(img.array)
    (x0, y0), (x1, y1) = plan.start, plan.stop
    crop = full[x0:x1, y0:y1, :]
    ref = crop if normalize_over == "crop" else full
    mean, std = float(ref.mean(dtype=np.float64)), float(ref.std(dtype=np.float64))
    if std == 0.0:
        raise MedsslInputError(plan.image_path, "constant intensities inside the crop (cannot be z-scored)")
    image = ((crop.astype(np.float64) - mean) / std).astype(np.float32)
    dest = out / plan.case_id / H5_NAME
    with atomic_path(dest) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("image", data=image, compression="gzip")
        if lab is not None:
            f.create_dataset("label", data=lab[x0:x1, y0:y1, :].astype(np.uint8), compression="gzip")
        f.attrs["spacing"] = np.asarray(plan.spacing[:3], dtype=np.float64)
        f.attrs["crop_start"] = np.asarray([x0, y0, 0], dtype=np.int64)
        f.attrs["crop_stop"] = np.asarray([x1, y1, plan.shape[2]], dtype=np.int64)
        f.attrs["raw_shape"] = np.asarray(plan.shape, dtype=np.int64)
        f.attrs["margins"] = np.asarray(plan.margins, dtype=np.int64)
        f.attrs["seed"] = int(seed)
        f.attrs["label_free_crop"] = bool(label_free_crop)
        f.attrs["normalize_over"] = normalize_over
    return dest
