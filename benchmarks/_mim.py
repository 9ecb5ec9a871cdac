"""Shared code of the Mask What Matters transfer benchmarks (``mim_brain2d.py``, ``mim_chest2d.py``).

One benchmark = one embedded 2D dataset and one text prompt. The data are synthesized once into
``benchmarks/work/<dataset>_<n>_s<seed>`` and localized once into a ROI cache beside them with the offline
``structures`` backend. Then every (arm, seed) point of the grid

1. pretrains a ResNet-18 with SparK on all training-list images (no labels), with uniform random masks
   (``random_<r>``) or text-guided masks (``guided_<r_roi>_<r_bg>``), and exports its encoder (timm
   state dict); the ``scratch`` arm skips this step;
2. fine-tunes a classifier from that encoder and scores the final epoch on the test split (accuracy,
   balanced accuracy, AUROC, F1; the epoch with the best validation accuracy is kept as a secondary,
   clearly labelled number);
3. fine-tunes Mask R-CNN (ResNet-18-FPN) from the same encoder and scores the final model on the test
   split (COCO BoxAP, MaskAP, AP50).

The pretraining of a point is shared by both downstream tasks. Each point writes
``benchmarks/results/mim_<dataset>/<arm>_s<seed>.json`` (skipped when present, so the grid accumulates
across sessions; ``--redo`` replaces); ``--table-only`` rebuilds ``benchmarks/results/mim_<dataset>.{md,json,png}``
(mean ± sample std over seeds per arm). A point interrupted half-way resumes its unfinished stage from
the stage's latest checkpoint; finished stages are reused (each stage's run folder is named by a hash of
its resolved config, so changing, say, the detection epochs reruns only the detection stages).

The protocol (:data:`FULL`) is sized so that the 18 points (6 arms × 3 seeds) of one dataset take about an
hour with ``--jobs 2`` (two points at a time, one torch thread each) on two free CPU cores: 160 images
(128 training-list + 32 test), pretraining and classification at 96×96 (a 3×3 grid of 32-pixel patches:
the smallest grid that keeps the arms' ratios apart), detection at the images' own 128×128. One
pretrained point was measured at 507 s of one thread on the shared development machine (pretraining 259 s,
classification 91 s, detection 157 s) under a load of about 4 on its two cores.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402

#: Default grid seeds (every stage of a point uses the point's seed).
DEFAULT_SEEDS: tuple[int, ...] = (1337, 1338, 1339)
#: The full protocol (about an hour for the 18 points of a dataset on two free cores, one thread per point;
#: see the module docstring).
FULL = {"n": 160, "data_seed": 0, "image_size": 96, "pretrain_epochs": 16, "classify_epochs": 24,
        "detect_epochs": 6, "detect_size": 128, "classify_batch": None}
#: The ``--quick`` smoke protocol: tiny data, one epoch of every stage.
QUICK = {"n": 20, "data_seed": 0, "image_size": 64, "pretrain_epochs": 1, "classify_epochs": 1,
         "detect_epochs": 1, "detect_size": 64, "classify_batch": 8}
#: Arms run by ``--quick``: one random / guided pair.
QUICK_ARMS: tuple[str, ...] = ("random_0.7", "guided_0.8_0.4")
#: Iterations between the periodic checkpoints of every stage (a killed point resumes from there).
CHECKPOINT_EVERY = 100


# ------------------------------------------------------------------------------------------ arms
@dataclass(frozen=True)
class Arm:
    """A pretraining arm: ``scratch`` (none), SparK ``random`` masks, or text-``guided`` masks."""

    name: str
    kind: Literal["scratch", "random", "guided"]
    ratio: float | None = None  # random: fraction of patches masked
    ratios: tuple[float, float] | None = None  # guided: (r_roi, r_bg)

    @property
    def pretrained(self) -> bool:
        return self.kind != "scratch"

    def describe(self) -> str:
        """Human-readable masking, e.g. ``guided 80 % ROI / 40 % background``."""
        if self.kind == "random":
            return f"random {self.ratio:.0%}"
        if self.kind == "guided":
            return f"guided {self.ratios[0]:.0%} ROI / {self.ratios[1]:.0%} background"  # type: ignore[index]
        return "no pretraining"

    def masking(self, rule: str) -> dict[str, Any]:
        """The ``masking`` section of the pretraining config (``rule``: the ROI label of a patch; random
        arms use it only to log the masked fractions inside and outside the ROI)."""
        if self.kind == "random":
            return {"kind": "random", "ratio": self.ratio, "rule": rule}
        if self.kind == "guided":
            return {"kind": "guided", "ratios": list(self.ratios), "rule": rule}  # type: ignore[arg-type]
        raise ValueError("the scratch arm has no masking")

    @property
    def preset(self) -> Path:
        """The pretraining preset the arm starts from."""
        return C.preset(f"brain2d_resnet18_{self.kind}", "pretrain")


ARMS: dict[str, Arm] = {a.name: a for a in (
    Arm("scratch", "scratch"),
    Arm("random_0.6", "random", ratio=0.6),
    Arm("random_0.7", "random", ratio=0.7),
    Arm("guided_0.8_0.4", "guided", ratios=(0.8, 0.4)),
    Arm("guided_0.7_0.3", "guided", ratios=(0.7, 0.3)),
    Arm("guided_0.6_0.2", "guided", ratios=(0.6, 0.2)),
)}


@dataclass(frozen=True)
class MimDataset:
    """A benchmark dataset: embedded generator name, prompt, patch ROI rule and fine-tuning presets."""

    name: str
    prompt: str
    rule: str
    rule_note: str
    classify_preset: Path
    detect_preset: Path

    @property
    def benchmark(self) -> str:
        return f"mim_{self.name}"


#: brain2d uses the ``any`` patch rule: its tumour boxes cover 1.5 % of the pixels, and at a 3×3 grid the
#: reference's top-left rule labels 1.1 % of the patches ROI (13 of 128 training images have one), so
#: guided masks would be uniform masks at the background ratio; ``any`` labels 21 % (every tumour image).
BRAIN2D = MimDataset("brain2d", "A brain MRI showing a suspicious irregular mass suggestive of a tumour", "any",
                     "the tumour boxes are small: the reference's top-left rule would label only 1.1 % of the "
                     "patches ROI at this grid and make the guided arms uniform masks at the background ratio",
                     C.preset("classify_brain2d_resnet18", "finetune"),
                     C.preset("detect_brain2d_r18", "finetune"))
#: chest2d keeps the reference's top-left rule (lung boxes: 36 % of the pixels, 43 % of the patches at a
#: 3×3 grid; ``any`` would label all of them) and reuses the small ResNet-18 Mask R-CNN preset (anchors
#: 8-128 px, one class).
CHEST2D = MimDataset("chest2d", "A chest X-ray highlighting both left and right lungs", "topleft",
                     "the reference's rule",
                     C.preset("classify_chest2d_resnet18", "finetune"),
                     C.preset("detect_brain2d_r18", "finetune"))


@dataclass(frozen=True)
class Point:
    """One (arm, seed) point of the grid."""

    arm: str
    seed: int

    @property
    def key(self) -> str:
        """File-name key, e.g. ``guided_0.8_0.4_s1337``."""
        return f"{self.arm}_s{self.seed}"

    @classmethod
    def parse(cls, key: str) -> Point:
        """Inverse of :attr:`key`."""
        arm, _, seed = key.rpartition("_s")
        if arm not in ARMS or not seed.isdigit():
            raise ValueError(f"not a grid key: {key!r}")
        return cls(arm, int(seed))


def grid(arms: Sequence[str], seeds: Sequence[int]) -> list[Point]:
    """Every combination, ordered seed → arm (so a partial grid has whole seeds)."""
    return [Point(a, s) for s in seeds for a in arms]


# -------------------------------------------------------------------------------------- protocol
@dataclass(frozen=True)
class Protocol:
    """What every point of one benchmark run shares."""

    dataset: MimDataset
    n: int
    data_seed: int
    image_size: int
    pretrain_epochs: int
    classify_epochs: int
    detect_epochs: int
    detect_size: int = 128  # Mask R-CNN input (pixels): the images' own size by default
    classify_batch: int | None = None  # None: the preset's
    rule: str = "topleft"
    quick: bool = False

    @property
    def data_dir(self) -> Path:
        return C.WORK / f"{self.dataset.name}_{self.n}_s{self.data_seed}"

    @property
    def roi_cache(self) -> Path:
        return C.WORK / f"{self.dataset.name}_{self.n}_s{self.data_seed}_roi"

    def settings(self) -> dict[str, Any]:
        """The protocol's numbers as plain data (part of every point's protocol id)."""
        return {"dataset": self.dataset.name, "prompt": self.dataset.prompt, "n": self.n,
                "data_seed": self.data_seed, "image_size": self.image_size,
                "pretrain_epochs": self.pretrain_epochs, "classify_epochs": self.classify_epochs,
                "detect_epochs": self.detect_epochs, "detect_size": self.detect_size,
                "classify_batch": self.classify_batch, "rule": self.rule}


def _list(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def ensure_data(proto: Protocol) -> Path:
    """Synthesize the dataset once (into a temporary folder, then renamed, so that a concurrent or
    interrupted call never leaves a half-written dataset). 128 × 128 PNG images, the generator's size."""
    from medssl.data.synthetic import synthesize

    root = proto.data_dir
    if (root / "test.list").is_file():
        return root
    tmp = root.parent / f".{root.name}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    C.say(f"synthesizing {proto.dataset.name}: {proto.n} images, seed {proto.data_seed} -> {C.rel(root)}")
    synthesize(proto.dataset.name, tmp, n=proto.n, seed=proto.data_seed)
    try:
        tmp.rename(root)
    except OSError:  # another process finished first: keep its copy
        shutil.rmtree(tmp, ignore_errors=True)
        if not (root / "test.list").is_file():
            raise
    return root


