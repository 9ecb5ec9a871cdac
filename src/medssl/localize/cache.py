"""A folder of ROI maps with provenance, keyed by everything that changes a ROI.

Layout of ``<root>``::

    entries/<key>.roi.nii.gz          3D ROI map (uint8 {0, 1}) with the source image's affine
    entries/<key>.roi.png             2D ROI map (uint8 {0, 1})
    entries/<key>.intermediates.npz   optional, compressed: saliency (float16), coarse_mask, refined_mask
    entries/<key>.json                sidecar: key, key parts, provenance, boxes, checksums and sizes
    manifest.json                     coverage, written by :meth:`RoiCache.manifest`
    runs/, previews/                  written by :mod:`medssl.localize.run`

``key`` = sha256 of the JSON of the key parts: the image content hash (voxel bytes, dtype, shape,
affine), the prompt, the backend name, its model id and revision, all its parameters, a digest of the
localization context (see :func:`context_digest`; e.g. the structures map file and its name table) and
:data:`CACHE_FORMAT_VERSION`. A change in any part is a different key, i.e. a miss.

Writes are atomic and ordered: the ROI map and the intermediates first, then the sidecar. A reader
only trusts an entry whose sidecar exists, whose ROI map exists and matches the checksum in the sidecar,
and whose listed intermediates file exists (and, when read, matches its checksum), so processes filling
one cache at the same time never see partial entries; anything else is a miss.

:meth:`RoiCache.lookup` finds an image's entry by its content hash alone (for consumers such as
pretraining that do not rebuild the localizer); :meth:`RoiCache.valid_entries` lists every complete entry.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from medssl.data.io import ImageData, read_image, write_nifti, write_png
from medssl.errors import MedsslInputError
from medssl.localize.base import LocalizationResult, Localizer, roi_source_label
from medssl.runtime.atomic import atomic_path, write_json_atomic
from medssl.tensors import to_numpy

#: Version of the cache layout and key recipe; bumping it invalidates every existing entry.
#: "2": the key holds a digest of the localization context; entries may carry intermediates.
CACHE_FORMAT_VERSION = "2"

#: Intermediate maps stored beside a ROI when a backend produces them (all on the image grid).
INTERMEDIATES: tuple[str, ...] = ("saliency", "coarse_mask", "refined_mask")

_CHUNK = 1 << 22


def image_content_hash(image: ImageData) -> str:
    """sha256 (hex) of an image's voxel bytes, dtype, shape and affine (4, 4)."""
    arr = np.ascontiguousarray(image.array)
    digest = hashlib.sha256()
    digest.update(f"{arr.dtype.str}|{arr.shape}|".encode())
    digest.update(arr.tobytes())
    digest.update(np.ascontiguousarray(image.affine, dtype=np.float64).tobytes())
    return digest.hexdigest()


def array_content_hash(array: np.ndarray) -> str:
    """sha256 (hex) of an array's dtype, shape and bytes."""
    arr = np.ascontiguousarray(array)
    return hashlib.sha256(f"{arr.dtype.str}|{arr.shape}|".encode() + arr.tobytes()).hexdigest()


def file_content_hash(path: str | Path) -> str:
    """sha256 (hex) of a file's bytes; for a folder, of the relative names and bytes of every file in it."""
    path = Path(path)
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(f"{file.relative_to(path).as_posix()}\0".encode())
        with open(file, "rb") as fh:
            for chunk in iter(partial(fh.read, _CHUNK), b""):
                digest.update(chunk)
    return digest.hexdigest()


def roi_checksum(roi: np.ndarray) -> str:
    """sha256 (hex) of a bool ROI map's shape and voxels."""
    arr = np.ascontiguousarray(np.asarray(roi, dtype=bool))
    return hashlib.sha256(f"{arr.shape}|".encode() + np.packbits(arr.ravel()).tobytes()).hexdigest()


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def _names_a_file(value: str) -> bool:
    try:
        return bool(value) and Path(value).exists()
    except (OSError, ValueError):  # too long for a path, or a NUL byte: plain text
        return False


