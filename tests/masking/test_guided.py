"""Random and region-guided masks: exact kept counts, edge cases, uniformity, determinism, logging."""

from __future__ import annotations

import math

import pytest
import torch

from medssl.errors import MedsslInputError
from medssl.masking import expected_overall_ratio, guided_mask, mask_ratios, random_mask


def _floor_keep(n: int, tenths: int) -> int:
    """floor(n * (1 - tenths / 10)) in integer arithmetic."""
    return (n * (10 - tenths)) // 10


@pytest.mark.parametrize("grid", [(7, 7), (4, 3, 5)])
def test_guided_exact_counts_random_layouts(grid: tuple[int, ...]) -> None:
    gen = torch.Generator().manual_seed(123)
    pairs = [(8, 4), (7, 3), (6, 2), (10, 0), (0, 10), (5, 5)]
    for trial in range(300):
        r_roi, r_bg = pairs[trial % len(pairs)]
        density = torch.rand(4, 1, generator=gen)
        roi = torch.rand(4, math.prod(grid), generator=gen) < density
        roi = roi.reshape(4, *grid)
        visible = guided_mask(roi, r_roi / 10, r_bg / 10, gen)
        assert visible.shape == roi.shape and visible.dtype == torch.bool
        for b in range(4):
            n_roi = int(roi[b].sum())
            n_bg = roi[b].numel() - n_roi
            assert int((visible[b] & roi[b]).sum()) == _floor_keep(n_roi, r_roi)
            assert int((visible[b] & ~roi[b]).sum()) == _floor_keep(n_bg, r_bg)


def test_floor_is_exact_on_decimal_ratios() -> None:
    roi = torch.zeros(1, 10, dtype=torch.bool)
    roi[0, :5] = True  # 5 ROI patches at 0.8 keep exactly 1 (5 * 0.2 = 1, not 0.999...)
    visible = guided_mask(roi, 0.8, 0.7)
    assert int((visible & roi).sum()) == 1
    assert int((visible & ~roi).sum()) == 1  # floor(5 * 0.3) = 1


def test_empty_and_full_roi() -> None:
    gen = torch.Generator().manual_seed(5)
    empty = torch.zeros(3, 7, 7, dtype=torch.bool)
    vis = guided_mask(empty, 0.8, 0.4, gen)
    assert vis.flatten(1).sum(1).tolist() == [29] * 3  # floor(49 * 0.6)
    full = torch.ones(2, 4, 4, 4, dtype=torch.bool)
    vis = guided_mask(full, 0.75, 0.1, gen)
    assert vis.flatten(1).sum(1).tolist() == [16] * 2  # floor(64 * 0.25)


def test_ratio_zero_and_one() -> None:
    gen = torch.Generator().manual_seed(6)
    roi = torch.rand(2, 6, 6, generator=gen) > 0.5
    assert torch.equal(guided_mask(roi, 1.0, 0.0, gen), ~roi)
    assert torch.equal(guided_mask(roi, 0.0, 1.0, gen), roi)
    assert not guided_mask(roi, 1.0, 1.0, gen).any()
    assert guided_mask(roi, 0.0, 0.0, gen).all()
    assert not random_mask(2, (3, 3), 1.0, gen).any()
    assert random_mask(2, (3, 3, 2), 0.0, gen).all()


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan")])
def test_bad_ratio_rejected(bad: float) -> None:
    with pytest.raises(MedsslInputError):
        guided_mask(torch.zeros(1, 2, 2, dtype=torch.bool), bad, 0.5)
    with pytest.raises(MedsslInputError):
        random_mask(1, (2, 2), bad)


def test_random_mask_counts() -> None:
    gen = torch.Generator().manual_seed(7)
    for grid, ratio, keep in [((7, 7), 0.6, 20), ((7, 7), 0.7, 15), ((2, 2, 2), 0.5, 4), ((5,), 0.5, 2),
                              ((3, 5), 0.9, 2)]:  # round(19.6), round(14.7), 4, round(2.5) = 2 (half to even)
        vis = random_mask(6, grid, ratio, gen)
        assert vis.shape == (6, *grid)
        assert vis.flatten(1).sum(1).tolist() == [keep] * 6


def test_guided_uniform_within_sets() -> None:
    gen = torch.Generator().manual_seed(11)
    roi = torch.zeros(1, 6, 6, dtype=torch.bool)
    roi[0, 1:4, 2:5] = True  # 9 ROI patches, 27 background patches
    draws = 4000
    visible = guided_mask(roi.expand(draws, 6, 6), 0.7, 0.3, gen).double()
    freq = visible.mean(dim=0)
    for members, keep in [(roi[0], _floor_keep(9, 7)), (~roi[0], _floor_keep(27, 3))]:
        n = int(members.sum())
        p = keep / n
        sigma = math.sqrt(p * (1 - p) / draws)
        assert (freq[members] - p).abs().max() < 5 * sigma
    # a fresh draw per sample: not all rows equal
    assert visible.std(dim=0).sum() > 0


