"""Quality benchmark: CORN on ``atrium3d`` from scratch vs from 3D masked pretraining (random or text-guided).

Arms (each at 2 and 4 labeled volumes, seeds 1337 1338 1339):

* ``scratch``: CORN exactly as in ``semi_atrium3d.py`` (same data, preset ``semi/atrium3d_corn``,
  150 iterations, the last 20 % at lr x 0.1, scored on the 5 test volumes). A ``corn_l<N>_s<seed>.json`` of
  ``benchmarks/results/semi_atrium3d/`` whose protocol hash (``_common.config_id``) is the one this grid
  would train is copied instead of rerun (``--no-reuse``: train it here).
* ``random``: the same CORN run with ``init_encoder`` = a V-Net encoder pretrained with SparK on all
  training-list volumes (no labels) with uniform random masks at ratio 0.6.
* ``guided``: the same with text-guided masks (ROI 0.8, background 0.4) from ROI maps of the structures
  backend (prompt "A cardiac MRI highlighting the left atrium", ``medssl localize run``).

Both pretraining arms use the preset ``pretrain/atrium3d_vnet_guided`` (V-Net width 8, the width
of the CORN CPU preset) with the same data, ROI maps, crops, flips, batch order, initialisation and seed
(= the CORN seed); only the masking differs. Each (arm, seed) pretraining runs once (in the first grid
point that needs it, under a file lock), is exported with ``export_encoder(..., "vnet")`` and serves both
label counts. Its folder name holds a hash of its resolved config, and the CORN config names that export,
so a changed pretraining protocol is a changed CORN protocol (``ProtocolMismatch`` unless ``--redo``).

Each point writes ``benchmarks/results/semi_atrium3d_init/<arm>_l<N>_s<seed>.json`` (Dice, Jaccard, 95HD,
ASD on the test volumes; under ``protocol.pretraining`` the pretraining's measured overall mask ratio and
final loss) and is skipped when present. ``--table-only`` rebuilds ``benchmarks/results/semi_atrium3d_init.{md,json,png}``.

Full grid: ``.venv/bin/python benchmarks/semi_atrium3d_init.py`` (6 pretrainings + 12 CORN runs, the 6
scratch runs reused; two processes of one thread each). Smoke run: ``--quick`` (under
``benchmarks/results/raw/quick/``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import statistics
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C  # noqa: E402
import semi_atrium3d as S  # noqa: E402

NAME = "semi_atrium3d_init"
ARMS: tuple[str, ...] = ("scratch", "random", "guided")
PRETRAIN_PRESET = C.preset("atrium3d_vnet_guided", "pretrain")
CORN_PRESET = C.preset("atrium3d_corn")
PROMPT = "A cardiac MRI highlighting the left atrium"
BACKEND = "structures"
ROI_DIR = C.WORK / f"{S.DATA_DIR.name}_roi_{BACKEND}"
RANDOM_RATIO = 0.6
GUIDED_RATIOS = (0.8, 0.4)
QUICK_PRETRAIN_EPOCHS = 1


# ------------------------------------------------------------------------------------ small helpers
@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if needed): one process at a time in the block."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+", encoding="utf-8") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _portable(text: str) -> str:
    """``text`` with the repository folder written as a relative path (the same on every clone)."""
    return text.replace(str(C.REPO) + "/", "").replace(str(C.REPO), ".")


def _nanmean(values: Sequence[float]) -> float | None:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return statistics.fmean(vals) if vals else None


# ------------------------------------------------------------------------------------- ROI maps
def ensure_rois(data: Path, cache: Path = ROI_DIR) -> dict[str, Any]:
    """Localize the training-list volumes of ``data`` into ``cache`` with the structures backend
    (cache hits when done before); returns the run's counts.

    Raises:
        RuntimeError: some volume could not be localized (pretraining needs a ROI map for each).
    """
    from medssl.localize.run import LocalizeRunConfig, run_localization

    cfg = LocalizeRunConfig(data=[data], split=data / "train.list", prompt=PROMPT, backend=BACKEND,
                            cache=cache, quiet=True)
    with file_lock(cache.parent / f".{cache.name}.lock"):
        summary = run_localization(cfg, log=C.say)
    if summary.failed:
        raise RuntimeError(f"{len(summary.failed)} volume(s) could not be localized: {summary.failed[0][1]}")
    counts = summary.counts()
    return {"backend": BACKEND, "prompt": PROMPT, "cache": C.rel(cache), "images": counts["images"],
            "computed": counts["computed"], "cache_hits": counts["cache_hits"],
            "empty_rois": counts["empty_rois"], "mean_roi_fraction": counts["mean_roi_fraction"]}


# ------------------------------------------------------------------------------------- pretraining
@dataclass(frozen=True)
class Pretraining:
    """One (arm, seed) pretraining: SparK with random or guided masks, exported as a V-Net encoder."""

    arm: str
    seed: int
    data: Path
    root: Path
    quick: bool = False
    threads: int | None = None
    keep_checkpoints: bool = False

    @property
    def key(self) -> str:
        return f"{self.arm}_s{self.seed}"

    def overrides(self) -> list[str]:
        """``--set`` overrides of the preset: data, ROI maps, seed and (the only difference) the masks."""
        out = [f"data.folder={self.data}", f"data.roi_cache={ROI_DIR}", f"data.roi_prompt={PROMPT}",
               f"data.roi_backend={BACKEND}", "preview_every=0", f"runtime.seed={self.seed}",
               f"runtime.threads={self.threads or C.DEFAULT_THREADS}"]
        if self.arm == "random":
            out += ["masking.kind=random", f"masking.ratio={RANDOM_RATIO}"]
        elif self.arm == "guided":
            out += ["masking.kind=guided", f"masking.ratios=[{GUIDED_RATIOS[0]}, {GUIDED_RATIOS[1]}]"]
        else:
            raise ValueError(f"arm {self.arm!r} has no pretraining")
        if self.quick:
            out += [f"optim.epochs={QUICK_PRETRAIN_EPOCHS}", "optim.warmup_epochs=0"]
        return out

    def config(self, name: str = "pretrain") -> Any:
        """The resolved :class:`PretrainConfig` (run directory ``<root>/runs/<name>``)."""
        from medssl.config import load_config
        from medssl.engine.pretrain import PretrainConfig

        base = {"runtime": {"name": name, "runs_root": str(self.root / "runs"), "quiet": True}}
        return load_config(PretrainConfig, PRETRAIN_PRESET, self.overrides(), base=base)

    @property
    def pretrain_id(self) -> str:
        """Short hash of the resolved config (seed kept, the other runtime settings and folders dropped)."""
        from medssl.config import config_to_dict

        data = config_to_dict(self.config())
        data["runtime"] = {"seed": data["runtime"]["seed"]}
        for key in ("folder", "roi_cache"):
            data["data"][key] = _portable(str(data["data"][key]))
        return C.short_hash(C.without_later_defaults(data))

    def paths(self) -> dict[str, Path]:
        """``run`` directory, ``export`` (.pt), ``record`` (JSON written last) and ``lock`` of this pretraining."""
        stem = f"{self.key}_{self.pretrain_id}"
        return {"run": self.root / "runs" / stem, "export": self.root / "exports" / f"{stem}.pt",
                "record": self.root / "exports" / f"{stem}.record.json",
                "lock": self.root / "locks" / f"{stem}.lock"}

    def record(self) -> dict[str, Any] | None:
        """The finished pretraining's record, or None when it has not finished."""
        path = self.paths()["record"]
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return None

    def clear(self) -> None:
        """Remove this pretraining's run, export and record (``--redo-pretraining``)."""
        p = self.paths()
        shutil.rmtree(p["run"], ignore_errors=True)
        for path in (p["export"], p["export"].with_name(p["export"].name + ".json"), p["record"]):
            path.unlink(missing_ok=True)


