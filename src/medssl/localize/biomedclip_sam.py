"""``biomedclip-sam`` backend: BiomedCLIP M2IB saliency → binary mask → SAM → boxes → ROI map.

The localization of Mask What Matters (spec ``mwm.md`` section 2): the prompt's M2IB saliency on the
BiomedCLIP image tower (:mod:`medssl.localize.m2ib`), then the shared saliency → ROI path of
:mod:`medssl.localize.sam` (binarise, K largest components, SAM box prompts, boxes, expansion).
3D volumes go slice by slice (:mod:`medssl.localize.slicewise`).

Image preparation: intensities windowed to uint8 (percentiles ``clip_percentiles`` for float data),
grayscale repeated to 3 channels, resized to the model's square input (bicubic, no crop, so the
saliency lies on the whole image), then the model's own inference transform (its normalisation).

Models come from hub ids or local folders (:mod:`medssl.localize.weights`); nothing is downloaded where
no network is reachable, and missing weights are one error line saying how to provide them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from medssl.errors import MedsslInputError
from medssl.localize.m2ib import m2ib_saliency
from medssl.localize.sam import (
    DEFAULT_CLIP_PERCENTILES,
    DEFAULT_SAM_MODEL,
    SaliencyLocalizer,
    SamRefiner,
    check_saliency_params,
)
from medssl.localize.weights import LoadedClip, load_open_clip, module_fingerprint

#: BiomedCLIP (ViT-B/16 image tower, PubMedBERT text tower) in open_clip's hub schema.
DEFAULT_HUB_ID = "microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"
DEFAULT_MODEL = f"hf-hub:{DEFAULT_HUB_ID}"


def model_input_size(clip_model: Any, preprocess: Any) -> tuple[int, int]:
    """The image tower's input size (S_h, S_w) in pixels: ``visual.image_size``, else what ``preprocess`` makes."""
    size = getattr(getattr(clip_model, "visual", None), "image_size", None)
    if size is not None:
        return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
    from PIL import Image

    probe = preprocess(Image.new("RGB", (8, 8)))
    return int(probe.shape[-2]), int(probe.shape[-1])


