"""Learning curves from ``metrics.csv``: metrics grouped by role, one PNG figure per group.

Each logged metric is assigned to a group by its phase (``train``, ``val``, ...) and its name:

=================  ===============================================================
category           names
=================  ===============================================================
losses             ``loss``, ``loss_*``, ``*_loss``
schedule           ``lr``, ``lr_*``, ``*_lr``, ``wd``, ``weight_decay``, ``momentum``
ramps              ``w_*``, ``*_weight``, ``lambda_*``, names containing ``ramp``
masking            names containing ``ratio`` or ``patch_fraction``, ``mask_*``
distances          ``hd*``, ``asd*``, ``assd*`` (surface distances)
scores / other     the rest (``scores`` for evaluation phases, ``other`` for training)
=================  ===============================================================

Progress counters (``epoch``, ``step``, ...) logged as metrics are not drawn. Metrics of another copy
of the model (``ema_*``, ``teacher_*``, ...) get a figure of their own next to the model's.

Series of one group share an axis unless their magnitudes differ by more than 100× (then each gets
its own panel; learning rate and weight decay use a log axis instead). Figures are drawn with
matplotlib's object API on an Agg canvas (no pyplot state).
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["COUNTERS", "VARIANT_PREFIXES", "CurveFigure", "CurveGroup", "Series", "curve_figures", "ema",
           "group_metrics", "metric_category", "plot_group"]

_RULES: tuple[tuple[str, str], ...] = (
    ("losses", r"(^|_)loss($|_)|loss$"),
    ("schedule", r"^(lr|wd|weight_decay|momentum)($|_)|_lr$"),
    ("ramps", r"^(w|lambda)_|_weight$|ramp"),
    ("masking", r"ratio|^mask_|patch_fraction"),
    ("distances", r"^(hd\d*|asd|assd)($|_)"),
)
_CATEGORY_TITLES = {
    "losses": "losses", "schedule": "learning rate and weight decay", "ramps": "loss weights (ramps)",
    "masking": "mask ratios", "distances": "surface distances", "scores": "scores", "other": "other values",
}
#: Metric names that count progress (drawn against the iteration they would be a straight line).
COUNTERS = frozenset({"epoch", "step", "iteration", "global_step"})
_ORDER = ("losses", "ramps", "schedule", "masking", "scores", "distances", "other")
_PHASE_NAMES = {"train": "Training", "val": "Validation", "test": "Test", "epoch": "Epoch means"}
#: Name prefixes of another copy of the model (weight averages, teachers): drawn in a figure of their own.
VARIANT_PREFIXES = ("ema", "teacher", "student", "swa")
_LINESTYLES = ("solid", "dashed", "dotted", "dashdot")
_SPREAD = 100.0
_MAX_SERIES = 10
_MAX_PANELS = 12


@dataclass(frozen=True)
class Series:
    """One metric over iterations (finite values only)."""

    name: str
    x: tuple[float, ...]
    y: tuple[float, ...]


@dataclass(frozen=True)
class CurveGroup:
    """Metrics drawn in one figure.

    Attributes:
        key: identifier (``<phase>-<category>[-<part>]``), usable as a file stem.
        title: figure title, e.g. ``"Training: losses"``.
        phase: the metrics' phase in ``metrics.csv``.
        category: see the module docstring.
        series: the metrics.
        log_y: draw on a logarithmic y axis.
        panels: one panel per series instead of one shared axis.
        smooth: smoothing applies (training-phase losses, mask ratios and other noisy values; never
            schedules, ramp weights or the sparse points of evaluation phases).
    """

    key: str
    title: str
    phase: str
    category: str
    series: tuple[Series, ...]
    log_y: bool = False
    panels: bool = False
    smooth: bool = False


@dataclass(frozen=True)
class CurveFigure:
    """A rendered group: the PNG bytes and their size in pixels."""

    group: CurveGroup
    png: bytes
    width: int
    height: int


def metric_category(phase: str, name: str) -> str:
    """Category of metric ``name`` logged in ``phase`` (see the module docstring)."""
    lowered = name.lower()
    for category, pattern in _RULES:
        if re.search(pattern, lowered):
            return category
    return "other" if phase == "train" else "scores"


def _phase_title(phase: str) -> str:
    return _PHASE_NAMES.get(phase, phase.replace("_", " ").capitalize() or "Unnamed phase")


def _magnitude(series: Series) -> float:
    return max(abs(v) for v in series.y)


def _spread(series: Sequence[Series]) -> float:
    mags = [m for m in (_magnitude(s) for s in series) if m > 0]
    return max(mags) / min(mags) if mags else 1.0


def _chunks(items: Sequence[Series], size: int) -> list[tuple[Series, ...]]:
    return [tuple(items[i:i + size]) for i in range(0, len(items), size)]


def group_metrics(rows: Iterable[dict[str, Any]]) -> list[CurveGroup]:
    """Group the rows of :func:`medssl.runtime.metrics_log.read_metrics` into figures.

    Returns:
        groups ordered by phase (``train`` first) then category (losses, ramps, schedule, masking,
        scores, distances, other); metrics without a finite value are left out.
    """
    points: dict[tuple[str, str], tuple[list[float], list[float]]] = {}
    for row in rows:
        phase = str(row.get("phase", ""))
        iteration = float(row.get("iteration", 0))
        for key, value in row.items():
            if key in ("iteration", "phase") or key in COUNTERS or not isinstance(value, int | float) \
                    or not math.isfinite(value):
                continue
            xs, ys = points.setdefault((phase, key), ([], []))
            xs.append(iteration)
            ys.append(float(value))
    phases = sorted({p for p, _ in points}, key=lambda p: (p != "train", p))
    groups: list[CurveGroup] = []
    for phase in phases:
        by_category: dict[str, list[Series]] = {}
        for (p, key), (xs, ys) in points.items():
            if p == phase:
                by_category.setdefault(metric_category(phase, key), []).append(Series(key, tuple(xs), tuple(ys)))
        for category, variant, series in _split_variants(by_category):
            log_y = category == "schedule" and all(v > 0 for s in series for v in s.y) and _spread(series) > 20
            panels = len(series) > 1 and (category == "other" or (not log_y and _spread(series) > _SPREAD))
            parts = _chunks(series, _MAX_PANELS if panels else _MAX_SERIES)
            for i, part in enumerate(parts):
                suffix = f" ({i + 1}/{len(parts)})" if len(parts) > 1 else ""
                key = "-".join([phase, category, *([variant] if variant else []),
                                *([str(i + 1)] if len(parts) > 1 else [])])
                what = _CATEGORY_TITLES[category] + (f" ({variant}_*)" if variant else "")
                title = f"{_phase_title(phase)}: {what}{suffix}"
                smooth = phase == "train" and category not in ("schedule", "ramps")
                groups.append(CurveGroup(re.sub(r"[^A-Za-z0-9_\-]+", "_", key), title, phase, category, part,
                                         log_y=log_y, panels=panels and len(part) > 1, smooth=smooth))
    return groups


def _split_variants(by_category: dict[str, list[Series]]) -> list[tuple[str, str, list[Series]]]:
    """``(category, variant prefix or "", series)`` in display order; series named ``<variant>_*``
    (see :data:`VARIANT_PREFIXES`) go to a figure of their own when the category has others too."""
    out: list[tuple[str, str, list[Series]]] = []
    for category in _ORDER:
        series = by_category.get(category) or []
        if not series:
            continue
        variants = {s.name: next((p for p in VARIANT_PREFIXES if s.name.startswith(f"{p}_")), "") for s in series}
        base = [s for s in series if not variants[s.name]]
        if not base:
            out.append((category, "", series))
            continue
        out.append((category, "", base))
        for prefix in VARIANT_PREFIXES:
            part = [s for s in series if variants[s.name] == prefix]
            if part:
                out.append((category, prefix, part))
    return out


def ema(values: Sequence[float], smoothing: float) -> list[float]:
    """Exponential moving average with bias correction.

    ``s_t = a s_{t-1} + (1 - a) x_t`` with ``s_0 = 0``, divided by ``1 - a^t`` so the first value
    is not pulled towards zero; ``a = smoothing`` in [0, 1) (0 returns the values unchanged).
    """
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
    out, acc, weight = [], 0.0, 0.0
    for value in values:
        acc = smoothing * acc + (1.0 - smoothing) * value
        weight = smoothing * weight + (1.0 - smoothing)
        out.append(acc / weight)
    return out


def _draw(ax: Any, series: Series, colour: Any, smoothing: float, label: bool, style: str = "solid") -> None:
    few = len(series.y) <= 3
    if smoothing > 0 and len(series.y) > 5:
        ax.plot(series.x, series.y, color=colour, alpha=0.3, linewidth=1.0, linestyle=style)
        ax.plot(series.x, ema(series.y, smoothing), color=colour, linewidth=1.6, linestyle=style,
                label=series.name if label else None)
    else:
        ax.plot(series.x, series.y, color=colour, linewidth=1.5, linestyle=style, marker="o" if few else None,
                markersize=4, label=series.name if label else None)


def _style(ax: Any, log_y: bool, series: Sequence[Series]) -> None:
    from matplotlib.ticker import MaxNLocator

    xs = {x for s in series for x in s.x}
    if len(xs) == 1:  # a single iteration: one tick, not fractions around it
        (x,) = xs
        ax.set_xticks([x])
        ax.set_xlim(x - 1, x + 1)
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if log_y:
        ax.set_yscale("log")
    ax.grid(True, alpha=0.3, linewidth=0.6)
    ax.tick_params(labelsize=8)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def plot_group(group: CurveGroup, smoothing: float = 0.0) -> CurveFigure:
    """Draw ``group`` as a PNG: one shared axis with a legend, or one panel per series.

    Args:
        group: from :func:`group_metrics`.
        smoothing: exponential-moving-average factor in [0, 1) (0: raw values), used when
            ``group.smooth``; the raw values are then drawn faint behind the smoothed line.

    Returns:
        the PNG (white background) and its size in pixels; the x axis is the iteration.
    """
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
    colours = [colormaps["tab10"](i % 10) for i in range(len(group.series))]
    smoothing = smoothing if group.smooth else 0.0
    if group.panels:
        ncols = 2 if len(group.series) <= 4 else 3
        nrows = math.ceil(len(group.series) / ncols)
        fig = Figure(figsize=(3.4 * ncols, 2.5 * nrows + 0.5), dpi=110)
        FigureCanvasAgg(fig)
        axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
        for ax, series, colour in zip(axes, group.series, colours, strict=False):
            _draw(ax, series, colour, smoothing, label=False)
            ax.set_title(series.name, fontsize=9)
            _style(ax, group.log_y, [series])
        for ax in axes[len(group.series):]:
            ax.set_axis_off()
        for ax in axes[(nrows - 1) * ncols:]:
            ax.set_xlabel("iteration", fontsize=8)
    else:
        fig = Figure(figsize=(6.4, 3.4), dpi=110)
        FigureCanvasAgg(fig)
        ax = fig.subplots()
        for i, (series, colour) in enumerate(zip(group.series, colours, strict=True)):
            # line styles keep series with equal values (drawn on top of each other) distinguishable
            _draw(ax, series, colour, smoothing, label=True, style=_LINESTYLES[i % len(_LINESTYLES)])
        _style(ax, group.log_y, group.series)
        ax.set_xlabel("iteration", fontsize=9)
        ax.legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    fig.suptitle(group.title, fontsize=11)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", facecolor="white")
    width, height = (int(round(v)) for v in fig.get_size_inches() * fig.dpi)
    return CurveFigure(group, buf.getvalue(), width, height)


def curve_figures(rows: Iterable[dict[str, Any]], smoothing: float = 0.0) -> list[CurveFigure]:
    """Every learning-curve figure of a run's metric rows (see :func:`group_metrics`)."""
    return [plot_group(group, smoothing) for group in group_metrics(rows)]
