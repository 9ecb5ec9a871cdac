"""medssl.data.inspect and medssl.data.preview on real and hand-built scans."""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
from nibabel.testing import data_path as NIB_DATA
from PIL import Image

from medssl.cli import main
from medssl.data.inspect import PERCENTILES, inspect_path
from medssl.data.io import ImageData, read_image, write_nifti, write_png
from medssl.data.preview import preview_panels, slice_indices, write_preview
from medssl.errors import MedsslInputError
from shared_paths import SHARED


def _shared_root() -> Path:
    return SHARED


def _la_cases(n: int) -> list[Path]:
    root = _shared_root() / "data" / "la"
    return sorted(p for p in root.iterdir() if (p / "mri_norm2.h5").is_file())[:n]


def _red_pixels(png: Path) -> int:
    rgb = np.asarray(Image.open(png).convert("RGB")).astype(int)
    return int(((rgb[..., 0] > 200) & (rgb[..., 1] < 110) & (rgb[..., 2] < 110)).sum())


# ---------------------------------------------------------------------------------------- inspect


def test_inspect_image_and_label_statistics(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    arr = rng.normal(100.0, 20.0, size=(12, 10, 8)).astype(np.float32)
    arr[0, 0, 0] = np.nan
    arr[1, 0, 0] = np.inf
    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    write_nifti(tmp_path / "img.nii.gz", arr, affine)
    mask = np.zeros(arr.shape, np.uint8)
    mask[3:7, 2:5, 1:4] = 1
    mask[9, 8, 6] = 1
    write_nifti(tmp_path / "lab.nii.gz", mask, affine)

    report = inspect_path(tmp_path / "img.nii.gz", label=tmp_path / "lab.nii.gz")
    finite = arr[np.isfinite(arr)].astype(np.float64)
    st = report.intensity
    assert (st.n_nan, st.n_inf) == (1, 1)
    assert st.minimum == pytest.approx(finite.min()) and st.maximum == pytest.approx(finite.max())
    assert st.mean == pytest.approx(finite.mean()) and st.std == pytest.approx(finite.std())
    assert list(st.percentiles.values()) == pytest.approx(list(np.percentile(finite, PERCENTILES)))
    assert report.shape == (12, 10, 8) and report.spacing == pytest.approx((0.8, 0.8, 2.5))
    assert report.orientation == "RAS" and report.file_format == "NIfTI"
    lb = report.label
    assert lb.counts == {0.0: mask.size - 37, 1.0: 37}  # 4*3*3 + 1
    assert lb.foreground_fraction == pytest.approx(37 / mask.size)
    assert lb.bbox == ((3, 9), (2, 8), (1, 6))
    assert lb.geometry_match is True
    assert report.problems == [f"{tmp_path / 'img.nii.gz'}: contains 1 NaN and 1 infinite voxel values (out of 960)"]
    text = report.format()
    assert "orientation:  RAS" in text and "1 NaN, 1 Inf" in text and "bounding box: [3, 9] x [2, 8] x [1, 6]" in text


def test_inspect_real_scan_orientation_and_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = os.path.join(NIB_DATA, "anatomical.nii")
    report = inspect_path(path)
    ref = np.asarray(nib.load(path).dataobj)
    assert report.orientation == "LAS" and report.dtype == "int16"
    assert (report.intensity.minimum, report.intensity.maximum) == (ref.min(), ref.max())
    assert report.problems == [] and report.label is None
    main(["data", "inspect", path])  # no problem: returns without exiting
    out = capsys.readouterr().out
    assert "format:       NIfTI" in out and "problems:     none" in out


def test_inspect_images_labels_folder(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    mask = np.zeros((6, 7), np.uint8)
    mask[2:4, 2:5] = 255
    for name in ("a", "b", "c"):
        write_png(tmp_path / "images" / f"{name}.png", np.full((6, 7), 90, np.uint8))
    write_png(tmp_path / "labels" / "a.png", mask)  # good, 0/255
    write_png(tmp_path / "labels" / "c.png", mask[:5])  # wrong shape; b has no label (unlabelled)
    write_png(tmp_path / "labels" / "z.png", mask)  # orphan
    report = inspect_path(tmp_path)
    assert report.kind == "dataset" and report.layout == "images/ + labels/"
    assert [(c.name, c.image_shape, c.label_shape) for c in report.cases] == [
        ("a", (6, 7), (6, 7)), ("b", (6, 7), None), ("c", (6, 7), (5, 7))]
    assert len(report.problems) == 2
    assert report.problems[0].startswith("c: ") and "shape (5, 7) does not match the image's (6, 7)" in report.problems[0]
    assert "z.png: label without an image" in report.problems[1]
    assert "cases:        3 (2 with a label)" in report.format()


def test_inspect_left_atrium_layout(tmp_path: Path) -> None:
    real = _la_cases(1)[0]
    (tmp_path / real.name).symlink_to(real, target_is_directory=True)
    bad = tmp_path / "ZZEMPTY"
    bad.mkdir()
    with h5py.File(bad / "mri_norm2.h5", "w") as h5:
        h5["image"] = np.ones((5, 6, 4), np.float32)
        h5["label"] = np.zeros((5, 6, 4), np.uint8)
    report = inspect_path(tmp_path)
    with h5py.File(real / "mri_norm2.h5", "r") as h5:
        shape = h5["image"].shape
    assert report.layout.startswith("left atrium")
    assert [(c.name, c.image_shape, c.label_shape) for c in report.cases] == [
        (real.name, shape, shape), ("ZZEMPTY", (5, 6, 4), (5, 6, 4))]
    assert report.cases[0].problems == []
    assert report.problems == [f"ZZEMPTY: {bad / 'mri_norm2.h5'}: label is empty (no foreground voxel)"]


def test_inspect_refuses_a_folder_that_is_no_dataset(tmp_path: Path) -> None:
    write_png(tmp_path / "a.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(MedsslInputError, match="neither a dataset folder .* nor a DICOM series folder"):
        inspect_path(tmp_path)
    (tmp_path / "images").mkdir()
    with pytest.raises(MedsslInputError, match="--label applies to a single image"):
        inspect_path(tmp_path, label=tmp_path / "a.png")


# ---------------------------------------------------------------------------------------- preview


def test_slice_indices_are_bin_centres() -> None:
    assert slice_indices(88, 9) == [4, 14, 24, 34, 44, 53, 63, 73, 83]
    assert slice_indices(5, 9) == [0, 1, 2, 3, 4]
    assert slice_indices(10, 1) == [5]


def test_preview_panels_use_radiological_view_from_geometry() -> None:
    # a marker in the patient's right-anterior corner of slice 2, seen from RAS and from LPS storage
    ras = np.zeros((6, 5, 4), np.float32)
    ras[5, 4, 2] = 1.0  # max x = right, max y = anterior
    mask = (ras > 0).astype(np.uint8)
    ras_img = ImageData(ras, np.diag([1.0, 2.0, 3.0, 1.0]), (1.0, 2.0, 3.0), meta={"has_geometry": True})
    lps_affine = np.diag([-1.0, -2.0, 3.0, 1.0])
    lps_img = ImageData(ras[::-1, ::-1].copy(), lps_affine, (1.0, 2.0, 3.0), meta={"has_geometry": True})
    for image in (ras_img, lps_img):
        panel = preview_panels(image, None, n_slices=4)[2]
        assert panel.image.shape == (5, 6)  # rows: anterior -> posterior, columns: right -> left
        assert np.argwhere(panel.image > 0.5).tolist() == [[0, 0]]
        assert panel.aspect == pytest.approx(2.0)
    panel = preview_panels(ras_img, ImageData(mask, ras_img.affine, ras_img.spacing), 4)[2]
    assert np.argwhere(panel.mask).tolist() == [[0, 0]]
    # without geometry: axis 0 down, axis 1 across, slices along the last axis
    raw = ImageData(ras, np.eye(4), (1.0, 1.0, 1.0), meta={"has_geometry": False, "format": "npy"})
    assert np.argwhere(preview_panels(raw, None, 4)[2].image > 0.5).tolist() == [[5, 4]]


def test_preview_real_left_atrium_case_outlines_label(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    h5 = _la_cases(1)[0] / "mri_norm2.h5"
    out = tmp_path / "figs" / "la.png"
    main(["data", "preview", str(h5), "--out", str(out), "--slices", "4"])
    assert capsys.readouterr().out.strip() == f"wrote {out}"
    assert sorted(p.name for p in out.parent.iterdir()) == ["la.png"]
    png = Image.open(out)
    assert png.format == "PNG" and png.width > 300 and png.height > 300
    assert _red_pixels(out) > 100  # the label outline (red) is drawn


def test_preview_mni_template_and_2d_png(tmp_path: Path) -> None:
    from nilearn.datasets import load_mni152_template

    nib.save(load_mni152_template(resolution=2), tmp_path / "mni.nii.gz")
    out = write_preview(tmp_path / "mni.nii.gz", tmp_path / "mni.png", n_slices=9)
    rgb = np.asarray(Image.open(out).convert("RGB")).astype(int)
    assert _red_pixels(out) == 0  # no label, no outline
    assert (rgb.mean(axis=2) > 150).sum() > 5000  # bright brain tissue is visible

    img = np.zeros((40, 60), np.uint8)
    img[10:30, 20:50] = 200
    write_png(tmp_path / "x.png", img)
    write_png(tmp_path / "m.png", (img > 0).astype(np.uint8))
    out2 = write_preview(tmp_path / "x.png", tmp_path / "x_preview.png", label=tmp_path / "m.png")
    assert _red_pixels(out2) > 20
    assert read_image(out2).array.shape[2] == 3
