"""Read a run directory into a :class:`~medssl.report.summary.RunSummary`.

Any run directory is readable: the summary holds what is there (``config.yaml``, ``manifest.json``,
``metrics.csv``, evaluation / result JSON, markdown and CSV tables, figures) and a problem with one
file becomes a note in the report instead of an error. The known kinds get their specific readings:

* ``semi``: evaluation summaries ``eval_*/summary.json`` (mean ± std, one row per evaluation), the
  labeled / unlabeled / validation split from the manifest, overlays from ``eval_*/overlays/``;
* ``pretrain``: reconstruction previews in ``figures/``, mask ratios among the learning curves;
* ``classify`` / ``detect``: ``results.json`` sections (best selected on validation, final, test);
* ``localize``: a ROI cache's coverage (``manifest.json``), its run summaries and ``previews/``.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shlex
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from medssl.errors import MedsslInputError
from medssl.report.curves import COUNTERS, metric_category
from medssl.report.figures import IMAGE_TYPES, figure_caption, natural_key
from medssl.report.summary import FigureFile, Headline, MetricTable, RunKind, RunSummary, TextDoc, Value
from medssl.report.tables import (
    csv_table,
    evaluation_headline,
    evaluation_table,
    is_evaluation_summary,
    json_tables,
)
from medssl.runtime.metrics_log import read_metrics
from medssl.runtime.rundir import RunDir

__all__ = ["collect_run", "detect_kind"]

#: Folders never searched for report material (bulky or one file per item).
SKIP_DIRS = frozenset({"checkpoints", "tensorboard", "predictions", "entries", "__pycache__", "report_files"})
MAX_DEPTH = 3
MAX_FIGURES = 48
MAX_JSON_BYTES = 2 * 2**20
MAX_TEXT_BYTES = 256 * 2**10
MAX_FILES_PER_TYPE = 24
_COMMAND_KINDS = {"semi": "semi", "pretrain": "pretrain", "localize": "localize", "classify": "classify",
                  "detect": "detect"}
_CLASSIFY_KEYS = {"accuracy", "balanced_accuracy", "auroc", "auprc", "f1"}
_DETECT_KEYS = {"box_ap", "mask_ap", "box_ap50", "mask_ap50"}


def _walk(root: Path) -> list[Path]:
    """Files under ``root`` up to :data:`MAX_DEPTH` folders deep, skipping :data:`SKIP_DIRS` and hidden
    names (temporary files of writes in progress), in natural order."""
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        depth = len(here.relative_to(root).parts)
        dirnames[:] = sorted((d for d in dirnames if d not in SKIP_DIRS and not d.startswith(".")
                              and depth < MAX_DEPTH), key=natural_key)
        found.extend(here / f for f in sorted(filenames, key=natural_key) if not f.startswith("."))
    return found


def _rel(root: Path, path: Path) -> str:
    return path.relative_to(root).as_posix()


def _read_json(path: Path, notes: list[str], root: Path) -> Any:
    try:
        if path.stat().st_size > MAX_JSON_BYTES:
            notes.append(f"{_rel(root, path)}: larger than {MAX_JSON_BYTES // 2**20} MiB, not read")
            return None
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        notes.append(f"{_rel(root, path)}: cannot be read as JSON ({err})")
        return None


def _all_keys(obj: Any, depth: int = 0) -> set[str]:
    if not isinstance(obj, Mapping) or depth > 4:
        return set()
    keys = {str(k) for k in obj}
    for value in obj.values():
        keys |= _all_keys(value, depth + 1)
    return keys


def detect_kind(config: Mapping[str, Any] | None, manifest: Mapping[str, Any] | None,
                json_docs: Mapping[str, Any], has_entries: bool = False) -> RunKind:
    """The kind of a run from its config, manifest and JSON documents (``unknown`` when unsure).

    Args:
        config: the parsed ``config.yaml``.
        manifest: the parsed ``manifest.json`` (a run manifest or a ROI-cache manifest).
        json_docs: other JSON documents of the run by relative path.
        has_entries: the folder holds an ``entries/`` folder (a ROI cache).
    """
    if isinstance(manifest, Mapping) and "command" not in manifest and (
            has_entries or {"format_version", "entries"} <= set(manifest)):
        return "localize"
    if isinstance(config, Mapping):
        if "method" in config and "method_config" in config:
            return "semi"
        if "masking" in config:
            return "pretrain"
    keys: set[str] = set()
    for rel, doc in json_docs.items():
        if Path(rel).name.startswith("results"):
            keys |= _all_keys(doc)
    if keys & _DETECT_KEYS:
        return "detect"
    if keys & _CLASSIFY_KEYS:
        return "classify"
    if any(is_evaluation_summary(doc) and Path(rel).parent.name.startswith("eval")
           for rel, doc in json_docs.items()):
        return "semi"
    command = manifest.get("command") if isinstance(manifest, Mapping) else None
    if isinstance(command, list):
        for token in command[1:4]:
            kind = _COMMAND_KINDS.get(str(token))
            if kind is not None:
                return kind  # type: ignore[return-value]
    return "unknown"


# ---------------------------------------------------------------------------------------- manifest
def _short(value: Any, limit: int = 100) -> str:
    text = str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _manifest_facts(manifest: Mapping[str, Any]) -> list[tuple[str, str]]:
    facts: list[tuple[str, str]] = []
    command = manifest.get("command")
    if isinstance(command, list):
        facts.append(("command", shlex.join(str(c) for c in command)))
    for key in ("seed", "device"):
        if manifest.get(key) is not None:
            facts.append((key, str(manifest[key])))
    versions = manifest.get("versions")
    if isinstance(versions, Mapping):
        facts.append(("versions", ", ".join(f"{k} {v}" for k, v in versions.items() if v is not None)))
    if manifest.get("git_commit"):
        dirty = manifest.get("git_dirty")
        state = " (uncommitted changes)" if dirty else " (clean)" if dirty is False else ""
        facts.append(("git commit", f"{str(manifest['git_commit'])[:12]}{state}"))
    if manifest.get("data_fingerprint"):
        facts.append(("data fingerprint", _short(manifest["data_fingerprint"], 27)))
    host = " on ".join(str(manifest[k]) for k in ("time_utc", "host") if manifest.get(k))
    if host:
        facts.append(("started", host))
    resumes = manifest.get("resumes")
    if isinstance(resumes, list) and resumes:
        facts.append(("resumed", f"{len(resumes)} time(s)"))
    extra = manifest.get("extra")
    if isinstance(extra, Mapping):
        splits = extra.get("splits")
        if isinstance(splits, Mapping):
            counts = []
            for name, value in splits.items():
                if isinstance(value, list):
                    counts.append(f"{name} {len(value)}")
                elif isinstance(value, Mapping) and isinstance(value.get("n"), int):
                    counts.append(f"{name} {value['n']}")
            if counts:
                facts.append(("splits", ", ".join(counts)))
        for key, value in extra.items():
            if key == "splits":
                continue
            if isinstance(value, str | int | float | bool) or value is None:
                facts.append((str(key), _short(value)))
            elif isinstance(value, list) and all(isinstance(v, str | int | float) for v in value):
                facts.append((str(key), _short(", ".join(str(v) for v in value))))
    return facts


def _config_facts(kind: RunKind, config: Mapping[str, Any]) -> list[tuple[str, str]]:
    facts: list[tuple[str, str]] = []
    data = config.get("data")
    if isinstance(data, Mapping):
        for key in ("spec", "folder", "root", "csv", "coco"):
            if isinstance(data.get(key), str):
                facts.append(("data", str(data[key])))
                break
    if kind == "semi":
        facts.append(("method", str(config.get("method"))))
        if isinstance(data, Mapping) and data.get("labeled") is not None:
            facts.append(("labeled volumes", str(data["labeled"])))
    for key in ("max_iterations", "epochs"):
        if isinstance(config.get(key), int):
            facts.append((key.replace("_", " "), str(config[key])))
    model = config.get("model")
    if isinstance(model, Mapping) and model.get("backbone"):
        facts.append(("backbone", str(model["backbone"])))
    masking = config.get("masking")
    if isinstance(masking, Mapping):
        facts.append(("masking", ", ".join(f"{k} {v}" for k, v in masking.items() if v is not None)))
    return facts


# ------------------------------------------------------------------------------------------- tables
def _title_of(rel: str, kind: RunKind) -> str:
    path = Path(rel)
    if kind == "localize" and rel == "manifest.json":
        return "ROI cache coverage"
    if kind == "localize" and path.parent.as_posix() == "runs":
        return "Localization run"
    if path.stem.startswith("results"):
        return "Results"
    name = path.stem.replace("_", " ").strip()
    name = name[:1].upper() + name[1:]
    return f"{name} ({path.parent.as_posix()})" if path.parent.as_posix() != "." else name


def _training_headline(rows: list[dict[str, Any]], expected_ratio: Any = None) -> Headline | None:
    """The last training row's loss and mask ratios (and the expected mask ratio of a pretraining run)."""
    train = [r for r in rows if r.get("phase") == "train"]
    if not train:
        return None
    last = train[-1]
    values = {k: Value(float(v)) for k, v in last.items() if k not in ("iteration", "phase")
              and (k == "loss" or "ratio" in k)}
    if isinstance(expected_ratio, Mapping):  # {"overall": ..., ...}
        expected_ratio = expected_ratio.get("overall")
    if isinstance(expected_ratio, int | float) and not isinstance(expected_ratio, bool):
        values["expected_mask_ratio"] = Value(float(expected_ratio))
    if not values:
        return None
    return Headline(f"metrics.csv: last training row (iteration {last['iteration']})", values)


