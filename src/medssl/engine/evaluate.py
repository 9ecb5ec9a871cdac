"""Evaluate a segmentation predictor on cases: per-case metrics, summary tables, predictions, overlays.

Output folder layout (every file written atomically)::

    out_dir/metrics_per_case.csv    one row per case (fractions for Dice/Jaccard, voxels and mm)
    out_dir/summary.json            mean, std and count per metric, empty predictions, policy
    out_dir/summary.md              markdown table: Dice %, Jaccard %, 95HD / ASD in voxels and mm
    out_dir/predictions/<case>.nii.gz   predicted label map (uint8) with the case's affine
    out_dir/overlays/<case>.png     a few axial slices with ground-truth and prediction contours
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
from collections.abc import Callable, Iterable, Iterator, Sized
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medssl.components import largest_components
from medssl.data.io import ImageData, affine_from_spacing, write_nifti
from medssl.engine.inference import probs_to_mask
from medssl.errors import MedsslInputError
from medssl.metrics import EMPTY_POLICIES, EmptyPolicy, segmentation_metrics
from medssl.runtime.atomic import write_json_atomic, write_text_atomic
from medssl.tensors import to_numpy

PredictFn = Callable[[np.ndarray], Any]

VOXEL_KEYS: tuple[str, ...] = ("dice", "jaccard", "hd95_vox", "asd_vox", "assd_vox")
MM_KEYS: tuple[str, ...] = ("hd95_mm", "asd_mm", "assd_mm")
#: (metric key, markdown column, scale) of the summary table.
TABLE_COLUMNS: tuple[tuple[str, str, float], ...] = (
    ("dice", "Dice (%)", 100.0),
    ("jaccard", "Jaccard (%)", 100.0),
    ("hd95_vox", "95HD (vox)", 1.0),
    ("asd_vox", "ASD (vox)", 1.0),
    ("hd95_mm", "95HD (mm)", 1.0),
    ("asd_mm", "ASD (mm)", 1.0),
)
EMPTY_POLICY_NOTES: dict[str, str] = {
    "reference": "an empty prediction scores 0 on Dice, Jaccard, 95HD and ASD (as the published "
    "left-atrium evaluation code; the zero distances flatter such a case)",
    "nan": "an empty prediction scores Dice = Jaccard = 0 and undefined (NaN) distances, which are left "
    "out of the distance means",
}


@dataclass
class EvalCase:
    """One case to evaluate.

    Attributes:
        case_id: identifier, also the file stem of its prediction and overlay (no path separators).
        image: (H, W, D) float32 intensities as the predictor expects them.
        label: (H, W, D) uint8 ground truth (nonzero = foreground) or ``None`` (prediction only).
        affine: (4, 4) voxel-to-world matrix (mm) written into the NIfTI prediction; ``None`` → a
            diagonal affine from ``spacing``.
        spacing: voxel size in mm per axis; ``None`` → the column norms of ``affine`` (ones if both
            are ``None``).
    """

    case_id: str
    image: np.ndarray
    label: np.ndarray | None = None
    affine: np.ndarray | None = None
    spacing: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        cid = str(self.case_id)
        if not cid or cid in {".", ".."} or any(c in cid for c in "/\\\0"):
            raise MedsslInputError(
                cid or "case id", "a case id must be a non-empty file name without separators"
            )
        self.case_id = cid
        self.image = np.asarray(self.image)
        ndim = self.image.ndim
        if self.label is not None:
            self.label = np.asarray(self.label)
            if self.label.shape != self.image.shape:
                raise MedsslInputError(
                    cid, f"label shape {self.label.shape} differs from image shape {self.image.shape}"
                )
        if self.affine is None:
            self.affine = affine_from_spacing(tuple(self.spacing) if self.spacing else (1.0,) * ndim)
        self.affine = np.asarray(self.affine, dtype=np.float64)
        if self.affine.shape != (4, 4):
            raise MedsslInputError(cid, f"affine must be (4, 4), got {self.affine.shape}")
        if self.spacing is None:
            self.spacing = tuple(float(np.linalg.norm(self.affine[:3, i])) for i in range(min(ndim, 3)))
        self.spacing = tuple(float(s) for s in self.spacing)
        if len(self.spacing) != ndim:
            raise MedsslInputError(cid, f"spacing {self.spacing} needs {ndim} values for a {ndim}D image")

    @classmethod
    def from_image_data(cls, case_id: str, image: ImageData, label: ImageData | None = None) -> EvalCase:
        """Build a case from images read with :mod:`medssl.data.io` (geometry from ``image``)."""
        return cls(
            case_id=case_id,
            image=np.asarray(image.array, dtype=np.float32),
            label=None if label is None else np.asarray(label.array).astype(np.uint8),
            affine=image.affine,
            spacing=tuple(image.spacing),
        )


@dataclass
class EvalResult:
    """What :func:`evaluate_cases` measured and wrote.

    Attributes:
        per_case: one dict per case: ``case_id`` plus, for labelled cases, every key of
            :func:`medssl.metrics.segmentation_metrics` (unlabelled cases: ``empty_pred``,
            ``pred_voxels`` only).
        summary: the content of ``summary.json`` (``metrics`` maps each metric to mean, std, n).
        files: written files by role (``metrics_csv``, ``summary_json``, ``summary_md``,
            ``prediction:<case>``, ``overlay:<case>``); empty without ``out_dir``.
    """

    per_case: list[dict[str, Any]]
    summary: dict[str, Any]
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def n_empty_predictions(self) -> int:
        """Number of cases whose prediction has no foreground voxel."""
        return int(self.summary["n_empty_predictions"])

    def mean(self, key: str) -> float:
        """Mean over cases of metric ``key`` (NaN when no case defines it)."""
        value = self.summary["metrics"][key]["mean"]
        return float("nan") if value is None else float(value)


def prediction_to_labels(prediction: Any, shape: tuple[int, ...], source: str = "prediction") -> np.ndarray:
    """Turn what a predictor returned into a label map (H, W[, D]) uint8.

    Accepted: class probabilities or logits [C, H, W[, D]] (→ argmax over C); a label map of the image
    shape with an integer or bool dtype (kept); a floating map of the image shape (→ foreground
    probability > 0.5).
    """
    arr = to_numpy(prediction)
    if arr.ndim == len(shape) + 1 and tuple(arr.shape[1:]) == tuple(shape):
        return probs_to_mask(arr)
    if tuple(arr.shape) == tuple(shape):
        if np.issubdtype(arr.dtype, np.floating):
            return (arr > 0.5).astype(np.uint8)
        return arr.astype(np.uint8)
    raise MedsslInputError(
        source,
        f"prediction of shape {arr.shape} is neither [C, *{tuple(shape)}] nor the image shape {tuple(shape)}",
    )


@contextlib.contextmanager
def _progress(total: int | None, enabled: bool) -> Iterator[Callable[..., None]]:
    """Yield ``advance(**values)``: one case done, on the run's progress bar (no-op without one)."""
    try:
        from medssl.runtime.progress import progress_bar
    except ImportError:  # progress reporting is optional
        progress_bar = None
    if not enabled or progress_bar is None or total is None:
        yield lambda **values: None
        return
    with progress_bar(total=total, description="evaluate") as bar:
        yield lambda **values: bar.advance(1, **values)


