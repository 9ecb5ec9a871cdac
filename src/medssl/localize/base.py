"""The localization interface: a prompt and an image in, a ROI map with its provenance out.

A localizer backend (``structures``, ``files``, ``biomedclip-sam``, ``clipseg``) implements
:class:`Localizer`; every backend returns a :class:`LocalizationResult` whose ``roi`` is a boolean map on
the image's voxel grid. The ROI map is a union of axis-aligned boxes (see
:mod:`medssl.localize.postprocess`); an empty ROI means "nothing found", and the image is then masked
uniformly at the background ratio.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from medssl.data.io import ImageData
from medssl.localize.postprocess import Box


@dataclass
class LocalizationResult:
    """The output of one localization.

    Attributes:
        roi: bool array on the image grid, (H, W) or (H, W, D) voxels.
        saliency: optional float map in [0, 1] on the image grid (backends with a saliency step).
        coarse_mask: optional bool map from the binarised saliency (or the matched structures).
        refined_mask: optional bool map after refinement (e.g. SAM).
        boxes: the ROI's boxes, per-axis half-open ``(min, max)`` voxel pairs (after expansion).
        provenance: how the ROI was made: backend, model id / revision, parameters, prompt, matched
            structures and scores, medssl version, time (see :func:`make_provenance`).
    """

    roi: np.ndarray
    saliency: np.ndarray | None = None
    coarse_mask: np.ndarray | None = None
    refined_mask: np.ndarray | None = None
    boxes: list[Box] = field(default_factory=list)
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def roi_fraction(self) -> float:
        """Fraction of the image's voxels inside the ROI (0.0 for an empty image)."""
        return float(self.roi.mean()) if self.roi.size else 0.0


@runtime_checkable
class Localizer(Protocol):
    """A localization backend.

    Attributes:
        name: registry name of the backend (``"structures"``, ``"files"``, ...).
        model_id: the model it uses (hub id or path), or None for backends without a model.
        model_revision: the model's revision / version, or None.
    """

    @property
    def name(self) -> str:
        """Registry name of the backend."""
        ...

    @property
    def model_id(self) -> str | None:
        """The model the backend uses (hub id or path), or None."""
        ...

    @property
    def model_revision(self) -> str | None:
        """The model's revision / version, or None."""
        ...

    def params(self) -> dict[str, Any]:
        """Every parameter that changes the output (JSON-serialisable); part of the ROI cache key."""
        ...

    def localize(self, image: ImageData, prompt: str, context: dict[str, Any] | None = None) -> LocalizationResult:
        """ROI map of ``image`` (array (H, W[, C]) or (H, W, D)) for ``prompt``.

        Raises:
            MedsslInputError: a problem the user can fix (no match for the prompt, a missing or
                mismatched map file, missing weights).
        """
        ...


#: ``provenance["roi_source"]`` of the backends whose ROI is not a model's answer to the prompt: ground-truth
#: boxes (``files`` with box lists), a classical image-processing rule (``ct-lung-fields``) and the shuffled
#: control (``shuffled``). Tables and previews name a ROI by :func:`roi_source_label`.
ORACLE_ROI = "oracle ROI"
CLASSICAL_ROI = "classical"
SHUFFLED_ROI = "shuffled control"


def roi_source_label(provenance: dict[str, Any]) -> str:
    """How tables and previews name a ROI: ``backend`` or ``backend (roi_source)``, e.g. ``files (oracle ROI)``."""
    backend = str(provenance.get("backend", "?"))
    source = provenance.get("roi_source")
    return f"{backend} ({source})" if source else backend


def medssl_version() -> str:
    """The installed medssl version."""
    from medssl import __version__

    return str(__version__)


def make_provenance(localizer: Localizer, prompt: str, **extra: Any) -> dict[str, Any]:
    """Provenance record of a localization by ``localizer`` for ``prompt``.

    Holds ``backend``, ``model_id``, ``model_revision``, ``params``, ``prompt``, ``medssl_version``,
    ``time`` (UTC, ISO 8601) and any backend-specific ``extra`` entries (e.g. matched structures).
    """
    return {
        "backend": localizer.name,
        "model_id": localizer.model_id,
        "model_revision": localizer.model_revision,
        "params": localizer.params(),
        "prompt": prompt,
        **extra,
        "medssl_version": medssl_version(),
        "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