LOCALIZED = "mim_localization.json"


def ensure_roi_cache(proto: Protocol) -> dict[str, Any]:
    """Localize the prompt in every image of the dataset once (``structures`` backend, all splits:
    a test image never reaches pretraining, but its ROI is cheap and the cache is then complete).

    Returns the counts of the localization (also written to ``<cache>/mim_localization.json``, whose
    presence marks the cache as filled)."""
    from medssl.localize.run import LocalizeRunConfig, run_localization
    from medssl.runtime.atomic import write_json_atomic

    marker = proto.roi_cache / LOCALIZED
    if marker.is_file():
        data = json.loads(marker.read_text(encoding="utf-8"))
        if data.get("prompt") == proto.dataset.prompt:
            return data
    data_dir = ensure_data(proto)
    C.say(f"localizing \"{proto.dataset.prompt}\" (structures backend) -> {C.rel(proto.roi_cache)}")
    summary = run_localization(LocalizeRunConfig(data=[data_dir], prompt=proto.dataset.prompt,
                                                 backend="structures", cache=proto.roi_cache, quiet=True,
                                                 strict=True))
    train = set(_list(data_dir / "train.list"))
    fractions = [r["roi_fraction"] for r in summary.records if Path(r["file"]).stem in train]
    out = {"prompt": proto.dataset.prompt, "backend": "structures", **summary.counts(),
           "train_images": len(fractions),
           "train_mean_roi_fraction": statistics.fmean(fractions) if fractions else 0.0,
           "train_empty_rois": sum(1 for f in fractions if f == 0.0)}
    write_json_atomic(marker, out)
    return out


# --------------------------------------------------------------------------------------- configs
def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
    return base


def _resolve(cls: Any, preset: Path, settings: dict[str, Any]) -> Any:
    """``cls`` from a preset with ``settings`` merged over it key by key."""
    import yaml

    from medssl.config import load_config

    data = yaml.safe_load(preset.read_text(encoding="utf-8")) or {}
    return load_config(cls, base=_merge(data, settings))


def _runtime(name: str, runs_root: Path, seed: int, threads: int) -> dict[str, Any]:
    return {"name": name, "runs_root": str(runs_root), "seed": seed, "threads": threads, "quiet": True,
            "checkpoint_every": CHECKPOINT_EVERY, "keep_checkpoints": 1}


def pretrain_config(proto: Protocol, arm: Arm, seed: int, runs_root: Path, threads: int) -> Any:
    """The :class:`PretrainConfig` of an arm: its preset at the protocol's size and epochs, all
    training-list images, the ROI cache (guided masks; random arms log the ROI / background ratios)."""
    from medssl.engine.pretrain import PretrainConfig

    return _resolve(PretrainConfig, arm.preset, {
        "data": {"folder": str(proto.data_dir), "split": None, "image_size": proto.image_size,
                 "roi_cache": str(proto.roi_cache), "roi_prompt": proto.dataset.prompt,
                 "roi_backend": "structures"},
        "masking": arm.masking(proto.rule), "optim": {"epochs": proto.pretrain_epochs,
                                            "warmup_epochs": min(2, max(proto.pretrain_epochs - 1, 0))},
        "preview_every": 0, "preview_images": 4,
        "runtime": _runtime("pretrain", runs_root, seed, threads)})


