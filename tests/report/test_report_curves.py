"""Learning-curve grouping, smoothing and drawing."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
from PIL import Image

from medssl.report.curves import CurveGroup, Series, ema, group_metrics, metric_category, plot_group


@pytest.mark.parametrize(("phase", "name", "category"), [
    ("train", "loss", "losses"), ("train", "loss_coral", "losses"), ("val", "val_loss", "losses"),
    ("train", "lr", "schedule"), ("train", "wd", "schedule"), ("train", "weight_decay", "schedule"),
    ("train", "head_lr", "schedule"), ("train", "w_cons", "ramps"), ("train", "cons_weight", "ramps"),
    ("train", "mask_ratio_roi", "masking"), ("train", "mask_bg", "masking"), ("val", "hd95_vox", "distances"),
    ("val", "asd_mm", "distances"), ("val", "dice", "scores"), ("train", "agree_frac", "other"),
    ("train", "pool_bytes", "other"),
])
def test_metric_category(phase: str, name: str, category: str) -> None:
    assert metric_category(phase, name) == category


def test_group_metrics_by_phase_and_role() -> None:
    rows = [
        {"iteration": 1, "phase": "train", "loss": 2.0, "loss_sup": 1.5, "lr": 0.1, "wd": 1e-4,
         "w_cons": 0.0, "big": 1e6, "small": 0.5},
        {"iteration": 2, "phase": "train", "loss": 1.0, "loss_sup": float("nan"), "lr": 0.01, "wd": 1e-4,
         "w_cons": 0.5, "big": 2e6, "small": 0.25},
        {"iteration": 2, "phase": "val", "dice": 0.5, "hd95_vox": 7.0, "never": float("inf")},
    ]
    groups = {g.key: g for g in group_metrics(rows)}
    assert list(groups) == ["train-losses", "train-ramps", "train-schedule", "train-other", "val-scores",
                            "val-distances"]
    losses = groups["train-losses"]
    assert losses.title == "Training: losses" and not losses.panels and losses.smooth
    assert losses.series == (Series("loss", (1.0, 2.0), (2.0, 1.0)), Series("loss_sup", (1.0,), (1.5,)))
    schedule = groups["train-schedule"]
    assert schedule.log_y and not schedule.panels and not schedule.smooth  # 0.1 vs 1e-4: 1000x apart
    assert groups["train-other"].panels  # 'other' values never share an axis
    assert not groups["train-ramps"].smooth and not groups["val-scores"].smooth
    assert groups["val-scores"].title == "Validation: scores"
    assert [s.name for s in groups["val-scores"].series] == ["dice"]  # inf dropped


def test_far_apart_magnitudes_get_panels_and_many_series_are_split() -> None:
    rows = [{"iteration": 1, "phase": "val", "acc": 0.9, "count": 500.0}]
    (group,) = group_metrics(rows)
    assert group.panels
    many = [{"iteration": i, "phase": "train", **{f"loss_{k}": float(k + i) for k in range(12)}} for i in (1, 2)]
    parts = group_metrics(many)
    assert [g.key for g in parts] == ["train-losses-1", "train-losses-2"]
    assert [len(g.series) for g in parts] == [10, 2]
    assert parts[0].title == "Training: losses (1/2)"


def test_model_copies_and_counters() -> None:
    rows = [{"iteration": 4, "phase": "val", "accuracy": 0.5, "ema_accuracy": 0.6, "loss": 0.7, "ema_loss": 0.6,
             "epoch": 2.0},
            {"iteration": 4, "phase": "epoch", "ema_loss": 0.5}]
    groups = group_metrics(rows)
    assert [(g.key, g.title, [s.name for s in g.series]) for g in groups] == [
        ("epoch-losses", "Epoch means: losses", ["ema_loss"]),  # only a copy's values: no split
        ("val-losses", "Validation: losses", ["loss"]),
        ("val-losses-ema", "Validation: losses (ema_*)", ["ema_loss"]),
        ("val-scores", "Validation: scores", ["accuracy"]),
        ("val-scores-ema", "Validation: scores (ema_*)", ["ema_accuracy"]),
    ]  # 'epoch' (a progress counter) is not drawn


def test_ema_matches_the_bias_corrected_formula() -> None:
    values = [3.0, 1.0, 4.0, 1.0, 5.0]
    a = 0.7
    expected = []
    for t in range(1, len(values) + 1):
        num = sum((1 - a) * a ** (t - i) * values[i - 1] for i in range(1, t + 1))
        expected.append(num / (1 - a**t))
    assert np.allclose(ema(values, a), expected)
    assert ema(values, 0.0) == values
    with pytest.raises(ValueError):
        ema(values, 1.0)


@pytest.mark.parametrize("panels", [False, True])
def test_plot_group_writes_a_png_of_the_stated_size(panels: bool) -> None:
    xs = tuple(float(i) for i in range(1, 30))
    group = CurveGroup("train-losses", "Training: losses", "train", "losses",
                       (Series("loss", xs, tuple(math.exp(-x / 10) for x in xs)),
                        Series("loss_b", xs, tuple(2 + math.sin(x) for x in xs))), panels=panels, smooth=True)
    figure = plot_group(group, smoothing=0.6)
    with Image.open(io.BytesIO(figure.png)) as img:
        assert img.format == "PNG" and img.size == (figure.width, figure.height)
        pixels = np.asarray(img.convert("RGB"))
    assert (figure.width, figure.height) == ((748, 330) if panels else (704, 374))
    assert (pixels < 200).any() and (pixels == 255).all(axis=2).mean() > 0.5  # drawn on white
    with pytest.raises(ValueError):
        plot_group(group, smoothing=-0.1)
