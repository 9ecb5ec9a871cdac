"""A folder of ROI maps with provenance, keyed by everything that changes a ROI.

Layout of ``<root>``::

    entries/<key>.roi.nii.gz   3D ROI map (uint8 {0, 1}) with the source image's affine
    entries/<key>.roi.png      2D ROI map (uint8 {0, 1})
    entries/<key>.json         sidecar: key, key parts, provenance, boxes, ROI checksum and size
    manifest.json              coverage, written by :meth:`RoiCache.manifest`

``key`` = sha256 of the JSON of the key parts: the image content hash (voxel bytes, dtype, shape,
affine), the prompt, the backend name, its model id and revision, all its parameters and
:data:`CACHE_FORMAT_VERSION`. A change in any part is a different key, i.e. a miss.

Writes are atomic and ordered: the ROI map first, then the sidecar. A reader only trusts an entry
whose sidecar exists, whose ROI map exists and whose ROI content matches the checksum in the
sidecar, so processes filling one cache at the same time never see partial entries; a sidecar
without its ROI (or with a different one) is a miss.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from medssl.data.io import ImageData, read_image, write_nifti, write_png
from medssl.errors import MedsslInputError
from medssl.localize.base import LocalizationResult, Localizer
from medssl.runtime.atomic import write_json_atomic

#: Version of the cache layout and key recipe; bumping it invalidates every existing entry.
CACHE_FORMAT_VERSION = "1"


def image_content_hash(image: ImageData) -> str:
    """sha256 (hex) of an image's voxel bytes, dtype, shape and affine (4, 4)."""
    arr = np.ascontiguousarray(image.array)
    digest = hashlib.sha256()
    digest.update(f"{arr.dtype.str}|{arr.shape}|".encode())
    digest.update(arr.tobytes())
    digest.update(np.ascontiguousarray(image.affine, dtype=np.float64).tobytes())
    return digest.hexdigest()


def roi_checksum(roi: np.ndarray) -> str:
    """sha256 (hex) of a bool ROI map's shape and voxels."""
    arr = np.ascontiguousarray(np.asarray(roi, dtype=bool))
    return hashlib.sha256(f"{arr.shape}|".encode() + np.packbits(arr.ravel()).tobytes()).hexdigest()


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


