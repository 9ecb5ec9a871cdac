"""Reading and writing medical images with their geometry.

Readers turn NIfTI (.nii, .nii.gz), NRRD (.nrrd, .nhdr), DICOM (a file or a series folder),
PNG / JPEG, HDF5 (.h5, .hdf5) and NumPy (.npy) files into :class:`ImageData`, through MONAI's image
readers (``NibabelReader``, ``NrrdReader``, ``PydicomReader``, ``PILReader``, ``NumpyReader``) and h5py.
Anything a user can get wrong (missing or corrupt file, unknown format, NaN / Inf voxels, wrong
dimensionality, a label that does not fit its image) raises :class:`medssl.errors.MedsslInputError`
naming the file.

Axis conventions:

* Formats with geometry (NIfTI, NRRD, DICOM): array axes are voxel indices (i, j[, k]) and
  ``affine`` maps (i, j, k, 1) to world RAS coordinates in mm. For DICOM, i runs along an image
  row (it is the column index) and j down the columns, as in MONAI and ITK.
* PNG / JPEG: (H, W) = (row, column) for grayscale, (H, W, 3) for colour; no geometry (unit spacing,
  identity affine, ``meta["has_geometry"] = False``).
* HDF5 / NumPy: the stored array as it is; geometry only if the HDF5 dataset or file carries
  ``affine`` or ``spacing`` attributes.

Writers (:func:`write_nifti`, :func:`write_png`) are the ones every generator and prediction writer
in medssl uses. All writes are atomic (see :mod:`medssl.runtime.atomic`).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from medssl.errors import MedsslInputError
from medssl.runtime.atomic import atomic_path

#: File name endings per format (lower case).
FORMAT_SUFFIXES: dict[str, tuple[str, ...]] = {
    "nifti": (".nii.gz", ".nii"),
    "nrrd": (".nrrd", ".nhdr"),
    "dicom": (".dcm", ".dicom", ".ima"),
    "png": (".png",),
    "jpeg": (".jpg", ".jpeg"),
    "hdf5": (".h5", ".hdf5"),
    "npy": (".npy",),
}

#: Human-readable format names used in messages and reports.
FORMAT_NAMES: dict[str, str] = {
    "nifti": "NIfTI", "nrrd": "NRRD", "dicom": "DICOM", "dicom-series": "DICOM series",
    "png": "PNG", "jpeg": "JPEG", "hdf5": "HDF5", "npy": "NumPy",
}

_NO_GEOMETRY = "the DICOM file holds no patient position / orientation: axis-aligned voxels assumed"

#: Relative tolerance on the spread of slice gaps in a DICOM series (a larger spread means missing
#: or duplicated slices).
SLICE_GAP_RTOL = 0.1


@dataclass
class ImageData:
    """An image array with its geometry.

    Attributes:
        array: voxel/pixel values, spatial axes first: (H, W) or (H, W, D); a trailing channel axis
            (H, W, C) only for colour 2D images.
        affine: (4, 4) voxel-to-world (RAS, mm) matrix; identity-like for formats without geometry.
        spacing: voxel size in mm per spatial axis.
        source: the file or folder the image was read from ("" for in-memory images).
        meta: format-specific metadata (e.g. original dtype, DICOM tags of interest).
    """

    array: np.ndarray
    affine: np.ndarray
    spacing: tuple[float, ...]
    source: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """Shape of the spatial axes."""
        return tuple(self.array.shape[: len(self.spacing)])


def affine_from_spacing(spacing: tuple[float, ...], origin: tuple[float, ...] | None = None) -> np.ndarray:
    """A diagonal (4, 4) affine for axis-aligned voxels of size ``spacing`` (mm)."""
    affine = np.eye(4)
    for i, s in enumerate(spacing[:3]):
        affine[i, i] = float(s)
    if origin is not None:
        affine[: len(origin[:3]), 3] = origin[:3]
    return affine


# ----------------------------------------------------------------------------------------------
# format detection and small helpers
# ----------------------------------------------------------------------------------------------


def image_format(path: str | Path) -> str:
    """The format key of ``path`` ("nifti", "nrrd", "dicom", "dicom-series", "png", "jpeg", "hdf5", "npy").

    A folder is a DICOM series; a file with an unknown ending is DICOM if pydicom recognises it.

    Raises:
        MedsslInputError: the path does not exist or its format is not supported.
    """
    path = Path(path)
    if not path.exists():
        raise MedsslInputError(path, "no such file or folder")
    if path.is_dir():
        return "dicom-series"
    name = path.name.lower()
    for fmt, suffixes in FORMAT_SUFFIXES.items():
        if name.endswith(suffixes):
            return fmt
    import pydicom.misc

    if pydicom.misc.is_dicom(str(path)):
        return "dicom"
    known = ", ".join(s for suffixes in FORMAT_SUFFIXES.values() for s in suffixes)
    raise MedsslInputError(path, f"unknown image format '{path.suffix or path.name}' (medssl reads {known}, "
                                 "DICOM files and DICOM series folders)")


def orientation_code(affine: np.ndarray, n_spatial: int = 3) -> str:
    """Axis codes of ``affine`` (4, 4) in RAS terms, e.g. "RAS" or "LPS"; "?" for a degenerate axis."""
    import nibabel as nib

    codes = nib.aff2axcodes(np.asarray(affine, dtype=np.float64))
    return "".join(c if c is not None else "?" for c in codes[:n_spatial])


def _one_line(exc: BaseException, limit: int = 200) -> str:
    text = " ".join(str(exc).split())
    if not text:
        text = type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _spacing_from_affine(affine: np.ndarray, n_spatial: int) -> tuple[float, ...]:
    cols = np.linalg.norm(np.asarray(affine)[:3, :n_spatial], axis=0)
    return tuple(float(c) for c in cols)


def _as_affine4(affine: Any, n_spatial: int) -> np.ndarray:
    """Embed a MONAI affine ((n+1, n+1) or (4, 4), maybe a tensor) into a (4, 4) float64 matrix."""
    if affine is None:
        return np.eye(4)
    aff = np.asarray(affine, dtype=np.float64)
    if aff.shape == (4, 4):
        return aff
    n = aff.shape[0] - 1
    out = np.eye(4)
    out[:n, :n] = aff[:n, :n]
    out[:n, 3] = aff[:n, n]
    return out


def _native(arr: Any) -> np.ndarray:
    """An in-memory array in native byte order; floating data as float32."""
    out = np.array(arr, copy=True)
    if out.dtype.byteorder not in ("=", "|"):
        out = out.astype(out.dtype.newbyteorder("="))
    if np.issubdtype(out.dtype, np.floating) and out.dtype != np.float32:
        out = out.astype(np.float32)
    if out.dtype == np.bool_:
        out = out.astype(np.uint8)
    return out


def _guarded(path: Path, what: str, fn: Callable[[], Any]) -> tuple[Any, list[str]]:
    """Run a reader; turn any failure into MedsslInputError and collect library warnings."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = fn()
        except MedsslInputError:
            raise
        except MemoryError:
            raise
        except Exception as exc:  # a reader failing on a user's file is a user input problem
            raise MedsslInputError(path, f"cannot read {what} ({_one_line(exc)})") from exc
    return result, [_one_line(w.message if isinstance(w.message, Warning) else Warning(w.message)) for w in caught]


