"""Helpers shared by the medssl benchmark scripts: paths, threads, tables, result files, plots.

Every benchmark writes JSON + a markdown table under ``benchmarks/results/`` (``--quick`` smoke runs go
to ``benchmarks/results/raw/quick/`` so that they never replace the real tables) and prints the command
that regenerates its results.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"
RESULTS = BENCH / "results"
RAW = RESULTS / "raw"
QUICK = RAW / "quick"
WORK = BENCH / "work"
PYTHON = ".venv/bin/python"

#: The six semi-supervised methods, in the order tables list them.
METHODS: tuple[str, ...] = ("supervised", "mean_teacher", "ua_mt", "dual_branch", "caml", "corn")


def shared_root() -> Path:
    """The data folder beside the repository (``<repo>/../shared``), or ``$MEDSSL_SHARED``."""
    return Path(os.environ.get("MEDSSL_SHARED", REPO.parent / "shared"))


def results_root(quick: bool) -> Path:
    """Where a benchmark writes its tables: ``benchmarks/results`` (``raw/quick`` for smoke runs)."""
    return QUICK if quick else RESULTS


#: Default torch threads on a CPU. One: on a machine whose cores are shared with other work, two
#: OpenMP threads were measured 10-15x slower than one (threads spin waiting for a busy core).
DEFAULT_THREADS = 1


def set_threads(threads: int | None) -> int:
    """Set torch's intra-op threads (``None``: :data:`DEFAULT_THREADS`); returns the number in use."""
    import torch

    n = threads if threads is not None else DEFAULT_THREADS
    torch.set_num_threads(max(1, int(n)))
    return torch.get_num_threads()


def regenerate_command(script: str, argv: Sequence[str] | None = None) -> str:
    """The shell command (from the repository root) that reruns ``script`` with ``argv``."""
    args = list(sys.argv[1:] if argv is None else argv)
    return " ".join([PYTHON, f"benchmarks/{script}", *(shlex.quote(a) for a in args)])


def add_table_args(p: argparse.ArgumentParser, name: str) -> None:
    """``--table-only``, ``--results`` (per-point records) and ``--out`` (tables) of a small benchmark."""
    p.add_argument("--table-only", action="store_true", help="only rebuild the table from the records")
    p.add_argument("--results", type=Path, default=RESULTS / name, help="folder of the per-point records")
    p.add_argument("--out", type=Path, default=RESULTS, help="folder of the table")


def table_command(name: str, argv: Sequence[str] | None) -> str:
    """The command that regenerates benchmark ``name``'s records (``--table-only`` left out)."""
    given = list(sys.argv[1:] if argv is None else argv)
    return regenerate_command(f"{name}.py", [a for a in given if a != "--table-only"])


def environment(threads: int, device: str = "cpu") -> dict[str, Any]:
    """Facts that make timings comparable: versions, threads, device, CPU, date (UTC)."""
    import torch

    info: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                            "threads": threads, "device": device, "cpu_count": os.cpu_count(),
                            "machine": platform.machine(), "processor": _cpu_name(),
                            "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime())}
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub markdown table (cells converted with ``str``)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def finite(values: Iterable[float | None]) -> list[float]:
    """The finite numbers of ``values`` (drops None and NaN)."""
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def mean_std(values: Iterable[float | None], scale: float = 1.0, digits: int = 2) -> str:
    """``mean ± std`` (sample std over the finite values, times ``scale``); ``—`` when none."""
    vals = [v * scale for v in finite(values)]
    if not vals:
        return "—"
    if len(vals) == 1:
        return f"{vals[0]:.{digits}f}"
    return f"{statistics.fmean(vals):.{digits}f} ± {statistics.stdev(vals):.{digits}f}"


def write_outputs(out_dir: Path, stem: str, data: dict[str, Any], markdown: str) -> tuple[Path, Path]:
    """Write ``<out_dir>/<stem>.json`` and ``<stem>.md`` atomically; returns both paths."""
    from medssl.runtime.atomic import write_json_atomic, write_text_atomic

    json_path, md_path = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    write_json_atomic(json_path, data)
    write_text_atomic(md_path, markdown.rstrip() + "\n")
    return json_path, md_path


def rel(path: Path) -> str:
    """``path`` relative to the repository root when inside it (for tables and logs)."""
    try:
        return Path(path).resolve().relative_to(REPO).as_posix()
    except ValueError:
        return str(path)


