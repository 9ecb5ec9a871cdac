"""A report as one self-contained HTML page.

Images are embedded as base64 ``data:`` URIs, the style sheet is inline, and nothing needs JavaScript
(folded sections are ``<details>`` elements). Every numeric table cell carries the exact value read
from the run's files in ``data-value`` (and ``data-std``), next to its rounded text.
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Iterable

from medssl.report.document import COMPARISON_NOTE, Report, RunReport
from medssl.report.figures import EmbeddedImage, group_title
from medssl.report.markup import markdown_to_html
from medssl.report.summary import MetricTable, Value

__all__ = ["render_html"]

_CSS = """
:root{--fg:#1b2430;--muted:#5a6472;--line:#dde2ea;--soft:#f4f6f9;--accent:#1f5ea8}
*{box-sizing:border-box}
body{margin:0;background:#fff;color:var(--fg);
 font:15px/1.55 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue","DejaVu Sans",Arial,sans-serif}
main{max-width:1180px;margin:0 auto;padding:28px 32px 72px}
h1{font-size:27px;line-height:1.25;margin:0 0 6px}
h2{font-size:21px;margin:44px 0 10px;padding-bottom:6px;border-bottom:2px solid var(--line)}
h3{font-size:17px;margin:28px 0 8px}
h4{font-size:15px;margin:18px 0 6px}
a{color:var(--accent);text-decoration:none}a:hover{text-decoration:underline}
.meta,.path,.source{color:var(--muted);font-size:13px}
.source{font-weight:normal;margin-left:8px}
.kind{display:inline-block;vertical-align:middle;margin-left:10px;padding:1px 9px;border-radius:11px;
 font-size:12px;font-weight:600;letter-spacing:.04em;text-transform:uppercase;background:#e7eefa;color:var(--accent)}
.kind-unknown{background:#eceef1;color:var(--muted)}
nav ol{margin:8px 0 0;padding-left:22px}
dl.facts{display:grid;grid-template-columns:max-content 1fr;gap:3px 18px;margin:10px 0;font-size:14px}
dl.facts dt{color:var(--muted)}dl.facts dd{margin:0;overflow-wrap:anywhere}
.scroll{overflow-x:auto}
table{border-collapse:collapse;font-size:14px;margin:4px 0 6px}
th,td{padding:5px 11px;border-bottom:1px solid var(--line);text-align:right;white-space:nowrap}
th:first-child,td:first-child,th.txt,td.txt{text-align:left}
thead th{background:var(--soft);font-weight:600;border-bottom:1px solid #c9d0da}
td.num{font-variant-numeric:tabular-nums}
tbody tr:hover{background:#fafbfd}
ul.notes{margin:2px 0 10px;padding-left:20px;color:var(--muted);font-size:13px}
.warn{margin:10px 0;padding:6px 12px;border-left:3px solid #e0a100;background:#fff8e6;font-size:14px}
code,pre{font-family:ui-monospace,"SFMono-Regular",Menlo,Consolas,"DejaVu Sans Mono",monospace;font-size:13px}
pre{background:var(--soft);padding:10px 14px;border-radius:6px;overflow:auto;max-height:520px}
details{margin:8px 0}summary{cursor:pointer;color:var(--accent);font-weight:500}
details>div.doc{border-left:3px solid var(--line);padding:2px 0 2px 14px;margin-top:6px}
.grid{display:grid;align-items:start;gap:14px;margin:6px 0;
 grid-template-columns:repeat(auto-fill,minmax(min(100%,500px),1fr))}
figure{margin:0;padding:8px;border:1px solid var(--line);border-radius:6px;background:#fff}
figure.wide{grid-column:1/-1}
figure img{display:block;max-width:100%;height:auto;margin:0 auto}img.small{image-rendering:pixelated}
figcaption{margin-top:6px;font-size:13px;color:var(--muted)}
"""
_WIDE_PIXELS = 900
_SMALL_PIXELS = 256


def _e(text: object) -> str:
    return html.escape(str(text))


def _cell(cell: Value | str, left: bool) -> str:
    """A table cell; a number carries its exact value (and std) as read from the run's file."""
    if isinstance(cell, Value):
        attrs = ""
        if cell.mean is not None:
            attrs += f' data-value="{cell.mean!r}"'
        if cell.std is not None:
            attrs += f' data-std="{cell.std!r}"'
        return f'<td class="num"{attrs}>{_e(cell.text())}</td>'
    return f'<td class="txt">{_e(cell)}</td>' if left else f"<td>{_e(cell)}</td>"


def _table(table: MetricTable) -> str:
    text = table.text_columns()
    left = ' class="txt"'
    head = "".join(f"<th{left if i in text else ''}>{_e(c)}</th>" for i, c in enumerate(table.columns))
    body = "".join("<tr>" + "".join(_cell(c, i in text) for i, c in enumerate(row)) + "</tr>" for row in table.rows)
    notes = "".join(f"<li>{_e(n)}</li>" for n in table.notes)
    inner = (f'<div class="scroll"><table data-title="{_e(table.title)}"><thead><tr>{head}</tr></thead>'
             f"<tbody>{body}</tbody></table></div>" + (f'<ul class="notes">{notes}</ul>' if notes else ""))
    if table.collapsed:
        return (f"<details><summary>{_e(table.title)} <span class=\"source\">{_e(table.source)}</span></summary>"
                f"{inner}</details>")
    return f'<h4>{_e(table.title)}<span class="source">{_e(table.source)}</span></h4>{inner}'


def _img(data: bytes, mime: str, alt: str, width: int, height: int, extra: str = "") -> str:
    b64 = base64.b64encode(data).decode("ascii")
    return f'<img src="data:{mime};base64,{b64}" alt="{_e(alt)}" width="{width}" height="{height}"{extra}>'


def _figure(image: EmbeddedImage) -> str:
    cls = ' class="wide"' if image.width > _WIDE_PIXELS else ""
    width, height, extra = image.width, image.height, ""
    if 0 < width < _SMALL_PIXELS:  # thumbnails are shown enlarged, pixels kept sharp
        width, height = _SMALL_PIXELS, max(1, round(height * _SMALL_PIXELS / width))
        extra = ' class="small"'
    return (f"<figure{cls}>{_img(image.data, image.mime, image.figure.caption, width, height, extra)}"
            f"<figcaption>{_e(image.figure.caption)}</figcaption></figure>")


def _groups(images: Iterable[EmbeddedImage]) -> dict[str, list[EmbeddedImage]]:
    out: dict[str, list[EmbeddedImage]] = {}
    for image in images:
        out.setdefault(image.figure.group, []).append(image)
    return out


def _run(run: RunReport, smoothing: float) -> str:
    s = run.summary
    parts = [f'<section class="run" id="{_e(run.anchor)}">',
             f'<h2>{_e(s.name)}<span class="kind kind-{_e(s.kind)}">{_e(s.kind)}</span></h2>',
             f'<p class="path"><code>{_e(s.root.resolve())}</code></p>']
    for note in s.notes:
        parts.append(f'<p class="warn">{_e(note)}</p>')
    if s.facts:
        parts.append('<dl class="facts">' + "".join(
            f"<dt>{_e(k)}</dt><dd>{'<code>' + _e(v) + '</code>' if k == 'command' else _e(v)}</dd>"
            for k, v in s.facts) + "</dl>")
    if s.tables:
        parts.append("<h3>Metrics</h3>")
        parts.extend(_table(t) for t in s.tables)
    if run.curves:
        how = f"exponential moving average {smoothing:g} over the faint raw values" if smoothing else "raw values"
        parts.append(f'<h3>Learning curves <span class="source">metrics.csv, {_e(how)}</span></h3>'
                     '<div class="grid">')
        for curve in run.curves:
            names = ", ".join(series.name for series in curve.group.series)
            scale = " (log scale)" if curve.group.log_y else ""
            wide = " wide" if curve.width > _WIDE_PIXELS else ""
            parts.append(f'<figure class="curve{wide}" data-group="{_e(curve.group.key)}">'
                         f"{_img(curve.png, 'image/png', curve.group.title, curve.width, curve.height)}"
                         f"<figcaption>{_e(curve.group.title)}{scale}: {_e(names)}</figcaption></figure>")
        parts.append("</div>")
    if run.images:
        parts.append("<h3>Figures</h3>")
        for group, images in _groups(run.images).items():
            parts.append(f'<h4>{_e(group_title(s.kind, group))}<span class="source">{_e(group)}/</span></h4>'
                         '<div class="grid">' + "".join(_figure(i) for i in images) + "</div>")
    if s.figures_left_out:
        parts.append(f'<p class="meta">{s.figures_left_out} more image(s) in the run are not shown.</p>')
    if s.config_text is not None or s.manifest is not None or s.documents:
        parts.append("<h3>Configuration and files</h3>")
    if s.config_text is not None:
        parts.append(f"<details><summary>config.yaml</summary><pre>{_e(s.config_text)}</pre></details>")
    if s.manifest is not None:
        text = json.dumps(s.manifest, indent=2, default=str)
        parts.append(f"<details><summary>manifest.json</summary><pre>{_e(text)}</pre></details>")
    for doc in s.documents:
        parts.append(f"<details><summary>{_e(doc.source)}</summary>"
                     f'<div class="doc">{markdown_to_html(doc.text, heading_offset=3)}</div></details>')
    parts.append("</section>")
    return "\n".join(parts)


def render_html(report: Report) -> str:
    """The report as one HTML document (UTF-8 text)."""
    runs = report.runs
    head = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{_e(report.title)}</title><style>{_CSS}</style></head><body><main>")
    parts = [head, f"<header><h1>{_e(report.title)}</h1>",
             f'<p class="meta">Generated {_e(report.generated_utc)} by medssl {_e(report.version)} from '
             f"{len(runs)} run director{'y' if len(runs) == 1 else 'ies'}.</p></header>"]
    if len(runs) > 1:
        parts.append("<nav><ol>" + "".join(
            f'<li><a href="#{_e(r.anchor)}">{_e(r.summary.name)}</a>'
            f'<span class="kind kind-{_e(r.summary.kind)}">{_e(r.summary.kind)}</span></li>' for r in runs)
            + "</ol></nav>")
    if report.comparison:
        parts.append('<section id="comparison"><h2>Comparison</h2>'
                     f'<p class="meta">{_e(COMPARISON_NOTE)}.</p>'
                     + "".join(_table(t) for t in report.comparison) + "</section>")
    parts.extend(_run(run, report.smoothing) for run in runs)
    parts.append("</main></body></html>\n")
    return "\n".join(parts)
