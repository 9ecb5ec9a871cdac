"""Uniform random patch masks (the SparK baseline) and the shared fixed-count sampler.

Masks are visibility masks: True = the patch stays visible, False = it is masked out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction
from typing import Literal

import torch
from torch import Tensor

from medssl.errors import MedsslInputError


def check_ratio(ratio: float, name: str = "mask ratio") -> Fraction:
    """``ratio`` as an exact fraction (its shortest decimal form); must lie in [0, 1]."""
    value = float(ratio)
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise MedsslInputError(name, f"must be in [0, 1], got {ratio!r}")
    return Fraction(repr(value))


def keep_count(n: int, ratio: float, rounding: Literal["floor", "round"]) -> int:
    """Number of patches kept visible out of ``n`` at mask ratio ``ratio``.

    ``"floor"``: floor(n * (1 - ratio)) (region-guided masking); ``"round"``: round(n * (1 - ratio)),
    halves to even like Python's ``round`` (SparK). Computed exactly on the decimal value of ``ratio``,
    so 5 patches at ratio 0.8 keep 1 patch (floating point would give 0.999... -> 0).
    """
    kept = n * (1 - check_ratio(ratio))
    return math.floor(kept) if rounding == "floor" else round(kept)


def stochastic_keep_counts(n: Sequence[int], ratio: float, generator: torch.Generator | None = None,
                           device: torch.device | str | None = None) -> Tensor:
    """Kept-patch counts whose expectation is exactly ``n * (1 - ratio)``: floor(n (1 - ratio)) plus one
    more with probability equal to the fractional part (computed exactly on the decimal ``ratio``).

    On coarse patch grids the floor rule can hide a small ROI completely (4 ROI patches at ratio 0.8 keep
    floor(0.8) = 0); this unbiased rounding keeps 1 of them with probability 0.8, so the masked fraction
    equals ``ratio`` on average.

    Args:
        n: set sizes, one per sample (B values).
        ratio: mask ratio in [0, 1].
        generator: source of randomness (CPU or the result's device).
        device: device of the result (defaults to the generator's device, else CPU).

    Returns:
        (B,) long tensor of counts, each ``floor`` or ``floor + 1`` (never more than ``n``).
    """
    keep_fraction = 1 - check_ratio(ratio)
    draw_device = generator.device if generator is not None else torch.device("cpu")
    base = [keep_count(int(size), ratio, "floor") for size in n]
    remainder = torch.tensor([float(int(size) * keep_fraction - k) for size, k in zip(n, base, strict=True)],
                             dtype=torch.float64)
    draws = torch.rand(len(base), generator=generator, device=draw_device, dtype=torch.float64).cpu()
    counts = torch.tensor(base, dtype=torch.long) + (draws < remainder).long()
    return counts.to(device if device is not None else draw_device)


def select_uniform(members: Tensor, keep: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Per row, a uniformly random subset of exactly ``keep[b]`` of the True entries of ``members[b]``.

    Args:
        members: (B, N) bool, the candidate set of each sample.
        keep: (B,) integer, how many to select (at most the set size).
        generator: source of randomness (its device must match ``members``).

    Returns:
        (B, N) bool, True at the selected entries (a subset of ``members``).

    Each candidate gets a uniform random score; a candidate is selected when its score ranks among
    the ``keep`` smallest scores of its set, i.e. a uniform subset drawn without replacement.
    """
    scores = torch.rand(members.shape, generator=generator, device=members.device)
    scores = scores.masked_fill(~members, 2.0)  # non-members rank after every member
    rank = scores.argsort(dim=1).argsort(dim=1)
    return members & (rank < keep.to(members.device).unsqueeze(1))


def random_mask(batch: int, grid: Sequence[int], ratio: float, generator: torch.Generator | None = None,
                device: torch.device | str | None = None) -> Tensor:
    """SparK's random mask: per sample keep exactly round(N * (1 - ratio)) of the N patches.

    Args:
        batch: number of samples B.
        grid: patch grid (2 or 3 sizes, in patches).
        ratio: fraction of patches to mask, in [0, 1].
        generator: makes the draw reproducible; a fresh mask is drawn at every call.
        device: device of the result (defaults to the generator's device, else CPU).

    Returns:
        (B, *grid) bool visibility mask (True = visible).
    """
    grid = tuple(int(g) for g in grid)
    n = math.prod(grid)
    keep = keep_count(n, ratio, "round")
    if device is None:
        device = generator.device if generator is not None else "cpu"
    members = torch.ones(batch, n, dtype=torch.bool, device=device)
    counts = torch.full((batch,), keep, dtype=torch.long, device=device)
    return select_uniform(members, counts, generator).reshape(batch, *grid)


__all__ = ["check_ratio", "keep_count", "random_mask", "select_uniform", "stochastic_keep_counts"]
