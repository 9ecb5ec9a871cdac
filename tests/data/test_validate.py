"""medssl.data.validate: each check passes good input and names the file when it refuses."""

from __future__ import annotations

import numpy as np
import pytest

from medssl.data.io import ImageData, affine_from_spacing
from medssl.data.validate import (
    as_binary_label,
    check_binary_label,
    check_finite,
    check_integer_label,
    check_ndim,
    check_nonempty_label,
    check_same_geometry,
    geometry_mismatch,
)
from medssl.errors import MedsslInputError


def test_check_finite_counts_nan_and_inf() -> None:
    check_finite(np.arange(6, dtype=np.int16), "a.nii")  # integers are always finite
    check_finite(np.ones((2, 3), np.float32), "a.nii")
    arr = np.zeros((4, 4), np.float32)
    arr[0, :3] = np.nan
    arr[1, 0] = -np.inf
    with pytest.raises(MedsslInputError) as err:
        check_finite(arr, "scan.nii.gz")
    assert str(err.value) == "scan.nii.gz: contains 3 NaN and 1 infinite voxel values (out of 16)"


def test_check_ndim_ignores_a_colour_axis() -> None:
    check_ndim(np.zeros((4, 5, 6)), 3, "v.nrrd")
    check_ndim(np.zeros((4, 5, 3)), 2, "c.png", channels_last=True)
    with pytest.raises(MedsslInputError, match=r"^v\.nii: expected a 3D image, got 4D data of shape \(2, 3, 4, 5\)$"):
        check_ndim(np.zeros((2, 3, 4, 5)), 3, "v.nii")
    with pytest.raises(MedsslInputError, match="expected a 3D image, got 2D"):
        check_ndim(np.zeros((4, 5, 3)), 3, "c.png", channels_last=True)


def test_check_integer_label() -> None:
    out = check_integer_label(np.array([[0.0, 1.0], [2.0, 0.0]], np.float32), "l.nii")
    assert out.dtype == np.uint8 and out.tolist() == [[0, 1], [2, 0]]
    assert check_integer_label(np.array([0, 300], np.int64), "l.nii").dtype == np.int32
    assert check_integer_label(np.array([True, False]), "l.nii").dtype == np.uint8
    with pytest.raises(MedsslInputError, match=r"l\.nii: a label must hold integer values, found 1 non-integer "
                                               r"voxels \(e\.g\. 0\.25\)"):
        check_integer_label(np.array([0.0, 0.25, 1.0]), "l.nii")
    with pytest.raises(MedsslInputError, match="non-negative, found -1"):
        check_integer_label(np.array([0, -1, 1], np.int8), "l.nii")
    with pytest.raises(MedsslInputError, match="NaN"):
        check_integer_label(np.array([0.0, np.nan]), "l.nii")


def test_binary_checks_and_mapping() -> None:
    check_binary_label(np.array([0, 1, 1], np.uint8), "m.png")
    check_binary_label(np.zeros(3, np.uint8), "m.png")
    with pytest.raises(MedsslInputError, match=r"^m\.png: label must be binary \(0/1\), found values 0, 255$"):
        check_binary_label(np.array([0, 255], np.uint8), "m.png")
    mapped = as_binary_label(np.array([0, 255, 255, 0], np.uint8), "m.png")
    assert mapped.dtype == np.uint8 and mapped.tolist() == [0, 1, 1, 0]
    assert as_binary_label(np.array([1, 0], np.int32), "m.png").tolist() == [1, 0]
    with pytest.raises(MedsslInputError, match=r"found values 0, 1, 255"):
        as_binary_label(np.array([0, 1, 255], np.uint8), "m.png")
    many = np.arange(20)
    with pytest.raises(MedsslInputError, match=r"found values 0, 1, 2, 3, 4, 5, 6, 7, \.\.\. \(20 values\)"):
        as_binary_label(many, "m.png")


def test_check_nonempty_label() -> None:
    check_nonempty_label(np.eye(3), "l.nii")
    with pytest.raises(MedsslInputError, match=r"^l\.nii: label is empty \(no foreground voxel\)$"):
        check_nonempty_label(np.zeros((3, 3)), "l.nii")


def _img(shape: tuple[int, ...], affine: np.ndarray, spacing: tuple[float, ...], name: str) -> ImageData:
    return ImageData(np.zeros(shape, np.float32), affine, spacing, source=name)


def test_geometry_tolerance_is_a_hundredth_of_the_smallest_voxel() -> None:
    spacing = (1.0, 2.0, 3.0)
    image = _img((101, 11, 5), affine_from_spacing(spacing, (10.0, -5.0, 0.0)), spacing, "img.nii.gz")

    def label_with(affine: np.ndarray) -> ImageData:
        return _img((101, 11, 5), affine, spacing, "lab.nii.gz")

    # origin shift: every voxel moves by the shift; tolerance 0.01 * 1.0 mm
    near = image.affine.copy()
    near[1, 3] += 0.009
    check_same_geometry(image, label_with(near))
    far = image.affine.copy()
    far[1, 3] += 0.011
    with pytest.raises(MedsslInputError, match=r"^lab\.nii\.gz: geometry does not match the image's \(img\.nii\.gz\)"):
        check_same_geometry(image, label_with(far))
    # a spacing error grows along the axis: 100 voxels * 9e-5 mm = 0.009 mm passes, 1.1e-4 mm does not
    stretched = image.affine.copy()
    stretched[0, 0] += 9e-5
    assert geometry_mismatch(image, label_with(stretched)) is None
    stretched[0, 0] = 1.0 + 1.1e-4
    assert "differ by up to 0.011 mm" in geometry_mismatch(image, label_with(stretched))
    # a flipped axis is a mismatch even though the diagonal magnitudes agree
    flipped = image.affine.copy()
    flipped[2, 2] = -3.0
    assert geometry_mismatch(image, label_with(flipped)) is not None


def test_geometry_shape_mismatch_and_2d_grids() -> None:
    image = _img((8, 9), np.eye(4), (1.0, 1.0), "x.png")
    other = _img((9, 8), np.eye(4), (1.0, 1.0), "y.png")
    with pytest.raises(MedsslInputError, match=r"^y\.png: shape \(9, 8\) does not match the image's \(8, 9\) \(x\.png\)$"):
        check_same_geometry(image, other)
    colour = ImageData(np.zeros((8, 9, 3), np.uint8), np.eye(4), (1.0, 1.0), source="c.png")
    assert geometry_mismatch(colour, _img((8, 9), np.eye(4), (1.0, 1.0), "m.png")) is None
    moved = np.eye(4)
    moved[0, 1] = 0.002  # a shear: the far corner (7, 8) moves 0.016 mm > 0.01 mm
    assert geometry_mismatch(image, _img((8, 9), moved, (1.0, 1.0), "m.png")) is not None
    moved[0, 1] = 0.001  # 0.008 mm
    assert geometry_mismatch(image, _img((8, 9), moved, (1.0, 1.0), "m.png")) is None
