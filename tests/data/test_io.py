"""Readers and writers of medssl.data.io on real scans shipped inside installed packages."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pydicom
import pytest
from nibabel.testing import data_path as NIB_DATA
from PIL import Image
from pydicom.data import get_testdata_file

from medssl.data.io import (
    ImageData,
    image_format,
    orientation_code,
    read_h5,
    read_image,
    read_label,
    write_nifti,
    write_png,
)
from medssl.errors import MedsslInputError
from shared_paths import SHARED

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _shared_root() -> Path:
    return SHARED


def _la_case() -> Path:
    root = _shared_root() / "data" / "la"
    case = sorted(p for p in root.iterdir() if (p / "mri_norm2.h5").is_file())[0]
    return case / "mri_norm2.h5"


def _dicom_affine_ras(ds: pydicom.Dataset, slice_step: np.ndarray | None = None) -> np.ndarray:
    """Voxel (column i, row j, slice k) -> RAS mm from DICOM header fields, written out independently."""
    iop = np.asarray(ds.ImageOrientationPatient, dtype=float)
    row_spacing, col_spacing = (float(v) for v in ds.PixelSpacing)
    lps = np.eye(4)
    lps[:3, 0] = iop[:3] * col_spacing  # moving along a row = next column
    lps[:3, 1] = iop[3:] * row_spacing  # moving down a column = next row
    lps[:3, 2] = np.cross(iop[:3], iop[3:]) if slice_step is None else slice_step
    lps[:3, 3] = np.asarray(ds.ImagePositionPatient, dtype=float)
    return LPS_TO_RAS @ lps


# ---------------------------------------------------------------------------------------- DICOM


def test_ct_small_values_spacing_and_affine_match_pydicom_header() -> None:
    path = get_testdata_file("CT_small.dcm")
    ds = pydicom.dcmread(path)
    img = read_image(path)
    hu = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    assert img.array.shape == (ds.Columns, ds.Rows) == (128, 128)
    np.testing.assert_array_equal(img.array, hu.T)
    assert img.array.dtype == np.float32
    assert img.spacing == pytest.approx((float(ds.PixelSpacing[1]), float(ds.PixelSpacing[0])))
    assert img.spacing == pytest.approx((0.661468, 0.661468))
    expected = _dicom_affine_ras(ds)
    np.testing.assert_allclose(img.affine[:3, [0, 1, 3]], expected[:3, [0, 1, 3]], atol=1e-5)
    assert orientation_code(img.affine, 2) == "LP"
    assert img.meta["format"] == "dicom" and img.meta["has_geometry"] is True
    assert (img.array.min(), img.array.max()) == (hu.min(), hu.max())


def test_mr_small_keeps_integer_type() -> None:
    path = get_testdata_file("MR_small.dcm")
    ds = pydicom.dcmread(path)
    img = read_image(path, ndim=2)
    assert img.array.dtype == np.int16
    np.testing.assert_array_equal(img.array, ds.pixel_array.T)
    assert img.spacing == pytest.approx((0.3125, 0.3125))


def test_multiframe_dicom_puts_frames_last() -> None:
    path = get_testdata_file("emri_small.dcm")
    frames = pydicom.dcmread(path).pixel_array  # (frames, rows, columns)
    img = read_image(path, ndim=3)
    assert frames.shape == (10, 64, 64)
    assert img.array.shape == (64, 64, 10)
    for k in range(10):
        np.testing.assert_array_equal(img.array[:, :, k], frames[k].T)
    assert img.meta["has_geometry"] is False  # the file carries no patient geometry
    assert any("no patient position / orientation" in w for w in img.meta["warnings"])


def test_enhanced_multiframe_ct_geometry_from_functional_groups() -> None:
    path = get_testdata_file("eCT_Supplemental.dcm")
    ds = pydicom.dcmread(path)
    shared = ds.SharedFunctionalGroupsSequence[0]
    measures = shared.PixelMeasuresSequence[0]
    transform = shared.PixelValueTransformationSequence[0]
    positions = [np.asarray(f.PlanePositionSequence[0].ImagePositionPatient, dtype=float)
                 for f in ds.PerFrameFunctionalGroupsSequence]
    img = read_image(path)
    assert img.array.shape == (512, 512, 2)
    values = ds.pixel_array.astype(np.float64) * float(transform.RescaleSlope) + float(transform.RescaleIntercept)
    np.testing.assert_array_equal(img.array[:, :, 1], values[1].T)
    assert img.spacing == pytest.approx((float(measures.PixelSpacing[1]), float(measures.PixelSpacing[0]),
                                         float(np.linalg.norm(positions[1] - positions[0]))))
    fake = pydicom.Dataset()
    fake.ImageOrientationPatient = shared.PlaneOrientationSequence[0].ImageOrientationPatient
    fake.PixelSpacing = measures.PixelSpacing
    fake.ImagePositionPatient = list(positions[0])
    np.testing.assert_allclose(img.affine, _dicom_affine_ras(fake, positions[1] - positions[0]), atol=1e-5)
    assert orientation_code(img.affine) == "RPS"  # first axis runs to patient right (IOP row = -x LPS)
    assert img.meta["has_geometry"] is True and img.meta["warnings"] == []


def _write_series(folder: Path, n: int, gap: float, spacing: tuple[float, float] = (0.5, 0.7)) -> list[np.ndarray]:
    """Copies of CT_small stacked ``gap`` mm apart (files named out of order); returns their raw slices."""
    folder.mkdir()
    base = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    raws = []
    for k in range(n):
        ds = copy.deepcopy(base)
        raw = (base.pixel_array + 10 * k).astype(base.pixel_array.dtype)
        ds.PixelData = raw.tobytes()
        ds.PixelSpacing = list(spacing)
        x, y, z = (float(v) for v in base.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y, z + gap * k]
        ds.InstanceNumber = k + 1
        ds.SOPInstanceUID = f"{base.SOPInstanceUID}.{k + 1}"
        ds.save_as(folder / f"slice_{(7 * k) % n:03d}.dcm")
        raws.append(raw)
    return raws


def test_dicom_series_folder_stacks_in_order_with_slice_spacing(tmp_path: Path) -> None:
    raws = _write_series(tmp_path / "series", n=5, gap=2.5)
    (tmp_path / "series" / "notes.txt").write_text("acquisition notes")
    base = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    img = read_image(tmp_path / "series", ndim=3)
    assert img.array.shape == (128, 128, 5)
    for k, raw in enumerate(raws):
        np.testing.assert_array_equal(img.array[:, :, k], raw.T.astype(np.float32) - 1024.0)
    assert img.spacing == pytest.approx((0.7, 0.5, 2.5))
    base.PixelSpacing = [0.5, 0.7]
    np.testing.assert_allclose(img.affine, _dicom_affine_ras(base, np.array([0.0, 0.0, 2.5])), atol=1e-5)
    assert img.meta["format"] == "dicom-series"
    assert any("non-DICOM" in w for w in img.meta["warnings"])


def test_dicom_series_with_missing_slice_is_refused(tmp_path: Path) -> None:
    _write_series(tmp_path / "series", n=5, gap=2.0)
    (tmp_path / "series" / "slice_002.dcm").unlink()  # instance 2 (z + 2 mm) disappears
    with pytest.raises(MedsslInputError, match="uneven slice gaps"):
        read_image(tmp_path / "series")


# ---------------------------------------------------------------------------------------- NIfTI / NRRD


def test_nifti_anatomical_matches_nibabel() -> None:
    path = os.path.join(NIB_DATA, "anatomical.nii")
    ref = nib.load(path)
    img = read_image(path, ndim=3)
    assert img.array.shape == ref.shape == (33, 41, 25)
    np.testing.assert_array_equal(img.array, np.asarray(ref.dataobj))
    assert img.array.dtype == np.int16 and img.array.dtype.isnative
    np.testing.assert_array_equal(img.affine, ref.affine)
    assert img.spacing == pytest.approx(tuple(float(z) for z in ref.header.get_zooms()))
    assert orientation_code(img.affine) == "LAS"


def test_4d_nifti_is_read_whole_but_refused_as_3d() -> None:
    path = os.path.join(NIB_DATA, "example4d.nii.gz")
    img = read_image(path)
    assert img.array.shape == (128, 96, 24, 2)
    assert len(img.spacing) == 3
    with pytest.raises(MedsslInputError, match=r"expected a 3D image, got 4D"):
        read_image(path, ndim=3)


def test_mni152_template_round_trips_with_geometry(tmp_path: Path) -> None:
    from nilearn.datasets import load_mni152_template

    template = load_mni152_template(resolution=2)
    nib.save(template, tmp_path / "mni.nii.gz")
    img = read_image(tmp_path / "mni.nii.gz")
    assert img.array.shape == (99, 117, 95)
    np.testing.assert_array_equal(img.affine, template.affine)
    assert img.spacing == (2.0, 2.0, 2.0)
    ref = nib.load(tmp_path / "mni.nii.gz").get_fdata()  # stored as scaled integers
    np.testing.assert_allclose(img.array, ref, rtol=0, atol=1e-6)
    assert img.array.min() == 0.0 and 0.9 < img.array.max() <= 1.0
    assert orientation_code(img.affine) == "RAS"
    # write_nifti keeps array and geometry
    write_nifti(tmp_path / "copy.nii.gz", img.array, img.affine)
    back = read_image(tmp_path / "copy.nii.gz")
    np.testing.assert_array_equal(back.array, img.array)
    np.testing.assert_array_equal(back.affine, img.affine)


def test_write_nifti_round_trips_a_real_oblique_free_scan(tmp_path: Path) -> None:
    src = read_image(os.path.join(NIB_DATA, "anatomical.nii"))
    out = write_nifti(tmp_path / "anat.nii", src.array, src.affine)
    back = read_image(out)
    np.testing.assert_array_equal(back.array, src.array)
    assert back.array.dtype == np.int16
    np.testing.assert_array_equal(back.affine, src.affine)
    assert list(tmp_path.iterdir()) == [out]  # no temporary file left beside it


def test_write_nifti_round_trips_dicom_series_geometry(tmp_path: Path) -> None:
    _write_series(tmp_path / "series", n=3, gap=3.0)
    src = read_image(tmp_path / "series")
    back = read_image(write_nifti(tmp_path / "ct.nii.gz", src.array, src.affine))
    np.testing.assert_array_equal(back.array, src.array)
    np.testing.assert_allclose(back.affine, src.affine, atol=1e-5)


@pytest.mark.parametrize("suffix", [".nrrd", ".nhdr"])
def test_nrrd_written_by_simpleitk_matches_nibabel_geometry(tmp_path: Path, suffix: str) -> None:
    import SimpleITK as sitk

    src = os.path.join(NIB_DATA, "anatomical.nii")
    sitk.WriteImage(sitk.ReadImage(src), str(tmp_path / f"anat{suffix}"))  # NRRD in LPS space
    ref = nib.load(src)
    img = read_image(tmp_path / f"anat{suffix}")
    np.testing.assert_array_equal(img.array, np.asarray(ref.dataobj))
    assert img.array.dtype == np.int16
    np.testing.assert_allclose(img.affine, ref.affine, atol=1e-5)
    assert img.meta["format"] == "nrrd"


def test_nrrd_without_world_space_uses_its_spacings(tmp_path: Path) -> None:
    import nrrd

    arr = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    nrrd.write(str(tmp_path / "plain.nrrd"), arr, {"spacings": [0.5, 2.0, 3.0]})
    img = read_image(tmp_path / "plain.nrrd")
    np.testing.assert_array_equal(img.array, arr)
    assert img.spacing == (0.5, 2.0, 3.0) and img.meta["has_geometry"] is False


# ---------------------------------------------------------------------------------------- 2D, HDF5, NumPy


def test_png_is_row_column_and_colour_last(tmp_path: Path) -> None:
    gray = (np.arange(5 * 7).reshape(5, 7) * 7 % 256).astype(np.uint8)
    Image.fromarray(gray).save(tmp_path / "g.png")
    img = read_image(tmp_path / "g.png", ndim=2)
    assert img.array.shape == (5, 7)  # (row, column)
    np.testing.assert_array_equal(img.array, gray)
    assert img.meta["has_geometry"] is False and img.spacing == (1.0, 1.0)

    rgba = np.zeros((5, 7, 4), np.uint8)
    rgba[..., 0] = gray
    rgba[..., 2] = 255 - gray
    rgba[..., 3] = 128
    Image.fromarray(rgba).save(tmp_path / "c.png")
    colour = read_image(tmp_path / "c.png", ndim=2)
    assert colour.array.shape == (5, 7, 3) and colour.meta["channels_last"] is True
    np.testing.assert_array_equal(colour.array[..., 0], gray)
    np.testing.assert_array_equal(colour.array[..., 2], 255 - gray)
    assert colour.spatial_shape == (5, 7)

    Image.fromarray(np.full((6, 9), 200, np.uint8)).save(tmp_path / "g.jpg", quality=95)
    jpg = read_image(tmp_path / "g.jpg")
    assert jpg.array.shape == (6, 9) and np.abs(jpg.array.astype(int) - 200).max() <= 2


def test_h5_real_left_atrium_case_and_npy(tmp_path: Path) -> None:
    path = _la_case()
    with h5py.File(path, "r") as h5:
        image, label = h5["image"][()], h5["label"][()]
    img = read_h5(path, ndim=3)
    np.testing.assert_array_equal(img.array, image)
    assert img.meta["has_geometry"] is False and img.spacing == (1.0, 1.0, 1.0)
    assert read_image(path).array.shape == image.shape
    lab = read_label(path, like=img)
    np.testing.assert_array_equal(lab.array, label)
    assert lab.array.dtype == np.uint8 and 0 < lab.array.sum() < lab.array.size

    np.save(tmp_path / "vol.npy", image[:4, :5, :6].astype(np.float64))
    arr = read_image(tmp_path / "vol.npy").array
    assert arr.dtype == np.float32
    np.testing.assert_array_equal(arr, image[:4, :5, :6])


def test_h5_spacing_attribute_and_missing_dataset(tmp_path: Path) -> None:
    with h5py.File(tmp_path / "v.h5", "w") as h5:
        h5.create_dataset("image", data=np.ones((3, 4, 5), np.float32)).attrs["spacing"] = [0.5, 0.6, 2.0]
    img = read_h5(tmp_path / "v.h5")
    assert img.spacing == pytest.approx((0.5, 0.6, 2.0)) and img.meta["has_geometry"] is True
    with pytest.raises(MedsslInputError, match="no 'label' dataset .*image"):
        read_h5(tmp_path / "v.h5", "label")


# ---------------------------------------------------------------------------------------- labels


def _grid(shape: tuple[int, ...], values: np.ndarray | None = None, affine: np.ndarray | None = None) -> ImageData:
    arr = np.zeros(shape, np.float32) if values is None else values
    aff = np.diag([1.5, 1.5, 2.0, 1.0]) if affine is None else affine
    return ImageData(arr, aff, (1.5, 1.5, 2.0)[: len(shape)], source="image.nii.gz")


def test_read_label_maps_0_255_and_checks_values(tmp_path: Path) -> None:
    mask = np.zeros((6, 8), np.uint8)
    mask[2:4, 3:7] = 255
    write_png(tmp_path / "m.png", mask)
    lab = read_label(tmp_path / "m.png")
    assert lab.array.dtype == np.uint8 and set(np.unique(lab.array)) == {0, 1}
    assert int(lab.array.sum()) == 8

    multi = np.zeros((4, 5, 3), np.int16)
    multi[1, 1, 1], multi[2, 2, 2] = 1, 2
    write_nifti(tmp_path / "multi.nii.gz", multi, _grid((4, 5, 3)).affine)
    with pytest.raises(MedsslInputError, match=r"multi\.nii\.gz: label must be binary .*found values 0, 1, 2"):
        read_label(tmp_path / "multi.nii.gz")
    assert set(np.unique(read_label(tmp_path / "multi.nii.gz", binary=False).array)) == {0, 1, 2}

    frac = multi.astype(np.float32) * 0.5
    write_nifti(tmp_path / "frac.nii.gz", frac)
    with pytest.raises(MedsslInputError, match="non-integer"):
        read_label(tmp_path / "frac.nii.gz", binary=False)

    write_nifti(tmp_path / "empty.nii.gz", np.zeros((4, 5, 3), np.uint8))
    with pytest.raises(MedsslInputError, match="empty"):
        read_label(tmp_path / "empty.nii.gz")
    assert read_label(tmp_path / "empty.nii.gz", allow_empty=True).array.sum() == 0


def test_read_label_checks_geometry_against_image(tmp_path: Path) -> None:
    image = _grid((4, 5, 3))
    mask = np.zeros((4, 5, 3), np.uint8)
    mask[1:3, 1:3, 1] = 1
    write_nifti(tmp_path / "ok.nii.gz", mask, image.affine)
    assert read_label(tmp_path / "ok.nii.gz", like=image).array.sum() == 4
    shifted = image.affine.copy()
    shifted[0, 3] += 1.5  # one voxel along x
    write_nifti(tmp_path / "shifted.nii.gz", mask, shifted)
    with pytest.raises(MedsslInputError, match=r"shifted\.nii\.gz: geometry does not match"):
        read_label(tmp_path / "shifted.nii.gz", like=image)
    write_nifti(tmp_path / "short.nii.gz", mask[:, :, :2], image.affine)
    with pytest.raises(MedsslInputError, match=r"shape \(4, 5, 2\) does not match the image's \(4, 5, 3\)"):
        read_label(tmp_path / "short.nii.gz", like=image)


# ---------------------------------------------------------------------------------------- user errors


def test_user_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(MedsslInputError, match="nope.nii.gz: no such file"):
        read_image(tmp_path / "nope.nii.gz")
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(MedsslInputError, match=r"notes\.txt: unknown image format '\.txt'"):
        image_format(tmp_path / "notes.txt")

    data = (nib.load(os.path.join(NIB_DATA, "anatomical.nii")).get_fdata()).astype(np.float32)
    write_nifti(tmp_path / "full.nii.gz", data)
    blob = (tmp_path / "full.nii.gz").read_bytes()
    (tmp_path / "half.nii.gz").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(MedsslInputError, match=r"half\.nii\.gz: cannot read NIfTI file"):
        read_image(tmp_path / "half.nii.gz")

    (tmp_path / "junk.nrrd").write_bytes(np.random.default_rng(0).bytes(512))
    with pytest.raises(MedsslInputError, match=r"junk\.nrrd: cannot read NRRD file"):
        read_image(tmp_path / "junk.nrrd")

    with pytest.raises(MedsslInputError, match=r"MR_truncated\.dcm: cannot read DICOM pixel data"):
        read_image(get_testdata_file("MR_truncated.dcm"))

    bad = data.copy()
    bad[0, 0, 0], bad[1, 1, 1], bad[2, 2, 2] = np.nan, np.inf, -np.inf
    write_nifti(tmp_path / "nan.nii.gz", bad)
    with pytest.raises(MedsslInputError, match=r"nan\.nii\.gz: contains 1 NaN and 2 infinite"):
        read_image(tmp_path / "nan.nii.gz")
    assert np.isnan(read_image(tmp_path / "nan.nii.gz", allow_nonfinite=True).array).sum() == 1


def test_unreadable_dicom_folders(tmp_path: Path) -> None:
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "a.dcm").write_bytes(b"\x00" * 64)
    (junk / "b.txt").write_text("hello")
    with pytest.raises(MedsslInputError, match="none of the 2 files in the folder is a DICOM file"):
        read_image(junk)

    sizes = tmp_path / "sizes"
    _write_series(sizes, n=3, gap=1.0)
    small = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    small.SeriesInstanceUID = pydicom.dcmread(sizes / "slice_000.dcm").SeriesInstanceUID
    small.InstanceNumber = 9
    small.save_as(sizes / "odd.dcm")
    with pytest.raises(MedsslInputError, match=r"slices have different sizes \(64x64, 128x128\)"):
        read_image(sizes)
