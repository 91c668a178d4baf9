"""FAISS indexes of a corpus: exact below a size threshold, compressed (IVF + RaBitQ) above it.

Exact tier: the float16 vectors themselves are stored (``index/<kind>-layerNN.npy``); the reader adds
them to a ``faiss.IndexFlatIP`` when first searched (inner product = cosine on unit vectors, exact up to
the float16 rounding of the stored vectors).

Compressed tier: a FAISS ``index_factory`` index, by default ``IVF<nlist>,RaBitQ5``: an inverted file of
``nlist`` k-means cells (a power of two near sqrt(n)) whose residuals are coded with 5-bit extended
RaBitQ (5 bits per dimension plus correction factors: 260 bytes for 384 dimensions, plus 8 bytes of
id). Chosen by measurement on 100k-160k real MiniLM vectors (bench/RESULTS.md, "Corpus"): at the same
cells visited, recall@50 was PQ192x4fs 0.64, SQ4 0.76, PQ128 0.85, SQ6 0.92, PQ192 0.93, RaBitQ4 0.945,
RaBitQ5 0.968, SQ8 0.974 (384 bytes), so RaBitQ5 gives SQ8's recall in 2/3 of its bytes and builds in
seconds (PQ with 192 sub-quantizers took minutes to train).

``nprobe`` (cells visited) is tuned at build time on sampled corpus vectors to reach the recall target,
and recall@50 against exact search is measured on a separate held-out sample and written into the
dataset card. For ``heads`` indexes it is also measured for one-head queries (the other heads zeroed),
whose nprobe is tuned separately and capped at nlist/4: the cells and codes are made from all heads, so
one-head recall is lower (see the card).
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import numpy as np

from exbert_hub import corpus_format as cf

RECALL_K = 50
RECALL_TARGET = 0.96  # nprobe is tuned to this on half the queries, so the held-out half lands near 0.95+
NPROBES = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)


def default_nlist(n: int) -> int:
    """Cells of the inverted file: a power of two near 1 * sqrt(n), at least 39 training points each."""
    target = max(16, int(math.sqrt(n)))
    nlist = 2 ** round(math.log2(target))
    while nlist > 16 and n / nlist < 64:
        nlist //= 2
    return int(nlist)


DEFAULT_CODE = "RaBitQ5"
IVF_TRAIN_ITERATIONS = 10


def default_factory(n: int, dim: int, num_heads: int, kind: str) -> str:
    return f"IVF{default_nlist(n)},{DEFAULT_CODE}"


class VectorSource:
    """The float16 vectors of one (kind, layer) across all shard files, read in row order."""

    def __init__(self, arrays: list[np.ndarray]):
        self.arrays = [a for a in arrays if len(a)]
        self.n = sum(len(a) for a in self.arrays)
        self.dim = int(self.arrays[0].shape[1]) if self.arrays else 0

    def chunks(self, rows: int = 65536):
        """(first_row, float32 chunk) in row order."""
        start = 0
        for a in self.arrays:
            for i in range(0, len(a), rows):
                yield start + i, np.asarray(a[i:i + rows], dtype=np.float32)
            start += len(a)

    def take(self, rows: np.ndarray) -> np.ndarray:
        """float32 vectors of the given (sorted or not) global rows."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), self.dim), dtype=np.float32)
        bounds = np.cumsum([0] + [len(a) for a in self.arrays])
        which = np.searchsorted(bounds, rows, side="right") - 1
        for s in np.unique(which):
            sel = np.flatnonzero(which == s)
            local = rows[sel] - bounds[s]
            order = np.argsort(local)
            out[sel[order]] = np.asarray(self.arrays[s][local[order]], dtype=np.float32)
        return out


def exact_topk(source: VectorSource, queries: np.ndarray, k: int) -> np.ndarray:
    """int64[q, k] rows of the k largest inner products (brute force, chunked)."""
    best_s = np.full((len(queries), 0), -np.inf, dtype=np.float32)
    best_i = np.zeros((len(queries), 0), dtype=np.int64)
    for start, chunk in source.chunks():
        scores = queries @ chunk.T
        ids = np.broadcast_to(np.arange(start, start + len(chunk)), scores.shape)
        s = np.concatenate([best_s, scores], axis=1)
        i = np.concatenate([best_i, ids], axis=1)
        if s.shape[1] > k:
            part = np.argpartition(-s, k - 1, axis=1)[:, :k]
            s = np.take_along_axis(s, part, axis=1)
            i = np.take_along_axis(i, part, axis=1)
        best_s, best_i = s, i
    return best_i


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    k = truth.shape[1]
    return float(np.mean([len(set(f[f >= 0].tolist()) & set(t.tolist())) / k for f, t in zip(found, truth)]))


def without_self(ids: np.ndarray, self_rows: np.ndarray | None, k: int) -> np.ndarray:
    """Each row's first ``k`` ids other than the query's own row (queries drawn from the corpus itself
    would otherwise count their trivial self-match)."""
    if self_rows is None:
        return ids[:, :k]
    return np.stack([row[row != s][:k] for row, s in zip(ids, self_rows)])


