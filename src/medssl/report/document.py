"""A report in memory: the runs' summaries, rendered learning curves, loaded figures and the comparison.

:func:`assemble_report` does all the reading and drawing, so the HTML and markdown renderers only
format and nothing is written before everything succeeded.
"""

from __future__ import annotations

import datetime as _dt
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from medssl.report.collect import collect_run
from medssl.report.curves import CurveFigure, curve_figures
from medssl.report.figures import EmbeddedImage, load_image
from medssl.report.summary import Cell, Headline, MetricTable, RunSummary

__all__ = ["COMPARISON_NOTE", "Report", "RunReport", "assemble_report", "comparison_tables"]


@dataclass
class RunReport:
    """One run of a report.

    Attributes:
        summary: what was read from the run directory.
        anchor: unique identifier of the run in the report (HTML id, file-name prefix).
        curves: learning-curve figures, one per metric group.
        images: the run's figures, loaded (a figure that cannot be read becomes a note instead).
    """

    summary: RunSummary
    anchor: str
    curves: list[CurveFigure] = field(default_factory=list)
    images: list[EmbeddedImage] = field(default_factory=list)


@dataclass
class Report:
    """Everything one report page shows (``comparison`` is empty for a single run)."""

    title: str
    generated_utc: str
    version: str
    runs: list[RunReport]
    comparison: list[MetricTable]
    smoothing: float = 0.0


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_\-]+", "-", text).strip("-").lower() or "run"


_KIND_TITLES = {"semi": "Semi-supervised segmentation", "classify": "Classification", "detect": "Detection",
                "pretrain": "Pretraining", "localize": "ROI localization", "unknown": "Other runs"}
COMPARISON_NOTE = ("Each row is one evaluation of a run, as found in its files; compare runs only on rows "
                   "that evaluate the same cases")


def comparison_tables(runs: Sequence[RunSummary]) -> list[MetricTable]:
    """Headline metrics of several runs side by side: one table per set of headline metrics (runs of one
    kind usually share it), a row per (run, evaluation), a column per metric.

    Runs without any headline metric are listed in a last table of their own.
    """
    groups: dict[tuple[str, ...], list[tuple[RunSummary, Headline]]] = {}
    for run in runs:
        for headline in run.headlines:
            groups.setdefault(tuple(headline.values), []).append((run, headline))
    tables: list[MetricTable] = []
    for labels, members in groups.items():
        kinds = list(dict.fromkeys(run.kind for run, _ in members))
        mixed = len(kinds) > 1
        columns = ["run", *(["kind"] if mixed else []), "evaluation", *labels]
        rows: list[list[Cell]] = []
        for run, headline in members:
            rows.append([run.name, *([run.kind] if mixed else []), headline.source,
                         *[headline.values[label] for label in labels]])
        title = " / ".join(_KIND_TITLES.get(k, k) for k in kinds)
        tables.append(MetricTable(title, "headline metrics", columns, rows))
    bare = [run for run in runs if not run.headlines]
    if bare:
        tables.append(MetricTable("Runs without metrics", "no evaluation, results or training loss found",
                                  ["run", "kind"], [[run.name, run.kind] for run in bare]))
    return tables


def assemble_report(runs: Sequence[str | Path], title: str | None = None, smoothing: float = 0.0,
                    exclude: Sequence[str | Path] = ()) -> Report:
    """Read every run, draw its learning curves and load its figures.

    Args:
        runs: run directories (at least one).
        title: page title (default: ``"medssl report: <run names>"``).
        smoothing: exponential-moving-average factor of the learning curves, in [0, 1).
        exclude: files and folders inside runs not to read (the report's own outputs).

    Raises:
        MedsslInputError: a path is not a medssl run directory.
    """
    from medssl import __version__

    summaries = [collect_run(path, exclude) for path in runs]
    names = [s.name for s in summaries]
    for summary in summaries:  # runs of the same folder name elsewhere: name them with their parent
        if names.count(summary.name) > 1:
            summary.name = f"{summary.root.resolve().parent.name}/{summary.name}"
    reports: list[RunReport] = []
    used: set[str] = set()
    for i, summary in enumerate(summaries):
        anchor = f"run{i + 1}-{_slug(summary.name)}"
        while anchor in used:
            anchor += "-x"
        used.add(anchor)
        report = RunReport(summary, anchor)
        try:
            report.curves = curve_figures(summary.metrics, smoothing)
        except (ValueError, OverflowError) as err:  # a pathological metrics file must not stop the report
            summary.notes.append(f"metrics.csv: learning curves could not be drawn ({err})")
        for figure in summary.figures:
            try:
                report.images.append(load_image(figure))
            except OSError as err:
                summary.notes.append(str(err))
        reports.append(report)
    if title is None:
        shown = ", ".join(s.name for s in summaries[:4]) + (", ..." if len(summaries) > 4 else "")
        title = f"medssl report: {shown}"
    generated = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    comparison = comparison_tables(summaries) if len(summaries) > 1 else []
    return Report(title, generated, __version__, reports, comparison, smoothing)
