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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import yaml
from pydantic import Field, field_validator

from medssl.config import MedsslConfig, RuntimeConfig, load_config
from medssl.data.samplers import TwoStreamBatchSampler, sample_seed
from medssl.data.spec import SegmentationCase, VolumeDataset, open_volume_dataset, parse_spec
from medssl.data.transforms import LeftAtriumAugment
from medssl.engine.evaluate import EvalCase, EvalResult, evaluate_cases
from medssl.engine.inference import resampled_predictor, sliding_window_predictor
from medssl.engine.loop import LoopResult, LoopSpec, PeriodicTask, train_iterations
from medssl.errors import MedsslInputError
from medssl.methods import SemiBatch, SemiMethod, create_method, method_config
from medssl.runtime.checkpoint import CheckpointManager, load_checkpoint
from medssl.runtime.rundir import PrepareMode, RunDir, discard_failed_start
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
    "load_trained_network",
    "open_semi_data",
    "RunPredictor",
    "predict_file",
    "train_semi",
]

Triple = tuple[int, int, int]


class SemiDataConfig(MedsslConfig):
    """Which volumes are labeled, unlabeled and held out for validation.

    The training list is ``split_file`` (default ``<root>/train.list``, else every case of the dataset
    in sorted order; ``nnunet:`` datasets: the labelled cases, then the unlabeled ones). Its last ``n_val``
    labelled entries are validation; of the rest, the first ``labeled`` labelled ones are labeled and the
    others unlabeled. For the left-atrium benchmark (80 public training cases) this is
    64 training cases (first N labeled) and 16 validation cases; the 20 standard test cases are never used
    in training.
    """

    spec: str = Field(description="'la:<root>', 'folder:<root>', 'nnunet:<root>' or a bare folder (layout "
                      "detected).")
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


