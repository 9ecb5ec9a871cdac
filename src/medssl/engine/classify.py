"""Fine-tuning a 2D image classifier (a timm backbone, optionally initialised from a pretrained encoder).

The Python API behind ``medssl finetune classify``::

    from medssl.config import load_config
    from medssl.engine.classify import ClassifyConfig, train_classifier

    cfg = load_config(ClassifyConfig, "configs/finetune/classify_brain2d_resnet18.yaml",
                      base={"runtime": {"name": "cls"}, "data": {"spec": "csv:data/brain2d/classes.csv"}})
    result = train_classifier(cfg)       # runs/cls/: metrics.csv, checkpoints/, results.json, results.md

The reference fine-tuning recipe of SparK / Mask What Matters for ResNet-50 is the schema default
(``configs/finetune/classify_reference.yaml`` spells it out). Its pieces live in small modules, whose
public names are re-exported here:

* :mod:`medssl.data.classify`: splits (CSV or image folder, stratified seeded validation hold-out) and
  the images in memory, resized to ``image_size`` x ``image_size`` and standardised with the per-channel
  mean / std of the training split;
* :mod:`medssl.data.classify_batches`: batches as a pure function of (seed, iteration, rank) and the
  augmentation (resize, horizontal / vertical flips, optional random-resized crop);
* :mod:`medssl.models.classifier`: the timm classifier, strict loading of an exported encoder, input
  channels;
* :mod:`medssl.engine.classify_optim`: LAMB / AdamW with layer-wise lr decay and the warm-up + cosine
  schedule of :mod:`medssl.engine.schedules`;
* :mod:`medssl.engine.classify_eval`: losses (label smoothing; soft-target ``ce`` or per-class ``bce``),
  evaluation and the markdown report.

Mixup / cutmix go through ``timm.data.Mixup``, the optional EMA of the weights through
``timm.utils.ModelEmaV3``, stochastic depth through timm's ``drop_path_rate``. Input channels: an init
file's first convolution decides; else ``model.in_chans``; else the images' own (1 for grayscale, 3 for
colour), or 3 with ``model.replicate3`` (grayscale replicated, the reference's choice).

Validation runs after every epoch on the validation split and logs accuracy, balanced accuracy,
AUROC, AUPRC, F1 and the loss (phase ``val`` in ``metrics.csv``); ``best.pt`` holds the epoch with the
highest validation accuracy (the reference's reported number, selected on validation data). The
results report that epoch *and* the final epoch, plus the test split scored with the final model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator
from torch import Tensor

from medssl.config import MedsslConfig, RuntimeConfig
from medssl.data.classify import (
    AUTO,
    ClassificationData,
    ClassificationSplit,
    ClassifyDataConfig,
    ImageCache,
    channel_stats,
    load_image_cache,
    native_channels,
    open_classification_data,
    resize_square,
    stratified_holdout,
)
from medssl.data.classify_batches import (
    ClassifyAugmentConfig,
    EpochBatches,
    augment_image,
    build_batch_fn,
    normalize,
)
from medssl.engine import schedules
from medssl.engine.classify_eval import (
    BEST_LABEL,
    FINAL_LABEL,
    classification_loss,
    predict_logits,
    results_markdown,
    score_split,
    scores_from_logits,
    soft_targets,
    write_predictions,
)
from medssl.engine.classify_optim import (
    ClassifyOptimConfig,
    build_optimizer,
    layer_decay_param_groups,
    lr_multiplier,
    resnet_layer_ids,
)
from medssl.engine.loop import LoopResult, LoopSpec, PeriodicTask, train_iterations
from medssl.errors import MedsslInputError
from medssl.metrics.classification import CLASSIFICATION_METRIC_KEYS
from medssl.models.classifier import InitReport, build_classifier
from medssl.models.encoder_io import check_timm_fit, read_encoder, timm_in_chans
from medssl.runtime.rundir import PrepareMode
from medssl.runtime.session import start_run

__all__ = [
    "AUTO",
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
    "ImageCache",
    "InitReport",
    "augment_image",
    "build_batch_fn",
    "build_classifier",
    "build_optimizer",
    "channel_stats",
    "check_timm_fit",
    "classification_loss",
    "layer_decay_param_groups",
    "load_image_cache",
    "lr_multiplier",
    "native_channels",
    "normalize",
    "open_classification_data",
    "predict_logits",
    "read_encoder",
    "resize_square",
    "resnet_layer_ids",
    "results_markdown",
    "score_split",
    "scores_from_logits",
    "soft_targets",
    "stratified_holdout",
    "timm_in_chans",
    "train_classifier",
    "write_predictions",
]


# ================================================================================== configuration
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
                     command: Sequence[str] | None = None, data: ClassificationData | None = None) -> ClassifyResult:
    """Fine-tune ``cfg.model.backbone`` on ``cfg.data`` and write ``results.json`` / ``results.md``.

    Data, the init file and the batch size are checked before anything is written.

    Args:
        cfg: the resolved configuration.
        mode: ``"new"``, ``"resume"`` (continue a killed run exactly) or ``"overwrite"``.
        command: the command line recorded in the manifest.
        data: the opened splits as an object (default: :func:`open_classification_data` of ``cfg.data``).
    """
    data = data if data is not None else open_classification_data(cfg.data, cfg.runtime.seed)
    num_classes = len(data.classes)
    init_state, init_layout, init_chans = None, "", None
    if cfg.init is not None:
        init_file = read_encoder(cfg.init)
        init_state, init_layout = init_file.state, init_file.layout
        init_chans = timm_in_chans(init_state, cfg.model.backbone, cfg.init)
    in_chans = _resolve_in_chans(cfg, data, init_chans)
    if init_state is not None:  # shapes only: refuse a mismatching file before the run exists
        build_classifier(cfg.model.backbone, num_classes, in_chans, init=init_state, init_path=cfg.init or "init",
                         meta=True)
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
    peak_lr = schedules.peak_lr(cfg.optim.base_lr, cfg.data.batch_size)
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
    write_predictions(run.predictions / "val_final.csv", val_cache, val_logits, data.classes, kind)
    test = None
    if test_cache is not None:
        logits = predict_logits(net, test_cache.images, mean, std, cfg.data.eval_batch_size, fabric)
        test = score_split(logits, test_cache.targets, kind)
        final["test"] = _clean(test)
        write_predictions(run.predictions / "test_final.csv", test_cache, logits, data.classes, kind)
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
