"""Dense -> sparse encoder conversion for masked image modeling (SparK style), 2D and 3D.

A sparse layer computes densely and then zeroes every masked position of its output; normalisation
statistics use visible positions only. :func:`convert_to_sparse` swaps the class of every supported
layer for a sparse subclass of it, so parameter and buffer names, ``isinstance`` checks and the state
dict stay those of the dense model: ``convert_to_sparse(m).state_dict()`` loads strictly into ``m``'s
architecture (a timm model, the V-Net encoder, ...).

The visibility mask is passed per call: :func:`sparse_forward` sets it on the sparse layers for the
duration of one forward and clears it afterwards. Outside such a call a converted module computes
exactly like its dense original.

Converted layers (``d`` = 2 or 3 spatial dimensions, mask (B, *grid) with True = visible):

* ``Conv{2,3}d``, ``ConvTranspose{2,3}d``, ``MaxPool{2,3}d``, ``AvgPool{2,3}d``: output re-masked at
  its own resolution (nearest upsampling of the patch mask).
* ``BatchNorm{2,3}d`` / ``SyncBatchNorm``: batch statistics over the visible positions of the batch
  (running statistics updated from those); eval mode uses the running statistics; re-masked.
* ``GroupNorm`` and ``InstanceNorm{2,3}d`` (without running statistics): per-sample statistics over
  the visible positions; re-masked.
* ``LayerNorm``: channels-first for timm's ``LayerNorm2d`` / ``LayerNorm3d``, channels-last (B, *S, C)
  otherwise (ConvNeXt blocks); per-position statistics, re-masked.
* ``Linear`` applied to a channels-last feature map (B, *S, C) (ConvNeXt's MLP): re-masked, so masked
  positions stay exactly zero inside residual blocks too. A ``Linear`` on (B, C) vectors is unchanged.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, cast

import torch
from torch import Tensor, nn

from medssl.errors import MedsslInputError
from medssl.masking.patches import upsample_mask

FeatureFn = Callable[[nn.Module, Tensor], list[Tensor]]

_CHANNELS_FIRST_LN = re.compile(r"LayerNorm[23]d")


class MaskCache:
    """The visibility mask of one sparse forward at every resolution it is asked for, built once each.

    A ResNet-18 has ~40 sparse layers but only five resolutions: every layer at a resolution shares one
    upsampled mask, its complement and its float form instead of rebuilding them.
    """

    def __init__(self, visible: Tensor) -> None:
        self.visible = visible.bool()
        self._keep: dict[tuple[int, ...], Tensor] = {}
        self._drop: dict[tuple[int, ...], Tensor] = {}
        self._weights: dict[tuple[tuple[int, ...], torch.dtype], Tensor] = {}

    def keep(self, spatial: Sequence[int]) -> Tensor:
        """(B, 1, *spatial) bool, True at visible positions."""
        key = tuple(int(s) for s in spatial)
        if key not in self._keep:
            self._keep[key] = upsample_mask(self.visible, key)
        return self._keep[key]

    def drop(self, spatial: Sequence[int]) -> Tensor:
        """(B, 1, *spatial) bool, True at masked positions."""
        key = tuple(int(s) for s in spatial)
        if key not in self._drop:
            self._drop[key] = ~self.keep(key)
        return self._drop[key]

    def weights(self, spatial: Sequence[int], dtype: torch.dtype) -> Tensor:
        """(B, 1, *spatial) of ``dtype``: 1 at visible, 0 at masked positions."""
        key = (tuple(int(s) for s in spatial), dtype)
        if key not in self._weights:
            self._weights[key] = self.keep(key[0]).to(dtype)
        return self._weights[key]


class SparseLayer:
    """Mixin of every sparse layer: holds the visibility masks (:class:`MaskCache`) during a sparse forward."""

    medssl_masks: MaskCache | None = None

    @property
    def medssl_visible(self) -> Tensor | None:
        """The (B, *grid) bool visibility mask of the current sparse forward (None outside one)."""
        return None if self.medssl_masks is None else self.medssl_masks.visible

    def _mask(self, spatial: Sequence[int]) -> Tensor | None:
        """(B, 1, *spatial) bool mask at ``spatial`` (None outside a sparse forward)."""
        return None if self.medssl_masks is None else self.medssl_masks.keep(spatial)


class _RemaskChannelsFirst(SparseLayer):
    """Dense layer on (B, C, *S), output re-masked."""

    def forward(self, x: Tensor) -> Tensor:
        out = super().forward(x)  # type: ignore[misc]
        masks = self.medssl_masks
        return out if masks is None else out.masked_fill(masks.drop(out.shape[2:]), 0.0)


class _RemaskChannelsLast(SparseLayer):
    """Dense layer on (B, *S, C), output re-masked; inputs of another rank pass through unmasked."""

    def forward(self, x: Tensor) -> Tensor:
        out = super().forward(x)  # type: ignore[misc]
        masks = self.medssl_masks
        if masks is None or out.ndim != masks.visible.ndim + 1:
            return out
        return out.masked_fill(masks.drop(out.shape[1:-1]).movedim(1, -1), 0.0)


class _SparseBatchNorm(SparseLayer):
    """Batch norm over visible positions only: the visible (N, C) vectors are normalised as one batch.

    Plain ``BatchNorm`` layers compute the masked statistics with dense masked sums (no gather /
    scatter); ``SyncBatchNorm`` packs the visible vectors and lets the layer synchronise them across
    processes. Both update the running statistics exactly as the dense layer would on those N vectors
    (unbiased running variance); with fewer than two visible vectors the running statistics are left
    unchanged (a variance of one vector is undefined).
    """

    def forward(self, x: Tensor) -> Tensor:
        mask = self._mask(x.shape[2:])
        if mask is None:
            return super().forward(x)  # type: ignore[misc]
        if isinstance(self, nn.SyncBatchNorm):
            return self._packed_forward(x, mask)
        return self._masked_sum_forward(x, mask)

    def _packed_forward(self, x: Tensor, mask: Tensor) -> Tensor:
        keep = mask[:, 0]
        channels_last = x.movedim(1, -1)
        selected = channels_last[keep]  # (N, C)
        n, c = selected.shape
        if n == 0:
            return torch.zeros_like(x)
        # (1, C, N, 1[, 1]) keeps the layer's own input checks, momentum and running-stat logic.
        packed = selected.t().reshape(1, c, n, *([1] * (x.ndim - 3)))
        normed = super().forward(packed).reshape(c, n).t()  # type: ignore[misc]
        out = normed.new_zeros(channels_last.shape[:-1] + (normed.shape[1],))
        return out.index_put((keep,), normed).movedim(-1, 1)

    def _masked_sum_forward(self, x: Tensor, mask: Tensor) -> Tensor:
        bn: nn.modules.batchnorm._BatchNorm = self  # type: ignore[assignment]
        assert self.medssl_masks is not None
        weight_mask = self.medssl_masks.weights(x.shape[2:], x.dtype)
        reduce_dims = [0, *range(2, x.ndim)]
        shape = (1, -1) + (1,) * (x.ndim - 2)
        use_batch_stats = bn.training or bn.running_mean is None
        if use_batch_stats:
            n = weight_mask.sum()  # a tensor: no host synchronisation on accelerators
            mean = (x * weight_mask).sum(reduce_dims) / n.clamp_min(1)
            centred = (x - mean.reshape(shape)) * weight_mask
            var = (centred * centred).sum(reduce_dims) / n.clamp_min(1)
            if bn.training and bn.running_mean is not None:
                self._update_running_stats(mean.detach(), var.detach() * n / (n - 1).clamp_min(1), n > 1)
        else:
            mean, var = bn.running_mean, bn.running_var  # type: ignore[assignment]
            centred = (x - mean.reshape(shape)) * weight_mask
        scale = torch.rsqrt(var + bn.eps)
        if bn.weight is not None:
            scale = scale * bn.weight
        # ((x - mean) * scale + bias) * mask, from the already masked centred values: two passes fewer
        if bn.bias is None:
            return centred * scale.reshape(shape)
        return torch.addcmul(bn.bias.reshape(shape) * weight_mask, centred, scale.reshape(shape))

    @torch.no_grad()
    def _update_running_stats(self, mean: Tensor, unbiased_var: Tensor, valid: Tensor) -> None:
        """Blend the batch statistics into the running ones where ``valid`` (a 0-d bool tensor)."""
        bn: nn.modules.batchnorm._BatchNorm = self  # type: ignore[assignment]
        assert bn.running_mean is not None and bn.running_var is not None
        if bn.num_batches_tracked is not None:
            bn.num_batches_tracked.add_(valid.to(bn.num_batches_tracked.dtype))
        if bn.momentum is None:  # cumulative moving average, as the dense layer
            assert bn.num_batches_tracked is not None
            momentum = valid.to(mean.dtype) / bn.num_batches_tracked.clamp_min(1).to(mean.dtype)
        else:
            momentum = valid.to(mean.dtype) * bn.momentum
        bn.running_mean.copy_(bn.running_mean + momentum * (mean.to(bn.running_mean.dtype) - bn.running_mean))
        bn.running_var.copy_(bn.running_var + momentum * (unbiased_var.to(bn.running_var.dtype) - bn.running_var))


class _SparseGroupNorm(SparseLayer):
    """Group norm (instance norm: one group per channel) with per-sample statistics over visible
    positions."""

    def forward(self, x: Tensor) -> Tensor:
        mask = self._mask(x.shape[2:])
        if mask is None:
            return super().forward(x)  # type: ignore[misc]
        groups = self.num_groups if isinstance(self, nn.GroupNorm) else x.shape[1]
        eps = self.eps  # type: ignore[attr-defined]
        b, c = x.shape[:2]
        spatial = x.shape[2:]
        xg = x.reshape(b, groups, c // groups, *spatial)
        mg = mask.reshape(b, 1, 1, *spatial).to(x.dtype)
        dims = tuple(range(2, xg.ndim))
        count = (mg.sum(dim=dims, keepdim=True) * (c // groups)).clamp_min(1.0)
        mean = (xg * mg).sum(dim=dims, keepdim=True) / count
        var = ((xg - mean) ** 2 * mg).sum(dim=dims, keepdim=True) / count
        y = ((xg - mean) / torch.sqrt(var + eps)).reshape(x.shape)
        weight = getattr(self, "weight", None)
        bias = getattr(self, "bias", None)
        shape = (1, c) + (1,) * len(spatial)
        if weight is not None:
            y = y * weight.reshape(shape)
        if bias is not None:
            y = y + bias.reshape(shape)
        return y.masked_fill(~mask, 0.0)


def _mixin_for(module: nn.Module) -> type[SparseLayer] | None:
    """The sparse behaviour for ``module``'s class, or None to leave it dense."""
    if isinstance(module, SparseLayer):
        return None
    spatial_layers = (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d, nn.MaxPool2d,
                      nn.MaxPool3d, nn.AvgPool2d, nn.AvgPool3d)
    if isinstance(module, spatial_layers):
        return _RemaskChannelsFirst
    if isinstance(module, nn.BatchNorm2d | nn.BatchNorm3d | nn.SyncBatchNorm):
        return _SparseBatchNorm
    if isinstance(module, nn.GroupNorm):
        return _SparseGroupNorm
    if isinstance(module, nn.InstanceNorm2d | nn.InstanceNorm3d):
        if module.track_running_stats:
            raise MedsslInputError("encoder", "instance norm with running statistics has no sparse form; "
                                   "use batchnorm or groupnorm")
        return _SparseGroupNorm
    if isinstance(module, nn.LayerNorm):
        if _CHANNELS_FIRST_LN.search(type(module).__name__):
            return _RemaskChannelsFirst
        return _RemaskChannelsLast
    if isinstance(module, nn.Linear):
        return _RemaskChannelsLast
    return None