class RoiCache:
    """ROI maps on disk, one entry per (image, prompt, backend, model, parameters, format version).

    Counts its own lookups in :attr:`hits` and :attr:`misses`.

    Args:
        root: cache folder (created on the first write).
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise MedsslInputError(self.root, "ROI cache path exists and is not a folder")
        self.hits = 0
        self.misses = 0

    @property
    def entries_dir(self) -> Path:
        return self.root / "entries"

    # -- keys -------------------------------------------------------------------------------------

    def key_parts(self, image: ImageData, prompt: str, localizer: Localizer) -> dict[str, Any]:
        """Everything the ROI depends on, as a JSON-serialisable dict."""
        return {
            "image_sha256": image_content_hash(image),
            "prompt": prompt,
            "backend": localizer.name,
            "model_id": localizer.model_id,
            "model_revision": localizer.model_revision,
            "params": json.loads(_canonical(localizer.params())),
            "format_version": CACHE_FORMAT_VERSION,
        }

    def key(self, image: ImageData, prompt: str, localizer: Localizer) -> str:
        """sha256 (hex) of the canonical JSON of :meth:`key_parts`."""
        return hashlib.sha256(_canonical(self.key_parts(image, prompt, localizer)).encode()).hexdigest()

    def _paths(self, key: str, ndim: int) -> tuple[Path, Path]:
        ext = ".roi.nii.gz" if ndim == 3 else ".roi.png"
        return self.entries_dir / f"{key}{ext}", self.entries_dir / f"{key}.json"

    # -- reading ----------------------------------------------------------------------------------

    @staticmethod
    def _read_sidecar(path: Path) -> dict[str, Any] | None:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def _load(self, key: str, sidecar: dict[str, Any], shape: tuple[int, ...] | None) -> LocalizationResult | None:
        """The entry's result if its ROI file is there and matches the sidecar; None otherwise."""
        if sidecar.get("key") != key or sidecar.get("format_version") != CACHE_FORMAT_VERSION:
            return None
        roi_path = self.entries_dir / str(sidecar.get("roi_file", ""))
        if not roi_path.is_file():
            return None
        try:
            roi = read_image(roi_path).array != 0
        except MedsslInputError:
            return None
        if (shape is not None and roi.shape != shape) or roi_checksum(roi) != sidecar.get("roi_sha256"):
            return None
        boxes = [tuple((int(lo), int(hi)) for lo, hi in box) for box in sidecar.get("boxes", [])]
        return LocalizationResult(roi=roi, boxes=boxes, provenance=dict(sidecar.get("provenance", {})))

    def get(self, image: ImageData, prompt: str, localizer: Localizer) -> LocalizationResult | None:
        """The cached result for this (image, prompt, localizer), or None (a miss).

        Cached results carry ``roi``, ``boxes`` and ``provenance``; intermediates are not stored.
        """
        key = self.key(image, prompt, localizer)
        shape = image.spatial_shape
        _, sidecar_path = self._paths(key, len(shape))
        sidecar = self._read_sidecar(sidecar_path)
        result = None if sidecar is None else self._load(key, sidecar, shape)
        if result is None:
            self.misses += 1
        else:
            self.hits += 1
        return result

    # -- writing ----------------------------------------------------------------------------------

    def put(self, image: ImageData, prompt: str, localizer: Localizer, result: LocalizationResult) -> str:
        """Store ``result`` (ROI first, then the sidecar, both atomically); returns the entry's key."""
        parts = self.key_parts(image, prompt, localizer)
        key = hashlib.sha256(_canonical(parts).encode()).hexdigest()
        shape = image.spatial_shape
        roi = np.asarray(result.roi, dtype=bool)
        if roi.shape != shape:
            raise ValueError(f"ROI shape {roi.shape} does not match the image shape {shape}")
        roi_path, sidecar_path = self._paths(key, len(shape))
        if len(shape) == 3:
            write_nifti(roi_path, roi.astype(np.uint8), image.affine)
        else:
            write_png(roi_path, roi.astype(np.uint8))
        sidecar = {
            "format_version": CACHE_FORMAT_VERSION,
            "key": key,
            "key_parts": parts,
            "roi_file": roi_path.name,
            "roi_sha256": roi_checksum(roi),
            "shape": list(shape),
            "roi_voxels": int(roi.sum()),
            "roi_fraction": float(roi.mean()) if roi.size else 0.0,
            "boxes": [[list(axis) for axis in box] for box in result.boxes],
            "image_source": image.source,
            "provenance": json.loads(_canonical(result.provenance)),
        }
        write_json_atomic(sidecar_path, sidecar)
        return key

    def get_or_compute(self, image: ImageData, prompt: str, localizer: Localizer,
                       context: dict[str, Any] | None = None) -> LocalizationResult:
        """The cached result, or ``localizer.localize(image, prompt, context)`` stored and returned."""
        cached = self.get(image, prompt, localizer)
        if cached is not None:
            return cached
        result = localizer.localize(image, prompt, context)
        self.put(image, prompt, localizer, result)
        return result

    # -- coverage ---------------------------------------------------------------------------------

    def valid_entries(self) -> list[dict[str, Any]]:
        """Sidecars of the complete entries (ROI present and matching), sorted by key."""
        if not self.entries_dir.is_dir():
            return []
        out = []
        for path in sorted(self.entries_dir.glob("*.json")):
            if path.name.startswith("."):  # a temporary file of a write in progress
                continue
            sidecar = self._read_sidecar(path)
            if sidecar is not None and self._load(path.name[: -len(".json")], sidecar, None) is not None:
                out.append(sidecar)
        return out

    def manifest(self) -> dict[str, Any]:
        """Write and return ``<root>/manifest.json``: coverage of the cache.

        Fields: ``format_version``; ``entries`` (complete entries); ``images`` (distinct image
        contents); ``images_with_roi`` (distinct images with at least one non-empty ROI);
        ``empty_entries``; ``mean_roi_fraction`` (mean over entries of ROI voxels / image voxels;
        0.0 for an empty cache); ``backends`` (entries per backend); ``prompts`` (entries per prompt).
        """
        entries = self.valid_entries()
        images = {e["key_parts"]["image_sha256"] for e in entries}
        with_roi = {e["key_parts"]["image_sha256"] for e in entries if e["roi_voxels"] > 0}
        backends: dict[str, int] = {}
        prompts: dict[str, int] = {}
        for e in entries:
            backends[e["key_parts"]["backend"]] = backends.get(e["key_parts"]["backend"], 0) + 1
            prompts[e["key_parts"]["prompt"]] = prompts.get(e["key_parts"]["prompt"], 0) + 1
        info = {
            "format_version": CACHE_FORMAT_VERSION,
            "entries": len(entries),
            "images": len(images),
            "images_with_roi": len(with_roi),
            "empty_entries": sum(1 for e in entries if e["roi_voxels"] == 0),
            "mean_roi_fraction": float(np.mean([e["roi_fraction"] for e in entries])) if entries else 0.0,
            "backends": dict(sorted(backends.items())),
            "prompts": dict(sorted(prompts.items())),
        }
        write_json_atomic(self.root / "manifest.json", info)
        return info