def classify_config(proto: Protocol, seed: int, init: Path | None, runs_root: Path, threads: int) -> Any:
    """The :class:`ClassifyConfig`: the dataset's preset at the protocol's size and epochs."""
    from medssl.engine.classify import ClassifyConfig

    return _resolve(ClassifyConfig, proto.dataset.classify_preset, {
        "data": {"spec": f"csv:{proto.data_dir / 'classes.csv'}",
                 **({"batch_size": proto.classify_batch} if proto.classify_batch else {})},
        "model": {"image_size": proto.image_size},
        "init": str(init) if init is not None else None, "epochs": proto.classify_epochs,
        "checkpoint_every_epochs": None, "runtime": _runtime("classify", runs_root, seed, threads)})


def has_boxes(data_dir: Path) -> bool:
    """Whether the dataset's COCO file holds at least one annotation."""
    path = data_dir / "annotations.json"
    if not path.is_file():
        return False
    return bool(json.loads(path.read_text(encoding="utf-8")).get("annotations"))


def detect_config(proto: Protocol, seed: int, init: Path | None, runs_root: Path, threads: int) -> Any:
    """The :class:`DetectConfig`: the small Mask R-CNN preset at the protocol's size and epochs; the
    training list trains, the test list is scored (no validation during training: the only held-out
    images are the test images, and choosing a checkpoint on them would flatter it). The preset's lr
    steps keep their fractions of training."""
    import yaml

    from medssl.engine.detect import DetectConfig

    preset = yaml.safe_load(proto.dataset.detect_preset.read_text(encoding="utf-8")) or {}
    scale = proto.detect_epochs / float(preset.get("epochs", proto.detect_epochs))
    decay = [round(e * scale, 3) for e in preset.get("optim", {}).get("decay_epochs", [])]
    return _resolve(DetectConfig, proto.dataset.detect_preset, {
        "data": {"root": str(proto.data_dir)},
        "model": {"min_size": proto.detect_size, "max_size": proto.detect_size},
        "optim": {"decay_epochs": decay}, "init": str(init) if init is not None else None,
        "epochs": proto.detect_epochs, "validate_every": 0, "figures": 2,
        "runtime": _runtime("detect", runs_root, seed, threads)})


def _portable(value: Any) -> Any:
    """Config data with the repository folder replaced by ``<repo>`` (the same id on every clone)."""
    if isinstance(value, dict):
        return {k: _portable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_portable(v) for v in value]
    if isinstance(value, str):
        return value.replace(str(C.REPO), "<repo>")
    return value


def _config_data(cfg: Any) -> dict[str, Any] | None:
    if cfg is None:
        return None
    from medssl.config import config_to_dict

    data = config_to_dict(cfg)
    data.pop("runtime", None)
    if data.get("init") is not None:
        data["init"] = "pretrained encoder"
    return _portable(C.without_later_defaults(data))


# ------------------------------------------------------------------------------------------ jobs
def _in_folder(cfg: Any, runs_root: Path, name: str) -> Any:
    """``cfg`` with its run directory ``runs_root / name``."""
    return cfg.model_copy(update={"runtime": cfg.runtime.model_copy(update={"runs_root": runs_root, "name": name})})