def convert_to_sparse(module: nn.Module, inplace: bool = False) -> nn.Module:
    """Return ``module`` (a copy unless ``inplace``) with every supported layer made sparse.

    Parameters, buffers and module names are unchanged, so the state dict is the dense model's.
    Run it with :func:`sparse_forward`.
    """
    model = module if inplace else copy.deepcopy(module)
    types: dict[tuple[type, type], type] = {}
    for layer in model.modules():
        mixin = _mixin_for(layer)
        if mixin is None:
            continue
        dense = type(layer)
        key = (mixin, dense)
        if key not in types:
            types[key] = type(f"Sparse{dense.__name__}", (mixin, dense), {"__module__": __name__})
        layer.__class__ = types[key]
    return model


def sparse_layers(module: nn.Module) -> list[SparseLayer]:
    """Every sparse layer inside ``module`` (including itself)."""
    return [m for m in module.modules() if isinstance(m, SparseLayer)]


@contextmanager
def visibility(module: nn.Module, visible: Tensor) -> Iterator[None]:
    """Within the ``with`` block, every sparse layer of ``module`` masks with ``visible`` (B, *grid)."""
    layers = sparse_layers(module)
    if not layers:
        raise ValueError("module has no sparse layers; convert it with convert_to_sparse first")
    masks = MaskCache(visible)
    try:
        for layer in layers:
            layer.medssl_masks = masks
        yield
    finally:
        for layer in layers:
            layer.medssl_masks = None


