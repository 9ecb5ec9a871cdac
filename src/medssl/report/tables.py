"""Metric tables and headline numbers from the JSON and CSV files a run writes.

Three shapes of JSON are recognised, whatever command wrote them:

* an **evaluation summary** (``eval_*/summary.json`` of :func:`medssl.engine.evaluate.evaluate_cases`
  and any file alike): ``{"metrics": {name: {"mean", "std", "n"}}, ...}`` → mean ± std per metric;
* a **results file** (``results.json`` of fine-tuning runs): sections such as ``best`` / ``final`` /
  ``test`` holding numbers → one table with a column per section when the sections share metrics
  (best vs final side by side), else one table per section;
* anything else: its top-level numbers as a two-column table.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from medssl.report.summary import Cell, Headline, MetricTable, Value

__all__ = [
    "HEADLINE_KEYS",
    "csv_table",
    "evaluation_headline",
    "evaluation_table",
    "is_evaluation_summary",
    "json_tables",
    "metric_label",
]

#: Metric names preferred as headline numbers, in display order.
HEADLINE_KEYS: tuple[str, ...] = (
    "dice", "jaccard", "hd95_vox", "asd_vox", "hd95_mm", "asd_mm",
    "accuracy", "balanced_accuracy", "auroc", "auprc", "f1",
    "box_ap", "box_ap50", "box_ap75", "mask_ap", "mask_ap50", "mask_ap75",
    "nsd", "precision", "recall",
    "entries", "images_with_roi", "mean_roi_fraction",
)
#: Segmentation metrics stored as fractions and shown as percentages.
_FRACTIONS = ("dice", "jaccard")
_LABELS: dict[str, str] = {
    "dice": "Dice (%)", "jaccard": "Jaccard (%)", "hd95_vox": "95HD (vox)", "asd_vox": "ASD (vox)",
    "assd_vox": "ASSD (vox)", "hd95_mm": "95HD (mm)", "asd_mm": "ASD (mm)", "assd_mm": "ASSD (mm)",
}
_LABEL_KEYS = ("label", "description", "selection", "selected_on")
_MAX_LEAF_DEPTH = 3
_MAX_ROWS = 60


def metric_label(key: str, units: Mapping[str, Any] | None = None) -> tuple[str, float]:
    """Display label and scale of metric ``key`` (fractions named in ``units`` become percentages)."""
    if key in _LABELS:
        return _LABELS[key], 100.0 if key in _FRACTIONS else 1.0
    if units is not None and units.get(key) == "fraction":
        return f"{key} (%)", 100.0
    return key, 1.0


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _scalar(value: Any) -> Value | None:
    """A JSON number as a :class:`Value` (an ``int`` is a count), else ``None``."""
    number = _number(value)
    return None if number is None else Value(number, integer=isinstance(value, int))


def _stat(value: Any) -> Value | None:
    """A ``{"mean", "std", "n"}`` mapping as a :class:`Value` (``None`` when it is not one)."""
    if not isinstance(value, Mapping) or "mean" not in value:
        return None
    mean = value.get("mean")
    if mean is not None and _number(mean) is None:
        return None
    std = _number(value.get("std"))
    n = value.get("n")
    return Value(None if mean is None else float(mean), std, int(n) if isinstance(n, int) else None)


def _leaves(obj: Mapping[str, Any], prefix: str = "", depth: int = 0) -> dict[str, Value]:
    """Numeric leaves of nested mappings as ``dotted.key → Value`` (mean/std mappings kept whole)."""
    out: dict[str, Value] = {}
    for key, value in obj.items():
        name = f"{prefix}{key}"
        scalar = _scalar(value)
        if scalar is not None:
            out[name] = scalar
            continue
        stat = _stat(value)
        if stat is not None:
            out[name] = stat
        elif isinstance(value, Mapping) and depth < _MAX_LEAF_DEPTH:
            out.update(_leaves(value, f"{name}.", depth + 1))
    return out


def _strip_prefix(values: dict[str, Value], prefix: str = "metrics.") -> dict[str, Value]:
    return {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in values.items()}


def _scaled(key: str, value: Value) -> tuple[str, Value]:
    label, scale = metric_label(key)
    return label, replace(value, scale=scale)


def _pick_headline(values: Mapping[str, Value], fallback: int = 4) -> dict[str, Value]:
    keys = [k for k in HEADLINE_KEYS if k in values]
    if not keys:
        keys = list(values)[:fallback]
    return dict(_scaled(k, values[k]) for k in keys)


# ------------------------------------------------------------------------------ evaluation summaries
def is_evaluation_summary(data: Any) -> bool:
    """True for ``{"metrics": {name: {"mean": ..., ...}, ...}, ...}`` (at least one such metric)."""
    if not isinstance(data, Mapping) or not isinstance(data.get("metrics"), Mapping):
        return False
    stats = [_stat(v) for v in data["metrics"].values()]
    return bool(stats) and all(s is not None for s in stats)


def _evaluation_values(data: Mapping[str, Any]) -> dict[str, Value]:
    out: dict[str, Value] = {}
    for key, raw in data["metrics"].items():
        stat = _stat(raw)
        if stat is not None:
            out[str(key)] = stat
    return out


def evaluation_headline(source: str, data: Mapping[str, Any]) -> Headline:
    """Headline numbers (Dice, Jaccard, 95HD, ASD, ...) of one evaluation summary."""
    return Headline(source, _pick_headline(_evaluation_values(data)))


def _evaluation_notes(source: str, data: Mapping[str, Any]) -> list[str]:
    facts = []
    if "n_cases" in data:
        text = f"{data['n_cases']} case(s)"
        if "n_labeled" in data:
            text += f", {data['n_labeled']} with ground truth"
        facts.append(text)
    if "n_empty_predictions" in data:
        empty = f"empty predictions: {data['n_empty_predictions']}"
        cases = data.get("empty_prediction_cases") or []
        if cases:
            empty += f" ({', '.join(str(c) for c in cases[:8])}{', ...' if len(cases) > 8 else ''})"
        facts.append(empty)
    if data.get("checkpoint"):
        facts.append(f"checkpoint {Path(str(data['checkpoint'])).name}")
    if "largest_component" in data:
        facts.append(f"largest-component post-processing {'on' if data['largest_component'] else 'off'}")
    if data.get("empty_policy"):
        facts.append(f"empty-prediction policy '{data['empty_policy']}'")
    return [f"{source}: {'; '.join(facts)}"] if facts else []


def evaluation_table(summaries: Sequence[tuple[str, Mapping[str, Any]]]) -> MetricTable:
    """One table of several evaluation summaries: a row per evaluation, a column per metric (mean ± std).

    Args:
        summaries: ``(name, summary)`` pairs, e.g. ``("eval_final", <eval_final/summary.json>)``.
    """
    keys: list[str] = []
    units: dict[str, Any] = {}
    for _, data in summaries:
        keys.extend(k for k in _evaluation_values(data) if k not in keys)
        if isinstance(data.get("units"), Mapping):
            units.update(data["units"])
    ordered = [k for k in HEADLINE_KEYS if k in keys] + [k for k in keys if k not in HEADLINE_KEYS]
    columns = ["evaluation"]
    scales = []
    for key in ordered:
        label, scale = metric_label(key, units)
        columns.append(label)
        scales.append(scale)
    rows: list[list[Cell]] = []
    notes: list[str] = []
    for name, data in summaries:
        values = _evaluation_values(data)
        row: list[Cell] = [name]
        for key, scale in zip(ordered, scales, strict=True):
            v = values.get(key)
            row.append("—" if v is None else replace(v, scale=scale))
        rows.append(row)
        notes.extend(_evaluation_notes(name, data))
    std_note = next((str(d["std"]) for _, d in summaries if isinstance(d.get("std"), str)), None)
    notes.append(f"mean ± std: {std_note}" if std_note else "mean ± std over cases")
    sources = ", ".join(f"{name}/summary.json" for name, _ in summaries)
    return MetricTable("Segmentation evaluation", sources, columns, rows, notes)


# ------------------------------------------------------------------------------------ results files
@dataclass
class _Column:
    """One column of a results table: a block of metrics plus the scalars of its section (epoch, ...)."""

    header: str
    metrics: dict[str, Value]
    context: dict[str, Value]


def _section_header(key: str, section: Mapping[str, Any]) -> str:
    for label_key in _LABEL_KEYS:
        label = section.get(label_key)
        if isinstance(label, str) and 0 < len(label) <= 80:
            return label if key.lower() in label.lower() else f"{key}: {label}"
    if "best" in key.lower():
        return f"{key} (selected on validation)"
    return key


def _is_block(value: Any) -> bool:
    return isinstance(value, Mapping) and _stat(value) is None and bool(_leaves(value))


def _columns(data: Mapping[str, Any]) -> list[_Column]:
    """Columns of the top-level sections holding numbers.

    A section without nested blocks is one column (its numbers are the metrics). A section with nested
    blocks gives one column per block — ``{"final": {"epoch": 5, "val": {...}, "test": {...}}}`` →
    ``final · val`` and ``final · test``, each with ``epoch`` as context; a block named ``metrics``
    keeps the section's own name, and a container section named ``metrics`` / ``results`` is
    transparent (``{"metrics": {"best": {...}, "final": {...}}}`` → ``best``, ``final``).
    """
    columns: list[_Column] = []
    for key, section in data.items():
        if not _is_block(section):
            continue
        key = str(key)
        header = _section_header(key, section)
        blocks = [(str(k), v) for k, v in section.items() if _is_block(v)]
        direct = {str(k): sc for k, v in section.items() if (sc := _scalar(v)) is not None}
        direct.update({str(k): st for k, v in section.items() if (st := _stat(v)) is not None})
        if not blocks:
            columns.append(_Column(header, direct, {}))
            continue
        transparent = key.lower() in ("metrics", "results")
        for sub, block in blocks:
            if transparent:
                name = _section_header(sub, block)
            elif sub == "metrics":
                name = header
            else:
                name = f"{header} · {_section_header(sub, block)}"
            columns.append(_Column(name, _leaves(block), direct))
    return columns


def _column_groups(columns: list[_Column]) -> list[list[_Column]]:
    """Columns linked by shared metric names (connected components), in first-seen order."""
    groups: list[list[_Column]] = []
    for column in columns:
        linked = [g for g in groups if any(set(c.metrics) & set(column.metrics) for c in g)]
        merged = [column]
        for g in linked:
            merged = g + merged
            groups.remove(g)
        groups.append(merged)
    order = {id(c): i for i, c in enumerate(columns)}
    for g in groups:
        g.sort(key=lambda c: order[id(c)])
    groups.sort(key=lambda g: order[id(g[0])])
    return groups


def _ordered_keys(keys: list[str]) -> list[str]:
    return [k for k in HEADLINE_KEYS if k in keys] + [k for k in keys if k not in HEADLINE_KEYS]


def _group_table(title: str, source: str, group: list[_Column]) -> MetricTable:
    keys: list[str] = []
    for column in group:
        keys.extend(k for k in column.metrics if k not in keys)
    context: list[str] = []
    for column in group:
        context.extend(k for k in column.context if k not in context and k not in keys)
    rows: list[list[Cell]] = []
    for key in (_ordered_keys(keys) + context)[:_MAX_ROWS]:
        label, scale = metric_label(key)
        row: list[Cell] = [label]
        for column in group:
            v = column.metrics.get(key, column.context.get(key))
            row.append("—" if v is None else replace(v, scale=scale))
        rows.append(row)
    notes = [f"first {_MAX_ROWS} of {len(keys) + len(context)} rows"] if len(keys) + len(context) > _MAX_ROWS else []
    return MetricTable(title, source, ["metric", *[c.header for c in group]], rows, notes)


def _values_table(title: str, source: str, values: Mapping[str, Value], first: str = "value") -> MetricTable:
    rows: list[list[Cell]] = []
    for key, value in list(values.items())[:_MAX_ROWS]:
        label, scale = metric_label(key)
        rows.append([label, replace(value, scale=scale)])
    notes = [f"{len(values) - _MAX_ROWS} more values in the file"] if len(values) > _MAX_ROWS else []
    return MetricTable(title, source, ["name", first], rows, notes)


def _short_strings(data: Mapping[str, Any]) -> list[str]:
    out = []
    for key, value in data.items():
        if isinstance(value, str) and 0 < len(value) <= 120 and key not in _LABEL_KEYS:
            out.append(f"{key}: {value}")
        elif isinstance(value, bool):
            out.append(f"{key}: {'yes' if value else 'no'}")
    return out[:8]


def json_tables(title: str, source: str, data: Any, compare_sections: bool = True
                ) -> tuple[list[MetricTable], list[Headline]]:
    """Tables and headlines of a results-like or arbitrary JSON document (not an evaluation summary).

    Result sections that share metric names become one table with a column per section (e.g. best
    selected on validation vs final, on val and test); every other section gets a two-column table
    (folded when a results table exists); the document's top-level numbers make a table of their own.

    Args:
        title: table title (e.g. ``"Results"``).
        source: the file, relative to the run directory.
        data: the parsed JSON.
        compare_sections: without known metric names, still treat sections sharing names as results
            compared side by side (for results files; other documents keep them as secondary tables).

    Returns:
        the tables and one headline per column of a results table (and one for top-level numbers that
        are headline metrics).
    """
    if not isinstance(data, Mapping):
        return [], []
    tables: list[MetricTable] = []
    headlines: list[Headline] = []
    secondary: list[MetricTable] = []
    groups = _column_groups(_columns(data))
    main = [g for g in groups if {k for c in g for k in c.metrics} & set(HEADLINE_KEYS)]
    if not main and compare_sections:  # no known metric names: sections compared side by side are the results
        main = [g for g in groups if len(g) >= 2][:1]
    for group in groups:
        if any(group is g for g in main):
            tables.append(_group_table(title, source, group))
            headlines.extend(Headline(f"{source}: {c.header}", _pick_headline(c.metrics)) for c in group)
        elif len(group) >= 2:
            secondary.append(_group_table(f"{title}: {', '.join(c.header for c in group)}", source, group))
        else:
            secondary.extend(_values_table(f"{title}: {c.header}", source, c.metrics) for c in group)
    for table in secondary:
        table.collapsed = bool(tables)
    scalars: dict[str, Value] = {}
    for key, raw in data.items():
        stat = _scalar(raw) or _stat(raw)
        if stat is not None:
            scalars[str(key)] = stat
    facts = None
    if scalars:
        facts = _values_table(title if not tables else f"{title}: run facts", source, scalars)
        tables.append(facts)
        picked = {k: v for k, v in scalars.items() if k in HEADLINE_KEYS}
        if picked:
            headlines.insert(0, Headline(source, _pick_headline(picked)))
    tables.extend(secondary)
    if tables:
        (facts or tables[0]).notes.extend(_short_strings(data))
    return tables, headlines


# ---------------------------------------------------------------------------------------- CSV files
def csv_table(title: str, source: str, path: Path, max_rows: int = 50, max_columns: int = 16) -> MetricTable:
    """A (folded) table of a CSV file's first rows; numeric cells become :class:`Value`."""
    with open(path, encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader, [])
        rows: list[list[Cell]] = []
        extra = 0
        for record in reader:
            if len(rows) >= max_rows:
                extra += 1
                continue
            row: list[Cell] = []
            for i, cell in enumerate(record[:max_columns]):
                try:
                    number = float(cell)
                except ValueError:
                    number = None
                if i == 0 or number is None or math.isnan(number) and cell.lower() != "nan":
                    row.append(cell)
                else:
                    row.append(Value(number, integer=bool(re.fullmatch(r"-?\d+", cell.strip()))))
            rows.append(row + [""] * (min(len(header), max_columns) - len(row)))
    notes = []
    if extra:
        notes.append(f"first {max_rows} of {max_rows + extra} rows")
    if len(header) > max_columns:
        notes.append(f"first {max_columns} of {len(header)} columns")
    return MetricTable(title, source, header[:max_columns], rows, notes, collapsed=True)
