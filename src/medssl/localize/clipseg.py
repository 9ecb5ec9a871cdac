"""``clipseg`` backend: CLIPSeg text-conditioned segmentation as the saliency, then the shared ROI path.

CLIPSeg (transformers ``CLIPSegForImageSegmentation`` + ``CLIPSegProcessor``) predicts a logit map for
the prompt at its input size (352 × 352 for ``CIDAS/clipseg-rd64-refined``); saliency = sigmoid of the
logits, resized (bilinear) to the image. From there the path is the one of every saliency backend
(:func:`medssl.localize.sam.saliency_to_roi`): binarise, K largest components, optional SAM refinement,
boxes, expansion, union. SAM is off by default here (CLIPSeg already outputs a segmentation); pass
``refine=True`` to use it. 3D volumes go slice by slice.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from medssl.localize.sam import (
    DEFAULT_CLIP_PERCENTILES,
    DEFAULT_SAM_MODEL,
    SaliencyLocalizer,
    SamRefiner,
    check_saliency_params,
)
from medssl.localize.weights import LoadedHfModel, load_hf_model, module_fingerprint

#: The refined CLIPSeg checkpoint (reduce dim 64).
DEFAULT_MODEL = "CIDAS/clipseg-rd64-refined"


def clipseg_saliency(model: Any, processor: Any, rgb: np.ndarray, prompt: str) -> np.ndarray:
    """CLIPSeg saliency of ``prompt``: sigmoid(logits) resized to the image, float32 (H, W) in [0, 1].

    Args:
        model: ``CLIPSegForImageSegmentation`` (used on the device of its parameters).
        processor: its ``CLIPSegProcessor`` (tokenizer + image processor).
        rgb: the image (H, W, 3) uint8.
        prompt: the text prompt (cut to the text tower's maximum length).
    """
    import torch
    import torch.nn.functional as F

    device = next(model.parameters()).device
    max_len = int(getattr(model.config.text_config, "max_position_embeddings", 77))
    inputs = processor(text=[prompt], images=[rgb], padding=True, truncation=True, max_length=max_len,
                       return_tensors="pt")
    inputs = {k: v.to(device) for k, v in inputs.items()}
    with torch.no_grad():
        logits = model(**inputs).logits
    logits = logits.reshape(-1, *logits.shape[-2:])[0].float()  # (h, w) whatever the batch squeezing
    prob = torch.sigmoid(logits)[None, None]
    resized = F.interpolate(prob, size=tuple(int(s) for s in rgb.shape[:2]), mode="bilinear", align_corners=False)
    return resized[0, 0].clamp(0.0, 1.0).cpu().numpy().astype(np.float32)


class ClipSegLocalizer(SaliencyLocalizer):
    """Prompt → CLIPSeg saliency → mask → (SAM) → boxes → ROI (see the module docstring).

    Args:
        model: CLIPSeg reference (hub id or local folder).
        sam_model: SAM reference (used only when ``refine`` is True).
        binarize, threshold, components, sam_boxes, expand_ratio, refine, connectivity, slice_axis,
            slice_stride, clip_percentiles: see :class:`~medssl.localize.sam.SaliencyLocalizer`.
        device: torch device (``"auto"``: a GPU when one is visible).
        cache_dir: Hugging Face cache folder (default: the standard one).
        clipseg: an already loaded model + processor (skips loading ``model``); sam: a built SAM refiner.

    Raises:
        MissingWeightsError: a model cannot be loaded.
        MedsslInputError: a parameter out of range.
    """

    name = "clipseg"

    def __init__(self, model: str = DEFAULT_MODEL, sam_model: str = DEFAULT_SAM_MODEL, binarize: str = "kmeans",
                 threshold: float = 0.3, components: int = 1, sam_boxes: str = "per-component",
                 expand_ratio: float = 1.0, refine: bool = False, device: str = "cpu",
                 connectivity: int | None = None, slice_axis: int = 2, slice_stride: int = 1,
                 clip_percentiles: Sequence[float] = DEFAULT_CLIP_PERCENTILES, cache_dir: str | None = None, *,
                 clipseg: LoadedHfModel | None = None, sam: SamRefiner | None = None) -> None:
        check_saliency_params(binarize=binarize, threshold=threshold, sam_boxes=sam_boxes,
                              clip_percentiles=clip_percentiles, components=components, expand_ratio=expand_ratio,
                              slice_axis=slice_axis, slice_stride=slice_stride)
        if clipseg is None:
            from transformers import CLIPSegForImageSegmentation, CLIPSegProcessor

            clipseg = load_hf_model(model, CLIPSegForImageSegmentation, CLIPSegProcessor, what="CLIPSeg",
                                    flag="model", default_hub_id=DEFAULT_MODEL, device=device, cache_dir=cache_dir)
        if refine and sam is None:
            sam = SamRefiner.load(sam_model, device=device, cache_dir=cache_dir)
        super().__init__(binarize=binarize, threshold=threshold, components=components, refine=refine,
                         sam_boxes=sam_boxes, expand_ratio=expand_ratio, connectivity=connectivity,
                         slice_axis=slice_axis, slice_stride=slice_stride, clip_percentiles=clip_percentiles, sam=sam)
        self.clipseg = clipseg
        self.vlm_id = clipseg.model_id
        self.vlm_revision = clipseg.revision

    @classmethod
    def from_modules(cls, clipseg_model: Any, processor: Any, sam_model: Any = None, sam_processor: Any = None, *,
                     model_id: str = "in-memory", model_revision: str | None = None, sam_model_id: str = "in-memory",
                     sam_revision: str | None = None, **params: Any) -> ClipSegLocalizer:
        """A localizer around modules already built: a ``CLIPSegForImageSegmentation`` and its
        ``CLIPSegProcessor`` (+ optional SAM model and processor); ids and revisions as in
        ``BiomedClipSamLocalizer.from_modules`` (default revision: a fingerprint of the weights).
        """
        loaded = LoadedHfModel(model=clipseg_model.eval(), processor=processor, model_id=model_id,
                               revision=model_revision if model_revision is not None
                               else module_fingerprint(clipseg_model))
        sam = SamRefiner.from_modules(sam_model, sam_processor, model_id=sam_model_id, revision=sam_revision)
        return cls(clipseg=loaded, sam=sam, **params)

    def model_params(self) -> dict[str, Any]:
        return {}

    def saliency(self, rgb: np.ndarray, prompt: str) -> np.ndarray:
        """CLIPSeg saliency float32 (H, W) in [0, 1] (see :func:`clipseg_saliency`)."""
        return clipseg_saliency(self.clipseg.model, self.clipseg.processor, rgb, prompt)
