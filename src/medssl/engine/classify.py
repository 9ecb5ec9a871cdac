"""Fine-tuning a 2D image classifier (a timm backbone, optionally initialised from a pretrained encoder).

The Python API behind ``medssl finetune classify``::

    from medssl.config import load_config
    from medssl.engine.classify import ClassifyConfig, train_classifier

    cfg = load_config(ClassifyConfig, "configs/finetune/classify_brain2d_resnet18.yaml",
                      base={"runtime": {"name": "cls"}, "data": {"spec": "csv:data/brain2d/classes.csv"}})
    result = train_classifier(cfg)       # runs/cls/: metrics.csv, checkpoints/, results.json, results.md

Recipe (the reference fine-tuning recipe of SparK / Mask What Matters for ResNet-50 is the schema
default; ``configs/finetune/classify_reference.yaml`` spells it out):

* Optimiser LAMB (or AdamW); peak learning rate ``base_lr * global_batch / 256``; linear warm-up from
  ``warmup_start`` x peak, then cosine decay to ``final_lr_ratio`` x peak; weight decay on weights
  only (no decay on biases and other 1-D parameters).
* Layer-wise learning-rate decay: parameter group ``i`` of ``0..N+1`` gets ``layer_decay ** (N + 1 - i)``
  times the peak lr (the classifier head, group ``N + 1``, the full lr). ResNets are grouped as in the
  reference: stem (``conv1``, ``bn1``) = 0; ``layer1`` = 1; ``layer2`` in chunks of ``b2`` blocks and
  ``layer3`` in chunks of ``b3`` blocks (the reference's table: ResNet-50/101 b2 = 2, b3 = 3; ResNet-152
  and -200 b2 = b3 = 4; other depths split ``layer2`` and ``layer3`` in two halves each, which for
  ResNet-18/34/50 gives the same 8 groups); ``layer4`` = N; ``fc`` = N + 1. Other timm backbones
  use timm's own layer grouping (``group_matcher``).
* Label smoothing; mixup / cutmix through ``timm.data.Mixup``; loss soft-target cross-entropy
  (``ce``) or per-class binary cross-entropy on the (smoothed / mixed) targets (``bce``, the
  reference's choice with LAMB); optional EMA of the weights (``timm.utils.ModelEmaV3``).
* Stochastic depth (``drop_path``); augmentation resize (square, bilinear with antialiasing),
  horizontal / vertical flips, optional random-resized crop.

Images are 2D (grayscale or RGB; PNG, JPEG, NIfTI, DICOM, ...). Every image is read once, resized to
``image_size`` x ``image_size`` and kept in memory as float32 (``N x C x S x S x 4`` bytes), then
standardised with the per-channel mean / std of the training split. Input channels: an init file's
first convolution decides; else ``model.in_chans``; else the images' own (1 for grayscale, 3 for
colour), or 3 with ``model.replicate3`` (grayscale replicated, the reference's choice). Colour images
fed to a 1-channel model are averaged over their channels.

Validation runs after every epoch on the validation split and logs accuracy, balanced accuracy,
AUROC, AUPRC, F1 and the loss (phase ``val`` in ``metrics.csv``); ``best.pt`` holds the epoch with the
highest validation accuracy (the reference's reported number, selected on validation data). The
results report that epoch *and* the final epoch, plus the test split scored with the final model.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, field_validator, model_validator
from torch import Tensor, nn

from medssl.config import MedsslConfig, RuntimeConfig
from medssl.engine.loop import LoopResult, LoopSpec, PeriodicTask, train_iterations
from medssl.errors import MedsslInputError
from medssl.metrics.classification import CLASSIFICATION_METRIC_KEYS, classification_metrics
from medssl.runtime.rundir import PrepareMode
from medssl.runtime.session import start_run

if TYPE_CHECKING:
    from lightning.fabric import Fabric

__all__ = [
    "BEST_LABEL",
    "FINAL_LABEL",
    "ClassificationData",
    "ClassificationSplit",
    "ClassifyAugmentConfig",
    "ClassifyConfig",
    "ClassifyDataConfig",
    "ClassifyModelConfig",
    "ClassifyOptimConfig",
    "ClassifyResult",
    "EpochBatches",
    "InitReport",
    "ImageCache",
    "build_classifier",
    "layer_decay_param_groups",
    "load_image_cache",
    "lr_multiplier",
    "open_classification_data",
    "read_encoder_state",
    "resnet_layer_ids",
    "stratified_holdout",
    "train_classifier",
]

#: How the results label the epoch chosen by validation accuracy, and the last epoch.
BEST_LABEL = "best (selected on validation)"
FINAL_LABEL = "final epoch"
#: Split value meaning "the split named 'test' when the data has one, else none".
AUTO = "auto"
_DEFAULT_TEST = "test"


# ================================================================================== configuration
class ClassifyDataConfig(MedsslConfig):
    """Which images train, validate and test.

    ``spec`` is ``csv:<file.csv>`` (columns ``image,label[,split]``, image paths relative to the CSV's
    folder) or ``imagefolder:<root>`` (``<root>/<class>/<image>``, or split folders
    ``<root>/<split>/<class>/<image>``); a bare ``.csv`` file or folder is recognised too.
    """

    spec: str = Field(description="csv:<file.csv> or imagefolder:<root>.")
    train_split: str = Field("train", description="Training split (CSV split value or sub-folder); "
                             "data without splits is all training data.")
    val_split: str | None = Field(None, description="A named validation split; None: hold out "
                                  "val_fraction of the training split (stratified by class, seeded).")
    val_fraction: float = Field(0.2, gt=0, lt=1, description="Held-out fraction of the training split.")
    test_split: str | None = Field(AUTO, description="Test split scored with the final model; 'auto': "
                                   "'test' when the data has it; None: no test.")
    batch_size: int = Field(2048, ge=1, description="Global training batch (all processes together).")
    eval_batch_size: int = Field(64, ge=1, description="Images per forward pass when evaluating.")


class ClassifyModelConfig(MedsslConfig):
    """The timm backbone and its input."""

    backbone: str = Field("resnet50", description="timm model name (e.g. resnet18, resnet50).")
    in_chans: int | None = Field(None, ge=1, description="Input channels; None: the init file's first "
                                 "convolution, else the images' own (see replicate3).")
    replicate3: bool = Field(False, description="Without in_chans and init file: feed grayscale images as "
                             "3 identical channels (the reference) instead of 1.")
    image_size: int = Field(224, ge=16, description="Training and evaluation size in pixels (square).")
    drop_path: float = Field(0.05, ge=0, lt=1, description="Stochastic depth rate.")

    @field_validator("backbone")
    @classmethod
    def _known_backbone(cls, value: str) -> str:
        import timm

        if not timm.is_model(value):
            raise ValueError(f"unknown timm model {value!r} (see timm.list_models())")
        return value


class ClassifyOptimConfig(MedsslConfig):
    """Optimiser, schedule and regularisation (defaults: the reference recipe for ResNet-50)."""

    name: Literal["lamb", "adamw"] = "lamb"
    base_lr: float = Field(0.002, ge=0, description="Peak learning rate per 256 images of global batch.")
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = Field(0.02, ge=0, description="On weights only (not biases / 1-D parameters).")
    layer_decay: float = Field(0.7, gt=0, le=1, description="Layer-wise lr decay (1: off).")
    warmup_epochs: float = Field(5, ge=0)
    warmup_start: float = Field(0.005, ge=0, le=1, description="First warm-up lr as a fraction of the peak.")
    final_lr_ratio: float = Field(0.001, ge=0, le=1, description="Cosine floor as a fraction of the peak.")
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    loss: Literal["ce", "bce"] = Field("bce", description="ce: softmax cross-entropy on soft targets; "
                                       "bce: per-class binary cross-entropy (scores are sigmoids).")
    mixup: float = Field(0.1, ge=0, description="Mixup alpha (0: off).")
    cutmix: float = Field(1.0, ge=0, description="CutMix alpha (0: off).")
    mix_prob: float = Field(1.0, ge=0, le=1, description="Probability of mixing a batch.")
    mix_switch_prob: float = Field(0.5, ge=0, le=1, description="Probability of cutmix over mixup.")
    ema_decay: float | None = Field(0.9999, gt=0, lt=1, description="EMA of the weights (None: off).")
    grad_clip: float | None = Field(None, gt=0)

    @property
    def mixing(self) -> bool:
        """Whether mixup or cutmix is on."""
        return self.mix_prob > 0 and (self.mixup > 0 or self.cutmix > 0)


class ClassifyAugmentConfig(MedsslConfig):
    """Training augmentation after the resize (evaluation uses the resized image only)."""

    hflip: float = Field(0.5, ge=0, le=1, description="Probability of a horizontal flip.")
    vflip: float = Field(0.0, ge=0, le=1, description="Probability of a vertical flip.")
    random_resized_crop: bool = Field(False, description="Random crop of the resized image, resized back.")
    crop_scale: tuple[float, float] = Field((0.08, 1.0), description="Crop area range (fraction).")
    crop_ratio: tuple[float, float] = Field((0.75, 4 / 3), description="Crop aspect-ratio range (w/h).")

    @model_validator(mode="after")
    def _ranges(self) -> ClassifyAugmentConfig:
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"crop_scale must satisfy 0 < min <= max <= 1, got {self.crop_scale}")
        if not 0 < self.crop_ratio[0] <= self.crop_ratio[1]:
            raise ValueError(f"crop_ratio must satisfy 0 < min <= max, got {self.crop_ratio}")
        return self


class ClassifyConfig(MedsslConfig):
    """Everything ``medssl finetune classify`` needs; presets live in ``configs/finetune/``."""

    runtime: RuntimeConfig
    data: ClassifyDataConfig
    model: ClassifyModelConfig = Field(default_factory=ClassifyModelConfig)
    init: Path | None = Field(None, description="Exported pretrained encoder (timm state dict); None: scratch.")
    optim: ClassifyOptimConfig = Field(default_factory=ClassifyOptimConfig)
    augment: ClassifyAugmentConfig = Field(default_factory=ClassifyAugmentConfig)
    epochs: int = Field(300, ge=1)
    checkpoint_every_epochs: int | None = Field(1, ge=1, description="Checkpoint every N epochs "
                                                "(None: runtime.checkpoint_every iterations).")


# =========================================================================================== data
@dataclass
class ClassificationSplit:
    """The images of one split and their class indices."""

    name: str
    paths: list[Path]
    targets: list[int]

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, indices: Sequence[int], name: str) -> ClassificationSplit:
        return ClassificationSplit(name, [self.paths[i] for i in indices], [self.targets[i] for i in indices])


@dataclass
class ClassificationData:
    """Classes and the train / validation / (optional) test splits of a classification dataset."""

    classes: list[str]
    train: ClassificationSplit
    val: ClassificationSplit
    test: ClassificationSplit | None
    sources: list[Path]
    val_rule: str

    def describe(self) -> dict[str, Any]:
        """Split names, sizes and per-class counts (for manifests and reports)."""
        def one(split: ClassificationSplit | None) -> dict[str, Any] | None:
            if split is None:
                return None
            counts = np.bincount(np.asarray(split.targets, dtype=np.int64), minlength=len(self.classes))
            return {"name": split.name, "n": len(split), "per_class": dict(zip(self.classes, counts.tolist(), strict=True))}

        return {"train": one(self.train), "val": one(self.val), "test": one(self.test), "val_rule": self.val_rule}


def _parse_spec(spec: str) -> tuple[Literal["csv", "imagefolder"], Path]:
    kind, sep, rest = spec.partition(":")
    if sep and kind in ("csv", "imagefolder") and rest:
        return kind, Path(rest)  # type: ignore[return-value]
    path = Path(spec)
    if path.suffix.lower() == ".csv":
        return "csv", path
    if path.is_dir():
        return "imagefolder", path
    raise MedsslInputError(spec, "expected a data spec csv:<file.csv> or imagefolder:<root>")


def stratified_holdout(targets: Sequence[int], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Split indices of ``targets`` into (kept, held out), stratified by class and seeded.

    Class ``c`` with ``n_c`` samples gives ``floor(fraction * n_c + 0.5)`` to the held-out part, but
    keeps at least one sample when ``n_c >= 2`` (a class with one sample stays whole). If that holds
    out nothing, one sample of the largest class (with at least two) is held out. Which samples go is
    drawn from ``(seed, class index)``; both lists are sorted.

    Raises:
        MedsslInputError: no class has two samples (nothing can be held out).
    """
    y = np.asarray(list(targets), dtype=np.int64)
    held: list[int] = []
    per_class: dict[int, np.ndarray] = {}
    for c in np.unique(y):
        idx = np.nonzero(y == c)[0]
        order = idx[np.random.default_rng([int(seed), int(c), 0x5A11]).permutation(idx.size)]
        per_class[int(c)] = order
        n_out = int(math.floor(fraction * idx.size + 0.5))
        if idx.size >= 2:
            n_out = min(max(n_out, 0), idx.size - 1)
        else:
            n_out = 0
        held.extend(order[:n_out].tolist())
    if not held:
        sizes = {c: o.size for c, o in per_class.items() if o.size >= 2}
        if not sizes:
            raise MedsslInputError("data.val_fraction", f"cannot hold out a validation set from {y.size} "
                                   "training image(s): no class has two images (name a val_split)")
        largest = max(sizes, key=lambda c: (sizes[c], -c))
        held.append(int(per_class[largest][0]))
    held_set = set(held)
    return [i for i in range(y.size) if i not in held_set], sorted(held)