def _fmt(value: Any) -> str:
    if isinstance(value, bool | np.bool_):
        return "true" if value else "false"
    if isinstance(value, float | np.floating):
        return repr(float(value))
    return str(value)


def _mean_std(values: list[float]) -> dict[str, float | int | None]:
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return {"mean": None, "std": None, "n": 0}
    arr = np.asarray(finite, dtype=np.float64)
    return {"mean": float(arr.mean()), "std": float(arr.std(ddof=0)), "n": len(finite)}


def _csv_text(rows: list[dict[str, Any]], columns: list[str]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow(["" if row.get(c) is None else _fmt(row[c]) for c in columns])
    return buf.getvalue()


def _markdown(summary: dict[str, Any], mm: bool) -> str:
    cols = [c for c in TABLE_COLUMNS if mm or not c[0].endswith("_mm")]
    lines = ["# Segmentation evaluation", ""]
    if summary["n_labeled"]:
        lines.append("| | " + " | ".join(name for _, name, _ in cols) + " |")
        lines.append("|---|" + "---|" * len(cols))
        cells = []
        for key, _, scale in cols:
            stat = summary["metrics"][key]
            if stat["mean"] is None:
                cells.append("n/a")
            else:
                cells.append(f"{stat['mean'] * scale:.2f} ± {stat['std'] * scale:.2f}")
        lines.append("| mean ± std | " + " | ".join(cells) + " |")
        lines.append("")
    else:
        lines += ["No case has a ground-truth label: predictions only.", ""]
    n_empty = summary["n_empty_predictions"]
    lines.append(
        f"- cases: {summary['n_cases']} ({summary['n_labeled']} with ground truth); "
        f"**empty predictions: {n_empty}**"
        + (f" ({', '.join(summary['empty_prediction_cases'])})" if n_empty else "")
    )
    lines.append(
        f"- empty-prediction policy `{summary['empty_policy']}`: {EMPTY_POLICY_NOTES[summary['empty_policy']]}"
    )
    lines.append(
        "- ASD is the mean distance from the predicted to the ground-truth surface (medpy `asd`, the "
        "literature's convention); the symmetric ASSD is in metrics_per_case.csv"
    )
    lines.append(
        "- distances in voxels use spacing 1 (the literature's convention)"
        + ("; mm use each case's voxel spacing" if mm else "")
        + f"; std over cases with ddof=0; largest-component post-processing: "
        f"{'on' if summary['largest_component'] else 'off'}"
    )
    return "\n".join(lines) + "\n"


def evaluate_cases(
    predict_fn: PredictFn,
    cases: Iterable[EvalCase],
    out_dir: str | Path | None = None,
    spacing_in_mm: bool = True,
    largest_component: bool = False,
    save_predictions: bool = True,
    overlays: bool = True,
    empty_policy: EmptyPolicy = "reference",
    progress: bool = True,
) -> EvalResult:
    """Predict every case, score it, summarise, and write the report files.

    Args:
        predict_fn: image (H, W, D) float32 numpy → probabilities/logits [C, H, W, D] or a label map
            (H, W, D) (see :func:`prediction_to_labels`); e.g.
            :func:`medssl.engine.inference.sliding_window_predictor`.
        cases: the cases (an iterable is consumed once; a sized one shows a progress bar when
            ``medssl.runtime.progress`` is available).
        out_dir: folder for the files listed in the module docstring; ``None`` → nothing written.
        spacing_in_mm: also report 95HD / ASD in mm with each case's spacing (else voxels only).
        largest_component: keep only the largest connected foreground component of each prediction.
        save_predictions: write ``predictions/<case>.nii.gz`` with the case's affine.
        overlays: write ``overlays/<case>.png``.
        empty_policy: scores of empty predictions, see :func:`medssl.metrics.segmentation_metrics`.
        progress: show a progress bar when one is available.

    Metrics use foreground = label > 0 for prediction and ground truth (binary segmentation).
    """
    if empty_policy not in EMPTY_POLICIES:
        raise MedsslInputError(
            "empty_policy", f"unknown value {empty_policy!r}; expected one of {EMPTY_POLICIES}"
        )
    out = None if out_dir is None else Path(out_dir)
    rows: list[dict[str, Any]] = []
    files: dict[str, Path] = {}
    seen: set[str] = set()
    total = len(cases) if isinstance(cases, Sized) else None
    with _progress(total, progress) as advance:
        for case in cases:
            if case.case_id in seen:
                raise MedsslInputError(case.case_id, "case id appears twice in the evaluation set")
            seen.add(case.case_id)
            labels = prediction_to_labels(predict_fn(case.image), tuple(case.image.shape), case.case_id)
            if largest_component:
                labels = np.where(largest_components(labels > 0), labels, 0).astype(np.uint8)
            row: dict[str, Any] = {"case_id": case.case_id}
            if case.label is not None:
                spacing = case.spacing if spacing_in_mm else None
                row.update(segmentation_metrics(labels > 0, case.label > 0, spacing, empty_policy))
            else:
                n_pred = int(np.count_nonzero(labels))
                row.update({"empty_pred": n_pred == 0, "pred_voxels": n_pred})
            rows.append(row)
            if out is not None and save_predictions:
                key = f"prediction:{case.case_id}"
                files[key] = write_nifti(out / "predictions" / f"{case.case_id}.nii.gz", labels, case.affine)
            if out is not None and overlays:
                from medssl.viz import segmentation_overlay

                title = case.case_id
                if "dice" in row:
                    title += f"  Dice {100 * row['dice']:.1f} %"
                files[f"overlay:{case.case_id}"] = segmentation_overlay(
                    case.image, case.label, labels, out / "overlays" / f"{case.case_id}.png", title=title
                )
            advance(**({"dice": float(row["dice"])} if "dice" in row else {}))

    labeled = [r for r in rows if "dice" in r]
    metric_keys = VOXEL_KEYS + (MM_KEYS if spacing_in_mm else ())
    empty_cases = [r["case_id"] for r in rows if r["empty_pred"]]
    summary: dict[str, Any] = {
        "n_cases": len(rows),
        "n_labeled": len(labeled),
        "n_empty_predictions": len(empty_cases),
        "empty_prediction_cases": empty_cases,
        "empty_policy": empty_policy,
        "empty_policy_note": EMPTY_POLICY_NOTES[empty_policy],
        "largest_component": largest_component,
        "spacing_in_mm": spacing_in_mm,
        "units": {"dice": "fraction", "jaccard": "fraction", "*_vox": "voxels (spacing 1)", "*_mm": "mm"},
        "std": "population standard deviation over cases (ddof=0)",
        "metrics": {k: _mean_std([float(r[k]) for r in labeled]) for k in metric_keys},
    }
    if out is not None:
        columns = ["case_id", *metric_keys, "empty_pred", "empty_gt", "pred_voxels", "gt_voxels"]
        files["metrics_csv"] = out / "metrics_per_case.csv"
        write_text_atomic(files["metrics_csv"], _csv_text(rows, columns))
        files["summary_json"] = out / "summary.json"
        write_json_atomic(files["summary_json"], summary)
        files["summary_md"] = out / "summary.md"
        write_text_atomic(files["summary_md"], _markdown(summary, spacing_in_mm))
    return EvalResult(per_case=rows, summary=summary, files=files)
