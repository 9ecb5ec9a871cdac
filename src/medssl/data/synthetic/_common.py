"""Building blocks shared by the synthetic dataset generators.

Geometry works in millimetres on a voxel grid whose voxel ``i`` has its centre at ``i * spacing``
(the affine is ``diag(spacing)``). Everything here is dimension-agnostic: 2D images (H, W) and
3D volumes (H, W, D) go through the same functions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

Shape = tuple[int, ...]
Spacing = tuple[float, ...]


# ----------------------------------------------------------------------------------------------
# seeds, ids, splits, classes
# ----------------------------------------------------------------------------------------------
def case_id(index: int) -> str:
    """The id of case ``index``: ``case_0000``, ``case_0001``, ..."""
    return f"case_{index:04d}"


def case_seeds(seed: int, n: int) -> list[np.random.SeedSequence]:
    """One child seed per case, ``SeedSequence(seed).spawn(n)``.

    Child ``i`` has spawn key ``(i,)`` whatever ``n`` is, so case ``i`` never depends on ``n``.
    """
    return np.random.SeedSequence(seed).spawn(n)


def n_test_cases(n: int) -> int:
    """Size of the test split: the last 20 % of the cases (rounded up), at least 1."""
    return max(1, (n + 4) // 5)


def split_case_ids(ids: Sequence[str]) -> tuple[list[str], list[str]]:
    """(train, test): the last :func:`n_test_cases` ids are the test split."""
    k = n_test_cases(len(ids))
    return list(ids[: len(ids) - k]), list(ids[len(ids) - k:])


def class_of_case(seed: int, index: int, classes: Sequence[str]) -> str:
    """The class of case ``index`` for class-balanced synthetic sets.

    The cases are cut into consecutive blocks of ``len(classes)``; each block holds every class once,
    in an order drawn from ``(seed, block)``. The class of a case therefore does not depend on the
    number of cases, and any ``n`` cases contain each class ``n // k`` or ``n // k + 1`` times.
    """
    k = len(classes)
    block, pos = divmod(index, k)
    order = np.random.default_rng([seed, block, 0x5EED_C1A5]).permutation(k)
    return classes[int(order[pos])]


# ----------------------------------------------------------------------------------------------
# grids and random fields
# ----------------------------------------------------------------------------------------------
def grid_mm(shape: Shape, spacing: Spacing) -> list[np.ndarray]:
    """Voxel-centre coordinates in mm: one float32 array of ``shape`` per axis (``i * spacing``)."""
    axes = [np.arange(s, dtype=np.float32) * np.float32(sp) for s, sp in zip(shape, spacing, strict=True)]
    return list(np.meshgrid(*axes, indexing="ij"))


def _bspline_basis(n_out: int, n_ctrl: int) -> np.ndarray:
    """(n_out, n_ctrl + 4) cubic B-spline weights of control points at -2 .. n_ctrl + 1 (unit spacing).

    Output sample ``i`` sits at control coordinate ``(i + 0.5) * n_ctrl / n_out - 0.5``; every row
    sums to one.
    """
    u = (np.arange(n_out) + 0.5) * n_ctrl / n_out - 0.5
    t = np.abs(u[:, None] - np.arange(-2, n_ctrl + 2)[None, :])
    w = np.where(t < 1, 2.0 / 3.0 - t**2 + 0.5 * t**3, np.where(t < 2, (2.0 - t) ** 3 / 6.0, 0.0))
    return w.astype(np.float32)


def low_frequency_field(rng: np.random.Generator, shape: Shape, n_control: int | Sequence[int]) -> np.ndarray:
    """A smooth random field of ``shape`` with zero mean and unit standard deviation (float32).

    White noise on a coarse grid of ``n_control`` points per axis (plus a margin), interpolated with
    separable cubic B-splines: the field varies on the scale of ``shape / n_control`` voxels.
    """
    ctrl = (n_control,) * len(shape) if isinstance(n_control, int) else tuple(n_control)
    field = rng.standard_normal(tuple(c + 4 for c in ctrl)).astype(np.float32)
    for s, c in zip(shape, ctrl, strict=True):
        # contract the leading axis; the new axis goes last, so after ndim steps the order is restored
        field = np.tensordot(field, _bspline_basis(s, c).T, axes=(0, 0))
    field = field - field.mean()
    return (field / (field.std() + 1e-8)).astype(np.float32)


def bias_field(rng: np.random.Generator, shape: Shape, strength: float, n_control: int = 3) -> np.ndarray:
    """A smooth multiplicative field ``exp(strength * g)`` with ``g`` a unit-variance smooth field."""
    return np.exp(strength * low_frequency_field(rng, shape, n_control)).astype(np.float32)


def rician_noise(rng: np.random.Generator, image: np.ndarray, sigma: float) -> np.ndarray:
    """Magnitude of a complex signal with Gaussian noise ``sigma`` in both channels (MRI-like)."""
    re = image + rng.normal(0.0, sigma, image.shape).astype(np.float32)
    im = rng.normal(0.0, sigma, image.shape).astype(np.float32)
    return np.sqrt(re * re + im * im).astype(np.float32)


def zscore(image: np.ndarray) -> np.ndarray:
    """(image - mean) / std over the whole array, float32."""
    image = image.astype(np.float32)
    return ((image - image.mean()) / (image.std() + 1e-8)).astype(np.float32)


def random_rotation(rng: np.random.Generator, max_degrees: Sequence[float]) -> np.ndarray:
    """A random rotation matrix: (2, 2) for one angle, (3, 3) for three (about axes 0, 1, 2).

    Each angle is uniform in ``[-max, max]`` degrees.
    """
    angles = [np.deg2rad(rng.uniform(-m, m)) for m in max_degrees]
    if len(angles) == 1:
        c, s = np.cos(angles[0]), np.sin(angles[0])
        return np.array([[c, -s], [s, c]])
    rot = np.eye(3)
    for axis, a in enumerate(angles):
        c, s = np.cos(a), np.sin(a)
        i, j = [k for k in range(3) if k != axis]
        r = np.eye(3)
        r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
        rot = r @ rot
    return rot


def unit(v: Sequence[float] | np.ndarray) -> np.ndarray:
    """``v`` scaled to unit length."""
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


# ----------------------------------------------------------------------------------------------
# shapes
# ----------------------------------------------------------------------------------------------
def ellipsoid_radius(coords: Sequence[np.ndarray], centre: Sequence[float] | np.ndarray,
                     semi_axes: Sequence[float] | np.ndarray,
                     rotation: np.ndarray | None = None) -> np.ndarray:
    """Normalised radius of an ellipsoid (ellipse in 2D): < 1 inside, 1 on the surface.

    Args:
        coords: per-axis coordinate arrays (mm), e.g. from :func:`grid_mm`.
        centre: centre (mm), one value per axis.
        semi_axes: semi-axis lengths (mm) along the ellipsoid's own axes.
        rotation: (ndim, ndim) matrix whose columns are the ellipsoid's axes in grid coordinates.
    """
    ndim = len(coords)
    rot = np.eye(ndim) if rotation is None else np.asarray(rotation)
    d = [c - np.float32(x0) for c, x0 in zip(coords, centre, strict=True)]
    total = np.zeros(coords[0].shape, np.float32)
    for k in range(ndim):
        local = sum(np.float32(rot[i, k]) * d[i] for i in range(ndim))
        total += (local / np.float32(semi_axes[k])) ** 2
    return np.sqrt(total)


def ellipsoid_surface_distance(direction: Sequence[float] | np.ndarray, semi_axes: Sequence[float] | np.ndarray,
                               rotation: np.ndarray | None = None) -> float:
    """Distance (mm) from an ellipsoid's centre to its surface along a direction."""
    u = unit(direction)
    rot = np.eye(len(u)) if rotation is None else np.asarray(rotation)
    local = rot.T @ u
    return float(1.0 / np.sqrt(np.sum((local / np.asarray(semi_axes)) ** 2)))


