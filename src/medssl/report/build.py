"""``build_report``: one HTML or markdown page over one or more run directories.

Every run is read and every figure drawn before anything is written; the page is then written
atomically (a markdown report's image folder is filled under a temporary name and renamed into
place first), so a failed report leaves nothing partial behind.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from medssl.errors import MedsslInputError
from medssl.report.document import assemble_report
from medssl.report.figures import IMAGE_TYPES
from medssl.runtime.atomic import write_text_atomic
from medssl.runtime.rundir import RunDir

__all__ = ["ReportFormat", "build_report", "files_folder", "report_format"]

ReportFormat = Literal["html", "md"]
_SUFFIXES: dict[str, ReportFormat] = {".html": "html", ".htm": "html", ".md": "md", ".markdown": "md"}


def report_format(out: Path, fmt: str | None = None) -> ReportFormat:
    """The format of report file ``out``: ``fmt`` when given, else from the suffix (.html / .htm / .md).

    Raises:
        MedsslInputError: unknown format or suffix.
    """
    if fmt is not None:
        if fmt not in ("html", "md"):
            raise MedsslInputError("--format", f"expected html or md, got {fmt!r}")
        return fmt  # type: ignore[return-value]
    found = _SUFFIXES.get(out.suffix.lower())
    if found is None:
        raise MedsslInputError(out, "cannot tell the report format from the file name; use a .html or .md "
                               "suffix (or pass the format)")
    return found


def files_folder(out: Path) -> Path:
    """The image folder of markdown report ``out``: ``<stem>_files`` beside it."""
    return out.with_name(f"{out.stem}_files")


def _check_files_folder(folder: Path) -> None:
    if not folder.exists():
        return
    if not folder.is_dir():
        raise MedsslInputError(folder, "exists and is not a folder; it would hold the report's images")
    foreign = [p.name for p in folder.iterdir() if not (p.is_file() and p.suffix.lower() in IMAGE_TYPES)]
    if foreign:
        raise MedsslInputError(folder, f"refusing to replace: holds files that are not report images "
                               f"({', '.join(sorted(foreign)[:3])})")


def _write_markdown(out: Path, text: str, files: dict[str, bytes]) -> None:
    folder = files_folder(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=out.parent))
    old = folder.with_name(f".{folder.name}.old-{uuid.uuid4().hex[:8]}")
    moved_old = False
    try:
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(staging, 0o777 & ~mask)
        for name, data in files.items():
            (staging / name).write_bytes(data)
        if folder.exists():
            os.replace(folder, old)
            moved_old = True
        os.replace(staging, folder)
        try:
            write_text_atomic(out, text)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            if moved_old:
                os.replace(old, folder)
                moved_old = False
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if moved_old:
            shutil.rmtree(old, ignore_errors=True)


def build_report(
    runs: Sequence[str | Path],
    out: str | Path,
    *,
    title: str | None = None,
    fmt: ReportFormat | None = None,
    smoothing: float = 0.0,
) -> Path:
    """Write one report page over the run directories ``runs``.

    For each run: name, kind (semi / pretrain / classify / detect / localize / unknown), command and
    versions from the manifest, the configuration (folded YAML), metric tables (evaluation summaries as
    mean ± std, results files with best vs final), learning curves from ``metrics.csv`` (one figure per
    group of metrics) and the figures found in the run with captions. Several runs get a comparison
    table of their headline metrics at the top.

    Args:
        runs: run directories (any kind; an unknown kind is rendered from what it holds).
        out: the report file; ``.html`` writes one self-contained page (images embedded), ``.md``
            writes the markdown and its images into ``<stem>_files/`` beside it.
        title: page title (default ``"medssl report: <run names>"``).
        fmt: ``"html"`` or ``"md"``; ``None`` takes it from the suffix of ``out``.
        smoothing: exponential-moving-average factor of the learning curves in [0, 1) (0: raw values).

    Returns:
        the report file.

    Raises:
        MedsslInputError: no runs, a path that is not a medssl run directory, an unusable output
            path or an invalid option; nothing is written then.
    """
    if not runs:
        raise MedsslInputError("runs", "give at least one run directory")
    out = Path(out)
    if out.is_dir():
        raise MedsslInputError(out, "is a folder; give the report's file name (e.g. report.html)")
    kind = report_format(out, fmt)
    if not 0.0 <= smoothing < 1.0:
        raise MedsslInputError("--smooth", f"expected a number in [0, 1), got {smoothing}")
    for run in runs:
        RunDir.open(run)
    exclude: list[Path] = [out]
    if kind == "md":
        _check_files_folder(files_folder(out))
        exclude.append(files_folder(out))
    report = assemble_report(runs, title, smoothing, exclude=exclude)
    if kind == "html":
        from medssl.report.html import render_html

        write_text_atomic(out, render_html(report))
    else:
        from medssl.report.markdown import render_markdown

        text, files = render_markdown(report, files_folder(out).name)
        _write_markdown(out, text, files)
    return out