def _csv_splits(path: Path) -> set[str] | None:
    """The distinct values of the CSV's ``split`` column (None without that column)."""
    if not path.is_file():
        raise MedsslInputError(path, "CSV file not found")
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        names = {(h or "").strip(): h for h in (reader.fieldnames or [])}
        if "split" not in names:
            return None
        return {(row.get(names["split"]) or "").strip() for row in reader}


def _open_csv(path: Path, cfg: ClassifyDataConfig) -> tuple[list[str], dict[str, ClassificationSplit | None]]:
    from medssl.data.layouts import CsvClassificationDataset

    present = _csv_splits(path)
    whole = CsvClassificationDataset(path)

    def split(name: str | None, optional: bool = False) -> ClassificationSplit | None:
        if name is None:
            return None
        if optional and (present is None or name not in present):
            return None
        ds = CsvClassificationDataset(path, split=name)  # raises for an unknown split
        return ClassificationSplit(name, [p for p, _ in ds.samples], ds.targets)

    if present is None:
        train = ClassificationSplit("all", [p for p, _ in whole.samples], whole.targets)
    else:
        train = split(cfg.train_split)  # type: ignore[assignment]
    test_name, test_optional = (_DEFAULT_TEST, True) if cfg.test_split == AUTO else (cfg.test_split, False)
    return whole.classes, {"train": train, "val": split(cfg.val_split), "test": split(test_name, test_optional)}


