"""Score a ROI cache against ground-truth labels: the localization table (``medssl localize evaluate``).

Every complete cache entry (optionally only one prompt / backend) is matched to a label file by the
name of its image without the image ending (``image_source`` in the sidecar: ``images/case_0003.nii.gz``
↔ ``<labels>/case_0003.<any image ending>``). Each product the entry holds is scored with
:func:`medssl.metrics.localization.localization_metrics`:

* ``coarse``: the coarse mask (binarised saliency, or the matched structures);
* ``refined``: the refined (SAM) mask;
* ``boxes``: the ROI map (the union of the expanded boxes).

Label foreground: every nonzero voxel, or the voxels whose value is in ``label_values``. Voxels of value
:data:`~medssl.data.layouts.IGNORE_LABEL` (255, e.g. the ``cxr_lungs`` masks' "ignore" regions) are left
out: removed from both the prediction and the foreground before scoring. The NSD
tolerance is in mm for label files with geometry (NIfTI, NRRD, DICOM) and in pixels otherwise.

Outputs in ``out_dir`` (default ``<cache>/evaluation``), written atomically:
``localization_per_image.csv`` (one row per entry and product), ``localization.json`` (rows, groups with
mean ± std (population std, ddof 0) per product and metric, entries without a label) and
``localization.md`` (one table per backend / prompt / parameters group).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medssl.data.io import read_label
from medssl.data.layouts import IGNORE_LABEL
from medssl.errors import MedsslInputError
from medssl.localize.base import roi_source_label
from medssl.localize.cache import RoiCache
from medssl.localize.run import find_by_stem
from medssl.localize.structures import image_stem
from medssl.metrics.localization import LOCALIZATION_METRIC_KEYS, localization_metrics
from medssl.runtime.atomic import write_json_atomic, write_text_atomic

__all__ = ["PRODUCTS", "LocalizationEvaluation", "evaluate_localization"]

#: Product name -> (result attribute, table label), in table order.
PRODUCTS: dict[str, tuple[str, str]] = {
    "coarse": ("coarse_mask", "coarse mask"),
    "refined": ("refined_mask", "refined mask (SAM)"),
    "boxes": ("roi", "ROI boxes"),
}

_CSV_FIELDS = ("image", "label", "key", "backend", "prompt", "group", "product", *LOCALIZATION_METRIC_KEYS,
               "pred_voxels", "gt_voxels", "empty_pred", "empty_gt")


@dataclass
class LocalizationEvaluation:
    """Scores of a ROI cache against labels.

    Attributes:
        rows: one dict per (entry, product): ``image``, ``label``, ``key``, ``backend``, ``prompt``,
            ``group``, ``product``, the four scores, voxel counts and empty flags.
        groups: one dict per backend / prompt / parameters group: ``group`` (id), ``backend``,
            ``prompt``, ``params``, ``images``, ``products`` ({product: {metric: {mean, std, n}}}).
        unmatched: image files of entries without a label file.
        tolerance: NSD tolerance (mm, or pixels for labels without geometry).
        files: written files by kind (``csv``, ``json``, ``markdown``).
    """

    rows: list[dict[str, Any]]
    groups: list[dict[str, Any]]
    unmatched: list[str]
    tolerance: float
    files: dict[str, Path] = field(default_factory=dict)

    def markdown(self) -> str:
        """The localization table(s) as markdown."""
        lines: list[str] = []
        for g in self.groups:
            lines.append(f"### {g.get('source', g['backend'])}: \"{g['prompt']}\" ({g['images']} images, NSD tolerance "
                         f"{self.tolerance:g})")
            lines.append("")
            if g["params"]:
                lines.append(f"Parameters: `{json.dumps(g['params'], sort_keys=True)}`")
                lines.append("")
            lines.append("| product | " + " | ".join(_TITLES[m] for m in LOCALIZATION_METRIC_KEYS) + " |")
            lines.append("|---|" + "---|" * len(LOCALIZATION_METRIC_KEYS))
            for product, stats in g["products"].items():
                cells = [f"{stats[m]['mean']:.3f} ± {stats[m]['std']:.3f}" for m in LOCALIZATION_METRIC_KEYS]
                lines.append(f"| {PRODUCTS[product][1]} | " + " | ".join(cells) + " |")
            lines.append("")
        if self.unmatched:
            lines.append(f"{len(self.unmatched)} cached images have no label file and are not scored.")
            lines.append("")
        return "\n".join(lines)


_TITLES = {"dice": "Dice", "nsd": "NSD", "precision": "precision", "recall": "recall"}


def _group_id(parts: dict[str, Any]) -> str:
    ident = {k: parts.get(k) for k in ("backend", "prompt", "model_id", "model_revision", "params")}
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _foreground(label: np.ndarray, label_values: Iterable[int] | None) -> np.ndarray:
    if label_values is None:
        return label != 0
    return np.isin(label, np.asarray(list(label_values)))


def _stats(values: list[float]) -> dict[str, float]:
    arr = np.asarray(values, dtype=np.float64)
    return {"mean": float(arr.mean()), "std": float(arr.std()), "n": int(arr.size)}


def evaluate_localization(cache_dir: str | Path, labels_dir: str | Path, *, prompt: str | None = None,
                          backend: str | None = None, tolerance: float = 2.0,
                          label_values: Iterable[int] | None = None,
                          out_dir: str | Path | None = None) -> LocalizationEvaluation:
    """Score every matching cache entry's products against its label (see the module docstring).

    Args:
        cache_dir: the ROI cache folder.
        labels_dir: folder of label files named like the images.
        prompt: only entries made with this prompt.
        backend: only entries made by this backend.
        tolerance: NSD tolerance, mm (labels with geometry) or pixels.
        label_values: label values that count as foreground (default: every nonzero value).
        out_dir: where the CSV / JSON / markdown go (default ``<cache_dir>/evaluation``).

    Raises:
        MedsslInputError: missing folders, a label whose shape differs from its ROI, or no entry
            with a label at all.
    """
    cache_dir, labels_dir = Path(cache_dir), Path(labels_dir)
    if not cache_dir.is_dir():
        raise MedsslInputError(cache_dir, "ROI cache folder does not exist")
    if not labels_dir.is_dir():
        raise MedsslInputError(labels_dir, "label folder does not exist")
    if not tolerance >= 0:
        raise MedsslInputError("tolerance", f"must be >= 0, got {tolerance}")
    values = None if label_values is None else sorted({int(v) for v in label_values})
    cache = RoiCache(cache_dir)
    entries = [e for e in cache.valid_entries()
               if (prompt is None or e["key_parts"]["prompt"] == prompt)
               and (backend is None or e["key_parts"]["backend"] == backend)]
    rows: list[dict[str, Any]] = []
    unmatched: list[str] = []
    group_info: dict[str, dict[str, Any]] = {}
    for entry in sorted(entries, key=lambda e: (str(e.get("image_source", "")), e["key"])):
        source = str(entry.get("image_source") or "")
        label_path = find_by_stem(labels_dir, image_stem(source)) if source else None
        result = cache.load_entry(entry, with_intermediates=True) if label_path is not None else None
        if label_path is None or result is None:
            unmatched.append(source or entry["key"])
            continue
        label = read_label(label_path, binary=False, allow_empty=True)
        if label.array.shape != result.roi.shape:
            raise MedsslInputError(label_path, f"label shape {label.array.shape} does not match the ROI shape "
                                               f"{result.roi.shape} of {source}")
        ignore = label.array == IGNORE_LABEL  # annotators' "ignore" pixels count neither way
        gt = _foreground(label.array, values) & ~ignore
        parts = entry["key_parts"]
        gid = _group_id(parts)
        group_info.setdefault(gid, {"group": gid, "backend": parts["backend"], "prompt": parts["prompt"],
                                    "source": roi_source_label(entry.get("provenance") or parts),
                                    "params": parts.get("params") or {}, "images": 0})
        group_info[gid]["images"] += 1
        for product, (attr, _) in PRODUCTS.items():
            pred = getattr(result, attr)
            if pred is None:
                continue
            scores = localization_metrics(np.asarray(pred, bool) & ~ignore, gt, tolerance, label.spacing)
            rows.append({"image": source, "label": str(label_path), "key": entry["key"],
                         "backend": parts["backend"], "prompt": parts["prompt"], "group": gid,
                         "product": product, **scores})
    if not rows:
        raise MedsslInputError(labels_dir, f"no cached ROI in {cache_dir} has a label file here "
                                           f"({len(entries)} matching cache entries)")
    groups = []
    for gid, info in group_info.items():
        products: dict[str, dict[str, Any]] = {}
        for product in PRODUCTS:
            mine = [r for r in rows if r["group"] == gid and r["product"] == product]
            if mine:
                products[product] = {m: _stats([r[m] for r in mine]) for m in LOCALIZATION_METRIC_KEYS}
        groups.append({**info, "products": products})
    evaluation = LocalizationEvaluation(rows=rows, groups=groups, unmatched=unmatched, tolerance=float(tolerance))
    _write(evaluation, Path(out_dir) if out_dir is not None else cache_dir / "evaluation", values)
    return evaluation


def _write(evaluation: LocalizationEvaluation, out: Path, label_values: list[int] | None) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=_CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for row in evaluation.rows:
        writer.writerow({k: row[k] for k in _CSV_FIELDS})
    files = {"csv": out / "localization_per_image.csv", "json": out / "localization.json",
             "markdown": out / "localization.md"}
    write_text_atomic(files["csv"], buf.getvalue())
    write_json_atomic(files["json"], {"tolerance": evaluation.tolerance, "label_values": label_values,
                                      "groups": evaluation.groups, "unmatched": evaluation.unmatched,
                                      "rows": evaluation.rows})
    write_text_atomic(files["markdown"], "## Localization quality\n\n" + evaluation.markdown())
    evaluation.files = files
