"""Semi-supervised training data: which volumes are labeled, unlabeled and held out, case lists, resampling.

Following a :class:`SemiDataConfig` from a spec string to index splits happens here; the engine
(:mod:`medssl.engine.semi`) only samples batches from the result.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import Field

from medssl.config import MedsslConfig
from medssl.data.spec import SegmentationCase, VolumeDataset, open_volume_dataset, parse_spec
from medssl.errors import MedsslInputError

__all__ = ["SemiDataConfig", "SemiSplits", "SubsetDataset", "layout_and_root", "open_case_list", "open_semi_data",
           "select_cases", "split_volumes", "zoomed"]

Triple = tuple[int, int, int]


class SemiDataConfig(MedsslConfig):
    """Which volumes are labeled, unlabeled and held out for validation.

    The training list is ``split_file`` (default ``<root>/train.list``, else every case of the dataset
    in sorted order). Its last ``n_val`` entries are validation; of the rest, the first ``labeled`` are
    labeled and the others unlabeled. For the left-atrium benchmark (80 public training cases) this is
    64 training cases (first N labeled) and 16 validation cases; the 20 standard test cases are never used
    in training.
    """

    spec: str | None = Field(None, description="'la:<root>', 'folder:<root>' or a bare folder (layout "
                             "detected); None when the dataset is passed as an object (train_semi(dataset=...)).")
    split_file: Path | None = Field(None, description="Ordered training list (default <root>/train.list).")
    labeled: int = Field(8, ge=1, description="Number of labeled training volumes (first N of the list).")
    n_val: int | None = Field(None, ge=0, description="Validation volumes from the end of the list "
                              "(default 16 for the left-atrium layout, 0 otherwise).")
    max_unlabeled: int | None = Field(None, ge=0, description="Use at most this many unlabeled volumes.")
    patch: Triple = Field((112, 112, 80), description="Training crop size in voxels (H, W, D).")
    labeled_bs: int = Field(2, ge=1, description="Labeled volumes per batch and process.")
    unlabeled_bs: int = Field(2, ge=0, description="Unlabeled volumes per batch and process.")
    zoom: float = Field(1.0, gt=0, le=4, description="Resample every volume by this factor (0.5 = 2x down).")
    allow_missing: bool = Field(False, description="Skip cases named by the split list but absent on disk.")


@dataclass
class SemiSplits:
    """Dataset indices of the labeled, unlabeled and validation volumes."""

    labeled: list[int]
    unlabeled: list[int]
    val: list[int]


def layout_and_root(spec: str) -> tuple[str, Path]:
    """The layout (``la``, ``folder``, ...) and root folder of a data spec (layout detected when not given)."""
    from medssl.data.spec import detect_layout

    layout, root = parse_spec(spec)
    return (layout or detect_layout(root)), root


def _training_list(cfg: SemiDataConfig, layout: str, root: Path) -> Path | None:
    if cfg.split_file is not None:
        if not Path(cfg.split_file).is_file():
            raise MedsslInputError(cfg.split_file, "split list not found")
        return Path(cfg.split_file)
    default = root / "train.list"
    if default.is_file():
        return default
    if layout == "la":
        raise MedsslInputError(root, "left-atrium layout needs a training list: put train.list in the "
                               "dataset folder or pass data.split_file")
    return None


def open_semi_data(cfg: SemiDataConfig, cache: bool = True) -> tuple[VolumeDataset, SemiSplits]:
    """Open the training dataset of ``cfg`` (ordered as its training list) and split it.

    Args:
        cache: keep loaded (and resampled) volumes in memory (training); evaluation reads each once.

    Returns:
        the dataset (resampled by ``cfg.zoom``) and the index splits.
    """
    from medssl.data.la import read_split

    if cfg.spec is None:
        raise MedsslInputError("data.spec", "required: a data spec such as folder:<root> (or pass the dataset "
                               "object to train_semi(dataset=...))")
    layout, root = layout_and_root(cfg.spec)
    split_file = _training_list(cfg, layout, root)
    if layout == "la":
        dataset = open_volume_dataset(cfg.spec, split_file=split_file, allow_missing=cfg.allow_missing, cache=cache)
    else:
        dataset = open_volume_dataset(cfg.spec, cache=cache, labels_required=False)
        if split_file is not None:
            dataset = select_cases(dataset, read_split(split_file), split_file, root, cfg.allow_missing)
    dataset = zoomed(dataset, cfg.zoom, cache)
    return dataset, split_volumes(len(dataset), cfg, default_n_val=16 if layout == "la" else 0)


def split_volumes(n: int, cfg: SemiDataConfig, default_n_val: int = 0) -> SemiSplits:
    """Split ``n`` ordered training volumes: the last ``n_val`` validate, of the rest the first ``labeled``
    are labeled and the others (at most ``max_unlabeled``) unlabeled.

    Raises:
        MedsslInputError: no training volume left, or more labeled volumes than training volumes.
    """
    n_val = cfg.n_val if cfg.n_val is not None else default_n_val
    if n_val >= n:
        raise MedsslInputError("data.n_val", f"{n_val} validation volumes leave no training volume of {n}")
    n_train = n - n_val
    if cfg.labeled > n_train:
        raise MedsslInputError("data.labeled", f"{cfg.labeled} labeled volumes requested but only {n_train} "
                               "training volumes exist")
    unlabeled = list(range(cfg.labeled, n_train))
    if cfg.max_unlabeled is not None:
        unlabeled = unlabeled[: cfg.max_unlabeled]
    return SemiSplits(labeled=list(range(cfg.labeled)), unlabeled=unlabeled, val=list(range(n_train, n)))


class SubsetDataset:
    """A :class:`VolumeDataset` restricted to (and ordered as) ``indices`` of ``base``."""

    def __init__(self, base: VolumeDataset, indices: Sequence[int]) -> None:
        self.base, self.indices = base, list(indices)
        self.case_ids = [base.case_ids[i] for i in self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def load(self, i: int) -> SegmentationCase:
        return self.base.load(self.indices[i])


def select_cases(dataset: VolumeDataset, wanted: Sequence[str], source: str | Path, root: Path,
                 allow_missing: bool = False) -> SubsetDataset:
    """``dataset`` restricted to (and ordered as) the case ids ``wanted`` (read from ``source``).

    Raises:
        MedsslInputError: naming ``source`` when it names cases absent from ``root`` (unless
            ``allow_missing``: those are skipped).
    """
    present = {cid: i for i, cid in enumerate(dataset.case_ids)}
    missing = [c for c in wanted if c not in present]
    if missing and not allow_missing:
        raise MedsslInputError(source, f"names {len(missing)} case(s) absent from {root}: {', '.join(missing[:5])}")
    return SubsetDataset(dataset, [present[c] for c in wanted if c in present])


def open_case_list(spec: str, cases: str | Path, allow_missing: bool = False) -> VolumeDataset:
    """The cases named by the list file ``cases`` (one id per line) of the dataset ``spec``, in list order,
    read on demand (no cache)."""
    from medssl.data.la import read_split

    layout, root = layout_and_root(spec)
    wanted = read_split(cases)
    if layout == "la":
        return open_volume_dataset(spec, case_ids=wanted, allow_missing=allow_missing, cache=False)
    return select_cases(open_volume_dataset(spec, cache=False), wanted, cases, root)


def zoomed(dataset: VolumeDataset, zoom: float, cache: bool = True) -> VolumeDataset:
    """``dataset`` resampled by ``zoom`` per axis (itself when ``zoom`` is 1)."""
    if zoom == 1.0:
        return dataset
    from medssl.data.resample import ZoomedDataset

    return ZoomedDataset(dataset, zoom, cache=cache)
