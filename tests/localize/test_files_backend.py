"""The ``files`` backend and the localizer registry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medssl.data.io import affine_from_spacing, read_image, write_nifti, write_png
from medssl.errors import MedsslInputError
from medssl.localize import available_localizers, create_localizer
from medssl.localize.files import FilesLocalizer


def _volume(tmp_path: Path) -> tuple[Path, np.ndarray]:
    affine = affine_from_spacing((1.5, 1.5, 2.0), origin=(10.0, -5.0, 3.0))
    path = write_nifti(tmp_path / "images" / "case_a.nii.gz", np.ones((6, 7, 5), np.float32), affine)
    return path, affine


def test_nifti_roi_map_is_binarised_and_matched_by_name(tmp_path: Path) -> None:
    image_path, affine = _volume(tmp_path)
    roi_map = np.zeros((6, 7, 5), np.float32)
    roi_map[1:3, 2:6, 0:2] = 0.5
    roi_map[5, 6, 4] = 7.0
    write_nifti(tmp_path / "rois" / "case_a.nii", roi_map, affine)
    loc = create_localizer("files", root=tmp_path / "rois")
    result = loc.localize(read_image(image_path), "any prompt")
    np.testing.assert_array_equal(result.roi, roi_map != 0)
    assert result.boxes == [((1, 3), (2, 6), (0, 2)), ((5, 6), (6, 7), (4, 5))]
    assert result.provenance["backend"] == "files" and result.provenance["prompt"] == "any prompt"
    assert result.provenance["roi_file"].endswith("case_a.nii")
    assert loc.params()["root"] == str((tmp_path / "rois").resolve())


def test_png_roi_map_for_a_png_image(tmp_path: Path) -> None:
    write_png(tmp_path / "img" / "x.png", np.full((5, 4), 100, np.uint8))
    roi = np.zeros((5, 4), np.uint8)
    roi[0:2, 1:3] = 255
    write_png(tmp_path / "rois" / "x.png", roi)
    result = FilesLocalizer(tmp_path / "rois").localize(read_image(tmp_path / "img" / "x.png"), "p")
    np.testing.assert_array_equal(result.roi, roi > 0)


def test_geometry_and_lookup_errors(tmp_path: Path) -> None:
    image_path, affine = _volume(tmp_path)
    image = read_image(image_path)
    rois = tmp_path / "rois"
    write_nifti(rois / "case_a.nii.gz", np.ones((6, 7, 4), np.uint8), affine)
    with pytest.raises(MedsslInputError, match=r"shape \(6, 7, 4\) does not match the image shape \(6, 7, 5\)"):
        FilesLocalizer(rois).localize(image, "p")
    write_nifti(rois / "case_a.nii.gz", np.ones((6, 7, 5), np.uint8), np.eye(4))
    with pytest.raises(MedsslInputError, match="affine"):
        FilesLocalizer(rois).localize(image, "p")
    write_nifti(rois / "case_a.nii", np.ones((6, 7, 5), np.uint8), affine)
    with pytest.raises(MedsslInputError, match="several ROI maps"):
        FilesLocalizer(rois).localize(image, "p")
    with pytest.raises(MedsslInputError, match="no ROI map named 'case_a"):
        FilesLocalizer(tmp_path).localize(image, "p")
    with pytest.raises(MedsslInputError, match="does not exist"):
        FilesLocalizer(tmp_path / "missing")


def test_edited_maps_change_the_params(tmp_path: Path) -> None:
    write_png(tmp_path / "x.png", np.zeros((3, 3), np.uint8))
    before = FilesLocalizer(tmp_path).params()
    write_png(tmp_path / "y.png", np.zeros((3, 3), np.uint8))
    assert FilesLocalizer(tmp_path).params()["fingerprint"] != before["fingerprint"]


def test_registry_names_and_errors() -> None:
    assert available_localizers() == ("structures", "files", "segmenter", "ct-lung-fields", "shuffled", "biomedclip-sam",
                                      "clipseg")
    with pytest.raises(MedsslInputError, match="unknown localization backend"):
        create_localizer("nope")
    with pytest.raises(MedsslInputError, match="bad backend parameters"):
        create_localizer("files", folder="x")
