"""CORN's total loss against an independent composition of its terms and ramp weights (CORN, Li et al.,
IEEE BIBM 2024, arXiv:2410.15916: ``0.5 L_s + w_c(t) L_c + w_d(t) L_d``, sigmoid ramps to 1.0 and 0.05 over
40 units of 150 iterations, counted from the reference's 1-based iteration)."""

from __future__ import annotations

import math

import pytest
import torch

from medssl.methods import SemiBatch, create_method

S = 16


def _batch() -> SemiBatch:
    g = torch.Generator().manual_seed(11)
    label = torch.zeros(4, S, S, S, dtype=torch.long)
    label[:, 4:12, 4:12, 4:12] = 1
    image = (2.0 * label - 1.0).unsqueeze(1) + 0.3 * torch.randn(4, 1, S, S, S, generator=g)
    return SemiBatch(image=image, label=label, index=torch.tensor([0, 1, 7, 8]), labeled_bs=2)


def _ramp(iteration: int, max_weight: float) -> float:
    """By hand: the reference counts from 1 and ramps in units of 150 iterations over 40 units."""
    t = min((iteration + 1) // 150, 40) / 40
    return max_weight * math.exp(-5.0 * (1.0 - t) ** 2)


def _dice_loss(p: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    return 1.0 - (2.0 * (p * g).sum() + 1e-8) / (p.sum() + g.sum() + 1e-8)


def _sharpen(p: torch.Tensor) -> torch.Tensor:
    return p ** 2.5 / (p ** 2.5 + (1.0 - p) ** 2.5)  # temperature 0.4


@pytest.mark.parametrize("iteration", [0, 2999, 7000])
def test_corn_total_loss_is_its_terms_with_the_published_ramps(iteration: int) -> None:
    torch.manual_seed(3)  # an initialisation whose first step forms all four CORAL pairs
    method = create_method("corn", {"network": {"base_width": 4}, "n_labeled": 2, "pool_memory_mb": 0.1,
                                    "num_filtered": 64, "anchors_per_half": 2}).train()
    batch = _batch()
    rng = torch.get_rng_state()
    out = method.training_step(batch, iteration)
    torch.set_rng_state(rng)  # the same dropout draws: the step's first random numbers are the forward's
    with torch.no_grad():
        logits1, logits2, _, _ = method.net(batch.image)
    p1, p2 = torch.softmax(logits1, 1), torch.softmax(logits2, 1)
    fg = (batch.label[:2] == 1).float()
    sup = _dice_loss(p1[:2, 1], fg) + _dice_loss(p2[:2, 1], fg)
    cons = ((p1 - _sharpen(p2)) ** 2).mean() + ((p2 - _sharpen(p1)) ** 2).mean()
    logs = {k: float(v) for k, v in out.logs.items()}
    assert logs["loss_sup"] == pytest.approx(float(sup), rel=1e-5)
    assert logs["loss_cons"] == pytest.approx(float(cons), rel=1e-5)
    assert logs["w_cons"] == pytest.approx(_ramp(iteration, 1.0), rel=1e-12)
    assert logs["w_coral"] == pytest.approx(_ramp(iteration, 0.05), rel=1e-12)
    assert logs["coral_terms"] == 4.0 and logs["loss_coral"] != 0.0  # the CCM term was formed
    total = 0.5 * float(sup) + _ramp(iteration, 1.0) * float(cons) + _ramp(iteration, 0.05) * logs["loss_coral"]
    assert float(out.loss.detach()) == pytest.approx(total, rel=1e-5)
    assert logs["loss"] == pytest.approx(total, rel=1e-5)
