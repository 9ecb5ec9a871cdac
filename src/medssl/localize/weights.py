"""Model references for the vision-language backends: a hub id or a local directory, loaded offline-first.

A *model reference* is what a user passes as ``--model`` / ``--sam-model``:

* a local directory (it exists on disk, or the reference starts with ``/``, ``.``, ``~`` or
  ``local-dir:``): the model is loaded from that folder only;
* otherwise a hub id (``owner/name``, optionally ``hf-hub:owner/name``): loaded through the Hugging Face
  hub client, which uses the local cache (``~/.cache/huggingface/hub`` or ``cache_dir``) and downloads
  only where a network is reachable and ``HF_HUB_OFFLINE`` is not set.

Any failure becomes one :class:`~medssl.errors.MissingWeightsError` line that names the model, the
reason, and how to provide the weights (``huggingface-cli download <id>`` on a machine with internet
and copy the cache, or a local directory as the backend parameter, e.g. ``--param model=DIR``).

Revisions (part of every ROI cache key): the commit hash of the cached hub snapshot, or for a local
directory ``local-sha256:<16 hex>`` of its JSON config files (names and contents) and its weight files
(names and sizes); for modules handed over in memory, ``weights-sha256:<16 hex>`` of their state dict.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medssl.errors import MissingWeightsError

HF_HUB_PREFIX = "hf-hub:"
LOCAL_DIR_PREFIX = "local-dir:"

#: File endings counted as weight files in a local model directory.
WEIGHT_SUFFIXES: tuple[str, ...] = (".safetensors", ".bin", ".pth", ".pt", ".ckpt", ".h5", ".msgpack")

#: Longest failure reason quoted in a missing-weights message (characters).
_REASON_CHARS = 240


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from.

    Attributes:
        ref: the reference as the user gave it.
        hub_id: ``owner/name`` for a hub reference, else None.
        local_dir: the folder for a local reference, else None.
    """

    ref: str
    hub_id: str | None = None
    local_dir: Path | None = None

    @property
    def is_local(self) -> bool:
        return self.local_dir is not None

    @property
    def model_id(self) -> str:
        """The hub id, or the local folder's absolute path."""
        if self.local_dir is not None:
            return str(self.local_dir.resolve())
        return str(self.hub_id)


