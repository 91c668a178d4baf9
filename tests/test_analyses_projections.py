"""exbert_hub.analyses.projections: PCA by hand, Procrustes, and alignment that reduces layer-to-layer jumps."""

from __future__ import annotations

import numpy as np
import pytest

from exbert_hub.analyses import projections


def test_pca_recovers_the_main_axes():
    rng = np.random.default_rng(0)
    x = np.zeros((200, 3))
    x[:, 0] = rng.normal(size=200) * 10
    x[:, 1] = rng.normal(size=200) * 3
    x[:, 2] = rng.normal(size=200) * 0.01
    y = projections.pca_2d(x.astype(np.float32))
    c = x - x.mean(0)
    assert abs(np.corrcoef(y[:, 0], c[:, 0])[0, 1]) > 0.99 and abs(np.corrcoef(y[:, 1], c[:, 1])[0, 1]) > 0.99
    _, _, vt = np.linalg.svd(c, full_matrices=False)  # the same axes by another method, up to their signs
    ref = c @ vt[:2].T
    np.testing.assert_allclose(np.abs(y), np.abs(ref), rtol=1e-4, atol=1e-4)


def test_procrustes_undoes_a_rotation_and_a_reflection():
    rng = np.random.default_rng(1)
    y = projections.normalise(rng.normal(size=(50, 2)))
    t = 0.7
    rot = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]]) @ np.diag([1, -1])
    np.testing.assert_allclose(projections.procrustes(y @ rot, y), y, atol=1e-5)
    n = projections.normalise(np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 4.0]]))
    assert np.allclose(n.mean(0), 0) and np.sqrt((n ** 2).sum(1).mean()) == pytest.approx(1.0)


def drifting_layers(seed=0, L=5, N=300, d=16):
    """Points that change slowly from layer to layer (a random walk), as hidden states do."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(N, d)) * np.linspace(3, 0.5, d)
    layers = [base]
    for _ in range(L - 1):
        mix = np.linalg.qr(np.eye(d) + 0.3 * rng.normal(size=(d, d)))[0]  # a small turn of the space
        layers.append(layers[-1] @ mix + 0.1 * rng.normal(size=(N, d)))
    return np.stack(layers).astype(np.float32)


@pytest.mark.parametrize("method", ["pca", "tsne", "umap"])
def test_alignment_reduces_layer_to_layer_displacement(method):
    pts = drifting_layers(N=300 if method == "pca" else 200)
    params = {"n_iter": 250} if method == "tsne" else {"n_epochs": 100} if method == "umap" else {}
    aligned = projections.project_layers(pts, method, aligned=True, **params)
    free = projections.project_layers(pts, method, aligned=False, **params)
    assert aligned.shape == (5, pts.shape[1], 2) and aligned.dtype == np.float32
    moved, jumped = projections.displacement(aligned).mean(), projections.displacement(free).mean()
    assert moved < 0.8 * jumped, (moved, jumped)


def test_bad_method():
    with pytest.raises(ValueError, match="unknown projection"):
        projections.project_layers(np.zeros((2, 3, 4), np.float32), "mds")


def test_pca_runs_on_one_blas_thread_and_restores_it(monkeypatch):
    from threadpoolctl import threadpool_info, threadpool_limits

    seen = []
    inner = projections._pca_2d

    def spy(x):
        seen.append([i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"])
        return inner(x)

    monkeypatch.setattr(projections, "_pca_2d", spy)
    x = drifting_layers(N=400)
    with threadpool_limits(limits=2, user_api="blas"):  # what a 2-core machine starts with
        before = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
        out = projections.project_layers(x, "pca")
        after = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
    assert seen and all(s and set(s) == {1} for s in seen) and len(seen) == x.shape[0]
    assert after == before
    # the same numbers as a PCA by SVD on every layer (up to the alignment's rotation: compare distances)
    for layer in range(x.shape[0]):
        c = x[layer] - x[layer].mean(0)
        ref = projections.normalise(c @ np.linalg.svd(c.astype(np.float64), full_matrices=False)[2][:2].T)
        d_got = np.linalg.norm(out[layer][:50, None] - out[layer][None, :50], axis=-1)
        d_ref = np.linalg.norm(ref[:50, None] - ref[None, :50], axis=-1)
        np.testing.assert_allclose(d_got, d_ref, atol=1e-4)