def test_random_uniform() -> None:
    gen = torch.Generator().manual_seed(12)
    draws = 4000
    freq = random_mask(draws, (4, 4), 0.75, gen).double().mean(dim=0)
    p = 4 / 16
    assert (freq - p).abs().max() < 5 * math.sqrt(p * (1 - p) / draws)


def test_deterministic_from_generator() -> None:
    roi = torch.rand(3, 5, 5, generator=torch.Generator().manual_seed(0)) > 0.6
    a = guided_mask(roi, 0.8, 0.4, torch.Generator().manual_seed(42))
    b = guided_mask(roi, 0.8, 0.4, torch.Generator().manual_seed(42))
    assert torch.equal(a, b)
    gen = torch.Generator().manual_seed(42)
    first, second = guided_mask(roi, 0.8, 0.4, gen), guided_mask(roi, 0.8, 0.4, gen)
    assert torch.equal(first, a) and not torch.equal(first, second)
    r1 = random_mask(2, (4, 4, 4), 0.6, torch.Generator().manual_seed(3))
    r2 = random_mask(2, (4, 4, 4), 0.6, torch.Generator().manual_seed(3))
    assert torch.equal(r1, r2)


def test_mask_ratios_and_expected() -> None:
    roi = torch.tensor([[True, True, False, False], [True, False, False, False], [False] * 4])
    visible = torch.tensor([[True, False, True, True], [False, True, True, False], [True, True, False, False]])
    ratios = mask_ratios(visible, roi)
    assert ratios["roi"] == pytest.approx((1 / 2 + 1 / 1) / 2)            # sample 3 has no ROI
    assert ratios["background"] == pytest.approx((0 / 2 + 1 / 3 + 2 / 4) / 3)
    assert ratios["overall"] == pytest.approx((1 / 4 + 2 / 4 + 2 / 4) / 3)
    assert math.isnan(mask_ratios(visible, torch.zeros_like(roi))["roi"])
    assert expected_overall_ratio(10, 39, 0.8, 0.4) == pytest.approx((10 * 0.8 + 39 * 0.4) / 49)
    assert expected_overall_ratio(0, 49, 0.8, 0.4) == pytest.approx(0.4)


def test_stochastic_counts_are_unbiased_floor_or_ceil() -> None:
    """4 ROI patches at 0.8 keep 0.8 of a patch on average: floor keeps 0, stochastic keeps 0 or 1, 1 in 80 %."""
    gen = torch.Generator().manual_seed(11)
    roi = torch.zeros(2000, 3, 3, 2, dtype=torch.bool)
    roi[:, 0, :2, :2] = True  # 4 ROI patches, 14 background patches
    floor = guided_mask(roi, 0.8, 0.4, gen)
    assert (floor & roi).flatten(1).sum(1).eq(0).all()  # the spec's rule hides the whole ROI
    visible = guided_mask(roi, 0.8, 0.4, gen, counts="stochastic")
    kept_roi = (visible & roi).flatten(1).sum(1)
    kept_bg = (visible & ~roi).flatten(1).sum(1)
    assert set(kept_roi.tolist()) == {0, 1}
    assert set(kept_bg.tolist()) == {8, 9}  # 14 x 0.6 = 8.4
    # binomial means: 2000 draws, 4 standard deviations
    assert abs(kept_roi.double().mean().item() - 0.8) < 4 * math.sqrt(0.8 * 0.2 / 2000)
    assert abs(kept_bg.double().mean().item() - 8.4) < 4 * math.sqrt(0.4 * 0.6 / 2000)
    ratios = mask_ratios(visible, roi)
    assert ratios["roi"] == pytest.approx(0.8, abs=0.02) and ratios["background"] == pytest.approx(0.4, abs=0.02)


def test_stochastic_counts_exact_when_the_product_is_whole() -> None:
    gen = torch.Generator().manual_seed(12)
    roi = torch.zeros(50, 10, dtype=torch.bool)
    roi[:, :5] = True  # 5 x 0.2 = 1 and 5 x 0.6 = 3 exactly: no randomness in the counts
    visible = guided_mask(roi, 0.8, 0.4, gen, counts="stochastic")
    assert (visible & roi).sum(1).eq(1).all() and (visible & ~roi).sum(1).eq(3).all()


def test_stochastic_counts_deterministic_and_unknown_rule_rejected() -> None:
    roi = torch.rand(6, 5, 5, generator=torch.Generator().manual_seed(3)) > 0.7
    a = guided_mask(roi, 0.7, 0.3, torch.Generator().manual_seed(9), counts="stochastic")
    b = guided_mask(roi, 0.7, 0.3, torch.Generator().manual_seed(9), counts="stochastic")
    assert torch.equal(a, b)
    with pytest.raises(MedsslInputError, match="mask counts"):
        guided_mask(roi, 0.7, 0.3, counts="ceil")  # type: ignore[arg-type]
