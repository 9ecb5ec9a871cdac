"""Localize a whole dataset into a ROI cache: ``medssl localize run``.

Inputs (``LocalizeRunConfig.data``):

* a dataset folder in the embedded layout: ``images/<case>.<ext>``, optional ``structures/<case>.<ext>``
  + ``structures.json``, ``labels/``, ``train.list`` / ``test.list``;
* a plain folder of images (every visible file with an image ending; sub-folders are DICOM series);
* an ImageFolder root ``<root>/[<split>/]<class>/<image>`` (every image of every split and class);
* or explicit image files (several paths, each one image).

Every image is read, localized with any registered backend (``create_localizer(backend, **params)``)
and stored in a :class:`~medssl.localize.cache.RoiCache`; images already in the cache are cache hits and
are not recomputed. The ``structures`` backend gets its context (the case's ``structures/<case>.*`` map and
the ``structures.json`` name table of the layout) automatically, so an edited map is a cache miss.

An image that fails (unreadable file, or a :class:`~medssl.errors.MedsslInputError` from the backend) is
logged on stderr and counted; the run goes on, unless ``strict`` (then the first failure is raised,
naming the file). A backend that cannot start (bad parameters, missing weights) stops the run.

Sharding: shard ``(i, n)`` takes every n-th image of the sorted list starting at i. ``devices = N``
spawns N worker processes (each one shard of the run's shard, torch CPU threads split between them, one
GPU each when there are GPUs). Under ``torchrun`` (``RANK`` / ``WORLD_SIZE`` set) each process takes its
shard from the environment (and GPU ``LOCAL_RANK``) and the processes meet at the end through a gloo
process group. After all shards: the cache manifest (``manifest.json``) is written once; every shard
writes its own summary ``runs/<utc time>_shard<i>.json`` (time shared by the shards of one run). With
explicit ``--shard i/n`` launches (separate jobs that do not meet), every shard rewrites the manifest
when it ends; the last one covers all.
"""

from __future__ import annotations

import datetime as _dt
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator, model_validator

from medssl.config import MedsslConfig
from medssl.data.io import FORMAT_SUFFIXES, read_image
from medssl.data.layouts import find_coco_annotations, imagefolder_files, is_imagefolder
from medssl.errors import MedsslInputError
from medssl.localize.cache import RoiCache
from medssl.localize.structures import find_by_stem, image_stem
from medssl.runtime.atomic import write_json_atomic
from medssl.runtime.progress import progress_bar

__all__ = [
    "LocalizeRunConfig",
    "LocalizeRunSummary",
    "backend_context",
    "distributed_shard",
    "find_by_stem",
    "list_images",
    "run_localization",
]

#: Hours the processes of a torchrun launch wait for each other at the end (shards can be uneven).
DIST_TIMEOUT_HOURS = 24


class LocalizeRunConfig(MedsslConfig):
    """Settings of one localization run (see the module docstring)."""

    data: list[Path] = Field(min_length=1, description="A dataset folder, a folder of images, or image files.")
    split: Path | None = Field(default=None, description="Case list (e.g. train.list; relative names are "
                               "looked up in the dataset folder too).")
    prompt: str = Field(description="Text prompt naming the region to localize.")
    backend: str = Field(default="structures", description="Localization backend (medssl localize backends).")
    params: dict[str, Any] = Field(default_factory=dict, description="Backend keyword arguments.")
    cache: Path = Field(description="ROI cache folder.")
    preview: int = Field(default=0, ge=0, description="Write overlay previews of the first N images.")
    strict: bool = Field(default=False, description="Stop at the first failing image.")
    shard_index: int = Field(default=0, ge=0, description="This process takes images shard_index, "
                             "shard_index + shard_count, ...")
    shard_count: int = Field(default=1, ge=1, description="Number of shards.")
    devices: int = Field(default=1, ge=1, description="Worker processes (one shard each).")
    quiet: bool = Field(default=False, description="Plain progress lines instead of a bar.")

    @field_validator("data", mode="before")
    @classmethod
    def _one_or_more(cls, value: Any) -> Any:
        return [value] if isinstance(value, str | Path) else value

    @field_validator("prompt")
    @classmethod
    def _nonempty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("the prompt is empty")
        return value

    @model_validator(mode="after")
    def _shard_in_range(self) -> LocalizeRunConfig:
        if self.shard_index >= self.shard_count:
            raise ValueError(f"shard index {self.shard_index} must be below the shard count {self.shard_count}")
        return self