def _validation_table(rows: list[dict[str, Any]]) -> MetricTable | None:
    """Last and best value of every metric of the evaluation phases logged during training (best =
    lowest for losses and surface distances, highest otherwise)."""
    evals = [r for r in rows if r.get("phase") not in ("train", None)]
    if not evals:
        return None
    keys: list[tuple[str, str]] = []
    for row in evals:
        keys.extend((row["phase"], k) for k in row
                    if k not in ("iteration", "phase") and (row["phase"], k) not in keys)
    table_rows: list[list[Any]] = []
    for phase, key in keys:
        if key in COUNTERS or metric_category(phase, key) in ("schedule", "ramps", "masking"):
            continue  # settings and their measured values, not performance
        points = [(r["iteration"], r[key]) for r in evals
                  if r["phase"] == phase and key in r and math.isfinite(r[key])]
        if not points:
            continue
        last_it, last = points[-1]
        lower = metric_category(phase, key) in ("losses", "distances")
        best_it, best = (min if lower else max)(points, key=lambda p: p[1])
        table_rows.append([f"{phase}/{key}", Value(last), Value(float(last_it), integer=True), Value(best),
                           Value(float(best_it), integer=True)])
    if not table_rows:
        return None
    return MetricTable("Logged during training", "metrics.csv",
                       ["metric", "last", "at iteration", "best", "at iteration"], table_rows,
                       ["best = lowest for losses and surface distances, highest for the other metrics"])


