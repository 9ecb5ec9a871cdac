"""SAM box-prompt refinement and the saliency → ROI path shared by the vision-language backends.

:func:`saliency_to_roi` is the one path every saliency backend (``biomedclip-sam``, ``clipseg``) takes
after its saliency map (spec ``mwm.md`` section 2):

1. binarise the saliency (2-means, brighter cluster = foreground, or ``saliency > threshold``) and keep
   the ``components`` largest connected components → coarse mask;
2. optionally refine with SAM: box prompts around each component (``"per-component"``) or one box
   around all of them (``"union"``), one mask per box (single-mask output), union of the masks,
   probability > 0.5, the ``components`` largest components → refined mask;
3. one box per component of the final mask, scaled by ``expand_ratio`` about its centre, clipped, filled:
   the ROI map is the union of those boxes.

An empty mask at any step gives an empty ROI; :attr:`RoiSteps.empty_at` names the step.

:class:`SaliencyLocalizer` is the shared base of the backends: 2D images go through the path above,
3D volumes slice by slice (:mod:`medssl.localize.slicewise`).

Boxes are per-axis half-open ``(min, max)`` voxel pairs ``((r0, r1), (c0, c1))``; SAM takes
``[x0, y0, x1, y1] = [c0, r0, c1, r1]`` in pixels of the original image.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from medssl.components import largest_components
from medssl.data.io import ImageData
from medssl.errors import MedsslInputError
from medssl.localize.base import LocalizationResult, make_provenance
from medssl.localize.postprocess import (
    Box,
    boxes_to_mask,
    component_boxes,
    expand_box,
    kmeans_binarize,
    threshold_binarize,
    union_box,
)
from medssl.localize.slicewise import check_slicewise_params, slicewise_localize
from medssl.localize.weights import load_hf_model, module_fingerprint

#: Default SAM model (the reference uses ViT-H; ``facebook/sam-vit-base`` is a valid, smaller choice).
DEFAULT_SAM_MODEL = "facebook/sam-vit-huge"

BINARIZE_MODES: tuple[str, ...] = ("kmeans", "threshold")
SAM_BOX_MODES: tuple[str, ...] = ("per-component", "union")

#: Threshold on the union of SAM's mask probabilities (sigmoid of its logits).
SAM_MASK_THRESHOLD = 0.5

#: Default intensity window of float images: these percentiles map to 0 and 255.
DEFAULT_CLIP_PERCENTILES = (0.5, 99.5)


# -------------------------------------------------------------------------------------------- images
def window_uint8(array: np.ndarray, percentiles: Sequence[float] = DEFAULT_CLIP_PERCENTILES) -> np.ndarray:
    """Intensities mapped to uint8 (same shape).

    uint8 input is returned unchanged (already display values, e.g. PNG); bool becomes {0, 255}; any
    other type is windowed: the ``percentiles`` (low, high) of the finite values map to 0 and 255
    (min / max when those coincide), linear in between, clipped. A constant image gives all zeros.
    """
    a = np.asarray(array)
    if a.dtype == np.uint8:
        return a
    if a.dtype == bool:
        return a.astype(np.uint8) * 255
    values = np.nan_to_num(a.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    if values.size == 0:
        return np.zeros(a.shape, np.uint8)
    lo, hi = (float(v) for v in np.percentile(values, [percentiles[0], percentiles[1]]))
    if not hi > lo:
        lo, hi = float(values.min()), float(values.max())
    if not hi > lo:
        return np.zeros(a.shape, np.uint8)
    return np.round(np.clip((values - lo) / (hi - lo), 0.0, 1.0) * 255.0).astype(np.uint8)


def to_rgb_uint8(array: np.ndarray, percentiles: Sequence[float] = DEFAULT_CLIP_PERCENTILES) -> np.ndarray:
    """A 2D image (H, W) or (H, W, C) as an RGB uint8 array (H, W, 3) (grayscale repeated 3×).

    One channel → repeated; 3 channels → kept; 4 (RGBA) → alpha dropped; 2 → the first repeated.
    Intensities as :func:`window_uint8` (all channels windowed together).
    """
    a = np.asarray(array)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim == 3:
        a = a[..., :3] if a.shape[-1] >= 3 else a[..., :1]
    if a.ndim not in (2, 3):
        raise ValueError(f"expected a 2D image (H, W) or (H, W, C), got shape {a.shape}")
    a = window_uint8(a, percentiles)
    if a.ndim == 2 or a.shape[-1] == 1:
        a = np.repeat(a.reshape(*a.shape[:2], 1), 3, axis=-1)
    return np.ascontiguousarray(a)


def sam_box(box: Box) -> list[float]:
    """A 2D half-open box ``((r0, r1), (c0, c1))`` as SAM's ``[x0, y0, x1, y1] = [c0, r0, c1, r1]`` (pixels)."""
    (r0, r1), (c0, c1) = box
    return [float(c0), float(r0), float(c1), float(r1)]


