"""2-D projections of the tracked tokens at every layer, ALIGNED across layers so a point moves smoothly.

``project_layers(points, method)`` takes ``points: float32[layers + 1, N, d]`` (the hidden states of the
same N tokens at every layer) and returns ``float32[layers + 1, N, 2]``.

Fitting each layer on its own (what InterpreT's t-SNE did) gives axes that do not line up between
layers: the same token jumps across the plot when the layer slider moves. Here:

1. every layer's 2-D embedding is centred and scaled to unit RMS radius (display units);
2. UMAP and t-SNE start each layer from the previous layer's embedding (``aligned=True``), so the
   optimisation keeps the arrangement where the data allow;
3. each layer is then rotated (or reflected) onto the previous one by orthogonal Procrustes
   (the rotation minimising the summed squared displacement of the N points), which also fixes
   PCA's arbitrary sign and order of components.

Imports of umap-learn (numba: ~14 s the first time on 2 cores) and openTSNE happen inside the
functions that use them.
"""

from __future__ import annotations

import contextlib

import numpy as np
from threadpoolctl import threadpool_limits

METHODS = ("pca", "umap", "tsne")


def normalise(y: np.ndarray) -> np.ndarray:
    """float32[N, 2] centred, scaled to unit root-mean-square distance from the centre."""
    y = y.astype(np.float64) - y.mean(axis=0, keepdims=True)
    rms = np.sqrt((y ** 2).sum(axis=1).mean())
    return (y / rms if rms > 0 else y).astype(np.float32)