class BiomedClipSamLocalizer(SaliencyLocalizer):
    """Prompt → M2IB saliency (BiomedCLIP) → mask → SAM → boxes → ROI (see the module docstring).

    Args:
        model: open_clip model reference (hub id, ``hf-hub:`` id or local folder).
        sam_model: SAM reference (hub id or local folder); unused when ``refine`` is False.
        layer: 0-based ViT block after which the bottleneck sits (the reference tries 7, 8, 9).
        beta: weight of the capacity term; steps, lr, batch: the bottleneck's optimisation.
        seed: seed of the bottleneck noise (the same for every image, so results repeat).
        binarize, threshold, components, sam_boxes, expand_ratio, refine, connectivity, slice_axis,
            slice_stride, clip_percentiles: see :class:`~medssl.localize.sam.SaliencyLocalizer`.
        device: torch device the models run on (``"auto"``: a GPU when one is visible).
        cache_dir: Hugging Face cache folder (default: the standard one).
        clip: an already loaded model (skips loading ``model``); sam: an already built SAM refiner.

    Raises:
        MissingWeightsError: a model cannot be loaded.
        MedsslInputError: a parameter out of range.
    """

    name = "biomedclip-sam"

    def __init__(self, model: str = DEFAULT_MODEL, sam_model: str = DEFAULT_SAM_MODEL, layer: int = 9,
                 beta: float = 2.0, binarize: str = "kmeans", threshold: float = 0.3, components: int = 1,
                 sam_boxes: str = "per-component", expand_ratio: float = 1.0, refine: bool = True,
                 device: str = "cpu", steps: int = 10, lr: float = 1.0, batch: int = 10, seed: int = 0,
                 connectivity: int | None = None, slice_axis: int = 2, slice_stride: int = 1,
                 clip_percentiles: Sequence[float] = DEFAULT_CLIP_PERCENTILES, cache_dir: str | None = None, *,
                 clip: LoadedClip | None = None, sam: SamRefiner | None = None) -> None:
        if int(layer) < 0:
            raise MedsslInputError("layer", f"must be >= 0, got {layer}")
        if not beta >= 0:
            raise MedsslInputError("beta", f"must be >= 0, got {beta}")
        if int(steps) < 1 or int(batch) < 1 or not lr > 0:
            raise MedsslInputError("steps", f"steps and batch must be >= 1 and lr > 0, got {steps}, {batch}, {lr}")
        check_saliency_params(binarize=binarize, threshold=threshold, sam_boxes=sam_boxes,
                              clip_percentiles=clip_percentiles, components=components, expand_ratio=expand_ratio,
                              slice_axis=slice_axis, slice_stride=slice_stride)
        if clip is None:
            clip = load_open_clip(model, what="BiomedCLIP", flag="model", default_hub_id=DEFAULT_HUB_ID,
                                  device=device, cache_dir=cache_dir)
        if refine and sam is None:
            sam = SamRefiner.load(sam_model, device=device, cache_dir=cache_dir)
        super().__init__(binarize=binarize, threshold=threshold, components=components, refine=refine,
                         sam_boxes=sam_boxes, expand_ratio=expand_ratio, connectivity=connectivity,
                         slice_axis=slice_axis, slice_stride=slice_stride, clip_percentiles=clip_percentiles, sam=sam)
        self.clip = clip
        self.vlm_id = clip.model_id
        self.vlm_revision = clip.revision
        self.layer = int(layer)
        self.beta = float(beta)
        self.steps = int(steps)
        self.lr = float(lr)
        self.batch = int(batch)
        self.seed = int(seed)
        self.input_size = model_input_size(clip.model, clip.preprocess)
        self._text: dict[str, Any] = {}

    @classmethod
    def from_modules(cls, clip_model: Any, tokenizer: Any, preprocess: Any, sam_model: Any = None,
                     sam_processor: Any = None, *, model_id: str = "in-memory", model_revision: str | None = None,
                     sam_model_id: str = "in-memory", sam_revision: str | None = None,
                     **params: Any) -> BiomedClipSamLocalizer:
        """A localizer around modules already built (e.g. random tiny ones, or weights loaded elsewhere).

        Args:
            clip_model: an open_clip model with a timm ViT image tower; tokenizer: its tokenizer;
                preprocess: its inference transform (PIL image → (3, S, S) tensor).
            sam_model, sam_processor: transformers ``SamModel`` + ``SamProcessor`` (needed when refining).
            model_id, sam_model_id: ids recorded in provenance and cache keys.
            model_revision, sam_revision: revisions (default: a fingerprint of the module's weights).
            params: the other constructor arguments (``layer``, ``refine``, ...).
        """
        clip = LoadedClip(model=clip_model.eval(), tokenizer=tokenizer, preprocess=preprocess, model_id=model_id,
                          revision=model_revision if model_revision is not None else module_fingerprint(clip_model))
        sam = SamRefiner.from_modules(sam_model, sam_processor, model_id=sam_model_id, revision=sam_revision)
        return cls(clip=clip, sam=sam, **params)

    def model_params(self) -> dict[str, Any]:
        return {"layer": self.layer, "beta": self.beta, "steps": self.steps, "lr": self.lr, "batch": self.batch,
                "seed": self.seed, "input_size": list(self.input_size)}

    def _text_features(self, prompt: str) -> Any:
        if prompt not in self._text:
            import torch

            device = next(self.clip.model.parameters()).device
            with torch.no_grad():
                self._text[prompt] = self.clip.model.encode_text(self.clip.tokenizer([prompt]).to(device)).detach()
        return self._text[prompt]

    def model_input(self, rgb: np.ndarray) -> Any:
        """The model input (3, S_h, S_w) of an RGB uint8 image (H, W, 3): square resize, then the transform."""
        from PIL import Image

        pil = Image.fromarray(rgb).resize((self.input_size[1], self.input_size[0]), Image.Resampling.BICUBIC)
        return self.clip.preprocess(pil)

    def saliency(self, rgb: np.ndarray, prompt: str) -> np.ndarray:
        """M2IB saliency float32 (H, W) in [0, 1] of ``prompt`` on ``rgb`` (H, W, 3) uint8."""
        import torch

        return m2ib_saliency(self.clip.model, self._text_features(prompt), self.model_input(rgb), prompt,
                             layer=self.layer, beta=self.beta, steps=self.steps, lr=self.lr, batch=self.batch,
                             generator=torch.Generator().manual_seed(self.seed), out_size=rgb.shape[:2])
