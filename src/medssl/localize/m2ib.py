"""M2IB saliency: an information bottleneck on a ViT image tower, trained to keep what matches a text prompt.

The recipe (spec ``mwm.md`` section 2, the multi-modal information bottleneck of the BiomedCLIP + SAM
localization): a bottleneck sits after block ``layer`` (0-based index into the tower's
``visual.trunk.blocks``) of an open_clip model whose image tower is a timm ViT. For that block's tokens
``x`` (B, N, C) and a learnable ``α`` (N, C) initialised to 5:

* ``λ = sigmoid(α)``, the block output is replaced by ``t = λ·x + (1 − λ)·ε`` with ``ε ~ N(0, 1)``;
* per-element KL capacity ``−½ (1 + log σ² − μ² − σ²)`` with ``μ = λ·x``, ``σ² = (1 − λ)²``;
* loss = ``β · mean(capacity) − mean(cos(text embedding, image embedding))`` over a batch of the image
  repeated ``batch`` (10) times; Adam (lr 1) on ``α`` only, ``steps`` (10) steps; the model's weights
  are never changed (nor their ``.grad``);
* saliency = the capacity of the last training forward pass, summed over channels, averaged over the
  batch, prefix (CLS) tokens dropped → (√N × √N) patch grid → bilinear to the model input size →
  min-max to [0, 1] → bilinear to the requested output size.

Implementation note: the blocks up to ``layer`` are deterministic (eval mode), so their output is
computed once and the bottleneck is fed from it; each training step runs only the blocks after
``layer`` (and the tower's final norm, pooling and projection) on the batch. This gives the same
values as running the whole tower on the repeated image. The tower's block list is swapped for that
while the optimisation runs (restored afterwards, also on errors), so one model must not run M2IB in
two threads at once. Works inside ``torch.no_grad()`` / ``torch.inference_mode()`` blocks of the caller.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medssl.errors import MedsslInputError
from medssl.tensors import eval_mode

#: Initial value of every α element: λ = sigmoid(5) ≈ 0.993 (almost everything passes at first).
INIT_ALPHA = 5.0


def kl_capacity(x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Per-element KL capacity of the bottleneck.

    ``−½ (1 + log σ² − μ² − σ²)`` with ``λ = sigmoid(α)``, ``μ = λ·x``, ``σ² = (1 − λ)²``; ``1 − λ`` and
    ``log σ²`` are computed as ``sigmoid(−α)`` and ``2·logsigmoid(−α)`` (no cancellation when λ → 1).

    Args:
        x: tokens (B, N, C) (any shape that ``alpha`` broadcasts against).
        alpha: (N, C) bottleneck logits.

    Returns:
        float32 tensor of ``x``'s shape (nats per element).
    """
    x = x.float()
    alpha = alpha.float()
    mu = torch.sigmoid(alpha) * x
    var = torch.sigmoid(-alpha) ** 2
    log_var = 2.0 * F.logsigmoid(-alpha)
    return -0.5 * (1.0 + log_var - mu**2 - var)


