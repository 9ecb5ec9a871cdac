"""Semi-supervised 3D segmentation: configuration, training, evaluation and prediction.

The Python API behind ``medssl semi``::

    from medssl.engine.semi import SemiTrainConfig, train_semi, evaluate_run, predict_file
    from medssl.presets import preset_path

    cfg = load_config(SemiTrainConfig, preset_path("atrium3d_corn", "semi"),
                      base={"runtime": {"name": "corn_demo"}, "data": {"spec": "folder:data/atrium3d"}})
    result = train_semi(cfg)                    # runs/corn_demo/...
    evaluate_run(result.run_dir)                # metrics on the validation / test cases
    predict_file(result.run_dir, "scan.nii.gz", "pred.nii.gz")

One method class (see :mod:`medssl.methods`) turns a batch into a loss; everything else (data,
optimiser, schedule, checkpoints, resume, devices) is shared through :func:`medssl.engine.loop.train_iterations`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medssl.data.samplers import TwoStreamBatchSampler, sample_seed
from medssl.data.semi import (
    SemiDataConfig,
    SemiSplits,
    SubsetDataset,
    layout_and_root,
    open_semi_data,
    split_volumes,
    zoomed,
)
from medssl.data.spec import VolumeDataset
from medssl.data.transforms import LeftAtriumAugment
from medssl.engine.evaluate import evaluate_cases
from medssl.engine.loop import LoopSpec, PeriodicTask, train_iterations
from medssl.engine.semi_config import InferenceConfig, OptimConfig, SemiTrainConfig, SemiTrainResult
from medssl.engine.semi_eval import (
    RunPredictor,
    eval_cases,
    evaluate_run,
    load_trained_network,
    predict_file,
    read_run_config,
    volume_predictor,
)
from medssl.errors import MedsslInputError
from medssl.methods import SemiBatch, SemiMethod, get_method
from medssl.models.encoder_io import load_vnet_encoders, read_encoder
from medssl.runtime.fast_paths import apply_fast_paths
from medssl.runtime.rundir import PrepareMode, discard_failed_start
from medssl.runtime.session import start_run

__all__ = [
    "InferenceConfig",
    "OptimConfig",
    "SemiDataConfig",
    "SemiSplits",
    "SemiTrainConfig",
    "SemiTrainResult",
    "build_semi_batch_fn",
    "evaluate_run",
    "load_encoder_init",
    "RunPredictor",
    "load_trained_network",
    "open_semi_data",
    "predict_file",
    "read_run_config",
    "resolve_method_settings",
    "train_semi",
]


def _to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Host tensor to ``device``: through pinned memory to a GPU, so the copy does not block the host."""
    if torch.device(device).type == "cuda":
        t = t.pin_memory()
    return t.to(device, non_blocking=True)


def build_semi_batch_fn(
    dataset: VolumeDataset,
    sampler: TwoStreamBatchSampler,
    patch: Sequence[int],
    device: torch.device,
) -> Callable[[int], SemiBatch]:
    """``batch_fn(iteration) -> SemiBatch``: a pure function of (seed, iteration, rank).

    Each sample is augmented (random rot90 + flip, random crop of ``patch``) with its own generator
    seeded by :func:`medssl.data.samplers.sample_seed`. Labels of unlabeled rows are zeroed so that no
    method can read them.
    """
    augment = LeftAtriumAugment(patch)

    def batch_fn(iteration: int) -> SemiBatch:
        images, labels, indices = [], [], []
        for pos, idx in enumerate(sampler.batch(iteration)):
            case = dataset.load(idx)
            label = case.label if case.label is not None else np.zeros(case.image.shape, np.uint8)
            rng = np.random.default_rng(sample_seed(sampler.seed, iteration, pos, sampler.rank))
            image, moved = augment(case.image, label, rng)
            assert moved is not None  # a label in, a label out
            label = np.zeros_like(moved) if pos >= sampler.labeled_bs else moved
            images.append(np.ascontiguousarray(image, dtype=np.float32))
            labels.append(np.ascontiguousarray(label))
            indices.append(idx)
        image_t = _to_device(torch.from_numpy(np.stack(images))[:, None], device)
        label_t = _to_device(torch.from_numpy(np.stack(labels).astype(np.int64)), device)
        return SemiBatch(image=image_t, label=label_t, index=torch.tensor(indices, device=device),
                         labeled_bs=sampler.labeled_bs)

    return batch_fn


