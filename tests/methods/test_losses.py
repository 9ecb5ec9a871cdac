"""Loss terms, ramps, EMA and the UA-MT threshold against direct formulas."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from medssl.methods.ema import ema_alpha, ema_update, make_teacher
from medssl.methods.losses import (
    binary_dice_loss,
    ce_dice_loss,
    cross_pseudo_supervision,
    entropy,
    foreground_dice_loss,
    sharpen,
    sharpened_mse_consistency,
    softmax_mse,
)
from medssl.methods.ramps import ramp_weight, sigmoid_rampup
from medssl.methods.ua_mt import uncertainty_threshold


def test_sharpen_formula() -> None:
    p = torch.tensor([0.1, 0.5, 0.8, 0.99], dtype=torch.float64)
    t = 0.4
    expected = [x ** 2.5 / (x ** 2.5 + (1 - x) ** 2.5) for x in p.tolist()]
    assert np.allclose(sharpen(p, t).numpy(), expected)
    assert sharpen(torch.tensor(0.5), 0.1).item() == 0.5
    assert sharpen(torch.tensor(0.8), 0.4).item() > 0.8


def test_binary_dice_plain_and_squared() -> None:
    p = torch.tensor([0.9, 0.2, 0.6, 0.0])
    g = torch.tensor([1, 0, 1, 1])
    plain = 1 - (2 * (0.9 + 0.6) + 1e-8) / ((0.9 + 0.2 + 0.6) + 3 + 1e-8)
    squared = 1 - (2 * 1.5 + 1e-5) / ((0.81 + 0.04 + 0.36) + 3 + 1e-5)
    assert math.isclose(binary_dice_loss(p, g).item(), plain, rel_tol=1e-6)
    assert math.isclose(binary_dice_loss(p, g, eps=1e-5, squared=True).item(), squared, rel_tol=1e-6)
    assert binary_dice_loss(g.float(), g).item() < 1e-6


def test_foreground_dice_uses_class_one_for_two_classes() -> None:
    torch.manual_seed(0)
    probs = torch.softmax(torch.randn(2, 2, 4, 4), dim=1)
    label = torch.randint(0, 2, (2, 4, 4))
    assert torch.isclose(foreground_dice_loss(probs, label), binary_dice_loss(probs[:, 1], label == 1))


def test_ce_dice_is_half_sum() -> None:
    torch.manual_seed(1)
    logits = torch.randn(2, 2, 4, 4, 4)
    label = torch.randint(0, 2, (2, 4, 4, 4))
    loss, ce, dice = ce_dice_loss(logits, label)
    p1 = torch.softmax(logits, 1)[:, 1]
    g = (label == 1).float()
    manual_dice = 1 - (2 * (p1 * g).sum() + 1e-5) / ((p1 ** 2).sum() + g.sum() + 1e-5)
    assert torch.isclose(ce, F.cross_entropy(logits, label))
    assert torch.isclose(dice, manual_dice)
    assert torch.isclose(loss, 0.5 * (ce + manual_dice))


def test_sharpened_mse_consistency_against_numpy() -> None:
    rng = np.random.default_rng(0)
    a = rng.random((2, 2, 3, 3))
    a = a / a.sum(1, keepdims=True)
    b = rng.random((2, 2, 3, 3))
    b = b / b.sum(1, keepdims=True)

    def sh(x: np.ndarray) -> np.ndarray:
        return x ** 2.5 / (x ** 2.5 + (1 - x) ** 2.5)

    expected = ((a - sh(b)) ** 2).mean() + ((b - sh(a)) ** 2).mean()
    got = sharpened_mse_consistency(torch.from_numpy(a), torch.from_numpy(b), 0.4).item()
    assert math.isclose(got, expected, rel_tol=1e-9)


def test_cross_pseudo_supervision_uses_hard_labels() -> None:
    torch.manual_seed(2)
    l1, l2 = torch.randn(2, 2, 4, 4, requires_grad=True), torch.randn(2, 2, 4, 4)
    expected = F.cross_entropy(l1, l2.argmax(1)) + F.cross_entropy(l2, l1.argmax(1))
    assert torch.isclose(cross_pseudo_supervision(l1, l2), expected)


def test_softmax_mse_and_entropy() -> None:
    s, t = torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 0.0]])
    ps = 1 / (1 + math.exp(-2))
    assert torch.allclose(softmax_mse(s, t), torch.tensor([[(ps - 0.5) ** 2, (0.5 - ps) ** 2]]))
    probs = torch.tensor([[0.5, 0.5], [1.0, 0.0]]).view(2, 2, 1)
    ent = entropy(probs).flatten()
    assert math.isclose(ent[0].item(), -math.log(0.5 + 1e-6), rel_tol=1e-5)
    assert abs(ent[1].item()) < 1e-5


def test_ramp_weights_at_known_iterations() -> None:
    assert math.isclose(sigmoid_rampup(0, 40), math.exp(-5))
    assert math.isclose(ramp_weight(0, 1.0, 40), math.exp(-5))
    assert math.isclose(ramp_weight(149, 1.0, 40), math.exp(-5))
    assert math.isclose(ramp_weight(150 * 20, 1.0, 40), math.exp(-5 * 0.25))
    assert math.isclose(ramp_weight(150 * 20 + 149, 0.05, 40), 0.05 * math.exp(-1.25))
    assert ramp_weight(5999, 1.0, 40) < 1.0
    assert ramp_weight(6000, 1.0, 40) == 1.0
    assert ramp_weight(15000, 0.05, 40) == 0.05
    assert sigmoid_rampup(5, 0) == 1.0


def test_ema_alpha_and_update() -> None:
    assert ema_alpha(0) == 0.0
    assert ema_alpha(1) == 0.5
    assert math.isclose(ema_alpha(99), 0.99)
    assert ema_alpha(1000) == 0.99
    assert math.isclose(ema_alpha(9, decay=0.999), 0.9)
    student = torch.nn.Linear(3, 2)
    teacher = make_teacher(student)
    assert all(not p.requires_grad for p in teacher.parameters())
    with torch.no_grad():
        teacher.weight.fill_(1.0)
        student.weight.fill_(3.0)
    ema_update(teacher, student, 0.75)
    assert torch.allclose(teacher.weight, torch.full((2, 3), 0.75 * 1.0 + 0.25 * 3.0))


def test_uamt_threshold_formula() -> None:
    ln2 = math.log(2)
    assert math.isclose(uncertainty_threshold(0, 6000), (0.75 + 0.25 * math.exp(-5)) * ln2)
    assert math.isclose(uncertainty_threshold(3000, 6000), (0.75 + 0.25 * math.exp(-1.25)) * ln2)
    assert math.isclose(uncertainty_threshold(6000, 6000), ln2)
    assert math.isclose(uncertainty_threshold(9000, 6000), ln2)


def test_dice_losses_match_monai_dice_loss() -> None:
    """The Dice terms against MONAI's ``DiceLoss`` (foreground classes, sums over the whole batch)."""
    from monai.losses import DiceLoss

    g = torch.Generator().manual_seed(3)
    for n_classes in (2, 3):
        probs = torch.softmax(torch.randn(2, n_classes, 6, 5, 4, generator=g, dtype=torch.float64), dim=1)
        label = torch.randint(0, n_classes, (2, 6, 5, 4), generator=g)
        for eps, squared in ((1e-8, False), (1e-5, True)):
            oracle = DiceLoss(include_background=False, to_onehot_y=True, batch=True, squared_pred=squared,
                              smooth_nr=eps, smooth_dr=eps)(probs, label[:, None])
            ours = foreground_dice_loss(probs, label, eps=eps, squared=squared)
            assert torch.allclose(ours, oracle.to(ours.dtype), rtol=1e-6, atol=0), (n_classes, eps, squared)
    # the supervised V-Net loss: 0.5 (CE + squared Dice with eps 1e-5)
    logits = torch.randn(2, 2, 6, 5, 4, generator=g, dtype=torch.float64)
    label = torch.randint(0, 2, (2, 6, 5, 4), generator=g)
    dice = DiceLoss(include_background=False, to_onehot_y=True, softmax=True, batch=True, squared_pred=True,
                    smooth_nr=1e-5, smooth_dr=1e-5)(logits, label[:, None])
    assert torch.allclose(ce_dice_loss(logits, label)[0], 0.5 * (F.cross_entropy(logits, label) + dice))
