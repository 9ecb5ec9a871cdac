"""Pretraining schedules: warm-up + cosine learning rate, cosine weight decay, parameter groups, LAMB."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from medssl.engine.schedules import (
    apply_weight_decay,
    build_lamb,
    cosine_weight_decay,
    lr_factor,
    param_groups,
    peak_lr,
)


def test_peak_lr_scales_with_the_batch() -> None:
    assert peak_lr(2e-4, 128) == pytest.approx(1e-4, rel=1e-15)  # the reference: 1e-4 at batch 128
    assert peak_lr(2e-4, 256) == pytest.approx(2e-4, rel=1e-15)
    assert peak_lr(1e-3, 8) == pytest.approx(1e-3 / 32, rel=1e-15)


def test_lr_factor_at_known_iterations() -> None:
    total, warmup, r = 101, 20, 1e-3
    assert lr_factor(0, total, warmup, r) == pytest.approx(0.005)
    assert lr_factor(10, total, warmup, r) == pytest.approx(0.005 + 0.995 * 0.5)
    assert lr_factor(19, total, warmup, r) == pytest.approx(0.005 + 0.995 * 19 / 20)
    assert lr_factor(20, total, warmup, r) == pytest.approx(1.0)  # the peak right after warm-up
    # the cosine runs over iterations 20..100: its middle (60) is halfway between 1 and r
    assert lr_factor(60, total, warmup, r) == pytest.approx((1 + r) / 2)
    assert lr_factor(40, total, warmup, r) == pytest.approx(r + (1 - r) * (1 + math.cos(math.pi / 4)) / 2)
    assert lr_factor(100, total, warmup, r) == pytest.approx(r)  # the last iteration ends at min_lr_ratio
    values = [lr_factor(i, total, warmup, r) for i in range(total)]
    assert all(a < b for a, b in zip(values[:20], values[1:21], strict=True))  # rising warm-up
    assert all(a > b for a, b in zip(values[20:-1], values[21:], strict=True))  # falling cosine
    assert lr_factor(0, 10, 0, 0.1) == pytest.approx(1.0) and lr_factor(9, 10, 0, 0.1) == pytest.approx(0.1)
    assert lr_factor(3, 4, 4, 0.1) == pytest.approx(0.005 + 0.995 * 3 / 4)  # warm-up longer than training


def test_cosine_weight_decay_from_start_to_end() -> None:
    assert cosine_weight_decay(0, 11, 0.04, 0.2) == pytest.approx(0.04)
    assert cosine_weight_decay(5, 11, 0.04, 0.2) == pytest.approx(0.12)  # halfway
    assert cosine_weight_decay(10, 11, 0.04, 0.2) == pytest.approx(0.2)
    assert cosine_weight_decay(2, 11, 0.04, 0.2) == pytest.approx(0.2 - 0.16 * (1 + math.cos(math.pi * 0.2)) / 2)
    assert cosine_weight_decay(0, 1, 0.04, 0.2) == pytest.approx(0.04)


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.norm = nn.BatchNorm2d(4)
        self.head = nn.Linear(4, 2)
        self.mask_token = nn.Parameter(torch.zeros(1, 4, 1, 1))
        self.extra = nn.Parameter(torch.zeros(3, 3))  # 2-D, excluded only through no_weight_decay()
        self.frozen = nn.Parameter(torch.zeros(2, 2), requires_grad=False)

    def no_weight_decay(self) -> set[str]:
        return {"extra"}


def test_param_groups_exclude_1d_biases_tokens_and_named() -> None:
    model = _Tiny()
    groups = param_groups(model, 0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    by_name = {g["group_name"]: sorted(names[id(p)] for p in g["params"]) for g in groups}
    assert by_name["decay"] == ["conv.weight", "head.weight"]
    assert by_name["no_decay"] == ["conv.bias", "extra", "head.bias", "mask_token", "norm.bias", "norm.weight"]
    assert [g["weight_decay"] for g in groups] == [0.05, 0.0]


def test_lamb_with_scheduled_weight_decay() -> None:
    model = _Tiny()
    opt = build_lamb(param_groups(model, 0.04), lr=1e-3)
    assert type(opt).__name__ == "Lamb" and opt.defaults["max_grad_norm"] is None
    assert all(g["betas"] == (0.9, 0.95) for g in opt.param_groups)
    apply_weight_decay(opt, 0.2)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.2, 0.0]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    # zero gradients: LAMB's update is the decay term wd * w, rescaled by the trust ratio |w| / |wd * w|,
    # so a decayed weight becomes (1 - lr) * w whatever wd is, and an undecayed one does not move
    after = dict(model.named_parameters())
    for name in ("conv.weight", "head.weight"):
        assert torch.allclose(after[name], before[name] * (1 - 1e-3), rtol=1e-6, atol=0)
    for name in ("conv.bias", "norm.weight", "mask_token", "extra"):
        assert torch.equal(after[name], before[name])
