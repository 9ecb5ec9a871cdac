"""Bad input through ``medssl data preview`` / ``inspect``: exit 2, one line on stderr, nothing written."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from nibabel.testing import data_path as NIB_DATA
from pydicom.data import get_testdata_file

from medssl.cli import main
from medssl.data.io import write_nifti

AFFINE = np.diag([1.2, 1.2, 2.0, 1.0])


def _cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as stop:
        main([str(a) for a in args])
    out, err = capsys.readouterr()
    return int(stop.value.code), out, err


def _preview_fails(capsys: pytest.CaptureFixture[str], tmp_path: Path, image: Path, *extra: object) -> str:
    """Run preview; assert exit 2, a single stderr line naming a file, and no output (not even a folder)."""
    out_png = tmp_path / "out" / "preview.png"
    code, out, err = _cli(["data", "preview", image, "--out", out_png, *extra], capsys)
    assert code == 2
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("medssl: error: ")
    assert not (tmp_path / "out").exists()
    assert out == ""
    return lines[0]


def _inspect_reports(capsys: pytest.CaptureFixture[str], image: Path, *extra: object) -> str:
    """Run ``medssl data inspect`` on content problems: exit 2 with the problem listed in the report."""
    code, out, _ = _cli(["data", "inspect", image, *extra], capsys)
    assert code == 2, out
    assert "problems (1):" in out
    return out


def _volume(shape: tuple[int, ...] = (10, 9, 6)) -> np.ndarray:
    return np.random.default_rng(0).normal(size=shape).astype(np.float32)


def _mask(shape: tuple[int, ...] = (10, 9, 6)) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    mask[3:6, 3:6, 2:4] = 1
    return mask


def test_truncated_nifti_gz(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    full = nib.load(os.path.join(NIB_DATA, "anatomical.nii"))
    nib.save(full, tmp_path / "anat.nii.gz")
    blob = (tmp_path / "anat.nii.gz").read_bytes()
    bad = tmp_path / "cut.nii.gz"
    bad.write_bytes(blob[: len(blob) // 2])
    line = _preview_fails(capsys, tmp_path, bad)
    assert f"{bad}: cannot read NIfTI file" in line
    code, _, err = _cli(["data", "inspect", bad], capsys)
    assert code == 2 and f"{bad}: cannot read NIfTI file" in err and len(err.splitlines()) == 1


def test_corrupt_nrrd(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "scan.nrrd"
    bad.write_bytes(np.random.default_rng(1).bytes(2048))
    line = _preview_fails(capsys, tmp_path, bad)
    assert f"{bad}: cannot read NRRD file" in line


def test_label_shape_mismatch(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = write_nifti(tmp_path / "img.nii.gz", _volume(), AFFINE)
    label = write_nifti(tmp_path / "lab.nii.gz", _mask((10, 9, 5)), AFFINE)
    line = _preview_fails(capsys, tmp_path, image, "--label", label)
    assert f"{label}: shape (10, 9, 5) does not match the image's (10, 9, 6)" in line
    assert "does not match the image's (10, 9, 6)" in _inspect_reports(capsys, image, "--label", label)


def test_label_affine_mismatch(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = write_nifti(tmp_path / "img.nii.gz", _volume(), AFFINE)
    moved = AFFINE.copy()
    moved[:3, 3] = (0.0, 0.0, 4.0)  # two slices off
    label = write_nifti(tmp_path / "lab.nii.gz", _mask(), moved)
    line = _preview_fails(capsys, tmp_path, image, "--label", label)
    assert f"{label}: geometry does not match the image's ({image})" in line
    assert "voxel positions differ by up to 4 mm" in line
    out = _inspect_reports(capsys, image, "--label", label)
    assert "geometry:     NO" in out


def test_empty_label(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = write_nifti(tmp_path / "img.nii.gz", _volume(), AFFINE)
    label = write_nifti(tmp_path / "lab.nii.gz", np.zeros((10, 9, 6), np.uint8), AFFINE)
    line = _preview_fails(capsys, tmp_path, image, "--label", label)
    assert line == f"medssl: error: {label}: label is empty (no foreground voxel)"
    assert "label is empty" in _inspect_reports(capsys, image, "--label", label)


def test_non_binary_label(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = write_nifti(tmp_path / "img.nii.gz", _volume(), AFFINE)
    mask = _mask()
    mask[0, 0, 0] = 3
    label = write_nifti(tmp_path / "lab.nii.gz", mask, AFFINE)
    line = _preview_fails(capsys, tmp_path, image, "--label", label)
    assert line == f"medssl: error: {label}: label must be binary (0/1 or 0/255), found values 0, 1, 3"
    assert "label must be binary" in _inspect_reports(capsys, image, "--label", label)


@pytest.mark.parametrize("value, counts", [(np.nan, "2 NaN and 0 infinite"), (np.inf, "0 NaN and 2 infinite")])
def test_nan_and_inf_voxels(tmp_path: Path, capsys: pytest.CaptureFixture[str], value: float, counts: str) -> None:
    vol = _volume()
    vol[1, 2, 3] = vol[4, 5, 0] = value
    image = write_nifti(tmp_path / "img.nii.gz", vol, AFFINE)
    line = _preview_fails(capsys, tmp_path, image)
    assert line == f"medssl: error: {image}: contains {counts} voxel values (out of 540)"
    assert counts in _inspect_reports(capsys, image)


def test_4d_file_where_3d_is_expected(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = os.path.join(NIB_DATA, "example4d.nii.gz")
    line = _preview_fails(capsys, tmp_path, Path(image))
    assert line == f"medssl: error: {image}: expected a 2D or 3D image, got 4D data of shape (128, 96, 24, 2)"


def _series_with_odd_slice(folder: Path) -> None:
    folder.mkdir()
    base = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    for k in range(3):
        ds = copy.deepcopy(base)
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [-158.1, -179.0, -75.7 + 2.0 * k]
        ds.save_as(folder / f"{k}.dcm")
    small = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    small.SeriesInstanceUID = base.SeriesInstanceUID
    small.InstanceNumber = 4
    small.save_as(folder / "3.dcm")


@pytest.mark.parametrize("kind", ["no-dicom-files", "different-slice-sizes"])
def test_unreadable_dicom_series_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str) -> None:
    folder = tmp_path / "series"
    if kind == "no-dicom-files":
        folder.mkdir()
        (folder / "IM0001").write_bytes(b"not a dicom file" * 8)
        (folder / "IM0002.dcm").write_text("neither is this")
        expected = "unreadable DICOM series: none of the 2 files in the folder is a DICOM file"
    else:
        _series_with_odd_slice(folder)
        expected = "unreadable DICOM series: slices have different sizes (64x64, 128x128)"
    line = _preview_fails(capsys, tmp_path, folder)
    assert line == f"medssl: error: {folder}: {expected}"
