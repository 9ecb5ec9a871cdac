"""Masked image pretraining (SparK, Mask What Matters): configuration, training and encoder export.

The Python API behind ``medssl pretrain``::

    from medssl.config import load_config
    from medssl.engine.pretrain import PretrainConfig, train_pretrain
    from medssl.engine.pretrain_export import export_encoder

    cfg = load_config(PretrainConfig, "configs/pretrain/brain2d_resnet18_guided.yaml",
                      base={"runtime": {"name": "mwm"}, "data": {"folder": "data/brain2d",
                                                                 "roi_cache": "data/brain2d_roi"}})
    result = train_pretrain(cfg)                              # runs/mwm/...
    export_encoder(result.run_dir, "timm", "resnet18_mwm.pt")  # loads into timm.create_model(...)

One training step: the batch of the iteration (:class:`medssl.data.pretrain.PretrainBatches`), a patch
mask drawn fresh from a generator seeded by (seed, iteration, rank) — uniform (``random``, SparK) or
region-guided from the batch's ROI maps (``guided``: ROI patches masked at ``r_roi``, background at
``r_bg``) — and the SparK loss on the masked patches. Learning rate (warm-up + cosine), weight decay
(cosine) and LAMB follow :mod:`medssl.engine.schedules`. Everything else (checkpoints, exact resume,
``metrics.csv`` + TensorBoard, devices, precision, gradient clipping) is
:func:`medssl.engine.loop.train_iterations`.

Logged per logged step (phase ``train``): ``loss``, ``lr``, ``wd``, ``mask_ratio`` (overall masked
fraction), ``mask_ratio_roi``, ``mask_ratio_bg`` (from :func:`medssl.masking.mask_ratios`; NaN when the
batch has no ROI / background patch) and ``roi_patch_fraction``; per epoch (phase ``epoch``) their means.
The expected overall ratio is in the manifest (``pretrain.expected_mask_ratio``) and in ``summary.json``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from pydantic import Field, field_validator
from torch import Tensor

from medssl.config import MedsslConfig, RuntimeConfig
from medssl.data.pretrain import (
    PretrainBatch,
    PretrainBatches,
    PretrainDataConfig,
    PretrainDataset,
    open_pretrain_dataset,
)
from medssl.engine.loop import LoopResult, LoopSpec, PeriodicTask, train_iterations
from medssl.engine.pretrain_logs import EpochMeans
from medssl.engine.schedules import (
    apply_weight_decay,
    build_lamb,
    cosine_weight_decay,
    lr_factor,
    param_groups,
    peak_lr,
)
from medssl.errors import MedsslInputError
from medssl.masking import (
    expected_overall_ratio,
    guided_mask,
    keep_count,
    mask_ratios,
    parse_rule,
    patch_grid,
    random_mask,
    roi_patch_labels,
)
from medssl.runtime.atomic import write_json_atomic
from medssl.runtime.rundir import PrepareMode
from medssl.runtime.session import start_run

if TYPE_CHECKING:

    pass

__all__ = [
    "MaskingConfig",
    "PretrainConfig",
    "PretrainModelConfig",
    "PretrainOptimConfig",
    "PretrainResult",
    "draw_mask",
    "expected_mask_ratios",
    "mask_generator",
    "train_pretrain",
]

_MASK_STREAM, _PREVIEW_STREAM = 21, 22


# ---------------------------------------------------------------------------------------- config
class PretrainModelConfig(MedsslConfig):
    """The encoder to pretrain and its SparK decoder (see :func:`medssl.models.spark.build_spark`)."""

    backbone: str = Field("resnet50", description="timm model name (2D) or 'vnet' (3D).")
    dims: Literal[2, 3] = Field(2, description="2 for images, 3 for volumes.")
    in_chans: int = Field(1, ge=1, description="Image channels.")
    input_mode: Literal["native", "replicate3"] = Field(
        "native", description="replicate3: grayscale replicated to 3 encoder channels (reference).")
    decoder_width: int | None = Field(None, ge=1, description="Decoder width at the deepest scale "
                                      "(default 768 in 2D, the deepest encoder width in 3D).")
    drop_path: float = Field(0.0, ge=0, lt=1, description="Stochastic depth of timm encoders.")
    vnet_width: int = Field(16, ge=1, description="Base width of the 3D V-Net encoder.")


class MaskingConfig(MedsslConfig):
    """Patch masks: ``random`` (SparK: ``ratio`` of the patches) or ``guided`` (``ratios`` = (r_roi, r_bg))."""

    kind: Literal["random", "guided"] = Field("random", description="random | guided.")
    ratio: float = Field(0.6, ge=0, le=1, description="random: fraction of patches masked.")
    ratios: tuple[float, float] = Field((0.8, 0.4), description="guided: mask ratio inside the ROI and "
                                        "in the background.")
    rule: str = Field("topleft", description="ROI label of a patch: topleft | any | center | fraction>=t.")
    counts: Literal["floor", "stochastic"] = Field(
        "floor", description="guided: kept-patch counts per sample, floor(|R|(1-r_roi)) and floor(|B|(1-r_bg)) "
        "(the spec's rule) or stochastic rounding (masked fractions exactly r_roi / r_bg on average; for "
        "coarse grids, e.g. 3D, where flooring hides a small ROI completely).")

    @field_validator("ratios")
    @classmethod
    def _ratios_in_range(cls, value: tuple[float, float]) -> tuple[float, float]:
        for r in value:
            if not (math.isfinite(r) and 0.0 <= r <= 1.0):
                raise ValueError(f"each ratio must be in [0, 1], got {list(value)}")
        return value

    @field_validator("rule")
    @classmethod
    def _known_rule(cls, value: str) -> str:
        try:
            parse_rule(value)
        except MedsslInputError as err:
            raise ValueError(err.problem) from None
        return value


class PretrainOptimConfig(MedsslConfig):
    """LAMB with warm-up + cosine learning rate and cosine weight decay (the SparK recipe, Tian et al., ICLR 2023, arXiv:2301.03580, used by Mask What Matters, arXiv:2509.23054; LAMB: You et al., ICLR 2020).

    ``batch_size`` counts the images of one step over all processes; the peak learning rate is
    ``base_lr * batch_size / 256``.
    """

    batch_size: int = Field(128, ge=1, description="Images per step, all processes together.")
    epochs: int = Field(500, ge=1)
    base_lr: float = Field(2e-4, gt=0, description="Learning rate per 256 images.")
    betas: tuple[float, float] = (0.9, 0.95)
    wd_start: float = Field(0.04, ge=0)
    wd_end: float = Field(0.2, ge=0)
    warmup_epochs: float = Field(40, ge=0)
    min_lr_ratio: float = Field(1e-3, ge=0, le=1, description="Final learning rate / peak.")
    grad_clip: float | None = Field(5.0, gt=0, description="Maximum global gradient norm (None: off).")


class PretrainConfig(MedsslConfig):
    """Everything ``medssl pretrain run`` needs; presets live in ``configs/pretrain/``."""

    runtime: RuntimeConfig
    data: PretrainDataConfig
    model: PretrainModelConfig = Field(default_factory=PretrainModelConfig)
    masking: MaskingConfig = Field(default_factory=MaskingConfig)
    optim: PretrainOptimConfig = Field(default_factory=PretrainOptimConfig)
    preview_every: int = Field(0, ge=0, description="Reconstruction previews every N epochs (0: only at the end).")
    preview_images: int = Field(4, ge=0, le=16, description="Images in a preview (0: no previews).")


@dataclass
class PretrainResult:
    """A finished pretraining run (``summary`` is also ``<run>/summary.json``)."""

    run_dir: Path
    loop: LoopResult
    summary: dict[str, Any] = field(default_factory=dict)
    global_rank: int = 0


# ------------------------------------------------------------------------------------- masks
def mask_generator(seed: int, iteration: int, rank: int = 0, stream: int = _MASK_STREAM) -> torch.Generator:
    """CPU generator of the patch mask of ``iteration`` on ``rank`` (a pure function of its arguments)."""
    ss = np.random.SeedSequence([int(seed), int(stream), int(iteration), int(rank)])
    return torch.Generator().manual_seed(int(ss.generate_state(1, dtype=np.uint64)[0]) & (2**63 - 1))


def draw_mask(masking: MaskingConfig, roi_patches: Tensor, generator: torch.Generator) -> Tensor:
    """A fresh (B, *grid) visibility mask (True = visible) for ROI patch labels (B, *grid)."""
    if masking.kind == "guided":
        return guided_mask(roi_patches, masking.ratios[0], masking.ratios[1], generator, masking.counts)
    return random_mask(roi_patches.shape[0], roi_patches.shape[1:], masking.ratio, generator)


def expected_mask_ratios(dataset: PretrainDataset, patch: int, masking: MaskingConfig) -> dict[str, Any]:
    """Expected masked fractions over the images' untransformed views (2D resized, 3D central crop).

    Returns ``overall`` (mean over images of the spec's (|R| r_roi + |B| r_bg) / N, or ``ratio`` for
    random masking), ``overall_fixed_count`` (mean of the exact fraction the fixed-count masks give,
    floor / round included; the expected fraction for stochastic counts), ``roi_patch_fraction`` (mean |R| / N) and ``images_with_roi_patches``.
    """
    spec, exact, fractions = [], [], []
    with_roi = 0
    for i in range(len(dataset)):
        labels = roi_patch_labels(torch.from_numpy(dataset.base_roi(i))[None], patch, masking.rule)[0]
        n, n_roi = labels.numel(), int(labels.sum())
        with_roi += n_roi > 0
        fractions.append(n_roi / n)
        if masking.kind == "guided":
            r_roi, r_bg = masking.ratios
            spec.append(expected_overall_ratio(n_roi, n - n_roi, r_roi, r_bg))
            if masking.counts == "stochastic":  # unbiased: the expected count is the exact product
                kept = n_roi * (1 - r_roi) + (n - n_roi) * (1 - r_bg)
            else:
                kept = keep_count(n_roi, r_roi, "floor") + keep_count(n - n_roi, r_bg, "floor")
        else:
            spec.append(masking.ratio)
            kept = keep_count(n, masking.ratio, "round")
        exact.append(1.0 - kept / n)
    return {"kind": masking.kind, "overall": float(np.mean(spec)), "overall_fixed_count": float(np.mean(exact)),
            "roi_patch_fraction": float(np.mean(fractions)), "images_with_roi_patches": int(with_roi),
            "images": len(dataset)}


# ------------------------------------------------------------------------------------ checks
def _patch_size(model: PretrainModelConfig) -> int:
    """The mask patch (the encoder's total stride): 16 for the V-Net, 32 for timm ResNet / ConvNeXt."""
    return 16 if model.backbone == "vnet" else 32


def _check_model(model: PretrainModelConfig) -> None:
    if model.dims == 3 and model.backbone != "vnet":
        raise MedsslInputError("model.backbone", f"3D pretraining uses the 'vnet' encoder, got {model.backbone!r}")
    if model.dims == 2:
        if model.backbone == "vnet":
            raise MedsslInputError("model.backbone", "the 'vnet' encoder is 3D; use --dims 3 (model.dims=3)")
        import timm

        if not timm.is_model(model.backbone):
            raise MedsslInputError("model.backbone", f"unknown timm model {model.backbone!r} "
                                   "(e.g. resnet18, resnet50, convnext_tiny)")
    if model.input_mode == "replicate3" and model.in_chans != 1:
        raise MedsslInputError("model.input_mode", f"replicate3 needs 1-channel images, got in_chans={model.in_chans}")


def _check_roi_source(cfg: PretrainConfig) -> None:
    if cfg.masking.kind == "guided" and cfg.data.roi_cache is None:
        raise MedsslInputError("data.roi_cache", "guided masking needs ROI maps: give --roi-cache DIR "
                               "(filled by medssl localize run)")


def _check_masking(cfg: PretrainConfig, grid: Sequence[int]) -> None:
    """Every mask must hide at least one patch (SparK scores masked patches only)."""
    n = math.prod(grid)
    if cfg.masking.kind == "guided":
        if max(cfg.masking.ratios) <= 0.0:
            raise MedsslInputError("masking.ratios", "both ratios are 0: nothing would be masked")
    elif keep_count(n, cfg.masking.ratio, "round") >= n:
        raise MedsslInputError("masking.ratio", f"ratio {cfg.masking.ratio} masks no patch of the {n}-patch grid")


# -------------------------------------------------------------------------------------- training
def train_pretrain(cfg: PretrainConfig, mode: PrepareMode = "new", *,
                   command: Sequence[str] | None = None) -> PretrainResult:
    """Pretrain an encoder with SparK and random or region-guided masks.

    Args:
        cfg: the resolved configuration.
        mode: ``"new"``, ``"resume"`` (continue exactly from the latest checkpoint) or ``"overwrite"``.
        command: the command line recorded in the manifest.

    Returns:
        the run directory, the loop result and the summary (also written to ``<run>/summary.json``).

    Raises:
        MedsslInputError: bad data, ROI maps, model or masking settings; raised before anything is written.
    """
    from medssl.models.spark import build_spark

    _check_model(cfg.model)
    _check_roi_source(cfg)
    dataset, data_report = open_pretrain_dataset(cfg.data, dims=cfg.model.dims, in_chans=cfg.model.in_chans,
                                                 seed=cfg.runtime.seed)
    patch = _patch_size(cfg.model)
    shape = dataset.output_shape
    try:
        grid = patch_grid(shape, patch)
    except MedsslInputError:
        key = "data.image_size" if cfg.model.dims == 2 else "data.crop_size"
        raise MedsslInputError(key, f"image size {tuple(shape)} must be divisible by the encoder's total "
                               f"stride {patch}") from None
    _check_masking(cfg, grid)
    expected = expected_mask_ratios(dataset, patch, cfg.masking)
    extra = {"pretrain": {"expected_mask_ratio": expected, "data": data_report, "grid": list(grid),
                          "patch_size": patch}}
    data_paths: list[Path] = [Path(cfg.data.folder)]
    if cfg.data.roi_cache is not None:
        data_paths.append(Path(cfg.data.roi_cache))
    session = start_run(cfg.runtime, cfg, mode, command=command, data_paths=data_paths, extra=extra)
    fabric, run = session.fabric, session.run
    world, rank = fabric.world_size, fabric.global_rank
    if cfg.optim.batch_size % world:
        raise MedsslInputError("optim.batch_size", f"{cfg.optim.batch_size} images per step do not split "
                               f"evenly over {world} processes")
    if data_report["missing_roi"] and rank == 0:
        fabric.print(f"{data_report['missing_roi']} of {data_report['images']} image(s) have no ROI entry: "
                     "masked uniformly at the background ratio")

    spark = build_spark(cfg.model.backbone, dims=cfg.model.dims, in_chans=cfg.model.in_chans,
                        input_mode=cfg.model.input_mode, decoder_width=cfg.model.decoder_width,
                        drop_path=cfg.model.drop_path, vnet_width=cfg.model.vnet_width)
    if spark.patch_size != patch:
        raise MedsslInputError("model.backbone", f"{cfg.model.backbone} has total stride {spark.patch_size}; "
                               f"medssl pretraining supports encoders of stride {patch}")
    lr = peak_lr(cfg.optim.base_lr, cfg.optim.batch_size)
    optimizer = build_lamb(param_groups(spark, cfg.optim.wd_start), lr=lr, betas=cfg.optim.betas)
    model, optimizer = fabric.setup(spark, optimizer)

    batches = PretrainBatches(dataset, cfg.optim.batch_size // world, cfg.runtime.seed, rank, world, fabric.device)
    per_epoch = batches.iterations_per_epoch
    total = cfg.optim.epochs * per_epoch
    warmup = int(round(cfg.optim.warmup_epochs * per_epoch))
    means = EpochMeans()
    masking, seed = cfg.masking, cfg.runtime.seed

    def step_fn(batch: PretrainBatch, iteration: int) -> tuple[Tensor, dict[str, float]]:
        wd = cosine_weight_decay(iteration, total, cfg.optim.wd_start, cfg.optim.wd_end)
        apply_weight_decay(optimizer, wd)
        labels = roi_patch_labels(batch.roi, patch, masking.rule)
        visible = draw_mask(masking, labels, mask_generator(seed, iteration, rank))
        out = model(batch.image, visible.to(fabric.device, non_blocking=True))
        ratios = mask_ratios(visible, labels)
        logs = {"wd": wd, "mask_ratio": ratios["overall"], "mask_ratio_roi": ratios["roi"],
                "mask_ratio_bg": ratios["background"], "roi_patch_fraction": float(labels.float().mean())}
        means.add(out.loss, logs)
        return out.loss, logs

    def epoch_means(done: int) -> dict[str, float]:
        values = means.means(fabric)
        values["epoch"] = float(done // per_epoch)
        means.reset()
        return values

    figures: list[str] = []

    def preview(done: int, name: str | None = None) -> None:
        from medssl.engine.pretrain_preview import write_preview

        if rank != 0 or cfg.preview_images == 0:
            return
        epoch = done // per_epoch
        path = run.figures / (name or f"preview_epoch_{epoch:04d}.png")
        write_preview(spark, dataset, masking, path, seed=seed, n_images=cfg.preview_images, device=fabric.device,
                      title=f"{run.root.name}: {masking.kind} masking, epoch {epoch}, iteration {done}")
        figures.append(str(path))

    periodic = [PeriodicTask(per_epoch, epoch_means, phase="epoch")]
    if cfg.preview_every:
        periodic.append(PeriodicTask(cfg.preview_every * per_epoch, lambda done: preview(done), phase="preview"))
    spec = LoopSpec.from_runtime(cfg.runtime, total, grad_clip=cfg.optim.grad_clip,
                                 lr_schedule=lambda i: lr_factor(i, total, warmup, cfg.optim.min_lr_ratio))
    t0 = time.monotonic()
    loop = train_iterations(fabric, run, model, optimizer, batches, step_fn, spec,
                            extra_state={"epoch_means": means}, periodic=periodic, resume=session.resume,
                            quiet=cfg.runtime.quiet)
    preview(total, "preview_final.png")
    summary = {
        "run": str(run.root), "backbone": cfg.model.backbone, "dims": cfg.model.dims, "masking": cfg.masking.model_dump(),
        "images": len(dataset), "world_size": world, "batch_size": cfg.optim.batch_size,
        "iterations_per_epoch": per_epoch, "epochs": cfg.optim.epochs, "iterations": total,
        "warmup_iterations": warmup, "peak_lr": lr, "patch_size": patch, "grid": list(grid),
        "expected_mask_ratio": expected, "data": data_report, "last_logs": loop.last_logs,
        "start_iteration": loop.start_iteration, "seconds": time.monotonic() - t0, "figures": figures,
    }
    if rank == 0:
        write_json_atomic(run.root / "summary.json", summary)
    return PretrainResult(run_dir=run.root, loop=loop, summary=summary, global_rank=rank)


_EXPORT_NAMES = ("EncoderExport", "export_encoder", "export_encoder_checked", "read_pretrain_config")


def __getattr__(name: str) -> Any:
    """The export API moved to :mod:`medssl.engine.pretrain_export`; still reachable from here."""
    if name in _EXPORT_NAMES:
        from medssl.engine import pretrain_export

        return getattr(pretrain_export, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
