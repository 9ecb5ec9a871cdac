"""Prompt → ROI map: localization backends, postprocessing and a ROI cache with provenance.

``create_localizer(name, **params)`` builds a backend by name:

* ``structures``: the prompt matched to a named-structures label map by sentence-embedding
  similarity; ROI = boxes around the matched structures (:mod:`.structures`).
* ``files``: ROI maps a user already has, one file per image, or ground-truth boxes from a box list or
  a COCO file ("oracle ROI") (:mod:`.files`, :mod:`.box_lists`).
* ``ct-lung-fields``: classical lung fields of 2D chest CT slices ("classical") (:mod:`.ct_lungs`).
* ``shuffled``: a control giving each image another image's ROI, or a random box of the same size
  (:mod:`.shuffled`).
* ``segmenter``: a segmentation run trained with medssl whose class names answer the prompt
  (:mod:`.segmenter`).
* ``biomedclip-sam``: BiomedCLIP M2IB saliency → binary mask → SAM box prompts → boxes
  (:mod:`.biomedclip_sam`, :mod:`.m2ib`, :mod:`.sam`).
* ``clipseg``: CLIPSeg saliency → binary mask → (optional SAM) → boxes (:mod:`.clipseg`).

The vision-language backends take a hub id or a local folder for each model (:mod:`.weights`; nothing
is downloaded where no network is reachable) and run 3D volumes slice by slice (:mod:`.slicewise`).

Every backend returns a :class:`LocalizationResult`; :class:`RoiCache` stores results on disk.
"""

from __future__ import annotations

from collections.abc import Callable
from types import MappingProxyType
from typing import Any

from medssl.components import largest_components
from medssl.errors import MedsslInputError
from medssl.localize.base import LocalizationResult, Localizer, make_provenance
from medssl.localize.cache import (
    CACHE_FORMAT_VERSION,
    INTERMEDIATES,
    RoiCache,
    context_digest,
    image_content_hash,
)
from medssl.localize.postprocess import (
    Box,
    boxes_to_mask,
    component_boxes,
    expand_box,
    kmeans_binarize,
    threshold_binarize,
    union_box,
)

#: Names imported on first use (their modules pull in pydantic / matplotlib).
_LAZY = {
    "LocalizeRunConfig": "medssl.localize.run",
    "LocalizeRunSummary": "medssl.localize.run",
    "run_localization": "medssl.localize.run",
    "LocalizationEvaluation": "medssl.localize.evaluate",
    "evaluate_localization": "medssl.localize.evaluate",
    "write_localization_preview": "medssl.localize.preview",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CACHE_FORMAT_VERSION",
    "INTERMEDIATES",
    "LocalizationEvaluation",
    "LocalizeRunConfig",
    "LocalizeRunSummary",
    "context_digest",
    "evaluate_localization",
    "run_localization",
    "write_localization_preview",
    "LOCALIZERS",
    "Box",
    "LocalizationResult",
    "Localizer",
    "RoiCache",
    "available_localizers",
    "boxes_to_mask",
    "component_boxes",
    "create_localizer",
    "expand_box",
    "image_content_hash",
    "kmeans_binarize",
    "largest_components",
    "make_provenance",
    "threshold_binarize",
    "union_box",
]


def _structures(**params: Any) -> Localizer:
    from medssl.localize.structures import StructuresLocalizer

    return StructuresLocalizer(**params)


def _files(**params: Any) -> Localizer:
    from medssl.localize.files import FilesLocalizer

    return FilesLocalizer(**params)


def _segmenter(**params: Any) -> Localizer:
    from medssl.localize.segmenter import SegmenterLocalizer

    return SegmenterLocalizer(**params)


def _ct_lung_fields(**params: Any) -> Localizer:
    from medssl.localize.ct_lungs import CtLungFieldsLocalizer

    return CtLungFieldsLocalizer(**params)


def _shuffled(**params: Any) -> Localizer:
    from medssl.localize.shuffled import ShuffledLocalizer

    return ShuffledLocalizer(**params)


def _biomedclip_sam(**params: Any) -> Localizer:
    from medssl.localize.biomedclip_sam import BiomedClipSamLocalizer

    return BiomedClipSamLocalizer(**params)


def _clipseg(**params: Any) -> Localizer:
    from medssl.localize.clipseg import ClipSegLocalizer

    return ClipSegLocalizer(**params)


#: Backend name -> factory (read-only).
LOCALIZERS: MappingProxyType[str, Callable[..., Localizer]] = MappingProxyType({
    "structures": _structures,
    "files": _files,
    "segmenter": _segmenter,
    "ct-lung-fields": _ct_lung_fields,
    "shuffled": _shuffled,
    "biomedclip-sam": _biomedclip_sam,
    "clipseg": _clipseg,
})

_AVAILABLE = ("structures", "files", "segmenter", "ct-lung-fields", "shuffled", "biomedclip-sam", "clipseg")


def available_localizers() -> tuple[str, ...]:
    """Names of the backends that can be created in this version."""
    return _AVAILABLE


def create_localizer(name: str, **params: Any) -> Localizer:
    """Build the localization backend ``name`` with ``params`` (the backend's keyword arguments).

    Raises:
        MedsslInputError: unknown name, a backend not available yet, or bad parameters.
    """
    if name not in LOCALIZERS:
        raise MedsslInputError(name, f"unknown localization backend (choose from {', '.join(LOCALIZERS)})")
    try:
        return LOCALIZERS[name](**params)
    except TypeError as exc:
        raise MedsslInputError(name, f"bad backend parameters ({exc})") from exc
