"""Training batches of a 2D classifier from images held in memory (:class:`~medssl.data.classify.ImageCache`).

:class:`EpochBatches` makes every batch a pure function of ``(seed, iteration, rank)``: each epoch
reshuffles the training indices and the remainder of an epoch is dropped, so a resumed run sees exactly
the batches of an uninterrupted one. :func:`build_batch_fn` augments each sample with its own seeded
generator (optional random-resized crop, then horizontal / vertical flips) and standardises the batch
per channel (:func:`normalize`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor

from medssl.config import MedsslConfig
from medssl.data.classify import ImageCache
from medssl.errors import MedsslInputError

__all__ = ["ClassifyAugmentConfig", "EpochBatches", "augment_image", "build_batch_fn", "normalize"]


class ClassifyAugmentConfig(MedsslConfig):
    """Training augmentation after the resize (evaluation uses the resized image only)."""

    hflip: float = Field(0.5, ge=0, le=1, description="Probability of a horizontal flip.")
    vflip: float = Field(0.0, ge=0, le=1, description="Probability of a vertical flip.")
    random_resized_crop: bool = Field(False, description="Random crop of the resized image, resized back.")
    crop_scale: tuple[float, float] = Field((0.08, 1.0), description="Crop area range (fraction).")
    crop_ratio: tuple[float, float] = Field((0.75, 4 / 3), description="Crop aspect-ratio range (w/h).")

    @model_validator(mode="after")
    def _ranges(self) -> ClassifyAugmentConfig:
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"crop_scale must satisfy 0 < min <= max <= 1, got {self.crop_scale}")
        if not 0 < self.crop_ratio[0] <= self.crop_ratio[1]:
            raise ValueError(f"crop_ratio must satisfy 0 < min <= max, got {self.crop_ratio}")
        return self


@dataclass
class EpochBatches:
    """Training batches as a pure function of (seed, iteration, rank).

    Each epoch shuffles the training indices with ``SeedSequence([seed, 0xC1A5, epoch])`` and cuts the
    permutation into ``iterations_per_epoch = n // global_batch`` global batches (the remainder is
    dropped); rank ``r`` takes the ``r``-th block of ``global_batch // world_size`` indices.
    """

    n: int
    global_batch: int
    seed: int
    rank: int = 0
    world_size: int = 1

    def __post_init__(self) -> None:
        if self.global_batch % self.world_size:
            raise MedsslInputError("data.batch_size", f"global batch {self.global_batch} is not divisible by "
                                   f"the {self.world_size} processes")
        if self.n < self.global_batch:
            raise MedsslInputError("data.batch_size", f"global batch {self.global_batch} is larger than the "
                                   f"{self.n} training images (lower data.batch_size)")

    @property
    def iterations_per_epoch(self) -> int:
        return self.n // self.global_batch

    @property
    def per_rank(self) -> int:
        return self.global_batch // self.world_size

    def indices(self, iteration: int) -> list[int]:
        """Dataset indices of this rank's batch at ``iteration`` (0-based)."""
        epoch, step = divmod(int(iteration), self.iterations_per_epoch)
        perm = np.random.default_rng([self.seed, 0xC1A5, epoch]).permutation(self.n)
        start = step * self.global_batch + self.rank * self.per_rank
        return perm[start:start + self.per_rank].tolist()


def _random_resized_crop(x: Tensor, rng: np.random.Generator, scale: tuple[float, float],
                         ratio: tuple[float, float]) -> Tensor:
    """A random crop of area fraction in ``scale`` and aspect (w/h) in ``ratio``, resized back (C, S, S)."""
    _, h, w = x.shape
    area = h * w
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        cw, ch = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
            break
    else:  # fall back to the whole image
        top, left, ch, cw = 0, 0, h, w
    crop = x[:, top:top + ch, left:left + cw]
    return F.interpolate(crop[None], size=(h, w), mode="bilinear", align_corners=False)[0]


def augment_image(x: Tensor, cfg: ClassifyAugmentConfig, rng: np.random.Generator) -> Tensor:
    """One training view of a resized image (C, S, S): optional random-resized crop, then flips."""
    if cfg.random_resized_crop:
        x = _random_resized_crop(x, rng, cfg.crop_scale, cfg.crop_ratio)
    if rng.random() < cfg.hflip:
        x = x.flip(-1)
    if rng.random() < cfg.vflip:
        x = x.flip(-2)
    return x


def normalize(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """(B, C, H, W) standardised per channel with ``mean`` / ``std`` (C,)."""
    m = torch.tensor(mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return (images - m) / s


def build_batch_fn(cache: ImageCache, batches: EpochBatches, augment: ClassifyAugmentConfig,
                   mean: Sequence[float], std: Sequence[float], device: torch.device
                   ) -> Callable[[int], tuple[Tensor, Tensor]]:
    """``batch_fn(iteration) -> (images (B, C, S, S) standardised, targets (B,))``, pure in the iteration.

    Sample ``pos`` of the batch is augmented with a generator seeded by
    :func:`medssl.data.samplers.sample_seed` ``(seed, iteration, pos, rank)``.
    """
    from medssl.data.samplers import sample_seed

    def batch_fn(iteration: int) -> tuple[Tensor, Tensor]:
        idx = batches.indices(iteration)
        views = []
        for pos, i in enumerate(idx):
            rng = np.random.default_rng(sample_seed(batches.seed, iteration, pos, batches.rank))
            views.append(augment_image(cache.images[i], augment, rng))
        x = normalize(torch.stack(views), mean, std).to(device, non_blocking=True)
        return x, cache.targets[idx].to(device, non_blocking=True)

    return batch_fn