@dataclass
class LocalizeRunSummary:
    """What a run did.

    Attributes:
        images: images this run was given (after split and sharding).
        computed: localized now and stored.
        cache_hits: found in the cache.
        failed: ``(file, message)`` of every image that failed.
        records: one dict per localized image: ``file``, ``key``, ``cached``, ``roi_fraction``,
            ``boxes`` (count), ``index`` (position in the full image list).
        seconds: wall time of the run (s).
        shards: number of shards whose results are included.
        cache_dir: the ROI cache folder.
        previews: preview PNGs written.
        summary_files: the ``runs/*.json`` files written.
        manifest: the cache manifest written at the end (None for shards that did not write it).
    """

    images: int = 0
    computed: int = 0
    cache_hits: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    shards: int = 1
    cache_dir: str = ""
    previews: list[str] = field(default_factory=list)
    summary_files: list[str] = field(default_factory=list)
    manifest: dict[str, Any] | None = None

    @property
    def empty_rois(self) -> int:
        """Localized images whose ROI is empty (masked uniformly at the background ratio later)."""
        return sum(1 for r in self.records if r["roi_fraction"] == 0.0)

    @property
    def mean_roi_fraction(self) -> float:
        """Mean over localized images of ROI voxels / image voxels (0.0 when none)."""
        return sum(r["roi_fraction"] for r in self.records) / len(self.records) if self.records else 0.0

    def counts(self) -> dict[str, Any]:
        """The headline numbers as a JSON-ready dict."""
        return {"images": self.images, "computed": self.computed, "cache_hits": self.cache_hits,
                "failed": len(self.failed), "empty_rois": self.empty_rois,
                "mean_roi_fraction": self.mean_roi_fraction, "seconds": round(self.seconds, 3),
                "shards": self.shards}

    def to_dict(self) -> dict[str, Any]:
        """Everything, JSON-ready (``failed`` as ``[file, message]`` pairs)."""
        out = asdict(self)
        out["failed"] = [list(f) for f in self.failed]
        out["empty_rois"] = self.empty_rois
        out["mean_roi_fraction"] = self.mean_roi_fraction
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LocalizeRunSummary:
        names = cls.__dataclass_fields__
        kwargs = {k: v for k, v in data.items() if k in names}
        kwargs["failed"] = [tuple(f) for f in data.get("failed", [])]
        return cls(**kwargs)

    @classmethod
    def merge(cls, parts: Sequence[LocalizeRunSummary], seconds: float) -> LocalizeRunSummary:
        """One summary of several shards (records in image order)."""
        out = cls(seconds=seconds, shards=sum(p.shards for p in parts),
                  cache_dir=parts[0].cache_dir if parts else "")
        for p in parts:
            out.images += p.images
            out.computed += p.computed
            out.cache_hits += p.cache_hits
            out.failed += p.failed
            out.records += p.records
            out.previews += p.previews
            out.summary_files += p.summary_files
        out.records.sort(key=lambda r: r["index"])
        out.previews.sort()
        return out

    def format(self) -> str:
        """One paragraph for the command line."""
        done = self.computed + self.cache_hits
        text = (f"Localized {done} of {self.images} images in {self.seconds:.1f} s "
                f"({self.computed} computed, {self.cache_hits} cache hits"
                f"{f', {self.shards} shards' if self.shards > 1 else ''}); "
                f"{self.empty_rois} empty ROI maps, mean ROI fraction {self.mean_roi_fraction:.3f}. "
                f"Cache: {self.cache_dir}.")
        if self.previews:
            text += f" Previews: {len(self.previews)} in {Path(self.previews[0]).parent}."
        if self.failed:
            shown = "; ".join(message for _, message in self.failed[:3])
            more = f" (+{len(self.failed) - 3} more)" if len(self.failed) > 3 else ""
            text += f" {len(self.failed)} images FAILED: {shown}{more}."
        return text


# -- inputs --------------------------------------------------------------------------------------


def _is_image_file(path: Path) -> bool:
    name = path.name.lower()
    return any(name.endswith(s) for suffixes in FORMAT_SUFFIXES.values() for s in suffixes)


def _folder_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if not p.name.startswith(".") and (p.is_dir() or (p.is_file() and _is_image_file(p))))


