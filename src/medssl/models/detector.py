"""Mask R-CNN on a torchvision ResNet + FPN body (levels P2-P6).

An exported medssl encoder (see :mod:`medssl.models.encoder_io`) is loaded into the body before the stages
outside ``trainable_layers`` are frozen. A 1-channel encoder gets a 1-channel body; otherwise images are
replicated to 3 channels.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from torch import nn

if TYPE_CHECKING:
    from torchvision.models.detection import MaskRCNN

    from medssl.models.encoder_io import ResnetBodyInit

__all__ = ["BACKBONES", "DetectorSettings", "build_detector", "guess_resnet", "resnet_body"]

#: ResNet bodies torchvision builds with an FPN.
BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101")
_BlockCounts = {"resnet18": ("basic", (2, 2, 2, 2)), "resnet34": ("basic", (3, 4, 6, 3)),
                "resnet50": ("bottleneck", (3, 4, 6, 3)), "resnet101": ("bottleneck", (3, 4, 23, 3))}


class DetectorSettings(Protocol):
    """What :func:`build_detector` reads (``medssl.engine.detect_config.DetectModelConfig`` provides it)."""

    @property
    def backbone(self) -> str: ...

    @property
    def trainable_layers(self) -> int: ...

    @property
    def norm(self) -> str: ...

    @property
    def min_size(self) -> int: ...

    @property
    def max_size(self) -> int: ...

    @property
    def anchor_sizes(self) -> Sequence[int]: ...

    @property
    def detections_per_image(self) -> int: ...

    @property
    def rpn_proposals_train(self) -> int: ...

    @property
    def rpn_proposals_test(self) -> int: ...

    @property
    def roi_batch_size(self) -> int: ...

    @property
    def fpn_channels(self) -> int: ...

    @property
    def box_head_dim(self) -> int: ...


def resnet_body(backbone: str, in_chans: int, norm: str) -> nn.Module:
    """A torchvision ResNet (random weights) with ``in_chans`` inputs; ``norm``: ``frozen_bn`` or ``bn``."""
    import torchvision
    from torchvision.ops import FrozenBatchNorm2d

    norm_layer = FrozenBatchNorm2d if norm == "frozen_bn" else nn.BatchNorm2d
    net = torchvision.models.get_model(backbone, weights=None, norm_layer=norm_layer)
    if in_chans != 3:
        net.conv1 = nn.Conv2d(in_chans, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return net


def guess_resnet(keys: set[str]) -> str | None:
    """The torchvision ResNet whose block layout the state-dict ``keys`` have (None: none fits)."""
    kind = "bottleneck" if any(k.endswith(".conv3.weight") for k in keys) else "basic"
    counts = tuple(len({k.split(".")[1] for k in keys if k.startswith(f"layer{s}.")}) for s in range(1, 5))
    for name, (k, c) in _BlockCounts.items():
        if (k, c) == (kind, counts):
            return name
    return None

def build_detector(
    model: DetectorSettings,
    num_classes: int,
    in_chans: int,
    image_mean: Sequence[float],
    image_std: Sequence[float],
    init: ResnetBodyInit | None = None,
) -> MaskRCNN:
    """torchvision ``MaskRCNN`` on a ResNet + FPN body, the body optionally initialised from ``init``.

    Args:
        model: backbone, trainable stages, normalisation, image size and anchors.
        num_classes: classes including the background.
        in_chans: input channels of the body (1 or 3); images must have that many channels.
        image_mean, image_std: per-channel normalisation of the [0, 1] images (``in_chans`` values).
        init: a validated encoder (:func:`medssl.models.encoder_io.read_resnet_body_init`), loaded into ``backbone.body`` before the
            stages outside ``trainable_layers`` are frozen.

    The model takes a list of (C, H, W) float images; see torchvision's ``MaskRCNN`` for its outputs.
    """
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor

    body = resnet_body(model.backbone, in_chans, model.norm)
    if init is not None:
        result = body.load_state_dict(init.state, strict=False)
        left = [k for k in result.missing_keys if not k.startswith("fc.")]
        if left or result.unexpected_keys:  # read_resnet_body_init checked this already
            raise RuntimeError(f"encoder load left keys missing {left} / unexpected {result.unexpected_keys}")
    trained = ["layer4", "layer3", "layer2", "layer1", "conv1"][: model.trainable_layers]
    if model.trainable_layers == 5:
        trained.append("bn1")
    for name, param in body.named_parameters():
        if not any(name.startswith(prefix) for prefix in trained):
            param.requires_grad_(False)
    stage_channels = [body.inplanes // 8 * 2**k for k in range(4)]  # C2..C5 widths (64.. or 256..)
    width = model.fpn_channels
    backbone = BackboneWithFPN(body, {f"layer{k + 1}": str(k) for k in range(4)}, stage_channels, width)
    anchors = AnchorGenerator(sizes=tuple((int(s),) for s in model.anchor_sizes),
                              aspect_ratios=((0.5, 1.0, 2.0),) * len(model.anchor_sizes))
    return MaskRCNN(
        backbone, num_classes=None, min_size=model.min_size, max_size=model.max_size,
        image_mean=list(image_mean), image_std=list(image_std), rpn_anchor_generator=anchors,
        box_head=TwoMLPHead(width * 7 * 7, model.box_head_dim),
        box_predictor=FastRCNNPredictor(model.box_head_dim, num_classes),
        mask_head=MaskRCNNHeads(width, (width,) * 4, 1),
        mask_predictor=MaskRCNNPredictor(width, width, num_classes),
        box_detections_per_img=model.detections_per_image,
        rpn_pre_nms_top_n_train=model.rpn_proposals_train, rpn_post_nms_top_n_train=model.rpn_proposals_train,
        rpn_pre_nms_top_n_test=model.rpn_proposals_test, rpn_post_nms_top_n_test=model.rpn_proposals_test,
        box_batch_size_per_image=model.roi_batch_size)