# ----------------------------------------------------------------------------------------------- SAM
class SamRefiner:
    """SAM (transformers ``SamModel`` + ``SamProcessor``) answering box prompts on one image at a time.

    Args:
        model: a ``SamModel`` (used on the device of its parameters, in eval mode).
        processor: its ``SamProcessor`` (resizes the longest side to the model input and pads).
        model_id: hub id or folder, for provenance (default ``"in-memory"``).
        revision: the weights' revision (default: a fingerprint of the model's state dict).
    """

    def __init__(self, model: Any, processor: Any, model_id: str = "in-memory", revision: str | None = None) -> None:
        self.model = model.eval()
        self.processor = processor
        self.model_id = model_id
        self.revision = revision if revision is not None else module_fingerprint(model)

    @classmethod
    def load(cls, ref: str = DEFAULT_SAM_MODEL, device: str = "cpu", cache_dir: str | None = None,
             flag: str = "sam_model") -> SamRefiner:
        """SAM from a hub id or a local folder (see :mod:`medssl.localize.weights`).

        Raises:
            MissingWeightsError: the weights cannot be loaded.
        """
        from transformers import SamModel, SamProcessor

        loaded = load_hf_model(ref, SamModel, SamProcessor, what="SAM", flag=flag, default_hub_id=DEFAULT_SAM_MODEL,
                               device=device, cache_dir=cache_dir)
        return cls(loaded.model, loaded.processor, model_id=loaded.model_id, revision=loaded.revision)

    @classmethod
    def from_modules(cls, model: Any, processor: Any, model_id: str = "in-memory",
                     revision: str | None = None) -> SamRefiner | None:
        """A refiner around modules already built; None when ``model`` is None.

        Raises:
            MedsslInputError: a model without its processor.
        """
        if model is None:
            return None
        if processor is None:
            raise MedsslInputError("sam_processor", "a SAM model needs its processor")
        return cls(model, processor, model_id=model_id, revision=revision)

    def box_probabilities(self, rgb: np.ndarray, boxes: Sequence[Box]) -> np.ndarray:
        """SAM's single-mask output for each box prompt: float32 (n_boxes, H, W) probabilities in [0, 1].

        Args:
            rgb: the image (H, W, 3) uint8.
            boxes: 2D half-open boxes in pixels of ``rgb``.
        """
        import torch

        height, width = rgb.shape[:2]
        if not boxes:
            return np.zeros((0, height, width), np.float32)
        device = next(self.model.parameters()).device
        inputs = self.processor(images=rgb, input_boxes=[[sam_box(b) for b in boxes]], return_tensors="pt")
        with torch.no_grad():
            embeddings = self.model.get_image_embeddings(inputs["pixel_values"].to(device))
            out = self.model(image_embeddings=embeddings, input_boxes=inputs["input_boxes"].to(device),
                             multimask_output=False)
        logits = self.processor.post_process_masks(out.pred_masks.cpu(), inputs["original_sizes"],
                                                   inputs["reshaped_input_sizes"], binarize=False)[0]
        return torch.sigmoid(logits[:, 0].float()).numpy()  # (n_boxes, H, W)

    def refine(self, rgb: np.ndarray, boxes: Sequence[Box], threshold: float = SAM_MASK_THRESHOLD) -> np.ndarray:
        """Union of SAM's masks for ``boxes``: bool (H, W) where any box's probability > ``threshold``."""
        probs = self.box_probabilities(rgb, boxes)
        if probs.shape[0] == 0:
            return np.zeros(rgb.shape[:2], bool)
        return probs.max(axis=0) > threshold


