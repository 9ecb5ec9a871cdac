"""Detection and instance segmentation: Mask R-CNN on a (pretrained) ResNet + FPN, COCO BoxAP / MaskAP.

The Python API behind ``medssl finetune detect``::

    from medssl.config import load_config
    from medssl.engine.detect import DetectConfig, train_detector

    cfg = load_config(DetectConfig, "configs/finetune/detect_brain2d_r18.yaml",
                      base={"runtime": {"name": "det"}, "data": {"root": "data/brain2d"}},
                      overrides=["init=runs/pretrain/encoder.pt"])
    result = train_detector(cfg)     # runs/det/: results.json, results.md, figures/, checkpoints/

Model: torchvision's ``MaskRCNN`` on a torchvision ResNet body (``resnet18`` ... ``resnet101``) with an
FPN (levels P2-P6). An exported medssl encoder (a timm / torchvision ResNet state dict: ``conv1``,
``bn1``, ``layer1`` ... ``layer4``, no ``fc``; plain or ``{"encoder": state_dict}``) is loaded into the
body with a strict key and shape check; only ``fc.*`` may be absent. A 1-channel encoder (``conv1.weight``
of shape (64, 1, 7, 7)) gets a 1-channel body and sees the grayscale images as they are; otherwise images
are replicated to 3 channels. Without an encoder the body starts from random weights (scratch).

Data: a COCO instances JSON whose ``file_name`` entries are relative to ``data.root`` or to
``<root>/images`` (the embedded ``brain2d`` / ``chest2d`` sets write ``<root>/annotations.json`` with
``train.list`` / ``test.list``; the usual public layout is ``<root>/images/`` +
``<root>/annotations/instances*.json``).
Training images: ``data.train_split`` (default ``<root>/train.list`` when it exists, else every image of the
JSON). Validation images: ``data.val_split`` (default: every image of ``data.val_annotations`` when given,
else ``<root>/test.list`` when it exists, else none); for the embedded sets the validation images are
therefore their test split. List entries name images by file name without folder and extension
(``case_0003`` for ``images/case_0003.png``).

Schedule: SGD (momentum 0.9, weight decay 1e-4) with a linear warm-up and step decay at given epochs (the
mmdet "1x" schedule of the reference: 12 epochs, x0.1 at epochs 8 and 11, 500 warm-up iterations, lr 0.02
for 16 images per step). ``optim.lr`` is the rate for ``optim.lr_batch_size`` images per step and is scaled
linearly to the actual total batch (``data.batch_size`` x processes). An epoch is
``len(train) // total batch`` iterations (each epoch visits the images in a fresh seeded order).

Batches are a pure function of (seed, iteration, rank) and every other random number is checkpointed, so a
resumed run reproduces an uninterrupted one exactly on CPU. The run reports COCO BoxAP / MaskAP (AP, AP50,
AP75) of the final model on the validation images and of the checkpoint that scored best during training
("best (selected on validation)": chosen on the same images, hence optimistic).
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from pydantic import Field, field_validator, model_validator
from torch import Tensor, nn

from medssl.config import MedsslConfig, RuntimeConfig
from medssl.data.layouts import CocoDataset, CocoSample, find_coco_annotations, strip_suffix
from medssl.engine.loop import LoopResult, LoopSpec, PeriodicTask, train_iterations
from medssl.errors import MedsslInputError
from medssl.metrics.detection import DETECTION_KEYS, SIZE_KEYS, coco_detections, coco_metrics
from medssl.runtime.atomic import write_json_atomic, write_text_atomic
from medssl.runtime.rundir import PrepareMode

if TYPE_CHECKING:
    from torchvision.models.detection import MaskRCNN

__all__ = [
    "BACKBONES",
    "DetectConfig",
    "DetectData",
    "DetectDataConfig",
    "DetectModelConfig",
    "DetectOptimConfig",
    "DetectResult",
    "DetectSplit",
    "EncoderInit",
    "SampleStore",
    "build_detect_batch_fn",
    "build_detector",
    "detection_overlay",
    "evaluate_detector",
    "image_tensor",
    "lr_multiplier",
    "open_detect_data",
    "predict_images",
    "read_encoder_init",
    "read_results",
    "train_detector",
]

#: ResNet bodies torchvision builds with an FPN.
BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101")
_BlockCounts = {"resnet18": ("basic", (2, 2, 2, 2)), "resnet34": ("basic", (3, 4, 6, 3)),
                "resnet50": ("bottleneck", (3, 4, 6, 3)), "resnet101": ("bottleneck", (3, 4, 23, 3))}


# ----------------------------------------------------------------------------------------- config
class DetectDataConfig(MedsslConfig):
    """Where the COCO data is and which images train and validate (see the module docstring)."""

    root: Path = Field(description="Dataset root: COCO file_name entries are relative to it or to <root>/images.")
    annotations: Path | None = Field(None, description="COCO instances JSON (default <root>/annotations.json, "
                                     "else the one <root>/annotations/instances*.json).")
    train_split: str | None = Field(None, description="Training images: a list name (<root>/<name>.list), a "
                                    "list file, or 'all' (default: train.list if present, else all).")
    val_annotations: Path | None = Field(None, description="Separate COCO JSON of the validation images.")
    val_root: Path | None = Field(None, description="Image root of val_annotations (default: root).")
    val_split: str | None = Field(None, description="Validation images: a list name or file, 'all' or 'none' "
                                  "(default: all of val_annotations, else test.list if present, else none).")
    merge_categories: bool = Field(False, description="One category for every object (class-agnostic, like "
                                   "the one-class Br35H protocol).")
    batch_size: int = Field(2, ge=1, description="Images per step and process.")
    hflip: float = Field(0.5, ge=0, le=1, description="Probability of a horizontal flip in training.")
    cache: bool = Field(True, description="Keep decoded images and masks in memory.")


class DetectModelConfig(MedsslConfig):
    """Mask R-CNN on a ResNet + FPN (torchvision)."""

    backbone: Literal["resnet18", "resnet34", "resnet50", "resnet101"] = "resnet50"
    trainable_layers: int = Field(3, ge=0, le=5, description="ResNet stages trained, counted from layer4 "
                                  "(3: layer2-4, the stem and layer1 stay frozen as in the reference; 5: all).")
    norm: Literal["frozen_bn", "bn"] = Field("frozen_bn", description="frozen_bn: batch norm with fixed "
                                             "statistics and affine (torchvision / mmdet default); bn: trained "
                                             "BatchNorm2d with batch statistics (for scratch training).")
    in_chans: Literal[1, 3] | None = Field(None, description="Input channels of the body (default: those of "
                                           "the init's conv1, 3 without an init: grayscale replicated).")
    min_size: int = Field(800, ge=16, description="Images are resized so the short side is min_size ...")
    max_size: int = Field(1333, ge=16, description="... unless the long side would exceed max_size (pixels).")
    anchor_sizes: tuple[int, int, int, int, int] = Field((32, 64, 128, 256, 512), description="RPN anchor "
                                                         "size (pixels) of FPN levels P2-P6.")
    image_mean: list[float] | None = Field(None, description="Per-channel mean of the [0, 1] images "
                                           "(default: measured on the training images).")
    image_std: list[float] | None = Field(None, description="Per-channel std (default: measured).")
    detections_per_image: int = Field(100, ge=1)
    rpn_proposals_train: int = Field(2000, ge=1, description="RPN proposals kept per image in training.")
    rpn_proposals_test: int = Field(1000, ge=1, description="RPN proposals kept per image at inference.")
    roi_batch_size: int = Field(512, ge=1, description="RoIs sampled per image for the box head in training.")
    fpn_channels: int = Field(256, ge=8, description="FPN width, also the width of the mask head's convolutions "
                              "(256 in the reference; smaller = faster on CPU).")
    box_head_dim: int = Field(1024, ge=8, description="Width of the box head's two fully connected layers.")

    @model_validator(mode="after")
    def _check_size(self) -> DetectModelConfig:
        if self.max_size < self.min_size:
            raise ValueError(f"max_size ({self.max_size}) must be >= min_size ({self.min_size})")
        return self


class DetectOptimConfig(MedsslConfig):
    """SGD with linear warm-up and step decay at epochs (the mmdet 1x schedule by default)."""

    lr: float = Field(0.02, gt=0, description="Learning rate for lr_batch_size images per step.")
    lr_batch_size: int = Field(16, ge=1, description="Total batch that lr refers to (linear scaling).")
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(1e-4, ge=0)
    warmup_iterations: int = Field(500, ge=0)
    warmup_ratio: float = Field(0.001, gt=0, le=1, description="lr factor at the first warm-up iteration.")
    decay_epochs: list[float] = Field(default_factory=lambda: [8.0, 11.0],
                                      description="Epochs at which the lr is multiplied by gamma.")
    gamma: float = Field(0.1, gt=0, le=1)
    grad_clip: float | None = Field(None, gt=0)

    @field_validator("decay_epochs")
    @classmethod
    def _sorted(cls, value: list[float]) -> list[float]:
        if any(v <= 0 for v in value) or list(value) != sorted(value):
            raise ValueError(f"expected increasing positive epochs, got {value}")
        return value


class DetectConfig(MedsslConfig):
    """Everything ``medssl finetune detect`` needs; presets live in ``configs/finetune/detect_*.yaml``."""

    runtime: RuntimeConfig
    data: DetectDataConfig
    model: DetectModelConfig = Field(default_factory=DetectModelConfig)
    optim: DetectOptimConfig = Field(default_factory=DetectOptimConfig)
    init: Path | None = Field(None, description="Exported 2D encoder (.pt); None trains from scratch.")
    epochs: float = Field(12, gt=0, description="Training length in epochs (see max_iterations).")
    max_iterations: int | None = Field(None, ge=1, description="Training length in iterations (overrides epochs).")
    validate_every: int | None = Field(None, ge=0, description="Iterations between validations "
                                       "(None: once per epoch, 0: never).")
    select_metric: Literal["box_ap", "mask_ap"] = Field("mask_ap", description="Metric that selects best.pt.")
    evaluate_after: bool = Field(True, description="Evaluate the final (and best) model on the validation images.")
    figures: int = Field(4, ge=0, description="Validation images drawn with predictions in figures/.")
    figure_score: float = Field(0.5, ge=0, le=1, description="Detections drawn from this score up.")


@dataclass
class DetectResult:
    """A finished detection run (``final`` / ``best``: validation metrics, None when not evaluated)."""

    run_dir: Path
    loop: LoopResult
    final: dict[str, float] | None
    best: dict[str, float] | None
    best_iteration: int | None
    init_report: dict[str, Any] | None
    files: dict[str, Path] = field(default_factory=dict)
    global_rank: int = 0


# ------------------------------------------------------------------------------------------- data
@dataclass
class DetectSplit:
    """Images of one COCO dataset taking part in training or validation."""

    dataset: CocoDataset
    indices: list[int]
    source: str

    def case_id(self, i: int) -> str:
        return strip_suffix(Path(str(self.dataset.images[i]["file_name"]).replace("\\", "/")).name)


@dataclass
class DetectData:
    """The opened training and validation images and the category <-> model label mapping.

    Attributes:
        train, val: the splits (``val`` None without validation images).
        category_ids: the COCO category ids evaluated (one per model class, in label order 1..K).
        category_names: their names.
        label_of: COCO category id -> model label in 1..K (background is 0).
    """

    train: DetectSplit
    val: DetectSplit | None
    category_ids: list[int]
    category_names: list[str]
    label_of: dict[int, int]

    @property
    def num_classes(self) -> int:
        """Model classes including the background."""
        return len(self.category_ids) + 1


def _list_path(root: Path, value: str) -> Path:
    candidate = Path(value)
    if candidate.suffix or "/" in value or "\\" in value:
        return candidate
    return root / f"{value}.list"


def _select(dataset: CocoDataset, root: Path, value: str | None, default_name: str | None,
            what: str) -> tuple[list[int], str] | None:
    """Indices of ``dataset`` chosen by a split value; None for 'none' (or no default list)."""
    from medssl.data.la import read_split

    if value is not None and value.lower() == "none":
        return None
    if value is not None and value.lower() == "all":
        return list(range(len(dataset))), f"all images of {dataset.annotation_json}"
    if value is None:
        default = root / f"{default_name}.list" if default_name else None
        if default is None or not default.is_file():
            return (list(range(len(dataset))), f"all images of {dataset.annotation_json}") if what == "train" else None
        path = default
    else:
        path = _list_path(root, value)
        if not path.is_file():
            raise MedsslInputError(path, f"{what} split list not found")
    index: dict[str, int] = {}
    for i, info in enumerate(dataset.images):
        index.setdefault(strip_suffix(Path(str(info["file_name"]).replace("\\", "/")).name), i)
    wanted = [strip_suffix(c) for c in read_split(path)]
    missing = [c for c in wanted if c not in index]
    if missing:
        raise MedsslInputError(path, f"names {len(missing)} image(s) absent from {dataset.annotation_json}: "
                               f"{', '.join(missing[:5])}")
    return [index[c] for c in wanted], str(path)


def open_detect_data(cfg: DetectDataConfig) -> DetectData:
    """Open and validate the COCO data of ``cfg`` and choose the training / validation images.

    Raises:
        MedsslInputError: a missing or malformed JSON, a referenced image that does not exist, an unknown
            split list or list entry, or no training image.
    """
    root = Path(cfg.root)
    annotations = Path(cfg.annotations) if cfg.annotations is not None else find_coco_annotations(root)
    train_ds = CocoDataset(root, annotations)
    chosen = _select(train_ds, root, cfg.train_split, "train", "train")
    if chosen is None or not chosen[0]:
        raise MedsslInputError(annotations, "no training image selected (data.train_split)")
    train = DetectSplit(train_ds, chosen[0], chosen[1])
    val: DetectSplit | None = None
    if cfg.val_annotations is not None:
        val_ds = CocoDataset(Path(cfg.val_root) if cfg.val_root is not None else root, cfg.val_annotations)
        picked = _select(val_ds, root, cfg.val_split or "all", None, "validation")
    else:
        val_ds = train_ds
        picked = _select(val_ds, root, cfg.val_split, "test", "validation")
    if picked is not None and picked[0]:
        val = DetectSplit(val_ds, picked[0], picked[1])
    categories = train_ds.categories
    if val is not None and val.dataset is not train_ds:
        if {int(c["id"]) for c in val.dataset.categories} != {int(c["id"]) for c in categories}:
            raise MedsslInputError(cfg.val_annotations, "validation categories differ from the training categories "
                                   f"of {annotations}")
    if not categories:
        raise MedsslInputError(annotations, "no categories")
    ids = [int(c["id"]) for c in categories]
    names = [str(c.get("name", c["id"])) for c in categories]
    if cfg.merge_categories:
        return DetectData(train, val, [ids[0]], ["finding"], {c: 1 for c in ids})
    return DetectData(train, val, ids, names, {c: k + 1 for k, c in enumerate(ids)})


def image_tensor(image: np.ndarray, in_chans: int) -> Tensor:
    """A (C, H, W) float32 tensor in [0, 1] from a (H, W) or (H, W, C) image array.

    uint8 images are divided by 255, other types are scaled by their own minimum and maximum. Colour
    images become gray (channel mean) for a 1-channel body; gray images are replicated for 3 channels.
    """
    arr = np.asarray(image)
    if arr.dtype == np.uint8:
        x = arr.astype(np.float32) / 255.0
    else:
        x = arr.astype(np.float32)
        lo, hi = float(x.min()), float(x.max())
        x = (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)
    if x.ndim == 3:
        x = x[..., :3]
        x = x.mean(axis=-1) if in_chans == 1 or x.shape[-1] != 3 else x
    t = torch.from_numpy(np.ascontiguousarray(x))
    t = t[None] if t.ndim == 2 else t.permute(2, 0, 1)
    if t.shape[0] != in_chans:
        t = t.expand(in_chans, -1, -1)
    return t.contiguous()


def _target(sample: CocoSample, label_of: Mapping[int, int], source: Path) -> dict[str, Tensor]:
    """Training target of one image: boxes (N, 4) xyxy pixels, labels (N,) in 1..K, masks (N, H, W) uint8.

    Crowd annotations are left out (as in torchvision's COCO training); an object without a mask is an error.
    """
    keep = ~sample.iscrowd
    n = int(keep.sum())
    h, w = sample.image.shape[:2]
    if n and sample.masks is None:
        raise MedsslInputError(source, f"image {sample.file_name}: Mask R-CNN needs a segmentation for every "
                               "annotation (polygon or RLE)")
    masks = sample.masks[keep] if sample.masks is not None else np.zeros((0, h, w), np.uint8)
    return {"boxes": torch.from_numpy(sample.boxes[keep].astype(np.float32)).reshape(-1, 4),
            "labels": torch.tensor([label_of[int(c)] for c in sample.category_ids[keep]], dtype=torch.int64),
            "masks": torch.from_numpy(np.ascontiguousarray(masks, dtype=np.uint8))}


class SampleStore:
    """Decoded (image tensor, target) pairs of one split, kept in memory when ``cache``."""

    def __init__(self, split: DetectSplit, label_of: Mapping[int, int], in_chans: int, cache: bool) -> None:
        self.split, self.label_of, self.in_chans, self.cache = split, label_of, in_chans, cache
        self._items: dict[int, tuple[Tensor, dict[str, Tensor], CocoSample]] = {}

    def get(self, i: int) -> tuple[Tensor, dict[str, Tensor], CocoSample]:
        """Image (C, H, W), training target and the raw sample of dataset index ``i``."""
        item = self._items.get(i)
        if item is None:
            with warnings.catch_warnings():  # pycocotools' decoder trips a numpy-2 deprecation notice
                warnings.simplefilter("ignore", DeprecationWarning)
                sample = self.split.dataset[i]
            item = (image_tensor(sample.image, self.in_chans),
                    _target(sample, self.label_of, self.split.dataset.annotation_json), sample)
            if self.cache:
                self._items[i] = item
        return item


def _mean_std(store: SampleStore, indices: Sequence[int], max_images: int = 256) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of up to ``max_images`` evenly spaced training images ([0, 1] scale)."""
    picks = sorted({indices[int(k)] for k in np.linspace(0, len(indices) - 1, min(len(indices), max_images))})
    total = np.zeros(store.in_chans)
    total_sq = np.zeros(store.in_chans)
    count = 0
    for i in picks:
        x = store.get(i)[0].double()
        total += x.sum(dim=(1, 2)).numpy()
        total_sq += (x * x).sum(dim=(1, 2)).numpy()
        count += x.shape[1] * x.shape[2]
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))
    return [round(float(v), 6) for v in mean], [round(max(float(v), 1e-3), 6) for v in std]