@dataclass
class MimJob:
    """Everything needed to run one point (plain data: a ``--only`` subprocess rebuilds it).

    Every stage runs in ``<raw>/runs/<arm>_s<seed>/<stage>_<id>``, ``id`` a hash of the stage's resolved
    config (without runtime and folders; a fine-tuning stage's id includes its encoder's), so a stage whose
    settings did not change is reused when another stage's settings do. The encoder is exported to
    ``<raw>/runs/<arm>_s<seed>/encoder_<pretrain id>.pt``.
    """

    proto: Protocol
    point: Point
    results_dir: Path
    raw: Path
    threads: int | None = None
    command: str = ""
    keep_checkpoints: bool = False
    _configs: dict[str, Any] | None = field(default=None, repr=False)
    _ids: dict[str, str | None] | None = field(default=None, repr=False)

    @property
    def arm(self) -> Arm:
        return ARMS[self.point.arm]

    def result_path(self) -> Path:
        return self.results_dir / f"{self.point.key}.json"

    def point_dir(self) -> Path:
        return self.raw / "runs" / self.point.key

    def encoder_path(self) -> Path | None:
        """Where the pretrained encoder is exported (None for ``scratch``)."""
        pid = self.stage_ids()["pretrain"]
        return self.point_dir() / f"encoder_{pid}.pt" if pid is not None else None

    def _resolve(self) -> None:
        threads = self.threads or C.DEFAULT_THREADS
        seed, proto, arm, where = self.point.seed, self.proto, self.arm, Path("runs")
        pre = pretrain_config(proto, arm, seed, where, threads) if arm.pretrained else None
        pid = C.short_hash({"pretrain": _config_data(pre)}) if pre is not None else None
        encoder = self.point_dir() / f"encoder_{pid}.pt" if pid is not None else None
        cls = classify_config(proto, seed, encoder, where, threads)
        det = detect_config(proto, seed, encoder, where, threads) if has_boxes(proto.data_dir) else None
        cid = C.short_hash({"classify": _config_data(cls), "encoder": pid})
        did = C.short_hash({"detect": _config_data(det), "encoder": pid}) if det is not None else None
        self._ids = {"pretrain": pid, "classify": cid, "detect": did}
        root = self.point_dir()
        self._configs = {"pretrain": _in_folder(pre, root, f"pretrain_{pid}") if pre is not None else None,
                         "classify": _in_folder(cls, root, f"classify_{cid}"),
                         "detect": _in_folder(det, root, f"detect_{did}") if det is not None else None}

    def configs(self) -> dict[str, Any]:
        """The resolved pretraining (None for scratch), classification and detection (None without
        boxes) configs, each with its own run folder."""
        if self._configs is None:
            self._resolve()
        return self._configs  # type: ignore[return-value]

    def stage_ids(self) -> dict[str, str | None]:
        """The stages' config hashes (None for a stage that does not run)."""
        if self._ids is None:
            self._resolve()
        return self._ids  # type: ignore[return-value]

    def config_id(self) -> str:
        """Short hash of the protocol and the three stages' ids: equal ids, equal experiment (the seed
        is not part of it: it is in the point's key)."""
        return C.short_hash({"protocol": self.proto.settings(), "arm": self.point.arm, "stages": self.stage_ids()})

    def status(self) -> str:
        """``todo`` (no result), ``done`` (a result with this protocol) or ``mismatch`` (another one)."""
        out = self.result_path()
        if not out.is_file():
            return "todo"
        try:
            old = json.loads(out.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return "todo"
        return "done" if old.get("config_id") == self.config_id() else "mismatch"


def _mode(run_dir: Path, redo: bool) -> str:
    from medssl.runtime.rundir import RunDir

    if redo:
        return "overwrite"
    run = RunDir(run_dir)
    return "resume" if run.is_run() and run.has_checkpoint() else "overwrite"


def _epoch_means(run_dir: Path, key: str) -> list[float]:
    from medssl.runtime.metrics_log import read_metrics

    return C.finite(r.get(key) for r in read_metrics(run_dir) if r["phase"] == "epoch")


def run_pretraining(job: MimJob, redo: bool) -> dict[str, Any]:
    """Pretrain (or reuse / resume) the point's encoder and export it; returns the masking record."""
    from medssl.engine.pretrain import export_encoder_checked, train_pretrain
    from medssl.runtime.checkpoint import CheckpointManager
    from medssl.runtime.rundir import RunDir

    cfg = job.configs()["pretrain"]
    run_dir = Path(cfg.runtime.runs_root) / cfg.runtime.name
    encoder = job.encoder_path()
    assert encoder is not None
    t0 = time.perf_counter()
    reuse = not redo and (run_dir / "summary.json").is_file() and encoder.is_file() \
        and encoder.with_name(encoder.name + ".json").is_file()
    ran: str | None = None
    if not reuse:
        ran = "export"
        final = CheckpointManager(RunDir(run_dir).checkpoints).path_for("final")
        if redo or not ((run_dir / "summary.json").is_file() and final.is_file()):
            ran = _mode(run_dir, redo)
            C.say(f"{job.point.key}: pretraining ({job.arm.describe()}, {cfg.optim.epochs} epochs, {ran})")
            train_pretrain(cfg, ran, command=job.command.split())  # type: ignore[arg-type]
        export_encoder_checked(run_dir, "timm", encoder)
    summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    per_epoch = _epoch_means(run_dir, "mask_ratio")
    expected = summary["expected_mask_ratio"]
    return {
        "arm": job.arm.describe(), "masking": cfg.masking.model_dump(mode="json"),
        "expected_overall": expected["overall"], "expected_overall_fixed_count": expected["overall_fixed_count"],
        "actual_overall": statistics.fmean(per_epoch) if per_epoch else None,
        "actual_overall_per_epoch": per_epoch,
        "actual_roi": _mean(_epoch_means(run_dir, "mask_ratio_roi")),
        "actual_background": _mean(_epoch_means(run_dir, "mask_ratio_bg")),
        "roi_patch_fraction": _mean(_epoch_means(run_dir, "roi_patch_fraction")),
        "expected_roi_patch_fraction": expected["roi_patch_fraction"],
        "images_with_roi_patches": expected["images_with_roi_patches"],
        "loss_per_epoch": _epoch_means(run_dir, "loss"),
        "images": summary["images"], "iterations": summary["iterations"],
        "iterations_per_epoch": summary["iterations_per_epoch"], "batch_size": summary["batch_size"],
        "grid": summary["grid"], "peak_lr": summary["peak_lr"], "run_dir": C.rel(run_dir),
        "encoder": C.rel(encoder), **_stage_seconds(run_dir, t0, ran),
    }


def _mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


STAGE_TIME = "mim_stage_time.json"


def _stage_seconds(run_dir: Path, t0: float, ran: str | None) -> dict[str, Any]:
    """``seconds`` (wall time of the stage) and ``how`` (``new`` / ``resume`` / ``reused``): measured now
    when the stage ran in this session (and stored in the run folder), else read back from there."""
    from medssl.runtime.atomic import write_json_atomic

    path = run_dir / STAGE_TIME
    if ran is not None:
        seconds = time.perf_counter() - t0
        write_json_atomic(path, {"seconds": seconds, "how": ran})
        return {"seconds": seconds, "how": ran}
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        old = {}
    return {"seconds": old.get("seconds"), "how": "reused"}


def _fine_tune_stage(job: MimJob, cfg: Any, label: str, train: Callable[..., Any],
                     redo: bool) -> tuple[Path, dict[str, Any], dict[str, Any]]:
    """Run a fine-tuning stage unless its ``results.json`` exists (resuming an interrupted one); returns
    the run folder, its results and the stage's timing record (:func:`_stage_seconds`)."""
    run_dir = Path(cfg.runtime.runs_root) / cfg.runtime.name
    t0 = time.perf_counter()
    ran: str | None = None
    if redo or not (run_dir / "results.json").is_file():
        ran = _mode(run_dir, redo)
        C.say(f"{job.point.key}: {label} ({cfg.epochs:g} epochs, {ran})")
        train(cfg, ran, command=job.command.split())
    res = json.loads((run_dir / "results.json").read_text(encoding="utf-8"))
    return run_dir, res, _stage_seconds(run_dir, t0, ran)


def run_classification(job: MimJob, redo: bool) -> dict[str, Any]:
    """Fine-tune (or reuse / resume) the classifier; returns final test, final val and best val metrics."""
    from medssl.engine.classify import train_classifier

    cfg = job.configs()["classify"]
    run_dir, res, timing = _fine_tune_stage(job, cfg, "classification", train_classifier, redo)
    best = res.get("best") or {}
    splits = res["splits"]
    return {
        "test": res["final"].get("test"), "final_val": res["final"]["val"], "final_epoch": res["final"]["epoch"],
        "best_val": best.get("val"), "best_epoch": best.get("epoch"), "selection": res["selection"],
        "classes": res["classes"], "train_images": splits["train"]["n"], "val_images": splits["val"]["n"],
        "test_images": splits["test"]["n"] if splits.get("test") else 0, "epochs": res["epochs"],
        "iterations_per_epoch": res["iterations_per_epoch"], "batch_size": res["global_batch_size"],
        "peak_lr": res["peak_lr"], "init": res["init"]["path"] if res.get("init") else None,
        "run_dir": C.rel(run_dir), **timing,
    }


def run_detection(job: MimJob, redo: bool) -> dict[str, Any] | None:
    """Fine-tune (or reuse / resume) Mask R-CNN; returns the final model's COCO metrics on the test split."""
    from medssl.engine.detect import train_detector

    cfg = job.configs()["detect"]
    if cfg is None:
        return None
    run_dir, res, timing = _fine_tune_stage(job, cfg, "detection", train_detector, redo)
    return {
        "test": (res.get("final") or {}).get("metrics"), "train_images": res["train_images"],
        "test_images": res["val_images"], "test_source": C.rel(Path(res["val_source"])) if res.get("val_source") else None,
        "iterations": res["iterations"], "steps_per_epoch": res["steps_per_epoch"], "epochs": res["epochs"],
        "batch_size": res["total_batch"], "lr": res["lr"], "categories": res["categories"],
        "image_size": cfg.model.min_size, "run_dir": C.rel(run_dir), **timing,
    }


class ProtocolMismatch(RuntimeError):
    """An existing result was produced with another protocol than the one requested."""


def run_point(job: MimJob, redo: bool = False) -> dict[str, Any] | None:
    """Pretrain, export and fine-tune one point and write its result file (None: already done).

    Raises:
        ProtocolMismatch: the existing result used another protocol and ``redo`` is false.
    """
    from medssl.runtime.atomic import write_json_atomic

    threads = C.set_threads(job.threads)
    if not redo:
        state = job.status()
        if state == "done":
            return None
        if state == "mismatch":
            raise ProtocolMismatch(f"{C.rel(job.result_path())}: made with another protocol; pass --redo to "
                                   "replace it or --results DIR to keep both")
    ensure_roi_cache(job.proto)
    t0 = time.perf_counter()
    masking = run_pretraining(job, redo) if job.arm.pretrained else None
    classification = run_classification(job, redo)
    detection = run_detection(job, redo)
    session = time.perf_counter() - t0
    stages = [s for s in (masking, classification, detection) if s is not None]
    known = [s["seconds"] for s in stages if s.get("seconds") is not None]
    # the point's time: its stages' own times (a stage reused from an earlier session keeps its time)
    seconds = sum(known) if len(known) == len(stages) else None
    result = {
        "benchmark": job.proto.dataset.benchmark, "dataset": job.proto.dataset.name, "arm": job.point.arm,
        "seed": job.point.seed, "config_id": job.config_id(), "protocol": protocol_record(job.proto),
        "pretraining": masking, "classification": classification, "detection": detection,
        "stage_ids": job.stage_ids(), "seconds": seconds, "session_seconds": session,
        "point_dir": C.rel(job.point_dir()), "command": job.command, "environment": C.environment(threads),
    }
    write_json_atomic(job.result_path(), result)
    if not job.keep_checkpoints:  # checkpoints only serve a resume; the exported encoder stays
        for cfg in job.configs().values():
            if cfg is not None:
                shutil.rmtree(Path(cfg.runtime.runs_root) / cfg.runtime.name / "checkpoints", ignore_errors=True)
    C.say(f"{job.point.key}: {summary_line(result)} ({session:.0f} s) -> {C.rel(job.result_path())}")
    return result


def summary_line(r: dict[str, Any]) -> str:
    """One line: actual mask ratio, test accuracy, BoxAP / MaskAP."""
    parts = []
    if r.get("pretraining"):
        parts.append(f"masked {100 * (r['pretraining']['actual_overall'] or 0):.1f} %")
    test = r["classification"].get("test") or {}
    parts.append(f"test acc {100 * (test.get('accuracy') or 0):.1f} %")
    det = (r.get("detection") or {}).get("test")
    if det:
        parts.append(f"BoxAP {100 * (det.get('box_ap') or 0):.1f} MaskAP {100 * (det.get('mask_ap') or 0):.1f}")
    return ", ".join(parts)


def protocol_record(proto: Protocol) -> dict[str, Any]:
    """The protocol's settings and its one-paragraph description (stored in every result)."""
    return {**proto.settings(), "description": describe(proto), "quick": proto.quick}


def describe(proto: Protocol) -> str:
    """One paragraph: data, localization, the three stages with their sizes, epochs and recipes."""
    data = proto.data_dir
    n_train, n_test = len(_list(data / "train.list")), len(_list(data / "test.list"))
    pre = pretrain_config(proto, ARMS["guided_0.8_0.4"], 0, Path("runs"), 1)
    cls = classify_config(proto, 0, None, Path("runs"), 1)
    det = detect_config(proto, 0, None, Path("runs"), 1) if has_boxes(data) else None
    s = proto.image_size
    grid = s // 32
    pre_ipe = n_train // pre.optim.batch_size
    rule_note = f" ({proto.dataset.rule_note})" if proto.rule == proto.dataset.rule else ""
    text = (f"`{proto.dataset.name}` synthesized at seed {proto.data_seed}: {proto.n} images of 128×128 "
            f"({n_train} training-list + {n_test} test). ROI cache: prompt \"{proto.dataset.prompt}\", "
            f"`structures` backend, once. Pretraining (arms other than scratch): SparK ResNet-18 on all "
            f"{n_train} training-list images (no labels) resized to {s}×{s} ({grid}×{grid} patches of 32 px), "
            f"decoder width {pre.model.decoder_width}, batch {pre.optim.batch_size}, {proto.pretrain_epochs} "
            f"epochs ({proto.pretrain_epochs * pre_ipe} iterations), LAMB base lr {pre.optim.base_lr} per 256 "
            f"images, {pre.optim.warmup_epochs:g} warm-up epochs then cosine; a patch is ROI by the "
            f"`{proto.rule}` rule{rule_note}. Classification: the `{proto.dataset.classify_preset.name}` recipe "
            f"({cls.optim.name}, peak lr "
            f"{cls.optim.base_lr * cls.data.batch_size / 256:g} at batch {cls.data.batch_size}, layer decay "
            f"{cls.optim.layer_decay}) at {s}×{s}, {proto.classify_epochs} epochs; a stratified "
            f"{cls.data.val_fraction:.0%} of the training list held out for validation; the final epoch is "
            f"scored on the {n_test} test images.")
    if det is not None:
        det_ipe = n_train // det.data.batch_size
        text += (f" Detection: Mask R-CNN ResNet-18-FPN (`{proto.dataset.detect_preset.name}`: all stages "
                 f"trained, one class for every finding) at {proto.detect_size}×{proto.detect_size} (detection "
                 f"runs at the images' own size, like the reference's Mask R-CNN at a larger size than its "
                 f"pretraining), batch {det.data.batch_size}, "
                 f"{proto.detect_epochs} epochs ({proto.detect_epochs * det_ipe} iterations, SGD lr "
                 f"{det.optim.lr * det.data.batch_size / det.optim.lr_batch_size:g}, × {det.optim.gamma:g} at epochs "
                 f"{', '.join(f'{e:g}' for e in det.optim.decay_epochs)}), no validation during training; the "
                 f"final model is scored on the {n_test} test images (COCO AP, boxes and masks).")
    if proto.quick:
        text += " QUICK smoke run: the numbers only show that the pipeline works."
    else:
        text += (" Sizes chosen so that the 18 points of the grid take about an hour on two CPU cores "
                 "(two points at a time, one torch thread each).")
    return text


# ----------------------------------------------------------------------------------- running the grid
def _finished_line(job: MimJob) -> str:
    r = json.loads(job.result_path().read_text(encoding="utf-8"))
    return f"{summary_line(r)} ({r['session_seconds']:.0f} s)"


def run_jobs(jobs: list[MimJob], script: str, base_args: list[str], n_parallel: int, redo: bool,
             log_dir: Path) -> list[str]:
    """Run every pending point (see ``_common.run_jobs``). Returns the failed keys."""
    return C.run_jobs(jobs, script, base_args, n_parallel, redo, log_dir, run_one=run_point, summary=_finished_line)


# -------------------------------------------------------------------------------------- tables
CLS_KEYS: tuple[str, ...] = ("accuracy", "balanced_accuracy", "auroc", "f1")
DET_KEYS: tuple[str, ...] = ("box_ap", "mask_ap", "box_ap50", "mask_ap50")


def _get(r: dict[str, Any], *path: str) -> Any:
    value: Any = r
    for key in path:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def summary_rows(results: list[dict[str, Any]], arms: Sequence[str]) -> list[dict[str, Any]]:
    """Per arm (in ``arms`` order, then any other arm found): seeds, masking, and mean ± std over seeds
    of the classification (%) and detection (AP × 100) metrics; ``*_mean`` hold the plain means."""
    order = list(arms) + sorted({r["arm"] for r in results} - set(arms))
    rows = []
    for arm in order:
        rs = sorted((r for r in results if r["arm"] == arm), key=lambda r: r["seed"])
        if not rs:
            continue
        col = lambda *p, rs=rs: [_get(r, *p) for r in rs]  # noqa: E731
        row: dict[str, Any] = {"arm": arm, "masking": ARMS[arm].describe() if arm in ARMS else arm,
                               "seeds": [r["seed"] for r in rs]}
        for key in ("expected_overall", "expected_overall_fixed_count", "actual_overall", "actual_roi",
                    "actual_background", "roi_patch_fraction"):
            row[key] = C.mean_std(col("pretraining", key), 100, 1)
            row[f"{key}_mean"] = _mean(C.finite(col("pretraining", key)))
        row["final_loss"] = C.mean_std([(_get(r, "pretraining", "loss_per_epoch") or [None])[-1] for r in rs], 1, 3)
        for key in CLS_KEYS:
            row[f"cls_{key}"] = C.mean_std(col("classification", "test", key), 100, 1)
            row[f"cls_{key}_mean"] = _mean(C.finite(col("classification", "test", key)))
        row["cls_best_val_accuracy"] = C.mean_std(col("classification", "best_val", "accuracy"), 100, 1)
        row["cls_final_val_accuracy"] = C.mean_std(col("classification", "final_val", "accuracy"), 100, 1)
        row["cls_best_epochs"] = [r["classification"].get("best_epoch") for r in rs]
        det = [r for r in rs if _get(r, "detection", "test")]
        row["det_seeds"] = len(det)
        for key in DET_KEYS:
            vals = [_get(r, "detection", "test", key) for r in det]
            row[f"det_{key}"] = C.mean_std(vals, 100, 1)
            row[f"det_{key}_mean"] = _mean(C.finite(vals))
        row["seconds"] = {k: _mean(C.finite(col(k, "seconds"))) for k in ("pretraining", "classification", "detection")}
        row["seconds"]["point"] = _mean(C.finite(col("seconds")))
        rows.append(row)
    return rows


def masking_table(rows: list[dict[str, Any]]) -> str:
    """Markdown: expected and actual masked fractions (%) and the final pretraining loss per arm."""
    head = ["arm", "masking", "seeds", "expected overall %", "expected (fixed counts) %", "actual overall %",
            "actual in ROI %", "actual in background %", "ROI patches %", "final loss"]
    body = [[r["arm"], r["masking"], len(r["seeds"]), r["expected_overall"], r["expected_overall_fixed_count"],
             r["actual_overall"], r["actual_roi"], r["actual_background"], r["roi_patch_fraction"], r["final_loss"]]
            for r in rows if r["arm"] != "scratch"]
    return C.markdown_table(head, body)


def classification_table(rows: list[dict[str, Any]]) -> str:
    """Markdown: final-epoch test metrics (%) per arm, then the final and best-epoch validation accuracy."""
    head = ["arm", "seeds", "actual mask %", "accuracy %", "balanced accuracy %", "AUROC %", "F1 (macro) %",
            "val accuracy %, final", "val accuracy %, best epoch (selected on val)"]
    body = [[r["arm"], len(r["seeds"]), r["actual_overall"], *[r[f"cls_{k}"] for k in CLS_KEYS],
             r["cls_final_val_accuracy"], r["cls_best_val_accuracy"]] for r in rows]
    return C.markdown_table(head, body)


def detection_table(rows: list[dict[str, Any]]) -> str:
    """Markdown: COCO AP × 100 of the final detector on the test split per arm."""
    head = ["arm", "seeds", "actual mask %", "BoxAP", "MaskAP", "BoxAP50", "MaskAP50"]
    body = [[r["arm"], r["det_seeds"], r["actual_overall"], *[r[f"det_{k}"] for k in DET_KEYS]]
            for r in rows if r["det_seeds"]]
    return C.markdown_table(head, body)


def plot(results: list[dict[str, Any]], rows: list[dict[str, Any]], path: Path, title: str) -> Path | None:
    """Test accuracy, BoxAP and MaskAP per arm: bars = mean over seeds, points = seeds; the x labels
    give the actual overall mask ratio."""
    if not results:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("classification", "test", "accuracy", "test accuracy (%)"),
              ("detection", "test", "box_ap", "BoxAP (× 100)"), ("detection", "test", "mask_ap", "MaskAP (× 100)")]
    panels = [p for p in panels if any(_get(r, *p[:3]) is not None for r in results)]
    arms = [r["arm"] for r in rows]
    labels = [r["arm"] if r["actual_overall_mean"] is None else
              f"{r['arm']}\n{100 * r['actual_overall_mean']:.0f} % masked" for r in rows]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.8), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (task, split, key, ylabel) in zip(axes[0], panels, strict=True):
        for i, arm in enumerate(arms):
            vals = C.finite(100 * v for v in (_get(r, task, split, key) for r in results if r["arm"] == arm)
                            if v is not None)
            if not vals:
                continue
            color = colors[i % len(colors)]
            ax.bar(i, statistics.fmean(vals), 0.7, color=color, alpha=0.35)
            offsets = [i + 0.25 * (k - (len(vals) - 1) / 2) / max(len(vals), 1) for k in range(len(vals))]
            ax.scatter(offsets, vals, color=color, s=16, zorder=3)
        ax.set_xticks(range(len(arms)), labels, rotation=30, fontsize=7, ha="right")
        ax.set_ylabel(ylabel)
        ax.set_ylim(bottom=0)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    from medssl.runtime.atomic import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path