# ----------------------------------------------------------------------------------------------
# per-format readers: each returns (array, affine (4, 4), has_geometry, channels_last, meta)
# ----------------------------------------------------------------------------------------------


def _read_nifti(path: Path) -> tuple[np.ndarray, np.ndarray, bool, bool, dict[str, Any]]:
    from monai.data import NibabelReader

    def run() -> tuple[Any, dict]:
        reader = NibabelReader(squeeze_non_spatial_dims=True)
        arr, meta = reader.get_data(reader.read(str(path)))
        return _native(arr), meta

    (arr, meta), notes = _guarded(path, "NIfTI file: truncated or corrupt?", run)
    affine = _as_affine4(meta.get("affine"), min(arr.ndim, 3))
    return arr, affine, True, False, {"warnings": notes}


def _read_nrrd(path: Path) -> tuple[np.ndarray, np.ndarray, bool, bool, dict[str, Any]]:
    from monai.data import NrrdReader

    def run() -> tuple[np.ndarray, np.ndarray, bool]:
        loaded: Any = NrrdReader().read(str(path))  # one file: one NrrdImage
        if "space directions" not in loaded.header:  # no world space: per-axis spacings at most
            arr = _native(loaded.array)
            steps = [float(s) for s in loaded.header.get("spacings", [])][: min(arr.ndim, 3)]
            steps = [s if np.isfinite(s) and s > 0 else 1.0 for s in steps] or [1.0] * min(arr.ndim, 3)
            return arr, affine_from_spacing(tuple(steps)), False
        arr, meta = NrrdReader(dtype=loaded.array.dtype).get_data(loaded)
        arr = _native(arr)
        return arr, _as_affine4(meta.get("affine"), min(arr.ndim, 3)), True

    (arr, affine, has_geometry), notes = _guarded(path, "NRRD file: truncated or corrupt?", run)
    return arr, affine, has_geometry, False, {"warnings": notes}