def chaikin(points: np.ndarray, iterations: int = 3) -> np.ndarray:
    """Smooth an open polyline (N, ndim[+extra]) by Chaikin corner cutting, keeping its end points."""
    pts = np.asarray(points, dtype=np.float64)
    for _ in range(iterations):
        if len(pts) < 3:
            break
        q = 0.75 * pts[:-1] + 0.25 * pts[1:]
        r = 0.25 * pts[:-1] + 0.75 * pts[1:]
        inner = np.empty((2 * (len(pts) - 1), pts.shape[1]))
        inner[0::2], inner[1::2] = q, r
        pts = np.concatenate([pts[:1], inner[1:-1], pts[-1:]])
    return pts


def bezier(control: np.ndarray, n: int = 24) -> np.ndarray:
    """``n`` points on the Bézier curve with control points (K, ndim[+extra]) (de Casteljau)."""
    ctrl = np.asarray(control, dtype=np.float64)
    t = np.linspace(0.0, 1.0, n)[:, None, None]
    work = np.broadcast_to(ctrl, (n,) + ctrl.shape)
    for k in range(len(ctrl) - 1, 0, -1):
        work = (1.0 - t) * work[:, :k] + t * work[:, 1: k + 1]
    return np.ascontiguousarray(work[:, 0])


