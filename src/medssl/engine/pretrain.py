"""Masked image pretraining (SparK, Mask What Matters): configuration, training and encoder export.

The Python API behind ``medssl pretrain``::

    from medssl.config import load_config
    from medssl.engine.pretrain import PretrainConfig, train_pretrain, export_encoder
    from medssl.presets import preset_path

    cfg = load_config(PretrainConfig, preset_path("brain2d_resnet18_guided", "pretrain"),
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
from typing import TYPE_CHECKING, Any, Literal, cast

import numpy as np
import torch
import yaml
from pydantic import Field, field_validator
from torch import Tensor

from medssl.config import MedsslConfig, RuntimeConfig, load_config
from medssl.data.pretrain import (
    PretrainBatch,
    PretrainBatches,
    PretrainDataConfig,
    PretrainDataset,
    open_pretrain_dataset,
)
from medssl.engine.loop import LoopResult, LoopSpec, PeriodicTask, train_iterations
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
from medssl.runtime.atomic import atomic_path, write_json_atomic
from medssl.runtime.checkpoint import CheckpointManager, load_checkpoint, save_checkpoint
from medssl.runtime.rundir import PrepareMode, RunDir, discard_failed_start
from medssl.runtime.session import start_run

if TYPE_CHECKING:
    from lightning.fabric import Fabric

    from medssl.models.spark import SparK

__all__ = [
    "EncoderExport",
    "MaskingConfig",
    "PretrainConfig",
    "PretrainModelConfig",
    "PretrainOptimConfig",
    "PretrainResult",
    "draw_mask",
    "expected_mask_ratios",
    "export_encoder",
    "export_encoder_checked",
    "mask_generator",
    "read_pretrain_config",
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
    """LAMB with warm-up + cosine learning rate and cosine weight decay (spec/mwm.md section 4).

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
    """Everything ``medssl pretrain run`` needs; presets: ``medssl presets pretrain``."""

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


