"""Sparse encoder conversion: single layers against hand computations, whole encoders (timm ResNet /
ConvNeXt, V-Net encoder) for exact zeros, dense equivalence and strict state-dict loading."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medssl.errors import MedsslInputError
from medssl.models.sparse import (
    SparseEncoder,
    convert_to_sparse,
    encoder_channels,
    hierarchical_features,
    sparse_forward,
    sparse_layers,
    visibility,
)
from medssl.models.vnet import VNet


def _up(visible: Tensor, factor: int) -> Tensor:
    """(B, *grid) -> (B, 1, *grid * factor) by repeating each patch value (nearest upsampling)."""
    out = visible
    for axis in range(1, visible.ndim):
        out = out.repeat_interleave(factor, dim=axis)
    return out.unsqueeze(1)


def _single(module: nn.Module, x: Tensor) -> list[Tensor]:
    return [module(x)]


def _mask(batch: int, grid: tuple[int, ...], seed: int) -> Tensor:
    visible = torch.rand(batch, *grid, generator=torch.Generator().manual_seed(seed)) > 0.5
    visible.view(batch, -1)[:, 0] = True   # every sample has a visible and a masked patch
    visible.view(batch, -1)[:, -1] = False
    return visible


@pytest.mark.parametrize("dims", [2, 3])
def test_single_conv_matches_masked_dense_conv(dims: int) -> None:
    torch.manual_seed(0)
    conv = (nn.Conv2d if dims == 2 else nn.Conv3d)(3, 5, kernel_size=3, stride=2, padding=1)
    x = torch.randn(2, 3, *([8] * dims))
    visible = _mask(2, (2,) * dims, seed=1)
    out = sparse_forward(convert_to_sparse(conv), x, visible, features=_single)[0]
    dense_conv = F.conv2d if dims == 2 else F.conv3d
    expected = dense_conv(x * _up(visible, 4), conv.weight, conv.bias, stride=2, padding=1) * _up(visible, 2)
    assert out.shape == expected.shape
    torch.testing.assert_close(out, expected)
    assert (out * ~_up(visible, 2) == 0).all()


@pytest.mark.parametrize("dims", [2, 3])
def test_single_batchnorm_uses_visible_statistics(dims: int) -> None:
    torch.manual_seed(0)
    bn = (nn.BatchNorm2d if dims == 2 else nn.BatchNorm3d)(4)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2.0)
        bn.bias.uniform_(-1.0, 1.0)
    sparse = convert_to_sparse(bn)
    x = torch.randn(3, 4, *([4] * dims)) * 3 + 1
    visible = _mask(3, (2,) * dims, seed=2)
    keep = _up(visible, 2)
    out = sparse_forward(sparse, x, visible, features=_single)[0]

    values = x.movedim(1, -1)[keep[:, 0]]  # (N, C) visible vectors
    n = values.shape[0]
    mean = values.sum(0) / n
    var = ((values - mean) ** 2).sum(0) / n
    shape = (1, 4) + (1,) * dims
    expected = (x - mean.reshape(shape)) / torch.sqrt(var.reshape(shape) + bn.eps)
    expected = (expected * bn.weight.reshape(shape) + bn.bias.reshape(shape)) * keep
    torch.testing.assert_close(out, expected)
    assert (out[~keep.expand_as(out)] == 0).all()
    torch.testing.assert_close(sparse.running_mean, 0.1 * mean)
    torch.testing.assert_close(sparse.running_var, 0.9 + 0.1 * var * n / (n - 1))

    sparse.eval()
    out_eval = sparse_forward(sparse, x, visible, features=_single)[0]
    rm, rv = sparse.running_mean.reshape(shape), sparse.running_var.reshape(shape)
    expected_eval = ((x - rm) / torch.sqrt(rv + bn.eps) * bn.weight.reshape(shape) + bn.bias.reshape(shape)) * keep
    torch.testing.assert_close(out_eval, expected_eval)


def test_batchnorm_with_one_visible_vector_keeps_running_statistics() -> None:
    """One visible position has no unbiased variance: the layer normalises it (to its bias) and leaves
    the running statistics and the batch counter untouched instead of failing."""
    bn = nn.BatchNorm2d(3)
    with torch.no_grad():
        bn.bias.copy_(torch.tensor([0.5, -1.0, 2.0]))
    sparse = convert_to_sparse(bn)
    visible = torch.zeros(1, 2, 2, dtype=torch.bool)
    visible[0, 1, 0] = True
    x = torch.randn(1, 3, 2, 2)
    out = sparse_forward(sparse, x, visible, features=_single)[0]
    torch.testing.assert_close(out[0, :, 1, 0], bn.bias.detach())
    assert (out[0, :, 0] == 0).all() and (out[0, :, 1, 1] == 0).all()
    assert torch.equal(sparse.running_mean, torch.zeros(3)) and torch.equal(sparse.running_var, torch.ones(3))
    assert int(sparse.num_batches_tracked) == 0


def test_batchnorm_cumulative_average_momentum_none() -> None:
    bn = nn.BatchNorm2d(2, momentum=None)
    sparse = convert_to_sparse(bn)
    torch.manual_seed(1)
    means = []
    for seed in (4, 5):
        x = torch.randn(2, 2, 4, 4) + seed
        visible = _mask(2, (2, 2), seed=seed)
        sparse_forward(sparse, x, visible, features=_single)
        values = x.movedim(1, -1)[_up(visible, 2)[:, 0]]
        means.append(values.mean(0))
    torch.testing.assert_close(sparse.running_mean, (means[0] + means[1]) / 2)
    assert int(sparse.num_batches_tracked) == 2


@pytest.mark.parametrize("dims", [2, 3])
def test_norm_statistics_ignore_masked_values(dims: int) -> None:
    torch.manual_seed(0)
    visible = _mask(2, (2,) * dims, seed=3)
    keep = _up(visible, 2)
    x = torch.randn(2, 4, *([4] * dims))
    garbage = x + 100.0 * torch.randn_like(x) * ~keep
    layers = [(nn.BatchNorm2d if dims == 2 else nn.BatchNorm3d)(4), nn.GroupNorm(2, 4),
              (nn.InstanceNorm2d if dims == 2 else nn.InstanceNorm3d)(4, affine=True)]
    for layer in layers:
        a, b = convert_to_sparse(layer), convert_to_sparse(layer)
        # call the layers directly (no input masking) so the garbage really reaches them
        with visibility(a, visible):
            out_a = a(x * keep)
        with visibility(b, visible):
            out_b = b(garbage)
        torch.testing.assert_close(out_a, out_b, rtol=0, atol=1e-6)
        assert (out_b[~keep.expand_as(out_b)] == 0).all()
        for buf_a, buf_b in zip(a.buffers(), b.buffers(), strict=True):
            torch.testing.assert_close(buf_a, buf_b, rtol=0, atol=1e-6)


def test_group_norm_by_hand() -> None:
    torch.manual_seed(0)
    gn = nn.GroupNorm(2, 4)
    with torch.no_grad():
        gn.weight.uniform_(0.5, 2.0)
        gn.bias.uniform_(-1.0, 1.0)
    x = torch.randn(2, 4, 4, 4, 4)
    visible = _mask(2, (2, 2, 2), seed=4)
    keep = _up(visible, 2)
    out = sparse_forward(convert_to_sparse(gn), x, visible, features=_single)[0]
    expected = torch.zeros_like(x)
    for s in range(2):
        for g in range(2):
            chans = x[s, 2 * g:2 * g + 2]
            vals = chans[:, keep[s, 0]]
            mean, var = vals.mean(), vals.var(unbiased=False)
            normed = (chans - mean) / torch.sqrt(var + gn.eps)
            for k, c in enumerate(range(2 * g, 2 * g + 2)):
                expected[s, c] = (normed[k] * gn.weight[c] + gn.bias[c]) * keep[s, 0]
    torch.testing.assert_close(out, expected)


def _encoders() -> list[tuple[str, nn.Module, tuple[int, ...], int]]:
    """(name, dense encoder, input shape, patch size); small shapes for speed.

    Every bias is randomised: timm initialises Linear biases to zero, which would hide a masked
    position turning nonzero inside a ConvNeXt MLP.
    """
    torch.manual_seed(0)
    models = [
        ("resnet18", timm.create_model("resnet18", pretrained=False), (2, 3, 64, 64), 32),
        ("convnext_atto", timm.create_model("convnext_atto", pretrained=False), (2, 3, 64, 64), 32),
        # channels-last LayerNorm + Linear MLP inside the blocks, as in convnext_tiny and larger
        ("convnext_atto_linear_mlp", timm.create_model("convnext_atto", pretrained=False, conv_mlp=False),
         (2, 3, 64, 64), 32),
        ("vnet", VNet(base_width=4).encoder, (2, 1, 32, 32, 32), 16),
        ("vnet_groupnorm", VNet(base_width=4, normalization="groupnorm").encoder, (2, 1, 32, 32, 32), 16),
    ]
    with torch.no_grad():
        for _, model, _, _ in models:
            for name, param in model.named_parameters():
                if name.endswith("bias"):
                    param.normal_(0.0, 0.1)
    return models


@pytest.fixture(scope="module")
def encoders() -> list[tuple[str, nn.Module, tuple[int, ...], int]]:
    return _encoders()


def test_masked_positions_exactly_zero_every_stage(encoders: list) -> None:
    for name, dense, shape, patch in encoders:
        sparse = SparseEncoder(dense)
        assert sparse.patch_size == patch
        sparse.train()
        x = torch.randn(*shape)
        grid = tuple(s // patch for s in shape[2:])
        visible = _mask(shape[0], grid, seed=5)
        features = sparse(x, visible)
        assert len(features) == len(sparse.strides)
        assert [f.shape[1] for f in features] == list(encoder_channels(dense)), name
        for stride, f in zip(sparse.strides, features, strict=True):
            assert tuple(f.shape[2:]) == tuple(s // stride for s in shape[2:]), name
            keep = _up(visible, patch // stride).expand_as(f)
            assert (f[~keep] == 0).all(), (name, stride)
            assert (f[keep] != 0).any(), (name, stride)
        # the mask is cleared after the call: no state is left on the layers
        assert all(layer.medssl_visible is None for layer in sparse_layers(sparse.encoder))


def test_all_visible_equals_dense_in_eval(encoders: list) -> None:
    for name, dense, shape, patch in encoders:
        dense.eval()
        sparse = SparseEncoder(dense).eval()
        x = torch.randn(*shape)
        grid = tuple(s // patch for s in shape[2:])
        with torch.no_grad():
            expected = hierarchical_features(dense, x)
            got = sparse(x, torch.ones(shape[0], *grid, dtype=torch.bool))
        assert len(got) == len(expected)
        for a, b in zip(got, expected, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)


def test_conversion_leaves_dense_model_alone_and_dense_outside_calls(encoders: list) -> None:
    name, dense, shape, _ = encoders[0]
    sparse = convert_to_sparse(dense).eval()
    dense.eval()
    assert not sparse_layers(dense)
    assert all(isinstance(m, type(d)) for m, d in zip(sparse.modules(), dense.modules(), strict=True))
    x = torch.randn(*shape)
    with torch.no_grad():
        torch.testing.assert_close(sparse(x), dense(x))


@pytest.mark.parametrize(("name", "kwargs"), [("resnet18", {}), ("resnet50", {}), ("convnext_atto", {}),
                                             ("convnext_atto", {"conv_mlp": False})])
def test_state_dict_loads_strictly_into_timm(name: str, kwargs: dict) -> None:
    sparse = SparseEncoder(timm.create_model(name, pretrained=False, **kwargs))
    sparse(torch.randn(2, 3, 64, 64), _mask(2, (2, 2), seed=6))  # update BN running stats
    fresh = timm.create_model(name, pretrained=False, **kwargs)
    fresh.load_state_dict(sparse.encoder.state_dict(), strict=True)
    for key, value in sparse.encoder.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key


def test_state_dict_loads_strictly_into_vnet_encoder() -> None:
    sparse = SparseEncoder(VNet(base_width=4).encoder)
    sparse(torch.randn(2, 1, 32, 32, 32), _mask(2, (2, 2, 2), seed=7))
    fresh = VNet(base_width=4)
    fresh.encoder.load_state_dict(sparse.encoder.state_dict(), strict=True)
    assert torch.equal(fresh.encoder.blocks[0][1].running_mean, sparse.encoder.blocks[0][1].running_mean)


def test_gradients_flow_to_visible_inputs_only() -> None:
    torch.manual_seed(0)
    sparse = SparseEncoder(VNet(base_width=4).encoder)
    x = torch.randn(2, 1, 32, 32, 32, requires_grad=True)
    visible = _mask(2, (2, 2, 2), seed=8)
    sum(f.square().sum() for f in sparse(x, visible)).backward()
    keep = _up(visible, 16).expand_as(x)
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert (x.grad[~keep] == 0).all() and (x.grad[keep] != 0).any()
    assert all(p.grad is not None for p in sparse.encoder.parameters())


def test_bad_mask_rejected_and_unconverted_module_refused() -> None:
    sparse = convert_to_sparse(nn.Conv2d(1, 1, 3, padding=1))
    with pytest.raises(MedsslInputError):
        sparse_forward(sparse, torch.randn(1, 1, 8, 8), torch.ones(1, 3, 3, dtype=torch.bool), _single)
    with pytest.raises(MedsslInputError):
        sparse_forward(sparse, torch.randn(1, 1, 8, 8), torch.ones(1, 2, 2, 2, dtype=torch.bool), _single)
    with pytest.raises(ValueError, match="convert_to_sparse"):
        sparse_forward(nn.Conv2d(1, 1, 3), torch.randn(1, 1, 8, 8), torch.ones(1, 2, 2, dtype=torch.bool),
                       _single)
