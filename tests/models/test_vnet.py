"""V-Net, dual-branch V-Net and heads: exact sizes, shapes, dropout and encoder reuse."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medssl.errors import MedsslInputError
from medssl.models import DualBranchVNet, PredictionHead, ProjectionHead, VNet, count_parameters


def conv3(ci: int, co: int) -> int:
    return 27 * ci * co + co


def bn(c: int) -> int:
    return 2 * c


def expected_vnet_params(w: int, in_ch: int = 1, n_classes: int = 2, trilinear: bool = False) -> int:
    """Parameter count written from the spec's description of the network."""
    widths = [w, 2 * w, 4 * w, 8 * w, 16 * w]
    total = 0
    # encoder blocks 1/2/3/3/3 stages, each stage conv3 + BN
    for i, stages in enumerate([1, 2, 3, 3, 3]):
        c_in = in_ch if i == 0 else widths[i]
        total += conv3(c_in, widths[i]) + bn(widths[i])
        total += (stages - 1) * (conv3(widths[i], widths[i]) + bn(widths[i]))
    # downsampling conv k2 s2 + BN between blocks
    for i in range(4):
        total += 8 * widths[i] * widths[i + 1] + widths[i + 1] + bn(widths[i + 1])
    # decoder: upsample + BN, then 3/3/2/1 stages
    for level, stages in zip([4, 3, 2, 1], [3, 3, 2, 1], strict=True):
        ci, co = widths[level], widths[level - 1]
        up = conv3(ci, co) if trilinear else 8 * ci * co + co
        total += up + bn(co) + stages * (conv3(co, co) + bn(co))
    return total + w * n_classes + n_classes


def test_parameter_counts_match_the_spec() -> None:
    b1 = VNet(base_width=16, upsampling="transposed")
    b2 = VNet(base_width=16, upsampling="trilinear")
    assert count_parameters(b1) == expected_vnet_params(16) == 9_448_866
    assert count_parameters(b2) == expected_vnet_params(16, trilinear=True) == 10_275_746
    assert abs(count_parameters(b1) - 9.45e6) < 0.01e6
    dual = DualBranchVNet(base_width=16)
    assert count_parameters(dual) == 9_448_866 + 10_275_746
    assert count_parameters(VNet(base_width=4)) == expected_vnet_params(4)


def test_forward_shapes_and_encoder_features() -> None:
    net = VNet(in_channels=1, n_classes=3, base_width=4).eval()
    x = torch.randn(2, 1, 16, 32, 16)
    logits, emb = net(x)
    assert logits.shape == (2, 3, 16, 32, 16)
    assert emb.shape == (2, 4, 16, 32, 16)
    feats = net.encoder_features(x)
    assert [tuple(f.shape) for f in feats] == [
        (2, 4, 16, 32, 16), (2, 8, 8, 16, 8), (2, 16, 4, 8, 4), (2, 32, 2, 4, 2), (2, 64, 1, 2, 1)]
    # the logits are the 1x1x1 convolution of the embedding
    conv = net.decoder.out_conv
    manual = torch.einsum("bchwd,kc->bkhwd", emb, conv.weight[:, :, 0, 0, 0]) + conv.bias.view(1, -1, 1, 1, 1)
    assert torch.allclose(logits, manual, atol=1e-5)


def test_input_size_must_be_divisible_by_16() -> None:
    with pytest.raises(MedsslInputError, match="divisible by 16"):
        VNet(base_width=2)(torch.randn(1, 1, 16, 24, 16))


def test_dropout_only_in_training_mode() -> None:
    torch.manual_seed(0)
    net = VNet(base_width=2)
    x = torch.randn(2, 1, 16, 16, 16)
    net.train()
    a, b = net(x)[0], net(x)[0]
    assert not torch.allclose(a, b)  # Dropout3d on bottleneck and last feature
    net.eval()
    assert torch.equal(net(x)[0], net(x)[0])
    no_drop = VNet(base_width=2, has_dropout=False).train()
    assert torch.allclose(no_drop(x)[0], no_drop(x)[0])


def test_encoder_state_dict_loads_into_another_vnet() -> None:
    torch.manual_seed(1)
    src, dst = VNet(base_width=2), VNet(base_width=2, upsampling="trilinear")
    dst.encoder.load_state_dict(src.encoder.state_dict())
    x = torch.randn(1, 1, 16, 16, 16)
    for a, b in zip(src.eval().encoder_features(x), dst.eval().encoder_features(x), strict=True):
        assert torch.equal(a, b)


def test_dual_branch_upsampling_and_independent_weights() -> None:
    dual = DualBranchVNet(base_width=2)
    kinds1 = {type(m) for m in dual.branch1.decoder.modules()}
    kinds2 = {type(m) for m in dual.branch2.decoder.modules()}
    assert nn.ConvTranspose3d in kinds1 and nn.Upsample not in kinds1
    assert nn.Upsample in kinds2 and nn.ConvTranspose3d not in kinds2
    ptr1 = {p.data_ptr() for p in dual.branch1.parameters()}
    assert ptr1.isdisjoint(p.data_ptr() for p in dual.branch2.parameters())
    outs = dual.eval()(torch.randn(2, 1, 16, 16, 16))
    assert [tuple(o.shape) for o in outs] == [(2, 2, 16, 16, 16)] * 2 + [(2, 2, 16, 16, 16)] * 2


def test_heads_layout_and_sizes() -> None:
    proj, pred = ProjectionHead(16, 32, 32), PredictionHead(32)
    assert [type(m) for m in proj] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    assert [type(m) for m in pred] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    assert count_parameters(proj) == (16 * 32 + 32) + 64 + (32 * 32 + 32)
    assert count_parameters(pred) == 2 * (32 * 32 + 32) + 64
    assert count_parameters(ProjectionHead(16, 64, 64)) == (16 * 64 + 64) + 128 + (64 * 64 + 64)
    assert pred(proj(torch.randn(10, 16))).shape == (10, 32)