def _digest_value(value: Any) -> Any:
    if isinstance(value, ImageData):
        return {"image_sha256": image_content_hash(value)}
    if hasattr(value, "detach"):  # a tensor
        value = to_numpy(value)
    if isinstance(value, np.ndarray):
        return {"array_sha256": array_content_hash(value)}
    if isinstance(value, os.PathLike) or (isinstance(value, str) and _names_a_file(value)):
        path = Path(value)
        return {"file_sha256": file_content_hash(path)} if path.exists() else {"missing_path": str(path)}
    if isinstance(value, Mapping):
        return {str(k): _digest_value(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, list | tuple):
        return [_digest_value(v) for v in value]
    return json.loads(_canonical(value))


def context_digest(context: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """What a localization context contributes to the cache key (None for no / an empty context).

    Values are digested by content: paths (``os.PathLike``, or text naming an existing file or folder)
    → sha256 of the file bytes (a folder: of its files' names and bytes), so moving a dataset keeps its
    keys and editing a map changes them; arrays and tensors → sha256 of dtype, shape and bytes;
    :class:`ImageData` → :func:`image_content_hash`; mappings and sequences → item by item; anything
    else → its JSON value.
    """
    if not context:
        return None
    return _digest_value(dict(context))


class RoiCache:
    """ROI maps on disk, one entry per (image, prompt, backend, model, parameters, context, format version).

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
        self._index: dict[str, list[str]] = {}
        self._index_stamp: int | None = None

    @property
    def entries_dir(self) -> Path:
        return self.root / "entries"

    # -- keys -------------------------------------------------------------------------------------

    def key_parts(self, image: ImageData, prompt: str, localizer: Localizer,
                  context: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Everything the ROI depends on, as a JSON-serialisable dict (see :func:`context_digest`)."""
        return {
            "image_sha256": image_content_hash(image),
            "prompt": prompt,
            "backend": localizer.name,
            "model_id": localizer.model_id,
            "model_revision": localizer.model_revision,
            "params": json.loads(_canonical(localizer.params())),
            "context": context_digest(context),
            "format_version": CACHE_FORMAT_VERSION,
        }

    def key(self, image: ImageData, prompt: str, localizer: Localizer,
            context: Mapping[str, Any] | None = None) -> str:
        """sha256 (hex) of the canonical JSON of :meth:`key_parts`."""
        return _key_of(self.key_parts(image, prompt, localizer, context))

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

    def _read_intermediates(self, info: Mapping[str, Any], shape: tuple[int, ...]) -> dict[str, np.ndarray] | None:
        path = self.entries_dir / str(info.get("file", ""))
        try:
            data = path.read_bytes()
        except OSError:
            return None
        if hashlib.sha256(data).hexdigest() != info.get("sha256"):
            return None
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as npz:
                arrays = {name: npz[name] for name in npz.files if name in INTERMEDIATES}
        except (OSError, ValueError, KeyError):
            return None
        if any(a.shape != shape for a in arrays.values()):
            return None
        out = {name: (a.astype(np.float32) if name == "saliency" else a.astype(bool)) for name, a in arrays.items()}
        return out

    def _load(self, key: str, sidecar: dict[str, Any], shape: tuple[int, ...] | None,
              with_intermediates: bool = False) -> LocalizationResult | None:
        """The entry's result if its files are there and match the sidecar; None otherwise."""
        if sidecar.get("key") != key or sidecar.get("format_version") != CACHE_FORMAT_VERSION:
            return None
        roi_path = self.entries_dir / str(sidecar.get("roi_file", ""))
        inter = sidecar.get("intermediates")
        if not roi_path.is_file() or (inter and not (self.entries_dir / str(inter.get("file", ""))).is_file()):
            return None
        try:
            roi = read_image(roi_path).array != 0
        except MedsslInputError:
            return None
        if (shape is not None and roi.shape != shape) or roi_checksum(roi) != sidecar.get("roi_sha256"):
            return None
        boxes = [tuple((int(lo), int(hi)) for lo, hi in box) for box in sidecar.get("boxes", [])]
        result = LocalizationResult(roi=roi, boxes=boxes, provenance=dict(sidecar.get("provenance", {})))
        if with_intermediates and inter:
            arrays = self._read_intermediates(inter, roi.shape)
            if arrays is None:
                return None
            for name, arr in arrays.items():
                setattr(result, name, arr)
        return result

    def get(self, image: ImageData, prompt: str, localizer: Localizer, context: Mapping[str, Any] | None = None,
            *, with_intermediates: bool = False) -> LocalizationResult | None:
        """The cached result for this (image, prompt, localizer, context), or None (a miss).

        Cached results carry ``roi``, ``boxes`` and ``provenance``; with ``with_intermediates`` also the
        stored ``saliency`` (float32 from float16 storage), ``coarse_mask`` and ``refined_mask`` (bool),
        and an intermediates file that is missing or fails its checksum makes the entry a miss.
        """
        key = self.key(image, prompt, localizer, context)
        shape = image.spatial_shape
        _, sidecar_path = self._paths(key, len(shape))
        sidecar = self._read_sidecar(sidecar_path)
        result = None if sidecar is None else self._load(key, sidecar, shape, with_intermediates)
        self._count(result)
        return result

    def load_entry(self, sidecar: Mapping[str, Any], *, with_intermediates: bool = False) -> LocalizationResult | None:
        """The result of an entry given its sidecar (e.g. from :meth:`valid_entries`); None when incomplete."""
        return self._load(str(sidecar.get("key", "")), dict(sidecar), None, with_intermediates)

    def _count(self, result: LocalizationResult | None) -> None:
        if result is None:
            self.misses += 1
        else:
            self.hits += 1

    # -- lookup by image alone --------------------------------------------------------------------

    def _image_index(self) -> dict[str, list[str]]:
        """image sha256 -> sidecar file names; rebuilt when the entries folder changed."""
        try:
            stamp = self.entries_dir.stat().st_mtime_ns
        except OSError:
            return {}
        if stamp != self._index_stamp:
            index: dict[str, list[str]] = {}
            for path in sorted(self.entries_dir.glob("*.json")):
                sidecar = None if path.name.startswith(".") else self._read_sidecar(path)
                parts = (sidecar or {}).get("key_parts")
                if isinstance(parts, dict) and "image_sha256" in parts:
                    index.setdefault(str(parts["image_sha256"]), []).append(path.name)
            self._index, self._index_stamp = index, stamp
        return self._index

    def lookup(self, image: ImageData, prompt: str | None = None, backend: str | None = None, *,
               same_map_ok: bool = False, hint: str = "choose one with prompt= / backend=") -> LocalizationResult | None:
        """The cached ROI of ``image`` found by its content hash alone (optionally filtered).

        Pretraining uses this to find each image's ROI without rebuilding the localizer.

        Args:
            image: the image (its voxels, dtype, shape and affine identify it).
            prompt: only entries made with this prompt.
            backend: only entries made by this backend.
            same_map_ok: several matching entries whose ROI maps are identical are no ambiguity (the
                first, in key order, is returned).
            hint: how the caller chooses between entries, appended to the ambiguity error.

        Returns:
            The one matching complete entry, or None (a miss).

        Raises:
            MedsslInputError: several entries match; the message lists their prompts and backends.
        """
        names = self._image_index().get(image_content_hash(image), [])
        found: list[tuple[dict[str, Any], LocalizationResult]] = []
        maps: set[Any] = set()
        for name in names:
            sidecar = self._read_sidecar(self.entries_dir / name)
            if sidecar is None or not _matches(sidecar, prompt, backend):
                continue
            result = self._load(name[: -len(".json")], sidecar, image.spatial_shape)
            if result is not None:
                found.append((sidecar.get("key_parts", {}), result))
                maps.add(sidecar.get("roi_sha256"))
        if len(found) > 1 and not (same_map_ok and len(maps) == 1):
            seen: dict[str, int] = {}
            for parts, _ in found:
                label = f"prompt '{parts.get('prompt')}' with backend '{parts.get('backend')}'"
                seen[label] = seen.get(label, 0) + 1
            listed = "; ".join(f"{label}{f' (x{n}: other parameters or context)' if n > 1 else ''}"
                               for label, n in sorted(seen.items()))
            raise MedsslInputError(image.source or "image", f"{len(found)} cached ROI maps match this image in "
                                   f"{self.root} ({listed}); {hint}")
        result = found[0][1] if found else None
        self._count(result)
        return result

    # -- writing ----------------------------------------------------------------------------------

    def _write_intermediates(self, key: str, result: LocalizationResult,
                             shape: tuple[int, ...]) -> dict[str, Any] | None:
        arrays: dict[str, np.ndarray] = {}
        for name in INTERMEDIATES:
            value = getattr(result, name)
            if value is None:
                continue
            arr = np.asarray(value)
            if arr.shape != shape:
                raise ValueError(f"{name} shape {arr.shape} does not match the image shape {shape}")
            arrays[name] = arr.astype(np.float16) if name == "saliency" else arr.astype(bool)
        if not arrays:
            return None
        path = self.entries_dir / f"{key}.intermediates.npz"
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez_compressed(fh, **arrays)  # type: ignore[arg-type]  # numpy's stub: allow_pickle
            checksum = file_content_hash(tmp)
        return {"file": path.name, "sha256": checksum,
                "arrays": {name: {"dtype": a.dtype.name, "shape": list(a.shape)} for name, a in arrays.items()}}

    def put(self, image: ImageData, prompt: str, localizer: Localizer, result: LocalizationResult,
            context: Mapping[str, Any] | None = None) -> str:
        """Store ``result`` (ROI and intermediates first, then the sidecar, all atomically); returns the key."""
        parts = self.key_parts(image, prompt, localizer, context)
        key = _key_of(parts)
        shape = image.spatial_shape
        roi = np.asarray(result.roi, dtype=bool)
        if roi.shape != shape:
            raise ValueError(f"ROI shape {roi.shape} does not match the image shape {shape}")
        roi_path, sidecar_path = self._paths(key, len(shape))
        if len(shape) == 3:
            write_nifti(roi_path, roi.astype(np.uint8), image.affine)
        else:
            write_png(roi_path, roi.astype(np.uint8))
        intermediates = self._write_intermediates(key, result, shape)
        sidecar = {
            "format_version": CACHE_FORMAT_VERSION,
            "key": key,
            "key_parts": parts,
            "roi_file": roi_path.name,
            "roi_sha256": roi_checksum(roi),
            "intermediates": intermediates,
            "shape": list(shape),
            "spacing": [float(s) for s in image.spacing],
            "roi_voxels": int(roi.sum()),
            "roi_fraction": float(roi.mean()) if roi.size else 0.0,
            "boxes": [[list(axis) for axis in box] for box in result.boxes],
            "image_source": image.source,
            "provenance": json.loads(_canonical(result.provenance)),
        }
        write_json_atomic(sidecar_path, sidecar)
        return key

    def get_or_compute(self, image: ImageData, prompt: str, localizer: Localizer,
                       context: Mapping[str, Any] | None = None, *,
                       with_intermediates: bool = False) -> LocalizationResult:
        """The cached result, or ``localizer.localize(image, prompt, context)`` stored and returned.

        A computed result keeps every intermediate the backend produced; a cached one carries them
        only with ``with_intermediates``.
        """
        cached = self.get(image, prompt, localizer, context, with_intermediates=with_intermediates)
        if cached is not None:
            return cached
        result = localizer.localize(image, prompt, None if context is None else dict(context))
        self.put(image, prompt, localizer, result, context)
        return result

    # -- coverage ---------------------------------------------------------------------------------

    def valid_entries(self, prompt: str | None = None, backend: str | None = None) -> list[dict[str, Any]]:
        """Sidecars of the complete entries (ROI present and matching), sorted by key; optionally only those
        made with ``prompt`` / by ``backend``."""
        if not self.entries_dir.is_dir():
            return []
        out = []
        for path in sorted(self.entries_dir.glob("*.json")):
            if path.name.startswith("."):  # a temporary file of a write in progress
                continue
            sidecar = self._read_sidecar(path)
            if sidecar is not None and _matches(sidecar, prompt, backend) and \
                    self._load(path.name[: -len(".json")], sidecar, None) is not None:
                out.append(sidecar)
        return out

    def manifest(self) -> dict[str, Any]:
        """Write and return ``<root>/manifest.json``: coverage of the cache.

        Fields: ``format_version``; ``entries`` (complete entries); ``images`` (distinct image
        contents); ``images_with_roi`` (distinct images with at least one non-empty ROI);
        ``empty_entries``; ``entries_with_intermediates``; ``mean_roi_fraction`` (mean over entries of
        ROI voxels / image voxels; 0.0 for an empty cache); ``backends`` (entries per backend, named with
        their ROI source where they have one, e.g. ``files (oracle ROI)``);
        ``prompts`` (entries per prompt).
        """
        entries = self.valid_entries()
        images = {e["key_parts"]["image_sha256"] for e in entries}
        with_roi = {e["key_parts"]["image_sha256"] for e in entries if e["roi_voxels"] > 0}
        backends: dict[str, int] = {}
        prompts: dict[str, int] = {}
        for e in entries:
            source = roi_source_label({**e.get("provenance", {}), "backend": e["key_parts"]["backend"]})
            backends[source] = backends.get(source, 0) + 1
            prompts[e["key_parts"]["prompt"]] = prompts.get(e["key_parts"]["prompt"], 0) + 1
        info = {
            "format_version": CACHE_FORMAT_VERSION,
            "entries": len(entries),
            "images": len(images),
            "images_with_roi": len(with_roi),
            "empty_entries": sum(1 for e in entries if e["roi_voxels"] == 0),
            "entries_with_intermediates": sum(1 for e in entries if e.get("intermediates")),
            "mean_roi_fraction": float(np.mean([e["roi_fraction"] for e in entries])) if entries else 0.0,
            "backends": dict(sorted(backends.items())),
            "prompts": dict(sorted(prompts.items())),
        }
        write_json_atomic(self.root / "manifest.json", info)
        return info


def _key_of(parts: Mapping[str, Any]) -> str:
    return hashlib.sha256(_canonical(parts).encode()).hexdigest()


def _matches(sidecar: Mapping[str, Any], prompt: str | None, backend: str | None) -> bool:
    """Whether an entry was made with ``prompt`` and by ``backend`` (None: any)."""
    parts = sidecar.get("key_parts", {})
    return (prompt is None or parts.get("prompt") == prompt) and (backend is None or parts.get("backend") == backend)
