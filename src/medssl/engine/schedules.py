"""Learning-rate and weight-decay schedules, parameter groups and LAMB.

The one warm-up + cosine learning-rate schedule of medssl: masked pretraining
(:mod:`medssl.engine.pretrain`) and classification fine-tuning (:mod:`medssl.engine.classify_optim`)
both use :func:`lr_factor`, and both build timm's LAMB through :func:`build_lamb`.

The pretraining recipe of SparK (Tian et al., ICLR 2023, arXiv:2301.03580) as used by Mask What Matters (arXiv:2509.23054), per iteration
``i`` of ``T`` with ``W`` warm-up iterations:

* learning rate: linear warm-up ``peak * (s + (1 - s) * i / W)`` for ``i < W`` (``s`` =
  :data:`WARMUP_START_RATIO`), then cosine ``peak * (r + (1 - r) * (1 + cos(pi * (i - W) / (T - 1 - W))) / 2)``
  down to ``r * peak`` at the last iteration (``r`` = ``min_lr_ratio``, 0.001 in the reference);
* weight decay: cosine from ``wd_start`` at iteration 0 to ``wd_end`` at iteration ``T - 1``:
  ``wd_end + (wd_start - wd_end) * (1 + cos(pi * i / (T - 1))) / 2`` (0.04 -> 0.2 in the reference);
* peak learning rate = ``base_lr * batch_size / 256`` (2e-4 per 256 images: 1e-4 at batch 128);
* no weight decay on 1-D parameters (norm weights, biases), on parameters named ``*.bias`` and on the
  model's ``no_weight_decay()`` names (mask tokens);
* optimiser: LAMB of timm with betas (0.9, 0.95).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

__all__ = [
    "WARMUP_START_RATIO",
    "apply_weight_decay",
    "build_lamb",
    "cosine_weight_decay",
    "lr_factor",
    "param_groups",
    "peak_lr",
]

#: Learning rate at the first warm-up iteration, as a fraction of the peak.
WARMUP_START_RATIO = 0.005


def peak_lr(base_lr: float, batch_size: int) -> float:
    """Peak learning rate ``base_lr * batch_size / 256`` (``batch_size``: images per step, all processes)."""
    return float(base_lr) * int(batch_size) / 256.0


def lr_factor(iteration: int, total: int, warmup: int, min_lr_ratio: float = 1e-3,
              warmup_start: float = WARMUP_START_RATIO, *, last_at_floor: bool = False) -> float:
    """Multiplier of the peak learning rate at ``iteration`` (0-based) of ``total``.

    Linear warm-up from ``warmup_start`` over the first ``warmup`` iterations, then a half cosine from 1
    at iteration ``warmup`` to ``min_lr_ratio`` at iteration ``total - 1`` (clamped there after it).

    When the cosine has no length (``total - 1 <= warmup``), iterations from ``warmup`` on take the peak
    (1), or ``min_lr_ratio`` with ``last_at_floor`` (fine-tuning's rule: the last iteration always sits
    at the floor, so a one-iteration run trains at ``min_lr_ratio``).
    """
    i, t, w = int(iteration), int(total), max(0, int(warmup))
    if i < w:
        return warmup_start + (1.0 - warmup_start) * i / w
    span = t - 1 - w
    if span <= 0:
        return float(min_lr_ratio) if last_at_floor else 1.0
    progress = min(1.0, (i - w) / span)
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def cosine_weight_decay(iteration: int, total: int, wd_start: float, wd_end: float) -> float:
    """Weight decay at ``iteration``: half cosine from ``wd_start`` (iteration 0) to ``wd_end`` (``total - 1``)."""
    if total <= 1:
        return float(wd_start)
    progress = min(1.0, int(iteration) / (int(total) - 1))
    return float(wd_end) + (float(wd_start) - float(wd_end)) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _no_decay_names(model: nn.Module) -> set[str]:
    fn = getattr(model, "no_weight_decay", None)
    return set(fn()) if callable(fn) else set()


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two parameter groups: ``decay`` (weight decay ``weight_decay``) and ``no_decay`` (none).

    ``no_decay`` holds parameters with fewer than 2 dimensions, names ending in ``bias``, names containing
    ``mask_token`` and the names ``model.no_weight_decay()`` returns. Frozen parameters are left out. Each
    group carries ``wd_scale`` (1 or 0), which :func:`apply_weight_decay` multiplies the scheduled decay by.
    """
    skip = _no_decay_names(model)
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if param.ndim <= 1 or name.endswith("bias") or "mask_token" in name or name in skip:
            no_decay.append(param)
        else:
            decay.append(param)
    groups = [{"params": decay, "weight_decay": float(weight_decay), "wd_scale": 1.0, "group_name": "decay"},
              {"params": no_decay, "weight_decay": 0.0, "wd_scale": 0.0, "group_name": "no_decay"}]
    return [g for g in groups if g["params"]]


def apply_weight_decay(optimizer: torch.optim.Optimizer, weight_decay: float) -> None:
    """Set every group's weight decay to ``weight_decay * wd_scale`` (groups without a scale keep theirs)."""
    for group in optimizer.param_groups:
        if "wd_scale" in group:
            group["weight_decay"] = float(weight_decay) * float(group["wd_scale"])


def build_lamb(groups: Iterable[dict[str, Any]], lr: float, betas: tuple[float, float] = (0.9, 0.95),
               eps: float = 1e-6, *, bias_correction: bool = True, always_adapt: bool = False
               ) -> torch.optim.Optimizer:
    """timm's LAMB over ``groups`` (each with its own ``weight_decay``), without its own gradient clipping
    (the training loop clips the global norm).

    Pretraining uses the defaults over :func:`param_groups`; the fine-tuning reference turns bias
    correction off and applies the trust ratio to every group (``always_adapt``), weight-decayed or not.
    """
    from timm.optim import Lamb

    return Lamb(list(groups), lr=float(lr), betas=(float(betas[0]), float(betas[1])), eps=float(eps),
                bias_correction=bias_correction, always_adapt=always_adapt, max_grad_norm=None)