def one_line(text: str, limit: int = _REASON_CHARS) -> str:
    """``text`` with all whitespace runs (newlines included) collapsed to one space, cut to ``limit``."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def missing_weights(ref: str, what: str, reason: str, *, hub_ids: tuple[str, ...], flag: str) -> MissingWeightsError:
    """The one-line error for a model that cannot be loaded.

    Args:
        ref: the reference as given (the error's source).
        what: the model's name for humans (``"BiomedCLIP"``, ``"SAM"``, ``"CLIPSeg"``).
        reason: why loading failed (flattened to one line).
        hub_ids: hub ids to download (the first is the model itself).
        flag: the backend parameter that takes a local directory (``"model"``, ``"sam_model"``).
    """
    downloads = " and ".join(f"`huggingface-cli download {h}`" for h in hub_ids)
    return MissingWeightsError(
        ref, f"{what} weights not found ({one_line(reason)}); provide them with {downloads} on a machine with "
             f"internet and copy the Hugging Face cache (~/.cache/huggingface/hub) here, or pass a local "
             f"directory as {flag}=DIR (medssl localize --param {flag}=DIR)")


def parse_model_ref(ref: str | Path, *, what: str, flag: str, default_hub_id: str) -> ModelSource:
    """Classify ``ref`` as a local directory or a hub id (see the module docstring).

    Raises:
        MissingWeightsError: a local reference whose folder does not exist (or is a file), or an empty one.
    """
    text = str(ref).strip()
    if not text:
        raise missing_weights(str(ref), what, "empty model reference", hub_ids=(default_hub_id,), flag=flag)
    explicit_local = text.startswith(LOCAL_DIR_PREFIX)
    path_text = text[len(LOCAL_DIR_PREFIX):] if explicit_local else text
    path = Path(path_text).expanduser()
    looks_local = explicit_local or path_text.startswith(("/", ".", "~")) or path.exists()
    if looks_local:
        if not path.is_dir():
            reason = "not a directory" if path.exists() else "no such directory"
            raise missing_weights(text, what, reason, hub_ids=(default_hub_id,), flag=flag)
        return ModelSource(ref=text, local_dir=path)
    hub_id = text[len(HF_HUB_PREFIX):] if text.startswith(HF_HUB_PREFIX) else text
    return ModelSource(ref=text, hub_id=hub_id)


def local_revision(folder: str | Path) -> str:
    """``local-sha256:<16 hex>`` of a model folder: JSON files (name + content), weight files (name + size)."""
    folder = Path(folder)
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if path.suffix == ".json":
            digest.update(f"json|{rel}|".encode())
            digest.update(path.read_bytes())
        elif path.name.endswith(WEIGHT_SUFFIXES):
            digest.update(f"weights|{rel}|{path.stat().st_size}|".encode())
    return "local-sha256:" + digest.hexdigest()[:16]


def hub_revision(hub_id: str, filename: str, cache_dir: str | Path | None = None) -> str | None:
    """Commit hash of the cached snapshot holding ``filename`` of ``hub_id`` (None if not cached)."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(hub_id, filename, cache_dir=None if cache_dir is None else str(cache_dir))
    if not isinstance(found, str):
        return None
    # <cache>/models--owner--name/snapshots/<commit>/<filename>
    return Path(found).parents[len(Path(filename).parts) - 1].name


def module_fingerprint(*modules: Any) -> str:
    """``weights-sha256:<16 hex>`` of the state dicts of ``modules`` (names, dtypes, shapes, values)."""
    import torch

    digest = hashlib.sha256()
    for module in modules:
        if module is None:
            digest.update(b"none|")
            continue
        for name, tensor in module.state_dict().items():
            t = tensor.detach().to("cpu").contiguous()
            digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
            if t.dtype == torch.bfloat16:
                t = t.float()
            digest.update(t.numpy().tobytes())
    return "weights-sha256:" + digest.hexdigest()[:16]


def resolve_device(device: str) -> str:
    """``"auto"`` → ``"cuda"`` when a GPU is visible, else ``"cpu"``; any other torch device string unchanged."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


# ------------------------------------------------------------------------------------------ open_clip
@dataclass
class LoadedClip:
    """An open_clip model with its tokenizer and image transform.

    Attributes:
        model: the CLIP model (eval mode, on the requested device).
        tokenizer: ``tokenizer(list_of_texts) -> LongTensor (N, context_length)``.
        preprocess: the model's inference transform (PIL image → (3, S, S) tensor).
        model_id: hub id or local folder.
        revision: see the module docstring.
    """

    model: Any
    tokenizer: Any
    preprocess: Any
    model_id: str
    revision: str | None


def _open_clip_text_hub_ids(source: ModelSource, cache_dir: str | Path | None) -> tuple[str, ...]:
    """Hub ids of an open_clip model's HF text tower / tokenizer, read from a config already on disk."""
    config_path: Path | None = None
    if source.local_dir is not None:
        config_path = source.local_dir / "open_clip_config.json"
    elif source.hub_id is not None:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(source.hub_id, "open_clip_config.json",
                                       cache_dir=None if cache_dir is None else str(cache_dir))
        config_path = Path(found) if isinstance(found, str) else None
    if config_path is None or not config_path.is_file():
        return ()
    try:
        cfg = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ()
    text_cfg = cfg.get("model_cfg", cfg).get("text_cfg", {})
    ids = [text_cfg.get("hf_model_name"), text_cfg.get("hf_tokenizer_name")]
    return tuple(dict.fromkeys(i for i in ids if isinstance(i, str) and i))


def load_open_clip(ref: str | Path, *, what: str = "BiomedCLIP", flag: str = "model",
                   default_hub_id: str, device: str = "cpu", cache_dir: str | Path | None = None) -> LoadedClip:
    """Load an open_clip model, tokenizer and inference transform from a hub id or a local folder.

    A local folder holds ``open_clip_config.json`` and the weights (``open_clip_model.safetensors``,
    ``open_clip_pytorch_model.bin``, ...), as a hub snapshot of an open_clip model does.

    Raises:
        MissingWeightsError: the model (or its text tower's config / tokenizer) cannot be loaded.
    """
    source = parse_model_ref(ref, what=what, flag=flag, default_hub_id=default_hub_id)
    name = f"{LOCAL_DIR_PREFIX}{source.local_dir}" if source.is_local else f"{HF_HUB_PREFIX}{source.hub_id}"
    try:
        import open_clip

        # require_pretrained: a config without its weights must fail, never give a randomly initialised model
        model, _, preprocess = open_clip.create_model_and_transforms(
            name, device=resolve_device(device), cache_dir=None if cache_dir is None else str(cache_dir),
            require_pretrained=True)
        tokenizer = open_clip.get_tokenizer(name, cache_dir=None if cache_dir is None else str(cache_dir))
    except Exception as exc:  # any failure here means the weights / configs are not available
        hub_ids = (source.hub_id or default_hub_id, *_open_clip_text_hub_ids(source, cache_dir))
        raise missing_weights(source.ref, what, f"{type(exc).__name__}: {exc}",
                              hub_ids=tuple(dict.fromkeys(hub_ids)), flag=flag) from exc
    model.eval()
    if source.is_local:
        revision: str | None = local_revision(source.local_dir)  # type: ignore[arg-type]
    else:
        revision = hub_revision(str(source.hub_id), "open_clip_config.json", cache_dir)
    return LoadedClip(model=model, tokenizer=tokenizer, preprocess=preprocess, model_id=source.model_id,
                      revision=revision)


# --------------------------------------------------------------------------------------- transformers
@dataclass
class LoadedHfModel:
    """A transformers model with its processor.

    Attributes:
        model: the model (eval mode, on the requested device).
        processor: its processor (image processor and, where the model reads text, tokenizer).
        model_id: hub id or local folder.
        revision: see the module docstring.
    """

    model: Any
    processor: Any
    model_id: str
    revision: str | None


def load_hf_model(ref: str | Path, model_cls: Any, processor_cls: Any, *, what: str, flag: str,
                  default_hub_id: str, device: str = "cpu", cache_dir: str | Path | None = None) -> LoadedHfModel:
    """Load ``model_cls`` + ``processor_cls`` (transformers classes) from a hub id or a local folder.

    Raises:
        MissingWeightsError: the model or its processor cannot be loaded.
    """
    source = parse_model_ref(ref, what=what, flag=flag, default_hub_id=default_hub_id)
    where = str(source.local_dir) if source.is_local else str(source.hub_id)
    kwargs: dict[str, Any] = {"cache_dir": None if cache_dir is None else str(cache_dir)}
    if source.is_local:
        kwargs["local_files_only"] = True
    try:
        model = model_cls.from_pretrained(where, **kwargs)
        processor = processor_cls.from_pretrained(where, **kwargs)
    except Exception as exc:  # any failure here means the weights / configs are not available
        raise missing_weights(source.ref, what, f"{type(exc).__name__}: {exc}",
                              hub_ids=(source.hub_id or default_hub_id,), flag=flag) from exc
    model = model.to(resolve_device(device)).eval()
    if source.is_local:
        revision: str | None = local_revision(source.local_dir)  # type: ignore[arg-type]
    else:
        revision = hub_revision(str(source.hub_id), "config.json", cache_dir)
    return LoadedHfModel(model=model, processor=processor, model_id=source.model_id, revision=revision)
