"""COCO detection data for Mask R-CNN: splits, decoded samples, normalisation statistics, batches.

Data: a COCO instances JSON whose ``file_name`` entries are relative to ``data.root`` or to
``<root>/images`` (the embedded ``brain2d`` / ``chest2d`` sets write ``<root>/annotations.json`` with
``train.list`` / ``test.list``; the usual public layout is ``<root>/images/`` +
``<root>/annotations/instances*.json``).
Training images: ``data.train_split`` (default ``<root>/train.list`` when it exists, else every image of the
JSON). Validation images: ``data.val_split`` (default: every image of ``data.val_annotations`` when given,
else ``<root>/test.list`` when it exists, else none); for the embedded sets the validation images are
therefore their test split. List entries name images by file name without folder and extension
(``case_0003`` for ``images/case_0003.png``).

Batches are a pure function of (seed, iteration, rank): each epoch visits the images in a fresh seeded order.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from pydantic import Field
from torch import Tensor

from medssl.config import MedsslConfig
from medssl.data.layouts import CocoDataset, CocoSample, find_coco_annotations, strip_suffix
from medssl.errors import MedsslInputError

__all__ = ["DetectData", "DetectDataConfig", "DetectSplit", "SampleStore", "build_detect_batch_fn", "image_mean_std",
           "image_tensor", "open_detect_data"]


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


def image_mean_std(store: SampleStore, indices: Sequence[int], max_images: int = 256) -> tuple[list[float], list[float]]:
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