def one_head_queries(queries: np.ndarray, num_heads: int, rng: np.random.Generator) -> np.ndarray:
    """Each query with all heads but one (random) zeroed: the hardest subset query."""
    q = queries.reshape(len(queries), num_heads, -1).copy()
    keep = rng.integers(0, num_heads, size=len(queries))
    mask = np.zeros((len(queries), num_heads, 1), dtype=np.float32)
    mask[np.arange(len(queries)), keep] = 1
    return (q * mask).reshape(len(queries), -1)


def _tune(index, queries, truth, self_rows, k, target, max_nprobe: int | None = None) -> tuple[int, float, float]:
    """Smallest nprobe reaching ``target`` recall on the first half of the queries; its recall on the other half."""
    import faiss

    ivf = faiss.extract_index_ivf(index)
    half = len(queries) // 2

    def measure(sl) -> float:
        _, found = index.search(queries[sl], k + 1)
        return recall(without_self(found, self_rows[sl], k), truth[sl])

    chosen, tuned = None, 0.0
    cap = min(ivf.nlist, max_nprobe or ivf.nlist)
    for nprobe in sorted({p for p in NPROBES if p <= cap} | {cap}):
        ivf.nprobe = nprobe
        tuned = measure(slice(0, half))
        chosen = nprobe
        if tuned >= target:
            break
    ivf.nprobe = chosen
    return int(chosen), tuned, measure(slice(half, None))


def exact_stats(folder: Path, kind: str, layer: int) -> dict:
    """Card entry of an exact-tier index (a folder of float16 shard files)."""
    rel = cf.index_file(kind, layer, cf.EXACT)
    files = sorted((Path(folder) / rel).glob("*.npy"))
    shapes = [np.load(f, mmap_mode="r").shape for f in files]
    return {"tier": cf.EXACT, "file": rel, "vectors": int(sum(s[0] for s in shapes)),
            "dim": int(shapes[0][1]) if shapes else 0, "index": "IndexFlatIP over the float16 vectors (built when first searched)",
            "recall_at_50": 1.0, "bytes": int(sum(f.stat().st_size for f in files)), "shards": len(files)}


def build_index(folder: Path, kind: str, layer: int, arrays: list[np.ndarray], *, num_heads: int,
                factory: str | None = None, recall_queries: int = 400, seed: int = 0,
                target: float = RECALL_TARGET, max_train: int = 200_000) -> dict:
    """Write the compressed index of one (kind, layer) into ``folder`` and return its stats for the card."""
    import faiss

    t0 = time.time()
    source = VectorSource(arrays)
    rel = cf.index_file(kind, layer, cf.COMPRESSED)
    path = Path(folder) / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    stats: dict = {"tier": cf.COMPRESSED, "file": rel, "vectors": source.n, "dim": source.dim}
    rng = np.random.default_rng(seed)
    factory = factory or default_factory(source.n, source.dim, num_heads, kind)
    index = faiss.index_factory(source.dim, factory, faiss.METRIC_INNER_PRODUCT)
    ivf = faiss.extract_index_ivf(index)
    ivf.cp.niter = IVF_TRAIN_ITERATIONS
    n_train = min(source.n, max_train, max(ivf.nlist * 64, 65536))
    train_rows = np.sort(rng.choice(source.n, size=n_train, replace=False))
    index.train(source.take(train_rows))
    for start, chunk in source.chunks():
        index.add(chunk)
    # recall@50 against exact search, queries drawn from the corpus (their own row left out of both
    # lists): tune nprobe on half of them, report the other half
    nq = min(recall_queries, source.n)
    q_rows = rng.choice(source.n, size=nq, replace=False)
    queries = source.take(q_rows)
    k = min(RECALL_K, source.n - 1)
    truth = without_self(exact_topk(source, queries, k + 1), q_rows, k)
    nprobe, tuned, measured = _tune(index, queries, truth, q_rows, k, target)
    stats.update(factory=factory, nlist=int(ivf.nlist), nprobe=nprobe, recall_at_50=round(measured, 4),
                 recall_at_50_tuning=round(tuned, 4), recall_queries=nq - nq // 2, train_vectors=int(n_train))
    if kind == "heads" and num_heads > 1:
        hq = one_head_queries(queries, num_heads, rng)
        htruth = without_self(exact_topk(source, hq, k + 1), q_rows, k)
        hn, _, hmeasured = _tune(index, hq, htruth, q_rows, k, target, max_nprobe=max(1, ivf.nlist // 4))
        stats.update(nprobe_one_head=hn, recall_at_50_one_head=round(hmeasured, 4))
        faiss.extract_index_ivf(index).nprobe = nprobe
    faiss.write_index(index, str(tmp))
    os.replace(tmp, path)
    stats["bytes"] = path.stat().st_size
    stats["seconds"] = round(time.time() - t0, 2)
    return stats
