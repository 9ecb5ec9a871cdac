"""Losses, scores and reports of a 2D classifier.

Training minimises soft-target cross-entropy (``ce``, scores are softmax probabilities) or the mean
per-class binary cross-entropy (``bce``, the reference's choice with LAMB; scores are sigmoids) on
label-smoothed or mixed (B, K) targets. Evaluation runs the network in eval mode over resized images
held in memory, standardised with the training split's channel statistics, and scores them with
:func:`medssl.metrics.classification.classification_metrics` plus the loss on hard labels.
:func:`results_markdown` renders a run's ``results.json``: the epoch selected on validation
(:data:`BEST_LABEL`) beside the final epoch (:data:`FINAL_LABEL`) and the test split.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medssl.data.classify import ImageCache
from medssl.data.classify_batches import normalize
from medssl.metrics.classification import CLASSIFICATION_METRIC_KEYS, classification_metrics

if TYPE_CHECKING:
    from lightning.fabric import Fabric

__all__ = [
    "BEST_LABEL",
    "FINAL_LABEL",
    "classification_loss",
    "predict_logits",
    "results_markdown",
    "score_split",
    "scores_from_logits",
    "soft_targets",
    "write_predictions",
]

#: How the results label the epoch chosen by validation accuracy, and the last epoch.
BEST_LABEL = "best (selected on validation)"
FINAL_LABEL = "final epoch"


# =================================================================================== losses
def soft_targets(labels: Tensor, num_classes: int, smoothing: float) -> Tensor:
    """(B, K) smoothed one-hot targets: ``1 - smoothing + smoothing / K`` on the label, ``smoothing / K`` elsewhere."""
    off = smoothing / num_classes
    t = torch.full((labels.shape[0], num_classes), off, device=labels.device)
    return t.scatter_(1, labels[:, None], 1.0 - smoothing + off)


def classification_loss(logits: Tensor, targets: Tensor, kind: Literal["ce", "bce"]) -> Tensor:
    """Soft-target cross-entropy (``ce``) or mean per-class binary cross-entropy (``bce``), (B, K) inputs."""
    logits = logits.float()
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(logits, targets)
    return torch.sum(-targets * F.log_softmax(logits, dim=-1), dim=-1).mean()


def scores_from_logits(logits: Tensor, kind: Literal["ce", "bce"]) -> Tensor:
    """Class scores: softmax probabilities (``ce``) or per-class sigmoids (``bce``)."""
    return torch.sigmoid(logits) if kind == "bce" else torch.softmax(logits, dim=-1)


# ================================================================================ evaluation
@torch.no_grad()
def predict_logits(net: nn.Module, images: Tensor, mean: Sequence[float], std: Sequence[float], batch: int,
                   fabric: Fabric | None = None) -> Tensor:
    """(N, K) float32 logits of ``net`` in eval mode for resized images (N, C, S, S) (standardised here)."""
    net.eval()
    param = next(net.parameters())
    out = []
    for start in range(0, images.shape[0], batch):
        x = normalize(images[start:start + batch], mean, std).to(param.device, dtype=param.dtype)
        if fabric is not None:
            with fabric.autocast():
                out.append(net(x).float().cpu())
        else:
            out.append(net(x).float().cpu())
    return torch.cat(out)


def score_split(logits: Tensor, targets: Tensor, kind: Literal["ce", "bce"]) -> dict[str, float]:
    """Metrics of :func:`medssl.metrics.classification.classification_metrics` plus ``loss``
    (the training objective on hard labels: no smoothing, no mixing)."""
    num_classes = logits.shape[1]
    scores = scores_from_logits(logits, kind)
    metrics = classification_metrics(scores.numpy(), targets.numpy())
    metrics["loss"] = float(classification_loss(logits, soft_targets(targets, num_classes, 0.0), kind))
    return metrics


def write_predictions(path: Path, cache: ImageCache, logits: Tensor, classes: Sequence[str],
                      kind: Literal["ce", "bce"]) -> None:
    """Write ``image,label,prediction,score_<class>...`` rows of ``cache`` scored by ``logits`` (N, K) to a CSV."""
    import io

    from medssl.runtime.atomic import write_text_atomic

    scores = scores_from_logits(logits, kind)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["image", "label", "prediction", *[f"score_{c}" for c in classes]])
    for i, p in enumerate(cache.paths):
        row = scores[i].tolist()
        writer.writerow([str(p), classes[int(cache.targets[i])], classes[int(np.argmax(row))], *[repr(float(v)) for v in row]])
    write_text_atomic(path, buf.getvalue())


# ================================================================================== report
def results_markdown(results: dict[str, Any]) -> str:
    """A short markdown report of ``results.json``: best (selected on validation) vs final, and test."""
    cols = (*CLASSIFICATION_METRIC_KEYS, "loss")

    def fmt(v: Any) -> str:
        return "n/a" if v is None else f"{v:.4f}"

    lines = [f"# Classification fine-tuning: {results['run']}", "",
             f"backbone {results['backbone']}, init: {results['init']['path'] if results['init'] else 'none (from scratch)'}; "
             f"classes: {', '.join(results['classes'])}",
             f"splits: train {results['splits']['train']['n']}, val {results['splits']['val']['n']} "
             f"({results['splits']['val_rule']}), test "
             f"{results['splits']['test']['n'] if results['splits']['test'] else 'none'}", "",
             "| model | split | epoch | " + " | ".join(cols) + " |",
             "|---|---|---|" + "---|" * len(cols)]
    rows = []
    if results["best"] is not None:
        rows.append((results["best"]["label"], "val", results["best"]["epoch"], results["best"]["val"]))
    final = results["final"]
    rows.append((final["label"], "val", final["epoch"], final["val"]))
    if final.get("test") is not None:
        rows.append((final["label"], "test", final["epoch"], final["test"]))
    if final.get("test_ema") is not None:
        rows.append((final["label"] + " (EMA weights)", "test", final["epoch"], final["test_ema"]))
    for label, split, epoch, m in rows:
        lines.append(f"| {label} | {split} | {epoch} | " + " | ".join(fmt(m.get(c)) for c in cols) + " |")
    lines += ["", f"'{BEST_LABEL}' is the epoch with the {results['selection']}: its validation "
              "scores are optimistic (chosen on those images). Test scores come from the final model."]
    return "\n".join(lines) + "\n"