def build_detect_batch_fn(
    store: SampleStore,
    train_indices: Sequence[int],
    batch_size: int,
    hflip: float,
    seed: int,
    device: torch.device,
    rank: int = 0,
    world_size: int = 1,
) -> Callable[[int], tuple[list[Tensor], list[dict[str, Tensor]]]]:
    """``batch_fn(iteration) -> (images, targets)``: a pure function of (seed, iteration, rank).

    Each epoch visits the training images in a fresh seeded order (the last ``len % total batch`` of an
    epoch's order are left out); each image is flipped horizontally with probability ``hflip`` by its own
    generator (:func:`medssl.data.samplers.sample_seed`). Images are (C, H, W) float32 in [0, 1]; targets
    hold ``boxes`` (N, 4) xyxy pixels, ``labels`` (N,) and ``masks`` (N, H, W) uint8.
    """
    from medssl.data.samplers import TwoStreamBatchSampler, sample_seed

    sampler = TwoStreamBatchSampler(list(train_indices), [], batch_size, 0, seed=seed, rank=rank,
                                    world_size=world_size)

    def batch_fn(iteration: int) -> tuple[list[Tensor], list[dict[str, Tensor]]]:
        images, targets = [], []
        for pos, idx in enumerate(sampler.batch(iteration)):
            image, target, _ = store.get(idx)
            rng = np.random.default_rng(sample_seed(seed, iteration, pos, rank))
            if hflip > 0 and rng.random() < hflip:
                width = image.shape[-1]
                boxes = target["boxes"].clone()
                boxes[:, [0, 2]] = width - target["boxes"][:, [2, 0]]
                image = image.flip(-1)
                target = {"boxes": boxes, "labels": target["labels"], "masks": target["masks"].flip(-1)}
            images.append(image.to(device))
            targets.append({k: v.to(device) for k, v in target.items()})
        return images, targets

    return batch_fn


