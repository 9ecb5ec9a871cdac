"""SparK model: shapes, the masked per-patch loss against a direct per-patch computation, where the
gradient may come from, mask tokens, export into the dense encoder, replicate3 mode, a tiny overfit."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import Tensor, nn

from medssl.errors import MedsslInputError
from medssl.models.spark import SparK, build_spark, dense_encoder, masked_patch_loss, patchify, unpatchify
from medssl.models.sparse import hierarchical_features
from medssl.models.vnet import VNet


def _mask(batch: int, grid: tuple[int, ...], seed: int) -> Tensor:
    """Random visibility mask with at least one visible and one masked patch per sample."""
    visible = torch.rand(batch, *grid, generator=torch.Generator().manual_seed(seed)) > 0.5
    visible.view(batch, -1)[:, 0] = True
    visible.view(batch, -1)[:, -1] = False
    return visible


def _up(visible: Tensor, factor: int) -> Tensor:
    """(B, *grid) -> (B, 1, *grid * factor) by repeating each patch value."""
    out = visible
    for axis in range(1, visible.ndim):
        out = out.repeat_interleave(factor, dim=axis)
    return out.unsqueeze(1)


def _patch_slices(grid: tuple[int, ...], p: int) -> list[tuple[slice, ...]]:
    """Spatial slices of every patch, row-major grid order."""
    return [tuple(slice(i * p, (i + 1) * p) for i in index)
            for index in itertools.product(*(range(g) for g in grid))]


def _direct_loss(decoded: Tensor, target: Tensor, visible: Tensor, p: int) -> tuple[Tensor, Tensor, Tensor]:
    """The SparK loss written patch by patch: (loss, per-patch MSE (B, N), de-normalised reconstruction)."""
    b = target.shape[0]
    grid = tuple(visible.shape[1:])
    slices = _patch_slices(grid, p)
    per_patch = torch.zeros(b, len(slices), dtype=torch.float64)
    rec = torch.zeros_like(decoded, dtype=torch.float64)
    total, count = 0.0, 0
    flat_visible = visible.reshape(b, -1)
    for s in range(b):
        for n, sl in enumerate(slices):
            t = target[s][(slice(None), *sl)].double()
            d = decoded[s][(slice(None), *sl)].double()
            mean = t.mean()
            var = ((t - mean) ** 2).sum() / (t.numel() - 1)  # unbiased, as the reference
            std = torch.sqrt(var + 1e-6)
            per_patch[s, n] = (((t - mean) / std - d) ** 2).mean()
            rec[s][(slice(None), *sl)] = d * std + mean
            if not flat_visible[s, n]:
                total += float(per_patch[s, n])
                count += 1
    return torch.tensor(total / count, dtype=torch.float64), per_patch, rec


CASES = [
    # backbone, dims, input shape, extra build kwargs, patch size
    ("resnet18", 2, (2, 1, 64, 64), {}, 32),
    ("resnet50", 2, (2, 1, 64, 64), {}, 32),
    ("convnext_atto", 2, (2, 1, 64, 64), {}, 32),
    ("convnext_nano", 2, (2, 1, 64, 32), {}, 32),
    ("vnet", 3, (2, 1, 32, 32, 16), {"vnet_width": 4}, 16),
]


@pytest.mark.parametrize(("backbone", "dims", "shape", "kwargs", "patch"), CASES,
                         ids=[c[0] for c in CASES])
def test_shapes_and_loss_equal_direct_computation(backbone: str, dims: int, shape: tuple[int, ...],
                                                  kwargs: dict, patch: int) -> None:
    torch.manual_seed(0)
    model = build_spark(backbone, dims=dims, decoder_width=64, **kwargs)
    assert model.patch_size == patch and model.dims == dims and model.in_chans == 1
    grid = model.grid_for(shape[2:])
    assert grid == tuple(s // patch for s in shape[2:])
    x = torch.randn(*shape) * 2 + 0.5
    visible = _mask(shape[0], grid, seed=1)
    out = model(x, visible)
    n = len(_patch_slices(grid, patch))
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    assert out.reconstruction.shape == shape and out.decoded.shape == shape
    assert out.masked_input.shape == shape and out.per_patch_loss.shape == (shape[0], n)
    assert torch.equal(out.visible, visible)
    assert torch.equal(out.masked_input, x * _up(visible, patch))

    loss, per_patch, rec = _direct_loss(out.decoded.detach(), x, visible, patch)
    torch.testing.assert_close(out.per_patch_loss.double(), per_patch, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(out.loss.double(), loss, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(out.reconstruction.double(), rec, rtol=1e-4, atol=1e-5)

    out.loss.backward()
    grads = [p.grad for p in model.decoder.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder.parameters())


@pytest.mark.parametrize(("dims", "p"), [(2, 4), (3, 2)])
def test_patchify_roundtrip_and_order(dims: int, p: int) -> None:
    x = torch.randn(2, 3, *([2 * p] * dims))
    patches = patchify(x, p)
    grid = (2,) * dims
    assert patches.shape == (2, 2**dims, 3 * p**dims)
    for n, sl in enumerate(_patch_slices(grid, p)):
        # channels last inside a patch: the values of patch n, position-major then channel
        expected = x[(slice(None), slice(None), *sl)].reshape(2, 3, -1).transpose(1, 2).reshape(2, -1)
        assert torch.equal(patches[:, n], expected)
    assert torch.equal(unpatchify(patches, p, x.shape[2:], 3), x)


def test_visible_target_pixels_do_not_matter_and_gradient_only_from_masked_patches() -> None:
    torch.manual_seed(0)
    model = build_spark("resnet18", dims=2, decoder_width=64)
    x = torch.randn(2, 1, 64, 96)
    visible = _mask(2, (2, 3), seed=2)
    keep = _up(visible, 32)
    out = model(x, visible)
    changed_target = torch.where(keep, torch.randn_like(x) * 5, x)
    out2 = model(x, visible, target=changed_target)
    torch.testing.assert_close(out2.decoded, out.decoded)
    torch.testing.assert_close(out2.loss, out.loss)
    masked_rows = ~visible.reshape(2, -1)
    torch.testing.assert_close(out2.per_patch_loss[masked_rows], out.per_patch_loss[masked_rows])
    assert not torch.allclose(out2.per_patch_loss[~masked_rows], out.per_patch_loss[~masked_rows])

    decoded = out.decoded.detach().requires_grad_(True)
    loss, _, _ = masked_patch_loss(decoded, x, visible, 32)
    loss.backward()
    grad = decoded.grad
    assert grad is not None
    assert (grad[keep.expand_as(grad)] == 0).all()
    assert (grad[~keep.expand_as(grad)] != 0).any()


@pytest.mark.parametrize(("backbone", "dims", "shape", "kwargs"),
                         [("resnet18", 2, (2, 1, 64, 64), {}), ("vnet", 3, (2, 1, 32, 32, 32), {"vnet_width": 4})])
def test_masked_input_pixels_do_not_change_the_output(backbone: str, dims: int, shape: tuple[int, ...],
                                                      kwargs: dict) -> None:
    torch.manual_seed(0)
    model = build_spark(backbone, dims=dims, decoder_width=64, **kwargs)
    x = torch.randn(*shape)
    visible = _mask(shape[0], model.grid_for(shape[2:]), seed=3)
    keep = _up(visible, model.patch_size)
    x2 = torch.where(keep, x, torch.randn_like(x) * 10 + 3)
    a, b = model(x, visible), model(x2, visible)
    assert torch.equal(a.masked_input, b.masked_input)
    torch.testing.assert_close(a.decoded, b.decoded)
    # through the encoder (target held fixed) the input gradient is zero on masked pixels
    xg = x.clone().requires_grad_(True)
    model(xg, visible, target=x).loss.backward()
    assert xg.grad is not None
    assert (xg.grad[~keep.expand_as(xg)] == 0).all() and (xg.grad[keep.expand_as(xg)] != 0).any()


def test_all_visible_mask_is_a_clear_error() -> None:
    model = build_spark("vnet", dims=3, vnet_width=4)
    with pytest.raises(MedsslInputError, match="every patch is visible"):
        model(torch.randn(1, 1, 16, 16, 16), torch.ones(1, 1, 1, 1, dtype=torch.bool))


def _densify_by_hand(feature: Tensor, visible: Tensor, token: Tensor, proj: nn.Module, kind: str) -> Tensor:
    """Deepest-scale densify written directly: norm over visible vectors (batch norm: statistics over
    all visible positions of the batch; layer norm: per position), token at masked positions, 1x1 conv.
    Norm scales are 1 and shifts 0 at initialisation."""
    vectors = feature.movedim(1, -1)  # (B, *grid, C)
    values = vectors[visible]  # (N, C)
    if kind == "bn":
        mean = values.mean(dim=0)
        var = ((values - mean) ** 2).mean(dim=0)
        normed = (values - mean) / torch.sqrt(var + 1e-5)
    else:
        mean = values.mean(dim=1, keepdim=True)
        var = ((values - mean) ** 2).mean(dim=1, keepdim=True)
        normed = (values - mean) / torch.sqrt(var + 1e-6)
    filled = token.reshape(1, -1).expand(*vectors.shape[:-1], -1).clone()
    filled[visible] = normed
    weight = proj.weight.reshape(proj.out_channels, -1)
    return filled @ weight.t() + proj.bias  # (B, *grid, C_out)


@pytest.mark.parametrize(("backbone", "dims", "shape", "kwargs", "strides", "kind"), [
    ("resnet18", 2, (2, 1, 64, 64), {}, [32, 16, 8, 4, None, None], "bn"),
    ("convnext_atto", 2, (2, 1, 64, 64), {}, [32, 16, 8, 4, None, None], "ln"),
    ("vnet", 3, (2, 1, 32, 32, 32), {"vnet_width": 4}, [16, 8, 4, 2, 1], "bn"),
])
def test_injection_layout_and_densify(backbone: str, dims: int, shape: tuple[int, ...], kwargs: dict,
                                      strides: list[int | None], kind: str) -> None:
    """Feature of stride s -> decoder tensor at stride s, width decoder_width * s / patch; the deepest
    injection equals norm (visible statistics) -> mask token at masked positions -> 1x1 projection."""
    torch.manual_seed(0)
    model = build_spark(backbone, dims=dims, decoder_width=128, **kwargs).train()
    assert model.densify_norm_kind == kind
    x = torch.randn(*shape)
    visible = _mask(shape[0], model.grid_for(shape[2:]), seed=4)
    features = model.sparse_encoder(model.encoder_input(x), visible)
    injections = model.densify(features, visible)
    assert len(injections) == len(strides)
    for inj, stride in zip(injections, strides, strict=True):
        if stride is None:
            assert inj is None
            continue
        assert inj is not None
        assert inj.shape == (shape[0], 128 * stride // model.patch_size, *(s // stride for s in shape[2:]))
    proj = model.densify_projs[0]
    assert proj.kernel_size == (1,) * dims
    assert all(p.kernel_size == (3,) * dims for p in model.densify_projs[1:])
    token = model.mask_tokens[0]
    assert token.shape == (1, model.channels[-1]) + (1,) * dims
    assert 0 < token.abs().max() <= 0.02
    assert injections[0] is not None
    expected = _densify_by_hand(features[-1], visible, token, proj, kind)
    torch.testing.assert_close(injections[0].movedim(1, -1), expected, rtol=1e-4, atol=1e-5)
    # masked positions all carry the same projected token
    at_masked = injections[0].movedim(1, -1)[~visible]
    torch.testing.assert_close(at_masked, at_masked[:1].expand_as(at_masked))


@pytest.mark.parametrize(("backbone", "dims", "shape", "kwargs"), [
    ("resnet18", 2, (2, 1, 64, 64), {}),
    ("convnext_atto", 2, (2, 1, 64, 64), {}),
    ("vnet", 3, (2, 1, 32, 32, 32), {"vnet_width": 4}),
    ("resnet18", 2, (2, 1, 64, 64), {"input_mode": "replicate3"}),
])
def test_encoder_state_dict_loads_into_dense_encoder_after_a_step(backbone: str, dims: int,
                                                                   shape: tuple[int, ...], kwargs: dict) -> None:
    torch.manual_seed(0)
    model = build_spark(backbone, dims=dims, decoder_width=64, **kwargs)
    before = model.encoder_state_dict()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(*shape)
    grid = model.grid_for(shape[2:])
    model.train()
    model(x, _mask(shape[0], grid, seed=5)).loss.backward()
    optimizer.step()

    state = model.encoder_state_dict()
    assert any(not torch.equal(before[k], state[k]) for k in state if k.endswith("weight"))
    vnet_width = kwargs.get("vnet_width", 16)
    dense = dense_encoder(backbone, dims=dims, input_mode=kwargs.get("input_mode", "native"),
                          vnet_width=vnet_width)
    dense.load_state_dict(state, strict=True)
    if backbone == "vnet":  # the exported encoder also loads into the V-Net of downstream training
        VNet(base_width=vnet_width).encoder.load_state_dict(state, strict=True)

    dense.eval()
    model.eval()
    x = torch.randn(*shape)
    with torch.no_grad():
        got = model.sparse_encoder(model.encoder_input(x), torch.ones(shape[0], *grid, dtype=torch.bool))
        replicated = kwargs.get("input_mode") == "replicate3"
        expected = hierarchical_features(dense, x.expand(-1, 3, *shape[2:]) if replicated else x)
    assert len(got) == len(expected) == len(model.strides)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_replicate3_mode() -> None:
    torch.manual_seed(0)
    model = build_spark("resnet18", dims=2, input_mode="replicate3", decoder_width=64)
    assert model.encoder.conv1.in_channels == 3
    assert model.decoder.proj.out_channels == 1
    x = torch.randn(2, 1, 64, 64)
    out = model(x, _mask(2, (2, 2), seed=6))
    assert out.reconstruction.shape == (2, 1, 64, 64) and out.masked_input.shape == (2, 1, 64, 64)
    assert model.encoder_state_dict()["conv1.weight"].shape == (64, 3, 7, 7)
    with pytest.raises(MedsslInputError, match="replicate3"):
        build_spark("resnet18", dims=2, in_chans=2, input_mode="replicate3")


def test_twenty_step_overfit_halves_the_loss() -> None:
    torch.manual_seed(0)
    model = build_spark("resnet18", dims=2, decoder_width=64)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 64), torch.linspace(-1, 1, 64), indexing="ij")
    x = (torch.sin(4 * xx) * torch.cos(3 * yy) + (xx**2 + yy**2 < 0.4).float()).reshape(1, 1, 64, 64)
    visible = torch.tensor([[[True, False], [False, True]]])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(20):
        loss = model(x, visible).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_no_weight_decay_names() -> None:
    model = build_spark("convnext_atto", dims=2, decoder_width=64)
    names = model.no_weight_decay()
    params = dict(model.named_parameters())
    assert names <= set(params)
    assert {f"mask_tokens.{i}" for i in range(4)} <= names
    assert all(params[n].ndim <= 1 or n.startswith("mask_tokens.") for n in names)
    assert {n for n, p in params.items() if p.ndim <= 1} <= names
    assert "decoder.proj.bias" in names and "decoder.proj.weight" not in names
    assert any(n.startswith("densify_norms.") for n in names)
    assert any(n.startswith("sparse_encoder.") for n in names)


def test_default_decoder_width_and_custom_feature_function() -> None:
    assert build_spark("resnet18", dims=2).decoder.blocks[0].up.in_channels == 768
    vnet3d = build_spark("vnet", dims=3, vnet_width=4)
    assert vnet3d.decoder_width == 64 and vnet3d.decoder.proj.in_channels == 4

    def features(encoder: nn.Module, x: Tensor) -> list[Tensor]:
        return list(encoder(x))[:4]  # stop at stride 8

    encoder = VNet(base_width=4, has_dropout=False).encoder
    model = SparK(encoder, dims=3, features=features, strides=(1, 2, 4, 8), decoder_width=32)
    assert model.channels == (4, 8, 16, 32) and model.patch_size == 8
    out = model(torch.randn(2, 1, 16, 16, 16), _mask(2, (2, 2, 2), seed=7))
    assert out.reconstruction.shape == (2, 1, 16, 16, 16) and torch.isfinite(out.loss)


def test_bad_inputs_are_user_errors() -> None:
    model = build_spark("vnet", dims=3, vnet_width=4)
    x = torch.randn(1, 1, 32, 32, 32)
    with pytest.raises(MedsslInputError, match="mask"):
        model(x, torch.zeros(1, 1, 2, 2, dtype=torch.bool))
    with pytest.raises(MedsslInputError, match="patch size"):
        model(torch.randn(1, 1, 24, 32, 32), torch.zeros(1, 2, 2, 2, dtype=torch.bool))
    with pytest.raises(MedsslInputError, match="input"):
        model(torch.randn(1, 2, 32, 32, 32), torch.zeros(1, 2, 2, 2, dtype=torch.bool))
    with pytest.raises(MedsslInputError, match="decoder_width"):
        build_spark("vnet", dims=3, vnet_width=4, decoder_width=24)
    with pytest.raises(MedsslInputError, match="backbone"):
        dense_encoder("resnet18", dims=3)
    with pytest.raises(MedsslInputError, match="backbone"):
        dense_encoder("vnet", dims=2)
    with pytest.raises(MedsslInputError, match="backbone"):
        dense_encoder("no_such_net", dims=2)