class OptimConfig(MedsslConfig):
    """SGD with an optional step decay (``lr_step`` iterations, factor ``lr_gamma``)."""

    lr: float = Field(0.01, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(1e-4, ge=0)
    lr_step: int | None = Field(None, ge=1, description="Multiply the lr by lr_gamma every lr_step iterations.")
    lr_gamma: float = Field(0.1, gt=0, le=1)
    grad_clip: float | None = Field(None, gt=0)


class InferenceConfig(MedsslConfig):
    """Sliding-window inference (left-atrium protocol: 112x112x80 windows, stride 18/18/4)."""

    patch: Triple = (112, 112, 80)
    stride: Triple = (18, 18, 4)
    batch_size: int | None = Field(None, ge=1, description="Windows per forward pass (None: device default).")
    precision: Literal["32", "bf16"] = "32"
    largest_component: bool = Field(False, description="Keep only the largest connected component "
                                    "(off in the published protocol; reported when on).")


class SemiTrainConfig(MedsslConfig):
    """Everything ``medssl semi train`` needs; presets: ``medssl presets semi``."""

    runtime: RuntimeConfig
    data: SemiDataConfig
    method: str = "corn"
    method_config: dict[str, Any] = Field(default_factory=dict,
                                          description="Method hyperparameters (see medssl.methods).")
    optim: OptimConfig = Field(default_factory=OptimConfig)
    max_iterations: int = Field(15000, ge=1)
    inference: InferenceConfig = Field(default_factory=InferenceConfig)
    validate_every: int = Field(0, ge=0, description="Validation Dice every N iterations (0: never).")
    evaluate_after: bool = Field(True, description="Evaluate the final checkpoint on the validation cases.")
    init_encoder: Path | None = Field(None, description="Pretrained 3D V-Net encoder weights (.pt).")

    @field_validator("method")
    @classmethod
    def _known_method(cls, value: str) -> str:
        from medssl.methods import METHODS

        if value not in METHODS:
            raise ValueError(f"expected one of {', '.join(sorted(METHODS))}, got {value!r}")
        return value


@dataclass
class SemiSplits:
    """Dataset indices of the labeled, unlabeled and validation volumes."""

    labeled: list[int]
    unlabeled: list[int]
    val: list[int]


@dataclass
class SemiTrainResult:
    """A finished training run."""

    run_dir: Path
    loop: LoopResult
    evaluation: EvalResult | None
    global_rank: int = 0
    init_report: dict[str, Any] | None = None


# ----------------------------------------------------------------------------------------- data
def _layout_and_root(spec: str) -> tuple[str, Path]:
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

    layout, root = _layout_and_root(cfg.spec)
    split_file = _training_list(cfg, layout, root)
    if layout == "la":
        dataset = open_volume_dataset(cfg.spec, split_file=split_file, allow_missing=cfg.allow_missing, cache=cache)
    else:
        dataset = open_volume_dataset(cfg.spec, cache=cache, labels_required=False)
        if split_file is not None:
            wanted = read_split(split_file)
            present = {cid: i for i, cid in enumerate(dataset.case_ids)}
            missing = [c for c in wanted if c not in present]
            if missing and not cfg.allow_missing:
                raise MedsslInputError(split_file, f"split list names {len(missing)} case(s) absent from "
                                       f"{root}: {', '.join(missing[:5])}")
            dataset = _Subset(dataset, [present[c] for c in wanted if c in present])
    with_label = _with_label(dataset)
    if cfg.zoom != 1.0:
        from medssl.data.resample import ZoomedDataset

        dataset = ZoomedDataset(dataset, cfg.zoom, cache=cache)
    n_val = cfg.n_val if cfg.n_val is not None else (16 if layout == "la" else 0)
    return dataset, split_cases(with_label, cfg.labeled, n_val, cfg.max_unlabeled)


def _with_label(dataset: VolumeDataset) -> list[bool]:
    """Which cases have a label file (layouts without per-case label files: all of them)."""
    paths = getattr(dataset, "label_paths", None)
    return [p is not None for p in paths] if paths is not None else [True] * len(dataset)


def split_cases(with_label: Sequence[bool], labeled: int, n_val: int, max_unlabeled: int | None = None) -> SemiSplits:
    """Labeled, unlabeled and validation indices of an ordered training list.

    The last ``n_val`` cases that have a label are validation, the first ``labeled`` cases that have a label
    are labeled, every other case is unlabeled (at most ``max_unlabeled``), in list order. When every case
    has a label this is the list split of :class:`SemiDataConfig`.

    Raises:
        MedsslInputError: too few labelled cases for ``n_val`` and ``labeled``.
    """
    labelled = [i for i, has in enumerate(with_label) if has]
    if n_val >= len(labelled):
        raise MedsslInputError("data.n_val", f"{n_val} validation volumes leave no training volume of "
                               f"{len(labelled)}" + ("" if len(labelled) == len(with_label) else " labelled"))
    val = labelled[len(labelled) - n_val:]
    n_train = len(labelled) - n_val
    if labeled > n_train:
        raise MedsslInputError("data.labeled", f"{labeled} labeled volumes requested but only {n_train} "
                               "training volumes" + ("" if len(labelled) == len(with_label) else " with a label")
                               + " exist")
    chosen = labelled[:labeled]
    taken = set(chosen) | set(val)
    unlabeled = [i for i in range(len(with_label)) if i not in taken]
    if max_unlabeled is not None:
        unlabeled = unlabeled[:max_unlabeled]
    return SemiSplits(labeled=chosen, unlabeled=unlabeled, val=val)


class _Subset:
    """A :class:`VolumeDataset` restricted to (and ordered as) ``indices`` of ``base``."""

    def __init__(self, base: VolumeDataset, indices: Sequence[int]) -> None:
        self.base, self.indices = base, list(indices)
        self.case_ids = [base.case_ids[i] for i in self.indices]
        paths = getattr(base, "label_paths", None)
        if paths is not None:
            self.label_paths = [paths[i] for i in self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def load(self, i: int) -> SegmentationCase:
        return self.base.load(self.indices[i])


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
        image_t = torch.from_numpy(np.stack(images))[:, None].to(device, non_blocking=True)
        label_t = torch.from_numpy(np.stack(labels).astype(np.int64)).to(device, non_blocking=True)
        return SemiBatch(image=image_t, label=label_t, index=torch.tensor(indices, device=device),
                         labeled_bs=sampler.labeled_bs)

    return batch_fn


def _eval_cases(dataset: VolumeDataset, indices: Sequence[int]) -> list[EvalCase]:
    cases = []
    for i in indices:
        c = dataset.load(i)
        cases.append(EvalCase(case_id=c.case_id, image=c.image, label=c.label, affine=c.affine,
                              spacing=tuple(c.spacing)))
    return cases


# ------------------------------------------------------------------------------------- training
def _lr_schedule(optim: OptimConfig) -> Callable[[int], float] | None:
    if optim.lr_step is None:
        return None
    step, gamma = optim.lr_step, optim.lr_gamma
    return lambda iteration: gamma ** (iteration // step)


def _load_encoder_init(method: SemiMethod, path: Path) -> dict[str, Any]:
    """Load pretrained encoder weights into every V-Net encoder of ``method`` (strict per encoder)."""
    state = load_checkpoint(path)
    weights = state.get("encoder", state) if isinstance(state, dict) else state
    loaded = []
    for name, module in method.named_modules():
        if name.endswith("encoder") and hasattr(module, "load_state_dict") and "teacher" not in name:
            try:
                module.load_state_dict(weights, strict=True)
            except RuntimeError as err:
                first = str(err).splitlines()[0]
                raise MedsslInputError(path, f"encoder weights do not fit {name}: {first}") from None
            loaded.append(name)
    if not loaded:
        raise MedsslInputError(path, "the method has no V-Net encoder to initialise")
    return {"path": str(path), "modules": loaded, "tensors": len(weights)}


def resolve_method_settings(cfg: SemiTrainConfig) -> SemiTrainConfig:
    """Fill method settings that follow from the run: pool slots = labeled volumes, and the
    iteration count of methods whose schedules depend on it (UA-MT's uncertainty ramp)."""
    from medssl.methods import METHODS

    fields = METHODS[cfg.method].config_class.model_fields
    settings = dict(cfg.method_config)
    if "n_labeled" in fields:
        settings.setdefault("n_labeled", cfg.data.labeled)
    if "max_iterations" in fields:
        settings.setdefault("max_iterations", cfg.max_iterations)
    return cfg.model_copy(update={"method_config": settings})


@discard_failed_start()
def train_semi(
    cfg: SemiTrainConfig,
    mode: PrepareMode = "new",
    *,
    command: Sequence[str] | None = None,
) -> SemiTrainResult:
    """Train ``cfg.method`` semi-supervised and (by default) evaluate it on the validation cases.

    Args:
        cfg: the resolved configuration.
        mode: ``"new"``, ``"resume"`` (continue a killed run exactly) or ``"overwrite"``.
        command: the command line recorded in the manifest.

    Returns:
        the run directory, the loop result and the evaluation (None without validation cases).
    """
    cfg = resolve_method_settings(cfg)
    method_cfg = method_config(cfg.method, cfg.method_config)  # validate before creating the run
    dataset, splits = open_semi_data(cfg.data)
    if cfg.data.unlabeled_bs > 0 and not splits.unlabeled and cfg.method != "supervised":
        raise MedsslInputError("data.labeled", f"method {cfg.method} needs unlabeled volumes; all "
                               f"{len(splits.labeled)} training volumes are labeled")
    unlabeled_bs = 0 if cfg.method == "supervised" else cfg.data.unlabeled_bs
    _, root = _layout_and_root(cfg.data.spec)
    extra = {"method": cfg.method, "splits": {k: [dataset.case_ids[i] for i in v]
                                              for k, v in vars(splits).items()}}
    session = start_run(cfg.runtime, cfg, mode, command=command, data_paths=[root], extra=extra)
    fabric, run = session.fabric, session.run

    method = create_method(cfg.method, method_cfg)
    init_report = _load_encoder_init(method, cfg.init_encoder) if cfg.init_encoder is not None else None
    if init_report is not None and fabric.global_rank == 0:
        fabric.print(f"initialised {', '.join(init_report['modules'])} from {init_report['path']}")
    optimizer = torch.optim.SGD(method.trainable_parameters(), lr=cfg.optim.lr, momentum=cfg.optim.momentum,
                                weight_decay=cfg.optim.weight_decay)
    model, optimizer = fabric.setup(method, optimizer)
    sampler = TwoStreamBatchSampler(splits.labeled, splits.unlabeled, cfg.data.labeled_bs, unlabeled_bs,
                                    seed=cfg.runtime.seed, rank=fabric.global_rank, world_size=fabric.world_size)
    batch_fn = build_semi_batch_fn(dataset, sampler, cfg.data.patch, fabric.device)

    def step_fn(batch: SemiBatch, iteration: int) -> tuple[torch.Tensor, dict[str, float]]:
        out = model.training_step(batch, iteration)
        return out.loss, out.logs

    periodic = []
    if cfg.validate_every and splits.val:
        val_cases = _eval_cases(dataset, splits.val)

        def validate(done: int) -> dict[str, float]:
            predictor = _predictor(method.segmentation_network(), cfg.inference, fabric.device)
            result = evaluate_cases(predictor, val_cases, out_dir=None, save_predictions=False, overlays=False,
                                    largest_component=cfg.inference.largest_component, progress=False)
            return {"dice": result.mean("dice"), "hd95_vox": result.mean("hd95_vox")}

        periodic.append(PeriodicTask(cfg.validate_every, validate, phase="val"))

    spec = LoopSpec(max_iterations=cfg.max_iterations, checkpoint_every=cfg.runtime.checkpoint_every,
                    log_every=cfg.runtime.log_every, keep_checkpoints=cfg.runtime.keep_checkpoints,
                    grad_clip=cfg.optim.grad_clip, lr_schedule=_lr_schedule(cfg.optim),
                    best_metric="dice" if periodic else None)
    loop = train_iterations(fabric, run, model, optimizer, batch_fn, step_fn, spec,
                            after_step=method.after_optimizer_step, periodic=periodic,
                            resume=session.resume, quiet=cfg.runtime.quiet)
    evaluation = None
    if cfg.evaluate_after and splits.val and fabric.global_rank == 0:
        evaluation = evaluate_run(run.root, quiet=cfg.runtime.quiet)
    return SemiTrainResult(run_dir=run.root, loop=loop, evaluation=evaluation, global_rank=fabric.global_rank,
                           init_report=init_report)


# ----------------------------------------------------------------------------------- inference
def _predictor(
    net: torch.nn.Module, inf: InferenceConfig, device: torch.device | str | None
) -> Callable[[np.ndarray], np.ndarray]:
    return sliding_window_predictor(net, patch=inf.patch, stride=inf.stride, n_classes=_n_classes(net),
                                    batch_size=inf.batch_size, precision=inf.precision, device=device)


def _n_classes(net: torch.nn.Module) -> int:
    return int(getattr(net, "n_classes", 2))


def read_run_config(run_dir: str | Path) -> SemiTrainConfig:
    """The resolved :class:`SemiTrainConfig` saved in a run directory."""
    run = RunDir.open(run_dir)
    if not run.config_yaml.is_file():
        raise MedsslInputError(run.root, "run has no config.yaml")
    data = yaml.safe_load(run.config_yaml.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or "method" not in data or "data" not in data:
        raise MedsslInputError(run.config_yaml, "not a semi-supervised training run (no method / data)")
    return load_config(SemiTrainConfig, base=data)


def load_trained_network(
    run_dir: str | Path, checkpoint: str = "final", device: str | torch.device = "cpu"
) -> tuple[torch.nn.Module, SemiTrainConfig, Path]:
    """The inference network of a trained run (CORN: branch 1) in eval mode.

    Args:
        run_dir: the run directory.
        checkpoint: ``final`` (the published protocol), ``best`` (selected on validation data),
            ``latest`` or an iteration number.

    Returns:
        (network, run config, checkpoint path).
    """
    cfg = read_run_config(run_dir)
    manager = CheckpointManager(RunDir(Path(run_dir)).checkpoints)
    which: int | str = int(checkpoint) if str(checkpoint).isdigit() else checkpoint
    path = manager.path_for(which)
    if not path.is_file():
        hint = " (best.pt is written only when the run validates during training: validate_every > 0)" \
            if checkpoint == "best" else ""
        raise MedsslInputError(path, f"checkpoint {checkpoint!r} not found in the run{hint}")
    state = load_checkpoint(path, map_location=device)
    method = create_method(cfg.method, cfg.method_config)
    try:
        method.load_state_dict(state["model"])
    except (KeyError, RuntimeError) as err:
        raise MedsslInputError(path, f"checkpoint does not fit method {cfg.method}: "
                               f"{str(err).splitlines()[0]}") from None
    net = method.segmentation_network().to(device).eval()
    return net, cfg, path


def evaluate_run(
    run_dir: str | Path,
    data: str | None = None,
    cases: str | Path | None = None,
    split: Literal["val", "all"] = "val",
    checkpoint: str = "final",
    out: str | Path | None = None,
    device: str | None = None,
    inference: InferenceConfig | None = None,
    quiet: bool = False,
    reduced_grid: bool = False,
) -> EvalResult:
    """Evaluate a trained run with sliding-window inference.

    By default the run's own validation cases are scored with its final checkpoint (the published
    protocol). ``data`` + ``cases`` score any dataset / case list with the same command (e.g. the
    held-back left-atrium test list).

    A run trained on resampled volumes (``data.zoom`` ≠ 1) predicts on its own grid, and its
    probabilities are resampled back to each case's source grid (:func:`resampled_predictor`):
    Dice / Jaccard / 95HD / ASD are computed there against the source label, and predictions are
    saved with the source shape and affine — the numbers the literature reports. ``reduced_grid``
    scores on the resampled grid instead (labels resampled with nearest neighbour; cheaper, not
    comparable to published numbers).

    Args:
        run_dir: the run directory.
        data: a data spec (default: the run's training data).
        cases: a case-list file (one id per line); default: the run's validation cases.
        split: with ``data`` and no ``cases``: ``val`` uses the run's split rule, ``all`` every case.
        checkpoint: ``final`` | ``best`` (selects on validation data) | ``latest`` | an iteration.
        out: output folder (default ``<run>/eval_<checkpoint>[_<cases stem>]``).
        inference: override the run's sliding-window settings.
        reduced_grid: score on the run's resampled grid instead of the source grid.
    """
    dev = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    net, cfg, ckpt_path = load_trained_network(run_dir, checkpoint, dev)
    inf = inference or cfg.inference
    zoom = cfg.data.zoom
    scoring_zoom = zoom if reduced_grid else 1.0  # the grid the cases are loaded (and scored) on
    if cases is not None:
        from medssl.data.la import read_split

        spec = data or cfg.data.spec
        layout, root = _layout_and_root(spec)
        wanted = read_split(cases)
        if layout == "la":
            dataset = open_volume_dataset(spec, case_ids=wanted, allow_missing=cfg.data.allow_missing, cache=False)
        else:
            full = open_volume_dataset(spec, cache=False)
            index = {cid: i for i, cid in enumerate(full.case_ids)}
            missing = [c for c in wanted if c not in index]
            if missing:
                raise MedsslInputError(cases, f"names {len(missing)} case(s) absent from {root}: "
                                       f"{', '.join(missing[:5])}")
            dataset = _Subset(full, [index[c] for c in wanted])
        indices = list(range(len(dataset)))
    elif data is not None and split == "all":
        dataset = open_volume_dataset(data, cache=False)
        indices = list(range(len(dataset)))
    else:
        data_cfg = cfg.data.model_copy(update={"zoom": 1.0, **({} if data is None else {"spec": data})})
        dataset, splits = open_semi_data(data_cfg, cache=False)
        indices = splits.val
        if not indices:
            raise MedsslInputError(run_dir, "the run has no validation cases; pass --cases FILE (or --data "
                                   "with --split all) to choose what to evaluate")
    if scoring_zoom != 1.0:
        from medssl.data.resample import ZoomedDataset

        dataset = ZoomedDataset(dataset, scoring_zoom, cache=False)
    tag = f"eval_{checkpoint}" + (f"_{Path(cases).stem}" if cases is not None else "")
    tag += "_reduced" if reduced_grid and zoom != 1.0 else ""
    out_dir = Path(out) if out is not None else Path(run_dir) / tag
    predictor = _predictor(net, inf, dev)
    if not reduced_grid:
        predictor = resampled_predictor(predictor, zoom)
    result = evaluate_cases(predictor, _eval_cases(dataset, indices), out_dir=out_dir,
                            largest_component=inf.largest_component, progress=not quiet)
    result.summary["checkpoint"] = str(ckpt_path)
    result.summary["inference"] = inf.model_dump(mode="json")
    result.summary["scoring_grid"] = {"grid": "reduced" if scoring_zoom != 1.0 else "source",
                                      "training_zoom": zoom}
    if "summary_json" in result.files:
        from medssl.runtime.atomic import write_json_atomic

        write_json_atomic(result.files["summary_json"], result.summary)
    return result


class RunPredictor:
    """A trained run's network, loaded once, as a function of whole scans: image → probabilities.

    Each scan is z-score normalised over the whole volume like the training data; a run trained on
    resampled volumes (``data.zoom``) predicts on the resampled grid and its probabilities are
    resampled back to the scan's grid (:func:`resampled_predictor`).

    Args:
        run_dir: the run directory.
        checkpoint: ``final`` | ``best`` | ``latest`` | an iteration number.
        device: torch device (default: CUDA when available, else CPU).
    """

    def __init__(self, run_dir: str | Path, checkpoint: str = "final", device: str | None = None) -> None:
        dev = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.network, self.config, self.checkpoint_path = load_trained_network(run_dir, checkpoint, dev)
        self._predict = resampled_predictor(_predictor(self.network, self.config.inference, dev),
                                            self.config.data.zoom)

    @property
    def n_classes(self) -> int:
        """Number of classes the network predicts (background included)."""
        return _n_classes(self.network)

    def probabilities(self, image: np.ndarray) -> np.ndarray:
        """Class probabilities [C, H, W, D] float32 of a scan (H, W, D) on its own grid."""
        arr = np.asarray(image, dtype=np.float32)
        arr = (arr - arr.mean()) / max(float(arr.std()), 1e-8)
        return self._predict(arr)

    def labels(self, image: np.ndarray) -> np.ndarray:
        """Label map (H, W, D) uint8 of a scan (argmax; the run's largest-component setting)."""
        from medssl.engine.inference import probs_to_mask

        return probs_to_mask(self.probabilities(image),
                             largest_component=self.config.inference.largest_component)


def predict_file(
    run_dir: str | Path,
    input_path: str | Path,
    out_path: str | Path,
    checkpoint: str = "final",
    device: str | None = None,
    probabilities: bool = False,
) -> Path:
    """Segment one scan (NIfTI / NRRD / DICOM / HDF5) and write a NIfTI label map with its geometry
    (see :class:`RunPredictor`); ``probabilities`` also writes the foreground probability map."""
    from medssl.data.io import read_image, write_nifti
    from medssl.engine.inference import probs_to_mask

    predictor = RunPredictor(run_dir, checkpoint, device)
    img = read_image(input_path, ndim=3)
    probs = predictor.probabilities(img.array)
    mask = probs_to_mask(probs, largest_component=predictor.config.inference.largest_component)
    out = write_nifti(out_path, mask, img.affine)
    if probabilities:
        write_nifti(Path(str(out_path).replace(".nii", "_prob.nii")), probs[1].astype(np.float32), img.affine)
    return out