def _open_imagefolder(root: Path, cfg: ClassifyDataConfig) -> tuple[list[str], dict[str, ClassificationSplit | None]]:
    from medssl.data.layouts import ImageFolderDataset

    if not root.is_dir():
        raise MedsslInputError(root, "image folder not found")
    split_layout = (root / cfg.train_split).is_dir()
    train_root = root / cfg.train_split if split_layout else root
    train_ds = ImageFolderDataset(train_root)
    classes = train_ds.classes
    train = ClassificationSplit(cfg.train_split if split_layout else "all",
                                [p for p, _ in train_ds.samples], train_ds.targets)

    def split(name: str | None, optional: bool = False) -> ClassificationSplit | None:
        if name is None:
            return None
        folder = root / name
        if not split_layout or not folder.is_dir():
            if optional:
                return None
            raise MedsslInputError(folder, f"split folder for split {name!r} not found (expected "
                                   f"{root}/<split>/<class>/<image>)")
        ds = ImageFolderDataset(folder)
        unknown = [c for c in ds.classes if c not in classes]
        if unknown:
            raise MedsslInputError(folder, f"class folder(s) {', '.join(unknown)} absent from the training "
                                   f"split {train_root}")
        index = [classes.index(c) for c in ds.classes]
        return ClassificationSplit(name, [p for p, _ in ds.samples], [index[t] for t in ds.targets])

    test_name, test_optional = (_DEFAULT_TEST, True) if cfg.test_split == AUTO else (cfg.test_split, False)
    return classes, {"train": train, "val": split(cfg.val_split), "test": split(test_name, test_optional)}


def open_classification_data(cfg: ClassifyDataConfig, seed: int) -> ClassificationData:
    """Read the split lists of ``cfg`` (images are not loaded yet) and hold out validation if needed.

    Raises:
        MedsslInputError: unknown spec, missing file or folder, an unknown split, fewer than two classes.
    """
    kind, path = _parse_spec(cfg.spec)
    if kind == "csv":
        classes, splits = _open_csv(path, cfg)
        sources = [path]
    else:
        classes, splits = _open_imagefolder(path, cfg)
        sources = []
    if len(classes) < 2:
        raise MedsslInputError(path, f"classification needs at least two classes, found {len(classes)}")
    train = splits["train"]
    assert train is not None
    val = splits["val"]
    if val is None:
        keep, held = stratified_holdout(train.targets, cfg.val_fraction, seed)
        rule = f"stratified {cfg.val_fraction:g} of split {train.name!r} (seed {seed})"
        train, val = train.subset(keep, train.name), train.subset(held, "val")
    else:
        rule = f"split {val.name!r}"
    used = {*train.paths, *val.paths, *(splits["test"].paths if splits["test"] is not None else [])}
    return ClassificationData(classes=list(classes), train=train, val=val, test=splits["test"],
                              sources=sources + sorted(used), val_rule=rule)


# ===================================================================================== images
@dataclass
class ImageCache:
    """Resized images of one split: ``images`` (N, C, S, S) float32 in the files' intensity units."""

    images: Tensor
    targets: Tensor
    paths: list[Path]