def _read_case_list(path: Path) -> list[str]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise MedsslInputError(path, f"cannot read the case list ({exc.__class__.__name__})") from None
    return [s for s in (line.strip() for line in lines) if s and not s.startswith("#")]


def list_images(data: Sequence[Path], split: Path | None = None) -> list[Path]:
    """The images of a run, sorted (see the module docstring for the accepted inputs).

    Args:
        data: one dataset folder / folder of images, or several image paths.
        split: optional case list; its ids are image names without their ending. A relative path that
            does not exist as given is looked up in the dataset folder.

    Raises:
        MedsslInputError: a missing path, a folder without images, or a listed case without an image.
    """
    from medssl.data.nnunet import nnunet_images, nnunet_root

    raw = nnunet_root(data[0]) if len(data) == 1 else None
    if raw is not None:
        images = nnunet_images(raw)
        return images if split is None else _listed(images, Path(split), raw)
    data = [Path(p) for p in data]
    for path in data:
        if not path.exists():
            raise MedsslInputError(path, "no such file or folder")
    root: Path | None = None
    if len(data) == 1 and data[0].is_dir():
        root = data[0]
        folder = root / "images" if (root / "images").is_dir() else root
        images = (sorted(p for classes in imagefolder_files(root).values() for ps in classes.values() for p in ps)
                  if is_imagefolder(root) else _folder_images(folder))
        if not images:
            raise MedsslInputError(folder, "no images found (expected files ending in "
                                           f"{', '.join(s for v in FORMAT_SUFFIXES.values() for s in v)})")
    else:
        images = sorted(data)
    if split is None:
        return images
    return _listed(images, Path(split), root)


def _listed(images: list[Path], split: Path, root: Path | None) -> list[Path]:
    """The ``images`` named by the case list ``split`` (a relative name is also looked up in ``root``)."""
    split_path = split
    if not split_path.is_file() and not split_path.is_absolute() and root is not None:
        split_path = root / split_path
    if not split_path.is_file():
        raise MedsslInputError(split, "case list not found" + (f" (nor in {root})" if root is not None else ""))
    wanted = _read_case_list(split_path)
    by_stem: dict[str, Path] = {}
    for path in images:
        by_stem.setdefault(image_stem(path), path)
    missing = [c for c in wanted if c not in by_stem]
    if missing:
        shown = ", ".join(missing[:5]) + (f" (+{len(missing) - 5} more)" if len(missing) > 5 else "")
        raise MedsslInputError(split_path, f"{len(missing)} listed case(s) have no image: {shown}")
    chosen = set(wanted)
    return [p for p in images if image_stem(p) in chosen]


def backend_context(backend: str, image_path: Path) -> dict[str, Any] | None:
    """The localization context a backend needs for ``image_path`` from the dataset layout (None if none).

    ``structures``: ``{"structures": <root>/structures/<case>.<ext>, "structure_names":
    <root>/structures.json}`` for an image ``<root>/images/<case>.<ext>`` (names only when the table
    exists); else ``{"coco": <root>/annotations/instances*.json}`` for a COCO layout (the categories name
    the structures); None when the layout has neither (the backend then reports what is missing).
    Other backends: None.
    """
    if backend != "structures":
        return None
    root = image_path.parent.parent
    found = find_by_stem(root / "structures", image_stem(image_path))
    if found is None:
        try:
            return {"coco": find_coco_annotations(root)}
        except MedsslInputError:
            return None
    context: dict[str, Any] = {"structures": found}
    if (root / "structures.json").is_file():
        context["structure_names"] = root / "structures.json"
    return context


def distributed_shard(environ: Mapping[str, str]) -> tuple[int, int] | None:
    """``(RANK, WORLD_SIZE)`` when launched by torchrun with more than one process, else None."""
    rank, world = environ.get("RANK", ""), environ.get("WORLD_SIZE", "")
    if rank.isdigit() and world.isdigit() and int(world) > 1 and int(rank) < int(world):
        return int(rank), int(world)
    return None


# -- one shard -----------------------------------------------------------------------------------


def _utc_stamp() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _naming_file(err: MedsslInputError, path: Path) -> MedsslInputError:
    """``err`` if its message names ``path``, else the same problem prefixed with ``path``."""
    return err if str(path) in str(err) else MedsslInputError(path, str(err))