def _dicom_array(reader: Any, target: str) -> tuple[np.ndarray, dict]:
    arr, meta = reader.get_data(reader.read(target))
    return _native(arr), meta


def _read_dicom_file(path: Path) -> tuple[np.ndarray, np.ndarray, bool, bool, dict[str, Any]]:
    import pydicom
    from monai.data import PydicomReader

    header, _ = _guarded(path, "DICOM file", lambda: pydicom.dcmread(str(path), stop_before_pixels=True))
    if "SegmentSequence" in header:
        raise MedsslInputError(path, "DICOM-SEG objects are not read as images; convert the segmentation "
                                     "to NIfTI first")
    frames = int(header.get("NumberOfFrames", 1) or 1)
    colour = int(header.get("SamplesPerPixel", 1) or 1) > 1
    (arr, meta), notes = _guarded(path, "DICOM pixel data", lambda: _dicom_array(PydicomReader(), str(path)))
    info: dict[str, Any] = {"warnings": notes, "modality": str(header.get("Modality", ""))}
    if frames > 1:
        arr = _frames_last(arr, colour)
        rescale = _shared_rescale(header)
        if rescale is not None:
            arr = (arr.astype(np.float32) * np.float32(rescale[0]) + np.float32(rescale[1])).astype(np.float32)
        affine, has_geometry = _multiframe_affine(header)
        # the reader's own geometry warning concerns top-level tags; the functional groups decide here
        info["warnings"] = [w for w in notes if "ImageOrientationPatient" not in w]
        if not has_geometry:
            info["warnings"].append(_NO_GEOMETRY)
        return arr, affine, has_geometry, colour, info
    has_geometry = "ImageOrientationPatient" in header and "ImagePositionPatient" in header
    affine = _as_affine4(meta.get("affine"), 2)
    if not has_geometry:
        info["warnings"] = [w for w in notes if "ImageOrientationPatient" not in w] + [_NO_GEOMETRY]
        spacing = [float(v) for v in header.get("PixelSpacing", [1.0, 1.0])]
        affine = affine_from_spacing((spacing[1], spacing[0]))
    return arr, affine, has_geometry, colour, info


def _frames_last(arr: np.ndarray, colour: bool) -> np.ndarray:
    """Reorder MONAI's multi-frame output (rows, frames, columns[, 3]) to (columns, rows, frames[, 3])."""
    order = (2, 0, 1, 3) if colour else (2, 0, 1)
    return np.ascontiguousarray(np.transpose(arr, order))


def _shared_rescale(header: Any) -> tuple[float, float] | None:
    """(slope, intercept) of an enhanced multi-frame DICOM's shared pixel value transformation.

    Top-level RescaleSlope / RescaleIntercept are already applied by the reader; enhanced files keep
    them in the shared functional groups instead. Returns None when there is nothing to apply.
    """
    if "RescaleSlope" in header or "RescaleIntercept" in header:
        return None
    shared = header.get("SharedFunctionalGroupsSequence")
    if not shared:
        return None
    transform = getattr(shared[0], "PixelValueTransformationSequence", None)
    if not transform:
        return None
    slope = float(getattr(transform[0], "RescaleSlope", 1.0))
    intercept = float(getattr(transform[0], "RescaleIntercept", 0.0))
    return None if (slope, intercept) == (1.0, 0.0) else (slope, intercept)