# ------------------------------------------------------------------------------------------ model
@dataclass
class EncoderInit:
    """A validated exported encoder: its state dict, input channels and the load report."""

    path: Path
    state: dict[str, Tensor]
    in_chans: int
    report: dict[str, Any]


def _resnet(backbone: str, in_chans: int, norm: str) -> nn.Module:
    import torchvision
    from torchvision.ops import FrozenBatchNorm2d

    norm_layer = FrozenBatchNorm2d if norm == "frozen_bn" else nn.BatchNorm2d
    net = torchvision.models.get_model(backbone, weights=None, norm_layer=norm_layer)
    if in_chans != 3:
        net.conv1 = nn.Conv2d(in_chans, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return net


def _guess_resnet(keys: set[str]) -> str | None:
    kind = "bottleneck" if any(k.endswith(".conv3.weight") for k in keys) else "basic"
    counts = tuple(len({k.split(".")[1] for k in keys if k.startswith(f"layer{s}.")}) for s in range(1, 5))
    for name, (k, c) in _BlockCounts.items():
        if (k, c) == (kind, counts):
            return name
    return None


def read_encoder_init(path: str | Path, backbone: str, in_chans: int | None = None) -> EncoderInit:
    """Read an exported 2D encoder and check it fits the ``backbone`` body exactly.

    The file holds a ResNet state dict (timm / torchvision key names) or ``{"encoder": state_dict}``. Every
    body tensor must be present with the body's shape; only ``fc.*`` may be absent and no other key may be
    left over. The body's input channels follow ``conv1.weight`` (1 or 3).

    Raises:
        MedsslInputError: one line naming the file: unreadable, not a state dict, or keys / shapes that do
            not fit ``backbone`` (with a hint at the architecture the file seems to hold).
    """
    from medssl.models.classifier import read_encoder_state
    from medssl.models.state_check import state_mismatches

    path = Path(path)
    state, _ = read_encoder_state(path)
    conv1 = state.get("conv1.weight")
    if conv1 is None or conv1.ndim != 4:
        raise MedsslInputError(path, f"not a ResNet encoder state dict (no 4D conv1.weight among {len(state)} tensors)")
    file_chans = int(conv1.shape[1])
    if file_chans not in (1, 3):
        raise MedsslInputError(path, f"conv1 takes {file_chans} input channels; medssl detection supports 1 or 3")
    if in_chans is not None and in_chans != file_chans:
        raise MedsslInputError(path, f"the encoder takes {file_chans} input channel(s) but model.in_chans is {in_chans}")
    expected = _resnet(backbone, file_chans, "bn").state_dict()
    parts = state_mismatches(expected, state, optional_prefix="fc.")
    if parts:
        guess = _guess_resnet(set(state))
        hint = f"; the file looks like a {guess} encoder" if guess and guess != backbone else ""
        raise MedsslInputError(path, f"encoder weights do not fit a {backbone} body: {'; '.join(parts)}{hint}")
    absent = [k for k in expected if k not in state]
    report = {"path": str(path), "backbone": backbone, "in_chans": file_chans,
              "loaded": sum(1 for k in expected if k in state), "missing": absent, "unexpected": []}
    return EncoderInit(path=path, state={k: state[k] for k in expected if k in state}, in_chans=file_chans,
                       report=report)


def build_detector(
    model: DetectModelConfig,
    num_classes: int,
    in_chans: int,
    image_mean: Sequence[float],
    image_std: Sequence[float],
    init: EncoderInit | None = None,
) -> MaskRCNN:
    """torchvision ``MaskRCNN`` on a ResNet + FPN body, the body optionally initialised from ``init``.

    Args:
        model: backbone, trainable stages, normalisation, image size and anchors.
        num_classes: classes including the background.
        in_chans: input channels of the body (1 or 3); images must have that many channels.
        image_mean, image_std: per-channel normalisation of the [0, 1] images (``in_chans`` values).
        init: a validated encoder (:func:`read_encoder_init`), loaded into ``backbone.body`` before the
            stages outside ``trainable_layers`` are frozen.

    The model takes a list of (C, H, W) float images; see torchvision's ``MaskRCNN`` for its outputs.
    """
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor

    body = _resnet(model.backbone, in_chans, model.norm)
    if init is not None:
        result = body.load_state_dict(init.state, strict=False)
        left = [k for k in result.missing_keys if not k.startswith("fc.")]
        if left or result.unexpected_keys:  # read_encoder_init checked this already
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


# ------------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def predict_images(net: nn.Module, images: Sequence[Tensor], device: torch.device | str,
                   batch_size: int = 2) -> list[dict[str, np.ndarray]]:
    """Detections of ``net`` (eval mode) on (C, H, W) images: per image ``boxes`` (M, 4) xyxy pixels,
    ``scores`` (M,), ``labels`` (M,) model labels, ``masks`` (M, H, W) float32 probabilities."""
    was_training = net.training
    net.eval()
    out: list[dict[str, np.ndarray]] = []
    try:
        for start in range(0, len(images), batch_size):
            chunk = [im.to(device) for im in images[start : start + batch_size]]
            for det in net(chunk):
                out.append({"boxes": det["boxes"].float().cpu().numpy(), "scores": det["scores"].float().cpu().numpy(),
                            "labels": det["labels"].cpu().numpy(),
                            "masks": det["masks"][:, 0].float().cpu().numpy()})
    finally:
        net.train(was_training)
    return out


