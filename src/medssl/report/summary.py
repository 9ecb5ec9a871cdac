"""The typed summary of one run directory that every report renderer reads.

:func:`medssl.report.collect.collect_run` fills a :class:`RunSummary`; the HTML and markdown renderers
only format it. Numbers stay numbers (:class:`Value`) until they are displayed, so a renderer can also
write the exact value next to its rounded text.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "KINDS",
    "FigureFile",
    "Headline",
    "MetricTable",
    "RunKind",
    "RunSummary",
    "TextDoc",
    "Value",
    "format_number",
]

RunKind = Literal["semi", "pretrain", "classify", "detect", "localize", "unknown"]
#: Every kind a run can be reported as; ``unknown`` is rendered from whatever the folder holds.
KINDS: tuple[str, ...] = ("semi", "pretrain", "classify", "detect", "localize", "unknown")


def format_number(value: float, decimals: int | None = None, integer: bool = False) -> str:
    """Display text of a number.

    Args:
        value: the number.
        decimals: fixed number of decimals; ``None`` chooses from the magnitude: 4 decimals up to 1
            (fractions, scores), 2 up to 100, 1 above (with thousands separators), three significant
            digits for tiny non-zero values (learning rates).
        integer: the value is a count: shown without decimals (with thousands separators).
    """
    if math.isnan(value):
        return "n/a"
    if math.isinf(value):
        return "∞" if value > 0 else "-∞"
    if decimals is not None:
        return f"{value:.{decimals}f}"
    if integer and float(value).is_integer():
        return f"{int(value):,}"
    magnitude = abs(value)
    if magnitude >= 100:
        return f"{value:,.1f}"
    if magnitude > 1:
        return f"{value:.2f}"
    if magnitude >= 0.01 or magnitude == 0:
        return f"{value:.4f}"
    return f"{value:.3g}"


@dataclass(frozen=True)
class Value:
    """One number of a table: a value (a mean when ``std`` is given) shown multiplied by ``scale``.

    Attributes:
        mean: the value in the unit of its source file (``None``: not available).
        std: standard deviation over ``n`` items (same unit), or ``None``.
        n: number of items behind a mean, or ``None``.
        scale: display multiplier (100 shows a fraction as a percentage).
        integer: the value is a count (shown without decimals).
    """

    mean: float | None
    std: float | None = None
    n: int | None = None
    scale: float = 1.0
    integer: bool = False

    @property
    def available(self) -> bool:
        return self.mean is not None and not math.isnan(self.mean)

    def text(self) -> str:
        """The value as displayed: ``"86.12 ± 3.40"`` for a percentage mean ± std, ``"n/a"`` when missing."""
        if self.mean is None or math.isnan(self.mean):
            return "n/a"
        decimals = 2 if self.scale == 100.0 else None
        if self.std is None or math.isnan(self.std):
            return format_number(self.mean * self.scale, decimals, self.integer and self.scale == 1.0)
        if decimals is None:  # mean and std with the same number of decimals
            probe = format_number(self.mean * self.scale)
            decimals = len(probe.split(".")[1]) if "." in probe and "e" not in probe else 2
        mean = format_number(self.mean * self.scale, decimals)
        return f"{mean} ± {format_number(self.std * self.scale, decimals)}"


Cell = Value | str


@dataclass
class MetricTable:
    """A table read from a run's files.

    Attributes:
        title: what the table shows.
        source: the file(s) it was read from, relative to the run directory.
        columns: header cells; the first names the row-label column.
        rows: each row starts with its label (text); the other cells are :class:`Value` or text.
        notes: short lines shown under the table (protocol details, units).
        collapsed: render folded (long tables of secondary detail).
    """

    title: str
    source: str
    columns: list[str]
    rows: list[list[Cell]]
    notes: list[str] = field(default_factory=list)
    collapsed: bool = False

    def text_columns(self) -> set[int]:
        """Indices of the columns holding only text (shown left-aligned); always the row labels."""
        return {0} | {i for i in range(len(self.columns))
                      if self.rows and all(i < len(r) and not isinstance(r[i], Value) for r in self.rows)}


@dataclass
class Headline:
    """The headline metrics of one evaluation of a run, for the comparison table across runs.

    Attributes:
        source: which evaluation (e.g. ``eval_final``, ``results.json: final``).
        values: display label (e.g. ``"Dice (%)"``) → value.
    """

    source: str
    values: dict[str, Value]


@dataclass(frozen=True)
class FigureFile:
    """An image file of a run shown in the report.

    Attributes:
        path: the file.
        group: the folder it belongs to, relative to the run directory (``"."`` for the root).
        caption: what it shows.
    """

    path: Path
    group: str
    caption: str


@dataclass(frozen=True)
class TextDoc:
    """A markdown file written by the run (shown folded, as the run wrote it)."""

    source: str
    text: str


@dataclass
class RunSummary:
    """Everything a report shows about one run directory.

    Attributes:
        root: the run directory.
        name: its folder name.
        kind: the detected run kind.
        config: the parsed ``config.yaml`` (``None`` when absent or unreadable).
        config_text: the text of ``config.yaml``.
        manifest: the run manifest (``command``, ``versions``, ...), ``None`` when the run has none.
        facts: (label, text) pairs from the manifest and config, in display order.
        metrics: rows of ``metrics.csv`` (``iteration``, ``phase`` and float metrics).
        tables: metric tables read from evaluation / result files.
        headlines: headline metrics for the comparison table.
        figures: images found in the run.
        documents: markdown files written by the run.
        notes: problems met while reading (the report shows them instead of failing).
        figures_left_out: number of images found but not shown (over the per-run limit).
    """

    root: Path
    name: str
    kind: RunKind = "unknown"
    config: dict[str, Any] | None = None
    config_text: str | None = None
    manifest: dict[str, Any] | None = None
    facts: list[tuple[str, str]] = field(default_factory=list)
    metrics: list[dict[str, Any]] = field(default_factory=list)
    tables: list[MetricTable] = field(default_factory=list)
    headlines: list[Headline] = field(default_factory=list)
    figures: list[FigureFile] = field(default_factory=list)
    documents: list[TextDoc] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    figures_left_out: int = 0