def _multiframe_affine(header: Any) -> tuple[np.ndarray, bool]:
    """(4, 4) RAS affine of a multi-frame DICOM (columns, rows, frames) from its functional groups."""
    def first(seq_owner: Any, seq: str, attr: str) -> Any:
        items = getattr(seq_owner, seq, None)
        if items and attr in items[0]:
            return getattr(items[0], attr)
        return None

    shared = header.get("SharedFunctionalGroupsSequence")
    per_frame = header.get("PerFrameFunctionalGroupsSequence")
    shared0 = shared[0] if shared else None
    iop = header.get("ImageOrientationPatient")
    spacing = header.get("PixelSpacing")
    thickness = header.get("SpacingBetweenSlices") or header.get("SliceThickness")
    if shared0 is not None:
        iop = first(shared0, "PlaneOrientationSequence", "ImageOrientationPatient") or iop
        spacing = first(shared0, "PixelMeasuresSequence", "PixelSpacing") or spacing
        thickness = (first(shared0, "PixelMeasuresSequence", "SpacingBetweenSlices")
                     or first(shared0, "PixelMeasuresSequence", "SliceThickness") or thickness)
    positions = []
    if per_frame:
        for frame in per_frame:
            pos = first(frame, "PlanePositionSequence", "ImagePositionPatient")
            if pos is None:
                break
            positions.append(np.asarray(pos, dtype=np.float64))
            if iop is None:
                iop = first(frame, "PlaneOrientationSequence", "ImageOrientationPatient")
            if spacing is None:
                spacing = first(frame, "PixelMeasuresSequence", "PixelSpacing")
    if iop is None or spacing is None or len(positions) < 2:
        dr, dc = (float(spacing[0]), float(spacing[1])) if spacing is not None else (1.0, 1.0)
        dz = float(thickness) if thickness else 1.0
        return affine_from_spacing((dc, dr, dz)), False
    row_dir = np.asarray(iop[:3], dtype=np.float64)
    col_dir = np.asarray(iop[3:], dtype=np.float64)
    lps = np.eye(4)
    lps[:3, 0] = row_dir * float(spacing[1])
    lps[:3, 1] = col_dir * float(spacing[0])
    lps[:3, 2] = (positions[-1] - positions[0]) / (len(positions) - 1)
    lps[:3, 3] = positions[0]
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps, True


def _scan_dicom_folder(folder: Path) -> list[str]:
    """Validate a DICOM series folder from its headers; return the slice files (as globbed).

    Non-DICOM files are ignored (and reported in the returned image's warnings by the caller).
    """
    import glob
    import os

    import pydicom
    import pydicom.misc

    entries = sorted(glob.glob(os.path.join(str(folder), "*")))
    files = [e for e in entries if os.path.isfile(e)]
    dicom_files = [f for f in files if pydicom.misc.is_dicom(f)]
    if not dicom_files:
        raise MedsslInputError(folder, f"unreadable DICOM series: none of the {len(files)} files in the folder "
                                       "is a DICOM file")
    headers = []
    for f in dicom_files:
        hdr, _ = _guarded(Path(f), "DICOM header", partial(pydicom.dcmread, f, stop_before_pixels=True))
        headers.append(hdr)
    if len(headers) == 1:
        return dicom_files
    series = {str(h.get("SeriesInstanceUID", "")) for h in headers}
    if len(series) > 1:
        raise MedsslInputError(folder, f"unreadable DICOM series: the folder mixes {len(series)} series; "
                                       "give one series per folder")
    sizes = sorted({(int(h.get("Rows", 0)), int(h.get("Columns", 0))) for h in headers})
    if len(sizes) > 1:
        shown = ", ".join(f"{r}x{c}" for r, c in sizes[:4])
        raise MedsslInputError(folder, f"unreadable DICOM series: slices have different sizes ({shown})")
    if any(int(h.get("NumberOfFrames", 1) or 1) > 1 for h in headers):
        raise MedsslInputError(folder, "unreadable DICOM series: the folder mixes multi-frame files")
    missing = [Path(f).name for f, h in zip(dicom_files, headers, strict=True) if "InstanceNumber" not in h]
    if missing:
        raise MedsslInputError(folder, f"unreadable DICOM series: {len(missing)} slices lack InstanceNumber "
                                       f"(e.g. {missing[0]})")
    if all("ImagePositionPatient" in h and "ImageOrientationPatient" in h for h in headers):
        _check_slice_positions(folder, headers)
    return dicom_files