def counts_line(results: list[dict[str, Any]]) -> str:
    """Images and iterations of each stage, from the first result that ran each stage."""
    pre = next((r["pretraining"] for r in results if r.get("pretraining")), None)
    cls = next((r["classification"] for r in results if r.get("classification")), None)
    det = next((r["detection"] for r in results if r.get("detection")), None)
    parts = []
    if pre:
        parts.append(f"pretraining {pre['images']} images × {len(pre['loss_per_epoch'])} epochs = "
                     f"{pre['iterations']} iterations of batch {pre['batch_size']} ({pre['grid'][0]}×{pre['grid'][1]} "
                     "patch grid)")
    if cls:
        parts.append(f"classification {cls['train_images']} training / {cls['val_images']} validation / "
                     f"{cls['test_images']} test images, {cls['epochs']} epochs = "
                     f"{cls['epochs'] * cls['iterations_per_epoch']} iterations of batch {cls['batch_size']}")
    if det:
        parts.append(f"detection {det['train_images']} training / {det['test_images']} test images at "
                     f"{det.get('image_size', '?')} px, {det['iterations']} iterations of batch {det['batch_size']}")
    return "Data and iterations: " + "; ".join(parts) + "." if parts else ""


def load_results(results_dir: Path, benchmark: str) -> list[dict[str, Any]]:
    """The point result files of ``benchmark`` in ``results_dir``."""
    return [r for r in C.load_results(results_dir) if r.get("benchmark") == benchmark]