def _read_2d(path: Path) -> np.ndarray:
    """(C, H, W) float32 pixels of a 2D image file (C = 1 grayscale, 3 colour)."""
    from medssl.data.io import read_image

    img = read_image(path)
    arr = np.asarray(img.array)
    if img.meta.get("channels_last"):
        arr = np.moveaxis(arr, -1, 0)[:3]
    elif arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[None, :, :, 0]
    elif arr.ndim == 2:
        arr = arr[None]
    else:
        raise MedsslInputError(path, f"expected a 2D image, got shape {arr.shape} (classification takes 2D images)")
    return np.ascontiguousarray(arr, dtype=np.float32)


def _to_channels(x: Tensor, in_chans: int, path: Path) -> Tensor:
    c = x.shape[0]
    if c == in_chans:
        return x
    if c == 1:
        return x.expand(in_chans, -1, -1).contiguous()  # grayscale replicated
    if in_chans == 1:
        return x.mean(dim=0, keepdim=True)  # colour to gray: channel mean
    raise MedsslInputError(path, f"image has {c} channels, the model takes {in_chans}")


def resize_square(x: Tensor, size: int) -> Tensor:
    """(C, H, W) -> (C, size, size), bilinear with antialiasing (identity when already that size)."""
    if tuple(x.shape[-2:]) == (size, size):
        return x
    return F.interpolate(x[None], size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0]


def load_image_cache(split: ClassificationSplit, in_chans: int, size: int) -> ImageCache:
    """Read, channel-convert and resize every image of ``split`` into memory."""
    images = []
    for p in split.paths:
        x = torch.from_numpy(_read_2d(p))
        images.append(resize_square(_to_channels(x, in_chans, p), size))
    return ImageCache(images=torch.stack(images), targets=torch.tensor(split.targets, dtype=torch.int64),
                      paths=list(split.paths))


def native_channels(split: ClassificationSplit) -> int:
    """Channels of the first image of ``split`` (1 grayscale, 3 colour)."""
    return int(_read_2d(split.paths[0]).shape[0])


def channel_stats(images: Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and std (population) of (N, C, H, W) images; a constant channel gets std 1."""
    flat = images.transpose(0, 1).reshape(images.shape[1], -1).double()
    mean = flat.mean(dim=1)
    std = flat.std(dim=1, unbiased=False)
    std = torch.where(std > 1e-8, std, torch.ones_like(std))
    return mean.tolist(), std.tolist()


# ================================================================================== batches
@dataclass
class EpochBatches:
    """Training batches as a pure function of (seed, iteration, rank).

    Each epoch shuffles the training indices with ``SeedSequence([seed, 0xC1A5, epoch])`` and cuts the
    permutation into ``iterations_per_epoch = n // global_batch`` global batches (the remainder is
    dropped); rank ``r`` takes the ``r``-th block of ``global_batch // world_size`` indices.
    """

    n: int
    global_batch: int
    seed: int
    rank: int = 0
    world_size: int = 1

    def __post_init__(self) -> None:
        if self.global_batch % self.world_size:
            raise MedsslInputError("data.batch_size", f"global batch {self.global_batch} is not divisible by "
                                   f"the {self.world_size} processes")
        if self.n < self.global_batch:
            raise MedsslInputError("data.batch_size", f"global batch {self.global_batch} is larger than the "
                                   f"{self.n} training images (lower data.batch_size)")

    @property
    def iterations_per_epoch(self) -> int:
        return self.n // self.global_batch

    @property
    def per_rank(self) -> int:
        return self.global_batch // self.world_size

    def indices(self, iteration: int) -> list[int]:
        """Dataset indices of this rank's batch at ``iteration`` (0-based)."""
        epoch, step = divmod(int(iteration), self.iterations_per_epoch)
        perm = np.random.default_rng([self.seed, 0xC1A5, epoch]).permutation(self.n)
        start = step * self.global_batch + self.rank * self.per_rank
        return perm[start:start + self.per_rank].tolist()


def _random_resized_crop(x: Tensor, rng: np.random.Generator, scale: tuple[float, float],
                         ratio: tuple[float, float]) -> Tensor:
    """A random crop of area fraction in ``scale`` and aspect (w/h) in ``ratio``, resized back (C, S, S)."""
    _, h, w = x.shape
    area = h * w
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        cw, ch = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
            break
    else:  # fall back to the whole image
        top, left, ch, cw = 0, 0, h, w
    crop = x[:, top:top + ch, left:left + cw]
    return F.interpolate(crop[None], size=(h, w), mode="bilinear", align_corners=False)[0]


def augment_image(x: Tensor, cfg: ClassifyAugmentConfig, rng: np.random.Generator) -> Tensor:
    """One training view of a resized image (C, S, S): optional random-resized crop, then flips."""
    if cfg.random_resized_crop:
        x = _random_resized_crop(x, rng, cfg.crop_scale, cfg.crop_ratio)
    if rng.random() < cfg.hflip:
        x = x.flip(-1)
    if rng.random() < cfg.vflip:
        x = x.flip(-2)
    return x