def ensure_pretraining(pre: Pretraining, command: str) -> dict[str, Any]:
    """Pretrain (or resume, or only export) ``pre`` unless its record exists; returns the record.

    The record: the measured overall mask ratio (mean over every step of the masked fraction of the
    batch's patch grid), inside / outside the ROI, the expected ratio, the epoch-mean loss of the first
    and last epoch, the export's load check and the seconds spent in this session.
    """
    from medssl.engine.pretrain import export_encoder_checked, train_pretrain
    from medssl.runtime.atomic import write_json_atomic
    from medssl.runtime.checkpoint import CheckpointManager
    from medssl.runtime.metrics_log import read_metrics
    from medssl.runtime.rundir import RunDir

    paths = pre.paths()
    with file_lock(paths["lock"]):
        done = pre.record()
        if done is not None:
            return done
        threads = C.set_threads(pre.threads)
        localization = ensure_rois(pre.data)
        run_dir = paths["run"]
        cfg = pre.config(run_dir.name)
        rd = RunDir(run_dir)
        t0 = time.perf_counter()
        if not CheckpointManager(rd.checkpoints).path_for("final").is_file():
            mode = "resume" if rd.is_run() and rd.has_checkpoint() else "overwrite"
            C.say(f"{NAME} pretraining {pre.key}: {cfg.masking.kind} masks, {cfg.optim.epochs} epochs "
                  f"({mode if mode == 'resume' else 'new'}, {threads} thread(s)) -> {C.rel(run_dir)}")
            train_pretrain(cfg, mode, command=command.split())
        seconds = time.perf_counter() - t0
        export = export_encoder_checked(run_dir, "vnet", paths["export"])
        summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
        epochs = [r for r in read_metrics(run_dir) if r["phase"] == "epoch"]
        sidecar = json.loads(export.sidecar.read_text(encoding="utf-8"))
        record = {
            "arm": pre.arm, "seed": pre.seed, "pretrain_id": pre.pretrain_id, "preset": C.rel(PRETRAIN_PRESET),
            "overrides": [_portable(o) for o in pre.overrides() if not o.startswith("runtime.threads")],
            "masking": cfg.masking.model_dump(mode="json"), "epochs": cfg.optim.epochs,
            "iterations": summary["iterations"], "iterations_per_epoch": summary["iterations_per_epoch"],
            "batch_size": summary["batch_size"], "peak_lr": summary["peak_lr"], "images": summary["images"],
            "crop_size": list(cfg.data.crop_size), "grid": summary["grid"], "patch_size": summary["patch_size"],
            "expected_mask_ratio": summary["expected_mask_ratio"]["overall"],
            "expected_mask_ratio_fixed_count": summary["expected_mask_ratio"]["overall_fixed_count"],
            # every epoch has the same number of steps: the mean of the epoch means is the mean over steps
            "mask_ratio": _nanmean([r.get("mask_ratio", math.nan) for r in epochs]),
            "mask_ratio_roi": _nanmean([r.get("mask_ratio_roi", math.nan) for r in epochs]),
            "mask_ratio_bg": _nanmean([r.get("mask_ratio_bg", math.nan) for r in epochs]),
            "roi_patch_fraction": _nanmean([r.get("roi_patch_fraction", math.nan) for r in epochs]),
            "first_loss": epochs[0]["loss"] if epochs else None,
            "final_loss": epochs[-1]["loss"] if epochs else None,
            "epoch_losses": [r["loss"] for r in epochs],
            "normalization": sidecar.get("normalization"), "localization": localization,
            "export": C.rel(export.path), "export_check": export.check, "run_dir": C.rel(run_dir),
            "seconds_this_session": seconds, "environment": C.environment(threads),
        }
        write_json_atomic(paths["record"], record)
        if not pre.keep_checkpoints:  # the periodic ones only serve a resume; final.pt stays for re-export
            for _, path in CheckpointManager(rd.checkpoints).iterations():
                path.unlink(missing_ok=True)
        C.say(f"{NAME} pretraining {pre.key}: mask ratio {record['mask_ratio']:.3f} (expected "
              f"{record['expected_mask_ratio']:.3f}), loss {record['first_loss']:.3f} -> {record['final_loss']:.3f}, "
              f"{seconds:.0f} s -> {C.rel(export.path)}")
        return record