def _is_vnet_encoder(model: nn.Module) -> bool:
    from medssl.models.vnet import VNetEncoder

    return isinstance(model, VNetEncoder)


def _timm_feature_indices(model: nn.Module) -> list[int]:
    info = getattr(model, "feature_info", None)
    if not isinstance(info, list) or not hasattr(model, "forward_intermediates"):
        raise ValueError(f"{type(model).__name__} has no timm feature_info / forward_intermediates; "
                         "pass an explicit feature function")
    return [i for i, f in enumerate(info) if int(f["reduction"]) >= 4]


def encoder_strides(model: nn.Module) -> tuple[int, ...]:
    """Strides (voxels) of the hierarchical features, smallest first: (1, 2, 4, 8, 16) for the V-Net
    encoder, (4, 8, 16, 32) for timm ResNet / ConvNeXt. The last one is the mask patch size."""
    if _is_vnet_encoder(model):
        return tuple(2**i for i in range(len(cast(nn.ModuleList, model.blocks))))
    info = cast(Any, model.feature_info)  # timm's FeatureInfo
    return tuple(int(info[i]["reduction"]) for i in _timm_feature_indices(model))


def encoder_channels(model: nn.Module) -> tuple[int, ...]:
    """Channels of the hierarchical features, smallest stride first."""
    if _is_vnet_encoder(model):
        return tuple(cast(Sequence[int], model.widths))
    info = cast(Any, model.feature_info)  # timm's FeatureInfo
    return tuple(int(info[i]["num_chs"]) for i in _timm_feature_indices(model))