def _tables_of(rel: str, kind: RunKind, doc: Any, notes: list[str], primary: bool
               ) -> tuple[list[MetricTable], list[Headline]]:
    """Tables of one JSON document (folded unless ``primary``); a document of an unexpected shape
    becomes a note instead of stopping the report."""
    try:
        tables, headlines = json_tables(_title_of(rel, kind), rel, doc,
                                        compare_sections=Path(rel).stem.startswith("results"))
    except (TypeError, ValueError, KeyError, AttributeError, RecursionError) as err:
        notes.append(f"{rel}: no tables could be read ({_short(err, 160)})")
        return [], []
    if not primary:
        for table in tables:
            table.collapsed = True
    return tables, headlines


# ---------------------------------------------------------------------------------------- the run
def _scan(root: Path, exclude: Iterable[str | Path], notes: list[str]
          ) -> tuple[dict[str, Any], list[Path], list[Path], list[Path]]:
    """The JSON documents (parsed, by relative path; ``manifest.json`` left out), markdown files, CSV
    tables (``metrics.csv`` left out) and images of a run, at most :data:`MAX_FILES_PER_TYPE` of each
    text kind."""
    skip = [Path(p).resolve() for p in exclude]
    json_docs: dict[str, Any] = {}
    markdown: list[Path] = []
    csvs: list[Path] = []
    images: list[Path] = []
    for file in _walk(root):
        resolved = file.resolve()
        if any(resolved == x or x in resolved.parents for x in skip):
            continue
        rel = _rel(root, file)
        suffix = file.suffix.lower()
        if suffix == ".json" and rel != "manifest.json" and len(json_docs) < MAX_FILES_PER_TYPE:
            doc = _read_json(file, notes, root)
            if doc is not None:
                json_docs[rel] = doc
        elif suffix == ".md" and len(markdown) < MAX_FILES_PER_TYPE:
            markdown.append(file)
        elif suffix == ".csv" and rel != "metrics.csv" and len(csvs) < MAX_FILES_PER_TYPE:
            csvs.append(file)
        elif suffix in IMAGE_TYPES:
            images.append(file)
    return json_docs, markdown, csvs, images