def _check_slice_positions(folder: Path, headers: list[Any]) -> None:
    """Slices sorted by InstanceNumber must advance monotonically and evenly along the slice normal."""
    ordered = sorted(headers, key=lambda h: int(h.InstanceNumber))
    iop = np.asarray(ordered[0].ImageOrientationPatient, dtype=np.float64)
    normal = np.cross(iop[:3], iop[3:])
    pos = np.array([np.dot(np.asarray(h.ImagePositionPatient, dtype=np.float64), normal) for h in ordered])
    gaps = np.diff(pos)
    if np.any(np.abs(gaps) < 1e-6) or not (np.all(gaps > 0) or np.all(gaps < 0)):
        raise MedsslInputError(folder, "unreadable DICOM series: slice positions repeat or are not in "
                                       "InstanceNumber order")
    size = np.abs(gaps)
    if size.max() - size.min() > SLICE_GAP_RTOL * np.median(size):
        raise MedsslInputError(folder, f"unreadable DICOM series: uneven slice gaps ({size.min():.3g} to "
                                       f"{size.max():.3g} mm); slices missing?")


def _read_dicom_series(folder: Path) -> tuple[np.ndarray, np.ndarray, bool, bool, dict[str, Any]]:
    import glob
    import os

    from monai.data import PydicomReader

    files = _scan_dicom_folder(folder)
    if len(files) == 1:
        arr, affine, has_geometry, colour, info = _read_dicom_file(Path(files[0]))
        return arr, affine, has_geometry, colour, info
    n_ignored = len([e for e in glob.glob(os.path.join(str(folder), "*")) if os.path.isfile(e)]) - len(files)
    pattern = "^(?:" + "|".join(re.escape(f) for f in files) + ")$"
    reader = PydicomReader(fname_regex=pattern)
    (arr, meta), notes = _guarded(folder, "DICOM series", lambda: _dicom_array(reader, str(folder)))
    if arr.ndim != 3:
        raise MedsslInputError(folder, f"unreadable DICOM series: stacked slices have shape {arr.shape}, "
                                       "expected (columns, rows, slices)")
    if n_ignored:
        notes.append(f"ignored {n_ignored} non-DICOM files in the folder")
    affine = _as_affine4(meta.get("affine"), 3)
    return arr, affine, True, False, {"warnings": notes, "n_slices": len(files)}


def _pil_converter(image: Any) -> Any:
    """Grayscale stays grayscale (palette images keep their indices); alpha is dropped."""
    if image.mode in ("RGBA", "CMYK", "YCbCr", "RGBX", "LAB", "HSV"):
        return image.convert("RGB")
    if image.mode in ("LA", "1"):
        return image.convert("L")
    if image.mode == "PA":
        return image.convert("P")
    return image


def _read_pil(path: Path, what: str) -> tuple[np.ndarray, np.ndarray, bool, bool, dict[str, Any]]:
    from monai.data import PILReader

    def run() -> np.ndarray:
        reader = PILReader(converter=_pil_converter, reverse_indexing=False)
        arr, _ = reader.get_data(reader.read(str(path)))
        return _native(arr)

    arr, notes = _guarded(path, f"{what} file: truncated or corrupt?", run)
    return arr, np.eye(4), False, arr.ndim == 3, {"warnings": notes}


def _read_npy(path: Path) -> tuple[np.ndarray, np.ndarray, bool, bool, dict[str, Any]]:
    from monai.data import NumpyReader

    def run() -> np.ndarray:
        reader = NumpyReader()
        arr, _ = reader.get_data(reader.read(str(path)))
        return _native(arr)

    arr, notes = _guarded(path, "NumPy file: truncated or corrupt?", run)
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        raise MedsslInputError(path, f"array of type {arr.dtype} is not an image")
    return arr, np.eye(4), False, False, {"warnings": notes}