def _run_shard(cfg: LocalizeRunConfig, images: Sequence[Path], shard: tuple[int, int], run_time: str,
               log: Callable[[str], None], show_progress: bool) -> LocalizeRunSummary:
    """Localize ``images[shard[0]::shard[1]]`` into the cache and write this shard's summary file."""
    from medssl.localize import create_localizer
    from medssl.localize.preview import write_localization_preview

    t0 = time.monotonic()
    index, count = shard
    mine = list(range(index, len(images), count))
    cache = RoiCache(cfg.cache)
    localizer = create_localizer(cfg.backend, **cfg.params)
    if mine:  # a backend that cannot start (e.g. missing weights) is a user error, not one failure per image
        _ = (localizer.model_id, localizer.model_revision, localizer.params())
    summary = LocalizeRunSummary(images=len(mine), cache_dir=str(cfg.cache))
    what = "localize" if count == 1 else f"localize shard {index}/{count}"
    with progress_bar(len(mine), what, quiet=cfg.quiet, rank=0 if show_progress else 1) as bar:
        for i in mine:
            path = images[i]
            try:
                image = read_image(path)
                context = backend_context(cfg.backend, path)
                key = cache.key(image, cfg.prompt, localizer, context)
                result = cache.get(image, cfg.prompt, localizer, context, with_intermediates=i < cfg.preview)
                cached = result is not None
                if result is None:
                    result = localizer.localize(image, cfg.prompt, context)
                    cache.put(image, cfg.prompt, localizer, result, context)
            except (MedsslInputError, OSError) as exc:
                err = exc if isinstance(exc, MedsslInputError) else MedsslInputError(path, f"cannot read ({exc})")
                err = _naming_file(err, path)
                if cfg.strict:
                    raise err from (None if err is exc else exc)
                log(f"localize: failed {err}")
                summary.failed.append((str(path), str(err)))
                bar.advance()
                continue
            summary.computed += not cached
            summary.cache_hits += cached
            summary.records.append({"index": i, "file": str(path), "key": key, "cached": cached,
                                    "roi_fraction": result.roi_fraction, "boxes": len(result.boxes)})
            if i < cfg.preview:
                out = cfg.cache / "previews" / f"{image_stem(path)}_{key[:12]}.png"
                summary.previews.append(str(write_localization_preview(out, image, result, prompt=cfg.prompt)))
            bar.advance()
    summary.seconds = time.monotonic() - t0
    run_file = cfg.cache / "runs" / f"{run_time}_shard{index}.json"
    write_json_atomic(run_file, {
        "time_utc": run_time, "shard": [index, count], "command": list(sys.argv),
        "config": cfg.model_dump(mode="json"), **summary.counts(),
        "failures": [list(f) for f in summary.failed], "records": summary.records,
    })
    summary.summary_files.append(str(run_file))
    return summary


# -- several processes ---------------------------------------------------------------------------


def _gpu_count() -> int:
    """NVIDIA GPUs the driver lists (0 without the driver); counted without importing torch."""
    gpus = Path("/proc/driver/nvidia/gpus")
    try:
        return sum(1 for _ in gpus.iterdir()) if gpus.is_dir() else 0
    except OSError:
        return 0


def _setup_worker(slot: int, threads: int) -> None:
    """Give a spawned worker its share of CPU threads and its own GPU (when there are GPUs).

    Works through the environment before torch is imported (``OMP_NUM_THREADS``, ``MKL_NUM_THREADS``,
    ``CUDA_VISIBLE_DEVICES`` narrowed to one device: the ``slot``-th visible one, cyclically).
    """
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    if not visible and "CUDA_VISIBLE_DEVICES" not in os.environ:
        visible = [str(i) for i in range(_gpu_count())]
    if visible:
        os.environ["CUDA_VISIBLE_DEVICES"] = visible[slot % len(visible)]
    if "torch" in sys.modules:  # only when something imported it already
        sys.modules["torch"].set_num_threads(threads)


def _worker(job: tuple[dict[str, Any], list[str], int, int, str, int]) -> tuple[str, Any]:
    """Spawned process: one shard. Returns ("ok", summary dict) or ("error", (source, problem))."""
    cfg_data, image_names, slot, count, run_time, threads = job
    _setup_worker(slot, threads)
    cfg = LocalizeRunConfig.model_validate(cfg_data)
    try:
        summary = _run_shard(cfg, [Path(p) for p in image_names], (slot, count), run_time, _stderr,
                             show_progress=slot == 0)
    except MedsslInputError as err:  # its pickled form would lose (source, problem)
        return "error", (err.source, err.problem)
    return "ok", summary.to_dict()