def say(message: str) -> None:
    """One progress line on stdout, flushed (benchmarks run for long and are often piped)."""
    print(f"[bench] {message}", flush=True)


# ------------------------------------------------------------------------ semi-supervised grids
#: Per-run metrics copied into the result files (fractions for Dice / Jaccard, voxels and mm).
RUN_METRICS: tuple[str, ...] = ("dice", "jaccard", "hd95_vox", "asd_vox", "hd95_mm", "asd_mm")


@dataclass(frozen=True)
class GridPoint:
    """One (method, labeled volumes, seed) run of a semi-supervised benchmark grid."""

    method: str
    labeled: int
    seed: int

    @property
    def key(self) -> str:
        """File-name key, e.g. ``corn_l4_s1337``."""
        return f"{self.method}_l{self.labeled}_s{self.seed}"

    @classmethod
    def parse(cls, key: str) -> GridPoint:
        """Inverse of :attr:`key`."""
        method, labeled, seed = key.rsplit("_", 2)
        if not (labeled.startswith("l") and seed.startswith("s")):
            raise ValueError(f"not a grid key: {key!r}")
        return cls(method, int(labeled[1:]), int(seed[1:]))


def grid(methods: Sequence[str], labeled: Sequence[int], seeds: Sequence[int]) -> list[GridPoint]:
    """Every combination, ordered label count → seed → method (so a partial grid is balanced)."""
    return [GridPoint(m, n, s) for n in labeled for s in seeds for m in methods]


def preset(name: str, group: str = "semi") -> Path:
    """The packaged medssl preset ``group/name`` as a file (:func:`medssl.presets.preset_path`)."""
    from medssl.presets import preset_path

    path = preset_path(name, group)
    if path is None:
        raise SystemExit(f"medssl has no {group} preset named {name!r} (medssl presets {group} lists them)")
    return path


def load_preset(preset: Path, overrides: Sequence[str] = ()) -> Any:
    """A :class:`SemiTrainConfig` from a preset and ``--set`` overrides (run name: a placeholder)."""
    from medssl.config import load_config
    from medssl.engine.semi import SemiTrainConfig

    return load_config(SemiTrainConfig, preset, list(overrides), base={"runtime": {"name": "preset"}})


def scaled_schedule(cfg: Any, iterations: int, final_decay: float = 0.0) -> list[str]:
    """``--set`` overrides that shorten a preset to ``iterations`` keeping its schedule's proportions.

    The loss ramp becomes smooth (``ramp_unit`` 1) and reaches full weight at the same fraction of
    training as in the preset (``rampup_length · ramp_unit / max_iterations``); a step learning-rate
    decay (``optim.lr_step``) keeps its fraction too. A preset with a constant learning rate gets, when
    ``final_decay`` > 0, the rate × ``lr_gamma`` for the last ``final_decay`` of training: in runs of a
    few hundred iterations at lr 0.01 the BatchNorm running statistics trail the fast-moving weights,
    and the eval-mode quality of the final checkpoint swings from iteration to iteration.
    """
    frac = iterations / cfg.max_iterations
    out = [f"max_iterations={iterations}"]
    mc = cfg.method_config
    if "rampup_length" in type(mc).model_fields:
        length, unit = float(mc.rampup_length), int(mc.ramp_unit)
        out += ["method_config.ramp_unit=1", f"method_config.rampup_length={max(1, round(length * unit * frac))}"]
    if cfg.optim.lr_step is not None:
        out.append(f"optim.lr_step={max(1, round(cfg.optim.lr_step * frac))}")
    elif final_decay > 0:
        out.append(f"optim.lr_step={max(1, round((1 - final_decay) * iterations))}")
    return out