def write_report(args: argparse.Namespace, proto: Protocol, command: str) -> Path:
    """Rebuild ``<benchmark>.{md,json,png}`` in ``args.out`` from the point files in ``args.results``."""
    name = proto.dataset.benchmark
    results = load_results(args.results, name)
    rows = summary_rows(results, list(ARMS))
    png = plot(results, rows, args.out / f"{name}.png",
               f"{proto.dataset.name}: transfer after masked pretraining (bars: mean over seeds, points: seeds)")
    descriptions = []
    for r in results:
        text = r.get("protocol", {}).get("description", "")
        if text not in descriptions:
            descriptions.append(text)
    lines = [f"# Mask What Matters transfer benchmark on `{proto.dataset.name}` (CPU protocol)", "",
             f"Regenerate: `{command}` (runs only what is missing; add `--table-only` to rebuild this table from "
             f"`{C.rel(args.results)}/*.json`).", ""]
    lines += [f"Protocol: {text}\n" for text in descriptions]
    loc = proto.roi_cache / LOCALIZED
    if loc.is_file():
        info = json.loads(loc.read_text(encoding="utf-8"))
        lines += [f"Localization: {info['train_images']} training-list images, mean ROI fraction "
                  f"{100 * info['train_mean_roi_fraction']:.1f} % of the pixels, {info['train_empty_rois']} empty ROI "
                  "maps (an image with an empty ROI is masked uniformly at the background ratio).", ""]
    if not results:
        lines += ["No point has finished yet.", ""]
    else:
        lines += [counts_line(results), "",
                  "## Pretraining masks", "",
                  "Expected overall = mean over the training images of (|R|·r_roi + |B|·r_bg) / (|R| + |B|) for "
                  "guided masks (the spec's formula), r for random masks; with fixed counts = the fraction the "
                  "fixed-count masks of that grid actually hide (keep ⌊|R|(1−r_roi)⌋ + ⌊|B|(1−r_bg)⌋, or "
                  "round(N(1−r))). Actual = the mean over epochs of the logged per-epoch mean of the overall "
                  "masked fraction (random flips move the ROI against the patch grid, so it can differ from "
                  f"the expected value). ROI patches = fraction of patches labelled ROI by the `{proto.rule}` "
                  "rule (logged per epoch, averaged).", "",
                  masking_table(rows), "",
                  "## Classification (test split, final epoch)", "",
                  "Headline: the final-epoch model scored on the test split. The last column is the "
                  "reference's reported number, the validation accuracy of the epoch chosen on that same "
                  "validation split (optimistic).", "",
                  classification_table(rows), ""]
        if any(r["det_seeds"] for r in rows):
            lines += ["## Detection and instance segmentation (test split, final model)", "",
                      "COCO AP × 100 over IoU 0.50:0.95 (BoxAP, MaskAP) and at IoU 0.50, one class for every "
                      "finding.", "", detection_table(rows), ""]
        lines += ["Mean ± sample standard deviation over seeds (one value: one seed).", ""]
        secs = [r["seconds"] for r in rows if r["seconds"].get("point")]
        if secs:
            mean = lambda k: _mean(C.finite(s.get(k) for s in secs))  # noqa: E731
            lines += [f"Time per point (one torch thread, shared machine; context only): pretraining "
                      f"{mean('pretraining') or 0:.0f} s, classification {mean('classification') or 0:.0f} s, "
                      f"detection {mean('detection') or 0:.0f} s, whole point {mean('point') or 0:.0f} s on average.", ""]
        if png is not None:
            lines += [f"![transfer per arm]({png.name})", ""]
    summary = {"benchmark": name, "command": command, "protocols": descriptions, "rows": rows,
               "runs": [{k: r.get(k) for k in ("arm", "seed", "config_id", "seconds")} |
                        {"actual_mask_ratio": _get(r, "pretraining", "actual_overall"),
                         "expected_mask_ratio": _get(r, "pretraining", "expected_overall"),
                         "classification_test": _get(r, "classification", "test"),
                         "classification_best_val": _get(r, "classification", "best_val"),
                         "detection_test": _get(r, "detection", "test")} for r in results]}
    C.write_outputs(args.out, name, summary, "\n".join(lines))
    C.say(f"wrote {C.rel(args.out / (name + '.md'))}" + (f" and {C.rel(png)}" if png else "")
          + f" ({len(results)} points)")
    return args.out / f"{name}.md"