def normalize(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """(B, C, H, W) standardised per channel with ``mean`` / ``std`` (C,)."""
    m = torch.tensor(mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return (images - m) / s


def build_batch_fn(cache: ImageCache, batches: EpochBatches, augment: ClassifyAugmentConfig,
                   mean: Sequence[float], std: Sequence[float], device: torch.device
                   ) -> Callable[[int], tuple[Tensor, Tensor]]:
    """``batch_fn(iteration) -> (images (B, C, S, S) standardised, targets (B,))``, pure in the iteration.

    Sample ``pos`` of the batch is augmented with a generator seeded by
    :func:`medssl.data.samplers.sample_seed` ``(seed, iteration, pos, rank)``.
    """
    from medssl.data.samplers import sample_seed

    def batch_fn(iteration: int) -> tuple[Tensor, Tensor]:
        idx = batches.indices(iteration)
        views = []
        for pos, i in enumerate(idx):
            rng = np.random.default_rng(sample_seed(batches.seed, iteration, pos, batches.rank))
            views.append(augment_image(cache.images[i], augment, rng))
        x = normalize(torch.stack(views), mean, std).to(device, non_blocking=True)
        return x, cache.targets[idx].to(device, non_blocking=True)

    return batch_fn


# ===================================================================================== model
@dataclass
class InitReport:
    """What an init file contributed to the classifier."""

    path: str
    layout: str
    in_chans: int
    loaded: list[str]
    missing: list[str]
    ignored: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "layout": self.layout, "in_chans": self.in_chans, "tensors_loaded": len(self.loaded),
                "missing_keys": self.missing, "ignored_keys": self.ignored,
                "note": "loaded strictly except the classifier head, which starts from scratch"}


def read_encoder_state(path: str | Path) -> tuple[dict[str, Tensor], str]:
    """The tensors of an exported encoder file and its layout (``state_dict`` or ``encoder``).

    Accepts a plain timm state dict or ``{"encoder": state_dict, ...}``; loads with ``weights_only``.

    Raises:
        MedsslInputError: naming the file when it is unreadable or holds something else.
    """
    from medssl.runtime.checkpoint import load_checkpoint

    obj = load_checkpoint(path)
    layout = "state_dict"
    if isinstance(obj.get("encoder"), dict):
        obj, layout = obj["encoder"], "encoder"
    elif "model" in obj and "format" in obj:
        raise MedsslInputError(path, "a training checkpoint, not an exported encoder (export the encoder "
                               "of a pretraining run first)")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad or not obj:
        raise MedsslInputError(path, "not an encoder state dict (expected parameter names mapped to tensors, "
                               "or {'encoder': state_dict})")
    return dict(obj), layout


def _first_conv_key(backbone: str) -> str:
    import timm

    with torch.device("meta"):
        probe = timm.create_model(backbone, num_classes=0)
    return f"{probe.pretrained_cfg.get('first_conv', 'conv1')}.weight"


def init_in_chans(state: dict[str, Tensor], backbone: str, path: str | Path) -> int:
    """Input channels of the encoder in ``state``, read from the first convolution's weight."""
    key = _first_conv_key(backbone)
    weight = state.get(key)
    if weight is None or weight.ndim < 3:
        raise MedsslInputError(path, f"does not fit timm {backbone!r}: no first convolution {key!r} "
                               "(an encoder of another architecture?)")
    return int(weight.shape[1])


def _classifier_prefix(model: nn.Module) -> str:
    name = str(getattr(model, "pretrained_cfg", {}).get("classifier", "fc"))
    return name + "."


def check_encoder_fits(model: nn.Module, state: dict[str, Tensor], backbone: str, path: str | Path
                       ) -> tuple[list[str], list[str], list[str]]:
    """(loaded, missing head keys, ignored head keys) of ``state`` in ``model``, checked strictly.

    Every model key except the classifier head must be in ``state`` with the same shape, and every key
    of ``state`` must belong to the model; classifier keys in the file are ignored (the head is new).

    Raises:
        MedsslInputError: naming the file, the first mismatches and the backbone.
    """
    head = _classifier_prefix(model)
    expected = model.state_dict()
    ignored = sorted(k for k in state if k.startswith(head))
    body = {k: v for k, v in state.items() if not k.startswith(head)}
    missing = [k for k in expected if k not in body and not k.startswith(head)]
    unexpected = [k for k in body if k not in expected]
    shapes = [f"{k} {tuple(v.shape)} vs {tuple(expected[k].shape)}" for k, v in body.items()
              if k in expected and tuple(v.shape) != tuple(expected[k].shape)]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s) ({', '.join(missing[:3])})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s) ({', '.join(unexpected[:3])})")
    if shapes:
        problems.append(f"{len(shapes)} shape mismatch(es) ({'; '.join(shapes[:2])})")
    if problems:
        raise MedsslInputError(path, f"encoder weights do not fit timm {backbone!r}: " + ", ".join(problems))
    head_keys = sorted(k for k in expected if k.startswith(head))
    return sorted(body), head_keys, ignored


def build_classifier(backbone: str, num_classes: int, in_chans: int, drop_path: float = 0.0,
                     init: dict[str, Tensor] | None = None, init_path: str | Path = "init",
                     meta: bool = False) -> tuple[nn.Module, tuple[list[str], list[str], list[str]] | None]:
    """A timm classifier; with ``init``, every weight but the head's is copied from it (checked strictly).

    Args:
        meta: build on the meta device (shapes only; for validating an init file before a run).

    Returns:
        the model and, with ``init``, ``(loaded keys, head keys left at their fresh init, ignored keys)``.
    """
    import timm

    if meta:
        with torch.device("meta"):
            model = timm.create_model(backbone, num_classes=num_classes, in_chans=in_chans, drop_path_rate=drop_path)
    else:
        model = timm.create_model(backbone, num_classes=num_classes, in_chans=in_chans, drop_path_rate=drop_path)
    if init is None:
        return model, None
    keys = check_encoder_fits(model, init, backbone, init_path)
    if not meta:
        head = _classifier_prefix(model)
        result = model.load_state_dict({k: v for k, v in init.items() if not k.startswith(head)}, strict=False)
        assert not result.unexpected_keys and all(k.startswith(head) for k in result.missing_keys), result
    return model, keys


# ================================================================================== optimiser
#: (blocks in layer2, blocks in layer3) -> (layer2 chunk, layer3 chunk): the reference's table.
_RESNET_CHUNKS = {(4, 6): (2, 3), (4, 23): (2, 3), (8, 36): (4, 4), (24, 36): (4, 4), (30, 48): (5, 6)}


def resnet_layer_ids(model: nn.Module) -> tuple[Callable[[str], int], int]:
    """``(layer_id(name), N)`` for a timm ResNet: ids ``0..N+1`` as described in the module notes."""
    l2, l3 = len(model.layer2), len(model.layer3)  # type: ignore[arg-type]
    b2, b3 = _RESNET_CHUNKS.get((l2, l3), (max(1, math.ceil(l2 / 2)), max(1, math.ceil(l3 / 2))))
    n2, n3 = math.ceil(l2 / b2), math.ceil(l3 / b3)
    n = 2 + n2 + n3

    def layer_id(name: str) -> int:
        top = name.split(".")[0]
        if top == "layer1":
            return 1
        if top == "layer2":
            return 2 + int(name.split(".")[1]) // b2
        if top == "layer3":
            return 2 + n2 + int(name.split(".")[1]) // b3
        if top == "layer4":
            return n
        if top == "fc":
            return n + 1
        return 0

    return layer_id, n