def _read_hdf5(path: Path, key: str) -> tuple[np.ndarray, np.ndarray, bool, bool, dict[str, Any]]:
    import h5py

    def run() -> tuple[np.ndarray, dict[str, Any], list[str]]:
        with h5py.File(str(path), "r") as h5:
            if key not in h5 or not isinstance(h5[key], h5py.Dataset):
                names = ", ".join(sorted(h5.keys())) or "nothing"
                raise MedsslInputError(path, f"no '{key}' dataset (the file holds: {names})")
            dset = h5[key]
            attrs = {k: np.asarray(v) for k, v in {**dict(h5.attrs), **dict(dset.attrs)}.items()}
            return _native(dset[()]), attrs, sorted(h5.keys())

    (arr, attrs, keys), notes = _guarded(path, "HDF5 file: truncated or corrupt?", run)
    n_spatial = min(arr.ndim, 3)
    info: dict[str, Any] = {"warnings": notes, "h5_key": key, "h5_keys": keys}
    if "affine" in attrs and attrs["affine"].shape == (4, 4):
        return arr, attrs["affine"].astype(np.float64), True, False, info
    if "spacing" in attrs and attrs["spacing"].size == n_spatial:
        return arr, affine_from_spacing(tuple(float(s) for s in attrs["spacing"])), True, False, info
    return arr, np.eye(4), False, False, info


# ----------------------------------------------------------------------------------------------
# public readers
# ----------------------------------------------------------------------------------------------


def _finish(path: Path, fmt: str, parts: tuple[np.ndarray, np.ndarray, bool, bool, dict[str, Any]],
            ndim: int | None, allow_nonfinite: bool) -> ImageData:
    from medssl.data.validate import check_finite, check_ndim

    arr, affine, has_geometry, channels_last, info = parts
    if arr.size == 0:
        raise MedsslInputError(path, f"image has no voxels (shape {arr.shape})")
    if arr.ndim < 2:
        raise MedsslInputError(path, f"expected an image with at least 2 axes, got shape {arr.shape}")
    if ndim is not None:
        check_ndim(arr, ndim, path, channels_last=channels_last)
    if not allow_nonfinite:
        check_finite(arr, path)
    n_spatial = arr.ndim - 1 if channels_last else min(arr.ndim, 3)
    spacing = _spacing_from_affine(affine, n_spatial)
    meta = {"format": fmt, "dtype": str(arr.dtype), "has_geometry": has_geometry,
            "channels_last": channels_last, **info}
    meta.setdefault("warnings", [])
    return ImageData(array=arr, affine=affine, spacing=spacing, source=str(path), meta=meta)


def read_image(path: str | Path, ndim: int | None = None, *, allow_nonfinite: bool = False) -> ImageData:
    """Read an image file or DICOM series folder into :class:`ImageData`.

    Args:
        path: a .nii / .nii.gz / .nrrd / .nhdr / .dcm / .png / .jpg / .h5 (dataset ``image``) / .npy file,
            a DICOM file with another name, or a folder holding one DICOM series.
        ndim: expected number of spatial axes (2 or 3); ``None`` accepts any. Colour channels of 2D
            images do not count.
        allow_nonfinite: accept NaN / Inf voxels (for inspection); by default they are an error.

    Returns:
        ImageData with ``array`` spatial-first ((H, W), (H, W, 3) for colour 2D, (H, W, D), or
        (H, W, D, T) for 4D files), ``affine`` (4, 4) voxel-to-RAS mm, ``spacing`` in mm, and
        ``meta`` holding "format", "dtype", "has_geometry", "channels_last" and "warnings"
        (messages from the underlying readers).

    Raises:
        MedsslInputError: missing path, unknown format, unreadable or corrupt data, NaN / Inf values,
            or a dimensionality other than ``ndim``.
    """
    path = Path(path)
    fmt = image_format(path)
    if fmt == "nifti":
        parts = _read_nifti(path)
    elif fmt == "nrrd":
        parts = _read_nrrd(path)
    elif fmt == "dicom":
        parts = _read_dicom_file(path)
    elif fmt == "dicom-series":
        parts = _read_dicom_series(path)
    elif fmt in ("png", "jpeg"):
        parts = _read_pil(path, FORMAT_NAMES[fmt])
    elif fmt == "hdf5":
        parts = _read_hdf5(path, "image")
    else:
        parts = _read_npy(path)
    return _finish(path, fmt, parts, ndim, allow_nonfinite)


