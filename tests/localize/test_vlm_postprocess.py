"""The saliency → ROI path shared by the vision-language backends, image preparation and slice-wise 3D
aggregation, on known saliency maps and masks (exact boxes written out by hand)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from medssl.data.io import ImageData
from medssl.errors import MedsslInputError
from medssl.localize.base import LocalizationResult
from medssl.localize.sam import saliency_to_roi, sam_box, to_rgb_uint8, window_uint8
from medssl.localize.slicewise import SliceWiseLocalizer, nearest_run_slice, slicewise_localize


def _three_blobs() -> np.ndarray:
    """20 x 16 saliency: blob A rows 2:6 cols 3:9 (24 px, 0.9), B rows 10:13 cols 10:12 (6 px, 0.8),
    C rows 15:17 cols 1:5 (8 px, 0.7) on a 0.05 background."""
    s = np.full((20, 16), 0.05, np.float32)
    s[2:6, 3:9] = 0.9
    s[10:13, 10:12] = 0.8
    s[15:17, 1:5] = 0.7
    return s


def _filled(shape: tuple[int, ...], *boxes: tuple[tuple[int, int], ...]) -> np.ndarray:
    out = np.zeros(shape, bool)
    for box in boxes:
        out[tuple(slice(lo, hi) for lo, hi in box)] = True
    return out


@pytest.mark.parametrize("binarize", ["kmeans", "threshold"])
def test_two_largest_components_and_expanded_boxes(binarize: str) -> None:
    steps = saliency_to_roi(_three_blobs(), binarize=binarize, threshold=0.3, components=2, expand_ratio=1.5)
    # A and C are kept (24 and 8 px), B (6 px) is dropped
    np.testing.assert_array_equal(steps.coarse_mask, _filled((20, 16), ((2, 6), (3, 9)), ((15, 17), (1, 5))))
    # A: rows c=4 h=3 -> (1, 7); cols c=6 h=4.5 -> (1.5, 10.5) -> (1, 11)
    # C: rows c=16 h=1.5 -> (14.5, 17.5) -> (14, 18); cols c=3 h=3 -> (0, 6)
    assert steps.boxes == [((1, 7), (1, 11)), ((14, 18), (0, 6))]
    np.testing.assert_array_equal(steps.roi, _filled((20, 16), *steps.boxes))
    assert steps.refined_mask is None and steps.prompt_boxes == [] and steps.empty_at is None


def test_sam_prompt_boxes_per_component_or_union_and_the_refined_components() -> None:
    seen: list[list] = []
    refined = np.zeros((20, 16), bool)
    refined[3:8, 2:10] = True     # 40 px
    refined[12:14, 12:15] = True  # 6 px

    def fake_sam(boxes: list) -> np.ndarray:
        seen.append(list(boxes))
        return refined

    steps = saliency_to_roi(_three_blobs(), binarize="threshold", components=2, refine=fake_sam,
                            sam_boxes="per-component", expand_ratio=1.0)
    assert seen[-1] == [((2, 6), (3, 9)), ((15, 17), (1, 5))] == steps.prompt_boxes
    np.testing.assert_array_equal(steps.refined_mask, refined)
    assert steps.boxes == [((3, 8), (2, 10)), ((12, 14), (12, 15))]  # boxes come from the refined mask
    steps = saliency_to_roi(_three_blobs(), binarize="threshold", components=2, refine=fake_sam, sam_boxes="union")
    assert seen[-1] == [((2, 17), (1, 9))]
    steps = saliency_to_roi(_three_blobs(), binarize="threshold", components=1, refine=fake_sam, expand_ratio=2.0)
    assert seen[-1] == [((2, 6), (3, 9))]  # K = 1 before SAM ...
    np.testing.assert_array_equal(steps.refined_mask, _filled((20, 16), ((3, 8), (2, 10))))  # ... and after
    # rows (3, 8): c=5.5 h=5 -> (0.5, 10.5) -> (0, 11); cols (2, 10): c=6 h=8 -> (-2, 14) -> clipped (0, 14)
    assert steps.boxes == [((0, 11), (0, 14))]
    np.testing.assert_array_equal(steps.roi, _filled((20, 16), ((0, 11), (0, 14))))


def test_empty_steps_give_an_empty_roi_and_say_where() -> None:
    def never(_boxes: list) -> np.ndarray:
        raise AssertionError("SAM must not run on an empty coarse mask")

    steps = saliency_to_roi(np.zeros((8, 8), np.float32), refine=never)
    assert steps.empty_at == "coarse_mask" and not steps.roi.any() and steps.boxes == []
    assert steps.refined_mask is not None and not steps.refined_mask.any()
    steps = saliency_to_roi(_three_blobs(), refine=lambda b: np.zeros((20, 16), bool))
    assert steps.empty_at == "refined_mask" and steps.coarse_mask.any() and not steps.roi.any()
    with pytest.raises(MedsslInputError, match="sam_boxes"):
        saliency_to_roi(_three_blobs(), sam_boxes="all")
    with pytest.raises(MedsslInputError, match="binarize"):
        saliency_to_roi(_three_blobs(), binarize="otsu")


def test_image_preparation() -> None:
    ramp = np.arange(256, dtype=np.float32).reshape(16, 16)
    np.testing.assert_array_equal(window_uint8(ramp, (0, 100)), ramp.astype(np.uint8))
    clipped = window_uint8(ramp, (10, 90))  # 10th / 90th percentiles of 0..255 = 25.5 and 229.5
    assert clipped[0, 0] == 0 and clipped[-1, -1] == 255
    assert clipped.flat[128] == round((128 - 25.5) / 204 * 255)
    assert not window_uint8(np.full((4, 4), 3.0)).any()
    u8 = np.arange(12, dtype=np.uint8).reshape(3, 4)
    assert window_uint8(u8) is u8  # display values pass unchanged
    rgb = to_rgb_uint8(u8)
    assert rgb.shape == (3, 4, 3) and all(np.array_equal(rgb[..., c], u8) for c in range(3))
    rgba = np.dstack([u8, u8 + 1, u8 + 2, np.full_like(u8, 9)])
    np.testing.assert_array_equal(to_rgb_uint8(rgba), rgba[..., :3])
    np.testing.assert_array_equal(to_rgb_uint8(u8[..., None]), rgb)
    assert sam_box(((2, 6), (3, 9))) == [3.0, 2.0, 9.0, 6.0]  # [x0, y0, x1, y1]


class _ThresholdStub:
    """A 2D localizer that thresholds the slice (refined = > 0.5; coarse adds the whole first row)."""

    name = "stub"
    model_id = None
    model_revision = None

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def params(self) -> dict[str, Any]:
        return {"t": 0.5}

    def localize(self, image: ImageData, prompt: str, context: dict[str, Any] | None = None) -> LocalizationResult:
        self.calls.append(dict(context or {}, shape=image.array.shape))
        refined = image.array > 0.5
        coarse = refined.copy()
        coarse[0, :] = True
        return LocalizationResult(roi=refined, saliency=image.array.astype(np.float32), coarse_mask=coarse,
                                  refined_mask=refined,
                                  provenance={"empty_at": None if refined.any() else "refined_mask"})


def _volume() -> ImageData:
    """(12, 10, 7): big block [2:6, 3:8, 1:5], small block [8:10, 1:3, 5:7]."""
    vol = np.zeros((12, 10, 7), np.float32)
    vol[2:6, 3:8, 1:5] = 1.0
    vol[8:10, 1:3, 5:7] = 1.0
    return ImageData(array=vol, affine=np.eye(4), spacing=(1.0, 1.0, 2.0))


def test_slicewise_3d_boxes_from_the_stacked_refined_masks() -> None:
    stub = _ThresholdStub()
    wrapper = SliceWiseLocalizer(stub, axis=2, components=2, expand_ratio=1.5)
    result = wrapper.localize(_volume(), "p")
    assert [c["slice_index"] for c in stub.calls] == list(range(7)) and stub.calls[0]["shape"] == (12, 10)
    # big: rows (2,6) -> (1,7); cols (3,8) c=5.5 h=3.75 -> (1.75, 9.25) -> (1,10); slices (1,5) -> (0,6)
    # small: rows (8,10) -> (7.5,10.5) -> (7,11); cols (1,3) -> (0.5,3.5) -> (0,4); slices (5,7) -> (4.5,7.5) -> (4,7)
    assert result.boxes == [((1, 7), (1, 10), (0, 6)), ((7, 11), (0, 4), (4, 7))]
    np.testing.assert_array_equal(result.roi, _filled((12, 10, 7), *result.boxes))
    assert result.saliency.shape == result.coarse_mask.shape == result.refined_mask.shape == (12, 10, 7)
    np.testing.assert_array_equal(result.refined_mask, _volume().array > 0.5)
    prov = result.provenance
    assert prov["backend"] == "stub/slicewise" and prov["mask_used"] == "refined_mask"
    assert prov["slices_run"] == 7 and prov["slices_with_mask"] == 6 and prov["slice_empty_at"] == {"refined_mask": 1}
    assert prov["params"]["inner"] == {"t": 0.5} and prov["params"]["inner_backend"] == "stub"
    assert prov["n_components"] == 2 and prov["empty_at"] is None


def test_slicewise_axis_and_stride() -> None:
    vol = _volume()
    rois = [slicewise_localize(_ThresholdStub(), vol, "p", axis=a, components=1).roi for a in (0, 1, 2)]
    expected = _filled((12, 10, 7), ((2, 6), (3, 8), (1, 5)))
    for roi in rois:
        np.testing.assert_array_equal(roi, expected)
    stub = _ThresholdStub()
    result = slicewise_localize(stub, vol, "p", axis=2, stride=2, components=1)
    # run slices 0, 2, 4, 6; slice 1 <- 0 (tie -> lower), 3 <- 2, 5 <- 4: the big block spans slices 2..5
    assert [c["slice_index"] for c in stub.calls] == [0, 2, 4, 6]
    assert nearest_run_slice(7, [0, 2, 4, 6]) == [0, 0, 2, 2, 4, 4, 6]
    assert result.boxes == [((2, 6), (3, 8), (2, 6))] and result.provenance["slices_run"] == 4


def test_slicewise_empty_volume_2d_passthrough_and_bad_settings() -> None:
    empty = ImageData(array=np.zeros((6, 5, 3), np.float32), affine=np.eye(4), spacing=(1.0, 1.0, 1.0))
    result = slicewise_localize(_ThresholdStub(), empty, "p")
    assert not result.roi.any() and result.boxes == [] and result.provenance["empty_at"] == "slices"
    flat = ImageData(array=_volume().array[:, :, 2], affine=np.eye(4), spacing=(1.0, 1.0))
    stub = _ThresholdStub()
    assert SliceWiseLocalizer(stub).localize(flat, "p").roi.shape == (12, 10) and len(stub.calls) == 1
    with pytest.raises(MedsslInputError, match="slice_stride"):
        SliceWiseLocalizer(stub, stride=0)
    with pytest.raises(MedsslInputError, match="slice_axis"):
        SliceWiseLocalizer(stub, axis=3)