# ------------------------------------------------------------------------------------------- CLI
def build_parser(dataset: MimDataset) -> argparse.ArgumentParser:
    """The command-line options of ``mim_<dataset>.py``."""
    p = argparse.ArgumentParser(description=f"Mask What Matters transfer benchmark on {dataset.name} "
                                "(accumulating grid of pretraining arms x seeds).")
    p.add_argument("--quick", action="store_true", help="smoke run: one random / guided pair, one seed, 1 epoch "
                   "of each stage on 20 images (writes under benchmarks/results/raw/quick/)")
    p.add_argument("--arms", nargs="+", choices=list(ARMS), default=None, help=f"default: {' '.join(ARMS)}")
    p.add_argument("--seeds", nargs="+", type=int, default=None,
                   help=f"default: {' '.join(map(str, DEFAULT_SEEDS))}")
    p.add_argument("--n", type=int, default=None, help=f"images synthesized (default {FULL['n']})")
    p.add_argument("--image-size", type=int, default=None,
                   help=f"pixels, a multiple of 32 (default {FULL['image_size']})")
    p.add_argument("--pretrain-epochs", type=int, default=None, help=f"default {FULL['pretrain_epochs']}")
    p.add_argument("--classify-epochs", type=int, default=None, help=f"default {FULL['classify_epochs']}")
    p.add_argument("--detect-epochs", type=int, default=None, help=f"default {FULL['detect_epochs']}")
    p.add_argument("--detect-size", type=int, default=None, help=f"Mask R-CNN input size in pixels "
                   f"(default {FULL['detect_size']}: the images' own)")
    p.add_argument("--rule", default=None, help=f"ROI label of a patch: topleft | any | center | fraction>=t "
                   f"(default {dataset.rule})")
    p.add_argument("--jobs", type=int, default=None, help="points in parallel, one torch thread each (default 2; "
                   "quick 1)")
    p.add_argument("--threads", type=int, default=None, help="torch threads per point (default 1)")
    p.add_argument("--table-only", action="store_true", help="only rebuild the tables and the plot")
    p.add_argument("--redo", action="store_true", help="rerun points whose results exist")
    p.add_argument("--keep-checkpoints", action="store_true", help="keep the stages' checkpoints of finished "
                   "points (default: only the exported encoder stays)")
    p.add_argument("--results", type=Path, default=None, help="per-point result folder")
    p.add_argument("--out", type=Path, default=None, help="folder for the tables and the plot")
    p.add_argument("--only", default=None, help=argparse.SUPPRESS)
    p.add_argument("--parent-command", default=None, help=argparse.SUPPRESS)
    return p