def _run_spawned(cfg: LocalizeRunConfig, images: list[Path], run_time: str) -> list[LocalizeRunSummary]:
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    n = cfg.devices * cfg.shard_count
    slots = [cfg.shard_index + j * cfg.shard_count for j in range(cfg.devices)]
    threads = max(1, (os.cpu_count() or 1) // cfg.devices)
    data = cfg.model_dump(mode="json")
    jobs = [(data, [str(p) for p in images], slot, n, run_time, threads) for slot in slots]
    with ProcessPoolExecutor(max_workers=cfg.devices, mp_context=mp.get_context("spawn")) as pool:
        outcomes = list(pool.map(_worker, jobs))
    for status, payload in outcomes:
        if status == "error":
            raise MedsslInputError(*payload)
    return [LocalizeRunSummary.from_dict(payload) for _, payload in outcomes]


def _run_torchrun(cfg: LocalizeRunConfig, images: list[Path], rank: int, world: int,
                  log: Callable[[str], None]) -> tuple[list[LocalizeRunSummary], bool]:
    """This process's shard under torchrun; (the summaries of every shard when they met, whether they met)."""
    import torch
    import torch.distributed as dist

    if torch.cuda.is_available():  # one GPU per process ("cuda" means the current device)
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", rank)) % torch.cuda.device_count())
    created = False
    if not dist.is_initialized() and os.environ.get("MASTER_ADDR") and os.environ.get("MASTER_PORT"):
        dist.init_process_group("gloo", rank=rank, world_size=world,
                                timeout=_dt.timedelta(hours=DIST_TIMEOUT_HOURS))
        created = True
    met = dist.is_initialized()
    try:
        stamp = [_utc_stamp()]
        if met:
            dist.broadcast_object_list(stamp, src=0)
        slot, n = cfg.shard_index + rank * cfg.shard_count, cfg.shard_count * world
        error: tuple[str | None, str] | None = None
        summary = None
        try:
            summary = _run_shard(cfg, images, (slot, n), stamp[0], log, show_progress=rank == 0)
        except MedsslInputError as err:
            error = (err.source, err.problem)
        payload = ("error", error) if error is not None else ("ok", summary.to_dict())  # type: ignore[union-attr]
        gathered: list[Any] = [payload]
        if met:
            gathered = [None] * world
            dist.all_gather_object(gathered, payload)
    finally:
        if created:
            dist.destroy_process_group()
    for status, item in gathered:
        if status == "error":
            raise MedsslInputError(*item)
    return [LocalizeRunSummary.from_dict(item) for _, item in gathered], met


def run_localization(cfg: LocalizeRunConfig, *, log: Callable[[str], None] | None = None) -> LocalizeRunSummary:
    """Localize every image of ``cfg.data`` into ``cfg.cache`` (see the module docstring).

    With ``cfg.devices > 1`` the workers are spawned processes: a script calling this must do so
    under ``if __name__ == "__main__":``.

    Args:
        cfg: the run settings.
        log: receives one line per failing image (default: printed on stderr).

    Returns:
        The summary of the whole run (every shard's part when the shards ran here or met under
        torchrun; this process's shard otherwise).

    Raises:
        MedsslInputError: bad inputs or backend settings; with ``strict``, the first failing image.
    """
    log = _stderr if log is None else log
    t0 = time.monotonic()
    images = list_images(cfg.data, cfg.split)
    dist_shard = distributed_shard(os.environ)
    if dist_shard is not None and cfg.devices > 1:
        raise MedsslInputError("--devices", "torchrun already starts one process per device; use --devices 1")
    if cfg.devices > 1:
        parts = _run_spawned(cfg, images, _utc_stamp())
        write_manifest = True
    elif dist_shard is not None:
        parts, met = _run_torchrun(cfg, images, *dist_shard, log)
        write_manifest = dist_shard[0] == 0 or not met
    else:
        parts = [_run_shard(cfg, images, (cfg.shard_index, cfg.shard_count), _utc_stamp(), log, show_progress=True)]
        write_manifest = True
    summary = LocalizeRunSummary.merge(parts, seconds=time.monotonic() - t0)
    if write_manifest:
        summary.manifest = RoiCache(cfg.cache).manifest()
    return summary

