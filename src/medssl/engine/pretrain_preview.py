"""Reconstruction previews of a pretraining run: image, mask and SparK reconstruction side by side."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from medssl.data.pretrain import PretrainDataset
from medssl.engine.pretrain import _PREVIEW_STREAM, MaskingConfig, draw_mask, mask_generator
from medssl.masking import roi_patch_labels
from medssl.runtime.atomic import atomic_path
from medssl.tensors import eval_mode

if TYPE_CHECKING:
    from medssl.models.spark import SparK

__all__ = ["write_preview"]


def _display(x: np.ndarray, dims: int) -> np.ndarray:
    """(C, *S) -> a 2D array to show: channel mean; 3D: the middle slice along the last axis."""
    img = x.mean(axis=0)
    return img[..., img.shape[-1] // 2] if dims == 3 else img


def write_preview(spark: SparK, dataset: PretrainDataset, masking: MaskingConfig, path: Path, *, seed: int,
                  n_images: int, device: torch.device, title: str) -> Path:
    """PNG of the first ``n_images`` images (untransformed views): input (ROI outlined), visible patches,
    and the reconstruction (masked patches from the model, visible ones from the input). 3D: middle slice
    along the last axis. The mask is drawn from a fixed seed, so previews of different epochs compare."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from medssl.masking import upsample_mask

    n = min(n_images, len(dataset))
    views = [dataset.base(i) for i in range(n)]
    image = torch.from_numpy(np.stack([v[0] for v in views]))
    roi = torch.from_numpy(np.stack([v[1] for v in views]))
    labels = roi_patch_labels(roi, spark.patch_size, masking.rule)
    visible = draw_mask(masking, labels, mask_generator(seed, 0, 0, _PREVIEW_STREAM))
    with eval_mode(spark), torch.no_grad():
        out = spark(image.to(device, dtype=next(spark.parameters()).dtype), visible.to(device))
    keep = upsample_mask(visible, image.shape[2:]).float()
    recon = out.reconstruction.float().cpu() * (1 - keep) + image * keep
    scale = np.float32(dataset.std)
    shift = np.float32(dataset.mean)
    fig, axes = plt.subplots(n, 3, figsize=(7.5, 2.6 * n), squeeze=False)
    for row in range(n):
        panels = [image[row].numpy(), out.masked_input[row].float().cpu().numpy(), recon[row].numpy()]
        shown = [_display(p * scale + shift, dataset.dims) for p in panels]
        lo, hi = np.percentile(shown[0], [1, 99])
        hi = hi if hi > lo else lo + 1
        masked = ~_display(keep[row].numpy(), dataset.dims).astype(bool)
        for col, (ax, arr) in enumerate(zip(axes[row], shown, strict=True)):
            ax.imshow(arr, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
            if col == 1:
                ax.imshow(np.ma.masked_where(~masked, masked), cmap="autumn", alpha=0.35, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
        roi_slice = _display(roi[row].numpy()[None].astype(np.float32), dataset.dims)
        if roi_slice.any():
            axes[row][0].contour(roi_slice, levels=[0.5], colors="lime", linewidths=0.8)
        ratio = 1.0 - float(visible[row].float().mean())
        axes[row][0].set_ylabel(dataset.files[row].name, fontsize=7)
        if row == 0:
            where = "; middle slice" if dataset.dims == 3 else ""
            axes[row][0].set_title(f"input (ROI outlined{where})", fontsize=8)
            axes[row][1].set_title("visible patches", fontsize=8)
            axes[row][2].set_title("reconstruction", fontsize=8)
        axes[row][1].set_xlabel(f"{ratio:.0%} of the patches masked", fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path
