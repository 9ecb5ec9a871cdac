"""Images of a run: where they are, what their captions say, and their bytes for embedding.

Figures are looked for in every folder of the run except the bulky ones (checkpoints, TensorBoard
events, predicted volumes, ROI-cache entries): ``figures/`` (reconstruction previews, prediction
overlays), ``eval_*/overlays/`` (segmentation overlays), ``previews/`` (ROI previews) and any other.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import Path

from medssl.report.summary import FigureFile

__all__ = [
    "IMAGE_TYPES",
    "EmbeddedImage",
    "figure_caption",
    "group_title",
    "load_image",
    "natural_key",
]

#: Image suffixes shown in reports and their MIME types.
IMAGE_TYPES: dict[str, str] = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}


def natural_key(text: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key ordering embedded numbers numerically (``case_2`` before ``case_10``)."""
    return tuple((0, int(part)) if part.isdigit() else (1, part.lower())
                 for part in re.split(r"(\d+)", text) if part)


def _humanize(stem: str) -> str:
    """``case_0001_fa56202945fc`` → ``case 0001`` (a trailing hex digest is dropped)."""
    stem = re.sub(r"[_\-][0-9a-f]{8,}$", "", stem)
    return re.sub(r"[_\-]+", " ", stem).strip()


def figure_caption(kind: str, group: str, path: Path) -> str:
    """Caption of image ``path`` found in folder ``group`` (relative to the run) of a ``kind`` run."""
    stem = path.stem
    parts = Path(group).parts
    if parts and parts[-1] == "overlays":
        where = "/".join(parts[:-1]) or "evaluation"
        return (f"{stem} ({where}): ground truth solid cyan, prediction dashed orange, on axial slices "
                "through the foreground")
    epoch = re.search(r"(?:epoch|ep)[_\-]?(\d+)", stem)
    if kind == "pretrain" and re.search(r"recon|preview", stem):
        text = "Reconstruction preview"
        if epoch:
            return f"{text}, epoch {int(epoch.group(1))}"
        return f"{text}, end of training" if re.search(r"final|last", stem) else f"{text}: {_humanize(stem)}"
    if kind == "localize" and parts and parts[0] == "previews":
        return f"ROI preview: {_humanize(stem)}"
    if kind == "detect" and parts and parts[0] == "figures":
        return f"Predictions (boxes and masks) with ground-truth outlines: {_humanize(stem)}"
    return _humanize(stem) or path.name


def group_title(kind: str, group: str) -> str:
    """Heading of the figures found in folder ``group`` of a ``kind`` run."""
    parts = Path(group).parts
    if not parts or group == ".":
        return "Figures in the run folder"
    if parts[-1] == "overlays":
        return f"Segmentation overlays: {'/'.join(parts[:-1]) or 'evaluation'}"
    if parts[0] == "figures":
        return {"pretrain": "Reconstruction previews", "detect": "Prediction overlays"}.get(kind, "Figures") + (
            f" ({'/'.join(parts[1:])})" if len(parts) > 1 else "")
    if parts[0] == "previews":
        return "ROI previews" if kind == "localize" else "Previews"
    return group


@dataclass(frozen=True)
class EmbeddedImage:
    """An image ready to embed: encoded bytes, MIME type and size in pixels."""

    figure: FigureFile
    data: bytes
    mime: str
    width: int
    height: int


def load_image(figure: FigureFile, max_width: int = 1600) -> EmbeddedImage:
    """Read ``figure.path``; an image wider than ``max_width`` pixels is downscaled (re-encoded as PNG).

    Raises:
        OSError: the file cannot be read or is not a PNG / JPEG image.
    """
    from PIL import Image, UnidentifiedImageError

    data = figure.path.read_bytes()
    mime = IMAGE_TYPES.get(figure.path.suffix.lower(), "image/png")
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            width, height = img.size
            if img.format not in ("PNG", "JPEG"):
                raise OSError(f"{figure.path}: not a PNG or JPEG image ({img.format})")
            mime = "image/png" if img.format == "PNG" else "image/jpeg"
            if width > max_width:
                height = max(1, round(height * max_width / width))
                width = max_width
                source = img if img.mode in ("RGB", "RGBA", "L") else img.convert("RGBA")
                small = source.resize((width, height), Image.Resampling.LANCZOS)
                buf = io.BytesIO()
                small.save(buf, format="PNG", optimize=True)
                data, mime = buf.getvalue(), "image/png"
    except (UnidentifiedImageError, ValueError) as err:
        raise OSError(f"{figure.path}: not a readable image ({err})") from None
    return EmbeddedImage(figure, data, mime, width, height)
