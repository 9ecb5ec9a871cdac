"""Sliding-window inference over whole volumes, window positions as in the left-atrium evaluation.

The image (H, W[, D]) is zero-padded symmetrically to at least the patch size (``(patch − dim) // 2``
voxels before, the rest after; removed again at the end). Along each axis
``n = ceil((dim − patch) / stride) + 1`` windows start at ``min(stride · i, dim − patch)``; every
window's logits go through a softmax over classes, the probabilities are summed, and the sum is divided
by the number of windows covering each voxel. Foreground = argmax over classes (for two classes the
same as foreground probability > 0.5, ties going to background).

The windows and the average are those of MONAI's ``sliding_window_inference`` with constant blending and
zero padding (the tests compare both at the left-atrium window and strides). medssl keeps its own loop
because the published protocol states strides in voxels (18/18/4) while MONAI takes an overlap fraction
and rounds ``roi * (1 - overlap)`` down (``1 - 18/112`` gives an interval of 17), and because it controls
what MONAI leaves to the caller: softmax before averaging, bf16 autocast with float32 accumulation, a
per-device default batch of windows and eval mode for the call.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from medssl.components import largest_components
from medssl.errors import MedsslInputError
from medssl.tensors import eval_mode

Net = Callable[[Tensor], Any]

PRECISIONS: dict[str, torch.dtype | None] = {
    "32": None,
    "32-true": None,
    "bf16": torch.bfloat16,
    "bf16-mixed": torch.bfloat16,
}

LA_PATCH: tuple[int, int, int] = (112, 112, 80)
LA_STRIDE: tuple[int, int, int] = (18, 18, 4)

#: Default number of windows per forward pass on CPU and on accelerators (see ``default_batch_size``).
CPU_BATCH_SIZE = 2
ACCELERATOR_BATCH_SIZE = 4

_SOURCE = "sliding-window inference"


def default_batch_size(device: torch.device | str) -> int:
    """Windows per forward pass when the caller does not choose: 2 on CPU, 4 on accelerators.

    Measured with the left-atrium V-Net: at the published size (width 16, 112×112×80 windows) CPU
    batches of 2 ran at the speed of one window at a time and batches of 4 were 5–10 % slower; at the
    CPU presets' size (width 8, 48×48×32 windows) one window per pass falls back to a slow 3D
    convolution path and batches of 2–4 were 4–5× faster per window, so CPU uses 2. On an H200 GPU
    batches of 4 took 0.54× the time of one window at a time (8: 0.45×, 16: 0.41×), and 4 keeps the
    memory modest on smaller cards.
    """
    return CPU_BATCH_SIZE if torch.device(device).type == "cpu" else ACCELERATOR_BATCH_SIZE


def pad_widths(shape: Sequence[int], patch: Sequence[int]) -> tuple[tuple[int, int], ...]:
    """Zero padding (before, after) per axis that brings ``shape`` to at least ``patch`` (voxels)."""
    pads = []
    for dim, p in zip(shape, patch, strict=True):
        total = max(int(p) - int(dim), 0)
        pads.append((total // 2, total - total // 2))
    return tuple(pads)


def _axis_starts(dim: int, patch: int, stride: int) -> list[int]:
    n = math.ceil((dim - patch) / stride) + 1
    return [min(stride * i, dim - patch) for i in range(n)]


def window_positions(
    shape: Sequence[int], patch: Sequence[int], stride: Sequence[int]
) -> list[tuple[slice, ...]]:
    """Windows over an already padded image, in the reference order (last axis fastest).

    Args:
        shape: spatial shape (H, W[, D]) with every ``shape[i] >= patch[i]`` (pad first, see
            :func:`pad_widths`).
        patch: window size per axis (voxels).
        stride: step per axis (voxels).

    Returns:
        One tuple of slices per window; along axis ``a`` the starts are
        ``min(stride[a] · i, shape[a] − patch[a])`` for ``i < ceil((shape[a] − patch[a]) / stride[a]) + 1``.
    """
    _check_geometry(len(shape), patch, stride)
    if any(int(d) < int(p) for d, p in zip(shape, patch, strict=True)):
        raise ValueError(f"shape {tuple(shape)} is smaller than the patch {tuple(patch)}: pad it first")
    per_axis = [_axis_starts(int(d), int(p), int(s)) for d, p, s in zip(shape, patch, stride, strict=True)]
    windows: list[tuple[slice, ...]] = []
    for starts in itertools.product(*per_axis):
        windows.append(tuple(slice(s, s + int(p)) for s, p in zip(starts, patch, strict=True)))
    return windows


def _check_geometry(ndim: int, patch: Sequence[int], stride: Sequence[int]) -> None:
    if len(patch) != ndim or len(stride) != ndim:
        raise MedsslInputError(
            _SOURCE, f"patch {tuple(patch)} and stride {tuple(stride)} need {ndim} values for a {ndim}D image"
        )
    if any(int(p) < 1 for p in patch) or any(int(s) < 1 for s in stride):
        raise MedsslInputError(_SOURCE, f"patch {tuple(patch)} and stride {tuple(stride)} must be positive")


def _resolve_device(net: Net, device: torch.device | str | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    if isinstance(net, torch.nn.Module):
        for p in net.parameters():
            return p.device
    return torch.device("cpu")


def _autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    if precision not in PRECISIONS:
        raise MedsslInputError(_SOURCE, f"precision {precision!r} is not one of {sorted(PRECISIONS)}")
    dtype = PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _eval_mode(net: Net) -> contextlib.AbstractContextManager[None]:
    """Eval mode (dropout off, BatchNorm running stats) for an ``nn.Module``; nothing for a plain callable."""
    return eval_mode(net) if isinstance(net, torch.nn.Module) else contextlib.nullcontext()


def _prepare(
    image: Tensor | np.ndarray, patch: Sequence[int], stride: Sequence[int], device: torch.device
) -> tuple[Tensor, tuple[tuple[int, int], ...]]:
    """Image (H, W[, D]) → zero-padded float32 tensor (H', W'[, D']) on ``device`` and its pads."""
    if isinstance(image, Tensor):
        img = image
    else:
        arr = np.asarray(image)
        img = torch.from_numpy(arr if arr.flags.writeable else arr.copy())
    _check_geometry(img.ndim, patch, stride)
    img = img.to(device=device, dtype=torch.float32)
    pads = pad_widths(tuple(img.shape), patch)
    if any(b or a for b, a in pads):
        flat = [w for pair in reversed(pads) for w in pair]  # F.pad wants the last axis first
        img = F.pad(img[None, None], flat, mode="constant", value=0.0)[0, 0]
    return img, pads


def _window_probs(net: Net, batch: Tensor, n_classes: int, device: torch.device, precision: str) -> Tensor:
    """Softmax probabilities [B, C, *patch] (float32) of a batch of windows [B, 1, *patch]."""
    with _autocast(device, precision):
        out = net(batch)
    logits = out[0] if isinstance(out, tuple | list) else out
    expected = (batch.shape[0], n_classes, *batch.shape[2:])
    if not isinstance(logits, Tensor) or tuple(logits.shape) != expected:
        got = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise MedsslInputError(_SOURCE, f"the network returned logits of shape {got}, expected {expected}")
    return torch.softmax(logits.float(), dim=1)


def _unpad(probs: Tensor, pads: tuple[tuple[int, int], ...]) -> Tensor:
    crop = tuple(slice(b, probs.shape[i + 1] - a) for i, (b, a) in enumerate(pads))
    return probs[(slice(None), *crop)].contiguous()


def _coverage(
    shape: Sequence[int], patch: Sequence[int], stride: Sequence[int], device: torch.device
) -> Tensor:
    """Number of windows covering each voxel (H', W'[, D']): the outer product of per-axis counts."""
    count: Tensor | None = None
    for axis, (d, p, s) in enumerate(zip(shape, patch, stride, strict=True)):
        c = torch.zeros(int(d), dtype=torch.float32, device=device)
        for start in _axis_starts(int(d), int(p), int(s)):
            c[start : start + int(p)] += 1
        view = [1] * len(shape)
        view[axis] = int(d)
        c = c.view(view)
        count = c if count is None else count * c
    assert count is not None
    return count


def sliding_window_predict(
    net: Net,
    image: Tensor | np.ndarray,
    patch: Sequence[int] = LA_PATCH,
    stride: Sequence[int] = LA_STRIDE,
    n_classes: int = 2,
    batch_size: int | None = None,
    precision: str = "32",
    device: torch.device | str | None = None,
) -> Tensor:
    """Class probabilities of a whole image by overlapping windows, evaluated in batches.

    Args:
        net: maps windows [B, 1, *patch] to logits [B, C, *patch] (or a tuple/list whose first item
            is the logits, e.g. branch 1 of a dual-branch network). An ``nn.Module`` is switched to
            eval mode for the call and restored afterwards.
        image: (H, W[, D]) intensities (numpy or torch); ``len(patch)`` spatial axes.
        patch: window size per axis (voxels); default 112×112×80 (left atrium).
        stride: step per axis (voxels); default 18×18×4 (left atrium).
        n_classes: number of output channels C the network produces.
        batch_size: windows per forward pass; ``None`` → :func:`default_batch_size` for the device.
        precision: ``"32"`` or ``"bf16"`` (autocast of the forward pass; softmax and accumulation are
            float32).
        device: where to run; ``None`` → the device of ``net``'s parameters (CPU for plain callables).

    Returns:
        float32 probabilities [C, H, W[, D]] on ``device`` (softmax averaged over windows).
    """
    dev = _resolve_device(net, device)
    bs = default_batch_size(dev) if batch_size is None else int(batch_size)
    if bs < 1:
        raise MedsslInputError(_SOURCE, f"batch size must be at least 1, got {batch_size}")
    img, pads = _prepare(image, patch, stride, dev)
    windows = window_positions(tuple(img.shape), patch, stride)
    score = torch.zeros((n_classes, *img.shape), dtype=torch.float32, device=dev)
    with _eval_mode(net), torch.inference_mode():
        for first in range(0, len(windows), bs):
            chunk = windows[first : first + bs]
            batch = torch.stack([img[w] for w in chunk])[:, None]
            probs = _window_probs(net, batch, n_classes, dev, precision)
            for w, p in zip(chunk, probs, strict=True):
                score[(slice(None), *w)] += p
        score /= _coverage(tuple(img.shape), patch, stride, dev)
    return _unpad(score, pads)


def plain_sliding_window_predict(
    net: Net,
    image: Tensor | np.ndarray,
    patch: Sequence[int] = LA_PATCH,
    stride: Sequence[int] = LA_STRIDE,
    n_classes: int = 2,
    precision: str = "32",
    device: torch.device | str | None = None,
) -> Tensor:
    """One window at a time over the same windows, with an explicitly accumulated count map.

    The straightforward loop of the reference evaluation; kept as a test oracle and benchmark
    baseline for :func:`sliding_window_predict`. Same arguments and result ([C, H, W[, D]] float32).
    """
    dev = _resolve_device(net, device)
    img, pads = _prepare(image, patch, stride, dev)
    score = torch.zeros((n_classes, *img.shape), dtype=torch.float32, device=dev)
    count = torch.zeros(tuple(img.shape), dtype=torch.float32, device=dev)
    with _eval_mode(net), torch.inference_mode():
        for w in window_positions(tuple(img.shape), patch, stride):
            probs = _window_probs(net, img[w][None, None], n_classes, dev, precision)
            score[(slice(None), *w)] += probs[0]
            count[w] += 1
        score /= count
    return _unpad(score, pads)


def probs_to_mask(probs: Tensor | np.ndarray, largest_component: bool = False) -> np.ndarray:
    """Label map (H, W[, D]) uint8 = argmax over classes of ``probs`` [C, H, W[, D]].

    For two classes this is foreground probability > 0.5 (a tie goes to background). With
    ``largest_component`` only the largest (fully connected) foreground component is kept.
    """
    p = probs if isinstance(probs, Tensor) else torch.as_tensor(np.asarray(probs))
    labels = torch.argmax(p, dim=0).to(torch.uint8).cpu().numpy()
    if largest_component:
        labels = np.where(largest_components(labels > 0), labels, 0).astype(np.uint8)
    return labels


def sliding_window_predictor(
    net: Net,
    patch: Sequence[int] = LA_PATCH,
    stride: Sequence[int] = LA_STRIDE,
    n_classes: int = 2,
    batch_size: int | None = None,
    precision: str = "32",
    device: torch.device | str | None = None,
) -> Callable[[np.ndarray], np.ndarray]:
    """A ``predict_fn`` for :func:`medssl.engine.evaluate.evaluate_cases`: image (H, W[, D]) →
    probabilities [C, H, W[, D]] as a float32 numpy array (CPU)."""

    def predict(image: np.ndarray) -> np.ndarray:
        probs = sliding_window_predict(
            net, image, patch, stride, n_classes, batch_size=batch_size, precision=precision, device=device
        )
        return probs.cpu().numpy()

    return predict


def resampled_predictor(
    predict: Callable[[np.ndarray], np.ndarray], factor: float
) -> Callable[[np.ndarray], np.ndarray]:
    """Wrap a ``predict_fn`` of a network trained on volumes resampled by ``factor`` (``data.zoom``).

    The returned function takes an image (H, W[, D]) on its source grid, resamples it by ``factor``
    exactly as the training volumes were (:func:`medssl.data.resample.zoom_image`), predicts there, and
    resamples the probabilities [C, ...] linearly back onto the source grid, so that labels, metrics and
    saved predictions live on the scan's own grid (what the literature reports).
    """
    from medssl.data.resample import zoom_image, zoom_probabilities_to

    if factor == 1.0:
        return predict

    def predict_source(image: np.ndarray) -> np.ndarray:
        return zoom_probabilities_to(predict(zoom_image(image, factor)), tuple(np.shape(image)))

    return predict_source