def collect_run(path: str | Path, exclude: Iterable[str | Path] = ()) -> RunSummary:
    """Read the run directory ``path`` into a :class:`RunSummary`.

    Args:
        path: the run directory.
        exclude: files and folders not to read (e.g. a report being written into the run folder).

    Raises:
        MedsslInputError: ``path`` does not exist or is not a medssl run directory.
    """
    run = RunDir.open(path)
    root = run.root
    summary = RunSummary(root=root, name=root.resolve().name)
    notes = summary.notes

    if run.config_yaml.is_file():
        try:
            summary.config_text = run.config_yaml.read_text(encoding="utf-8")
            loaded = yaml.safe_load(summary.config_text)
            summary.config = loaded if isinstance(loaded, dict) else None
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
            notes.append(f"config.yaml: cannot be read ({_short(err, 160)})")
    manifest = _read_json(run.manifest_json, notes, root) if run.manifest_json.is_file() else None
    if run.metrics_csv.is_file():
        try:
            summary.metrics = read_metrics(run.metrics_csv)
        except (MedsslInputError, OSError, UnicodeDecodeError, csv.Error) as err:
            notes.append(f"metrics.csv: {_short(getattr(err, 'problem', err), 160)}")

    json_docs, markdown, csvs, images = _scan(root, exclude, notes)
    kind = detect_kind(summary.config, manifest, json_docs, (root / "entries").is_dir())
    summary.kind = kind
    if isinstance(manifest, dict) and "command" in manifest:
        summary.manifest = manifest
        summary.facts.extend(_manifest_facts(manifest))
    elif manifest is not None:
        json_docs = {"manifest.json": manifest, **json_docs}
    if summary.config is not None:
        summary.facts.extend(f for f in _config_facts(kind, summary.config) if f not in summary.facts)
    if summary.metrics:
        last = summary.metrics[-1]["iteration"]
        summary.facts.append(("metrics.csv", f"{len(summary.metrics)} rows, last iteration {last}"))

    evaluations = [(Path(rel).parent.as_posix(), doc) for rel, doc in json_docs.items()
                   if is_evaluation_summary(doc)]
    if evaluations:
        summary.tables.append(evaluation_table(evaluations))
        summary.headlines.extend(evaluation_headline(name, doc) for name, doc in evaluations)
    others = [rel for rel, doc in json_docs.items() if not is_evaluation_summary(doc)]
    primary = [rel for rel in others if Path(rel).stem.startswith("results") or rel == "manifest.json"]
    for rel in primary:  # results files and a ROI cache's coverage: headline numbers
        tables, headlines = _tables_of(rel, kind, json_docs[rel], notes, primary=True)
        summary.tables.extend(tables)
        summary.headlines.extend(headlines)
    validation = _validation_table(summary.metrics)
    if validation is not None:
        summary.tables.append(validation)
    for rel in others:  # any other JSON: folded tables of its numbers
        if rel not in primary:
            summary.tables.extend(_tables_of(rel, kind, json_docs[rel], notes, primary=False)[0])
    if not summary.headlines:
        pretrain_summary = json_docs.get("summary.json")
        expected = pretrain_summary.get("expected_mask_ratio") if isinstance(pretrain_summary, dict) else None
        fallback = _training_headline(summary.metrics, expected)
        if fallback is not None:
            summary.headlines.append(fallback)

    for file in csvs:
        rel = _rel(root, file)
        title = "Per-case metrics" if "per_case" in file.stem else file.stem.replace("_", " ").capitalize()
        try:
            summary.tables.append(csv_table(title, rel, file))
        except (OSError, UnicodeDecodeError, ValueError, csv.Error) as err:
            notes.append(f"{rel}: cannot be read as CSV ({_short(err, 160)})")
    for file in markdown:
        rel = _rel(root, file)
        try:
            if file.stat().st_size > MAX_TEXT_BYTES:
                notes.append(f"{rel}: larger than {MAX_TEXT_BYTES // 2**10} KiB, not shown")
                continue
            summary.documents.append(TextDoc(rel, file.read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError) as err:
            notes.append(f"{rel}: cannot be read ({_short(err, 160)})")

    for file in images[:MAX_FIGURES]:
        group = Path(_rel(root, file)).parent.as_posix()
        summary.figures.append(FigureFile(file, group, figure_caption(kind, group, file)))
    summary.figures_left_out = max(0, len(images) - MAX_FIGURES)
    return summary
