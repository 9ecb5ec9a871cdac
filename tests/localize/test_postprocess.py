"""Binarisation, components, boxes and box expansion: exact results on hand-made 2D / 3D arrays."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.cluster import KMeans

from medssl.components import largest_components
from medssl.localize.postprocess import (
    boxes_to_mask,
    component_boxes,
    expand_box,
    kmeans_binarize,
    threshold_binarize,
    union_box,
)


def test_kmeans_splits_a_bimodal_map_at_the_gap() -> None:
    values = np.array([0.1] * 60 + [0.2] * 20 + [0.8] * 15 + [0.9] * 5)
    sal = np.random.default_rng(0).permutation(values).reshape(10, 10)
    fg = kmeans_binarize(sal)
    np.testing.assert_array_equal(fg, sal >= 0.8)
    assert fg.sum() == 20


def test_kmeans_iterates_to_the_sklearn_optimum_in_3d() -> None:
    # the start (centres at min / max, cut at 0.5) puts 0.45 in the dark cluster; Lloyd moves it over
    values = np.array([0.0, 0.45, 0.55, 0.55, 0.55, 0.55, 0.55, 1.0])
    sal = values.reshape(2, 2, 2)
    fg = kmeans_binarize(sal)
    np.testing.assert_array_equal(fg.ravel(), values > 0.0)
    km = KMeans(n_clusters=2, n_init=10, random_state=0).fit(values.reshape(-1, 1))
    bright = int(np.argmax(km.cluster_centers_.ravel()))
    np.testing.assert_array_equal(fg.ravel(), km.labels_ == bright)


def test_kmeans_constant_and_empty_inputs_give_empty_masks() -> None:
    assert not kmeans_binarize(np.full((4, 5), 0.7)).any()
    assert kmeans_binarize(np.zeros((0, 3))).shape == (0, 3)
    assert not kmeans_binarize(np.zeros((3, 3, 3))).any()


def test_threshold_is_strict() -> None:
    sal = np.array([[0.0, 0.3], [0.31, 1.0]])
    np.testing.assert_array_equal(threshold_binarize(sal), [[False, False], [True, True]])
    np.testing.assert_array_equal(threshold_binarize(sal, t=0.5), [[False, False], [False, True]])


def _four_blobs() -> np.ndarray:
    m = np.zeros((6, 9), bool)
    m[0, 0:2] = True  # A: size 2, first in raster order
    m[0, 4:6] = True
    m[1, 4:6] = True  # B: size 4
    m[3:5, 0:2] = True  # C: size 4
    m[3:5, 7:9] = True  # D: size 4
    return m


def test_largest_components_breaks_ties_in_raster_order() -> None:
    m = _four_blobs()
    top2 = largest_components(m, k=2)
    expected = np.zeros_like(m)
    expected[0:2, 4:6] = True  # B
    expected[3:5, 0:2] = True  # C (before D: its first voxel (3, 0) precedes (3, 7))
    np.testing.assert_array_equal(top2, expected)
    assert largest_components(m, k=10).sum() == m.sum()
    assert not largest_components(m, k=0).any()
    assert not largest_components(np.zeros((4, 4, 4), bool), k=2).any()


def test_connectivity_changes_components() -> None:
    m = np.zeros((4, 4), bool)
    m[0, 0] = m[1, 1] = True  # diagonal neighbours
    assert len(component_boxes(m)) == 1  # full (8-) connectivity by default
    assert component_boxes(m, connectivity=1) == [((0, 1), (0, 1)), ((1, 2), (1, 2))]


def test_component_boxes_are_exact_half_open_boxes() -> None:
    assert component_boxes(_four_blobs()) == [
        ((0, 1), (0, 2)), ((0, 2), (4, 6)), ((3, 5), (0, 2)), ((3, 5), (7, 9))]
    vol = np.zeros((5, 6, 7), bool)
    vol[1:3, 2:5, 0:1] = True
    vol[4, 5, 6] = True
    assert component_boxes(vol) == [((1, 3), (2, 5), (0, 1)), ((4, 5), (5, 6), (6, 7))]
    assert component_boxes(np.zeros((3, 3), bool)) == []


@pytest.mark.parametrize(("ratio", "expected"), [
    (1.0, ((2, 6), (3, 5))),
    (1.5, ((1, 7), (2, 6))),  # axis 0: c 4, h 3; axis 1: c 4, h 1.5 -> (2.5, 5.5) rounded outward
    (2.0, ((0, 8), (2, 6))),
])
def test_expand_box_about_the_centre(ratio: float, expected: tuple) -> None:
    assert expand_box(((2, 6), (3, 5)), ratio, (10, 10)) == expected


@pytest.mark.parametrize(("ratio", "expected"), [
    (1.0, ((0, 4), (7, 10))),
    (1.5, ((0, 5), (6, 10))),  # (-1, 5) and (6.25, 10.75) -> clipped
    (2.0, ((0, 6), (5, 10))),  # (-2, 6) and (5.5, 11.5) -> clipped
])
def test_expand_box_clips_at_the_borders(ratio: float, expected: tuple) -> None:
    assert expand_box(((0, 4), (7, 10)), ratio, (10, 10)) == expected


def test_expand_box_3d_and_bad_ratio() -> None:
    assert expand_box(((1, 2), (0, 3), (5, 9)), 1.5, (8, 8, 8)) == ((0, 3), (0, 4), (4, 8))
    with pytest.raises(ValueError):
        expand_box(((0, 1), (0, 1)), 0.0, (4, 4))


def test_boxes_to_mask_and_union_box() -> None:
    boxes = [((0, 2), (0, 3)), ((1, 4), (2, 5))]
    mask = boxes_to_mask(boxes, (5, 6))
    expected = np.zeros((5, 6), bool)
    expected[0:2, 0:3] = True
    expected[1:4, 2:5] = True
    np.testing.assert_array_equal(mask, expected)
    assert mask.sum() == 6 + 9 - 1
    assert union_box(boxes) == ((0, 4), (0, 5))
    vol = boxes_to_mask([((1, 2), (0, 2), (3, 5))], (3, 3, 6))
    assert vol.sum() == 4 and vol[1, 1, 4]
    assert union_box([]) is None
    assert not boxes_to_mask([], (3, 4)).any()