# ------------------------------------------------------------------------------------- training
def _lr_schedule(optim: OptimConfig) -> Callable[[int], float] | None:
    if optim.lr_step is None:
        return None
    step, gamma = optim.lr_step, optim.lr_gamma
    return lambda iteration: gamma ** (iteration // step)


def load_encoder_init(method: SemiMethod, path: str | Path) -> dict[str, Any]:
    """Load a pretrained V-Net encoder file (any format of :mod:`medssl.models.encoder_io`) strictly into
    every encoder :meth:`SemiMethod.encoders_to_initialise` names; returns the load report."""
    return load_vnet_encoders(method.encoders_to_initialise(), read_encoder(path))


def resolve_method_settings(cfg: SemiTrainConfig) -> SemiTrainConfig:
    """``cfg`` with the method settings that follow from the run filled where unset (see
    :meth:`medssl.methods.SemiMethod.settings_from_run`: pool slots = labeled volumes, schedules over
    ``max_iterations``)."""
    settings = get_method(cfg.method).settings_from_run(cfg.method_config, n_labeled=cfg.data.labeled,
                                                        max_iterations=cfg.max_iterations)
    return cfg.model_copy(update={"method_config": settings})


@discard_failed_start()
def train_semi(
    cfg: SemiTrainConfig,
    mode: PrepareMode = "new",
    *,
    command: Sequence[str] | None = None,
    dataset: VolumeDataset | None = None,
) -> SemiTrainResult:
    """Train ``cfg.method`` semi-supervised and (by default) evaluate it on the validation cases.

    Args:
        cfg: the resolved configuration.
        mode: ``"new"``, ``"resume"`` (continue a killed run exactly) or ``"overwrite"``.
        command: the command line recorded in the manifest.
        dataset: the training volumes as an object (``len``, ``case_ids``, ``load(i)``, e.g. from
            :func:`medssl.data.spec.open_volume_dataset`) instead of ``cfg.data.spec``; ordered as the
            training list and split by ``cfg.data`` (:func:`medssl.data.semi.split_volumes`).

    Returns:
        the run directory, the loop result and the evaluation (None without validation cases).
    """
    cfg = resolve_method_settings(cfg)
    method_class = get_method(cfg.method)
    if dataset is None:
        volumes, splits = open_semi_data(cfg.data)
    else:
        volumes, splits = zoomed(dataset, cfg.data.zoom), split_volumes(len(dataset), cfg.data)
    if cfg.data.unlabeled_bs > 0 and not splits.unlabeled and method_class.needs_unlabeled:
        raise MedsslInputError("data.labeled", f"method {cfg.method} needs unlabeled volumes; all "
                               f"{len(splits.labeled)} training volumes are labeled")
    unlabeled_bs = cfg.data.unlabeled_bs if method_class.needs_unlabeled else 0
    data_paths = [layout_and_root(cfg.data.spec)[1]] if cfg.data.spec is not None else []
    extra = {"method": cfg.method, "splits": {k: [volumes.case_ids[i] for i in v]
                                              for k, v in vars(splits).items()}}
    session = start_run(cfg.runtime, cfg, mode, command=command, data_paths=data_paths, extra=extra)
    fabric, run = session.fabric, session.run

    method = method_class(cfg.method_config)
    init_report = load_encoder_init(method, cfg.init_encoder) if cfg.init_encoder is not None else None
    if init_report is not None and fabric.global_rank == 0:
        fabric.print(f"initialised {', '.join(init_report['modules'])} from {init_report['path']}")
    apply_fast_paths(method, cfg.runtime, fabric.device)
    optimizer = torch.optim.SGD(method.trainable_parameters(), lr=cfg.optim.lr, momentum=cfg.optim.momentum,
                                weight_decay=cfg.optim.weight_decay)
    model, optimizer = fabric.setup(method, optimizer)
    sampler = TwoStreamBatchSampler(splits.labeled, splits.unlabeled, cfg.data.labeled_bs, unlabeled_bs,
                                    seed=cfg.runtime.seed, rank=fabric.global_rank, world_size=fabric.world_size)
    batch_fn = build_semi_batch_fn(volumes, sampler, cfg.data.patch, fabric.device)

    def step_fn(batch: SemiBatch, iteration: int) -> tuple[torch.Tensor, dict[str, float]]:
        out = model.training_step(batch, iteration)
        return out.loss, out.logs

    periodic = []
    if cfg.validate_every and splits.val:
        val_cases = eval_cases(volumes, splits.val)

        def validate(done: int) -> dict[str, float]:
            predictor = volume_predictor(method.segmentation_network(), cfg.inference, fabric.device)
            result = evaluate_cases(predictor, val_cases, out_dir=None, save_predictions=False, overlays=False,
                                    largest_component=cfg.inference.largest_component, progress=False)
            return {"dice": result.mean("dice"), "hd95_vox": result.mean("hd95_vox")}

        periodic.append(PeriodicTask(cfg.validate_every, validate, phase="val"))

    spec = LoopSpec(max_iterations=cfg.max_iterations, checkpoint_every=cfg.runtime.checkpoint_every,
                    log_every=cfg.runtime.log_every, keep_checkpoints=cfg.runtime.keep_checkpoints,
                    grad_clip=cfg.optim.grad_clip, lr_schedule=_lr_schedule(cfg.optim),
                    best_metric="dice" if periodic else None,
                    prefetch=fabric.device.type == "cuda")  # CPU: a second thread would compete for the cores
    loop = train_iterations(fabric, run, model, optimizer, batch_fn, step_fn, spec,
                            after_step=method.after_optimizer_step, periodic=periodic,
                            resume=session.resume, quiet=cfg.runtime.quiet)
    evaluation = None
    if cfg.evaluate_after and splits.val and fabric.global_rank == 0:
        held_out = SubsetDataset(dataset, splits.val) if dataset is not None else None
        evaluation = evaluate_run(run.root, quiet=cfg.runtime.quiet, dataset=held_out)
    return SemiTrainResult(run_dir=run.root, loop=loop, evaluation=evaluation, global_rank=fabric.global_rank,
                           init_report=init_report)
