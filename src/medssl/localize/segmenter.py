"""``segmenter`` backend: a segmentation model trained with medssl answers prompts that name its classes.

The way people use an organ segmenter (TotalSegmentator for CT) as a localizer: a run trained on a few
labeled scans (``medssl semi train``, any method) predicts a label map for every scan; its class names
(``names``) turn the label map into a named-structures map, and the prompt is matched to those names
exactly as the ``structures`` backend does (:mod:`medssl.localize.structures`: sentence-embedding
similarity, side check, focus on the naming phrase). ROI = boxes around the matched classes' predicted
components, expanded by ``expand_ratio``.

No test-time label is read: on a benchmark, train the segmenter on the labeled training cases only.
The cache key holds the run, the checkpoint's content digest, the class names and the matching
parameters, so a retrained model never reuses stale ROI maps.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from medssl.data.io import ImageData
from medssl.errors import MedsslInputError
from medssl.localize.base import LocalizationResult, make_provenance
from medssl.localize.structures import SentenceEncoder, StructuresLocalizer, read_structure_names


def parse_class_names(names: str | Path | dict[int, str]) -> dict[int, str]:
    """Class id → name of a segmentation model's foreground classes.

    Accepted: a mapping; a JSON file ``{"1": "left atrium", ...}``; ``"1=left atrium,2=aorta"``; or plain
    comma-separated names, numbered 1, 2, ... in order (``"left atrium"``).

    Raises:
        MedsslInputError: empty names, a malformed entry, id 0 (background) or a repeated id.
    """
    if isinstance(names, dict):
        table = {int(k): str(v) for k, v in names.items()}
    elif Path(str(names)).suffix == ".json" or Path(str(names)).is_file():
        return read_structure_names(names)
    else:
        table = {}
        for pos, part in enumerate(p.strip() for p in str(names).split(",")):
            if not part:
                raise MedsslInputError("names", f"empty class name in {names!r}")
            key, sep, value = part.partition("=")
            cid, name = (key.strip(), value.strip()) if sep else (str(pos + 1), part)
            if not cid.isdigit() or not name:
                raise MedsslInputError("names", f"expected 'id=name' or a plain name, got {part!r}")
            if int(cid) in table:
                raise MedsslInputError("names", f"class id {cid} is named twice")
            table[int(cid)] = name
    if not table:
        raise MedsslInputError("names", "no class names given")
    if 0 in table:
        raise MedsslInputError("names", "class 0 is the background and cannot be named as a target")
    return table


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest()[:16]


class SegmenterLocalizer:
    """Prompt → classes of a trained medssl segmentation run → boxes (see the module docstring).

    Args:
        run: run directory of a trained segmentation run (``medssl semi train``).
        names: its foreground class names (see :func:`parse_class_names`), e.g. ``"left atrium"``.
        checkpoint: which checkpoint predicts (``final`` by default).
        device: torch device for the prediction (default: CUDA when available).
        threshold, margin, top_k, expand_ratio, max_components, connectivity: prompt matching and box
            settings of :class:`~medssl.localize.structures.StructuresLocalizer`.
        encoder: a loaded sentence encoder to share.

    Raises:
        MedsslInputError: not a run directory, a missing checkpoint, bad names or a class id the model
            does not predict.
    """

    name = "segmenter"

    def __init__(self, run: str | Path, names: str | Path | dict[int, str], checkpoint: str = "final",
                 device: str | None = None, threshold: float = 0.4, margin: float = 0.15,
                 top_k: int | None = None, expand_ratio: float = 1.0, max_components: int | None = None,
                 connectivity: int | None = None, encoder: SentenceEncoder | None = None) -> None:
        from medssl.engine.semi import RunPredictor

        self.run = Path(run)
        if not (self.run / "config.yaml").is_file():
            raise MedsslInputError(self.run, "not a medssl run directory (no config.yaml)")
        self.class_names = parse_class_names(names)
        self.checkpoint = str(checkpoint)
        self.predictor = RunPredictor(self.run, self.checkpoint, device)
        too_high = sorted(c for c in self.class_names if c >= self.predictor.n_classes)
        if too_high:
            raise MedsslInputError("names", f"class id(s) {too_high} named, but the model of {self.run} predicts "
                                   f"classes 0..{self.predictor.n_classes - 1}")
        self.structures = StructuresLocalizer(threshold=threshold, margin=margin, top_k=top_k,
                                              expand_ratio=expand_ratio, max_components=max_components,
                                              connectivity=connectivity, encoder=encoder)
        self._digest = _file_digest(self.predictor.checkpoint_path)

    @property
    def model_id(self) -> str:
        """The run directory (absolute) and checkpoint that segment."""
        return f"{self.run.resolve()}#{self.checkpoint}"

    @property
    def model_revision(self) -> str:
        """Content digest of the checkpoint file."""
        return self._digest

    def params(self) -> dict[str, Any]:
        return {"run": str(self.run.resolve()), "checkpoint": self.checkpoint, "checkpoint_digest": self._digest,
                "names": {str(k): v for k, v in sorted(self.class_names.items())},
                "matching": self.structures.params(), "sentence_model_revision": self.structures.model_revision}

    def localize(self, image: ImageData, prompt: str, context: dict[str, Any] | None = None) -> LocalizationResult:
        """ROI (H, W, D) bool: boxes around the predicted voxels of the classes ``prompt`` names."""
        if len(image.spatial_shape) != 3 or image.meta.get("channels_last"):
            raise MedsslInputError(image.source or "image", f"the segmenter predicts 3D scans; got an image of "
                                   f"shape {image.array.shape}")
        if not np.isfinite(np.asarray(image.array, dtype=np.float32)).all():
            raise MedsslInputError(image.source or "image", "the scan holds NaN or infinite values")
        labels = self.predictor.labels(image.array)
        found = self.structures.localize(image, prompt, context={"structures": labels.astype(np.int64),
                                                                 "structure_names": self.class_names})
        matched = found.provenance.get("matched", [])
        provenance = make_provenance(
            self, prompt, roi_source="model prediction (no label read)", matched=matched,
            scores=found.provenance.get("scores", {}), n_components=found.provenance.get("n_components"),
            predicted_voxels={str(c): int((labels == c).sum()) for c in sorted(self.class_names)},
        )
        return LocalizationResult(roi=found.roi, coarse_mask=found.coarse_mask, boxes=found.boxes,
                                  provenance=provenance)


__all__ = ["SegmenterLocalizer", "parse_class_names"]
