"""The left-atrium V-Net and its dual-branch form (Milletari et al., 3DV 2016, arXiv:1606.04797, in the left-atrium variant of UA-MT / MC-Net used by CORN (Li et al., IEEE BIBM 2024, arXiv:2410.15916)).

Layout (base width ``w`` = 16 in the published setting):

* encoder: conv blocks of 1/2/3/3/3 stages with widths w, 2w, 4w, 8w, 16w; a stage is
  Conv3d 3x3x3 (padding 1) -> norm -> ReLU; between blocks a Conv3d kernel 2 stride 2 -> norm -> ReLU
  halves every spatial size. Dropout3d(0.5) on the bottleneck feature while training.
* decoder: upsample (ConvTranspose3d k2 s2, or trilinear x2 + Conv3d 3x3x3) -> norm -> ReLU, added to
  the encoder feature of the same size; conv blocks of 3/3/2/1 stages with widths 8w, 4w, 2w, w;
  Dropout3d(0.5) on the last w-channel feature while training; Conv3d 1x1x1 w -> n_classes.

Spatial sizes must be divisible by 16 (four halvings). All tensors are (B, C, H, W, D).
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn

from medssl.errors import MedsslInputError

Normalization = Literal["batchnorm", "groupnorm", "instancenorm", "none"]
Upsampling = Literal["transposed", "trilinear"]

DOWNSAMPLING_FACTOR = 16
ENCODER_STAGES = (1, 2, 3, 3, 3)
DECODER_STAGES = (3, 3, 2, 1)


def _norm(kind: Normalization, channels: int) -> list[nn.Module]:
    """The normalisation layer after a convolution (an empty list for ``"none"``)."""
    if kind == "batchnorm":
        return [nn.BatchNorm3d(channels)]
    if kind == "instancenorm":
        return [nn.InstanceNorm3d(channels)]
    if kind == "groupnorm":
        groups = 16
        while channels % groups:
            groups //= 2
        return [nn.GroupNorm(groups, channels)]
    if kind == "none":
        return []
    raise MedsslInputError("normalization", f"unknown normalization {kind!r}; expected batchnorm, "
                           "groupnorm, instancenorm or none")


class ConvBlock(nn.Sequential):
    """``n_stages`` x [Conv3d 3x3x3 pad 1 -> norm -> ReLU]; the first stage maps ``c_in -> c_out``."""

    def __init__(self, n_stages: int, c_in: int, c_out: int, normalization: Normalization) -> None:
        layers: list[nn.Module] = []
        for i in range(n_stages):
            layers.append(nn.Conv3d(c_in if i == 0 else c_out, c_out, kernel_size=3, padding=1))
            layers.extend(_norm(normalization, c_out))
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class DownBlock(nn.Sequential):
    """Conv3d kernel 2 stride 2 -> norm -> ReLU: halves H, W and D."""

    def __init__(self, c_in: int, c_out: int, normalization: Normalization) -> None:
        super().__init__(nn.Conv3d(c_in, c_out, kernel_size=2, stride=2),
                         *_norm(normalization, c_out), nn.ReLU(inplace=True))


class UpBlock(nn.Sequential):
    """Doubles H, W and D: ConvTranspose3d k2 s2 (``"transposed"``) or trilinear x2 (align_corners=True)
    followed by Conv3d 3x3x3 (``"trilinear"``); then norm -> ReLU."""

    def __init__(self, c_in: int, c_out: int, normalization: Normalization, upsampling: Upsampling) -> None:
        if upsampling == "transposed":
            layers: list[nn.Module] = [nn.ConvTranspose3d(c_in, c_out, kernel_size=2, stride=2)]
        elif upsampling == "trilinear":
            layers = [nn.Upsample(scale_factor=2, mode="trilinear", align_corners=True),
                      nn.Conv3d(c_in, c_out, kernel_size=3, padding=1)]
        else:
            raise MedsslInputError("upsampling", f"unknown upsampling {upsampling!r}; expected transposed "
                                   "or trilinear")
        super().__init__(*layers, *_norm(normalization, c_out), nn.ReLU(inplace=True))


class VNetEncoder(nn.Module):
    """V-Net encoder: (B, in_channels, H, W, D) -> five features at scales 1, 1/2, 1/4, 1/8, 1/16.

    Feature ``i`` has ``base_width * 2**i`` channels. With ``has_dropout`` the bottleneck feature goes
    through Dropout3d(0.5) while the module is in training mode.
    """

    def __init__(self, in_channels: int = 1, base_width: int = 16, normalization: Normalization = "batchnorm",
                 has_dropout: bool = True) -> None:
        super().__init__()
        widths = [base_width * 2**i for i in range(len(ENCODER_STAGES))]
        self.widths = widths
        self.blocks = nn.ModuleList()
        self.downs = nn.ModuleList()
        for i, (stages, width) in enumerate(zip(ENCODER_STAGES, widths, strict=True)):
            self.blocks.append(ConvBlock(stages, in_channels if i == 0 else width, width, normalization))
            if i + 1 < len(widths):
                self.downs.append(DownBlock(width, widths[i + 1], normalization))
        self.has_dropout = has_dropout
        self.dropout = nn.Dropout3d(p=0.5)

    def forward(self, x: Tensor) -> list[Tensor]:
        """Return ``[x1, x2, x3, x4, x5]``; ``x_i`` is (B, base_width * 2**(i-1), H / 2**(i-1), ...)."""
        features: list[Tensor] = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            features.append(x)
            if i < len(self.downs):
                x = self.downs[i](x)
        if self.has_dropout:
            features[-1] = self.dropout(features[-1])
        return features


class VNetDecoder(nn.Module):
    """V-Net decoder with additive skips: five encoder features -> (logits, embedding).

    ``logits`` is (B, n_classes, H, W, D); ``embedding`` is the (B, base_width, H, W, D) input of the final
    1x1x1 convolution (after Dropout3d(0.5) in training mode when ``has_dropout``).
    """

    def __init__(self, n_classes: int = 2, base_width: int = 16, normalization: Normalization = "batchnorm",
                 has_dropout: bool = True, upsampling: Upsampling = "transposed") -> None:
        super().__init__()
        widths = [base_width * 2**i for i in range(len(ENCODER_STAGES))]
        self.ups = nn.ModuleList()
        self.blocks = nn.ModuleList()
        for level, stages in zip(range(len(widths) - 1, 0, -1), DECODER_STAGES, strict=True):
            self.ups.append(UpBlock(widths[level], widths[level - 1], normalization, upsampling))
            self.blocks.append(ConvBlock(stages, widths[level - 1], widths[level - 1], normalization))
        self.out_conv = nn.Conv3d(base_width, n_classes, kernel_size=1)
        self.has_dropout = has_dropout
        self.dropout = nn.Dropout3d(p=0.5)

    def forward(self, features: list[Tensor]) -> tuple[Tensor, Tensor]:
        x = features[-1]
        for i, (up, block) in enumerate(zip(self.ups, self.blocks, strict=True)):
            x = block(up(x) + features[-2 - i])
        if self.has_dropout:
            x = self.dropout(x)
        return self.out_conv(x), x


def check_spatial_size(x: Tensor) -> None:
    """Raise :class:`MedsslInputError` unless ``x`` is (B, C, H, W, D) with H, W, D divisible by 16."""
    if x.ndim != 5:
        raise MedsslInputError("input", f"V-Net expects a (B, C, H, W, D) tensor, got shape {tuple(x.shape)}")
    bad = [s for s in x.shape[2:] if s % DOWNSAMPLING_FACTOR]
    if bad:
        raise MedsslInputError("input", f"V-Net spatial size {tuple(x.shape[2:])} must be divisible by "
                               f"{DOWNSAMPLING_FACTOR} in every axis (patch size)")


class VNet(nn.Module):
    """The V-Net of the left-atrium literature (~9.45 M parameters at base width 16).

    Args:
        in_channels: image channels (1 for MRI).
        n_classes: output classes (2: background, atrium).
        base_width: channels of the first block (16 in the published setting; smaller for CPU presets).
        normalization: ``"batchnorm"`` (published), ``"groupnorm"``, ``"instancenorm"`` or ``"none"``.
        has_dropout: Dropout3d(0.5) on the bottleneck and the last decoder feature while training.
        upsampling: ``"transposed"`` (ConvTranspose3d k2 s2) or ``"trilinear"`` (x2 + Conv3d 3x3x3).

    ``forward(x)`` takes (B, in_channels, H, W, D) with H, W, D divisible by 16 and returns
    ``(logits (B, n_classes, H, W, D), embedding (B, base_width, H, W, D))``.
    ``encoder`` is a plain submodule so a pretrained encoder's state dict loads into it directly.
    """

    def __init__(self, in_channels: int = 1, n_classes: int = 2, base_width: int = 16,
                 normalization: Normalization = "batchnorm", has_dropout: bool = True,
                 upsampling: Upsampling = "transposed") -> None:
        super().__init__()
        self.in_channels = in_channels
        self.n_classes = n_classes
        self.base_width = base_width
        self.encoder = VNetEncoder(in_channels, base_width, normalization, has_dropout)
        self.decoder = VNetDecoder(n_classes, base_width, normalization, has_dropout, upsampling)

    def encoder_features(self, x: Tensor) -> list[Tensor]:
        """The five encoder features of ``x`` (see :class:`VNetEncoder`)."""
        check_spatial_size(x)
        return self.encoder(x)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.decoder(self.encoder_features(x))


class DualBranchVNet(nn.Module):
    """Two independent V-Nets (no shared weights): branch 1 upsamples with transposed convolutions,
    branch 2 with trilinear interpolation + convolution.

    ``forward(x)`` returns ``(logits1, logits2, emb1, emb2)``: logits (B, n_classes, H, W, D),
    embeddings (B, base_width, H, W, D).
    """

    def __init__(self, in_channels: int = 1, n_classes: int = 2, base_width: int = 16,
                 normalization: Normalization = "batchnorm", has_dropout: bool = True) -> None:
        super().__init__()
        self.branch1 = VNet(in_channels, n_classes, base_width, normalization, has_dropout, "transposed")
        self.branch2 = VNet(in_channels, n_classes, base_width, normalization, has_dropout, "trilinear")

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        logits1, emb1 = self.branch1(x)
        logits2, emb2 = self.branch2(x)
        return logits1, logits2, emb1, emb2


def count_parameters(module: nn.Module) -> int:
    """Number of scalar parameters of ``module`` (trainable or not)."""
    return sum(p.numel() for p in module.parameters())


__all__ = ["ConvBlock", "DownBlock", "DualBranchVNet", "UpBlock", "VNet", "VNetDecoder", "VNetEncoder",
           "check_spatial_size", "count_parameters"]