# ------------------------------------------------------------------------------- saliency → ROI path
@dataclass
class RoiSteps:
    """Every intermediate of :func:`saliency_to_roi` (maps on the image grid (H, W[, D]))."""

    coarse_mask: np.ndarray
    refined_mask: np.ndarray | None
    prompt_boxes: list[Box]
    boxes: list[Box]
    roi: np.ndarray
    empty_at: str | None


def binarize_saliency(saliency: np.ndarray, mode: str = "kmeans", threshold: float = 0.3) -> np.ndarray:
    """Foreground of ``saliency``: ``"kmeans"`` (2 clusters, brighter = foreground) or ``"threshold"``."""
    if mode == "kmeans":
        return kmeans_binarize(saliency)
    if mode == "threshold":
        return threshold_binarize(saliency, threshold)
    raise MedsslInputError("binarize", f"must be one of {', '.join(BINARIZE_MODES)}, got {mode!r}")


def sam_prompt_boxes(mask: np.ndarray, mode: str = "per-component", connectivity: int | None = None) -> list[Box]:
    """SAM box prompts for a mask (H, W): one tight box per component, or (``"union"``) one around all."""
    if mode not in SAM_BOX_MODES:
        raise MedsslInputError("sam_boxes", f"must be one of {', '.join(SAM_BOX_MODES)}, got {mode!r}")
    boxes = component_boxes(mask, connectivity)
    if mode == "union" and boxes:
        return [union_box(boxes)]  # type: ignore[list-item]
    return boxes


def sam_refine_mask(refiner: SamRefiner, rgb: np.ndarray, mask: np.ndarray, *, sam_boxes: str = "per-component",
                    components: int = 1, threshold: float = SAM_MASK_THRESHOLD,
                    connectivity: int | None = None) -> tuple[np.ndarray, list[Box]]:
    """SAM refinement of a coarse mask (H, W) on ``rgb`` (H, W, 3) uint8.

    Box prompts from :func:`sam_prompt_boxes`, single-mask output per box, union of the probabilities
    > ``threshold``, the ``components`` largest connected components. Returns (refined bool mask (H, W),
    the prompt boxes); an empty ``mask`` gives an empty mask and no prompts (SAM is not run).
    """
    prompts = sam_prompt_boxes(mask, sam_boxes, connectivity)
    if not prompts:
        return np.zeros(np.asarray(mask).shape, bool), []
    return largest_components(refiner.refine(rgb, prompts, threshold), components, connectivity), prompts


def saliency_to_roi(saliency: np.ndarray, *, binarize: str = "kmeans", threshold: float = 0.3, components: int = 1,
                    refine: Callable[[list[Box]], np.ndarray] | None = None, sam_boxes: str = "per-component",
                    expand_ratio: float = 1.0, connectivity: int | None = None) -> RoiSteps:
    """Saliency (H, W[, D]) in [0, 1] → coarse mask → (refined mask) → expanded boxes → ROI (module docstring).

    Args:
        binarize, threshold: see :func:`binarize_saliency`.
        components: connected components kept after binarising and after refinement (K).
        refine: ``refine(prompt_boxes) -> bool mask`` (e.g. :meth:`SamRefiner.refine` bound to the image;
            the same steps as :func:`sam_refine_mask`); None skips refinement (boxes then come from the
            coarse mask).
        sam_boxes: ``"per-component"`` (one prompt box per coarse component) or ``"union"`` (one box
            around all of them).
        expand_ratio: box scale about its centre; connectivity: component neighbourhood (default full).
    """
    if sam_boxes not in SAM_BOX_MODES:
        raise MedsslInputError("sam_boxes", f"must be one of {', '.join(SAM_BOX_MODES)}, got {sam_boxes!r}")
    shape = np.asarray(saliency).shape
    coarse = largest_components(binarize_saliency(saliency, binarize, threshold), components, connectivity)
    refined: np.ndarray | None = None
    prompt_boxes: list[Box] = []
    empty_at: str | None = None
    final = coarse
    if not coarse.any():
        empty_at = "coarse_mask"
    if refine is not None:
        refined = np.zeros(shape, bool)
        if empty_at is None:
            prompt_boxes = sam_prompt_boxes(coarse, sam_boxes, connectivity)
            refined = largest_components(np.asarray(refine(prompt_boxes), dtype=bool), components, connectivity)
            if not refined.any():
                empty_at = "refined_mask"
        final = refined
    boxes = [expand_box(b, expand_ratio, shape) for b in component_boxes(final, connectivity)]
    return RoiSteps(coarse_mask=coarse, refined_mask=refined, prompt_boxes=prompt_boxes, boxes=boxes,
                    roi=boxes_to_mask(boxes, shape), empty_at=empty_at)


