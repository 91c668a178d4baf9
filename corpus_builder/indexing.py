"""Indexes of a corpus: exact below a size threshold, compressed above it (embeddings: FAISS IVF + RaBitQ5;
heads: per-head cells + 10-bit per-head residual codes, format version 2).

Exact tier: the float16 vectors themselves are stored (``index/<kind>-layerNN/*.npy``); the reader adds
them to a ``faiss.IndexFlatIP`` when first searched (inner product = cosine on unit vectors, exact up to
the float16 rounding of the stored vectors).

Compressed tier: a FAISS ``index_factory`` index: an inverted file of ``nlist`` k-means cells (a power
of two near sqrt(n)) whose vectors are coded
- embeddings: ``RaBitQ5`` (extended RaBitQ, 5 bits per dimension + correction factors: 262 bytes for 384
  dimensions, plus 8 bytes of id), its codes computed by ``rabitq.encode`` (about 10x FAISS's speed, the
  same recall);
- contexts (``heads``, version 1, or with a forced factory): ``SQ6``, 6-bit scalar codes (288 bytes + id). Unlike RaBitQ (whose random
  rotation mixes the heads, so one head's error is the whole vector's), each head keeps its own
  dimensions and a query on a subset of heads reads only their codes.

Chosen by measurement on real MiniLM vectors (recall@50 against exact search; bench/RESULTS.md, "Corpus"):
- 50,000 vectors, every cell visited: embeddings RaBitQ5 0.972 (270 B/vector), randomly rotated SQ6
  0.964 (298 B), SQ6 0.934, RaBitQ4 0.943, SQ8 0.984 (392 B), PQ96 0.90; contexts all heads / one head:
  SQ6 0.983 / 0.948, RaBitQ5 0.982 / 0.873, RaBitQ4 0.965 / 0.742, SQ4 0.946 / 0.787.
- 1,051,330 vectors (layer 1 of the docstrings corpus): rotated SQ6 needed every cell and still reached
  only 0.945, RaBitQ5 reached 0.977 visiting 4 of 1,024 cells.

``nprobe`` (cells visited) is tuned at build time on sampled corpus vectors to reach the recall target,
and recall@50 against exact search is measured on a separate held-out sample and written into the
dataset card. For ``heads`` indexes it is also tuned and measured for one-head queries (the other heads
zeroed): the cells are made from all heads, so such queries need more of them; their nprobe is capped
so a search visits at most ``ONE_HEAD_SCAN`` vectors.

Per-head cells (compressed heads indexes): each head also has k-means cells of its own unit slices
(``head_cells_count`` per head, one or two bytes per vector and head); queries on 1 to 3 heads score only
the vectors whose selected heads fall in the query's nearest cells (``exbert_hub.corpus.search_head_cells``),
with nprobe tuned and recall@50 measured for 1 and 3 heads (card ``head_cells``). Each head's slice is also
stored as 10-bit codes of its residual to its cell's centroid (``head_cells.codes``: 8 bits + 2 refinement
bits, head_dim * 1.25 bytes per head and vector), so those queries are scored in numpy on the candidates'
rows; 6-bit codes cap one-head recall@50 at ~0.80 at 1M, 8 bits at ~0.93, 10 bits at ~0.96.

Format version 2 (``build_head_codes``): a compressed heads index is ONLY the per-head cells and codes
(no FAISS file: version 1's IVF + SQ6 file, 298 bytes per vector, is gone); every heads query, one head to
all of them, is scored from them (``exbert_hub.corpus.HeadCodes``: each head's 8-bit codes scanned by a
FAISS IVF-SQ8 made in memory when first searched, the best rows re-scored with all 10 bits), nprobe tuned
and recall@50 measured for 1, 3 and all heads. A forced ``factory`` still builds the version-1 layout.

Streaming (``IndexStream``): the builder trains each index on the first vectors past the exact limit and
encodes every later shard as it arrives; recall is measured from each shard's exact top-k of the sampled
queries, so no vector is read twice.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import numpy as np

from exbert_hub import corpus_format as cf

from . import rabitq

RECALL_K = 50
RECALL_TARGET = 0.97  # nprobe is tuned to this on corpus tokens; live queries (text not in the corpus) land up to ~1 point lower
NPROBES = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)


def default_nlist(n: int) -> int:
    """Cells of the inverted file: a power of two near 1 * sqrt(n), at least 39 training points each."""
    target = max(16, int(math.sqrt(n)))
    nlist = 2 ** round(math.log2(target))
    while nlist > 16 and n / nlist < 64:
        nlist //= 2
    return int(nlist)


DEFAULT_CODE = "SQ6"  # contexts (heads)
EMBEDDING_CODE = "RaBitQ5"
IVF_TRAIN_ITERATIONS = 10
MAX_TRAIN = 200_000  # training vectors of an index at most
ONE_HEAD_SCAN = 500_000  # vectors a one-head query may visit (about 35 ms of SQ6 codes on 2 cores)


def default_factory(n: int, dim: int, num_heads: int, kind: str) -> str:
    code = EMBEDDING_CODE if kind == "embedding" else DEFAULT_CODE
    return f"IVF{default_nlist(n)},{code}"


def one_head_nprobe_cap(nlist: int, n: int) -> int:
    return max(1, min(nlist, nlist * ONE_HEAD_SCAN // max(n, 1)))


def as_float32(a) -> np.ndarray:
    """A C-contiguous float32 array of ``a`` (the same values: float16 to float32 is exact). Float16 is
    converted by torch, whose SIMD conversion ran ~9x numpy's on a shard's block (6,450 x 768, one thread:
    1 against 9 ms idle, 11 against 62 beside a running build; RESULTS S27): the builder converts every
    vector it codes or trains on."""
    a = np.asarray(a)
    if a.dtype != np.float16:
        return np.ascontiguousarray(a, dtype=np.float32)
    import torch

    if not (a.flags.c_contiguous and a.flags.writeable):  # (torch.from_numpy warns on read-only memory maps)
        a = np.array(a, order="C")  # a float16 copy: a memcpy, half the bytes of the result
    return torch.from_numpy(a).to(torch.float32).numpy()


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
                yield start + i, as_float32(a[i:i + rows])
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
            out[sel[order]] = as_float32(self.arrays[s][local[order]])
        return out


_KMEANS_DTYPE = None


def kmeans_dtype():
    """torch dtype of the k-means assignment products: bfloat16 where the CPU multiplies it natively (AMX or
    AVX512-BF16), else float32 (emulated bfloat16 is slower than float32)."""
    global _KMEANS_DTYPE
    if _KMEANS_DTYPE is None:
        import torch
        from exbert_hub.analyses.lens_kernel import cpu_flags

        flags = cpu_flags()[0]
        _KMEANS_DTYPE = torch.bfloat16 if {"amx_bf16", "avx512_bf16"} & flags else torch.float32
    return _KMEANS_DTYPE


def kmeans(sample: np.ndarray, k: int, *, niter: int = IVF_TRAIN_ITERATIONS, seed: int = 0,
           spherical: bool = False) -> np.ndarray:
    """float32[k, d]: Lloyd's k-means of ``sample`` [n >= k, d], as FAISS's ``Kmeans`` runs it (k of the points
    to start, ``niter`` rounds of assigning and averaging, an empty cell splitting the largest), on the
    calling thread's torch threads. The assignment products run in ``kmeans_dtype`` (a cell's mean stays
    float32): the cells move by a little less than bfloat16's rounding, and only points that close to a
    boundary change cell. ``spherical``: unit centroids, points assigned by inner product (FAISS's
    spherical k-means, and its IVF training for inner-product indexes); else by L2.

    Measured (bench/RESULTS.md, S21), 16,384 BERT-base vectors of 768, 256 cells, one core: 0.21 s against
    FAISS's 0.59 s, mean inner product to the assigned centroid over the layer within 0.001 of FAISS's."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(sample, dtype=np.float32))
    n, d = x.shape
    if n < k:
        raise ValueError(f"k-means of {k} cells needs at least {k} points, got {n}")
    rng = np.random.default_rng(seed)
    c = x[torch.from_numpy(np.sort(rng.choice(n, size=k, replace=False)))].clone()
    dtype = kmeans_dtype()
    xd = x.to(dtype)
    with torch.inference_mode():
        for _ in range(niter):
            s = (xd @ c.to(dtype).T).float()
            if not spherical:
                s -= 0.5 * (c * c).sum(1)
            a = torch.from_numpy(s.numpy().argmax(1))  # (numpy's row argmax: 8x torch's here)
            count = torch.bincount(a, minlength=k)
            c = torch.zeros(k, d).index_add_(0, a, x) / count.clamp(min=1)[:, None].float()
            for e in torch.nonzero(count == 0).flatten().tolist():  # an empty cell takes half of the largest
                big = int(count.argmax())
                count[big] -= count[big] // 2
                count[e] = count[big]
                nudge = 1 + 1e-4 * torch.from_numpy(rng.choice(np.array([-1.0, 1.0], np.float32), size=d))
                c[e], c[big] = c[big] * nudge, c[big] / nudge
            if spherical:
                c /= c.norm(dim=1, keepdim=True).clamp(min=1e-12)
    return c.numpy()


