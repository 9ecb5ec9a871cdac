"""A report as markdown: ``report.md`` text plus the PNG / JPEG files it links to.

The images are returned as ``{file name: bytes}``; :func:`medssl.report.build.build_report` writes them
into ``<stem>_files/`` beside the markdown file. Folded sections use ``<details>``, which GitHub and
most markdown viewers render.
"""

from __future__ import annotations

import json
import re

from medssl.report.document import COMPARISON_NOTE, Report, RunReport
from medssl.report.figures import group_title
from medssl.report.summary import MetricTable, Value

__all__ = ["render_markdown"]

_EXTENSIONS = {"image/png": ".png", "image/jpeg": ".jpg"}


def _cell(cell: Value | str) -> str:
    text = cell.text() if isinstance(cell, Value) else str(cell)
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _table(table: MetricTable) -> list[str]:
    lines = []
    if table.collapsed:
        lines += [f"<details><summary>{table.title} ({table.source})</summary>", ""]
    else:
        lines += [f"#### {table.title}", "", f"*{table.source}*", ""]
    lines.append("| " + " | ".join(_cell(c) for c in table.columns) + " |")
    text = table.text_columns()
    lines.append("|" + "|".join(":---" if i in text else "---:" for i in range(len(table.columns))) + "|")
    lines.extend("| " + " | ".join(_cell(c) for c in row) + " |" for row in table.rows)
    lines.append("")
    lines.extend(f"- {note}" for note in table.notes)
    if table.notes:
        lines.append("")
    if table.collapsed:
        lines += ["</details>", ""]
    return lines


def _demote(text: str, levels: int) -> str:
    out, fenced = [], False
    for line in text.splitlines():
        if line.strip().startswith("```"):
            fenced = not fenced
        out.append("#" * levels + line if not fenced and re.match(r"^#{1,6}\s", line) else line)
    return "\n".join(out)


def _fence(text: str, lang: str) -> str:
    ticks = "```"
    while ticks in text:
        ticks += "`"
    return f"{ticks}{lang}\n{text.rstrip()}\n{ticks}"


def _safe(stem: str) -> str:
    return re.sub(r"[^A-Za-z0-9_\-]+", "_", stem).strip("_") or "figure"


def _run(run: RunReport, files_dir: str, files: dict[str, bytes], smoothing: float) -> list[str]:
    s = run.summary
    lines = [f'<a id="{run.anchor}"></a>', "", f"## {s.name} ({s.kind})", "", f"`{s.root.resolve()}`", ""]
    lines.extend(f"> **note:** {note}" for note in s.notes)
    if s.notes:
        lines.append("")
    for key, value in s.facts:
        lines.append(f"- **{key}**: " + (f"`{value}`" if key == "command" else value))
    if s.facts:
        lines.append("")
    if s.tables:
        lines += ["### Metrics", ""]
        for table in s.tables:
            lines.extend(_table(table))
    if run.curves:
        how = f"exponential moving average {smoothing:g} over the faint raw values" if smoothing else "raw values"
        lines += ["### Learning curves", "", f"*metrics.csv, {how}*", ""]
        for curve in run.curves:
            name = f"{run.anchor}_curve_{curve.group.key}.png"
            files[name] = curve.png
            names = ", ".join(series.name for series in curve.group.series)
            scale = " (log scale)" if curve.group.log_y else ""
            lines += [f"![{curve.group.title}]({files_dir}/{name})", "",
                      f"*{curve.group.title}{scale}: {names}*", ""]
    if run.images:
        lines += ["### Figures", ""]
        current = None
        for i, image in enumerate(run.images):
            if image.figure.group != current:
                current = image.figure.group
                lines += [f"#### {group_title(s.kind, current)}", "", f"*{current}/*", ""]
            name = f"{run.anchor}_fig{i + 1:03d}_{_safe(image.figure.path.stem)}{_EXTENSIONS[image.mime]}"
            files[name] = image.data
            lines += [f"![{image.figure.caption}]({files_dir}/{name})", "", f"*{image.figure.caption}*", ""]
    if s.figures_left_out:
        lines += [f"{s.figures_left_out} more image(s) in the run are not shown.", ""]
    if s.config_text is not None or s.manifest is not None or s.documents:
        lines += ["### Configuration and files", ""]
    if s.config_text is not None:
        lines += ["<details><summary>config.yaml</summary>", "", _fence(s.config_text, "yaml"), "", "</details>", ""]
    if s.manifest is not None:
        text = json.dumps(s.manifest, indent=2, default=str)
        lines += ["<details><summary>manifest.json</summary>", "", _fence(text, "json"), "", "</details>", ""]
    for doc in s.documents:
        lines += [f"<details><summary>{doc.source}</summary>", "", _demote(doc.text, 3).rstrip(), "",
                  "</details>", ""]
    return lines


def render_markdown(report: Report, files_dir: str) -> tuple[str, dict[str, bytes]]:
    """The report as markdown and the images it links to.

    Args:
        report: from :func:`medssl.report.document.assemble_report`.
        files_dir: the folder name the images are linked under (relative to the markdown file).

    Returns:
        (markdown text, ``{file name: bytes}`` of the images).
    """
    files: dict[str, bytes] = {}
    runs = report.runs
    lines = [f"# {report.title}", "",
             f"*Generated {report.generated_utc} by medssl {report.version} from {len(runs)} run "
             f"director{'y' if len(runs) == 1 else 'ies'}.*", ""]
    if len(runs) > 1:
        lines.extend(f"{i + 1}. [{r.summary.name}](#{r.anchor}) ({r.summary.kind})" for i, r in enumerate(runs))
        lines.append("")
    if report.comparison:
        lines += ["## Comparison", "", f"*{COMPARISON_NOTE}.*", ""]
        for table in report.comparison:
            lines.extend(_table(table))
    for run in runs:
        lines.extend(_run(run, files_dir, files, report.smoothing))
    return "\n".join(lines).rstrip() + "\n", files