# ------------------------------------------------------------------------------- the backends' base
def check_saliency_params(*, binarize: str, threshold: float, sam_boxes: str, clip_percentiles: Sequence[float],
                          components: int, expand_ratio: float, slice_axis: int, slice_stride: int) -> None:
    """Validate the shared parameters of the saliency backends (before any model is loaded).

    Raises:
        MedsslInputError: a value out of range, naming the parameter.
    """
    check_slicewise_params(slice_axis, slice_stride, components, expand_ratio)
    if binarize not in BINARIZE_MODES:
        raise MedsslInputError("binarize", f"must be one of {', '.join(BINARIZE_MODES)}, got {binarize!r}")
    if not 0.0 <= threshold <= 1.0:
        raise MedsslInputError("threshold", f"must lie in [0, 1], got {threshold}")
    if sam_boxes not in SAM_BOX_MODES:
        raise MedsslInputError("sam_boxes", f"must be one of {', '.join(SAM_BOX_MODES)}, got {sam_boxes!r}")
    lo, hi = (float(p) for p in clip_percentiles)
    if not 0.0 <= lo < hi <= 100.0:
        raise MedsslInputError("clip_percentiles", f"need 0 <= low < high <= 100, got {tuple(clip_percentiles)}")


class SaliencyLocalizer:
    """Base of the saliency backends: 2D → :meth:`saliency` → :func:`saliency_to_roi`; 3D → slice by slice.

    Subclasses set ``name``, ``vlm_id`` / ``vlm_revision`` and implement :meth:`saliency` and
    :meth:`model_params`.

    Args:
        binarize: ``"kmeans"`` or ``"threshold"``; threshold: for ``"threshold"``.
        components: connected components kept (per image, per volume for 3D).
        refine: refine with SAM (needs ``sam``); sam_boxes: ``"per-component"`` or ``"union"``.
        expand_ratio: box scale about its centre; connectivity: component neighbourhood (default full).
        slice_axis, slice_stride: how 3D volumes are cut into 2D slices.
        clip_percentiles: intensity window of float images (low, high percentiles → 0, 255); a volume is
            windowed as a whole before slicing.
        sam: the SAM refiner (required when ``refine``).
    """

    name = "saliency"
    vlm_id: str = "in-memory"
    vlm_revision: str | None = None

    def __init__(self, *, binarize: str = "kmeans", threshold: float = 0.3, components: int = 1,
                 refine: bool = True, sam_boxes: str = "per-component", expand_ratio: float = 1.0,
                 connectivity: int | None = None, slice_axis: int = 2, slice_stride: int = 1,
                 clip_percentiles: Sequence[float] = DEFAULT_CLIP_PERCENTILES, sam: SamRefiner | None = None) -> None:
        check_saliency_params(binarize=binarize, threshold=threshold, sam_boxes=sam_boxes,
                              clip_percentiles=clip_percentiles, components=components, expand_ratio=expand_ratio,
                              slice_axis=slice_axis, slice_stride=slice_stride)
        self.slice_axis = int(slice_axis) % 3
        if refine and sam is None:
            raise MedsslInputError("sam_model", "refinement (refine=True) needs a SAM model")
        self.binarize = binarize
        self.threshold = float(threshold)
        self.components = int(components)
        self.refine = bool(refine)
        self.sam_boxes = sam_boxes
        self.expand_ratio = float(expand_ratio)
        self.connectivity = connectivity
        self.slice_stride = int(slice_stride)
        self.clip_percentiles = (float(clip_percentiles[0]), float(clip_percentiles[1]))
        self.sam = sam if refine else None

    # -- identity ---------------------------------------------------------------------------------
    @property
    def model_id(self) -> str:
        """The vision-language model's id, ``" + "`` the SAM model's when refining."""
        return self.vlm_id if self.sam is None else f"{self.vlm_id} + {self.sam.model_id}"

    @property
    def model_revision(self) -> str | None:
        """The models' revisions, joined like :attr:`model_id`."""
        if self.sam is None:
            return self.vlm_revision
        return f"{self.vlm_revision or 'unknown'} + {self.sam.revision or 'unknown'}"

    def model_params(self) -> dict[str, Any]:
        """Backend-specific parameters that change the saliency."""
        raise NotImplementedError

    def params(self) -> dict[str, Any]:
        return {**self.model_params(), "binarize": self.binarize, "threshold": self.threshold,
                "components": self.components, "refine": self.refine, "sam_boxes": self.sam_boxes,
                "sam_mask_threshold": SAM_MASK_THRESHOLD, "expand_ratio": self.expand_ratio,
                "connectivity": self.connectivity, "slice_axis": self.slice_axis,
                "slice_stride": self.slice_stride, "clip_percentiles": list(self.clip_percentiles)}

    # -- work -------------------------------------------------------------------------------------
    def saliency(self, rgb: np.ndarray, prompt: str) -> np.ndarray:
        """Saliency float32 (H, W) in [0, 1] of ``prompt`` on an RGB uint8 image (H, W, 3)."""
        raise NotImplementedError

    def _models(self) -> dict[str, Any]:
        out = {"vlm": {"id": self.vlm_id, "revision": self.vlm_revision}}
        if self.sam is not None:
            out["sam"] = {"id": self.sam.model_id, "revision": self.sam.revision}
        return out

    def localize(self, image: ImageData, prompt: str, context: dict[str, Any] | None = None) -> LocalizationResult:
        """ROI of ``image`` for ``prompt``: (H, W[, C]) images directly, (H, W, D) volumes slice by slice.

        The result holds the saliency, coarse and refined masks and the expanded boxes; its provenance
        adds ``empty_at`` (None, ``"coarse_mask"`` or ``"refined_mask"``; ``"slices"`` for a volume in
        which no slice found anything), ``sam_prompt_boxes``, ``n_components`` and ``models``.
        """
        if not prompt or not prompt.strip():
            raise MedsslInputError("prompt", "is empty")
        spatial = len(image.spacing)
        if spatial == 3:
            windowed = ImageData(array=window_uint8(image.array, self.clip_percentiles), affine=image.affine,
                                 spacing=image.spacing, source=image.source, meta=dict(image.meta))
            result = slicewise_localize(self, windowed, prompt, context, axis=self.slice_axis,
                                        stride=self.slice_stride, components=self.components,
                                        expand_ratio=self.expand_ratio, connectivity=self.connectivity,
                                        provenance_of=self)
            result.provenance["models"] = self._models()
            return result
        if spatial != 2:
            raise MedsslInputError(image.source or "image", f"expected a 2D image or a 3D volume, got shape "
                                                            f"{image.array.shape}")
        rgb = to_rgb_uint8(image.array, self.clip_percentiles)
        saliency = np.clip(np.asarray(self.saliency(rgb, prompt), dtype=np.float32), 0.0, 1.0)
        refine = functools.partial(self.sam.refine, rgb) if self.sam is not None else None
        steps = saliency_to_roi(saliency, binarize=self.binarize, threshold=self.threshold,
                                components=self.components, refine=refine, sam_boxes=self.sam_boxes,
                                expand_ratio=self.expand_ratio, connectivity=self.connectivity)
        provenance = make_provenance(
            self, prompt, empty_at=steps.empty_at,
            sam_prompt_boxes=[[list(axis) for axis in b] for b in steps.prompt_boxes],
            n_components=len(steps.boxes), models=self._models())
        return LocalizationResult(roi=steps.roi, saliency=saliency, coarse_mask=steps.coarse_mask,
                                  refined_mask=steps.refined_mask, boxes=steps.boxes, provenance=provenance)
