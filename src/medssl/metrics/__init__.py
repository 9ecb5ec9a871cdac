"""Metrics: segmentation, localization, classification (and detection in :mod:`.detection`).

* :mod:`medssl.metrics.segmentation`: per-case Dice / Jaccard / HD95 / ASD / ASSD, voxels and mm.
* :mod:`medssl.metrics.localization`: Dice, normalised surface Dice, precision ("coverage"), recall of
  ROI maps against ground truth.
* :mod:`medssl.metrics.classification`: accuracy, balanced accuracy, AUROC, AUPRC, macro F1.
* :mod:`medssl.metrics.detection`: COCO BoxAP / MaskAP (imported on demand: it needs pycocotools).

The names below are re-exported here (``from medssl.metrics import segmentation_metrics``).
"""

from medssl.metrics.classification import (
    accuracy,
    auprc,
    auroc,
    balanced_accuracy,
    classification_metrics,
    f1_macro,
)
from medssl.metrics.localization import (
    LOCALIZATION_METRIC_KEYS,
    localization_metrics,
    normalized_surface_dice,
    precision,
    recall,
)
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

__all__ = ["EMPTY_POLICIES", "LOCALIZATION_METRIC_KEYS", "METRIC_KEYS", "EmptyPolicy", "accuracy", "asd", "assd",
           "auprc", "auroc", "balanced_accuracy", "classification_metrics", "dice", "directed_surface_distances",
           "f1_macro", "hd95", "jaccard", "localization_metrics", "normalized_surface_dice", "precision", "recall",
           "segmentation_metrics", "surface"]
