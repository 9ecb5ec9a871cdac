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

Data: see :mod:`medssl.data.detect` (COCO JSON, training / validation lists).

Schedule: SGD (momentum 0.9, weight decay 1e-4) with a linear warm-up and step decay at given epochs (the
mmdet "1x" schedule of the reference: 12 epochs, x0.1 at epochs 8 and 11, 500 warm-up iterations, lr 0.02
for 16 images per step). ``optim.lr`` is the rate for ``optim.lr_batch_size`` images per step and is scaled
linearly to the actual total batch (``data.batch_size`` x processes). An epoch is
``len(train) // total batch`` iterations (each epoch visits the images in a fresh seeded order).

Batches are a pure function of (seed, iteration, rank) and every other random number is checkpointed, so a
resumed run reproduces an uninterrupted one exactly on CPU. The run reports COCO BoxAP / MaskAP (AP, AP50,
AP75) of the final model on the validation images and of the checkpoint that scored best during training
("best (selected on validation)": chosen on the same images, hence optimistic).

The task is split like classification: configuration in :mod:`medssl.engine.detect_config`, data in
:mod:`medssl.data.detect`, the model in :mod:`medssl.models.detector` (encoder files:
:mod:`medssl.models.encoder_io`), evaluation in :mod:`medssl.engine.detect_eval`, figures and tables in
:mod:`medssl.engine.detect_report`; this module trains and re-exports the public names.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from medssl.data.detect import (
    DetectData,
    DetectDataConfig,
    DetectSplit,
    SampleStore,
    build_detect_batch_fn,
    image_mean_std,
    image_tensor,
    open_detect_data,
)
from medssl.engine.detect_config import DetectConfig, DetectModelConfig, DetectOptimConfig, DetectResult
from medssl.engine.detect_eval import evaluate_detector, predict_images
from medssl.engine.detect_report import (
    detection_overlay,
    figure_indices,
    json_metrics,
    read_results,
    results_markdown,
)
from medssl.engine.loop import LoopSpec, PeriodicTask, train_iterations
from medssl.errors import MedsslInputError
from medssl.metrics.detection import DETECTION_KEYS, SIZE_KEYS, coco_detections
from medssl.models.detector import BACKBONES, build_detector
from medssl.models.encoder_io import ResnetBodyInit, read_resnet_body_init
from medssl.runtime.atomic import write_json_atomic, write_text_atomic
from medssl.runtime.rundir import PrepareMode

__all__ = [
    "BACKBONES",
    "DetectConfig",
    "DetectData",
    "DetectDataConfig",
    "DetectModelConfig",
    "DetectOptimConfig",
    "DetectResult",
    "DetectSplit",
    "ResnetBodyInit",
    "SampleStore",
    "build_detect_batch_fn",
    "build_detector",
    "detection_overlay",
    "evaluate_detector",
    "image_tensor",
    "lr_multiplier",
    "open_detect_data",
    "predict_images",
    "read_resnet_body_init",
    "read_results",
    "train_detector",
]


def lr_multiplier(optim: DetectOptimConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """``f(iteration)``: linear warm-up from ``warmup_ratio`` to 1 over ``warmup_iterations``, times
    ``gamma`` per decay epoch reached (decay iterations: ``round(epoch * steps_per_epoch)``)."""
    milestones = [round(e * steps_per_epoch) for e in optim.decay_epochs]
    warm, ratio, gamma = optim.warmup_iterations, optim.warmup_ratio, optim.gamma

    def factor(iteration: int) -> float:
        f = ratio + (1.0 - ratio) * iteration / warm if warm and iteration < warm else 1.0
        return f * gamma ** sum(iteration >= m for m in milestones)

    return factor


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
        m, s = image_mean_std(store, train_indices)
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
    data: DetectData | None = None,
) -> DetectResult:
    """Fine-tune Mask R-CNN and report COCO BoxAP / MaskAP on the validation images.

    Everything a user can get wrong (data, split lists, the encoder file, normalisation values) is
    checked before the run directory is created, so a failed start writes nothing.

    Args:
        cfg: the configuration (``model.image_mean`` / ``image_std`` are measured when unset and saved
            in the run's ``config.yaml``).
        mode: ``"new"``, ``"resume"`` (continue a stopped run exactly) or ``"overwrite"``.
        command: the command line recorded in the manifest.
        data: the opened COCO splits as an object (default: :func:`open_detect_data` of ``cfg.data``).

    Returns:
        the run directory, the loop result, final / best validation metrics and written files
        (``results.json``, ``results.md``, ``figures/val_<case>.png``, ``predictions/val_final.json``).
    """
    from medssl.runtime.session import start_run

    data = data if data is not None else open_detect_data(cfg.data)
    init = None
    if cfg.init is not None and (mode != "resume" or Path(cfg.init).is_file()):  # resuming needs only the run
        init = read_resnet_body_init(cfg.init, cfg.model.backbone, cfg.model.in_chans)
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
                            "metrics": json_metrics(metrics)}
        image_ids = [int(data.val.dataset.images[i]["id"]) for i in data.val.indices]
        pred_path = run.predictions / "val_final.json"
        write_json_atomic(pred_path, coco_detections(preds, image_ids))
        result.files["predictions"] = pred_path
        summary["predictions"] = str(pred_path.relative_to(run.root))
        position = {idx: k for k, idx in enumerate(data.val.indices)}
        names = dict(zip(data.category_ids, data.category_names, strict=True))
        for idx in figure_indices(data.val, cfg.figures):
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
                           "label": "best (selected on validation)", "metrics": json_metrics(best)}
    summary["metric_keys"] = list(DETECTION_KEYS) + list(SIZE_KEYS)
    write_json_atomic(run.root / "results.json", summary)
    write_text_atomic(run.root / "results.md", results_markdown(cfg, summary))
    result.files["results_json"] = run.root / "results.json"
    result.files["results_md"] = run.root / "results.md"
    return result