def add_grid_args(p: Any, *, iterations: int, labeled: Sequence[int], seeds: Sequence[int],
                  methods: Sequence[str], eval_batch: int, final_decay: float,
                  choices: Sequence[str] = METHODS) -> None:
    """The options every accumulating semi-supervised grid benchmark takes (``choices``: the methods or
    arms ``--methods`` accepts)."""
    p.add_argument("--quick", action="store_true", help="smoke run (2 iterations, one label count and seed)")
    p.add_argument("--methods", nargs="+", choices=list(choices), default=None,
                   help=f"default: {' '.join(methods)}")
    p.add_argument("--labeled", nargs="+", type=int, default=None,
                   help=f"label counts (default {' '.join(map(str, labeled))})")
    p.add_argument("--seeds", nargs="+", type=int, default=None,
                   help=f"seeds (default {' '.join(map(str, seeds))})")
    p.add_argument("--iterations", type=int, default=None, help=f"training iterations (default {iterations})")
    p.add_argument("--final-lr-decay", type=float, default=final_decay,
                   help="fraction of training at lr x 0.1 for presets with a constant lr (0: none)")
    p.add_argument("--jobs", type=int, default=None, help="runs in parallel, one torch thread each "
                   "(default 2; quick 1)")
    p.add_argument("--threads", type=int, default=None, help="torch threads per run (default 1)")
    p.add_argument("--eval-batch", type=int, default=eval_batch, help="sliding windows per forward pass "
                   "(same probabilities as one at a time up to float rounding)")
    p.add_argument("--table-only", action="store_true", help="only rebuild the table and plot")
    p.add_argument("--redo", action="store_true", help="rerun points whose results exist")
    p.add_argument("--keep-checkpoints", action="store_true", help="keep the periodic checkpoints of "
                   "finished runs (default: only final.pt stays)")
    p.add_argument("--results", type=Path, default=None, help="per-run result folder")
    p.add_argument("--out", type=Path, default=None, help="folder for the table and plot")
    p.add_argument("--only", default=None, help=argparse.SUPPRESS)
    p.add_argument("--parent-command", default=None, help=argparse.SUPPRESS)
    p.set_defaults(_grid_defaults={"iterations": iterations, "labeled": list(labeled), "seeds": list(seeds),
                                   "methods": list(methods)})


def finish_grid_args(args: Any, name: str) -> Any:
    """Fill the defaults that depend on ``--quick`` and the output folders."""
    d = args._grid_defaults
    args.methods = args.methods or list(d["methods"])
    args.labeled = args.labeled or (d["labeled"][:1] if args.quick else d["labeled"])
    args.seeds = args.seeds or (d["seeds"][:1] if args.quick else d["seeds"])
    args.iterations = args.iterations or (2 if args.quick else d["iterations"])
    args.jobs = args.jobs or (1 if args.quick else 2)
    args.redo = args.redo or args.quick  # smoke results are throwaway: always rerun them
    root = results_root(args.quick)
    args.results = args.results or root / name
    args.out = args.out or (args.results.parent if args.results != root / name else root)
    args.raw = (QUICK if args.quick else RAW) / f"{name}_runs"
    return args


def child_args(args: Any, command: str) -> list[str]:
    """The options a ``--only KEY`` subprocess needs to rebuild the same job (``command``: the
    regenerating command recorded in its result)."""
    out = ["--iterations", str(args.iterations), "--eval-batch", str(args.eval_batch),
           "--final-lr-decay", str(args.final_lr_decay), "--results", str(args.results),
           "--parent-command", command]
    if args.quick:
        out.append("--quick")
    if args.threads is not None:
        out += ["--threads", str(args.threads)]
    if args.keep_checkpoints:
        out.append("--keep-checkpoints")
    return out