def _no_decay(name: str, param: Tensor) -> bool:
    return param.ndim <= 1 or name.endswith(".bias")


def layer_decay_param_groups(model: nn.Module, lr: float, weight_decay: float, layer_decay: float
                             ) -> list[dict[str, Any]]:
    """Parameter groups with layer-wise lr decay: each group has ``lr`` (already scaled), ``lr_scale``,
    ``weight_decay`` (0 for biases and 1-D parameters) and ``layer_id``.

    ResNets follow :func:`resnet_layer_ids`; other timm models use timm's layer grouping. Groups are
    ordered from the head down, so group 0 has the full learning rate (the ``lr`` that
    ``metrics.csv`` logs).
    """
    from timm.models.resnet import ResNet

    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if isinstance(model, ResNet):
        layer_id, n = resnet_layer_ids(model)
        groups: dict[tuple[int, bool], dict[str, Any]] = {}
        for name, p in params:
            lid, nd = layer_id(name), _no_decay(name, p)
            scale = layer_decay ** (n + 1 - lid)
            g = groups.setdefault((lid, nd), {"params": [], "lr_scale": scale, "layer_id": lid,
                                              "weight_decay": 0.0 if nd else weight_decay, "lr": lr * scale})
            g["params"].append(p)
        return [groups[k] for k in sorted(groups, key=lambda k: (-k[0], k[1]))]
    from timm.optim._param_groups import param_groups_layer_decay

    out = []
    for g in param_groups_layer_decay(model, weight_decay=weight_decay, layer_decay=layer_decay):
        scale = float(g.get("lr_scale", 1.0))
        out.append({"params": g["params"], "lr_scale": scale, "layer_id": -1,
                    "weight_decay": float(g["weight_decay"]), "lr": lr * scale})
    return sorted(out, key=lambda g: -g["lr_scale"])


def build_optimizer(model: nn.Module, cfg: ClassifyOptimConfig, peak_lr: float) -> torch.optim.Optimizer:
    """LAMB (as in the reference: no bias correction, trust ratio on every group, no internal clipping)
    or AdamW over :func:`layer_decay_param_groups`."""
    groups = layer_decay_param_groups(model, peak_lr, cfg.weight_decay, cfg.layer_decay)
    if cfg.name == "lamb":
        from timm.optim import Lamb

        return Lamb(groups, lr=peak_lr, betas=cfg.betas, weight_decay=0.0, bias_correction=False,
                    always_adapt=True, max_grad_norm=None)
    return torch.optim.AdamW(groups, lr=peak_lr, betas=cfg.betas, weight_decay=0.0)


def lr_multiplier(iteration: int, total: int, warmup: int, start: float, floor: float) -> float:
    """Learning rate of step ``iteration`` (0-based) as a fraction of the peak.

    Linear warm-up ``start + (1 - start) * i / warmup`` for ``i < warmup``, then cosine
    ``floor + (1 - floor) * (1 + cos(pi * r)) / 2`` with ``r = (i - warmup) / (total - 1 - warmup)``
    (clamped to [0, 1]), so the last step sits at ``floor``.
    """
    if iteration < warmup:
        return start + (1.0 - start) * iteration / warmup
    span = total - 1 - warmup
    r = 1.0 if span <= 0 else min(1.0, (iteration - warmup) / span)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * r))


# =================================================================================== losses
def soft_targets(labels: Tensor, num_classes: int, smoothing: float) -> Tensor:
    """(B, K) smoothed one-hot targets: ``1 - smoothing + smoothing / K`` on the label, ``smoothing / K`` elsewhere."""
    off = smoothing / num_classes
    t = torch.full((labels.shape[0], num_classes), off, device=labels.device)
    return t.scatter_(1, labels[:, None], 1.0 - smoothing + off)


def classification_loss(logits: Tensor, targets: Tensor, kind: Literal["ce", "bce"]) -> Tensor:
    """Soft-target cross-entropy (``ce``) or mean per-class binary cross-entropy (``bce``), (B, K) inputs."""
    logits = logits.float()
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(logits, targets)
    return torch.sum(-targets * F.log_softmax(logits, dim=-1), dim=-1).mean()


def scores_from_logits(logits: Tensor, kind: Literal["ce", "bce"]) -> Tensor:
    """Class scores: softmax probabilities (``ce``) or per-class sigmoids (``bce``)."""
    return torch.sigmoid(logits) if kind == "bce" else torch.softmax(logits, dim=-1)


# ================================================================================ evaluation
@torch.no_grad()
def predict_logits(net: nn.Module, images: Tensor, mean: Sequence[float], std: Sequence[float], batch: int,
                   fabric: Fabric | None = None) -> Tensor:
    """(N, K) float32 logits of ``net`` in eval mode for resized images (N, C, S, S) (standardised here)."""
    net.eval()
    param = next(net.parameters())
    out = []
    for start in range(0, images.shape[0], batch):
        x = normalize(images[start:start + batch], mean, std).to(param.device, dtype=param.dtype)
        if fabric is not None:
            with fabric.autocast():
                out.append(net(x).float().cpu())
        else:
            out.append(net(x).float().cpu())
    return torch.cat(out)


def score_split(logits: Tensor, targets: Tensor, kind: Literal["ce", "bce"]) -> dict[str, float]:
    """Metrics of :func:`medssl.metrics.classification.classification_metrics` plus ``loss``
    (the training objective on hard labels: no smoothing, no mixing)."""
    num_classes = logits.shape[1]
    scores = scores_from_logits(logits, kind)
    metrics = classification_metrics(scores.numpy(), targets.numpy())
    metrics["loss"] = float(classification_loss(logits, soft_targets(targets, num_classes, 0.0), kind))
    return metrics


