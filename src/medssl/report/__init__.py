"""Reports over run directories: one HTML page (self-contained) or markdown with its images.

::

    from medssl.report import build_report

    build_report(["runs/corn_8l", "runs/mean_teacher_8l"], "report.html")

:func:`collect_run` reads any run directory into a typed :class:`RunSummary` (config, manifest,
metrics, evaluation / result tables, figures); :mod:`medssl.report.curves` draws its learning curves;
:mod:`medssl.report.html` and :mod:`medssl.report.markdown` format the page.
"""

from medssl.report.build import build_report, files_folder, report_format
from medssl.report.collect import collect_run, detect_kind
from medssl.report.summary import KINDS, RunKind, RunSummary

__all__ = ["KINDS", "RunKind", "RunSummary", "build_report", "collect_run", "detect_kind", "files_folder",
           "report_format"]