def run_grid(args: Any, name: str, build_jobs: Any, write_table: Any, argv: Sequence[str] | None,
             extra_child_args: Sequence[str] = ()) -> int:
    """The main flow of a grid benchmark: ``--only`` one point, else run what is missing, then the table.

    Args:
        build_jobs: ``build_jobs(args, points, command) -> list[PointJob]``.
        write_table: ``write_table(args, command) -> Path``.
        extra_child_args: the benchmark's own protocol options, passed on to ``--only`` subprocesses.
    """
    given = list(sys.argv[1:] if argv is None else argv)
    command = regenerate_command(f"{name}.py", [a for a in given if a not in ("--table-only", "--redo")])
    if args.only is not None:  # one point, in a subprocess started by run_jobs
        job = build_jobs(args, [GridPoint.parse(args.only)], args.parent_command or command)[0]
        run_point(job, redo=args.redo)
        return 0
    if args.table_only:  # the table names the command that produced its results
        recorded = [r.get("command") for r in load_results(args.results) if r.get("command")]
        if recorded:
            command = statistics.mode(recorded)
    say(f"regenerate with: {command}")
    t0 = time.perf_counter()
    failed: list[str] = []
    if not args.table_only:
        jobs = build_jobs(args, grid(args.methods, args.labeled, args.seeds), command)
        try:
            failed = run_jobs(jobs, f"{name}.py", [*child_args(args, command), *extra_child_args], args.jobs, args.redo,
                              args.raw / "logs")
        except ProtocolMismatch as err:
            print(f"{name}: {err}", file=sys.stderr)
            return 2
    write_table(args, command)
    say(f"done in {time.perf_counter() - t0:.0f} s" + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    say(f"regenerate with: {command}")
    return 1 if failed else 0


#: Config options added after results were committed, with the value that reproduces the behaviour from
#: before they existed: at that value they are left out of protocol hashes, so older results keep their
#: identity (a run with another value is another protocol).
LATER_OPTIONS: dict[tuple[str, ...], Any] = {("masking", "counts"): "floor"}


def without_later_defaults(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` (a config as a dict) without the :data:`LATER_OPTIONS` that hold their original value."""
    for path, original in LATER_OPTIONS.items():
        section: Any = data
        for key in path[:-1]:
            section = section.get(key) if isinstance(section, dict) else None
        if isinstance(section, dict) and path[-1] in section and section[path[-1]] == original:
            del section[path[-1]]
    return data


def short_hash(data: Any) -> str:
    """10 hex digits of the SHA-1 of ``data`` as sorted JSON."""
    import hashlib
    import json as _json

    return hashlib.sha1(_json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:10]


def config_id(cfg: Any, reduced_grid: bool = True) -> str:
    """Short hash of a resolved config without its ``runtime`` part: the protocol of one run.

    A run trained on resampled volumes (``data.zoom`` ≠ 1) is scored either on its reduced grid (what
    every result before source-grid scoring existed used: left out of the hash, so those keep their ids)
    or on each case's source grid (``reduced_grid`` false: part of the hash).
    """
    from medssl.config import config_to_dict

    data = config_to_dict(cfg)
    data.pop("runtime", None)
    method_config = getattr(cfg, "method_config", None)
    if hasattr(method_config, "model_dump"):
        data["method_config"] = _as_given(method_config.model_dump(mode="json", exclude_unset=True))
    if not reduced_grid and cfg.data.zoom != 1.0:
        data["scoring_grid"] = "source"
    section = data.get("data", {})
    for key in ("spec", "split_file"):  # the same on every clone: paths relative to the repo / shared data
        if section.get(key) is not None:
            section[key] = _portable(str(section[key]))
    return short_hash(without_later_defaults(data))


def _as_given(section: Any) -> Any:
    """A typed method-config section hashed as the plain dict it was before configs were typed.

    Until ``method_config`` became the method's pydantic class it held only the keys a preset or
    override gave, with YAML's types (``rampup_length: 60`` an int). Hashing only the set keys
    (``exclude_unset``) and writing integral floats as ints keeps the ids of committed results.
    """
    if isinstance(section, dict):
        return {k: _as_given(v) for k, v in section.items()}
    if isinstance(section, float) and section.is_integer():
        return int(section)
    return section


def _portable(text: str) -> str:
    """``text`` with the repository and shared-data folders replaced by ``<repo>`` / ``<shared>``."""
    shared = shared_root()
    for root, token in ((shared, "<shared>"), (shared.resolve(), "<shared>"), (REPO, "<repo>")):
        text = text.replace(str(root), token)
    return text


@dataclass
class PointJob:
    """Everything needed to train and score one grid point (plain data: a subprocess rebuilds it)."""

    benchmark: str
    point: GridPoint
    preset: Path
    overrides: list[str]
    results_dir: Path
    runs_root: Path
    protocol: dict[str, Any]
    eval_cases: Path | None = None  # None: the run's own validation cases
    eval_batch: int | None = None
    threads: int | None = None
    command: str = ""
    keep_checkpoints: bool = False
    reduced_grid: bool = False  # a zoomed run: score on its reduced grid instead of the source grid

    def result_path(self) -> Path:
        return self.results_dir / f"{self.point.key}.json"

    def config(self) -> Any:
        """The resolved :class:`SemiTrainConfig` of this point."""
        from medssl.config import load_config
        from medssl.engine.semi import SemiTrainConfig

        base = {"runtime": {"name": self.point.key, "runs_root": str(self.runs_root), "quiet": True}}
        sets = [*self.overrides, f"data.labeled={self.point.labeled}", f"runtime.seed={self.point.seed}",
                "evaluate_after=false"]
        return load_config(SemiTrainConfig, self.preset, sets, base=base)

    def status(self) -> str:
        """``todo`` (no result), ``done`` (a result with this protocol) or ``mismatch`` (another protocol)."""
        out = self.result_path()
        if not out.is_file():
            return "todo"
        try:
            old = json.loads(out.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return "todo"
        return "done" if old.get("config_id") == self.config_id() else "mismatch"

    def config_id(self) -> str:
        """The protocol hash of this point (config and scoring grid)."""
        return config_id(self.config(), reduced_grid=self.reduced_grid)


class ProtocolMismatch(RuntimeError):
    """An existing result was produced with a different protocol than the one requested."""


def run_point(job: PointJob, redo: bool = False) -> dict[str, Any] | None:
    """Train (or resume) one grid point, score its final checkpoint and write its result file.

    Skips the point (returns None) when its result file exists with the same protocol. A run directory
    left by an interrupted session is resumed from its latest checkpoint (or only scored when its final
    checkpoint exists).

    Raises:
        ProtocolMismatch: the existing result used another protocol and ``redo`` is false.
    """
    from medssl.engine.semi import evaluate_run, train_semi
    from medssl.runtime.atomic import write_json_atomic
    from medssl.runtime.checkpoint import CheckpointManager
    from medssl.runtime.rundir import RunDir

    threads = set_threads(job.threads)
    cfg = job.config()
    cid = job.config_id()
    out = job.result_path()
    if not redo:
        state = job.status()
        if state == "done":
            return None
        if state == "mismatch":
            raise ProtocolMismatch(f"{rel(out)}: made with another protocol; pass --redo to replace it or "
                                   "--results DIR to keep both")
    run_dir = Path(job.runs_root) / f"{job.point.key}_{cid}"
    cfg = cfg.model_copy(update={"runtime": cfg.runtime.model_copy(update={"name": run_dir.name})})
    final = CheckpointManager(RunDir(run_dir).checkpoints).path_for("final")
    mode = "resume" if RunDir(run_dir).is_run() and RunDir(run_dir).has_checkpoint() else "overwrite"
    t0 = time.perf_counter()
    loop_logs: dict[str, float] = {}
    trained_iterations = 0
    if not (final.is_file() and not redo):
        say(f"{job.benchmark} {job.point.key}: training ({mode if mode == 'resume' else 'new'}, "
            f"{cfg.max_iterations} iterations, {threads} thread(s))")
        trained = train_semi(cfg, "overwrite" if redo else mode, command=job.command.split())
        loop_logs = {k: float(v) for k, v in trained.loop.last_logs.items()}
        trained_iterations = trained.loop.iterations
    t_train = time.perf_counter() - t0
    inference = cfg.inference
    if job.eval_batch is not None:
        inference = inference.model_copy(update={"batch_size": job.eval_batch})
    t0 = time.perf_counter()
    ev = evaluate_run(run_dir, cases=job.eval_cases, inference=inference, quiet=True,
                      reduced_grid=job.reduced_grid)
    t_eval = time.perf_counter() - t0
    per_case = [{"case_id": str(c["case_id"]), **{k: _num(c.get(k)) for k in RUN_METRICS},
                 "empty_pred": bool(c.get("empty_pred", False))} for c in ev.per_case]
    result = {
        "benchmark": job.benchmark, "method": job.point.method, "labeled": job.point.labeled,
        "seed": job.point.seed, "config_id": cid, "protocol": job.protocol,
        "metrics": {k: _num(ev.mean(k)) for k in RUN_METRICS},
        "n_cases": len(per_case), "n_empty_predictions": ev.n_empty_predictions,
        "empty_prediction_cases": [c["case_id"] for c in per_case if c["empty_pred"]],
        "per_case": per_case, "iterations": cfg.max_iterations,
        "iterations_trained_this_session": trained_iterations,
        "final_logs": loop_logs, "curve": training_curve(run_dir), "train_seconds": t_train, "eval_seconds": t_eval,
        "eval_cases": rel(job.eval_cases) if job.eval_cases is not None else "validation split",
        "scoring_grid": ev.summary.get("scoring_grid"),
        "run_dir": rel(run_dir), "overrides": job.overrides, "preset": rel(job.preset),
        "command": job.command, "environment": environment(threads),
    }
    write_json_atomic(out, result)
    if not job.keep_checkpoints:  # the periodic ones only serve a resume; final.pt stays for re-scoring
        for _, path in CheckpointManager(RunDir(run_dir).checkpoints).iterations():
            path.unlink(missing_ok=True)
    say(f"{job.benchmark} {job.point.key}: Dice {100 * ev.mean('dice'):.2f} % "
        f"({ev.n_empty_predictions} empty) train {t_train:.0f} s eval {t_eval:.0f} s -> {rel(out)}")
    return result


#: Bins of the training curve stored in each grid result (losses, ramp weights, agreement, pool ...).
CURVE_BINS = 60


def training_curve(run_dir: Path, bins: int = CURVE_BINS) -> dict[str, list[float | None]]:
    """The run's logged training metrics averaged over ``bins`` equal spans of iterations.

    Returns ``{"iteration": [last iteration of each bin], "<metric>": [bin means], ...}`` (a metric absent
    from a bin is None), small enough to keep in a committed result and to diagnose a run after its
    run directory is gone.
    """
    from medssl.runtime.metrics_log import read_metrics

    rows = [r for r in read_metrics(run_dir) if r["phase"] == "train"]
    if not rows:
        return {}
    last = max(r["iteration"] for r in rows)
    edges = [last * (i + 1) / bins for i in range(bins)]
    keys = sorted({k for r in rows for k in r} - {"iteration", "phase"})
    groups: list[list[dict[str, Any]]] = [[] for _ in edges]
    for r in rows:
        groups[min(bins - 1, next(i for i, e in enumerate(edges) if r["iteration"] <= e))].append(r)
    curve: dict[str, list[float | None]] = {"iteration": []}
    for k in keys:
        curve[k] = []
    for g in (g for g in groups if g):
        curve["iteration"].append(float(max(r["iteration"] for r in g)))
        for k in keys:
            vals = finite(r.get(k) for r in g)
            curve[k].append(_num(statistics.fmean(vals)) if vals else None)
    return curve


def _num(value: Any) -> float | None:
    """A JSON-safe float (None for missing / NaN / inf)."""
    if value is None:
        return None
    v = float(value)
    return v if math.isfinite(v) else None


def run_jobs(jobs: Sequence[Any], script: str, base_args: list[str], n_parallel: int, redo: bool,
             log_dir: Path, run_one: Callable[..., Any] | None = None,
             summary: Callable[[Any], str] | None = None) -> list[str]:
    """Run every pending job: in this process (``n_parallel`` 1) or as up to ``n_parallel`` subprocesses
    of ``script --only KEY`` (one torch thread each, logs in ``log_dir``). Returns the failed keys.

    A job has ``point.key``, ``status()`` ("todo" | "done" | "mismatch") and ``result_path()``;
    ``run_one(job, redo=...)`` runs one in this process (default :func:`run_point`) and ``summary(job)``
    describes a finished one (default: Dice and empty predictions).

    Raises:
        ProtocolMismatch: an existing result was made with another protocol (and not ``redo``).
    """
    run_one = run_one or run_point
    summary = summary or _summary_line
    states = {j.point.key: ("todo" if redo else j.status()) for j in jobs}
    clash = [k for k, v in states.items() if v == "mismatch"]
    if clash:
        raise ProtocolMismatch(f"{len(clash)} existing result(s) were made with another protocol "
                               f"({', '.join(clash[:4])}{' ...' if len(clash) > 4 else ''}); pass --redo to "
                               "replace them or --results DIR to keep both")
    pending = [j for j in jobs if states[j.point.key] == "todo"]
    say(f"{len(jobs) - len(pending)} of {len(jobs)} runs already have results; {len(pending)} to run")
    failed: list[str] = []
    if n_parallel <= 1:
        for j in pending:
            try:
                run_one(j, redo=redo)
            except Exception:  # one failed run must not stop the grid; the traceback says why
                import traceback

                traceback.print_exc()
                failed.append(j.point.key)
                say(f"FAILED {j.point.key}")
        return failed
    import subprocess

    log_dir.mkdir(parents=True, exist_ok=True)
    queue = list(pending)
    running: list[tuple[Any, subprocess.Popen, Any]] = []
    while queue or running:
        while queue and len(running) < n_parallel:
            j = queue.pop(0)
            cmd = [sys.executable, str(BENCH / script), *base_args, "--only", j.point.key, "--jobs", "1"]
            if redo:
                cmd.append("--redo")
            log = open(log_dir / f"{j.point.key}.log", "w", encoding="utf-8")  # noqa: SIM115 - closed below
            running.append((j, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO), log))
            say(f"started {j.point.key} (log {rel(log_dir / (j.point.key + '.log'))})")
        time.sleep(2.0)
        for item in list(running):
            j, proc, log = item
            if proc.poll() is None:
                continue
            log.close()
            running.remove(item)
            if proc.returncode != 0 or not j.result_path().is_file():
                failed.append(j.point.key)
                say(f"FAILED {j.point.key} (exit {proc.returncode}); see {rel(log_dir / (j.point.key + '.log'))}")
            else:
                say(f"finished {j.point.key}: {summary(j)}")
    return failed


def _summary_line(job: PointJob) -> str:
    r = json.loads(job.result_path().read_text(encoding="utf-8"))
    return f"Dice {100 * (r['metrics']['dice'] or 0):.2f} %, {r['n_empty_predictions']} empty"


def load_results(results_dir: Path) -> list[dict[str, Any]]:
    """Every per-run result file of a grid folder (sorted by file name)."""
    if not results_dir.is_dir():
        return []
    out = []
    for path in sorted(results_dir.glob("*.json")):
        try:
            out.append(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, json.JSONDecodeError) as err:
            say(f"ignoring unreadable result {rel(path)}: {err}")
    return out


def summary_rows(results: list[dict[str, Any]], methods: Sequence[str]) -> list[dict[str, Any]]:
    """Per (labeled, method): seeds, mean ± std of Dice % / Jaccard % / 95HD / ASD (voxels), empties."""
    rows = []
    for n in sorted({r["labeled"] for r in results}):
        for m in [m for m in methods if any(r["method"] == m and r["labeled"] == n for r in results)]:
            rs = sorted((r for r in results if r["method"] == m and r["labeled"] == n), key=lambda r: r["seed"])
            col = lambda k, rs=rs: [r["metrics"][k] for r in rs]  # noqa: E731
            rows.append({"labeled": n, "method": m, "seeds": [r["seed"] for r in rs],
                         "dice": mean_std(col("dice"), 100), "jaccard": mean_std(col("jaccard"), 100),
                         "hd95_vox": mean_std(col("hd95_vox")), "asd_vox": mean_std(col("asd_vox")),
                         "hd95_mm": mean_std(col("hd95_mm")), "asd_mm": mean_std(col("asd_mm")),
                         "dice_mean": statistics.fmean(finite(col("dice"))) if finite(col("dice")) else None,
                         "empty": sum(r["n_empty_predictions"] for r in rs),
                         "cases": sum(r["n_cases"] for r in rs)})
    return rows


GRID_TABLE_HEADER = ["labeled", "method", "seeds", "Dice %", "Jaccard %", "95HD (vox)", "ASD (vox)",
                     "95HD (mm)", "ASD (mm)", "empty predictions"]
GRID_TABLE_NOTE = ("Mean ± sample standard deviation over seeds of the per-run means over the scored volumes. "
                   "An empty prediction scores 0 on all four metrics (the reference evaluation's rule), so the "
                   "distance columns flatter runs with empty predictions; their count is the last column "
                   "(empty / volumes scored, all seeds together).")


def grid_table(rows: list[dict[str, Any]], extra: dict[str, Any] | None = None) -> str:
    """The markdown table of :func:`summary_rows`; ``extra`` = {column name: fn(row) -> cell} appended."""
    extra = extra or {}
    body = [[r["labeled"], f"**{r['method']}**" if r["method"] == "corn" else r["method"], len(r["seeds"]),
             r["dice"], r["jaccard"], r["hd95_vox"], r["asd_vox"], r["hd95_mm"], r["asd_mm"],
             f"{r['empty']} / {r['cases']}", *[fn(r) for fn in extra.values()]] for r in rows]
    return markdown_table([*GRID_TABLE_HEADER, *extra], body)


def grid_summary(name: str, command: str, results: list[dict[str, Any]], rows: list[dict[str, Any]]) -> dict:
    """The small JSON written beside a grid's table."""
    keys = ("method", "labeled", "seed", "metrics", "n_cases", "n_empty_predictions", "train_seconds",
            "eval_seconds")
    return {"benchmark": name, "command": command, "protocols": protocols(results), "rows": rows,
            "runs": [{k: r.get(k) for k in keys} for r in results]}


def protocols(results: list[dict[str, Any]]) -> list[str]:
    """The distinct protocol descriptions of ``results`` (normally one)."""
    seen: list[str] = []
    for r in results:
        text = r.get("protocol", {}).get("description", "")
        if text not in seen:
            seen.append(text)
    return seen


def plot_dice(results: list[dict[str, Any]], methods: Sequence[str], path: Path, title: str) -> Path | None:
    """Dice (%) per method, one marker colour per label count, every seed a point, the mean a bar."""
    if not results:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labeled = sorted({r["labeled"] for r in results})
    shown = [m for m in methods if any(r["method"] == m for r in results)]
    width = 0.8 / len(labeled)
    fig, ax = plt.subplots(figsize=(1.3 * len(shown) + 2.5, 4.0))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for j, n in enumerate(labeled):
        for i, m in enumerate(shown):
            vals = finite(100 * (r["metrics"]["dice"] or 0) for r in results if r["method"] == m and r["labeled"] == n)
            if not vals:
                continue
            x = i - 0.4 + width * (j + 0.5)
            ax.bar(x, statistics.fmean(vals), width * 0.85, color=colors[j % len(colors)], alpha=0.35,
                   label=f"{n} labeled" if i == 0 else None)
            offsets = [x + width * 0.5 * (k - (len(vals) - 1) / 2) / max(len(vals), 1) for k in range(len(vals))]
            ax.scatter(offsets, vals, color=colors[j % len(colors)], s=18, zorder=3)
    ax.set_xticks(range(len(shown)), shown, rotation=20)
    ax.set_ylabel("Dice (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    from medssl.runtime.atomic import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path


def paired_delta_cell(results: list[dict[str, Any]], reference: str, metric: str = "dice",
                      scale: float = 100.0) -> Callable[[dict[str, Any]], str]:
    """A table cell function: mean ± std over seeds of (row's method − ``reference``) with the same seed
    and label count, followed by the per-seed differences in seed order (``—`` without a pair)."""
    def cell(row: dict[str, Any]) -> str:
        if row["method"] == reference:
            return "—"
        base = {r["seed"]: r["metrics"][metric] for r in results
                if r["method"] == reference and r["labeled"] == row["labeled"]}
        pairs = sorted((r["seed"], scale * (r["metrics"][metric] - base[r["seed"]])) for r in results
                       if r["method"] == row["method"] and r["labeled"] == row["labeled"]
                       and base.get(r["seed"]) is not None and r["metrics"][metric] is not None)
        if not pairs:
            return "—"
        diffs = [d for _, d in pairs]
        return f"{mean_std(diffs)} ({', '.join(f'{d:+.1f}' for d in diffs)})"
    return cell


def write_grid_report(args: argparse.Namespace, command: str, name: str, title: str, plot_title: str,
                      extra_columns: dict[str, Any] | None = None, appendix: Sequence[str] = (),
                      summary_extra: dict[str, Any] | None = None, order: Sequence[str] | None = None) -> Path:
    """Rebuild ``<name>.{md,json,png}`` in ``args.out`` from the per-run result files in ``args.results``.

    ``extra_columns`` adds table columns ({name: fn(row) -> cell}); ``appendix`` lines follow the table;
    ``summary_extra`` is merged into the JSON summary; ``order`` lists the rows' methods (or arms) in
    table order (default: the six methods).
    """
    results = [r for r in load_results(args.results) if r.get("benchmark") == name]
    order = [m for m in (order or METHODS) if m in args.methods or any(r["method"] == m for r in results)]
    rows = summary_rows(results, order)
    png = plot_dice(results, order, args.out / f"{name}.png", plot_title)
    lines = [f"# {title}", "",
             f"Regenerate: `{command}` (runs only what is missing; add `--table-only` to rebuild this table "
             f"from `{rel(args.results)}/*.json`).", ""]
    lines += [f"Protocol: {text}\n" for text in protocols(results)]
    if not results:
        lines += ["No run has finished yet.", ""]
    else:
        lines += [grid_table(rows, extra_columns), "", GRID_TABLE_NOTE, ""]
        if png is not None:
            lines += [f"![Dice per method]({png.name})", ""]
    lines += list(appendix)
    summary = grid_summary(name, command, results, rows)
    summary.update(summary_extra or {})
    write_outputs(args.out, name, summary, "\n".join(lines))
    say(f"wrote {rel(args.out / (name + '.md'))}" + (f" and {rel(png)}" if png else "") + f" ({len(results)} runs)")
    return args.out / f"{name}.md"