def _ground_truth(sample: CocoSample, label_of: Mapping[int, int], category_ids: Sequence[int]) -> dict[str, Any]:
    h, w = sample.image.shape[:2]
    cats = np.array([category_ids[label_of[int(c)] - 1] for c in sample.category_ids], dtype=np.int64)
    masks = sample.masks if sample.masks is not None else None
    return {"boxes": sample.boxes, "labels": cats, "masks": masks, "iscrowd": sample.iscrowd, "size": (h, w)}


def evaluate_detector(
    net: nn.Module,
    store: SampleStore,
    indices: Sequence[int],
    category_ids: Sequence[int],
    device: torch.device | str,
    batch_size: int = 2,
) -> tuple[dict[str, float], list[dict[str, np.ndarray]], list[dict[str, Any]]]:
    """COCO metrics of ``net`` on the images ``indices`` of ``store``.

    Returns:
        (metrics of :func:`medssl.metrics.detection.coco_metrics`, predictions with COCO category ids as
        labels, ground truth), one entry per image in ``indices`` order.
    """
    preds: list[dict[str, np.ndarray]] = []
    gts: list[dict[str, Any]] = []
    for start in range(0, len(indices), batch_size):
        chunk = indices[start : start + batch_size]
        items = [store.get(i) for i in chunk]
        for (_, _, sample), det in zip(items, predict_images(net, [it[0] for it in items], device, batch_size),
                                       strict=True):
            det["labels"] = np.array([category_ids[int(lab) - 1] for lab in det["labels"]], dtype=np.int64)
            preds.append(det)
            gts.append(_ground_truth(sample, store.label_of, category_ids))
    return coco_metrics(preds, gts, category_ids=category_ids), preds, gts


