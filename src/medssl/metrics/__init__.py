"""Metrics: segmentation (Dice, Jaccard, HD95, ASD), localization, classification and detection.

* :mod:`medssl.metrics.segmentation`: per-case Dice / Jaccard / HD95 / ASD / ASSD, voxels and mm.

The segmentation names are re-exported here (``from medssl.metrics import segmentation_metrics``).
"""

from medssl.metrics.segmentation import (
    EMPTY_POLICIES,
    METRIC_KEYS,
    EmptyPolicy,
    asd,
    assd,
    dice,
    directed_surface_distances,
    hd95,
    jaccard,
    segmentation_metrics,
    surface,
)

__all__ = ["EMPTY_POLICIES", "METRIC_KEYS", "EmptyPolicy", "asd", "assd", "dice", "directed_surface_distances",
           "hd95", "jaccard", "segmentation_metrics", "surface"]