def _write_predictions(path: Path, cache: ImageCache, logits: Tensor, classes: Sequence[str], kind: Literal["ce", "bce"]) -> None:
    import io

    from medssl.runtime.atomic import write_text_atomic

    scores = scores_from_logits(logits, kind)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["image", "label", "prediction", *[f"score_{c}" for c in classes]])
    for i, p in enumerate(cache.paths):
        row = scores[i].tolist()
        writer.writerow([str(p), classes[int(cache.targets[i])], classes[int(np.argmax(row))], *[repr(float(v)) for v in row]])
    write_text_atomic(path, buf.getvalue())


# =================================================================================== results
@dataclass
class ClassifyResult:
    """A finished fine-tuning run (``best`` / ``final`` / ``test`` are ``None`` on ranks other than 0)."""

    run_dir: Path
    loop: LoopResult
    classes: list[str]
    best: dict[str, Any] | None
    final: dict[str, Any] | None
    test: dict[str, float] | None
    init: dict[str, Any] | None
    results: dict[str, Any] | None = None
    global_rank: int = 0


def _clean(metrics: dict[str, Any]) -> dict[str, Any]:
    """JSON-safe metric values (NaN -> None)."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in metrics.items()}


def _val_rows(metrics_csv: Path) -> list[dict[str, Any]]:
    from medssl.runtime.metrics_log import read_metrics

    return [r for r in read_metrics(metrics_csv) if r["phase"] == "val" and "accuracy" in r]


def _row_metrics(row: dict[str, Any]) -> dict[str, float]:
    keys = (*CLASSIFICATION_METRIC_KEYS, "loss")
    out = {k: row[k] for k in keys if k in row}
    out.update({k: v for k, v in row.items() if k.startswith("ema_")})
    return out


def results_markdown(results: dict[str, Any]) -> str:
    """A short markdown report of ``results.json``: best (selected on validation) vs final, and test."""
    cols = (*CLASSIFICATION_METRIC_KEYS, "loss")

    def fmt(v: Any) -> str:
        return "n/a" if v is None else f"{v:.4f}"

    lines = [f"# Classification fine-tuning: {results['run']}", "",
             f"backbone {results['backbone']}, init: {results['init']['path'] if results['init'] else 'none (from scratch)'}; "
             f"classes: {', '.join(results['classes'])}",
             f"splits: train {results['splits']['train']['n']}, val {results['splits']['val']['n']} "
             f"({results['splits']['val_rule']}), test "
             f"{results['splits']['test']['n'] if results['splits']['test'] else 'none'}", "",
             "| model | split | epoch | " + " | ".join(cols) + " |",
             "|---|---|---|" + "---|" * len(cols)]
    rows = []
    if results["best"] is not None:
        rows.append((results["best"]["label"], "val", results["best"]["epoch"], results["best"]["val"]))
    final = results["final"]
    rows.append((final["label"], "val", final["epoch"], final["val"]))
    if final.get("test") is not None:
        rows.append((final["label"], "test", final["epoch"], final["test"]))
    if final.get("test_ema") is not None:
        rows.append((final["label"] + " (EMA weights)", "test", final["epoch"], final["test_ema"]))
    for label, split, epoch, m in rows:
        lines.append(f"| {label} | {split} | {epoch} | " + " | ".join(fmt(m.get(c)) for c in cols) + " |")
    lines += ["", f"'{BEST_LABEL}' is the epoch with the {results['selection']}: its validation "
              "scores are optimistic (chosen on those images). Test scores come from the final model."]
    return "\n".join(lines) + "\n"


# ================================================================================== training
def _resolve_in_chans(cfg: ClassifyConfig, data: ClassificationData, init_chans: int | None) -> int:
    if init_chans is not None:
        if cfg.model.in_chans is not None and cfg.model.in_chans != init_chans:
            raise MedsslInputError(cfg.init, f"the encoder takes {init_chans} input channel(s) but "
                                   f"model.in_chans is {cfg.model.in_chans}")
        return init_chans
    if cfg.model.in_chans is not None:
        return cfg.model.in_chans
    return 3 if cfg.model.replicate3 else native_channels(data.train)


def train_classifier(cfg: ClassifyConfig, mode: PrepareMode = "new", *,
                     command: Sequence[str] | None = None) -> ClassifyResult:
    """Fine-tune ``cfg.model.backbone`` on ``cfg.data`` and write ``results.json`` / ``results.md``.

    Data, the init file and the batch size are checked before anything is written.

    Args:
        cfg: the resolved configuration.
        mode: ``"new"``, ``"resume"`` (continue a killed run exactly) or ``"overwrite"``.
        command: the command line recorded in the manifest.
    """
    data = open_classification_data(cfg.data, cfg.runtime.seed)
    num_classes = len(data.classes)
    init_state, init_layout, init_chans = None, "", None
    if cfg.init is not None:
        init_state, init_layout = read_encoder_state(cfg.init)
        init_chans = init_in_chans(init_state, cfg.model.backbone, cfg.init)
    in_chans = _resolve_in_chans(cfg, data, init_chans)
    if init_state is not None:  # shapes only: refuse a mismatching file before the run exists
        build_classifier(cfg.model.backbone, num_classes, in_chans, init=init_state, init_path=cfg.init, meta=True)
    EpochBatches(len(data.train), cfg.data.batch_size, cfg.runtime.seed)  # batch vs training set size
    size = cfg.model.image_size
    train_cache = load_image_cache(data.train, in_chans, size)
    val_cache = load_image_cache(data.val, in_chans, size)
    test_cache = load_image_cache(data.test, in_chans, size) if data.test is not None else None
    mean, std = channel_stats(train_cache.images)

    extra = {"task": "classification", "classes": data.classes, "splits": data.describe(),
             "normalization": {"mean": mean, "std": std, "in_chans": in_chans, "image_size": size}}
    session = start_run(cfg.runtime, cfg, mode, command=command, data_paths=data.sources, extra=extra)
    fabric, run = session.fabric, session.run
    batches = EpochBatches(len(data.train), cfg.data.batch_size, cfg.runtime.seed,
                           rank=fabric.global_rank, world_size=fabric.world_size)
    if cfg.optim.mixing and batches.per_rank % 2:
        raise MedsslInputError("data.batch_size", f"mixup / cutmix need an even batch per process, got "
                               f"{batches.per_rank}")
    ipe = batches.iterations_per_epoch
    total = ipe * cfg.epochs

    net, keys = build_classifier(cfg.model.backbone, num_classes, in_chans, cfg.model.drop_path,
                                 init=init_state, init_path=cfg.init or "init")
    init_report = None
    if keys is not None:
        init_report = InitReport(path=str(cfg.init), layout=init_layout, in_chans=in_chans, loaded=keys[0],
                                 missing=keys[1], ignored=keys[2]).as_dict()
        if fabric.global_rank == 0 and not cfg.runtime.quiet:
            fabric.print(f"init: {len(keys[0])} tensors from {cfg.init}; new head: {', '.join(keys[1])}")
    peak_lr = cfg.optim.base_lr * cfg.data.batch_size / 256.0
    ema = None
    if cfg.optim.ema_decay is not None:
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(net, decay=cfg.optim.ema_decay, device=fabric.device)
    optimizer = build_optimizer(net, cfg.optim, peak_lr)
    model, optimizer = fabric.setup(net, optimizer)
    mixer = None
    if cfg.optim.mixing:
        from timm.data import Mixup

        mixer = Mixup(mixup_alpha=cfg.optim.mixup, cutmix_alpha=cfg.optim.cutmix, prob=cfg.optim.mix_prob,
                      switch_prob=cfg.optim.mix_switch_prob, mode="batch",
                      label_smoothing=cfg.optim.label_smoothing, num_classes=num_classes)
    kind = cfg.optim.loss
    batch_fn = build_batch_fn(train_cache, batches, cfg.augment, mean, std, fabric.device)

    def step_fn(batch: tuple[Tensor, Tensor], iteration: int) -> tuple[Tensor, dict[str, float]]:
        x, y = batch
        if mixer is not None:
            x, target = mixer(x, y)
        else:
            target = soft_targets(y, num_classes, cfg.optim.label_smoothing)
        return classification_loss(model(x), target, kind), {}

    def after_step(iteration: int) -> None:
        if ema is not None:
            ema.update(net, step=iteration + 1)

    def validate(done: int) -> dict[str, float]:
        if fabric.global_rank != 0:
            return {}  # rank 0's numbers are broadcast by the loop
        metrics = {"epoch": float(done // ipe)}
        metrics.update(score_split(predict_logits(net, val_cache.images, mean, std, cfg.data.eval_batch_size,
                                                  fabric), val_cache.targets, kind))
        if ema is not None:
            ema_metrics = score_split(predict_logits(ema.module, val_cache.images, mean, std,
                                                     cfg.data.eval_batch_size, fabric), val_cache.targets, kind)
            metrics.update({f"ema_{k}": v for k, v in ema_metrics.items()})
        return metrics

    every = cfg.checkpoint_every_epochs
    spec = LoopSpec(max_iterations=total,
                    checkpoint_every=ipe * every if every is not None else cfg.runtime.checkpoint_every,
                    log_every=cfg.runtime.log_every, keep_checkpoints=cfg.runtime.keep_checkpoints,
                    grad_clip=cfg.optim.grad_clip, best_metric="accuracy", best_mode="max",
                    lr_schedule=lambda i: lr_multiplier(i, total, round(cfg.optim.warmup_epochs * ipe),
                                                        cfg.optim.warmup_start, cfg.optim.final_lr_ratio))
    loop = train_iterations(fabric, run, model, optimizer, batch_fn, step_fn, spec,
                            extra_state={"ema": ema} if ema is not None else None, after_step=after_step,
                            periodic=[PeriodicTask(ipe, validate, phase="val")], resume=session.resume,
                            quiet=cfg.runtime.quiet)
    if fabric.global_rank != 0:
        return ClassifyResult(run_dir=run.root, loop=loop, classes=data.classes, best=None, final=None, test=None,
                              init=init_report, global_rank=fabric.global_rank)

    rows = _val_rows(run.metrics_csv)
    final_row = next(r for r in reversed(rows) if r["iteration"] == total)
    best_row = next((r for r in rows if r["iteration"] == loop.best_iteration), None)
    final: dict[str, Any] = {"label": FINAL_LABEL, "epoch": total // ipe, "iteration": total,
                             "checkpoint": "checkpoints/final.pt", "val": _clean(_row_metrics(final_row))}
    best = None
    if best_row is not None:
        best = {"label": BEST_LABEL, "epoch": best_row["iteration"] // ipe, "iteration": best_row["iteration"],
                "checkpoint": "checkpoints/best.pt", "val": _clean(_row_metrics(best_row))}
    val_logits = predict_logits(net, val_cache.images, mean, std, cfg.data.eval_batch_size, fabric)
    _write_predictions(run.predictions / "val_final.csv", val_cache, val_logits, data.classes, kind)
    test = None
    if test_cache is not None:
        logits = predict_logits(net, test_cache.images, mean, std, cfg.data.eval_batch_size, fabric)
        test = score_split(logits, test_cache.targets, kind)
        final["test"] = _clean(test)
        _write_predictions(run.predictions / "test_final.csv", test_cache, logits, data.classes, kind)
        if ema is not None:
            ema_logits = predict_logits(ema.module, test_cache.images, mean, std, cfg.data.eval_batch_size, fabric)
            final["test_ema"] = _clean(score_split(ema_logits, test_cache.targets, kind))
    results = {
        "task": "classification", "run": run.root.name, "backbone": cfg.model.backbone, "classes": data.classes,
        "splits": data.describe(), "init": init_report,
        "normalization": {"mean": mean, "std": std, "in_chans": in_chans, "image_size": size},
        "selection": "highest validation accuracy (earliest epoch on ties)",
        "epochs": cfg.epochs, "iterations_per_epoch": ipe, "global_batch_size": cfg.data.batch_size,
        "peak_lr": peak_lr, "best": best, "final": final,
    }
    from medssl.runtime.atomic import write_json_atomic, write_text_atomic

    write_json_atomic(run.root / "results.json", results)
    write_text_atomic(run.root / "results.md", results_markdown(results))
    return ClassifyResult(run_dir=run.root, loop=loop, classes=data.classes, best=best, final=final, test=test,
                          init=init_report, results=results)
