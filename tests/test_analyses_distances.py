"""exbert_hub.analyses.distances: by hand and against a naive loop."""

from __future__ import annotations

import math

import numpy as np
import pytest

from exbert_hub.analyses import distances


def test_pair_distances_by_hand():
    a = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]], dtype=np.float32)
    b = np.array([[0.0, 1.0], [2.0, 2.0], [1.0, 0.0]], dtype=np.float32)
    np.testing.assert_allclose(distances.pair_distances(a, b, "cosine")[:2], [1.0, 0.0], atol=1e-7)
    assert np.isnan(distances.pair_distances(a, b, "cosine")[2])  # a zero vector has no direction
    np.testing.assert_allclose(distances.pair_distances(a, b, "euclidean"), [math.sqrt(2), math.sqrt(2), 1.0], rtol=1e-6)
    with pytest.raises(ValueError):
        distances.pair_distances(a, b, "manhattan")


def test_span_points_and_group_means_equal_naive_loops():
    rng = np.random.default_rng(3)
    L, N, d = 3, 20, 5
    pts = rng.normal(size=(L, N, d)).astype(np.float32)
    rows_a = [[0, 1], [5], [], [9, 10, 11]]
    rows_b = [[2], [6, 7], [8], [12]]
    groups = ["x", "y", "x", "x"]
    a = distances.span_points(pts, [np.array(r) for r in rows_a])
    b = distances.span_points(pts, [np.array(r) for r in rows_b])
    vals = distances.pair_distances(a, b, "euclidean")
    got = distances.mean_by_group(vals, groups)
    for layer in range(L):
        per = []
        for ra, rb in zip(rows_a, rows_b):
            if not ra:
                per.append(None)
                continue
            ma = [sum(pts[layer, r, k] for r in ra) / len(ra) for k in range(d)]
            mb = [sum(pts[layer, r, k] for r in rb) / len(rb) for k in range(d)]
            per.append(math.sqrt(sum((x - y) ** 2 for x, y in zip(ma, mb))))
        x = [per[e] for e in (0, 2, 3) if per[e] is not None]
        assert got["x"][layer] == pytest.approx(sum(x) / len(x), rel=1e-5)
        assert got["y"][layer] == pytest.approx(per[1], rel=1e-5)
    assert set(distances.mean_by_group(vals, groups, select=[1])) == {"y"}
    assert distances.mean_by_group(vals, groups, select=[2]) == {}  # only NaN: no group, no division by zero
