"""``chest2d``: posteroanterior chest X-ray-like phantoms with opacities.

Images are displayed as a PA film is read: column 0 is the subject's right, row 0 the top; bright
means high attenuation. An attenuation map is built from the anatomy (soft tissue, two lungs with
vascular texture, heart towards the subject's left, mediastinum with trachea and aortic knob,
spine, posterior and anterior ribs, clavicles, diaphragm domes, sometimes a gastric bubble), then
exposed (``1 - exp(-mu)``), blurred, given random contrast and quantum-like noise.
Pose (rotation, scale, shift) and every anatomical proportion are random.

Classes (``CHEST_CLASSES``; every block of three consecutive cases holds each class once):

* ``normal``: no opacity; empty label.
* ``pneumonia_like``: one or two consolidation-like blobs (irregular, fuzzy-edged, clipped to a lung).
* ``nodule``: one to three small round nodules inside the lungs.

Label: the opacities. Structures (first match wins in this order): opacity, heart, left lung, right
lung, ribs, clavicles. The lungs are full lung fields (the ribs crossing them stay lung, as in
lung-field masks); ``ribs`` / ``clavicles`` are the bone outside the lung fields and heart.
COCO categories: ``consolidation`` and ``nodule``, one instance per opacity.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.path import Path as PolyPath
from scipy import ndimage

from medssl.data.synthetic._common import (
    Shape,
    Spacing,
    ellipsoid_radius,
    low_frequency_field,
    paint,
    random_rotation,
    to_uint8,
    tube_level,
)

CHEST_CLASSES: tuple[str, ...] = ("normal", "pneumonia_like", "nodule")
CHEST_CATEGORIES: tuple[str, ...] = ("consolidation", "nodule")
CHEST_STRUCTURES: tuple[str, ...] = ("left lung", "right lung", "heart", "opacity", "ribs", "clavicles")
CHEST_LABEL_STRUCTURES: tuple[str, ...] = ("opacity",)
CHEST2D_SHAPE: tuple[int, int] = (128, 128)
CHEST2D_SPACING: tuple[float, float] = (3.0, 3.0)

CHEST_PARAMETERS: dict[str, Any] = {
    "pose": {"rotation_deg": 5, "scale": [0.88, 1.06], "shift_mm": 12},
    "consolidations": {"count": [1, 2], "semi_axes_fraction_of_lung": [0.25, 0.5]},
    "nodules": {"count": [1, 3], "radius_mm": [5, 14]},
    "exposure_gain": [1.0, 1.5],
    "gamma": [0.8, 1.25],
    "noise_sigma": [0.01, 0.03],
}


def _lung_outline(rng: np.random.Generator, side: float, n: int = 24) -> np.ndarray:
    """Closed polygon (M, 2) of one lung field in normalised chest coordinates (x right of image, y down).

    ``side`` is -1 for the subject's right lung (image left), +1 for the left lung (image right).
    """
    apex = np.array([side * rng.uniform(0.28, 0.38), rng.uniform(-0.86, -0.74)])
    lateral_x = side * rng.uniform(0.74, 0.84)
    costophrenic = np.array([side * rng.uniform(0.72, 0.82), rng.uniform(0.5, 0.62) + (0.05 if side > 0 else 0.0)])
    medial_x = side * rng.uniform(0.1, 0.16)
    dome_top = rng.uniform(0.22, 0.34) + (0.06 if side > 0 else 0.0)
    medial_low = np.array([medial_x, dome_top + rng.uniform(0.05, 0.12)])

    t = np.linspace(0, 1, n)
    # lateral border: apex -> costophrenic angle, bulging outwards
    lat = np.stack([apex[0] + (costophrenic[0] - apex[0]) * np.sin(t * np.pi / 2) ** 0.7
                    + side * 0.04 * np.sin(np.pi * t) + (lateral_x - costophrenic[0]) * np.sin(np.pi * t) * 0.8,
                    apex[1] + (costophrenic[1] - apex[1]) * t])
    # diaphragm dome: costophrenic angle -> medial end, convex upwards
    dome = np.stack([costophrenic[0] + (medial_low[0] - costophrenic[0]) * t,
                     costophrenic[1] + (medial_low[1] - costophrenic[1]) * t
                     - (costophrenic[1] - dome_top) * np.sin(np.pi * t) * 0.9])
    # medial border: up along the mediastinum to the apex
    med = np.stack([medial_x + (apex[0] - medial_x) * t ** 3, medial_low[1] + (apex[1] - medial_low[1]) * t])
    return np.concatenate([lat.T, dome.T[1:], med.T[1:]])


def _curve_family(offset: np.ndarray, first: float, step: float, jitter: np.ndarray,
                  half_width: float | np.ndarray) -> np.ndarray:
    """Pixels within ``half_width`` (vertically) of curves number 0 .. len(jitter) - 1.

    ``offset`` is the pixel's height relative to the curve shape; curve ``i`` sits at
    ``first + i * step + jitter[i]``.
    """
    index = np.rint((offset - first) / step).astype(int)
    valid = (index >= 0) & (index < len(jitter))
    centre = first + np.clip(index, 0, len(jitter) - 1) * step + jitter[np.clip(index, 0, len(jitter) - 1)]
    return valid & (np.abs(offset - centre) < half_width)


def generate_chest2d_case(rng: np.random.Generator, cls: str, shape: Shape = CHEST2D_SHAPE,
                          spacing: Spacing | None = None) -> dict[str, Any]:
    """One chest radiograph-like image (H, W) uint8 of class ``cls`` with label, structures, instances.

    Args:
        rng: the case's random generator.
        cls: one of :data:`CHEST_CLASSES`.
        shape: (H, W) in pixels.
        spacing: pixel size (mm); by default the 384 mm field of view of 128 px at 3 mm.

    Returns:
        ``image`` uint8 (H, W), ``label`` uint8 opacity mask, ``structures`` uint8 ids of
        :data:`CHEST_STRUCTURES`, ``class``, ``instances`` (list of (category, bool mask)), ``meta``.
    """
    if cls not in CHEST_CLASSES:
        raise ValueError(f"unknown chest class {cls!r}")
    shape = tuple(int(s) for s in shape)
    if spacing is None:
        spacing = tuple(sp * s0 / s for sp, s0, s in zip(CHEST2D_SPACING, CHEST2D_SHAPE, shape, strict=True))
    h, w = shape
    # pixel centres in mm (rows, cols) and normalised chest coordinates q = (x, y)
    rows, cols = np.meshgrid(np.arange(h) * spacing[0], np.arange(w) * spacing[1], indexing="ij")
    half = 0.5 * min(h * spacing[0], w * spacing[1]) * 0.94 * rng.uniform(0.88, 1.06)
    rot = random_rotation(rng, (5.0,))
    centre = np.array([(w - 1) * spacing[1] / 2, (h - 1) * spacing[0] / 2]) + rng.uniform(-12, 12, 2)

    def to_mm(q: np.ndarray) -> np.ndarray:
        """Normalised (x, y) points (N, 2) -> pixel mm (row, col) points (N, 2)."""
        xy = np.asarray(q) @ rot.T * half + centre
        return xy[:, ::-1]

    rel = np.stack([cols.ravel() - centre[0], rows.ravel() - centre[1]])
    qx, qy = (rot.T @ rel) / half
    qx, qy = qx.reshape(shape), qy.reshape(shape)
    pix = np.stack([rows.ravel(), cols.ravel()], axis=1)

    def polygon(points_q: np.ndarray) -> np.ndarray:
        return PolyPath(to_mm(points_q)).contains_points(pix).reshape(shape)

    def band(points_q: np.ndarray, radius_q: float | np.ndarray) -> np.ndarray:
        radii = np.broadcast_to(np.asarray(radius_q, float) * half, (len(points_q),))
        return tube_level(shape, spacing, to_mm(points_q), radii) < 0

    # ---- anatomy -------------------------------------------------------------------------------
    body = (np.abs(qx) < 0.9 + 0.04 * qy) & (qy > -1.3)
    right_lung_field = polygon(_lung_outline(rng, -1.0))
    left_lung_field = polygon(_lung_outline(rng, 1.0))
    heart_rot = random_rotation(rng, (12.0,))
    heart_c = (rng.uniform(0.1, 0.2), rng.uniform(0.14, 0.24))
    heart_axes = (rng.uniform(0.32, 0.42), rng.uniform(0.25, 0.32))
    heart = ellipsoid_radius([qx, qy], heart_c, heart_axes, heart_rot) < 1
    heart &= qy < 0.62
    mediastinum = (np.abs(qx - 0.02) < rng.uniform(0.11, 0.15)) & (qy < 0.45)
    aortic_knob = ellipsoid_radius([qx, qy], (rng.uniform(0.12, 0.17), rng.uniform(-0.42, -0.32)), (0.08, 0.06)) < 1
    trachea = (np.abs(qx + 0.01 * qy) < rng.uniform(0.035, 0.05)) & (qy < -0.3)
    right_lung = right_lung_field & ~heart & ~mediastinum
    left_lung = left_lung_field & ~heart & ~mediastinum & ~aortic_knob
    lungs = right_lung | left_lung
    below_diaphragm = body & ~lungs & ~heart & (qy > 0.15)

    # ribs: a family of curves y = y_i + f(|x|) (posterior: up-and-out then down; anterior: down
    # towards the midline); a pixel is rib when its vertical offset from the nearest curve is small
    spacing_q = rng.uniform(0.115, 0.135)
    y_first = -0.78
    jitter = rng.normal(0, 0.008, 10)
    t = np.clip((np.abs(qx) - 0.07) / 0.8, 0.0, None)
    posterior_f = -0.1 * np.sin(np.pi * np.minimum(t, 1.0) * 0.8) + 0.32 * t**2
    ribs = _curve_family(qy - posterior_f, y_first, spacing_q, jitter, 0.016 + 0.004 * t) & (t <= 1.0)
    ribs &= (np.abs(qx) >= 0.07) & body
    ta = (0.8 - np.abs(qx)) / 0.55
    anterior = _curve_family(qy - 0.06 - 0.28 * ta, y_first, spacing_q, jitter[:7], 0.013)
    anterior &= (ta >= 0.0) & (ta <= 1.0) & body
    clavicles = np.zeros(shape, bool)
    for side in (-1.0, 1.0):
        tc = np.linspace(0, 1, 12)
        xs = side * (0.1 + 0.55 * tc)
        ys = rng.uniform(-0.8, -0.72) - 0.1 * tc + 0.04 * np.sin(2 * np.pi * tc)
        clavicles |= band(np.stack([xs, ys], 1), 0.026)
    spine = (np.abs(qx) < 0.07) & body
    vertebra_lines = spine & (np.cos(2 * np.pi * qy / spacing_q) > 0.75)
    gastric = (ellipsoid_radius([qx, qy], (rng.uniform(0.35, 0.5), rng.uniform(0.55, 0.68)),
                                (rng.uniform(0.08, 0.14), rng.uniform(0.05, 0.09))) < 1) & below_diaphragm
    gastric &= rng.random() < 0.6

    # ---- opacities -----------------------------------------------------------------------------
    instances: list[tuple[str, np.ndarray]] = []
    soft_opacity = np.zeros(shape, np.float32)
    if cls == "pneumonia_like":
        for _ in range(int(rng.integers(1, 3))):
            lung = right_lung if rng.random() < 0.5 else left_lung
            iy, ix = np.nonzero(lung)
            k = int(rng.integers(iy.size))
            c = (qx[iy[k], ix[k]], qy[iy[k], ix[k]])
            axes = (rng.uniform(0.1, 0.22), rng.uniform(0.1, 0.25))
            rho = ellipsoid_radius([qx, qy], c, axes, random_rotation(rng, (90.0,)))
            blob = rho < 1 + 0.35 * low_frequency_field(rng, shape, 6)
            blob = ndimage.binary_opening(blob & lung)
            fuzzy = ndimage.gaussian_filter(blob.astype(np.float32), 1.2)
            soft_opacity += fuzzy * np.float32(rng.uniform(0.35, 0.6))
            instances.append(("consolidation", blob))
    elif cls == "nodule":
        for _ in range(int(rng.integers(1, 4))):
            lung = right_lung if rng.random() < 0.5 else left_lung
            inner = ndimage.binary_erosion(lung, iterations=3)
            iy, ix = np.nonzero(inner if inner.any() else lung)
            k = int(rng.integers(iy.size))
            r_mm = rng.uniform(5, 14)
            dist = np.hypot(rows - iy[k] * spacing[0] - rng.uniform(-0.5, 0.5) * spacing[0],
                            cols - ix[k] * spacing[1] - rng.uniform(-0.5, 0.5) * spacing[1])
            nod = (dist < r_mm) & lung
            nod[iy[k], ix[k]] = True
            soft_opacity += ndimage.gaussian_filter(nod.astype(np.float32), 0.6) * np.float32(rng.uniform(0.45, 0.7))
            instances.append(("nodule", nod))
    # later instances own their overlap with earlier ones
    owner = np.zeros(shape, int)
    for k, (_, m) in enumerate(instances):
        owner[m] = k + 1
    instances = [(cat, owner == k + 1) for k, (cat, _) in enumerate(instances)]
    opacity = owner > 0

    # ---- attenuation and exposure --------------------------------------------------------------
    mu = np.where(body, 1.0, 0.0).astype(np.float32)
    mu += np.float32(0.12) * low_frequency_field(rng, shape, 5) * body
    lung_texture = 0.06 * low_frequency_field(rng, shape, 12) + 0.06 * np.abs(low_frequency_field(rng, shape, 28))
    hilum = np.exp(-((np.abs(qx) - 0.2) ** 2 / 0.05 + (qy + 0.05) ** 2 / 0.15))
    mu = np.where(lungs, rng.uniform(0.22, 0.32) + lung_texture + 0.25 * hilum, mu)
    mu = np.where(heart | mediastinum | aortic_knob, rng.uniform(1.25, 1.45), mu)
    mu = np.where(trachea & ~heart, 0.45, mu)
    mu = np.where(below_diaphragm, rng.uniform(1.3, 1.5), mu)
    mu = np.where(gastric, 0.35, mu)
    mu += np.float32(rng.uniform(0.25, 0.4)) * ribs + np.float32(0.15) * anterior
    mu += np.float32(0.7) * (clavicles & body) + np.float32(0.25) * spine + np.float32(0.1) * vertebra_lines
    mu += soft_opacity
    gain = rng.uniform(1.0, 1.5)
    img = 1.0 - np.exp(-gain * ndimage.gaussian_filter(mu.astype(np.float32), 0.7))
    gamma = rng.uniform(0.8, 1.25)
    img = np.power(np.clip(img, 0, 1), gamma) + rng.normal(0, rng.uniform(0.01, 0.03), shape)
    image = to_uint8(img, float(np.percentile(img, 0.5)), float(np.percentile(img, 99.8)))

    sid = {name: i + 1 for i, name in enumerate(CHEST_STRUCTURES)}
    structures = np.zeros(shape, np.uint8)
    paint(structures, opacity, sid["opacity"])
    paint(structures, heart, sid["heart"])
    paint(structures, left_lung, sid["left lung"])
    paint(structures, right_lung, sid["right lung"])
    paint(structures, ribs, sid["ribs"])
    paint(structures, clavicles, sid["clavicles"])
    meta = {"opacities": [cat for cat, _ in instances], "gamma": round(float(gamma), 3)}
    return {"image": image, "label": opacity.astype(np.uint8), "structures": structures, "class": cls,
            "instances": instances, "meta": meta}