def bottleneck_sample(x: torch.Tensor, alpha: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """``t = λ·x + (1 − λ)·ε`` with ``λ = sigmoid(α)`` (float32; shapes as :func:`kl_capacity`)."""
    alpha = alpha.float()
    return torch.sigmoid(alpha) * x.float() + torch.sigmoid(-alpha) * noise.float()


@dataclass
class M2IBTrace:
    """What one M2IB optimisation produced.

    Attributes:
        alpha: final α (N, C).
        capacity: batch-mean capacity (N, C) of the last training forward pass.
        losses: total loss of every step.
        grid: the patch grid (rows, cols) of the tower's input.
        num_prefix_tokens: tokens before the patch tokens (1 = the CLS token).
        input_size: the model input's spatial size (S_h, S_w) in pixels.
    """

    alpha: torch.Tensor
    capacity: torch.Tensor
    losses: list[float] = field(default_factory=list)
    grid: tuple[int, int] = (0, 0)
    num_prefix_tokens: int = 1
    input_size: tuple[int, int] = (0, 0)


class _BottleneckFeed(nn.Module):
    """Stands in for the blocks 0..``layer``: returns the bottleneck output of their cached tokens.

    Its input (the tower's embedded patches) is ignored: the cached block output ``features`` (1, N, C)
    is what those blocks produce for it. Each call draws ``ε`` with ``noise_fn`` and records the capacity.
    """

    def __init__(self, features: torch.Tensor, alpha: torch.Tensor, batch: int,
                 noise_fn: Callable[[tuple[int, ...]], torch.Tensor]) -> None:
        super().__init__()
        self.features = features
        self.alpha = alpha
        self.batch = batch
        self.noise_fn = noise_fn
        self.capacity: torch.Tensor | None = None

    def forward(self, tokens: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        x = self.features.expand(self.batch, *self.features.shape[1:])
        noise = self.noise_fn(tuple(x.shape))
        self.capacity = kl_capacity(x, self.alpha)
        return bottleneck_sample(x, self.alpha, noise).to(self.features.dtype)


def _trunk(model: Any) -> nn.Module:
    visual = getattr(model, "visual", None)
    trunk = getattr(visual, "trunk", None)
    if trunk is None or not isinstance(getattr(trunk, "blocks", None), nn.Sequential):
        raise TypeError("M2IB needs an open_clip model whose image tower is a timm ViT (model.visual.trunk.blocks)")
    return trunk


@contextlib.contextmanager
def _blocks_replaced(trunk: nn.Module, replacement: nn.Sequential) -> Iterator[None]:
    original = trunk.blocks
    trunk.blocks = replacement
    try:
        yield
    finally:
        trunk.blocks = original


def _as_batch(image_tensor: torch.Tensor) -> torch.Tensor:
    if image_tensor.ndim == 3:
        image_tensor = image_tensor[None]
    if image_tensor.ndim != 4 or image_tensor.shape[0] != 1:
        raise ValueError(f"expected one image (3, S, S) or (1, 3, S, S), got {tuple(image_tensor.shape)}")
    return image_tensor


def _param_device_dtype(model: Any) -> tuple[torch.device, torch.dtype]:
    p = next(model.visual.parameters())
    return p.device, p.dtype


def text_features(model: Any, tokenizer_or_text_features: Any, prompt: str) -> torch.Tensor:
    """The prompt's text embedding (1, E): given directly, or ``model.encode_text(tokenizer([prompt]))``."""
    if isinstance(tokenizer_or_text_features, torch.Tensor):
        feats = tokenizer_or_text_features
        return (feats[None] if feats.ndim == 1 else feats).detach()
    device, _ = _param_device_dtype(model)
    tokens = tokenizer_or_text_features([prompt]).to(device)
    with torch.no_grad():
        return model.encode_text(tokens).detach()


def _grid(trunk: nn.Module, n_patch_tokens: int, input_size: tuple[int, int]) -> tuple[int, int]:
    patch = getattr(getattr(trunk, "patch_embed", None), "patch_size", None)
    if patch is not None:
        ph, pw = (patch, patch) if isinstance(patch, int) else tuple(patch)
        grid = (input_size[0] // ph, input_size[1] // pw)
        if grid[0] * grid[1] == n_patch_tokens:
            return grid
    side = int(round(n_patch_tokens ** 0.5))
    if side * side != n_patch_tokens:
        raise ValueError(f"cannot lay {n_patch_tokens} patch tokens out on a grid")
    return side, side


def m2ib_train(model: Any, tokenizer_or_text_features: Any, image_tensor: torch.Tensor, prompt: str, *,
               layer: int = 9, beta: float = 2.0, steps: int = 10, lr: float = 1.0, batch: int = 10,
               generator: torch.Generator | None = None) -> M2IBTrace:
    """Optimise the bottleneck's α for ``prompt`` on one preprocessed image (see the module docstring).

    Args:
        model: an open_clip model with a timm ViT image tower (``model.visual.trunk.blocks``).
        tokenizer_or_text_features: the model's tokenizer, or the prompt's text embedding (1, E) / (E,).
        image_tensor: the preprocessed image (3, S_h, S_w) or (1, 3, S_h, S_w).
        prompt: the text prompt (used with a tokenizer).
        layer: 0-based index of the block whose output goes through the bottleneck.
        beta: weight of the capacity term.
        steps: Adam steps; lr: Adam learning rate; batch: copies of the image per step.
        generator: CPU generator of the noise ε (None: a fresh one seeded with 0, so runs repeat exactly).

    Raises:
        MedsslInputError: ``layer`` outside the tower's blocks.
    """
    trunk = _trunk(model)
    n_blocks = len(trunk.blocks)
    if not 0 <= int(layer) < n_blocks:
        raise MedsslInputError("layer", f"must lie in 0..{n_blocks - 1} for this model's {n_blocks} ViT blocks, "
                                        f"got {layer}")
    if steps < 1 or batch < 1:
        raise ValueError(f"steps and batch must be >= 1, got {steps}, {batch}")
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    device, dtype = _param_device_dtype(model)
    with eval_mode(model), torch.inference_mode(False):
        return _train(model, trunk, tokenizer_or_text_features, image_tensor, prompt, layer=layer, beta=beta,
                      steps=steps, lr=lr, batch=batch, gen=gen, device=device, dtype=dtype)


def _train(model: Any, trunk: nn.Module, tokenizer_or_text_features: Any, image_tensor: torch.Tensor, prompt: str, *,
           layer: int, beta: float, steps: int, lr: float, batch: int, gen: torch.Generator, device: torch.device,
           dtype: torch.dtype) -> M2IBTrace:
    """The body of :func:`m2ib_train` (model in eval mode, autograd available)."""
    # clones: tensors made under the caller's inference mode cannot take part in autograd
    image = _as_batch(image_tensor).to(device=device, dtype=dtype).clone()
    text = F.normalize(text_features(model, tokenizer_or_text_features, prompt).to(device).float().clone(), dim=-1)
    captured: list[torch.Tensor] = []
    handle = trunk.blocks[layer].register_forward_hook(lambda _m, _i, out: captured.append(out.detach()))
    try:
        with torch.no_grad():
            model.encode_image(image)
    finally:
        handle.remove()
    features = captured[-1]  # (1, N, C)
    alpha = torch.full(features.shape[1:], INIT_ALPHA, device=device, dtype=torch.float32, requires_grad=True)

    def noise_fn(shape: tuple[int, ...]) -> torch.Tensor:
        return torch.randn(shape, generator=gen, dtype=torch.float32).to(device)

    feed = _BottleneckFeed(features, alpha, batch, noise_fn)
    tail = nn.Sequential(feed, *list(trunk.blocks)[layer + 1:])
    optimizer = torch.optim.Adam([alpha], lr=lr)
    losses: list[float] = []
    capacity = torch.zeros_like(alpha)
    with _blocks_replaced(trunk, tail), torch.enable_grad():
        for _ in range(steps):
            embedding = model.encode_image(image).float()  # (batch, E)
            cos = F.cosine_similarity(embedding, text.expand_as(embedding), dim=-1)
            if feed.capacity is None:
                raise RuntimeError("the bottleneck was not reached in the image tower's forward pass")
            loss = beta * feed.capacity.mean() - cos.mean()
            (grad,) = torch.autograd.grad(loss, [alpha])
            alpha.grad = grad
            optimizer.step()
            alpha.grad = None
            capacity = feed.capacity.detach().mean(0)
            losses.append(float(loss.detach()))
    input_size = (int(image.shape[-2]), int(image.shape[-1]))
    prefix = int(getattr(trunk, "num_prefix_tokens", 1))
    grid = _grid(trunk, capacity.shape[0] - prefix, input_size)
    return M2IBTrace(alpha=alpha.detach(), capacity=capacity, losses=losses, grid=grid, num_prefix_tokens=prefix,
                     input_size=input_size)


def minmax(values: torch.Tensor) -> torch.Tensor:
    """Values rescaled to [0, 1] (all zeros when constant)."""
    lo, hi = values.min(), values.max()
    if not bool(hi > lo):
        return torch.zeros_like(values)
    return (values - lo) / (hi - lo)


def capacity_saliency(trace: M2IBTrace, out_size: Sequence[int] | None = None) -> np.ndarray:
    """Saliency (H, W) in [0, 1] from an :class:`M2IBTrace` (see the module docstring).

    Args:
        out_size: (H, W) of the result in pixels; None: the model input size.
    """
    per_token = trace.capacity.float().sum(-1)[trace.num_prefix_tokens:]  # channels summed, CLS dropped
    grid_map = per_token.reshape(1, 1, *trace.grid)
    full = F.interpolate(grid_map, size=trace.input_size, mode="bilinear", align_corners=False)
    full = minmax(full)
    size = tuple(int(s) for s in (out_size if out_size is not None else trace.input_size))
    if size != trace.input_size:
        full = F.interpolate(full, size=size, mode="bilinear", align_corners=False).clamp(0.0, 1.0)
    return full[0, 0].cpu().numpy().astype(np.float32)


def m2ib_saliency(model: Any, tokenizer_or_text_features: Any, image_tensor: torch.Tensor, prompt: str, *,
                  layer: int = 9, beta: float = 2.0, steps: int = 10, lr: float = 1.0, batch: int = 10,
                  generator: torch.Generator | None = None, out_size: Sequence[int] | None = None) -> np.ndarray:
    """M2IB saliency of ``prompt`` on one preprocessed image: float32 (H, W) in [0, 1].

    Arguments as :func:`m2ib_train`; ``out_size`` (H, W) in pixels (None: the model input size).
    """
    trace = m2ib_train(model, tokenizer_or_text_features, image_tensor, prompt, layer=layer, beta=beta,
                       steps=steps, lr=lr, batch=batch, generator=generator)
    return capacity_saliency(trace, out_size)
