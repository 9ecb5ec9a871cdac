"""Images and their ROI maps for masked image pretraining (Mask What Matters / SparK).

:class:`PretrainDataset` reads a folder of scans, finds each scan's ROI map in a
:class:`~medssl.localize.cache.RoiCache` by the scan's content hash, and yields

    ``(image (C, *S) float32, normalised; roi (*S) bool)``

with image and ROI passed through the same spatial transforms:

* 2D (``dims=2``): resize to ``image_size`` (image bilinear with antialiasing, ROI nearest) and a random
  horizontal flip (the reference recipe's only augmentations); optionally a random resized crop first.
* 3D (``dims=3``): a random crop of ``crop_size`` voxels (zero padding of the normalised volume where it is
  smaller) and a random flip along every axis.

Intensities are normalised with one dataset mean / std (computed once over every pixel of the training
images at their native size, or given). The random transform of an item is a pure function of
``(seed, epoch, index)``, and :class:`PretrainBatches` builds the batch of an iteration from
``(seed, iteration, rank)``, so a resumed run sees exactly the batches of an uninterrupted one.

Folders: the embedded layout ``<root>/images/<case>.<ext>`` with an optional split list
(``<root>/train.list`` by default), or a plain folder of image files (2D PNG / JPEG / NIfTI, 3D NIfTI /
NRRD / DICOM / HDF5 / NumPy, everything :func:`medssl.data.io.read_image` reads).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from pydantic import Field, field_validator
from torch import Tensor

from medssl.config import MedsslConfig
from medssl.data.io import ImageData, read_image
from medssl.data.layouts import IMAGE_SUFFIXES, imagefolder_files, is_imagefolder, strip_suffix
from medssl.errors import MedsslInputError

if TYPE_CHECKING:
    from medssl.localize.cache import RoiCache

__all__ = [
    "PretrainBatch",
    "PretrainBatches",
    "PretrainDataConfig",
    "PretrainDataset",
    "list_pretrain_images",
    "open_pretrain_dataset",
]

# Streams of the seed sequences (seed, stream, ...): item transforms, epoch orders.
_ITEM_STREAM, _ORDER_STREAM = 11, 12
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
_SHOW = 5


class PretrainDataConfig(MedsslConfig):
    """Which images to pretrain on, their ROI maps and their transforms.

    ``split``: ``None`` uses ``<folder>/train.list`` when it exists, else every image; ``"all"`` every
    image; another name ``<folder>/<name>.list``; or the path of a list file (one case id per line).
    """

    folder: Path = Field(description="Dataset folder (images/ layout), a plain folder of images or an ImageFolder "
                         "root (<root>/[<split>/]<class>/<image>; labels unused).")
    split: str | None = Field(None, description="None (train.list if present), 'all', a list name or file.")
    image_size: int = Field(224, ge=1, description="2D: images are resized to image_size x image_size pixels.")
    crop_size: tuple[int, ...] | None = Field(None, description="3D: random crop size in voxels "
                                              "(None: whole volumes, all of one size).")
    random_resized_crop: tuple[float, float] | None = Field(
        None, description="2D: random resized crop with this area scale range before the resize (off in "
        "the reference recipe).")
    flip: bool = Field(True, description="Random flips (2D: horizontal; 3D: every axis).")
    roi_cache: Path | None = Field(None, description="ROI cache folder (medssl localize run).")
    roi_prompt: str | None = Field(None, description="Use only ROI entries made with this prompt.")
    roi_backend: str | None = Field(None, description="Use only ROI entries of this localization backend.")
    allow_missing_roi: bool = Field(False, description="An image without a ROI entry gets an empty ROI "
                                    "(masked uniformly at the background ratio) instead of an error.")
    mean: float | None = Field(None, description="Intensity mean (None: computed over the training images).")
    std: float | None = Field(None, gt=0, description="Intensity std (None: computed over the training images).")
    cache_images: bool = Field(True, description="Keep the decoded images in memory.")

    @field_validator("crop_size")
    @classmethod
    def _positive_crop(cls, value: tuple[int, ...] | None) -> tuple[int, ...] | None:
        if value is not None and (len(value) != 3 or any(v < 1 for v in value)):
            raise ValueError(f"expected three positive sizes (H, W, D), got {list(value)}")
        return value

    @field_validator("random_resized_crop")
    @classmethod
    def _scale_range(cls, value: tuple[float, float] | None) -> tuple[float, float] | None:
        if value is not None and not 0.0 < value[0] <= value[1] <= 1.0:
            raise ValueError(f"expected 0 < min <= max <= 1, got {list(value)}")
        return value


# ----------------------------------------------------------------------------------------- files
def _is_image_file(path: Path) -> bool:
    return path.is_file() and not path.name.startswith(".") and path.name.lower().endswith(
        tuple(IMAGE_SUFFIXES) + (".npy",))


def _read_list(path: Path) -> list[str]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise MedsslInputError(path, f"cannot read the split list ({err.__class__.__name__})") from None
    ids = [strip_suffix(Path(line.strip().replace("\\", "/")).name) for line in lines
           if line.strip() and not line.strip().startswith("#")]
    if not ids:
        raise MedsslInputError(path, "split list is empty")
    return ids


def list_pretrain_images(folder: str | Path, split: str | None = None) -> list[Path]:
    """The image files of a pretraining folder, in split-list order (else sorted by name).

    Args:
        folder: ``<root>`` with ``images/`` (embedded layout), a plain folder of image files, or an
            nnU-Net raw dataset (``nnunet:<root>``, or a folder with ``dataset.json`` + ``imagesTr/``), or
            an ImageFolder root ``<root>/[<split>/]<class>/<image>`` (every image; the classes are unused).
        split: see :class:`PretrainDataConfig`.

    Raises:
        MedsslInputError: missing folder, no images, a missing list, or a listed case without an image.
    """
    from medssl.data.nnunet import nnunet_images, nnunet_root

    raw = nnunet_root(folder)
    if raw is not None:
        return nnunet_images(raw, split)
    root = Path(folder)
    if not root.is_dir():
        raise MedsslInputError(root, "no such data folder")
    image_dir = root / "images" if (root / "images").is_dir() else root
    if is_imagefolder(root):  # <root>/[<split>/]<class>/<image>: every image, labels unused
        paths = [p for classes in imagefolder_files(root).values() for ps in classes.values() for p in ps]
    else:
        paths = [p for p in sorted(image_dir.iterdir()) if _is_image_file(p)]
    files: dict[str, Path] = {}
    for p in paths:
        if files.setdefault(strip_suffix(p.name), p) != p:
            raise MedsslInputError(p, f"two images share the case name {strip_suffix(p.name)!r}: {files[strip_suffix(p.name)]}")
    if not files:
        raise MedsslInputError(image_dir, "no image files found (expected PNG / JPEG / NIfTI / NRRD / ... files)")
    list_path: Path | None
    if split is None:
        list_path = root / "train.list" if (root / "train.list").is_file() else None
    elif split == "all":
        list_path = None
    else:
        candidate = Path(split)
        list_path = candidate if candidate.is_file() else root / f"{split}.list"
        if not list_path.is_file():
            raise MedsslInputError(list_path, "split list not found")
    if list_path is None:
        return list(files.values())
    ids = _read_list(list_path)
    missing = [i for i in ids if i not in files]
    if missing:
        shown = ", ".join(missing[:_SHOW]) + (f" (+{len(missing) - _SHOW} more)" if len(missing) > _SHOW else "")
        raise MedsslInputError(list_path, f"names {len(missing)} case(s) without an image in {image_dir}: {shown}")
    return [files[i] for i in ids]


def _read(path: Path, dims: int) -> ImageData:
    image = read_image(path)
    spatial = image.array.ndim - (1 if image.meta.get("channels_last") else 0)
    if spatial != dims:
        hint = "use --dims 2 (model.dims=2) for 2D images" if dims == 3 else \
            "use --dims 3 (model.dims=3) for volumes"
        raise MedsslInputError(path, f"expected a {dims}D image, got {spatial}D data of shape "
                               f"{image.array.shape}; {hint}")
    return image


def _channels_first(image: ImageData, in_chans: int) -> np.ndarray:
    """(C, *S) float32 with ``in_chans`` channels (colour -> luminance, grayscale replicated)."""
    arr = np.asarray(image.array, dtype=np.float32)
    if image.meta.get("channels_last"):
        arr = np.moveaxis(arr, -1, 0)
    else:
        arr = arr[None]
    channels = arr.shape[0]
    if channels == in_chans:
        return np.ascontiguousarray(arr)
    if channels == 1:
        return np.ascontiguousarray(np.repeat(arr, in_chans, axis=0))
    if channels == 3 and in_chans == 1:
        return np.ascontiguousarray(np.tensordot(_LUMA, arr, axes=1)[None].astype(np.float32))
    raise MedsslInputError(image.source, f"image has {channels} channels; the model takes {in_chans}")


# ------------------------------------------------------------------------------------- ROI maps
# -------------------------------------------------------------------------------------- dataset
def _resize(x: np.ndarray, size: Sequence[int], mode: str) -> np.ndarray:
    """(C, *S) -> (C, *size) with torch interpolation (``bilinear`` antialiased, or ``nearest-exact``)."""
    if tuple(x.shape[1:]) == tuple(size):
        return x
    t = torch.from_numpy(np.ascontiguousarray(x))[None].float()
    if mode == "nearest-exact":
        out = torch.nn.functional.interpolate(t, size=tuple(size), mode="nearest-exact")
    else:
        out = torch.nn.functional.interpolate(t, size=tuple(size), mode="bilinear", align_corners=False,
                                              antialias=True)
    return out[0].numpy()


def _resized_crop_box(rng: np.random.Generator, shape: Sequence[int],
                      scale: tuple[float, float]) -> tuple[int, int, int, int]:
    """(top, left, height, width) of a random crop with area fraction in ``scale`` and aspect ratio in
    [3/4, 4/3] (log-uniform); after 10 failed draws the central crop of the whole image."""
    h, w = int(shape[0]), int(shape[1])
    area = h * w
    log_ratio = (math.log(3 / 4), math.log(4 / 3))
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        ratio = math.exp(rng.uniform(*log_ratio))
        cw = int(round(math.sqrt(target * ratio)))
        ch = int(round(math.sqrt(target / ratio)))
        if 0 < cw <= w and 0 < ch <= h:
            top = int(rng.integers(0, h - ch, endpoint=True))
            left = int(rng.integers(0, w - cw, endpoint=True))
            return top, left, ch, cw
    return 0, 0, h, w


def _pad_crop(image: np.ndarray, roi: np.ndarray, size: Sequence[int],
              rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Random crop of ``size`` from (C, *S) / (*S); axes shorter than ``size`` are zero-padded evenly first."""
    pads = [max(0, int(s) - d) for d, s in zip(roi.shape, size, strict=True)]
    if any(pads):
        width = [(p // 2, p - p // 2) for p in pads]
        image = np.pad(image, [(0, 0), *width])
        roi = np.pad(roi, width)
    start = [int(rng.integers(0, d - int(s), endpoint=True)) for d, s in zip(roi.shape, size, strict=True)]
    region = tuple(slice(a, a + int(s)) for a, s in zip(start, size, strict=True))
    return image[(slice(None),) + region], roi[region]


def _central_crop(x: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """The central ``size`` window of the trailing axes of ``x`` ((*S) or (C, *S)), zero-padded evenly first
    where an axis is shorter."""
    lead = x.ndim - len(size)
    pads = [max(0, int(s) - d) for d, s in zip(x.shape[lead:], size, strict=True)]
    x = np.pad(x, [(0, 0)] * lead + [(p // 2, p - p // 2) for p in pads])
    region = tuple(slice((d - int(s)) // 2, (d - int(s)) // 2 + int(s)) for d, s in zip(x.shape[lead:], size, strict=True))
    return np.ascontiguousarray(x[(slice(None),) * lead + region])


class PretrainDataset:
    """Images (C, *S) float32 (normalised) with ROI maps (*S) bool for masked pretraining.

    Args:
        files: image files.
        dims: 2 (images) or 3 (volumes).
        in_chans: channels the model takes (colour images become luminance for 1; grayscale is replicated).
        image_size: 2D output size (pixels, square).
        crop_size: 3D output crop (voxels); None = whole volumes (all of one shape).
        rois: the ROI map of each file (None: empty ROI).
        mean, std: intensity normalisation; None: computed over every pixel of ``files``.
        flip: random flips; ``random_resized_crop``: 2D area scale range of an optional crop.
        seed: base seed of the random transforms.
        cache: keep decoded images in memory (else re-read on each access).
        preloaded: already decoded (C, *S) float32 images by index (kept when ``cache``).

    ``item(index, epoch)`` is the transformed sample, a pure function of ``(seed, epoch, index)``;
    ``base(index)`` the untransformed view (2D: resized; 3D: central crop) used for previews and
    expected mask ratios.
    """

    def __init__(self, files: Sequence[Path], *, dims: int, in_chans: int = 1, image_size: int = 224,
                 crop_size: Sequence[int] | None = None, rois: Sequence[np.ndarray | None] | None = None,
                 mean: float | None = None, std: float | None = None, flip: bool = True,
                 random_resized_crop: tuple[float, float] | None = None, seed: int = 0,
                 cache: bool = True, preloaded: dict[int, np.ndarray] | None = None) -> None:
        if dims not in (2, 3):
            raise MedsslInputError("model.dims", f"expected 2 or 3, got {dims}")
        self.files = [Path(f) for f in files]
        self.dims, self.in_chans, self.seed = dims, int(in_chans), int(seed)
        self.image_size = (int(image_size),) * 2
        self.crop_size = None if crop_size is None else tuple(int(c) for c in crop_size)
        self.flip = bool(flip)
        self.random_resized_crop = random_resized_crop
        self._rois = list(rois) if rois is not None else [None] * len(self.files)
        if len(self._rois) != len(self.files):
            raise ValueError(f"{len(self._rois)} ROI maps for {len(self.files)} images")
        self._cache = cache
        self._images: dict[int, np.ndarray] = dict(preloaded or {}) if cache else {}
        self.epoch = 0
        computed = mean is None or std is None
        total, total_sq, count = 0.0, 0.0, 0
        shapes = set()
        for i in range(len(self.files)):
            arr = self._load(i, keep=cache)
            shapes.add(arr.shape[1:])
            roi = self._rois[i]
            if roi is not None and roi.shape != arr.shape[1:]:
                raise MedsslInputError(self.files[i], f"ROI map shape {roi.shape} does not match the image "
                                       f"shape {arr.shape[1:]}")
            if computed:
                values = arr.astype(np.float64)
                total += float(values.sum())
                total_sq += float(np.square(values).sum())
                count += values.size
        if dims == 3 and self.crop_size is None and len(shapes) > 1:
            raise MedsslInputError("data.crop_size", f"volumes of different shapes ({len(shapes)} shapes, e.g. "
                                   f"{sorted(shapes)[:2]}) need a crop size")
        if computed:
            mu = total / max(count, 1)
            sd = math.sqrt(max(total_sq / max(count, 1) - mu * mu, 0.0))
            mean = mu if mean is None else mean
            std = sd if std is None else std
        if not std or not math.isfinite(std) or std <= 0:
            raise MedsslInputError("data.std", f"intensity std is {std}: the images are constant; give data.std")
        self.mean, self.std = float(mean), float(std)  # type: ignore[arg-type]
        self.stats_computed = computed

    # -- access ---------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.files)

    def set_epoch(self, epoch: int) -> None:
        """Epoch used by ``dataset[index]`` (``item`` takes it explicitly)."""
        self.epoch = int(epoch)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        return self.item(index, self.epoch)

    @property
    def output_shape(self) -> tuple[int, ...]:
        """Spatial shape of every item (pixels / voxels)."""
        if self.dims == 2:
            return self.image_size
        if self.crop_size is not None:
            return self.crop_size
        return tuple(self._load(0, keep=self._cache).shape[1:])

    def roi_count(self) -> int:
        """Images with a non-empty ROI map."""
        return sum(1 for r in self._rois if r is not None and bool(r.any()))

    def _load(self, index: int, keep: bool) -> np.ndarray:
        if index in self._images:
            return self._images[index]
        arr = _channels_first(_read(self.files[index], self.dims), self.in_chans)
        if keep:
            self._images[index] = arr
        return arr

    def _raw(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        image = (self._load(index, keep=self._cache) - np.float32(self.mean)) / np.float32(self.std)
        roi = self._rois[index]
        if roi is None:
            roi = np.zeros(image.shape[1:], dtype=bool)
        return image.astype(np.float32, copy=False), roi

    def base(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The untransformed view: 2D resized to ``image_size``, 3D the central crop (padded)."""
        image, roi = self._raw(index)
        if self.dims == 2:
            return self._resize_pair(image, roi)
        if self.crop_size is None:
            return image, roi.copy()
        return _central_crop(image, self.crop_size), _central_crop(roi, self.crop_size)

    def base_roi(self, index: int) -> np.ndarray:
        """The ROI map (*S) bool of :meth:`base` without reading the image."""
        roi = self._rois[index]
        if roi is None:
            return np.zeros(self.output_shape, dtype=bool)
        if self.dims == 2:
            return _resize(roi[None].astype(np.float32), self.image_size, "nearest-exact")[0] > 0.5
        return roi.copy() if self.crop_size is None else _central_crop(roi, self.crop_size)

    def _resize_pair(self, image: np.ndarray, roi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        image = _resize(image, self.image_size, "bilinear")
        roi = _resize(roi[None].astype(np.float32), self.image_size, "nearest-exact")[0] > 0.5
        return np.ascontiguousarray(image, dtype=np.float32), roi

    def item(self, index: int, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """Sample ``index`` as seen in ``epoch``: image (C, *S) float32 and ROI (*S) bool, aligned."""
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, _ITEM_STREAM, int(epoch), int(index)]))
        image, roi = self._raw(index)
        if self.dims == 2:
            if self.random_resized_crop is not None:
                top, left, h, w = _resized_crop_box(rng, roi.shape, self.random_resized_crop)
                image, roi = image[:, top:top + h, left:left + w], roi[top:top + h, left:left + w]
            image, roi = self._resize_pair(image, roi)
            if self.flip and rng.random() < 0.5:
                image, roi = image[:, :, ::-1], roi[:, ::-1]
        else:
            if self.crop_size is not None:
                image, roi = _pad_crop(image, roi, self.crop_size, rng)
            if self.flip:
                for axis in range(3):
                    if rng.random() < 0.5:
                        image, roi = np.flip(image, axis + 1), np.flip(roi, axis)
        return np.ascontiguousarray(image, dtype=np.float32), np.ascontiguousarray(roi, dtype=bool)


def _open_roi_cache(folder: Path) -> RoiCache:
    from medssl.localize.cache import RoiCache

    if not folder.is_dir():
        raise MedsslInputError(folder, "ROI cache folder not found (fill it with medssl localize run)")
    return RoiCache(folder)


def open_pretrain_dataset(cfg: PretrainDataConfig, *, dims: int, in_chans: int = 1,
                          seed: int = 0) -> tuple[PretrainDataset, dict[str, Any]]:
    """Open the images of ``cfg`` with their ROI maps.

    Returns:
        the dataset and a report: ``images``, ``with_roi_entry``, ``missing_roi`` (count, and the first
        file names), ``empty_roi``, ``roi_entries`` in the (filtered) cache, ``mean`` / ``std``.

    Raises:
        MedsslInputError: bad folder / list, images of the wrong dimensionality, a ROI cache that does
            not exist, an ambiguous ROI, or an image without ROI entry (unless ``allow_missing_roi``).
    """
    files = list_pretrain_images(cfg.folder, cfg.split)
    index = _open_roi_cache(Path(cfg.roi_cache)) if cfg.roi_cache is not None else None
    rois: list[np.ndarray | None] = []
    missing: list[str] = []
    preloaded: dict[int, np.ndarray] = {}
    for i, path in enumerate(files):
        if index is None:
            rois.append(None)
            continue
        image = _read(path, dims)
        if cfg.cache_images:
            preloaded[i] = _channels_first(image, in_chans)
        found = index.lookup(image, cfg.roi_prompt, cfg.roi_backend, same_map_ok=True,
                             hint="choose one with data.roi_prompt / data.roi_backend (--roi-prompt / --roi-backend)")
        roi = found.roi if found is not None else None
        if roi is None:
            if not cfg.allow_missing_roi:
                filters = "".join(f", {k} {v!r}" for k, v in (("prompt", cfg.roi_prompt), ("backend", cfg.roi_backend))
                                  if v is not None)
                raise MedsslInputError(path, f"no ROI map for this image in {cfg.roi_cache}{filters} "
                                       "(run medssl localize run on it, or set data.allow_missing_roi=true to "
                                       "mask it uniformly at the background ratio)")
            missing.append(path.name)
        rois.append(roi)
    dataset = PretrainDataset(files, dims=dims, in_chans=in_chans, image_size=cfg.image_size,
                              crop_size=cfg.crop_size, rois=rois, mean=cfg.mean, std=cfg.std, flip=cfg.flip,
                              random_resized_crop=cfg.random_resized_crop, seed=seed, cache=cfg.cache_images,
                              preloaded=preloaded)
    report = {"images": len(files), "with_roi_entry": len(files) - len(missing) if index is not None else 0,
              "missing_roi": len(missing), "missing_roi_files": missing[:20],
              "empty_roi": sum(1 for r in rois if r is None or not r.any()),
              "roi_entries": len(index.valid_entries(cfg.roi_prompt, cfg.roi_backend)) if index is not None else 0,
              "mean": dataset.mean, "std": dataset.std, "stats_computed": dataset.stats_computed}
    return dataset, report


# -------------------------------------------------------------------------------------- batches
@dataclass
class PretrainBatch:
    """One batch: ``image`` (B, C, *S) float32 on the training device; ``roi`` (B, *S) bool, dataset
    ``index`` (B,) and ``epoch`` on the CPU (patch masks are drawn there)."""

    image: Tensor
    roi: Tensor
    index: Tensor
    epoch: int


class PretrainBatches:
    """``batches(iteration) -> PretrainBatch``: epochs of a shuffled dataset, a pure function of
    (seed, iteration, rank).

    Epoch ``e`` visits the permutation drawn from ``(seed, e)``; it has
    ``iterations_per_epoch = len(dataset) // (batch_size * world_size)`` iterations (the remainder of each
    permutation is left out, as a loader with ``drop_last``). At step ``s`` of epoch ``e`` rank ``r`` takes
    ``perm_e[(s * world_size + r) * batch_size :][:batch_size]``.

    Args:
        dataset: the images.
        batch_size: samples per batch and process.
        seed: base seed; ``rank`` / ``world_size``: data-parallel position.
        device: where batches are put.
    """

    def __init__(self, dataset: PretrainDataset, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                 device: torch.device | str = "cpu") -> None:
        if batch_size < 1:
            raise MedsslInputError("optim.batch_size", f"must be >= 1, got {batch_size}")
        per_epoch = len(dataset) // (batch_size * world_size)
        if per_epoch < 1:
            raise MedsslInputError("optim.batch_size", f"a batch of {batch_size * world_size} images "
                                   f"({batch_size} x {world_size} process(es)) needs at least that many images; "
                                   f"the data has {len(dataset)}")
        self.dataset, self.batch_size, self.seed = dataset, int(batch_size), int(seed)
        self.rank, self.world_size, self.device = int(rank), int(world_size), torch.device(device)
        self.iterations_per_epoch = per_epoch

    def epoch_order(self, epoch: int) -> np.ndarray:
        """The dataset permutation of ``epoch``."""
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, _ORDER_STREAM, int(epoch)]))
        return rng.permutation(len(self.dataset))

    def indices(self, iteration: int) -> tuple[list[int], int]:
        """Dataset indices of this rank's batch at ``iteration``, and the epoch."""
        epoch, step = divmod(int(iteration), self.iterations_per_epoch)
        start = (step * self.world_size + self.rank) * self.batch_size
        order = self.epoch_order(epoch)
        return [int(i) for i in order[start:start + self.batch_size]], epoch

    def __call__(self, iteration: int) -> PretrainBatch:
        idx, epoch = self.indices(iteration)
        images, rois = zip(*(self.dataset.item(i, epoch) for i in idx), strict=True)
        image = torch.from_numpy(np.stack(images)).to(self.device, non_blocking=True)
        roi = torch.from_numpy(np.stack(rois))
        return PretrainBatch(image=image, roi=roi, index=torch.tensor(idx), epoch=epoch)