# ---------------------------------------------------------------------------------------- protocol
def protocol(data: Path, args: argparse.Namespace) -> dict[str, Any]:
    """What every point of this grid shares, with the paragraph the table prints."""
    from medssl.engine.schedules import peak_lr

    semi = S.protocol(data, args.iterations, args.final_lr_decay, args.quick)
    cfg = C.load_preset(CORN_PRESET)
    pcfg = Pretraining("random", 0, data, args.raw / "pretrain", args.quick).config()
    n_train, o = semi["n_train"], pcfg.optim
    per_epoch = n_train // o.batch_size
    inf = cfg.inference
    decay = (f", the last {args.final_lr_decay:.0%} at lr × 0.1" if args.final_lr_decay > 0 else "")
    desc = (
        f"`atrium3d` synthesized at seed {S.DATA_SEED}: {S.N_VOLUMES} volumes of {'×'.join(map(str, S.SHAPE))} "
        f"({n_train} training-list + {semi['n_test']} test). **Pretraining** (arms random, guided): preset "
        f"`{C.rel(PRETRAIN_PRESET)}`: SparK with a V-Net encoder of width {pcfg.model.vnet_width} on all {n_train} "
        f"training-list volumes without labels, {'×'.join(map(str, pcfg.data.crop_size))} random crops with flips, "
        f"16-voxel mask patches, batch {o.batch_size}, **{o.epochs} epoch{'s' * (o.epochs != 1)}** ({per_epoch} "
        f"iterations each, {per_epoch * o.epochs} in all, {o.warmup_epochs:g} warm-up), LAMB peak lr "
        f"{peak_lr(o.base_lr, o.batch_size):.2g} cosine to ×{o.min_lr_ratio:g}, weight decay {o.wd_start:g} → "
        f"{o.wd_end:g}, clip {o.grad_clip:g}, seed = the CORN seed. `random`: uniform masks at {RANDOM_RATIO}; "
        f"`guided`: {GUIDED_RATIOS[0]} of the ROI patches and {GUIDED_RATIOS[1]} of the background patches "
        f"({pcfg.masking.rule} rule), ROI maps from `medssl localize run` with the `{BACKEND}` backend and the "
        f"prompt \"{PROMPT}\". The two pretraining runs of a seed read the same ROI maps (the random arm only to "
        f"log its ratios inside and outside the ROI), crops, flips, batches and initialisation: only the masks "
        f"differ. The final checkpoint is exported with `--format vnet` and loaded into every V-Net encoder of "
        f"CORN (`init_encoder`). **CORN** (all arms): `{C.rel(CORN_PRESET)}` (V-Net width "
        f"{semi['width']}, {'×'.join(map(str, cfg.data.patch))} crops, batch {cfg.data.labeled_bs} labeled + "
        f"{cfg.data.unlabeled_bs} unlabeled, SGD lr {cfg.optim.lr}) shortened from {cfg.max_iterations} to "
        f"**{args.iterations} iterations** (loss ramp at the same fraction of training{decay}), labeled = the "
        f"first N training volumes, the rest unlabeled; `scratch` is `semi_atrium3d`'s corn run (reused when its "
        f"protocol hash matches). Final checkpoint scored on the {semi['n_test']} test volumes: sliding window "
        f"{'×'.join(map(str, inf.patch))}, stride {'/'.join(map(str, inf.stride))}, no post-processing; 95HD and "
        f"ASD in voxels (mm also given).")
    if args.quick:
        desc += " QUICK smoke run: the numbers only show that the pipeline works."
    return {**semi, "description": desc, "pretrain_preset": C.rel(PRETRAIN_PRESET), "pretrain_epochs": o.epochs,
            "pretrain_iterations": per_epoch * o.epochs, "pretrain_batch": o.batch_size,
            "random_ratio": RANDOM_RATIO, "guided_ratios": list(GUIDED_RATIOS), "prompt": PROMPT,
            "backend": BACKEND}