def finish_args(args: argparse.Namespace, dataset: MimDataset) -> tuple[argparse.Namespace, Protocol]:
    """Fill the defaults that depend on ``--quick``; build the protocol."""
    base = QUICK if args.quick else FULL
    args.arms = args.arms or list(QUICK_ARMS if args.quick else ARMS)
    args.seeds = args.seeds or list(DEFAULT_SEEDS[:1] if args.quick else DEFAULT_SEEDS)
    for key in ("n", "image_size", "pretrain_epochs", "classify_epochs", "detect_epochs", "detect_size"):
        if getattr(args, key) is None:
            setattr(args, key, base[key])
    if args.image_size % 32:
        raise SystemExit(f"{dataset.benchmark}: --image-size must be a multiple of 32 (the encoder's stride)")
    args.rule = args.rule or dataset.rule
    args.jobs = args.jobs or (1 if args.quick else 2)
    args.redo = args.redo or args.quick  # smoke results are throwaway: always rerun them
    name = dataset.benchmark
    root = C.results_root(args.quick)
    args.results = args.results or root / name
    args.out = args.out or (args.results.parent if args.results != root / name else root)
    args.raw = (C.QUICK if args.quick else C.RAW) / f"{name}_runs"
    proto = Protocol(dataset, n=args.n, data_seed=base["data_seed"], image_size=args.image_size,
                     pretrain_epochs=args.pretrain_epochs, classify_epochs=args.classify_epochs,
                     detect_epochs=args.detect_epochs, detect_size=args.detect_size,
                     classify_batch=base["classify_batch"],
                     rule=args.rule, quick=args.quick)
    return args, proto


def child_args(args: argparse.Namespace, command: str) -> list[str]:
    """The options a ``--only KEY`` subprocess needs to rebuild the same job."""
    out = ["--n", str(args.n), "--image-size", str(args.image_size), "--pretrain-epochs", str(args.pretrain_epochs),
           "--classify-epochs", str(args.classify_epochs), "--detect-epochs", str(args.detect_epochs),
           "--detect-size", str(args.detect_size), "--rule", args.rule,
           "--results", str(args.results), "--parent-command", command]
    if args.quick:
        out.append("--quick")
    if args.threads is not None:
        out += ["--threads", str(args.threads)]
    if args.keep_checkpoints:
        out.append("--keep-checkpoints")
    return out


def build_jobs(args: argparse.Namespace, proto: Protocol, points: list[Point], command: str) -> list[MimJob]:
    """One :class:`MimJob` per point."""
    return [MimJob(proto=proto, point=p, results_dir=args.results, raw=args.raw, threads=args.threads,
                   command=command, keep_checkpoints=args.keep_checkpoints) for p in points]


def main(dataset: MimDataset, argv: Sequence[str] | None = None) -> int:
    """The benchmark's entry point: ``--only`` one point, else run what is missing, then the tables."""
    args, proto = finish_args(build_parser(dataset).parse_args(argv), dataset)
    script = f"{dataset.benchmark}.py"
    given = list(sys.argv[1:] if argv is None else argv)
    command = C.regenerate_command(script, [a for a in given if a not in ("--table-only", "--redo")])
    if args.only is not None:  # one point, in a subprocess started by run_jobs
        ensure_roi_cache(proto)
        job = build_jobs(args, proto, [Point.parse(args.only)], args.parent_command or command)[0]
        run_point(job, redo=args.redo)
        return 0
    if args.table_only:  # the table names the command that produced its results
        recorded = [r.get("command") for r in load_results(args.results, dataset.benchmark) if r.get("command")]
        if recorded:
            command = statistics.mode(recorded)
    C.say(f"regenerate with: {command}")
    t0 = time.perf_counter()
    failed: list[str] = []
    if not args.table_only:
        ensure_roi_cache(proto)  # once, before the points start in parallel
        jobs = build_jobs(args, proto, grid(args.arms, args.seeds), command)
        try:
            failed = run_jobs(jobs, script, child_args(args, command), args.jobs, args.redo, args.raw / "logs")
        except ProtocolMismatch as err:
            print(f"{dataset.benchmark}: {err}", file=sys.stderr)
            return 2
    write_report(args, proto, command)
    C.say(f"done in {time.perf_counter() - t0:.0f} s" + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    C.say(f"regenerate with: {command}")
    return 1 if failed else 0