def procrustes(y: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The orthogonal R (2 x 2, rotation or reflection) minimising |y R - target|_F, applied: float32[N, 2].

    Both are expected centred (``normalise``). R = U V^T from the SVD of y^T target.
    """
    u, _, vt = np.linalg.svd(y.astype(np.float64).T @ target.astype(np.float64))
    return (y @ (u @ vt)).astype(np.float32)


def one_blas_thread() -> contextlib.AbstractContextManager:
    """numpy's BLAS on one thread inside the block (threadpoolctl; restored after it).

    A 20,000 x 384 product is ~0.2 s on one core, but in a process that also ran torch (its own
    OpenMP threads) on a busy machine, BLAS's default threads spin against them: 4.5 s measured."""
    return threadpool_limits(limits=1, user_api="blas")


def pca_2d(x: np.ndarray) -> np.ndarray:
    """float32[N, 2]: x[N, d] on its two principal axes (eigenvectors of the d x d scatter matrix).

    The N x d products run in float32 on one BLAS thread (``one_blas_thread``; a display projection:
    20,000 x 384 is one sgemm), the small d x d eigenproblem in float64."""
    with one_blas_thread():
        return _pca_2d(np.asarray(x, dtype=np.float32))


def _pca_2d(x: np.ndarray) -> np.ndarray:
    x = x - x.mean(axis=0, keepdims=True, dtype=np.float64).astype(np.float32)
    cov = (x.T @ x).astype(np.float64)
    vals, vecs = np.linalg.eigh(cov)
    top = vecs[:, np.argsort(vals)[::-1][:2]].astype(np.float32)
    if top.shape[1] < 2:  # d == 1
        top = np.pad(top, ((0, 0), (0, 2 - top.shape[1])))
    return (x @ top).astype(np.float32)


def _umap(x: np.ndarray, init: np.ndarray | None, seed: int, params: dict) -> np.ndarray:
    import umap  # noqa: PLC0415 - numba start-up only when UMAP is asked for

    n_neighbors = min(int(params.get("n_neighbors", 15)), max(2, len(x) - 1))
    reducer = umap.UMAP(n_components=2, n_neighbors=n_neighbors, min_dist=float(params.get("min_dist", 0.1)),
                        metric=params.get("metric", "euclidean"), random_state=seed,
                        init=init.astype(np.float64) if init is not None else "spectral",
                        n_epochs=params.get("n_epochs"), n_jobs=1)  # a seed makes UMAP single-threaded anyway
    return reducer.fit_transform(x).astype(np.float32)


def _tsne(x: np.ndarray, init: np.ndarray | None, seed: int, params: dict) -> np.ndarray:
    import openTSNE  # noqa: PLC0415
    from openTSNE.initialization import rescale

    perplexity = min(float(params.get("perplexity", 30)), max(1.0, (len(x) - 1) / 3))
    start = rescale(init.astype(np.float64)) if init is not None else "pca"
    tsne = openTSNE.TSNE(n_components=2, perplexity=perplexity, initialization=start, random_state=seed,
                         n_iter=int(params.get("n_iter", 500)), n_jobs=int(params.get("n_jobs", 1)),
                         metric=params.get("metric", "euclidean"))
    return np.asarray(tsne.fit(x.astype(np.float64)), dtype=np.float32)


def project_layers(points: np.ndarray, method: str = "pca", *, aligned: bool = True, seed: int = 0,
                   progress=None, **params) -> np.ndarray:
    """float32[layers, N, 2]: each layer of ``points: float32[layers, N, d]`` projected to 2-D.

    method: "pca" (instant), "umap" (umap-learn; params n_neighbors, min_dist, metric, n_epochs) or
    "tsne" (openTSNE; params perplexity, n_iter, n_jobs, metric). ``aligned``: start each layer from the
    previous one (UMAP, t-SNE) and rotate it onto the previous one (all methods); False fits and
    returns every layer on its own (still centred and scaled). ``progress``: a callable(layer) or None.
    """
    if method not in METHODS:
        raise ValueError(f"unknown projection {method!r}: use one of {', '.join(METHODS)}")
    if points.ndim != 3:
        raise ValueError(f"points must be float32[layers, N, d], got shape {points.shape}")
    L, N, _ = points.shape
    out = np.zeros((L, N, 2), dtype=np.float32)
    if N == 0:
        return out
    prev = None
    for layer in range(L):
        x = np.asarray(points[layer], dtype=np.float32)
        if method == "pca" or N < 5:  # too few points for a neighbour graph
            y = pca_2d(x)
        elif method == "umap":
            y = _umap(x, prev if aligned else None, seed, params)
        else:
            y = _tsne(x, prev if aligned else None, seed, params)
        y = normalise(y)
        if aligned and prev is not None:
            y = procrustes(y, prev)
        out[layer] = y
        prev = y
        if progress is not None:
            progress(layer)
    return out


def displacement(proj: np.ndarray) -> np.ndarray:
    """float32[layers - 1]: mean distance a point moves from layer l to l + 1 (``proj``: [layers, N, 2])."""
    return np.sqrt(((proj[1:] - proj[:-1]) ** 2).sum(axis=-1)).mean(axis=-1).astype(np.float32)


# --- AttentionViz: the queries and keys of one head in one picture ------------------------------
def query_key_layout(queries: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AttentionViz's (Yeh et al. 2023) preparation of one head's queries float32[N, d] and keys
    float32[M, d] for a joint projection: float32[N, d], float32[M, d].

    1. translation: the keys are moved so that their mean is the queries' mean (k + mean(q) - mean(k)).
       Each query's scores all shift by the same q . c, so its softmax attention is unchanged;
    2. scaling: queries times s, keys divided by s, with s = sqrt(mean |k| / mean |q|) taken after the
       translation, so both have the same mean norm; every q . k is unchanged.
    Without them queries and keys usually form two far-apart clouds and a projection shows only that.
    """
    q = np.asarray(queries, dtype=np.float64)
    k = np.asarray(keys, dtype=np.float64)
    k = k + (q.mean(axis=0) - k.mean(axis=0))
    nq, nk = np.linalg.norm(q, axis=1).mean(), np.linalg.norm(k, axis=1).mean()
    s = np.sqrt(nk / nq) if nq > 0 and nk > 0 else 1.0
    return (q * s).astype(np.float32), (k / s).astype(np.float32)


def project_query_key(queries: np.ndarray, keys: np.ndarray, method: str = "pca", *, seed: int = 0,
                      **params) -> tuple[np.ndarray, np.ndarray]:
    """float32[N, 2], float32[M, 2]: one head's queries and keys (``query_key_layout``) projected jointly
    (one PCA / UMAP / t-SNE of the N + M points, centred and scaled to unit RMS radius), so a query
    lies near the keys it attends to most."""
    if method not in METHODS:
        raise ValueError(f"unknown projection {method!r}: use one of {', '.join(METHODS)}")
    q, k = query_key_layout(queries, keys)
    x = np.concatenate([q, k])
    if method == "pca" or len(x) < 5:
        y = pca_2d(x)
    elif method == "umap":
        y = _umap(x, None, seed, params)
    else:
        y = _tsne(x, None, seed, params)
    y = normalise(y)
    return y[: len(q)], y[len(q):]