# ------------------------------------------------------------------------------------------- jobs
def _reuse_source(args: argparse.Namespace, point: C.GridPoint) -> Path:
    return args.reuse_from / f"corn_l{point.labeled}_s{point.seed}.json"


def reuse_scratch(job: C.PointJob, source: Path, redo: bool) -> str:
    """Copy ``semi_atrium3d``'s corn result ``source`` as the scratch point ``job`` when it was made with
    this point's protocol (the same ``config_id``).

    Returns ``copied``, ``kept`` (an equal result is already there), ``mismatch`` (this point's file was
    made with another protocol: left to the grid's protocol check) or ``unusable`` (no matching source).
    """
    from medssl.runtime.atomic import write_json_atomic

    try:
        old = json.loads(source.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return "unusable"
    if old.get("config_id") != C.config_id(job.config()):
        return "unusable"
    state = job.status()
    if state == "done" and not redo:
        return "kept"
    if state == "mismatch" and not redo:
        return "mismatch"
    # a copy is not a run: its regenerating command is the grid's (what --table-only prints), not the copier's
    result = {**old, "benchmark": NAME, "method": job.point.method, "protocol": job.protocol,
              "reused_from": C.rel(source), "source_command": old.get("command"), "copied_by": job.command,
              "command": C.regenerate_command(f"{NAME}.py", [])}
    write_json_atomic(job.result_path(), result)
    return "copied"


def build_jobs(args: argparse.Namespace, points: list[C.GridPoint], command: str) -> list[C.PointJob]:
    """One :class:`PointJob` per point to run.

    In the grid's own process (no ``--only``) scratch points with a reusable ``semi_atrium3d`` result are
    copied here and left out, and ``--redo-pretraining`` / ``--quick`` clear the pretrainings the points
    need. Where the job runs in this process (``--only``, ``--jobs 1``) the pretraining it needs is run
    first (once per (arm, seed), under a lock), so its record is part of the point's result.
    """
    data = S.ensure_data()
    shared = protocol(data, args)
    corn_overrides = S.build_jobs(args, [C.GridPoint("corn", points[0].labeled, points[0].seed)],
                                  command)[0].overrides if points else []
    in_process = args.only is not None or args.jobs <= 1
    cleared: set[str] = set()
    jobs = []
    for p in points:
        pre = None if p.method == "scratch" else Pretraining(p.method, p.seed, data, args.raw / "pretrain",
                                                             args.quick, args.threads, args.keep_checkpoints)
        overrides = list(corn_overrides)
        if pre is not None:  # relative to the repository (the working folder of every run): portable hash
            overrides.append(f"init_encoder={C.rel(pre.paths()['export'])}")
        job = C.PointJob(benchmark=NAME, point=p, preset=CORN_PRESET, overrides=overrides,
                         results_dir=args.results, runs_root=args.raw / "runs",
                         protocol={**shared, "arm": p.method, "pretraining": None},
                         eval_cases=data / "test.list", eval_batch=args.eval_batch, threads=args.threads,
                         command=command, keep_checkpoints=args.keep_checkpoints)
        if pre is None:
            if args.only is None and not args.no_reuse:
                how = reuse_scratch(job, _reuse_source(args, p), args.redo)
                if how in ("copied", "kept"):
                    C.say(f"{p.key}: {'reused' if how == 'copied' else 'already reused'} "
                          f"{C.rel(_reuse_source(args, p))} (same protocol hash)")
                    continue
            jobs.append(job)
            continue
        pending = args.redo or job.status() == "todo"
        if pending and args.only is None and (args.redo_pretraining or args.quick) and pre.key not in cleared:
            pre.clear()
            cleared.add(pre.key)
        if pending and in_process and args.only is not None:  # a failure fails this subprocess's point
            job.protocol["pretraining"] = ensure_pretraining(pre, command)
        elif pending and in_process:  # --jobs 1: a failed pretraining fails its points, not the grid
            try:
                job.protocol["pretraining"] = ensure_pretraining(pre, command)
            except Exception:  # the traceback says why; the point then fails for want of its encoder
                import traceback

                traceback.print_exc()
                C.say(f"FAILED pretraining {pre.key}")
        else:
            job.protocol["pretraining"] = pre.record()
        jobs.append(job)
    return jobs


# ------------------------------------------------------------------------------------------- table
def _pretrain_cell(results: list[dict[str, Any]], key: str, digits: int) -> Any:
    def cell(row: dict[str, Any]) -> str:
        vals = [(r["protocol"].get("pretraining") or {}).get(key) for r in results
                if r["method"] == row["method"] and r["labeled"] == row["labeled"]]
        return C.mean_std(vals, digits=digits) if row["method"] != "scratch" else "—"
    return cell


def pretraining_records(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The distinct pretraining records of ``results``, ordered by arm and seed."""
    seen: dict[tuple[str, int, str], dict[str, Any]] = {}
    for r in results:
        rec = r.get("protocol", {}).get("pretraining")
        if rec:
            seen.setdefault((rec["arm"], rec["seed"], rec["pretrain_id"]), rec)
    return [seen[k] for k in sorted(seen, key=lambda k: (ARMS.index(k[0]), k[1], k[2]))]


def write_table(args: argparse.Namespace, command: str) -> Path:
    """Rebuild ``semi_atrium3d_init.{md,json,png}`` in ``args.out`` from the per-run files in ``args.results``."""
    results = [r for r in C.load_results(args.results) if r.get("benchmark") == NAME]
    rows = C.summary_rows(results, ARMS)
    png = C.plot_dice(results, ARMS, args.out / f"{NAME}.png",
                      "CORN by encoder init: test Dice (points: seeds)")
    extra = {"Δ Dice vs scratch (pp, paired seeds)": C.paired_delta_cell(results, "scratch"),
             "pretrain mask ratio (measured)": _pretrain_cell(results, "mask_ratio", 3),
             "pretrain final loss": _pretrain_cell(results, "final_loss", 3)}
    lines = ["# CORN on `atrium3d`: from scratch vs from 3D random-mask vs 3D text-guided pretraining", "",
             f"Regenerate: `{command}` (runs only what is missing; add `--table-only` to rebuild this table "
             f"from `{C.rel(args.results)}/*.json`).", ""]
    lines += [f"Protocol: {text}\n" for text in C.protocols(results)]
    records = pretraining_records(results)
    if not results:
        lines += ["No run has finished yet.", ""]
    else:
        lines += ["Rows: arm = encoder initialisation of CORN.", "", C.grid_table(rows, extra), "",
                  C.GRID_TABLE_NOTE + " Δ Dice: mean ± std over seeds of (arm − scratch) with the same seed "
                  "and label count, then each seed's difference in seed order.", ""]
        if png is not None:
            lines += [f"![Dice per arm]({png.name})", ""]
        reused = sum(1 for r in results if r.get("reused_from"))
        if reused:
            lines += [f"{reused} scratch result(s) copied from `semi_atrium3d` (field `reused_from`).", ""]
    if records:
        first = records[0]
        lines += ["## Pretraining runs", "",
                  f"Mask ratios: the fraction of masked patches of the {'×'.join(map(str, first['crop_size']))} "
                  f"crop's {'×'.join(map(str, first['grid']))} grid of {first['patch_size']}-voxel patches. Expected: over the volumes' central crops, by the spec's formula / with the "
                  "fixed per-image keep counts; measured: averaged over every training step (ROI / "
                  "background: inside / outside the ROI patches); "
                  "loss: the SparK loss averaged over the first and the last epoch.", "",
                  C.markdown_table(
                      ["arm", "seed", "epochs", "iterations", "expected ratio (spec / fixed count)", "measured ratio",
                       "ROI ratio",
                       "background ratio", "ROI patch fraction", "loss first → last epoch", "seconds"],
                      [[rec["arm"], rec["seed"], rec["epochs"], rec["iterations"], f"{rec['expected_mask_ratio']:.3f} / {rec['expected_mask_ratio_fixed_count']:.3f}",
                        _fmt(rec["mask_ratio"]), _fmt(rec["mask_ratio_roi"]), _fmt(rec["mask_ratio_bg"]),
                        _fmt(rec["roi_patch_fraction"]), f"{_fmt(rec['first_loss'])} → {_fmt(rec['final_loss'])}",
                        f"{rec['seconds_this_session']:.0f}"] for rec in records]), ""]
    summary = C.grid_summary(NAME, command, results, rows)
    summary["pretraining"] = records
    C.write_outputs(args.out, NAME, summary, "\n".join(lines))
    C.say(f"wrote {C.rel(args.out / (NAME + '.md'))}" + (f" and {C.rel(png)}" if png else "")
          + f" ({len(results)} runs)")
    return args.out / f"{NAME}.md"


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


# -------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="CORN on atrium3d from scratch vs from random-mask vs text-guided "
                                "3D pretraining (accumulating grid).", conflict_handler="resolve")
    C.add_grid_args(p, iterations=S.FULL_ITERATIONS, labeled=S.DEFAULT_LABELED, seeds=S.DEFAULT_SEEDS,
                    methods=ARMS, eval_batch=S.EVAL_BATCH, final_decay=S.FINAL_LR_DECAY)
    p.add_argument("--arms", "--methods", dest="methods", nargs="+", choices=list(ARMS), default=None,
                   help=f"encoder initialisations (default: {' '.join(ARMS)})")
    p.add_argument("--reuse-from", type=Path, default=None, help="semi_atrium3d result folder whose corn runs "
                   "serve as the scratch arm (default: its results folder; quick: its quick folder)")
    p.add_argument("--no-reuse", action="store_true", help="train the scratch arm here instead of reusing")
    p.add_argument("--redo-pretraining", action="store_true", help="pretrain again the (arm, seed) runs "
                   "the requested points need")
    args = C.finish_grid_args(p.parse_args(argv), NAME)
    args.reuse_from = args.reuse_from or C.results_root(args.quick) / S.NAME
    previous = os.getcwd()
    os.chdir(C.REPO)  # init_encoder paths are relative to the repository (portable protocol hashes)
    try:
        return C.run_grid(args, NAME, build_jobs, write_table, argv)
    finally:
        os.chdir(previous)


if __name__ == "__main__":
    sys.exit(main())
