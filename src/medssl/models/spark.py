"""SparK masked image modeling for CNN encoders, 2D and 3D (Tian et al., ICLR 2023, arXiv:2301.03580; the model of Mask What Matters, arXiv:2509.23054).

One forward step, for images ``x`` (B, C, *S) and a patch visibility mask (B, *grid) (True = visible):

1. Masked input: ``x`` times the nearest-upsampled mask (masked pixels/voxels are 0).
2. Sparse encoder (:class:`medssl.models.sparse.SparseEncoder`): hierarchical features, smallest
   stride first, exactly zero at masked positions.
3. Densify, per scale: normalisation over visible positions (sparse batch norm for batch-norm
   encoders, per-position channels-first layer norm for ConvNeXt-like encoders) -> masked positions
   filled with a learnable per-scale mask token -> projection convolution (1x1 for the deepest feature,
   3x3 otherwise) to the decoder width of that scale.
4. Light decoder (UNet-like, additive injection, no concatenation): ``log2(patch_size)`` blocks, each
   ConvTranspose(k4, s2, p1) -> Conv3x3 -> BN -> ReLU6 -> Conv3x3 -> BN, doubling the resolution and
   halving the width (``decoder_width`` at the deepest scale); final 1x1 convolution to the image
   channels. A densified feature of stride ``s`` is added to the decoder tensor when that tensor is at
   stride ``s``: timm ResNet / ConvNeXt (strides 4..32, patch 32) inject before blocks 0-3 (block 4 has
   none); the V-Net encoder (strides 1..16, patch 16) injects before blocks 0-3 and its stride-1
   feature just before the final 1x1 convolution.
5. Loss: target and decoder output patchified per mask patch; the target is normalised per patch,
   ``(t - mean) / sqrt(var + 1e-6)`` (``var`` the unbiased variance over the patch's C * p**d values, as
   in the reference); per-patch MSE; mean over the masked patches of the whole batch (every masked
   patch weighs the same, ROI or background).

The encoder keeps the dense model's parameter names: :meth:`SparK.encoder_state_dict` loads strictly
into :func:`dense_encoder` (timm-style for 2D, ``VNetEncoder`` for 3D).

A batch without any masked patch has nothing to score: :meth:`SparK.forward` raises
:class:`~medssl.errors.MedsslInputError` for it.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medssl.errors import MedsslInputError
from medssl.masking.patches import patch_grid, upsample_mask
from medssl.models.sparse import (
    FeatureFn,
    SparseEncoder,
    convert_to_sparse,
    encoder_channels,
    encoder_strides,
    hierarchical_features,
    sparse_layers,
    visibility,
)
from medssl.tensors import eval_mode

InputMode = Literal["native", "replicate3"]
DensifyNorm = Literal["auto", "bn", "ln", "none"]

NORM_EPS = 1e-6
"""Added to the per-patch target variance before the square root."""

DEFAULT_DECODER_WIDTH_2D = 768


@dataclass
class SparKOutput:
    """Result of one SparK forward.

    Attributes:
        loss: scalar, mean over the masked patches of all samples of the per-patch MSE between the
            decoder output and the per-patch-normalised target.
        reconstruction: (B, C, *S) decoder output de-normalised with each patch's own target mean/std
            (input pixel space), every patch, without gradient; for previews (combine with ``visible``
            to show reconstructed masked patches over the visible input).
        masked_input: (B, C, *S) the input with masked patches zeroed (what the encoder saw, before any
            channel replication).
        visible: (B, *grid) bool, the mask as given.
        per_patch_loss: (B, N) per-patch MSE, N = prod(grid) in row-major grid order; only the masked
            patches enter ``loss``.
        decoded: (B, C, *S) raw decoder output (per-patch-normalised space).
    """

    loss: Tensor
    reconstruction: Tensor
    masked_input: Tensor
    visible: Tensor
    per_patch_loss: Tensor
    decoded: Tensor


# ---------------------------------------------------------------------------------------------------
# patches and loss


def patchify(x: Tensor, patch: int) -> Tensor:
    """(B, C, *S) -> (B, N, p**d * C): the values of each patch (row-major grid order), channels last.

    S (voxels) must be divisible by ``patch``; N = prod(S / patch).
    """
    b, c, spatial = x.shape[0], x.shape[1], tuple(x.shape[2:])
    grid = patch_grid(spatial, patch)
    d = len(grid)
    shape: list[int] = [b, c]
    for g in grid:
        shape += [g, patch]
    x = x.reshape(shape)
    # (B, C, g1, p, g2, p, ...) -> (B, g1, g2, ..., p, p, ..., C)
    order = [0] + [2 + 2 * i for i in range(d)] + [3 + 2 * i for i in range(d)] + [1]
    return x.permute(order).reshape(b, math.prod(grid), patch**d * c)


def unpatchify(patches: Tensor, patch: int, spatial: Sequence[int], channels: int) -> Tensor:
    """Inverse of :func:`patchify`: (B, N, p**d * C) -> (B, C, *S)."""
    spatial = tuple(int(s) for s in spatial)
    grid = patch_grid(spatial, patch)
    d = len(grid)
    b = patches.shape[0]
    x = patches.reshape(b, *grid, *([patch] * d), channels)
    # (B, g1, .., gd, p1, .., pd, C) -> (B, C, g1, p1, g2, p2, ...)
    order = [0, 1 + 2 * d]
    for i in range(d):
        order += [1 + i, 1 + d + i]
    return x.permute(order).reshape(b, channels, *spatial)


def normalize_patches(patches: Tensor, eps: float = NORM_EPS) -> tuple[Tensor, Tensor, Tensor]:
    """Per-patch normalisation of (B, N, K) patch values: ``(t - mean) / sqrt(var + eps)``.

    ``var`` is the unbiased variance over the K values. Returns ``(normalised, mean, std)``, the last
    two (B, N, 1).
    """
    mean = patches.mean(dim=-1, keepdim=True)
    std = torch.sqrt(patches.var(dim=-1, keepdim=True) + eps)
    return (patches - mean) / std, mean, std


def masked_patch_loss(decoded: Tensor, target: Tensor, visible: Tensor,
                      patch: int) -> tuple[Tensor, Tensor, Tensor]:
    """SparK's reconstruction loss.

    Args:
        decoded: (B, C, *S) decoder output (normalised space).
        target: (B, C, *S) images the loss compares against.
        visible: (B, *grid) bool patch mask, True = visible (not scored).
        patch: patch size (voxels).

    Returns:
        ``(loss, per_patch, reconstruction)``: the scalar mean of the per-patch MSE over masked patches,
        the (B, N) per-patch MSE, and ``decoded`` de-normalised per patch, (B, C, *S) (no gradient; for
        previews). Computed in float32.

    Raises:
        MedsslInputError: when no patch of the batch is masked.
    """
    masked = ~visible.reshape(visible.shape[0], -1).bool()
    count = int(masked.sum())
    if count == 0:
        raise MedsslInputError("mask", "every patch is visible: SparK scores masked patches only; use a "
                               "mask ratio above 0")
    rec = patchify(decoded.float(), patch)
    normed, mean, std = normalize_patches(patchify(target.float(), patch))
    per_patch = (rec - normed).square().mean(dim=-1)
    loss = (per_patch * masked).sum() / count
    with torch.no_grad():
        reconstruction = unpatchify(rec * std + mean, patch, decoded.shape[2:], decoded.shape[1])
    return loss, per_patch, reconstruction


# ---------------------------------------------------------------------------------------------------
# building blocks


def _conv(dims: int) -> type[nn.Conv2d] | type[nn.Conv3d]:
    return nn.Conv2d if dims == 2 else nn.Conv3d


def _conv_transpose(dims: int) -> type[nn.ConvTranspose2d] | type[nn.ConvTranspose3d]:
    return nn.ConvTranspose2d if dims == 2 else nn.ConvTranspose3d


def _batch_norm(dims: int) -> type[nn.BatchNorm2d] | type[nn.BatchNorm3d]:
    return nn.BatchNorm2d if dims == 2 else nn.BatchNorm3d


class ChannelsFirstLayerNorm(nn.Module):
    """Layer norm over the channels of each position of a (B, C, *S) map (2D or 3D).

    Statistics are per position, so masked positions never influence visible ones.
    """

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        y = F.layer_norm(x.movedim(1, -1), (x.shape[1],), self.weight, self.bias, self.eps)
        return y.movedim(-1, 1)


class DecoderBlock(nn.Module):
    """Doubles the resolution: ConvTranspose(k4, s2, p1) c_in -> c_in, then
    Conv3x3 c_in -> c_in -> BN -> ReLU6 -> Conv3x3 c_in -> c_out -> BN. (B, c_in, *S) -> (B, c_out, *2S)."""

    def __init__(self, dims: int, c_in: int, c_out: int) -> None:
        super().__init__()
        conv, bn = _conv(dims), _batch_norm(dims)
        self.up = _conv_transpose(dims)(c_in, c_in, kernel_size=4, stride=2, padding=1)
        self.conv = nn.Sequential(
            conv(c_in, c_in, kernel_size=3, padding=1, bias=False), bn(c_in), nn.ReLU6(inplace=True),
            conv(c_in, c_out, kernel_size=3, padding=1, bias=False), bn(c_out),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(self.up(x))


class LightDecoder(nn.Module):
    """SparK's light decoder: ``n_blocks`` :class:`DecoderBlock` from ``width`` halving to
    ``width / 2**n_blocks``, then a 1x1 convolution to ``out_chans``.

    ``forward(injections)`` takes ``n_blocks + 1`` entries: entry ``i < n_blocks`` (or None) is added
    before block ``i`` (at stride ``2**(n_blocks - i)`` relative to the output), the last entry before the
    final convolution. Entry 0 must be given. Output (B, out_chans, *S).
    """

    def __init__(self, dims: int, width: int, n_blocks: int, out_chans: int) -> None:
        super().__init__()
        self.widths = [width // 2**i for i in range(n_blocks + 1)]
        self.blocks = nn.ModuleList(DecoderBlock(dims, a, b)
                                    for a, b in zip(self.widths[:-1], self.widths[1:], strict=True))
        self.proj = _conv(dims)(self.widths[-1], out_chans, kernel_size=1)
        self._initialize()

    def _initialize(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.Conv3d):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.ConvTranspose2d | nn.ConvTranspose3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d | nn.BatchNorm3d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, injections: Sequence[Tensor | None]) -> Tensor:
        if len(injections) != len(self.blocks) + 1 or injections[0] is None:
            raise ValueError(f"expected {len(self.blocks) + 1} injections with the first one given")
        x = injections[0]
        for i, block in enumerate(self.blocks):
            if i > 0 and injections[i] is not None:
                x = x + injections[i]
            x = block(x)
        last = injections[-1]
        if last is not None and len(self.blocks) > 0:
            x = x + last
        return self.proj(x)


def _uses_layer_norm(encoder: nn.Module) -> bool:
    """True for ConvNeXt-like encoders (any ``nn.LayerNorm``, timm's ``LayerNorm2d`` included)."""
    return any(isinstance(m, nn.LayerNorm) for m in encoder.modules())


def _probe_channels(encoder: nn.Module, features: FeatureFn, dims: int, channels_in: int,
                    patch: int) -> tuple[int, ...]:
    """Channels of the features of ``encoder``, from one eval-mode forward on zeros (2 patches/axis)."""
    with eval_mode(encoder), torch.no_grad():
        out = features(encoder, torch.zeros(1, channels_in, *([2 * patch] * dims)))
    return tuple(int(f.shape[1]) for f in out)


# ---------------------------------------------------------------------------------------------------
# the model


class SparK(nn.Module):
    """SparK pretraining model around a dense CNN encoder (2D or 3D).

    Args:
        encoder: dense encoder (a timm ResNet / ConvNeXt created with ``in_chans`` = 1 in ``"native"``
            mode or 3 in ``"replicate3"`` mode, or a ``VNetEncoder`` without dropout, or any module with
            explicit ``features`` / ``strides``). It is copied and converted to sparse, not modified.
        dims: spatial dimensions, 2 or 3.
        in_chans: image channels of the input ``x`` and of the reconstruction.
        input_mode: ``"native"`` (the encoder sees the ``in_chans`` channels) or ``"replicate3"`` (a
            1-channel input is replicated to 3 channels before the encoder; loss and reconstruction
            stay 1-channel).
        decoder_width: decoder width at the deepest scale; default 768 in 2D (spec), in 3D the deepest
            encoder width (256 for the V-Net at base width 16, so the decoder mirrors its widths). Must
            be divisible by ``patch_size``.
        features: feature function ``(encoder, x) -> features`` smallest stride first; default
            :func:`~medssl.models.sparse.hierarchical_features`.
        strides: feature strides (voxels), powers of two; default
            :func:`~medssl.models.sparse.encoder_strides`. The last one is the mask patch size.
        channels: feature channels; default :func:`~medssl.models.sparse.encoder_channels` for the
            known encoders, else probed with one eval-mode forward.
        densify_norm: ``"auto"`` (layer norm if the encoder has layer norms, else sparse batch norm),
            ``"bn"``, ``"ln"`` or ``"none"``.

    ``forward(x, visible)`` -> :class:`SparKOutput` for ``x`` (B, in_chans, *S) with S divisible by
    ``patch_size`` and ``visible`` (B, *grid) bool, ``grid == grid_for(S)``.
    """

    def __init__(self, encoder: nn.Module, *, dims: int, in_chans: int = 1, input_mode: InputMode = "native",
                 decoder_width: int | None = None, features: FeatureFn | None = None,
                 strides: Sequence[int] | None = None, channels: Sequence[int] | None = None,
                 densify_norm: DensifyNorm = "auto") -> None:
        super().__init__()
        if dims not in (2, 3):
            raise MedsslInputError("dims", f"SparK supports 2 or 3 spatial dimensions, got {dims}")
        if input_mode not in ("native", "replicate3"):
            raise MedsslInputError("input_mode", f"unknown input mode {input_mode!r}; expected native or "
                                   "replicate3")
        if input_mode == "replicate3" and in_chans != 1:
            raise MedsslInputError("input_mode", f"replicate3 needs 1-channel images, got in_chans={in_chans}")
        self.dims = dims
        self.in_chans = in_chans
        self.input_mode = input_mode
        encoder_chans = 3 if input_mode == "replicate3" else in_chans
        feature_fn = features if features is not None else hierarchical_features
        self.strides = tuple(int(s) for s in (strides if strides is not None else encoder_strides(encoder)))
        if channels is not None:
            self.channels = tuple(int(c) for c in channels)
        elif features is None:
            self.channels = encoder_channels(encoder)
        else:
            self.channels = _probe_channels(encoder, feature_fn, dims, encoder_chans, self.strides[-1])
        if len(self.channels) != len(self.strides):
            raise ValueError(f"{len(self.channels)} feature channels for {len(self.strides)} strides")
        self.patch_size = self.strides[-1]
        n_blocks = int(round(math.log2(self.patch_size)))
        if 2**n_blocks != self.patch_size or any(
                s < 1 or self.patch_size % s or 2 ** int(round(math.log2(s))) != s for s in self.strides):
            raise MedsslInputError("encoder", f"feature strides {self.strides} must be powers of two up to "
                                   "the patch size")
        if list(self.strides) != sorted(set(self.strides)):
            raise MedsslInputError("encoder", f"feature strides {self.strides} must increase")
        if decoder_width is None:
            decoder_width = DEFAULT_DECODER_WIDTH_2D if dims == 2 else self.channels[-1]
        if decoder_width < self.patch_size or decoder_width % self.patch_size:
            raise MedsslInputError("decoder_width", f"must be a positive multiple of the patch size "
                                   f"{self.patch_size}, got {decoder_width}")
        self.decoder_width = int(decoder_width)

        self.sparse_encoder = SparseEncoder(encoder, feature_fn, self.strides)

        if densify_norm == "auto":
            densify_norm = "ln" if _uses_layer_norm(encoder) else "bn"
        if densify_norm not in ("bn", "ln", "none"):
            raise MedsslInputError("densify_norm", f"unknown {densify_norm!r}; expected auto, bn, ln or none")
        self.densify_norm_kind = densify_norm
        # Deepest feature first (index 0), like the decoder.
        deep_first = list(zip(self.strides, self.channels, strict=True))[::-1]
        norms: list[nn.Module] = []
        projs: list[nn.Module] = []
        self.mask_tokens = nn.ParameterList()
        self._levels: list[int] = []
        for i, (stride, chans) in enumerate(deep_first):
            level = n_blocks - int(round(math.log2(stride)))  # decoder injection index
            width = self.decoder_width // 2**level
            self._levels.append(level)
            token = nn.Parameter(torch.zeros(1, chans, *([1] * dims)))
            nn.init.trunc_normal_(token, mean=0.0, std=0.02, a=-0.02, b=0.02)
            self.mask_tokens.append(token)
            if densify_norm == "bn":
                norms.append(_batch_norm(dims)(chans))
            elif densify_norm == "ln":
                norms.append(ChannelsFirstLayerNorm(chans))
            else:
                norms.append(nn.Identity())
            kernel = 1 if i == 0 else 3
            projs.append(_conv(dims)(chans, width, kernel_size=kernel, padding=kernel // 2))
        self.densify_norms = convert_to_sparse(nn.ModuleList(norms), inplace=True)
        self.densify_projs = nn.ModuleList(projs)
        self.decoder = LightDecoder(dims, self.decoder_width, n_blocks, in_chans)

    # -- shapes ---------------------------------------------------------------------------------------

    def grid_for(self, spatial: Sequence[int]) -> tuple[int, ...]:
        """Patch grid of an input of size ``spatial`` (voxels); each size must divide by ``patch_size``."""
        if len(spatial) != self.dims:
            raise MedsslInputError("input", f"expected {self.dims} spatial sizes, got {tuple(spatial)}")
        return patch_grid(tuple(int(s) for s in spatial), self.patch_size)

    def _check(self, x: Tensor, visible: Tensor) -> None:
        if x.ndim != self.dims + 2 or x.shape[1] != self.in_chans:
            raise MedsslInputError("input", f"expected images (B, {self.in_chans}, *S) with {self.dims} "
                                   f"spatial axes, got shape {tuple(x.shape)}")
        grid = self.grid_for(x.shape[2:])
        if tuple(visible.shape) != (x.shape[0], *grid):
            raise MedsslInputError("mask", f"mask of shape {tuple(visible.shape)} does not fit images of "
                                   f"shape {tuple(x.shape)}; expected {(x.shape[0], *grid)}")

    # -- forward --------------------------------------------------------------------------------------

    def encoder_input(self, x: Tensor) -> Tensor:
        """(B, in_chans, *S) -> what the encoder takes (3 replicated channels in ``"replicate3"``)."""
        if self.input_mode == "replicate3":
            return x.expand(-1, 3, *x.shape[2:])
        return x

    def densify(self, features: Sequence[Tensor], visible: Tensor) -> list[Tensor | None]:
        """Sparse features (smallest stride first) -> decoder injections (see :class:`LightDecoder`)."""
        injections: list[Tensor | None] = [None] * (len(self.decoder.blocks) + 1)
        use_mask = sparse_layers(self.densify_norms)
        context = visibility(self.densify_norms, visible) if use_mask else contextlib.nullcontext()
        with context:
            for i, feature in enumerate(reversed(features)):
                normed = self.densify_norms[i](feature)
                keep = upsample_mask(visible, feature.shape[2:])
                filled = torch.where(keep, normed, self.mask_tokens[i].to(normed.dtype))
                injections[self._levels[i]] = self.densify_projs[i](filled)
        return injections

    def decode(self, x: Tensor, visible: Tensor) -> tuple[Tensor, Tensor]:
        """Masked input and raw decoder output, both (B, in_chans, *S)."""
        self._check(x, visible)
        visible = visible.bool()
        masked = x.masked_fill(~upsample_mask(visible, x.shape[2:]), 0.0)
        features = self.sparse_encoder(self.encoder_input(masked), visible)
        if len(features) != len(self.strides):
            raise ValueError(f"encoder returned {len(features)} features for strides {self.strides}")
        return masked, self.decoder(self.densify(features, visible))

    def forward(self, x: Tensor, visible: Tensor, target: Tensor | None = None) -> SparKOutput:
        """One SparK step.

        Args:
            x: (B, in_chans, *S) images, S divisible by ``patch_size``.
            visible: (B, *grid) bool patch mask, True = visible; at least one masked patch per batch.
            target: (B, in_chans, *S) images to reconstruct; default ``x``.
        """
        target = x if target is None else target
        if target.shape != x.shape:
            raise MedsslInputError("target", f"shape {tuple(target.shape)} differs from the input "
                                   f"{tuple(x.shape)}")
        visible = visible.bool()
        if visible.numel() and bool(visible.all()):
            raise MedsslInputError("mask", "every patch is visible: SparK scores masked patches only; use "
                                   "a mask ratio above 0")
        masked, decoded = self.decode(x, visible)
        loss, per_patch, reconstruction = masked_patch_loss(decoded, target, visible, self.patch_size)
        return SparKOutput(loss=loss, reconstruction=reconstruction, masked_input=masked,
                           visible=visible, per_patch_loss=per_patch, decoded=decoded)

    # -- export and optimiser helpers -----------------------------------------------------------------

    @property
    def encoder(self) -> nn.Module:
        """The (sparse-converted) encoder; its state dict is the dense model's."""
        return self.sparse_encoder.encoder

    def encoder_state_dict(self) -> dict[str, Tensor]:
        """Encoder weights and buffers under the dense model's names (loads strictly into
        :func:`dense_encoder`), detached copies."""
        return {k: v.detach().clone() for k, v in self.encoder.state_dict().items()}

    def no_weight_decay(self) -> set[str]:
        """Names (as in ``named_parameters()``) to exclude from weight decay: the mask tokens and every
        parameter with at most one dimension (biases, norm scales and shifts), encoder included."""
        names = {name for name, p in self.named_parameters() if p.ndim <= 1}
        names |= {f"mask_tokens.{i}" for i in range(len(self.mask_tokens))}
        return names


# ---------------------------------------------------------------------------------------------------
# builders


def dense_encoder(backbone: str, *, dims: int, in_chans: int = 1, input_mode: str = "native",
                  drop_path: float = 0.0, vnet_width: int = 16) -> nn.Module:
    """The dense network the exported encoder weights load into.

    ``dims=2``: ``timm.create_model(backbone, pretrained=False, num_classes=0, in_chans=1 or 3,
    drop_path_rate=drop_path)`` (timm's default global pooling; it has no weights), in_chans 3 in
    ``"replicate3"`` mode. ``dims=3`` with ``backbone="vnet"``: ``VNetEncoder(in_chans, vnet_width,
    has_dropout=False)`` (batch norm; ``drop_path`` does not apply).
    """
    if input_mode not in ("native", "replicate3"):
        raise MedsslInputError("input_mode", f"unknown input mode {input_mode!r}; expected native or "
                               "replicate3")
    if input_mode == "replicate3" and in_chans != 1:
        raise MedsslInputError("input_mode", f"replicate3 needs 1-channel images, got in_chans={in_chans}")
    if dims == 3:
        if backbone != "vnet":
            raise MedsslInputError("backbone", f"3D SparK supports the 'vnet' encoder, got {backbone!r}")
        from medssl.models.vnet import VNetEncoder

        return VNetEncoder(3 if input_mode == "replicate3" else in_chans, base_width=vnet_width,
                           has_dropout=False)
    if dims != 2:
        raise MedsslInputError("dims", f"SparK supports 2 or 3 spatial dimensions, got {dims}")
    if backbone == "vnet":
        raise MedsslInputError("backbone", "the 'vnet' encoder is 3D; use dims=3")
    import timm

    if not timm.is_model(backbone):
        raise MedsslInputError("backbone", f"unknown timm model {backbone!r} (e.g. resnet50, convnext_tiny)")
    return timm.create_model(backbone, pretrained=False, num_classes=0,
                             in_chans=3 if input_mode == "replicate3" else in_chans, drop_path_rate=drop_path)


def build_spark(backbone: str, *, dims: int, in_chans: int = 1, input_mode: str = "native",
                decoder_width: int | None = None, drop_path: float = 0.0, vnet_width: int = 16) -> SparK:
    """:class:`SparK` around a fresh :func:`dense_encoder` (same arguments)."""
    encoder = dense_encoder(backbone, dims=dims, in_chans=in_chans, input_mode=input_mode,
                            drop_path=drop_path, vnet_width=vnet_width)
    return SparK(encoder, dims=dims, in_chans=in_chans, input_mode=input_mode,  # type: ignore[arg-type]
                 decoder_width=decoder_width)


__all__ = ["ChannelsFirstLayerNorm", "DecoderBlock", "LightDecoder", "SparK", "SparKOutput", "build_spark",
           "dense_encoder", "masked_patch_loss", "normalize_patches", "patchify", "unpatchify"]