def detection_overlay(
    image: np.ndarray,
    prediction: Mapping[str, Any],
    ground_truth: Mapping[str, Any] | None,
    out: str | Path,
    score_threshold: float = 0.5,
    title: str | None = None,
    names: Mapping[int, str] | None = None,
) -> Path:
    """Write a PNG of a (H, W) or (H, W, 3) image with predicted masks (filled) and boxes (dashed, with
    scores) from ``score_threshold`` up, and ground-truth outlines (solid contours and boxes).

    Args:
        prediction: ``boxes`` (M, 4) xyxy pixels, ``scores`` (M,), ``labels`` (M,), ``masks`` (M, H, W).
        ground_truth: ``boxes`` (N, 4) and ``masks`` (N, H, W) or None; ``labels`` name the objects.
        names: category id -> name for the labels drawn.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Rectangle

    from medssl.runtime.atomic import atomic_path
    from medssl.viz import GT_COLOUR, PRED_COLOUR

    img = np.asarray(image, dtype=np.float32)
    if img.ndim == 3:
        img = img[..., :3].mean(axis=-1)
    lo, hi = np.percentile(img, [1, 99]) if img.size else (0.0, 1.0)
    hi = hi if hi > lo else lo + 1.0
    h, w = img.shape
    fig = Figure(figsize=(4.2, 4.2 * h / w + 0.5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.0, 0.08, 1.0, 0.84))
    ax.imshow(img, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
    keep = np.asarray(prediction["scores"]) >= score_threshold
    rgba = np.zeros((h, w, 4), np.float32)
    colour = np.array([int(PRED_COLOUR[i : i + 2], 16) / 255 for i in (1, 3, 5)], np.float32)
    for k in np.flatnonzero(keep):
        if prediction.get("masks") is not None:
            m = np.asarray(prediction["masks"][k]) >= 0.5
            rgba[m, :3] = colour
            rgba[m, 3] = 0.45
        x0, y0, x1, y1 = (float(v) for v in prediction["boxes"][k])
        ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, ec=PRED_COLOUR, lw=1.2, ls="--"))
        label = int(prediction["labels"][k])
        text = f"{names.get(label, label) if names else label} {float(prediction['scores'][k]):.2f}"
        ax.text(x0 - 0.5, y0 - 1.5, text, color=PRED_COLOUR, fontsize=7, va="bottom",
                bbox={"facecolor": "black", "alpha": 0.6, "pad": 0.8, "linewidth": 0})
    ax.imshow(rgba, interpolation="nearest")
    if ground_truth is not None:
        gt_masks = ground_truth.get("masks")
        for k, box in enumerate(np.asarray(ground_truth["boxes"]).reshape(-1, 4)):
            if gt_masks is not None and np.asarray(gt_masks[k]).any():
                ax.contour(np.asarray(gt_masks[k], np.float32), levels=[0.5], colors=[GT_COLOUR], linewidths=1.0)
            x0, y0, x1, y1 = (float(v) for v in box)
            ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, ec=GT_COLOUR, lw=0.8))
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)
    ax.set_axis_off()
    handles = [Line2D([], [], color=GT_COLOUR, lw=2, label="ground truth"),
               Line2D([], [], color=PRED_COLOUR, lw=2, ls="--", label=f"prediction (score >= {score_threshold:g})")]
    fig.legend(handles=handles, loc="lower center", ncol=2, frameon=False, fontsize=7)
    if title:
        fig.suptitle(title, fontsize=8, y=0.985)
    out = Path(out)
    with atomic_path(out, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", facecolor="white")
    return out


# --------------------------------------------------------------------------------------- training
def lr_multiplier(optim: DetectOptimConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """``f(iteration)``: linear warm-up from ``warmup_ratio`` to 1 over ``warmup_iterations``, times
    ``gamma`` per decay epoch reached (decay iterations: ``round(epoch * steps_per_epoch)``)."""
    milestones = [round(e * steps_per_epoch) for e in optim.decay_epochs]
    warm, ratio, gamma = optim.warmup_iterations, optim.warmup_ratio, optim.gamma

    def factor(iteration: int) -> float:
        f = ratio + (1.0 - ratio) * iteration / warm if warm and iteration < warm else 1.0
        return f * gamma ** sum(iteration >= m for m in milestones)

    return factor


def _figure_indices(split: DetectSplit, count: int) -> list[int]:
    """Up to ``count`` validation images, those with objects first (in validation order)."""
    with_objects = [i for i in split.indices if split.dataset.annotations(i)]
    others = [i for i in split.indices if not split.dataset.annotations(i)]
    return (with_objects + others)[:count]


def _fmt(value: float | None) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{100 * value:.1f}"


def _json_metrics(metrics: Mapping[str, float] | None) -> dict[str, float | None] | None:
    if metrics is None:
        return None
    return {k: (float(v) if math.isfinite(float(v)) else None) for k, v in metrics.items()}


def _results_markdown(cfg: DetectConfig, summary: Mapping[str, Any]) -> str:
    init = summary["init"]["path"] if summary["init"] else "none (trained from scratch)"
    lines = [f"# Mask R-CNN fine-tuning: {cfg.runtime.name}", "",
             f"- model: Mask R-CNN {cfg.model.backbone}-FPN, {summary['in_chans']} input channel(s), "
             f"norm {cfg.model.norm}, trainable stages {cfg.model.trainable_layers}",
             f"- encoder init: {init}",
             f"- training: {summary['iterations']} iterations ({summary['epochs']:.2f} epochs of "
             f"{summary['train_images']} images), lr {summary['lr']:g} for a batch of {summary['total_batch']}",
             f"- validation: {summary['val_images']} images ({summary['val_source']})", ""]
    rows = []
    if summary.get("final") is not None:
        rows.append((f"final (iteration {summary['final']['iteration']})", summary["final"]["metrics"]))
    if summary.get("best") is not None:
        rows.append((f"best (selected on validation by {cfg.select_metric}, iteration "
                     f"{summary['best']['iteration']})", summary["best"]["metrics"]))
    if not rows:
        lines.append("No validation metrics (no validation images or evaluation turned off).")
        return "\n".join(lines) + "\n"
    lines += ["COCO AP in percent (IoU 0.50:0.95; AP50 / AP75 at IoU 0.50 / 0.75).", "",
              "| model | BoxAP | BoxAP50 | BoxAP75 | MaskAP | MaskAP50 | MaskAP75 |",
              "|---|---|---|---|---|---|---|"]
    for name, m in rows:
        lines.append(f"| {name} | " + " | ".join(_fmt(m.get(k)) for k in DETECTION_KEYS) + " |")
    if summary.get("best") is not None:
        lines += ["", "The best checkpoint is chosen on the validation images it is scored on, so its numbers "
                  "are optimistic; the final model is the unbiased result."]
    return "\n".join(lines) + "\n"


def _manifest_init(path: Path) -> dict[str, Any] | None:
    """The encoder report recorded when the run started (a resumed run may no longer have the file)."""
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("extra", {}).get("init")
    except (OSError, ValueError, AttributeError):
        return None


def _resolved_normalisation(cfg: DetectConfig, store: SampleStore, train_indices: Sequence[int],
                            in_chans: int) -> DetectConfig:
    mean, std = cfg.model.image_mean, cfg.model.image_std
    if mean is None or std is None:
        m, s = _mean_std(store, train_indices)
        mean, std = mean or m, std or s
    for name, values in (("model.image_mean", mean), ("model.image_std", std)):
        if len(values) != in_chans:
            raise MedsslInputError(name, f"expected {in_chans} value(s) (one per input channel), got {values}")
    if any(v <= 0 for v in std):
        raise MedsslInputError("model.image_std", f"values must be > 0, got {std}")
    return cfg.model_copy(update={"model": cfg.model.model_copy(update={"image_mean": mean, "image_std": std})})


def train_detector(
    cfg: DetectConfig,
    mode: PrepareMode = "new",
    *,
    command: Sequence[str] | None = None,
) -> DetectResult:
    """Fine-tune Mask R-CNN and report COCO BoxAP / MaskAP on the validation images.

    Everything a user can get wrong (data, split lists, the encoder file, normalisation values) is
    checked before the run directory is created, so a failed start writes nothing.

    Args:
        cfg: the configuration (``model.image_mean`` / ``image_std`` are measured when unset and saved
            in the run's ``config.yaml``).
        mode: ``"new"``, ``"resume"`` (continue a stopped run exactly) or ``"overwrite"``.
        command: the command line recorded in the manifest.

    Returns:
        the run directory, the loop result, final / best validation metrics and written files
        (``results.json``, ``results.md``, ``figures/val_<case>.png``, ``predictions/val_final.json``).
    """
    from medssl.runtime.session import start_run

    data = open_detect_data(cfg.data)
    init = None
    if cfg.init is not None and (mode != "resume" or Path(cfg.init).is_file()):  # resuming needs only the run
        init = read_encoder_init(cfg.init, cfg.model.backbone, cfg.model.in_chans)
    in_chans = init.in_chans if init is not None else (cfg.model.in_chans or 3)
    cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"in_chans": in_chans})})
    train_store = SampleStore(data.train, data.label_of, in_chans, cfg.data.cache)
    for i in data.train.indices[:1]:
        train_store.get(i)  # a first decode: unreadable images or masks fail before the run exists
    cfg = _resolved_normalisation(cfg, train_store, data.train.indices, in_chans)
    if cfg.data.batch_size > len(data.train.indices):
        raise MedsslInputError("data.batch_size", f"{cfg.data.batch_size} exceeds the {len(data.train.indices)} "
                               "training image(s)")
    extra = {"task": "detection", "train_images": len(data.train.indices),
             "val_images": len(data.val.indices) if data.val else 0,
             "train_source": data.train.source, "val_source": data.val.source if data.val else None,
             "categories": dict(zip(data.category_ids, data.category_names, strict=True)),
             "init": init.report if init else None}
    data_paths = [Path(cfg.data.root)] + [p for p in (cfg.data.annotations, cfg.data.val_annotations) if p is not None]
    session = start_run(cfg.runtime, cfg, mode, command=command, data_paths=data_paths, extra=extra)
    fabric, run = session.fabric, session.run
    world = fabric.world_size
    total_batch = cfg.data.batch_size * world
    if total_batch > len(data.train.indices):
        raise MedsslInputError("data.batch_size", f"{cfg.data.batch_size} x {world} process(es) exceeds the "
                               f"{len(data.train.indices)} training image(s)")
    steps_per_epoch = len(data.train.indices) // total_batch
    max_iterations = cfg.max_iterations or max(1, math.ceil(cfg.epochs * steps_per_epoch))

    net = build_detector(cfg.model, data.num_classes, in_chans, cfg.model.image_mean or [], cfg.model.image_std or [],
                         init)
    if init is not None and fabric.global_rank == 0 and not cfg.runtime.quiet:
        fabric.print(f"loaded {init.report['loaded']} encoder tensors into the {cfg.model.backbone} body from {init.path}")
    lr = cfg.optim.lr * total_batch / cfg.optim.lr_batch_size
    params = [p for p in net.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=lr, momentum=cfg.optim.momentum, weight_decay=cfg.optim.weight_decay)
    model, optimizer = fabric.setup(net, optimizer)
    batch_fn = build_detect_batch_fn(train_store, data.train.indices, cfg.data.batch_size, cfg.data.hflip,
                                     cfg.runtime.seed, fabric.device, fabric.global_rank, world)

    def step_fn(batch: tuple[list[Tensor], list[dict[str, Tensor]]], iteration: int) -> tuple[Tensor, dict[str, Tensor]]:
        images, targets = batch
        losses = model(images, targets)
        loss = sum(losses.values(), torch.zeros((), device=fabric.device))
        return loss, {k: v.detach() for k, v in losses.items()}

    val_store = SampleStore(data.val, data.label_of, in_chans, cfg.data.cache) if data.val else None
    periodic = []
    every = steps_per_epoch if cfg.validate_every is None else cfg.validate_every
    if val_store is not None and data.val is not None and every:
        val_indices = data.val.indices

        def validate(done: int) -> dict[str, float]:
            metrics, _, _ = evaluate_detector(net, val_store, val_indices, data.category_ids, fabric.device,
                                              cfg.data.batch_size)
            return {k: metrics[k] for k in DETECTION_KEYS}

        periodic.append(PeriodicTask(every, validate, phase="val"))
    spec = LoopSpec.from_runtime(cfg.runtime, max_iterations, grad_clip=cfg.optim.grad_clip,
                                 lr_schedule=lr_multiplier(cfg.optim, steps_per_epoch),
                                 best_metric=cfg.select_metric if periodic else None)
    loop = train_iterations(fabric, run, model, optimizer, batch_fn, step_fn, spec, periodic=periodic,
                            resume=session.resume, quiet=cfg.runtime.quiet)

    init_report = init.report if init is not None else _manifest_init(run.manifest_json) if cfg.init else None
    result = DetectResult(run_dir=run.root, loop=loop, final=None, best=None, best_iteration=loop.best_iteration,
                          init_report=init_report, global_rank=fabric.global_rank)
    if fabric.global_rank != 0:
        return result
    summary: dict[str, Any] = {
        "task": "detection", "model": f"Mask R-CNN {cfg.model.backbone}-FPN", "in_chans": in_chans,
        "init": init_report, "iterations": max_iterations, "steps_per_epoch": steps_per_epoch,
        "epochs": max_iterations / steps_per_epoch, "total_batch": total_batch, "lr": lr,
        "train_images": len(data.train.indices), "train_source": data.train.source,
        "val_images": len(data.val.indices) if data.val else 0, "val_source": data.val.source if data.val else None,
        "categories": [{"id": c, "name": n} for c, n in zip(data.category_ids, data.category_names, strict=True)],
        "image_mean": cfg.model.image_mean, "image_std": cfg.model.image_std, "final": None, "best": None,
        "figures": [], "predictions": None}
    if cfg.evaluate_after and val_store is not None and data.val is not None:
        metrics, preds, gts = evaluate_detector(net, val_store, data.val.indices, data.category_ids, fabric.device,
                                                cfg.data.batch_size)
        result.final = metrics
        summary["final"] = {"iteration": max_iterations, "checkpoint": "checkpoints/final.pt",
                            "metrics": _json_metrics(metrics)}
        image_ids = [int(data.val.dataset.images[i]["id"]) for i in data.val.indices]
        pred_path = run.predictions / "val_final.json"
        write_json_atomic(pred_path, coco_detections(preds, image_ids))
        result.files["predictions"] = pred_path
        summary["predictions"] = str(pred_path.relative_to(run.root))
        position = {idx: k for k, idx in enumerate(data.val.indices)}
        names = dict(zip(data.category_ids, data.category_names, strict=True))
        for idx in _figure_indices(data.val, cfg.figures):
            k = position[idx]
            case = data.val.case_id(idx)
            sample = val_store.get(idx)[2]
            kept = int((preds[k]["scores"] >= cfg.figure_score).sum())
            out = detection_overlay(sample.image, preds[k], gts[k], run.figures / f"val_{case}.png",
                                    score_threshold=cfg.figure_score, names=names,
                                    title=f"{case}: {len(gts[k]['boxes'])} object(s), {kept} detection(s), "
                                    f"final model")
            result.files[f"figure:{case}"] = out
            summary["figures"].append(str(out.relative_to(run.root)))
    if loop.best_iteration is not None:
        from medssl.runtime.metrics_log import read_metrics

        rows = [r for r in read_metrics(run.metrics_csv) if r["phase"] == "val" and r["iteration"] == loop.best_iteration]
        best = {k: float(rows[-1][k]) for k in DETECTION_KEYS if rows and k in rows[-1]}
        result.best = best or None
        summary["best"] = {"iteration": loop.best_iteration, "checkpoint": "checkpoints/best.pt",
                           "selected_on": "validation", "select_metric": cfg.select_metric,
                           "label": "best (selected on validation)", "metrics": _json_metrics(best)}
    summary["metric_keys"] = list(DETECTION_KEYS) + list(SIZE_KEYS)
    write_json_atomic(run.root / "results.json", summary)
    write_text_atomic(run.root / "results.md", _results_markdown(cfg, summary))
    result.files["results_json"] = run.root / "results.json"
    result.files["results_md"] = run.root / "results.md"
    return result


def read_results(run_dir: str | Path) -> dict[str, Any]:
    """The ``results.json`` of a detection run."""
    path = Path(run_dir) / "results.json"
    if not path.is_file():
        raise MedsslInputError(path, "no results.json (the run has not finished)")
    return json.loads(path.read_text(encoding="utf-8"))