# ----------------------------------------------------------------------------------- epoch means
class EpochMeans:
    """Running sums of the step logs of the current epoch (checkpointed, so a resumed epoch's means are
    those of an uninterrupted run). The loss sum stays on its device to avoid a sync per step."""

    KEYS = ("mask_ratio", "mask_ratio_roi", "mask_ratio_bg", "roi_patch_fraction")

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.loss_sum: Tensor | float = 0.0
        self.steps = 0
        self.sums = dict.fromkeys(self.KEYS, 0.0)
        self.counts = dict.fromkeys(self.KEYS, 0)

    def add(self, loss: Tensor, logs: dict[str, float]) -> None:
        self.loss_sum = self.loss_sum + loss.detach().double()
        self.steps += 1
        for key in self.KEYS:
            value = float(logs[key])
            if math.isfinite(value):
                self.sums[key] += value
                self.counts[key] += 1

    def means(self, fabric: Fabric) -> dict[str, float]:
        """Means over the epoch's steps (and processes); NaN for a value never defined."""
        loss = self.loss_sum.item() if isinstance(self.loss_sum, Tensor) else float(self.loss_sum)
        values = [loss, float(self.steps)] + [self.sums[k] for k in self.KEYS] + \
            [float(self.counts[k]) for k in self.KEYS]
        if fabric.world_size > 1:
            reduced = cast(torch.Tensor, fabric.all_reduce(
                torch.tensor(values, dtype=torch.float64, device=fabric.device), reduce_op="sum"))
            values = [float(v) for v in reduced.tolist()]
        k = len(self.KEYS)
        out = {"loss": values[0] / max(values[1], 1.0)}
        for key, total, count in zip(self.KEYS, values[2:2 + k], values[2 + k:], strict=True):
            out[key] = total / count if count else math.nan
        return out

    def state_dict(self) -> dict[str, Any]:
        loss = self.loss_sum.item() if isinstance(self.loss_sum, Tensor) else float(self.loss_sum)
        return {"loss_sum": loss, "steps": self.steps, "sums": dict(self.sums), "counts": dict(self.counts)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.loss_sum = float(state["loss_sum"])
        self.steps = int(state["steps"])
        self.sums = {k: float(state["sums"][k]) for k in self.KEYS}
        self.counts = {k: int(state["counts"][k]) for k in self.KEYS}


# -------------------------------------------------------------------------------------- previews
def _display(x: np.ndarray, dims: int) -> np.ndarray:
    """(C, *S) -> a 2D array to show: channel mean; 3D: the middle slice along the last axis."""
    img = x.mean(axis=0)
    return img[..., img.shape[-1] // 2] if dims == 3 else img


def write_preview(spark: SparK, dataset: PretrainDataset, masking: MaskingConfig, path: Path, *, seed: int,
                  n_images: int, device: torch.device, title: str) -> Path:
    """PNG of the first ``n_images`` images (untransformed views): input (ROI outlined), visible patches,
    and the reconstruction (masked patches from the model, visible ones from the input). 3D: middle slice
    along the last axis. The mask is drawn from a fixed seed, so previews of different epochs compare."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from medssl.masking import upsample_mask

    n = min(n_images, len(dataset))
    views = [dataset.base(i) for i in range(n)]
    image = torch.from_numpy(np.stack([v[0] for v in views]))
    roi = torch.from_numpy(np.stack([v[1] for v in views]))
    labels = roi_patch_labels(roi, spark.patch_size, masking.rule)
    visible = draw_mask(masking, labels, mask_generator(seed, 0, 0, _PREVIEW_STREAM))
    was_training = spark.training
    spark.eval()
    try:
        with torch.no_grad():
            out = spark(image.to(device, dtype=next(spark.parameters()).dtype), visible.to(device))
    finally:
        spark.train(was_training)
    keep = upsample_mask(visible, image.shape[2:]).float()
    recon = out.reconstruction.float().cpu() * (1 - keep) + image * keep
    scale = np.float32(dataset.std)
    shift = np.float32(dataset.mean)
    fig, axes = plt.subplots(n, 3, figsize=(7.5, 2.6 * n), squeeze=False)
    for row in range(n):
        panels = [image[row].numpy(), out.masked_input[row].float().cpu().numpy(), recon[row].numpy()]
        shown = [_display(p * scale + shift, dataset.dims) for p in panels]
        lo, hi = np.percentile(shown[0], [1, 99])
        hi = hi if hi > lo else lo + 1
        masked = ~_display(keep[row].numpy(), dataset.dims).astype(bool)
        for col, (ax, arr) in enumerate(zip(axes[row], shown, strict=True)):
            ax.imshow(arr, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
            if col == 1:
                ax.imshow(np.ma.masked_where(~masked, masked), cmap="autumn", alpha=0.35, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
        roi_slice = _display(roi[row].numpy()[None].astype(np.float32), dataset.dims)
        if roi_slice.any():
            axes[row][0].contour(roi_slice, levels=[0.5], colors="lime", linewidths=0.8)
        ratio = 1.0 - float(visible[row].float().mean())
        axes[row][0].set_ylabel(dataset.files[row].name, fontsize=7)
        if row == 0:
            where = "; middle slice" if dataset.dims == 3 else ""
            axes[row][0].set_title(f"input (ROI outlined{where})", fontsize=8)
            axes[row][1].set_title("visible patches", fontsize=8)
            axes[row][2].set_title("reconstruction", fontsize=8)
        axes[row][1].set_xlabel(f"{ratio:.0%} of the patches masked", fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path


# -------------------------------------------------------------------------------------- training
@discard_failed_start()
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
    from medssl.data.nnunet import nnunet_root
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
    data_paths: list[Path] = [nnunet_root(cfg.data.folder) or Path(cfg.data.folder)]
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


# ---------------------------------------------------------------------------------------- export
def read_pretrain_config(run_dir: str | Path) -> PretrainConfig:
    """The resolved :class:`PretrainConfig` saved in a pretraining run directory."""
    run = RunDir.open(run_dir)
    if not run.config_yaml.is_file():
        raise MedsslInputError(run.root, "run has no config.yaml")
    data = yaml.safe_load(run.config_yaml.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or "masking" not in data or "model" not in data:
        raise MedsslInputError(run.config_yaml, "not a pretraining run (no model / masking settings)")
    return load_config(PretrainConfig, base=data)


@dataclass
class EncoderExport:
    """An exported encoder: the weights file, its JSON sidecar and the strict-load check that passed."""

    path: Path
    sidecar: Path
    format: str
    target: str
    tensors: int
    parameters: int
    check: str


def export_encoder_checked(run_dir: str | Path, format: Literal["timm", "vnet"], out: str | Path,
                           checkpoint: str = "final") -> EncoderExport:
    """Write the run's encoder weights as a plain state dict and check they load strictly.

    ``timm`` (2D runs): key names of ``timm.create_model(backbone, num_classes=0, in_chans=...)``;
    ``vnet`` (3D runs): key names of :class:`medssl.models.vnet.VNetEncoder` (what
    ``medssl semi train --init-encoder`` loads). A JSON sidecar ``<out>.json`` records the run, checkpoint,
    backbone, input mode and intensity normalisation.

    Raises:
        MedsslInputError: wrong format for the run, missing checkpoint, or weights that do not load.
    """
    from medssl.models.spark import build_spark, dense_encoder

    if format not in ("timm", "vnet"):
        raise MedsslInputError("--format", f"expected timm or vnet, got {format!r}")
    cfg = read_pretrain_config(run_dir)
    m = cfg.model
    if format == "timm" and m.dims != 2:
        raise MedsslInputError(run_dir, "is a 3D V-Net run: export it with --format vnet")
    if format == "vnet" and m.dims != 3:
        raise MedsslInputError(run_dir, f"is a 2D {m.backbone} run: export it with --format timm")
    manager = CheckpointManager(RunDir(Path(run_dir)).checkpoints)
    which: int | str = int(checkpoint) if str(checkpoint).isdigit() else checkpoint
    path = manager.path_for(which)
    if not path.is_file():
        raise MedsslInputError(path, f"checkpoint {checkpoint!r} not found in the run")
    state = load_checkpoint(path)
    spark = build_spark(m.backbone, dims=m.dims, in_chans=m.in_chans, input_mode=m.input_mode,
                        decoder_width=m.decoder_width, drop_path=m.drop_path, vnet_width=m.vnet_width)
    try:
        spark.load_state_dict(state["model"])
    except (KeyError, RuntimeError) as err:
        raise MedsslInputError(path, f"checkpoint does not fit the run's SparK model: "
                               f"{str(err).splitlines()[0]}") from None
    weights = spark.encoder_state_dict()
    dense = dense_encoder(m.backbone, dims=m.dims, in_chans=m.in_chans, input_mode=m.input_mode,
                          drop_path=m.drop_path, vnet_width=m.vnet_width)
    dense.load_state_dict(weights, strict=True)  # our own export must fit: a failure here is a bug
    encoder_chans = 3 if m.input_mode == "replicate3" else m.in_chans
    if format == "timm":
        target = f"timm.create_model({m.backbone!r}, num_classes=0, in_chans={encoder_chans})"
    else:
        target = f"medssl.models.vnet.VNetEncoder(in_channels={encoder_chans}, base_width={m.vnet_width})"
    n_params = sum(p.numel() for p in dense.parameters())
    check = f"loaded strictly into {target}: {len(weights)} tensors, {n_params:,} parameters"
    out = Path(out)
    details = {  # gathered before anything is written: a failure here leaves no partial export
        "format": format, "target": target, "run": str(Path(run_dir).resolve()), "checkpoint": str(path),
        "iteration": state.get("iteration"), "backbone": m.backbone, "dims": m.dims, "in_chans": m.in_chans,
        "input_mode": m.input_mode, "vnet_width": m.vnet_width if m.dims == 3 else None,
        "masking": cfg.masking.model_dump(), "normalization": _run_normalization(Path(run_dir)),
        "tensors": len(weights), "parameters": n_params, "check": check,
    }
    save_checkpoint(out, weights)
    sidecar = out.with_name(out.name + ".json")
    write_json_atomic(sidecar, details)
    return EncoderExport(path=out, sidecar=sidecar, format=format, target=target, tensors=len(weights),
                         parameters=n_params, check=check)


def export_encoder(run_dir: str | Path, format: Literal["timm", "vnet"], out: str | Path,
                   checkpoint: str = "final") -> Path:
    """Export the run's encoder (see :func:`export_encoder_checked`); returns the weights file."""
    return export_encoder_checked(run_dir, format, out, checkpoint).path


def _run_normalization(run_dir: Path) -> dict[str, Any] | None:
    import json

    try:
        manifest = json.loads((run_dir / "manifest.json").read_text(encoding="utf-8"))
        data = manifest["extra"]["pretrain"]["data"]
        return {"mean": data["mean"], "std": data["std"]}
    except (OSError, ValueError, KeyError, TypeError):
        return None

