"""ROI patch labelling rules and nearest mask upsampling, checked on hand-built ROIs."""

from __future__ import annotations

import pytest
import torch

from medssl.errors import MedsslInputError
from medssl.masking import parse_rule, patch_grid, roi_patch_labels, upsample_mask


def _roi_2d() -> torch.Tensor:
    """One 8x8 image with a 2x2 grid of 4x4 patches; each patch gets a different hand-built ROI."""
    roi = torch.zeros(1, 8, 8, dtype=torch.bool)
    roi[0, 0, 0] = True            # patch (0, 0): only its top-left corner pixel
    roi[0, 2, 6] = True            # patch (0, 1): only its centre pixel (index 4 // 2 = 2 in each axis)
    roi[0, 4:8, 0:2] = True        # patch (1, 0): 8 of 16 pixels (50 %), not the centre (6, 2)
    roi[0, 4, 4:8] = True          # patch (1, 1): 4 + 2 = 6 of 16 pixels (37.5 %), corner included
    roi[0, 5, 4:6] = True
    return roi


@pytest.mark.parametrize(("rule", "expected"), [
    ("topleft", [[True, False], [True, True]]),
    ("any", [[True, True], [True, True]]),
    ("center", [[False, True], [False, False]]),
    ("fraction>=0.5", [[False, False], [True, False]]),
    ("fraction>=0.375", [[False, False], [True, True]]),
    ("fraction >= 0.05", [[True, True], [True, True]]),  # one pixel of 16 is 6.25 %
    ("fraction>=1", [[False, False], [False, False]]),
])
def test_rules_on_hand_built_roi_2d(rule: str, expected: list[list[bool]]) -> None:
    labels = roi_patch_labels(_roi_2d(), 4, rule)
    assert labels.dtype == torch.bool
    assert labels.tolist() == [expected]


def test_topleft_matches_nearest_downsampling() -> None:
    gen = torch.Generator().manual_seed(0)
    roi = torch.rand(3, 64, 32, generator=gen) > 0.5
    reference = torch.nn.functional.interpolate(roi[:, None].float(), size=(2, 1), mode="nearest")[:, 0] > 0
    assert torch.equal(roi_patch_labels(roi, 32), reference)


def test_rules_3d_corner_centre_fraction() -> None:
    roi = torch.zeros(2, 8, 8, 8, dtype=torch.bool)
    roi[0, 0, 0, 0] = True                 # sample 0, patch (0, 0, 0): corner voxel only
    roi[0, 6, 2, 6] = True                 # sample 0, patch (1, 0, 1): centre voxel only (4 + 2, 2, 4 + 2)
    roi[1, 4:8, 4:8, 4:6] = True           # sample 1, patch (1, 1, 1): 32 of 64 voxels, corner, no centre
    roi[1, 0:4, 0:2, 0:2] = True           # sample 1, patch (0, 0, 0): 16 of 64 voxels (25 %)
    expected_topleft = torch.zeros(2, 2, 2, 2, dtype=torch.bool)
    expected_topleft[0, 0, 0, 0] = expected_topleft[1, 1, 1, 1] = expected_topleft[1, 0, 0, 0] = True
    assert torch.equal(roi_patch_labels(roi, 4), expected_topleft)
    expected_center = torch.zeros(2, 2, 2, 2, dtype=torch.bool)
    expected_center[0, 1, 0, 1] = True
    assert torch.equal(roi_patch_labels(roi, (4, 4, 4), "center"), expected_center)
    half = roi_patch_labels(roi, 4, "fraction>=0.5")
    assert half.sum() == 1 and half[1, 1, 1, 1]
    quarter = roi_patch_labels(roi, 4, "fraction>=0.25")
    assert quarter.sum() == 2 and quarter[1, 0, 0, 0] and quarter[1, 1, 1, 1]
    assert roi_patch_labels(roi, 4, "any").sum() == 4


def test_anisotropic_patch() -> None:
    roi = torch.zeros(1, 4, 6, dtype=torch.bool)
    roi[0, 2, 3] = True  # patch size (2, 3): grid (2, 2); pixel (2, 3) is the top-left of patch (1, 1)
    assert roi_patch_labels(roi, (2, 3)).tolist() == [[[False, False], [False, True]]]


@pytest.mark.parametrize("bad", ["middle", "fraction>=0", "fraction>=1.5", "fraction>0.5", "fraction>=x"])
def test_bad_rules_rejected(bad: str) -> None:
    with pytest.raises(MedsslInputError):
        parse_rule(bad)


def test_parse_rule_values() -> None:
    assert parse_rule("fraction>=0.5") == ("fraction", 0.5)
    assert parse_rule("TopLeft") == ("topleft", 0.0)


def test_indivisible_size_rejected() -> None:
    with pytest.raises(MedsslInputError, match="divisible"):
        roi_patch_labels(torch.zeros(1, 30, 32, dtype=torch.bool), 16)
    assert patch_grid((224, 224), 32) == (7, 7)
    assert patch_grid((112, 112, 80), 16) == (7, 7, 5)


def test_upsample_mask_nearest_2d_and_3d() -> None:
    visible = torch.tensor([[[True, False], [False, True]]])
    up = upsample_mask(visible, (4, 6))
    assert up.shape == (1, 1, 4, 6) and up.dtype == torch.bool
    for i in range(4):
        for j in range(6):
            assert bool(up[0, 0, i, j]) == bool(visible[0, i // 2, j // 3])
    gen = torch.Generator().manual_seed(1)
    vis3 = torch.rand(2, 2, 3, 2, generator=gen) > 0.5
    up3 = upsample_mask(vis3, (4, 6, 8))
    reference = torch.nn.functional.interpolate(vis3[:, None].float(), size=(4, 6, 8), mode="nearest") > 0
    assert torch.equal(up3, reference)
    assert torch.equal(upsample_mask(vis3, (2, 3, 2)), vis3[:, None])