def hierarchical_features(model: nn.Module, x: Tensor) -> list[Tensor]:
    """Hierarchical features of ``x`` (B, C, *S), smallest stride first (see :func:`encoder_strides`).

    V-Net encoder: its five features. timm models: ``forward_intermediates`` at the stages with
    reduction >= 4 (the four stages of ResNet / ConvNeXt).
    """
    if _is_vnet_encoder(model):
        return list(model(x))
    indices = _timm_feature_indices(model)
    return list(model.forward_intermediates(x, indices=indices, intermediates_only=True))  # type: ignore[operator]


def sparse_forward(encoder: nn.Module, x: Tensor, visible: Tensor,
                   features: FeatureFn = hierarchical_features) -> list[Tensor]:
    """Run a converted encoder on the visible patches of ``x``.

    Args:
        encoder: a module returned by :func:`convert_to_sparse`.
        x: (B, C, *S) images; S (voxels) must be the grid size times the patch size.
        visible: (B, *grid) bool visibility mask (True = visible).
        features: ``(encoder, masked_x) -> list of features``; defaults to :func:`hierarchical_features`.

    Returns:
        The features, each (B, C_i, *S_i) and exactly zero at masked positions. ``x`` is masked first
        (masked input = image x upsampled mask).
    """
    if visible.ndim != x.ndim - 1 or visible.shape[0] != x.shape[0]:
        raise MedsslInputError("mask", f"mask of shape {tuple(visible.shape)} does not fit images of shape "
                               f"{tuple(x.shape)}; expected (B, *grid)")
    if any(s % g for s, g in zip(x.shape[2:], visible.shape[1:], strict=True)):
        raise MedsslInputError("mask", f"image size {tuple(x.shape[2:])} is not a multiple of the mask grid "
                               f"{tuple(visible.shape[1:])}")
    with visibility(encoder, visible):
        masked = x.masked_fill(~upsample_mask(visible, x.shape[2:]), 0.0)
        return features(encoder, masked)


class SparseEncoder(nn.Module):
    """A dense encoder converted to sparse, called as ``features = sparse(x, visible)``.

    Args:
        dense: the dense encoder (a timm ResNet / ConvNeXt, ``VNet(...).encoder``, or any module with
            an explicit ``features`` function and ``strides``). It is copied, not modified.
        features: feature function, default :func:`hierarchical_features`.
        strides: feature strides (voxels); default :func:`encoder_strides`.

    ``encoder`` holds the converted module; ``encoder.state_dict()`` loads strictly into the dense
    architecture. ``patch_size`` is the last stride (the mask patch size).
    """

    def __init__(self, dense: nn.Module, features: FeatureFn = hierarchical_features,
                 strides: Sequence[int] | None = None) -> None:
        super().__init__()
        self.encoder = convert_to_sparse(dense)
        self.features = features
        self.strides = tuple(strides) if strides is not None else encoder_strides(dense)
        self.patch_size = self.strides[-1]

    def forward(self, x: Tensor, visible: Tensor) -> list[Tensor]:
        """(B, C, *S) images and (B, *grid) mask -> features (see :func:`sparse_forward`)."""
        return sparse_forward(self.encoder, x, visible, self.features)


__all__ = ["FeatureFn", "MaskCache", "SparseEncoder", "SparseLayer", "convert_to_sparse", "encoder_channels",
           "encoder_strides", "hierarchical_features", "sparse_forward", "sparse_layers", "visibility"]