def tube_level(shape: Shape, spacing: Spacing, points: np.ndarray, radii: np.ndarray,
               out: np.ndarray | None = None) -> np.ndarray:
    """Signed level of a tube of varying radius around a polyline: < 0 inside (mm).

    The value at a voxel is ``min over segments (distance to segment - interpolated radius)``,
    computed only inside each segment's bounding box (``+inf`` elsewhere), so long thin tubes are cheap.

    Args:
        shape: grid shape (H, W[, D]) in voxels.
        spacing: voxel size (mm) per axis.
        points: (N, ndim) centre-line points in mm (voxel ``i`` at ``i * spacing``).
        radii: (N,) tube radius (mm) at each point.
        out: an existing level array to take the minimum with (modified in place).
    """
    ndim = len(shape)
    pts = np.asarray(points, dtype=np.float64)
    rad = np.asarray(radii, dtype=np.float64)
    sp = np.asarray(spacing, dtype=np.float64)
    level = np.full(shape, np.inf, np.float32) if out is None else out
    for a, b, ra, rb in zip(pts[:-1], pts[1:], rad[:-1], rad[1:], strict=True):
        r = max(ra, rb)
        lo = np.floor((np.minimum(a, b) - r) / sp).astype(int) - 1
        hi = np.ceil((np.maximum(a, b) + r) / sp).astype(int) + 2
        lo = np.clip(lo, 0, shape)
        hi = np.clip(hi, 0, shape)
        if np.any(hi <= lo):
            continue
        box = tuple(slice(int(l0), int(h0)) for l0, h0 in zip(lo, hi, strict=True))
        axes = [np.arange(l0, h0, dtype=np.float32) * np.float32(s) for l0, h0, s in zip(lo, hi, sp, strict=True)]
        q = np.meshgrid(*axes, indexing="ij")
        d = (b - a).astype(np.float32)
        dd = float(np.dot(d, d)) or 1e-12
        t = sum((q[i] - np.float32(a[i])) * d[i] for i in range(ndim)) / np.float32(dd)
        np.clip(t, 0.0, 1.0, out=t)
        dist2 = sum((q[i] - (np.float32(a[i]) + t * d[i])) ** 2 for i in range(ndim))
        val = np.sqrt(dist2) - (np.float32(ra) + t * np.float32(rb - ra))
        np.minimum(level[box], val, out=level[box])
    return level


# ----------------------------------------------------------------------------------------------
# label-map helpers and COCO
# ----------------------------------------------------------------------------------------------
def paint(label_map: np.ndarray, mask: np.ndarray, value: int) -> None:
    """Write ``value`` where ``mask`` is set and the label map is still background (first come wins)."""
    label_map[mask & (label_map == 0)] = value


def bbox_xywh(mask: np.ndarray) -> list[int]:
    """COCO box ``[x, y, w, h]`` of a 2D mask (H, W): x = column, y = row, in whole pixels.

    ``w = last column - first column + 1`` (and likewise ``h``), the convention of pycocotools' toBbox.
    """
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        raise ValueError("empty mask has no bounding box")
    return [int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)]


def coco_rle(mask: np.ndarray) -> dict[str, Any]:
    """Compressed COCO RLE of a 2D mask (H, W) as a JSON-ready dict ``{"size": [H, W], "counts": str}``."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}


def to_uint8(image: np.ndarray, low: float, high: float) -> np.ndarray:
    """Map ``[low, high]`` linearly to 0..255, clip and round to uint8."""
    scaled = (image.astype(np.float32) - np.float32(low)) / np.float32(max(high - low, 1e-6))
    return np.clip(np.rint(scaled * 255.0), 0, 255).astype(np.uint8)
