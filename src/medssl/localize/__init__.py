"""Prompt → ROI map: localization backends, postprocessing and a ROI cache with provenance.

``create_localizer(name, **params)`` builds a backend by name:

* ``structures``: the prompt matched to a named-structures label map by sentence-embedding
  similarity; ROI = boxes around the matched structures (:mod:`.structures`).
* ``files``: ROI maps a user already has, one file per image (:mod:`.files`).
* ``biomedclip-sam``, ``clipseg``: names reserved for the vision-language backends; not available
  in this version yet.

Every backend returns a :class:`LocalizationResult`; :class:`RoiCache` stores results on disk.
"""

from __future__ import annotations

from collections.abc import Callable
from types import MappingProxyType
from typing import Any

from medssl.errors import MedsslInputError
from medssl.localize.base import LocalizationResult, Localizer, make_provenance
from medssl.localize.cache import CACHE_FORMAT_VERSION, RoiCache, image_content_hash
from medssl.localize.postprocess import (
    Box,
    boxes_to_mask,
    component_boxes,
    expand_box,
    kmeans_binarize,
    largest_components,
    threshold_binarize,
    union_box,
)

__all__ = [
    "CACHE_FORMAT_VERSION",
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


def _not_yet(name: str) -> Callable[..., Localizer]:
    def factory(**params: Any) -> Localizer:
        raise MedsslInputError(name, f"localization backend not available yet in this medssl version "
                                     f"(available: {', '.join(available_localizers())})")
    return factory


#: Backend name -> factory (read-only); the reserved backends raise a clear "not available yet" error.
LOCALIZERS: MappingProxyType[str, Callable[..., Localizer]] = MappingProxyType({
    "structures": _structures,
    "files": _files,
    "biomedclip-sam": _not_yet("biomedclip-sam"),
    "clipseg": _not_yet("clipseg"),
})

_AVAILABLE = ("structures", "files")


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
