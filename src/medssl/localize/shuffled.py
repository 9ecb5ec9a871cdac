"""``shuffled`` backend: a control that keeps how much of each image is ROI and destroys where it is.

The ROIs come from a source: a ROI cache (``source=<cache folder>``, its complete entries, optionally of
one ``source_prompt`` / ``source_backend``) or a backend run on a dataset (``source_backend=<name>``,
``source_params={...}``, ``data=<folder>``; the images as ``medssl localize run`` lists them). The source's
images, sorted by file path, form the domain ``0 .. n-1``.

* ``mode="derangement"`` (default): image ``i`` gets the ROI of image ``perm[i]``, where ``perm`` is a
  fixed derangement (a permutation without fixed points) drawn from ``seed`` (:func:`derangement`). The
  partner's ROI map is carried onto the image's grid by nearest-neighbour index scaling (row ``r`` of an
  ``H``-row image reads row ``floor(r * H' / H)`` of the partner's ``H'`` rows, likewise for every axis),
  so images of one size receive the partner's ROI exactly and the dataset's ROI areas are the same
  multiset as the source's.
* ``mode="random-box"``: each of the image's own source boxes moves to a uniformly random position of
  the same size (a generator seeded by ``seed`` and the image's content hash; a box overlapping one
  already placed is redrawn, up to :data:`MAX_TRIES` times), so the image's ROI area stays exactly its
  own whenever its boxes do not overlap.

Either way the ROI / background split of the masking ratios is kept and "where" is destroyed.
Provenance: ``roi_source = "shuffled control"``, the partner image, and every parameter (seed, mode,
source) in ``params()``, with a fingerprint of the source's entries.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medssl.data.io import ImageData, read_image
from medssl.errors import MedsslInputError
from medssl.localize.base import SHUFFLED_ROI, LocalizationResult, Localizer, make_provenance
from medssl.localize.cache import RoiCache, image_content_hash
from medssl.localize.postprocess import Box, boxes_to_mask, component_boxes

#: Draws per box before an overlapping position is accepted (``mode="random-box"``).
MAX_TRIES = 100


def derangement(n: int, seed: int) -> np.ndarray:
    """A permutation ``perm`` of ``0 .. n-1`` with ``perm[i] != i`` for every ``i``, fixed by ``seed``.

    Uniform over derangements: permutations from ``numpy.random.default_rng(seed)`` are drawn until one
    has no fixed point.

    Raises:
        MedsslInputError: ``n < 2`` (one image cannot take another image's ROI).
    """
    if n < 2:
        raise MedsslInputError("shuffled", f"a derangement needs at least two images with a ROI, got {n}")
    rng = np.random.default_rng(seed)
    while True:
        perm = rng.permutation(n)
        if not np.any(perm == np.arange(n)):
            return perm


def carry_roi(roi: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """``roi`` (any grid of the same dimensionality) on a grid of ``shape`` by nearest-neighbour index scaling."""
    if roi.ndim != len(shape):
        raise MedsslInputError("shuffled", f"cannot carry a {roi.ndim}D ROI onto a {len(shape)}D image")
    index = np.ix_(*[(np.arange(n) * m) // n for n, m in zip(shape, roi.shape, strict=True)])
    return np.asarray(roi, dtype=bool)[index]


def random_boxes(boxes: Sequence[Box], shape: Sequence[int], rng: np.random.Generator) -> list[Box]:
    """Each box of ``boxes`` (half-open voxel pairs) at a uniformly random position of the same size in ``shape``."""
    placed: list[Box] = []
    for box in boxes:
        sizes = [hi - lo for lo, hi in box]
        for _ in range(MAX_TRIES):
            starts = [int(rng.integers(0, n - s + 1)) for s, n in zip(sizes, shape, strict=True)]
            moved = tuple((s0, s0 + s) for s0, s in zip(starts, sizes, strict=True))
            if not any(all(a[0] < b[1] and b[0] < a[1] for a, b in zip(moved, other, strict=True))
                       for other in placed):
                break
        placed.append(moved)
    return placed


class _CacheSource:
    """The complete entries of a ROI cache (one per image), sorted by image path."""

    def __init__(self, root: Path, prompt: str | None, backend: str | None) -> None:
        if not root.is_dir():
            raise MedsslInputError(root, "source ROI cache folder does not exist")
        self.cache = RoiCache(root)
        entries = [e for e in self.cache.valid_entries()
                   if (prompt is None or e["key_parts"]["prompt"] == prompt)
                   and (backend is None or e["key_parts"]["backend"] == backend)]
        by_image: dict[str, dict[str, Any]] = {}
        for e in entries:
            sha = e["key_parts"]["image_sha256"]
            if sha in by_image:
                raise MedsslInputError(root, f"several entries for {e.get('image_source')}: choose one with "
                                             "source_prompt= / source_backend=")
            by_image[sha] = e
        self.entries = sorted(by_image.values(), key=lambda e: (str(e.get("image_source", "")), e["key"]))
        self.index = {e["key_parts"]["image_sha256"]: k for k, e in enumerate(self.entries)}
        self.fingerprint = hashlib.sha256("\n".join(e["key"] for e in self.entries).encode()).hexdigest()[:16]

    def __len__(self) -> int:
        return len(self.entries)

    def position(self, image: ImageData) -> int:
        k = self.index.get(image_content_hash(image))
        if k is None:
            raise MedsslInputError(image.source or "image", f"has no ROI in the source cache {self.cache.root}")
        return k

    def result(self, k: int, prompt: str) -> tuple[str, LocalizationResult]:
        """(image path, ROI) of domain image ``k`` (the cache's entry; ``prompt`` is not used)."""
        entry = self.entries[k]
        loaded = self.cache.load_entry(entry)
        if loaded is None:
            raise MedsslInputError(self.cache.root, f"entry {entry['key']} changed while in use")
        return str(entry.get("image_source", "")), loaded


class _BackendSource:
    """A backend run on the images of a dataset folder, sorted by path."""

    def __init__(self, backend: str, params: dict[str, Any], data: Path, prompt: str | None) -> None:
        from medssl.localize import create_localizer
        from medssl.localize.run import list_images

        self.localizer: Localizer = create_localizer(backend, **params)
        self.images = list_images([data])
        self.prompt = prompt
        listing = "\n".join(os.path.abspath(p) for p in self.images)
        self.fingerprint = hashlib.sha256(listing.encode()).hexdigest()[:16]

    def __len__(self) -> int:
        return len(self.images)

    def position(self, image: ImageData) -> int:
        if image.source:
            absolute = [os.path.abspath(p) for p in self.images]
            if os.path.abspath(image.source) in absolute:
                return absolute.index(os.path.abspath(image.source))
        raise MedsslInputError(image.source or "image", "is not one of the source data's images")

    def result(self, k: int, prompt: str) -> tuple[str, LocalizationResult]:
        """(image path, ROI) of domain image ``k`` localized for ``source_prompt`` (default: ``prompt``)."""
        from medssl.localize.run import backend_context

        path = self.images[k]
        name = self.localizer.name
        return str(path), self.localizer.localize(read_image(path), self.prompt or prompt,
                                                  backend_context(name, path))


class ShuffledLocalizer:
    """The shuffled-ROI control (see the module docstring).

    Args:
        source: ROI cache folder whose entries are shuffled.
        source_prompt: only source entries made with this prompt.
        source_backend: only source entries of this backend; with ``data`` instead of ``source``: the
            backend that makes the ROIs.
        source_params: keyword arguments of ``source_backend`` (with ``data``).
        data: dataset folder whose images the source backend localizes.
        seed: fixes the derangement / the random positions.
        mode: ``"derangement"`` or ``"random-box"``.
    """

    name = "shuffled"
    model_id: str | None = None
    model_revision: str | None = None

    def __init__(self, source: str | Path | None = None, source_prompt: str | None = None,
                 source_backend: str | None = None, source_params: dict[str, Any] | None = None,
                 data: str | Path | None = None, seed: int = 0, mode: str = "derangement") -> None:
        if mode not in ("derangement", "random-box"):
            raise MedsslInputError("mode", f"must be 'derangement' or 'random-box', got {mode!r}")
        if (source is None) == (data is None):
            raise MedsslInputError("shuffled", "give either source=<ROI cache> or data=<folder> with "
                                               "source_backend=<backend>")
        if data is not None and source_backend is None:
            raise MedsslInputError("shuffled", "data= needs source_backend=<backend> to make the ROIs")
        self.seed, self.mode = int(seed), mode
        self.source_path = Path(source if source is not None else data)  # type: ignore[arg-type]
        self.source_prompt, self.source_backend = source_prompt, source_backend
        self.source: _CacheSource | _BackendSource
        if source is not None:
            self.source = _CacheSource(self.source_path, source_prompt, source_backend)
        else:
            self.source = _BackendSource(str(source_backend), dict(source_params or {}), self.source_path,
                                         source_prompt)
        self._perm = derangement(len(self.source), self.seed) if mode == "derangement" else None

    def params(self) -> dict[str, Any]:
        extra = ({"source_params": self.source.localizer.params()} if isinstance(self.source, _BackendSource)
                 else {})
        return {"mode": self.mode, "seed": self.seed, "source": str(self.source_path.resolve()),
                "source_kind": "cache" if isinstance(self.source, _CacheSource) else "backend",
                "source_prompt": self.source_prompt, "source_backend": self.source_backend,
                "source_fingerprint": self.source.fingerprint, **extra}

    def localize(self, image: ImageData, prompt: str, context: dict[str, Any] | None = None) -> LocalizationResult:
        """ROI (H, W[, D]) bool: another image's ROI (derangement) or the own boxes moved at random.

        Raises:
            MedsslInputError: the image is not in the source, or a partner of another dimensionality.
        """
        k = self.source.position(image)
        shape = image.spatial_shape
        if self._perm is not None:
            partner, found = self.source.result(int(self._perm[k]), prompt)
            roi = carry_roi(found.roi, shape)
            boxes = component_boxes(roi)
        else:
            partner, found = self.source.result(k, prompt)
            digest = int(image_content_hash(image)[:16], 16)
            boxes = random_boxes(found.boxes, shape, np.random.default_rng([self.seed, digest]))
            roi = boxes_to_mask(boxes, shape)
        provenance = make_provenance(self, prompt, roi_source=SHUFFLED_ROI, partner=partner,
                                     source_roi_voxels=int(np.count_nonzero(found.roi)))
        return LocalizationResult(roi=roi, boxes=boxes, provenance=provenance)