def train_ivf(index, sample: np.ndarray, seed: int = 0) -> None:
    """``index.train(sample)`` of a FAISS IVF index, its cells from ``kmeans`` (spherical for inner product,
    as FAISS trains them) put in its flat quantizer first, so FAISS trains only the codes. Other indexes
    (a forced factory with a transform before the IVF, such as PCA or OPQ, whose cells live in the
    transformed space, or a quantizer that is not flat) are trained by FAISS alone."""
    import faiss

    ivf = faiss.extract_index_ivf(index)
    plain = isinstance(faiss.downcast_index(index), faiss.IndexIVF) and ivf.d == sample.shape[1]
    if plain and ivf.quantizer.ntotal == 0 and isinstance(faiss.downcast_index(ivf.quantizer), faiss.IndexFlat):
        cells = kmeans(sample, ivf.nlist, niter=ivf.cp.niter, seed=seed,
                       spherical=index.metric_type == faiss.METRIC_INNER_PRODUCT)
        ivf.quantizer.add(np.ascontiguousarray(cells, dtype=np.float32))
    index.train(np.ascontiguousarray(sample, dtype=np.float32))


def products_with(right: np.ndarray):
    """A function of a float32 torch block [rows, d] to float32 torch [rows, len(right)]: block @ right.T,
    on the calling thread's torch threads, ``right`` [m, d] (numpy, or a contiguous float32 torch tensor)
    prepared once for every block.

    By oneDNN where ``exbert_hub.linear_kernels.onednn_preferred`` (an AMD CPU, whose MKL float32 kernels
    ran the builder's shapes at about half oneDNN's speed: cells, 6,450 x 768 against 512 centroids, 56
    against 28 ms; bench/RESULTS.md, S26), else torch's matmul. Same float32 arithmetic; the sums may
    round in another order (last-bit differences)."""
    import torch

    from exbert_hub.linear_kernels import onednn_linear, onednn_preferred

    r = right if isinstance(right, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(right, dtype=np.float32))
    if onednn_preferred():
        return lambda block: onednn_linear(block, r)
    return lambda block: block @ r.T


TOP_ROWS = 8192  # rows of x scored at a time by top_inner (oneDNN's products slowed 2x past 8,192, S26)
CELL_ROWS = 8192  # rows assigned to cells at a time by nearest_cells (32 MB of scores at 1,024 cells)