def read_h5(path: str | Path, key: str = "image", ndim: int | None = None, *,
            allow_nonfinite: bool = False) -> ImageData:
    """Read dataset ``key`` of an HDF5 file (e.g. the left-atrium ``image`` (H, W, D) or ``label``).

    Geometry comes from an ``affine`` (4, 4) or ``spacing`` attribute of the dataset or the file if
    present; otherwise spacing is 1 mm and ``meta["has_geometry"]`` is False.

    Raises:
        MedsslInputError: missing or corrupt file, missing dataset, NaN / Inf values, wrong ``ndim``.
    """
    path = Path(path)
    if not path.is_file():
        raise MedsslInputError(path, "no such file")
    return _finish(path, "hdf5", _read_hdf5(path, key), ndim, allow_nonfinite)


def has_h5_dataset(path: str | Path, key: str) -> bool:
    """Whether the HDF5 file ``path`` holds a dataset ``key`` (False for unreadable files)."""
    import h5py

    try:
        with h5py.File(str(path), "r") as h5:
            return key in h5 and isinstance(h5[key], h5py.Dataset)
    except Exception:  # an unreadable file simply has no such dataset; reading it reports why
        return False


def read_label(path: str | Path, like: ImageData | None = None, binary: bool = True, *,
               allow_empty: bool = False) -> ImageData:
    """Read and validate a segmentation label.

    HDF5 files are read from their ``label`` dataset. The label must be integer-valued (floating
    files holding whole numbers are accepted), non-negative, single-channel, finite, not empty
    (unless ``allow_empty``), and, with ``like``, have the same spatial shape and geometry as that
    image (see :func:`medssl.data.validate.check_same_geometry`). With ``binary``, values must be
    {0, 1} or {0, 255}; the latter is mapped to {0, 1}.

    Returns:
        ImageData whose array is uint8 (binary, or values < 256) or int32, shape (H, W[, D]).

    Raises:
        MedsslInputError: naming the label file and what is wrong with it.
    """
    from medssl.data import validate

    path = Path(path)
    fmt = image_format(path)
    label = read_h5(path, "label") if fmt == "hdf5" else read_image(path)
    if label.meta.get("channels_last"):
        raise MedsslInputError(path, f"a label must have one channel, got a colour image of shape "
                                     f"{label.array.shape}")
    arr = validate.check_integer_label(label.array, path)
    if binary:
        arr = validate.as_binary_label(arr, path)
    if not allow_empty:
        validate.check_nonempty_label(arr, path)
    label.array = arr
    if like is not None:
        validate.check_same_geometry(like, label)
    return label


# ----------------------------------------------------------------------------------------------
# writers
# ----------------------------------------------------------------------------------------------


def write_nifti(path: str | Path, array: np.ndarray, affine: np.ndarray | None = None) -> Path:
    """Write ``array`` (H, W[, D]) as NIfTI (.nii or .nii.gz) with ``affine`` (4, 4), atomically.

    Integer arrays keep their integer type (labels); floating arrays are stored as float32.
    """
    import nibabel as nib

    path = Path(path)
    arr = np.asarray(array)
    if arr.dtype == np.float64 or arr.dtype == np.float16:
        arr = arr.astype(np.float32)
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8)
    aff = np.eye(4) if affine is None else np.asarray(affine, dtype=np.float64)
    img = nib.Nifti1Image(arr, aff)
    img.header.set_xyzt_units("mm")
    img.set_qform(aff, code=1)
    img.set_sform(aff, code=1)
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))
    return path


def write_png(path: str | Path, array: np.ndarray) -> Path:
    """Write a 2D array (H, W) or (H, W, 3) as PNG, atomically.

    uint8 / uint16 arrays are written as they are (labels keep their values); floating arrays must
    already lie in [0, 1] and are scaled to uint8.
    """
    from PIL import Image

    arr = np.asarray(array)
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8)
    if np.issubdtype(arr.dtype, np.floating):
        arr = np.clip(np.rint(arr * 255.0), 0, 255).astype(np.uint8)
    if arr.dtype not in (np.uint8, np.uint16):
        arr = arr.astype(np.uint8 if arr.max(initial=0) < 256 else np.uint16)
    with atomic_path(path) as tmp:
        Image.fromarray(arr).save(str(tmp), format="PNG")
    return Path(path)
