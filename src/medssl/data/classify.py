"""Images of a 2D classification dataset: which files train, validate and test, and their pixels in memory.

:func:`open_classification_data` reads the split lists of a CSV (``image,label[,split]``) or an image
folder (``<root>/<class>/<image>`` or ``<root>/<split>/<class>/<image>``) and, without a named
validation split, holds out a stratified, seeded fraction of the training split
(:func:`stratified_holdout`). Nothing is read from the images yet.

:func:`load_image_cache` then reads every image of a split once, converts it to the model's input
channels and resizes it to ``size`` x ``size`` pixels (bilinear with antialiasing), keeping the split in
memory as float32 (``N x C x S x S x 4`` bytes) in the files' own intensity units;
:func:`channel_stats` gives the per-channel mean / std that standardise it. Grayscale images fed to a
3-channel model are replicated; colour images fed to a 1-channel model are averaged over their channels.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from medssl.config import MedsslConfig
from medssl.errors import MedsslInputError

__all__ = [
    "AUTO",
    "ClassificationData",
    "ClassificationSplit",
    "ClassifyDataConfig",
    "ImageCache",
    "channel_stats",
    "load_image_cache",
    "native_channels",
    "open_classification_data",
    "resize_square",
    "stratified_holdout",
]

#: Split value meaning "the split named 'test' when the data has one, else none".
AUTO = "auto"
_DEFAULT_TEST = "test"


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


# =========================================================================================== splits
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