def top_inner(queries: np.ndarray, x: np.ndarray, k: int, heads: np.ndarray | None = None,
              num_heads: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(float32 scores [q, k], int64 rows [q, k]): each query's k largest inner products with the rows of
    ``x``, best first, as ``faiss.knn`` gives them, computed by torch (``products_with``) on the calling thread's torch threads
    (the builder's writer thread runs one; FAISS's BLAS threads would spin against the model's streams).

    ``heads`` (int [q, m], with ``num_heads``): each query is zero outside those m heads, so only their
    slices of ``x`` are multiplied (a one-head query costs 1/num_heads of a full one)."""
    import torch

    queries = np.ascontiguousarray(queries, dtype=np.float32)
    k = min(k, len(x))
    best = None
    q = torch.from_numpy(queries)
    partial = heads is not None and heads.shape[1] < num_heads
    if partial:
        d = queries.shape[1] // num_heads
        users = {h: torch.from_numpy(np.flatnonzero((heads == h).any(axis=1))) for h in range(num_heads)}
    with torch.inference_mode():
        for start in range(0, len(x), TOP_ROWS):
            block = torch.from_numpy(as_float32(x[start:start + TOP_ROWS]))
            if partial:
                scores = torch.zeros((len(q), len(block)))
                for h, rows in users.items():
                    if len(rows):
                        scores.index_add_(0, rows, q[rows, h * d:(h + 1) * d] @ block[:, h * d:(h + 1) * d].T)
            else:
                scores = products_with(block)(q)
            s, i = torch.topk(scores, min(k, len(block)), dim=1)
            best = _merge_topk(best, (s.numpy(), i.numpy() + start), k)
    if best is None:
        return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
    return best


def nearest_cells(centroids: np.ndarray, x: np.ndarray) -> np.ndarray:
    """int64[n]: the cell of largest inner product of each row of ``x``: float32 products by torch
    (``products_with``), CELL_ROWS rows at a time (a [rows, cells] block), each row's argmax by numpy
    (torch's row argmax or topk took 8x as long on these blocks)."""
    import torch

    out = np.zeros(len(x), dtype=np.int64)
    with torch.inference_mode():
        scores = products_with(centroids)
        for start in range(0, len(x), CELL_ROWS):
            block = torch.from_numpy(as_float32(x[start:start + CELL_ROWS]))
            out[start:start + len(block)] = scores(block).numpy().argmax(1)
    return out


def exact_topk(source: VectorSource, queries: np.ndarray, k: int) -> np.ndarray:
    """int64[q, k] rows of the k largest inner products (brute force over chunks with ``top_inner``, merged)."""
    best = None
    for start, chunk in source.chunks():
        s, i = top_inner(queries, chunk, k)
        best = _merge_topk(best, (s, i + start), k)
    return best[1] if best is not None else np.zeros((len(queries), 0), dtype=np.int64)


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


# --- per-head cells (one-head and few-head queries; see exbert_hub.corpus.head_cell_candidates) ------------
SATURATION_MARGIN = 0.005  # nprobe reaches within this of the recall of visiting every cell when that is under the target
HEAD_CELL_HEADS = (1, 3)  # query head counts whose cells-per-head nprobe is tuned and measured (the card)


def head_cells_count(n: int) -> int:
    """Cells per head: a power of two near sqrt(n) / 2, between 16 and 256 (one byte per vector and head:
    512 cells took 2 bytes for a residual only ~4% smaller, which the 10-bit codes absorb)."""
    return int(min(256, max(16, 2 ** round(math.log2(max(1.0, math.sqrt(n) / 2))))))


def train_head_cells(sample: np.ndarray, num_heads: int, cells: int, seed: int = 0) -> np.ndarray:
    """float32[heads, cells, head_dim]: k-means centroids of each head's unit slices of ``sample`` [n, heads*d]."""
    d = sample.shape[1] // num_heads
    out = np.empty((num_heads, cells, d), dtype=np.float32)
    for h in range(num_heads):
        out[h] = kmeans(sample[:, h * d:(h + 1) * d], cells, seed=seed + h)
    return out


def assign_head_cells(centroids: np.ndarray, chunk: np.ndarray) -> np.ndarray:
    """uint8/uint16[heads, n]: the nearest (inner product, as searched) cell of each head's slice of ``chunk``."""
    H, C, d = centroids.shape
    out = np.empty((H, len(chunk)), dtype=np.uint8 if C <= 256 else np.uint16)
    for h in range(H):
        out[h] = nearest_cells(centroids[h], chunk[:, h * d:(h + 1) * d])
    return out


HEAD_CODE_BITS = 10  # per-head residual codes: 8 bits cap one-head recall@50 at ~0.93 at 1M, 10 bits 0.96
HEAD_CODE_CLIP = 0.1  # percent of each dimension's residuals left outside the grid at each end


def train_head_codes(sample: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """float32[heads, 2, head_dim]: (offset, step) of each head's 10-bit grid, per dimension, over the
    residuals of ``sample`` [n, heads*d] to their cells' centroids (the HEAD_CODE_CLIP tails clipped)."""
    H, C, d = centroids.shape
    cells = assign_head_cells(centroids, sample)
    out = np.empty((H, 2, d), dtype=np.float32)
    for h in range(H):
        r = sample[:, h * d:(h + 1) * d] - centroids[h][cells[h]]
        lo, hi = np.percentile(r, [HEAD_CODE_CLIP, 100 - HEAD_CODE_CLIP], axis=0)
        out[h, 0], out[h, 1] = lo, np.maximum(hi - lo, 1e-12) / (2 ** HEAD_CODE_BITS - 1)
    return out


def encode_head_codes(quant: np.ndarray, centroids: np.ndarray, chunk: np.ndarray,
                      cells: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(codes uint8[heads, n, d]: high 8 bits, refine uint8[heads, n, ceil(d / 4)]: low 2 bits, four per byte)
    of ``chunk`` [n, heads*d] whose per-head cells are ``cells`` [heads, n] (exbert_hub.corpus.HeadCodes)."""
    H, C, d = centroids.shape
    n = len(chunk)
    codes = np.empty((H, n, d), dtype=np.uint8)
    refine = np.zeros((H, n, -(-d // 4)), dtype=np.uint8)
    for h in range(H):
        r = np.asarray(chunk[:, h * d:(h + 1) * d], dtype=np.float32) - centroids[h][cells[h]]
        c = np.clip(np.rint((r - quant[h, 0]) / quant[h, 1]), 0, 2 ** HEAD_CODE_BITS - 1).astype(np.uint16)
        codes[h] = c >> 2
        low = np.zeros((n, refine.shape[2] * 4), dtype=np.uint8)
        low[:, :d] = c & 3
        low = low.reshape(n, -1, 4)
        refine[h] = low[:, :, 0] | (low[:, :, 1] << 2) | (low[:, :, 2] << 4) | (low[:, :, 3] << 6)
    return codes, refine


def few_head_queries(queries: np.ndarray, num_heads: int, m: int, rng: np.random.Generator):
    """(queries with all heads but m random ones zeroed, the kept heads of each)."""
    q = queries.reshape(len(queries), num_heads, -1).copy()
    kept = [sorted(rng.choice(num_heads, size=m, replace=False).tolist()) for _ in range(len(queries))]
    mask = np.zeros((len(queries), num_heads, 1), dtype=np.float32)
    for i, hs in enumerate(kept):
        mask[i, hs] = 1
    return (q * mask).reshape(len(queries), -1), kept


def nprobe_candidates(top: int) -> list[int]:
    """The nprobes tried for cells-per-head tuning, up to ``top`` (the cells there are)."""
    return [p for p in (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)
            if p < top] + [int(top)]


def tune_head_cells(index, centroids, cells, queries, kept, truth, self_rows, k, target,
                    codes=None, cells_count: int | None = None, estimate: np.ndarray | None = None
                    ) -> tuple[int, float, float]:
    """Smallest cells-per-head nprobe reaching ``target`` recall on the first half of the queries; its
    recall on the other half. The search is the reader's own (exbert_hub.corpus.search_head_cells).
    ``cells_count``: the cells nprobe counts (default: the per-head cells; the coarse cells for many heads).

    With ``codes`` the nprobe is first guessed from ``estimated_head_recalls`` (every candidate nprobe from
    one pass over the codes; ``estimate``: already computed for the first half, at ``nprobe_candidates``) and
    the guess checked by the reader's search; the binary search over the reader's search, which used to cost
    every build ~7 searches of every tuning query per head count and layer (bench/RESULTS.md, S15), runs
    only when that check and the next nprobe's fail."""
    from exbert_hub.corpus import search_head_cells

    half = len(queries) // 2
    candidates = nprobe_candidates(int(cells_count or centroids.shape[1]))
    last = len(candidates) - 1

    def measure(p: int, sl: slice) -> float:
        qs, ks = queries[sl], kept[sl]
        # the queries split over the cores: each search is one query on one thread (FAISS and numpy release the GIL)
        parts = np.array_split(np.arange(len(qs)), max(1, min(tuning_threads(), len(qs))))
        parts = [ix for ix in parts if len(ix)] or [np.arange(len(qs))]

        def run(ix):
            return search_head_cells(index, centroids, cells, qs[ix], [ks[i] for i in ix], p, k + 1, codes=codes)[1]

        found = np.concatenate(list(_tuning_pool().map(run, parts))) if len(parts) > 1 else run(parts[0])
        return recall(without_self(found, self_rows[sl], k), truth[sl])

    measured: dict[int, float] = {}

    def at(i: int) -> float:
        if i not in measured:
            measured[i] = measure(candidates[i], slice(0, half))
        return measured[i]

    lo = 0
    if codes is not None and half:
        est = estimate if estimate is not None else estimated_head_recalls(
            codes, [(queries[:half], kept[:half], truth[:half], self_rows[:half], candidates, cells_count is not None)], k)[0]
        guess_target = min(target, float(est[-1]) - SATURATION_MARGIN)
        guess = int(np.argmax(est >= guess_target))
        if at(guess) >= guess_target:
            return int(candidates[guess]), at(guess), measure(candidates[guess], slice(half, None))
        # the first stage dropped rows the estimate kept: search above the guess. The next nprobe first, at
        # the same target: it settled every miss of a 20,000-gloss build (4 of 12 layers' three-head tuning,
        # bench/RESULTS.md, S25) without the every-cell search below, the costliest of all
        if guess < last and at(guess + 1) >= guess_target:
            return int(candidates[guess + 1]), at(guess + 1), measure(candidates[guess + 1], slice(half, None))
        lo = min(guess + 1, last)
    # the codes' precision caps recall (every cell visited); past that cap more cells only cost time
    target = min(target, at(last) - SATURATION_MARGIN)
    if lo and at(lo - 1) >= target:  # (the guess, under a cap lower than the estimate's)
        lo -= 1
    hi = last
    while lo < hi:
        mid = (lo + hi) // 2
        if at(mid) >= target:
            hi = mid
        else:
            lo = mid + 1
    return int(candidates[lo]), at(lo), measure(candidates[lo], slice(half, None))


_TUNING_POOL = None
TUNING_THREADS: int | None = None  # threads the tuning searches split over (None: the cores, at most 4)


def tuning_threads() -> int:
    return max(1, TUNING_THREADS or min(os.cpu_count() or 1, 4))


def _tuning_pool():
    """Threads for the tuning searches (queries split over the cores), made once. Not the reader's head-scan
    pool: a several-head search waits there for its per-head scans, which would then have no thread left."""
    global _TUNING_POOL
    if _TUNING_POOL is None:
        from concurrent.futures import ThreadPoolExecutor

        _TUNING_POOL = ThreadPoolExecutor(max_workers=tuning_threads(),
                                          thread_name_prefix="corpus-tuning")
    return _TUNING_POOL


ESTIMATE_CHUNK = 32768  # rows decoded at a time by estimated_head_recalls


def estimated_head_recalls(codes, groups, k: int) -> list[np.ndarray]:
    """For each group (queries, kept heads, truth, self rows, nprobes, coarse) of queries: float64[len(nprobes)],
    the mean recall@k at each nprobe of a per-head codes search whose first stage kept EVERY vector of the
    visited cells: each query's top ``k`` by its 10-bit codes among the vectors whose selected heads fall in
    its ``nprobe`` nearest cells (``coarse``: whose coarse cell is among its nearest).

    The reader's search (``exbert_hub.corpus.HeadCodes.search``) re-scores only its first stage's best rows,
    so this is an estimate of its recall, usually from above. Computed for every nprobe of every group from
    one pass over the codes (decoded once for all groups): a true neighbour's place among the visited
    vectors depends only on the vectors scoring at least the query's lowest-scoring true neighbour, so only
    those are kept (per query, sorted by score)."""
    from exbert_hub.corpus import HEAD_CELLS_MAX_HEADS

    H, C, d = codes.centroids.shape
    sizes = [len(g[0]) for g in groups]
    if not sum(sizes):
        return [np.zeros(len(g[4])) for g in groups]
    Q = np.ascontiguousarray(np.concatenate([g[0] for g in groups if len(g[0])]), dtype=np.float32)
    truth = np.concatenate([np.asarray(g[2], dtype=np.int64) for g in groups if len(g[0])])
    nq, n = len(Q), codes.ntotal
    # each query's lowest 10-bit score over its true top k, less a float margin (the chunked products below
    # may round differently from these)
    true_rows, where = np.unique(truth, return_inverse=True)
    true_scores = codes.decode(true_rows) @ Q.T  # [true rows, queries]: one decode for every query
    where = where.reshape(truth.shape)
    tau = np.array([true_scores[where[i], i].min() for i in range(nq)], dtype=np.float32)
    tau -= 1e-4 * np.maximum(1.0, np.abs(tau))
    rows_parts, query_parts, score_parts = [], [], []
    for a, x in codes.decoded_chunks(ESTIMATE_CHUNK):  # (which also fills the codes' coarse IVF, for the tuning)
        s = x @ Q.T  # [rows, queries]
        r, qi = np.nonzero(s >= tau[None, :])
        rows_parts.append(r + a)
        query_parts.append(qi)
        score_parts.append(s[r, qi])
    rows, qidx, scores = (np.concatenate(x) for x in (rows_parts, query_parts, score_parts))
    order = np.lexsort((-scores, qidx))  # by query, best first
    rows, qidx = rows[order], qidx[order]
    bounds = np.searchsorted(qidx, np.arange(nq + 1))
    out, first = [], 0
    for (_, kept, _, self_rows, nprobes, coarse), size in zip(groups, sizes):
        nprobes = np.asarray(list(nprobes), dtype=np.int64)
        total = np.zeros(len(nprobes))
        many = coarse and codes.coarse is not None and size and len(kept[0]) > HEAD_CELLS_MAX_HEADS
        for j in range(size):
            i = first + j
            r = rows[bounds[i]:bounds[i + 1]]
            r = r[r != self_rows[j]] if self_rows is not None else r
            if many:
                cents, assign = codes.coarse
                rank = np.empty(len(cents), dtype=np.int64)
                rank[np.argsort(-(cents @ Q[i]), kind="stable")] = np.arange(len(cents))
                near = rank[np.asarray(assign[r], dtype=np.int64)]
            else:
                near = np.full(len(r), C, dtype=np.int64)
                for h in kept[j]:
                    rank = np.empty(C, dtype=np.int64)
                    rank[np.argsort(-(codes.centroids[h] @ Q[i, h * d:(h + 1) * d]), kind="stable")] = np.arange(C)
                    near = np.minimum(near, rank[np.asarray(codes.cells[h][r], dtype=np.int64)])
            true = np.isin(r, truth[i])
            visited = near[None, :] < nprobes[:, None]  # [nprobes, rows]
            place = np.cumsum(visited, axis=1) - 1
            total += (visited & true[None, :] & (place < k)).sum(axis=1) / truth.shape[1]
        out.append(total / max(size, 1))
        first += size
    return out


def _tune(index, queries, truth, self_rows, k, target, max_nprobe: int | None = None,
          tune: bool = True) -> tuple[int, float, float]:
    """Smallest nprobe whose recall on the first half of the queries reaches ``target`` or, when the codes'
    precision caps recall lower, comes within SATURATION_MARGIN of an upper bound of every cell's recall;
    its recall on the other half. Without ``tune``: nprobe is the cap."""
    import faiss

    ivf = faiss.extract_index_ivf(index)
    half = len(queries) // 2

    def measure(sl) -> float:
        _, found = index.search(queries[sl], k + 1)
        return recall(without_self(found, self_rows[sl], k), truth[sl])

    cap = min(ivf.nlist, max_nprobe or ivf.nlist)
    if not tune:
        ivf.nprobe = cap
        r = measure(slice(None))
        return int(cap), r, r
    candidates = sorted({p for p in NPROBES if p <= cap} | {cap})
    measured: dict[int, float] = {}

    def at(i: int) -> float:
        if i not in measured:
            ivf.nprobe = candidates[i]
            measured[i] = measure(slice(0, half))
        return measured[i]

    hi = len(candidates) - 1
    # A search finds only vectors of the cells it visits, so the share b(p) of true neighbours in a query's
    # p nearest cells bounds its recall from above: candidates whose bound misses the goal cannot be the
    # answer. And a search over more cells finds the true neighbours it found in the first p cells (if at
    # all) among fewer competitors, plus at most those of the other cells, so every cell's recall is at most
    # r(p) + 1 - b(p): when the codes' precision caps recall under the target, the goal becomes that bound
    # less SATURATION_MARGIN (past the cap more cells only cost time, as for the head cells; RESULTS S23:
    # RaBitQ5 capped BERT-base-size embeddings at ~0.965, so every build chose every cell), and the walk
    # stops by the first candidate whose cells hold all but SATURATION_MARGIN of the true neighbours,
    # without searching every cell.
    bound = cell_coverage(ivf, queries[:half], truth[:half], candidates)

    def goal() -> float:
        ceiling = min([at(i) + 1 - bound[i] for i in measured] or [1.0])  # >= every cell's recall
        return min(target, ceiling - SATURATION_MARGIN)

    def first_possible(start: int) -> int:
        possible = np.flatnonzero(bound[start:] >= goal() - COVERAGE_MARGIN)
        return start + int(possible[0]) if len(possible) else hi

    # a search costs about its nprobe: walk up from the first possible candidate (a binary search's
    # midpoints cost more than the walk below them)
    lo = first_possible(0)
    while lo < hi and at(lo) < goal():
        lo = first_possible(lo + 1)
    chosen, tuned = candidates[lo], at(lo)
    ivf.nprobe = chosen
    return int(chosen), tuned, measure(slice(half, None))


COVERAGE_MARGIN = 0.002  # cell_coverage's bound, less this (10 of 5,000 true neighbours), for rounding in the cell order


def rows_lists(ivf) -> np.ndarray:
    """int64[ntotal]: the inverted list (cell) of each row id of a FAISS IVF index."""
    import faiss

    out = np.full(ivf.ntotal, -1, dtype=np.int64)
    lists = ivf.invlists
    for c in range(ivf.nlist):
        size = lists.list_size(c)
        if size:
            ids = faiss.rev_swig_ptr(lists.get_ids(c), size)
            out[np.asarray(ids, dtype=np.int64)] = c
    return out


def cell_coverage(ivf, queries: np.ndarray, truth: np.ndarray, nprobes: list[int]) -> np.ndarray:
    """float64[len(nprobes)]: the mean share of each query's true neighbours (``truth``, rows) that lie in
    its ``nprobe`` nearest cells, as the index's quantizer ranks them: an upper bound of the recall at each nprobe."""
    if not len(queries) or not truth.shape[1]:
        return np.ones(len(nprobes))
    _, order = ivf.quantizer.search(np.ascontiguousarray(queries, dtype=np.float32), ivf.nlist)
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(ivf.nlist)[None, :], axis=1)
    cell = rows_lists(ivf)[truth]  # [queries, k]
    place = np.take_along_axis(rank, np.maximum(cell, 0), axis=1)
    place[cell < 0] = ivf.nlist  # (a row not in the index: never found)
    return np.array([(place < p).mean() for p in nprobes])


def exact_stats(folder: Path, kind: str, layer: int) -> dict:
    """Card entry of an exact-tier index (a folder of float16 shard files)."""
    rel = cf.index_file(kind, layer, cf.EXACT)
    files = sorted((Path(folder) / rel).glob("*.npy"))
    shapes = [np.load(f, mmap_mode="r").shape for f in files]
    return {"tier": cf.EXACT, "file": rel, "vectors": int(sum(s[0] for s in shapes)),
            "dim": int(shapes[0][1]) if shapes else 0, "index": "IndexFlatIP over the float16 vectors (built when first searched)",
            "recall_at_50": 1.0, "bytes": int(sum(f.stat().st_size for f in files)), "shards": len(files)}


def build_index(folder: Path, kind: str, layer: int, arrays: list[np.ndarray], *, num_heads: int,
                factory: str | None = None, recall_queries: int = 200, seed: int = 0,
                target: float = RECALL_TARGET, max_train: int = MAX_TRAIN) -> dict:
    """Write the compressed index of one (kind, layer) into ``folder`` and return its stats for the card."""
    import faiss

    t0 = time.time()
    source = VectorSource(arrays)
    if kind == "heads" and factory is None:
        return build_head_codes(folder, layer, source, num_heads=num_heads, recall_queries=recall_queries,
                                seed=seed, target=target, max_train=max_train)
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
    n_train = min(source.n, max_train, ivf.nlist * 64)  # 64 per cell: k-means needs >= 39
    train_rows = np.sort(rng.choice(source.n, size=n_train, replace=False))
    train_ivf(index, source.take(train_rows), seed)
    for start, chunk in source.chunks():
        if rabitq.applies(index):
            index.add_sa_codes(rabitq.encode(index, chunk), np.arange(start, start + len(chunk), dtype=np.int64))
        else:
            index.add(chunk)
    # recall@50 against exact search, queries drawn from the corpus (their own row left out of both
    # lists): tune nprobe on half of them, report the other half
    nq = min(recall_queries, source.n)
    q_rows = rng.choice(source.n, size=nq, replace=False)
    queries = source.take(q_rows)
    k = min(RECALL_K, source.n - 1)
    hq = one_head_queries(queries, num_heads, rng) if kind == "heads" and num_heads > 1 else queries[:0]
    both = without_self(exact_topk(source, np.concatenate([queries, hq]), k + 1), np.concatenate([q_rows, q_rows[:len(hq)]]), k)
    truth, htruth = both[:nq], both[nq:]
    nprobe, tuned, measured = _tune(index, queries, truth, q_rows, k, target)
    stats.update(factory=factory, nlist=int(ivf.nlist), nprobe=nprobe, recall_at_50=round(measured, 4),
                 recall_at_50_tuning=round(tuned, 4), recall_queries=nq - nq // 2, train_vectors=int(n_train))
    if kind == "heads" and num_heads > 1:
        # small corpora: every cell (the whole index is at most ONE_HEAD_SCAN vectors), nothing to tune
        cap = one_head_nprobe_cap(ivf.nlist, source.n)
        hn, _, hmeasured = _tune(index, hq, htruth, q_rows, k, target, max_nprobe=cap, tune=cap < ivf.nlist)
        stats.update(nprobe_one_head=hn, recall_at_50_one_head=round(hmeasured, 4))
        faiss.extract_index_ivf(index).nprobe = nprobe
        stats["head_cells"] = _head_cells(folder, layer, index, source, train_rows, queries, q_rows, k,
                                          num_heads, rng, target, seed)
    faiss.write_index(index, str(tmp))
    os.replace(tmp, path)
    stats["bytes"] = path.stat().st_size + sum(
        (Path(folder) / f).stat().st_size for f in (stats.get("head_cells") or {}).get("files", ()))
    stats["seconds"] = round(time.time() - t0, 2)
    return stats


def _save(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.save(f, array)
    os.replace(tmp, path)


def _head_cells(folder, layer, index, source, train_rows, queries, q_rows, k, num_heads, rng, target, seed) -> dict:
    """Per-head cells of a compressed heads index: trained on the index's training rows, every vector
    assigned, written beside the index; nprobe tuned and recall@50 measured for 1 and 3 heads."""
    t0 = time.time()
    C = head_cells_count(source.n)
    centroids = train_head_cells(source.take(train_rows[: C * 64]), num_heads, C, seed)
    cells = np.concatenate([assign_head_cells(centroids, chunk) for _, chunk in source.chunks()], axis=1)
    crel, rel = cf.head_cells_files("heads", layer)
    _save(Path(folder) / crel, centroids)
    _save(Path(folder) / rel, cells)
    # per-head residual codes: one-head and few-head queries scored in numpy, without the FAISS codes
    from exbert_hub.corpus import HEAD_CODE_RERANK, HeadCodes

    quant = train_head_codes(source.take(train_rows[: C * 64]), centroids)
    codes = np.empty((num_heads, source.n, centroids.shape[2]), dtype=np.uint8)
    refine = np.empty((num_heads, source.n, -(-centroids.shape[2] // 4)), dtype=np.uint8)
    for start, chunk in source.chunks():
        codes[:, start:start + len(chunk)], refine[:, start:start + len(chunk)] = encode_head_codes(
            quant, centroids, chunk, cells[:, start:start + len(chunk)])
    qrel, krel, rrel = cf.head_codes_files("heads", layer)
    for r, a in ((qrel, quant), (krel, codes), (rrel, refine)):
        _save(Path(folder) / r, a)
    head_codes = HeadCodes(centroids, cells, quant, codes, refine)
    out = {"centroids": crel, "cells": rel, "files": [crel, rel, qrel, krel, rrel], "cells_per_head": C, "nprobe": {},
           "recall_at_50": {}, "recall_at_50_tuning": {},
           "codes": {"quant": qrel, "codes": krel, "refine": rrel, "bits": HEAD_CODE_BITS, "rerank": HEAD_CODE_RERANK}}
    for m in HEAD_CELL_HEADS:
        if m >= num_heads:
            continue
        mq, kept = few_head_queries(queries, num_heads, m, rng)
        truth = without_self(exact_topk(source, mq, k + 1), q_rows, k)
        p, tuned, measured = tune_head_cells(index, centroids, cells, mq, kept, truth, q_rows, k, target, head_codes)
        out["nprobe"][str(m)] = p
        out["recall_at_50"][str(m)] = round(measured, 4)
        out["recall_at_50_tuning"][str(m)] = round(tuned, 4)
    out["max_heads"] = max([int(m) for m in out["nprobe"]] or [0])
    out["seconds"] = round(time.time() - t0, 2)
    return out


# --- compressed heads indexes (format version 2): per-head cells + 10-bit per-head codes, nothing else --------
HEAD_CODES_FACTORY = "HeadCells+HeadCodes10"  # the card's `factory` of such an index


def head_query_counts(num_heads: int) -> list[int]:
    """Head counts whose cells-per-head nprobe is tuned and recall measured: 1, 3 and all heads."""
    return sorted({m for m in (*HEAD_CELL_HEADS, num_heads) if m <= num_heads})


def head_recall_sets(queries: np.ndarray, num_heads: int, rng: np.random.Generator) -> dict:
    """{head count: (queries with only those heads kept, the kept heads of each)} for ``head_query_counts``."""
    out = {}
    for m in head_query_counts(num_heads):
        if m == num_heads:
            out[m] = (queries, [list(range(num_heads))] * len(queries))
        else:
            out[m] = few_head_queries(queries, num_heads, m, rng)
    return out


def build_head_codes(folder: Path, layer: int, source: VectorSource, *, num_heads: int, recall_queries: int = 200,
                     seed: int = 0, target: float = RECALL_TARGET, max_train: int = MAX_TRAIN) -> dict:
    """The compressed heads index of one layer: per-head cells and 10-bit per-head residual codes (trained
    on a sample, every vector encoded in row order), nprobe tuned and recall@50 measured for 1, 3 and all heads."""
    t0 = time.time()
    rng = np.random.default_rng(seed)
    C = head_cells_count(source.n)
    nlist = default_nlist(source.n)
    n_train = min(source.n, max_train, max(C, nlist) * 64)
    sample = source.take(np.sort(rng.choice(source.n, size=n_train, replace=False)))
    centroids = train_head_cells(sample[: C * 64], num_heads, C, seed)
    quant = train_head_codes(sample[: C * 64], centroids)
    coarse = train_coarse_cells(sample, nlist, seed)
    d = centroids.shape[2]
    cells = np.empty((num_heads, source.n), dtype=np.uint8 if C <= 256 else np.uint16)
    codes = np.empty((num_heads, source.n, d), dtype=np.uint8)
    refine = np.empty((num_heads, source.n, -(-d // 4)), dtype=np.uint8)
    coarse_cells = np.empty(source.n, dtype=np.uint16)
    for start, chunk in source.chunks():
        end = start + len(chunk)
        cells[:, start:end] = assign_head_cells(centroids, chunk)
        codes[:, start:end], refine[:, start:end] = encode_head_codes(quant, centroids, chunk, cells[:, start:end])
        coarse_cells[start:end] = assign_coarse_cells(coarse, chunk)
    nq = min(recall_queries, source.n)
    q_rows = rng.choice(source.n, size=nq, replace=False)
    sets = head_recall_sets(source.take(q_rows), num_heads, rng)
    k = min(RECALL_K, source.n - 1)
    both = exact_topk(source, np.concatenate([q for q, _ in sets.values()]), k + 1)
    truth = {m: without_self(both[i * nq:(i + 1) * nq], q_rows, k) for i, m in enumerate(sets)}
    stats = head_codes_card(folder, layer, centroids, cells, quant, codes, refine, (coarse, coarse_cells), sets,
                            truth, q_rows, k, target)
    stats.update(train_vectors=int(n_train), seconds=round(time.time() - t0, 2))
    return stats


def train_coarse_cells(sample: np.ndarray, nlist: int, seed: int = 0) -> np.ndarray:
    """float32[nlist, D]: k-means centroids of whole (all-heads) vectors: the cells many-head queries visit."""
    # spherical (unit centroids): every heads vector has the same norm (sqrt(heads)), so the inner product
    # that assigns and searches the cells picks the nearest centroid; plain k-means centroids of unequal
    # norms drew most vectors into a few cells under the inner product (slow many-head queries)
    return kmeans(sample, nlist, seed=seed, spherical=True)


def assign_coarse_cells(centroids: np.ndarray, chunk: np.ndarray) -> np.ndarray:
    """uint16[n]: the nearest (inner product) coarse cell of each vector of ``chunk``."""
    return nearest_cells(centroids, chunk).astype(np.uint16)


KEEP_DECODED_BYTES = 512 * 2**20  # tuning a heads index this small: its vectors decoded once, not once per use


def head_codes_card(folder: Path, layer: int, centroids, cells, quant, codes, refine, coarse, sets: dict,
                    truth: dict, q_rows: np.ndarray, k: int, target: float) -> dict:
    """Write the per-head cells and codes files (and the coarse cells: ``coarse`` = (centroids, cells)) of a
    compressed heads index; tune and measure through the reader's own search (``exbert_hub.corpus.HeadCodes``);
    its card entry."""
    from exbert_hub.corpus import HEAD_CELLS_MAX_HEADS, HEAD_CODE_RERANK, HeadCodes

    folder = Path(folder)
    H, C, d = centroids.shape
    crel, hrel = cf.head_cells_files("heads", layer)
    qrel, krel, rrel = cf.head_codes_files("heads", layer)
    ccrel, cnrel = cf.head_coarse_files("heads", layer)
    (folder / cf.INDEX_DIR).mkdir(parents=True, exist_ok=True)
    for rel, a in ((crel, centroids), (hrel, cells), (qrel, quant), (krel, codes), (rrel, refine),
                   (ccrel, coarse[0]), (cnrel, coarse[1])):
        _save(folder / rel, a)
    head_codes = HeadCodes(centroids, cells, quant, codes, refine, coarse)
    if head_codes.ntotal * H * d * 4 <= KEEP_DECODED_BYTES:
        head_codes.keep_decoded()
    hc = {"centroids": crel, "cells": hrel, "files": [crel, hrel, qrel, krel, rrel, ccrel, cnrel],
          "cells_per_head": int(C), "nprobe": {}, "recall_at_50": {}, "recall_at_50_tuning": {},
          "codes": {"quant": qrel, "codes": krel, "refine": rrel, "bits": HEAD_CODE_BITS, "rerank": HEAD_CODE_RERANK},
          "coarse": {"centroids": ccrel, "cells": cnrel, "nlist": int(len(coarse[0]))}}
    counts = {m: len(coarse[0]) if m > HEAD_CELLS_MAX_HEADS else None for m in sets}  # many heads: coarse cells
    halves = {m: len(qs) // 2 for m, (qs, _) in sets.items() if len(qs) // 2}  # tune_head_cells' tuning halves
    groups = [(qs[:halves[m]], kept[:halves[m]], truth[m][:halves[m]], q_rows[:halves[m]],
               nprobe_candidates(counts[m] or C), counts[m] is not None)
              for m, (qs, kept) in sets.items() if m in halves]
    estimates = dict(zip(halves, estimated_head_recalls(head_codes, groups, k)))  # every head count at once
    for m, (qs, kept) in sets.items():
        if not len(qs):
            continue
        p, tuned, measured = tune_head_cells(None, centroids, cells, qs, kept, truth[m], q_rows, k, target, head_codes,
                                             cells_count=counts[m], estimate=estimates.get(m))
        hc["nprobe"][str(m)], hc["recall_at_50"][str(m)], hc["recall_at_50_tuning"][str(m)] = \
            p, round(measured, 4), round(tuned, 4)
    hc["max_heads"] = H
    n = int(cells.shape[1])
    stats = {"tier": cf.COMPRESSED, "file": krel, "vectors": n, "dim": H * d, "factory": HEAD_CODES_FACTORY,
             "index": "per-head cells + 10-bit per-head residual codes (every heads query)",
             "nprobe": hc["nprobe"].get(str(H)), "recall_at_50": hc["recall_at_50"].get(str(H)),
             "recall_at_50_tuning": hc["recall_at_50_tuning"].get(str(H)), "recall_queries": len(q_rows) - len(q_rows) // 2,
             "head_cells": hc}
    if H > 1 and "1" in hc["nprobe"]:
        stats.update(nprobe_one_head=hc["nprobe"]["1"], recall_at_50_one_head=hc["recall_at_50"]["1"])
    stats["bytes"] = sum((folder / f).stat().st_size for f in hc["files"])
    return stats


# --- streaming: train on the first vectors, encode every later shard as it arrives ---------------------
QUERY_SETS = ("all", "one", "three")  # recall queries of a heads index (one kind: "all" only)


class IndexStream:
    """A compressed index built while the shards arrive, without vector files and without a second pass.

    Until ``train_n`` vectors have arrived, each shard's float16 vectors are kept in
    ``.build/vectors/<stem>/`` (they ARE the exact tier if the corpus stays under the exact limit). Then
    ``train`` fits the IVF cells, the codes and (heads) the per-head cells on those vectors, draws the recall
    queries from them, and turns every kept shard into codes; each later shard goes straight to codes
    (``encode``): ``.build/codes/<stem>/shard-N.npy`` (FAISS standalone codes, cell number included),
    ``shard-N.cells.npy`` (per-head cells) and ``shard-N.truth.npz`` (the shard's exact top-k for every recall
    query, so recall needs no vectors later). ``finish`` adds the codes to the trained index, tunes nprobe
    and measures recall@50 on the held-out half of the queries: the same statistics as ``build_index``.
    Every file is written under a temporary name; a shard counts once its done marker exists (the builder's).
    """

    def __init__(self, folder: Path, kind: str, layer: int, num_heads: int, factory: str | None,
                 recall_queries: int, seed: int = 0):
        self.folder, self.kind, self.layer, self.num_heads = Path(folder), kind, layer, num_heads
        self.factory, self.recall_queries, self.seed = factory, recall_queries, seed
        stem = cf.index_stem(kind, layer)
        self.vectors_dir = self.folder / cf.build_vectors_dir(kind, layer)
        self.codes_dir = self.folder / cf.BUILD_DIR / "codes" / stem
        self.trained_file = self.folder / cf.BUILD_DIR / "trained" / f"{stem}.faiss"
        self.extra_file = self.folder / cf.BUILD_DIR / "trained" / f"{stem}.npz"  # queries, head centroids
        # heads without a forced factory: per-head cells and codes only (build_head_codes), no FAISS index
        self.codes_only = kind == "heads" and factory is None
        self._index = None
        self._extra = None

    def __getstate__(self) -> dict:
        # sent to an index worker process (index_workers): the files say everything, the loaded index stays here
        return dict(self.__dict__, _index=None, _extra=None)

    @property
    def trained(self) -> bool:
        return (self.codes_only or self.trained_file.exists()) and self.extra_file.exists()

    def buffered(self, shards: list[int]) -> list[Path]:
        return [self.vectors_dir / cf.vectors_shard_name(s) for s in shards]

    def _load(self):
        import faiss

        if self._extra is None:
            self._index = None if self.codes_only else faiss.read_index(str(self.trained_file))
            with np.load(self.extra_file) as z:
                self._extra = {k: z[k] for k in z.files}
        return self._index, self._extra

    def _train_codes(self, source: VectorSource, n_est: int, max_train: int) -> None:
        """``train`` of a per-head codes index: cells, the codes' grid and the recall queries (1, 3, all heads)."""
        rng = np.random.default_rng(self.seed)
        C = head_cells_count(n_est)
        n_train = min(source.n, max_train, max(C, default_nlist(n_est)) * 64)
        sample = source.take(np.sort(rng.choice(source.n, size=n_train, replace=False)))
        nq = min(self.recall_queries, source.n)
        q_rows = np.sort(rng.choice(source.n, size=nq, replace=False))
        sets = head_recall_sets(source.take(q_rows), self.num_heads, rng)
        centroids = train_head_cells(sample[: C * 64], self.num_heads, C, self.seed)
        extra = {"factory": np.array(HEAD_CODES_FACTORY), "train_vectors": np.array(n_train), "q_rows": q_rows,
                 "centroids": centroids, "head_quant": train_head_codes(sample[: C * 64], centroids),
                 "coarse": train_coarse_cells(sample, default_nlist(n_est), self.seed)}
        for m, (qs, kept) in sets.items():
            extra[f"q_{m}"] = qs
            extra[f"q_{m}_heads"] = np.array(kept, dtype=np.int64).reshape(len(qs), -1)
        _save_npz(self.extra_file, extra)  # last: "trained"

    def train(self, shards: list[int], total_estimate: int, max_train: int = MAX_TRAIN) -> None:
        """Fit on the kept vectors of ``shards`` (rows in shard order), then encode them."""
        import faiss

        arrays = [np.load(p, mmap_mode="r") for p in self.buffered(shards)]
        source = VectorSource(arrays)
        rng = np.random.default_rng(self.seed)
        n_est = max(total_estimate, source.n)
        if self.codes_only:
            self._train_codes(source, n_est, max_train)
            self._index, self._extra = None, None
            base = 0
            for s, a in zip(shards, arrays):
                self.encode(s, np.asarray(a), base)
                base += len(a)
            return
        factory = self.factory or default_factory(n_est, source.dim, self.num_heads, self.kind)
        index = faiss.index_factory(source.dim, factory, faiss.METRIC_INNER_PRODUCT)
        ivf = faiss.extract_index_ivf(index)
        ivf.cp.niter = IVF_TRAIN_ITERATIONS
        n_train = min(source.n, max_train, ivf.nlist * 64)
        train_rows = np.sort(rng.choice(source.n, size=n_train, replace=False))
        sample = source.take(train_rows)
        train_ivf(index, sample, self.seed)
        extra = {"factory": np.array(factory), "train_vectors": np.array(n_train)}
        nq = min(self.recall_queries, source.n)
        q_rows = np.sort(rng.choice(source.n, size=nq, replace=False))
        queries = source.take(q_rows)
        extra.update(q_rows=q_rows, q_all=queries)
        if self.kind == "heads" and self.num_heads > 1:
            hq = one_head_queries(queries, self.num_heads, rng)
            tq, kept = few_head_queries(queries, self.num_heads, 3, rng) if self.num_heads > 3 else (queries[:0], [])
            C = head_cells_count(n_est)
            centroids = train_head_cells(sample[: C * 64], self.num_heads, C, self.seed)
            extra.update(q_one=hq, q_three=tq, q_three_heads=np.array(kept, dtype=np.int64).reshape(len(tq), -1),
                         centroids=centroids, head_quant=train_head_codes(sample[: C * 64], centroids))
        self.trained_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.trained_file.with_name(self.trained_file.name + ".tmp")
        faiss.write_index(index, str(tmp))
        _save_npz(self.extra_file, extra)
        os.replace(tmp, self.trained_file)  # last: "trained" means both files are whole
        self._index, self._extra = None, None
        base = 0
        for s, a in zip(shards, arrays):
            self.encode(s, np.asarray(a), base)
            base += len(a)

    def encode(self, shard: int, vectors: np.ndarray, first_row: int) -> None:
        """Codes, per-head cells and exact top-k of the recall queries for one shard's vectors."""
        index, extra = self._load()
        x = as_float32(vectors)
        self.codes_dir.mkdir(parents=True, exist_ok=True)
        name = f"shard-{shard:05d}"
        truth = {}
        if self.codes_only:
            for m in head_query_counts(self.num_heads):
                queries = extra[f"q_{m}"]
                if len(queries) and len(x):
                    s, r = top_inner(queries, x, RECALL_K + 1, extra[f"q_{m}_heads"], self.num_heads)
                    truth[f"{m}_scores"], truth[f"{m}_rows"] = s, r + first_row
            cells = assign_head_cells(extra["centroids"], x)
            hcodes, hrefine = encode_head_codes(extra["head_quant"], extra["centroids"], x, cells)
            _save(self.codes_dir / f"{name}.hcodes.npy", hcodes)
            _save(self.codes_dir / f"{name}.hrefine.npy", hrefine)
            _save(self.codes_dir / f"{name}.coarse.npy", assign_coarse_cells(extra["coarse"], x))
            _save_npz(self.codes_dir / f"{name}.truth.npz", truth)
            _save(self.codes_dir / f"{name}.cells.npy", cells)  # last: its presence means the shard's files are whole
            return
        for q in QUERY_SETS:
            queries = extra.get(f"q_{q}")
            if queries is None or not len(queries) or not len(x):
                continue
            s, r = top_inner(queries, x, RECALL_K + 1)
            truth[f"{q}_scores"], truth[f"{q}_rows"] = s, r + first_row
        if "centroids" in extra:
            cells = assign_head_cells(extra["centroids"], x)
            if "head_quant" in extra:  # trained before the per-head codes existed: cells only
                hcodes, hrefine = encode_head_codes(extra["head_quant"], extra["centroids"], x, cells)
                _save(self.codes_dir / f"{name}.hcodes.npy", hcodes)
                _save(self.codes_dir / f"{name}.hrefine.npy", hrefine)
            _save(self.codes_dir / f"{name}.cells.npy", cells)  # last: its presence means the shard's head files are whole
        _save_npz(self.codes_dir / f"{name}.truth.npz", truth)
        _save(self.codes_dir / f"{name}.npy", rabitq.encode(index, x) if len(x) else np.zeros((0, index.sa_code_size()), np.uint8))

    def finish(self, shards: list[int], target: float = RECALL_TARGET) -> dict:
        """Write the index (and per-head cells) into the corpus folder; its card entry."""
        import faiss

        t0 = time.time()
        index, extra = self._load()
        if self.codes_only:
            return self._finish_codes(shards, extra, target, t0)
        rel = cf.index_file(self.kind, self.layer, cf.COMPRESSED)
        path = self.folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        n = 0
        truth: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        cells, hcodes, hrefine = [], [], []
        for s in shards:
            codes = np.load(self.codes_dir / f"shard-{s:05d}.npy")
            if len(codes):
                index.add_sa_codes(codes, np.arange(n, n + len(codes), dtype=np.int64))
            n += len(codes)
            with np.load(self.codes_dir / f"shard-{s:05d}.truth.npz") as z:
                for q in QUERY_SETS:
                    if f"{q}_scores" in z.files:
                        truth[q] = _merge_topk(truth.get(q), (z[f"{q}_scores"], z[f"{q}_rows"]), RECALL_K + 1)
            if "centroids" in extra:
                cells.append(np.load(self.codes_dir / f"shard-{s:05d}.cells.npy"))
            if "head_quant" in extra:
                hcodes.append(np.load(self.codes_dir / f"shard-{s:05d}.hcodes.npy"))
                hrefine.append(np.load(self.codes_dir / f"shard-{s:05d}.hrefine.npy"))
        ivf = faiss.extract_index_ivf(index)
        q_rows = extra["q_rows"]
        k = min(RECALL_K, n - 1)
        exact = {q: without_self(truth[q][1], q_rows, k) for q in truth}
        nq = len(q_rows)
        stats: dict = {"tier": cf.COMPRESSED, "file": rel, "vectors": n, "dim": index.d, "factory": str(extra["factory"])}
        nprobe, tuned, measured = _tune(index, extra["q_all"], exact["all"], q_rows, k, target)
        stats.update(nlist=int(ivf.nlist), nprobe=nprobe, recall_at_50=round(measured, 4),
                     recall_at_50_tuning=round(tuned, 4), recall_queries=nq - nq // 2,
                     train_vectors=int(extra["train_vectors"]), streamed=True)
        if "one" in exact:
            cap = one_head_nprobe_cap(ivf.nlist, n)
            hn, _, hmeasured = _tune(index, extra["q_one"], exact["one"], q_rows, k, target, max_nprobe=cap, tune=cap < ivf.nlist)
            stats.update(nprobe_one_head=hn, recall_at_50_one_head=round(hmeasured, 4))
            ivf.nprobe = nprobe
        if cells:
            centroids, cells_all = extra["centroids"], np.concatenate(cells, axis=1)
            crel, hrel = cf.head_cells_files(self.kind, self.layer)
            _save(self.folder / crel, centroids)
            _save(self.folder / hrel, cells_all)
            hc = {"centroids": crel, "cells": hrel, "files": [crel, hrel], "cells_per_head": int(centroids.shape[1]),
                  "nprobe": {}, "recall_at_50": {}, "recall_at_50_tuning": {}}
            from exbert_hub.corpus import HEAD_CODE_RERANK, HeadCodes, selected_heads

            head_codes = None
            if "head_quant" in extra:
                quant = extra["head_quant"]
                codes_all, refine_all = np.concatenate(hcodes, axis=1), np.concatenate(hrefine, axis=1)
                qrel, krel, rrel = cf.head_codes_files(self.kind, self.layer)
                for r, a in ((qrel, quant), (krel, codes_all), (rrel, refine_all)):
                    _save(self.folder / r, a)
                hc["files"] += [qrel, krel, rrel]
                hc["codes"] = {"quant": qrel, "codes": krel, "refine": rrel, "bits": HEAD_CODE_BITS,
                               "rerank": HEAD_CODE_RERANK}
                head_codes = HeadCodes(centroids, cells_all, quant, codes_all, refine_all)

            sets = {1: (extra["q_one"], [selected_heads(q, self.num_heads) for q in extra["q_one"]]),
                    3: (extra["q_three"], [list(map(int, r)) for r in extra["q_three_heads"]])}
            for m, (qs, kept) in sets.items():
                key = "one" if m == 1 else "three"
                if key not in exact or not len(qs):
                    continue
                p, t_, m_ = tune_head_cells(index, centroids, cells_all, qs, kept, exact[key], q_rows, k, target,
                                            head_codes)
                hc["nprobe"][str(m)], hc["recall_at_50"][str(m)], hc["recall_at_50_tuning"][str(m)] = p, round(m_, 4), round(t_, 4)
            hc["max_heads"] = max([int(m) for m in hc["nprobe"]] or [0])
            stats["head_cells"] = hc
        tmp = path.with_name(path.name + ".tmp")
        faiss.write_index(index, str(tmp))
        os.replace(tmp, path)
        stats["bytes"] = path.stat().st_size + sum((self.folder / f).stat().st_size
                                                   for f in (stats.get("head_cells") or {}).get("files", ()))
        stats["seconds_finish"] = round(time.time() - t0, 2)
        return stats


    def _finish_codes(self, shards: list[int], extra: dict, target: float, t0: float) -> dict:
        """``finish`` of a per-head codes index: the shards' cells and codes joined, tuned, measured."""
        cells, hcodes, hrefine, coarse = [], [], [], []
        truth: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        counts = head_query_counts(self.num_heads)
        for s in shards:
            name = self.codes_dir / f"shard-{s:05d}"
            cells.append(np.load(f"{name}.cells.npy"))
            coarse.append(np.load(f"{name}.coarse.npy"))
            hcodes.append(np.load(f"{name}.hcodes.npy"))
            hrefine.append(np.load(f"{name}.hrefine.npy"))
            with np.load(f"{name}.truth.npz") as z:
                for m in counts:
                    if f"{m}_scores" in z.files:
                        truth[m] = _merge_topk(truth.get(m), (z[f"{m}_scores"], z[f"{m}_rows"]), RECALL_K + 1)
        cells_all = np.concatenate(cells, axis=1)
        n = int(cells_all.shape[1])
        q_rows = extra["q_rows"]
        k = min(RECALL_K, n - 1)
        sets = {m: (extra[f"q_{m}"], [list(map(int, r)) for r in extra[f"q_{m}_heads"]]) for m in counts if m in truth}
        exact = {m: without_self(truth[m][1], q_rows, k) for m in sets}
        stats = head_codes_card(self.folder, self.layer, extra["centroids"], cells_all, extra["head_quant"],
                                np.concatenate(hcodes, axis=1), np.concatenate(hrefine, axis=1),
                                (extra["coarse"], np.concatenate(coarse)), sets, exact, q_rows, k, target)
        stats.update(train_vectors=int(extra["train_vectors"]), streamed=True, seconds_finish=round(time.time() - t0, 2))
        return stats


def _merge_topk(a, b, k):
    """Merge two (scores, rows) top lists [q, *] into the top ``k`` (largest scores first)."""
    if a is None:
        s, r = b
    else:
        s, r = np.concatenate([a[0], b[0]], axis=1), np.concatenate([a[1], b[1]], axis=1)
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, order, axis=1), np.take_along_axis(r, order, axis=1)


def _save_npz(path: Path, arrays: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)
