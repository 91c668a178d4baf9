"""Distances per layer between two spans of each example, and their means per group of examples.

Works the same in the FULL hidden space (``hidden: float32[layers + 1, N, d]`` of the tracked tokens)
and in a 2-D projection (``float32[layers + 1, N, 2]``): a span's point is the mean of its tokens' rows.
InterpreT measured only in its t-SNE plane (and its plot used span 1's y for span 2); here the hidden
space is the measure and the plane is for display.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

METRICS = ("cosine", "euclidean")


def span_points(points: np.ndarray, rows: Sequence[np.ndarray]) -> np.ndarray:
    """float32[layers, E, k]: for each example e the mean of ``points[:, rows[e]]`` (NaN when rows[e] is empty).

    ``points``: float32[layers, N, k]; ``rows[e]``: int[] row indexes of example e's span tokens.
    """
    L, _, k = points.shape
    out = np.full((L, len(rows), k), np.nan, dtype=np.float32)
    for e, r in enumerate(rows):
        r = np.asarray(r, dtype=np.int64)
        if r.size:
            out[:, e] = points[:, r].mean(axis=1, dtype=np.float64)
    return out


def pair_distances(a: np.ndarray, b: np.ndarray, metric: str = "cosine") -> np.ndarray:
    """float32[...]: distance between ``a[..., k]`` and ``b[..., k]`` along the last axis.

    cosine: 1 - a.b / (|a| |b|) (0 for the same direction, 2 for opposite; NaN for a zero vector);
    euclidean: |a - b|. NaN where a or b is NaN.
    """
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}: use one of {', '.join(METRICS)}")
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    if metric == "euclidean":
        return np.sqrt(((a - b) ** 2).sum(axis=-1)).astype(np.float32)
    den = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.where(den > 0, (a * b).sum(axis=-1) / np.where(den > 0, den, 1), np.nan)
    return (1 - cos).astype(np.float32)


def mean_by_group(values: np.ndarray, groups: Sequence, select: Sequence[int] | None = None) -> dict[str, np.ndarray]:
    """{group: float32[layers]}: mean over the examples of each group of ``values: float32[layers, E]``.

    ``groups[e]`` is example e's label (turned into a string key); ``select`` restricts to those example
    indexes. Examples whose value is NaN (no span) are left out; a group with no value is left out
    (never a division by zero).
    """
    idx = np.arange(values.shape[1]) if select is None else np.asarray(list(select), dtype=np.int64)
    keys: dict[str, list[int]] = {}
    for e in idx.tolist():
        keys.setdefault(str(groups[e]), []).append(e)
    out = {}
    for key, members in keys.items():
        v = values[:, members]
        ok = ~np.isnan(v)
        count = ok.sum(axis=1)
        if not count.any():
            continue
        with np.errstate(invalid="ignore"):
            out[key] = (np.where(ok, v, 0).sum(axis=1, dtype=np.float64) / np.where(count > 0, count, np.nan)).astype(np.float32)
    return out
