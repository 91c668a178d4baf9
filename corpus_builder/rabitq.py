"""FAISS ``IVF{nlist},RaBitQ{b}`` codes (the embeddings' compressed index), about 10x faster than
``index.sa_encode``, for the same search quality.

FAISS (1.15) spends almost all of a multi-bit RaBitQ encode on one thing: for each vector, a sweep over
every point where some dimension's code steps up, looking for the scaling factor t that best aligns the
codes with the residual (0.15 ms of one core per 768-wide vector: more CPU than BERT-base's forward pass
per token, bench/RESULTS.md S16). The optimum is flat (the best and the next candidate differ by ~2e-7
relative), so a t close to it is as good. Here t comes from a closed-form model, for a whole batch at once:

- with o = |r| / ||r|| (r = x - its list's centroid) and M = 2^(b-1) - 1, a dimension's code is
  min(floor(t o_j), M). Only the largest o_j can reach the cap M inside FAISS's search range; the others
  give codes c_j + 1/2 ~ t o_j with a rounding error of variance 1/12;
- with the q largest saturated, the alignment <c + 1/2, o> / ||c + 1/2|| is about
  (t A + (M + 1/2) S) / sqrt(t^2 A + E), where S and 1 - A are the sums of those q o_j and o_j^2, and
  E = (d - q) / 12 + (M + 1/2)^2 q. It peaks at t = E / ((M + 1/2) S), which is kept inside the range where
  exactly q dimensions saturate and inside FAISS's [t_start, t_end); the best of q = 0..16 is taken;
- every correction factor stored with the codes is then computed for THESE codes (float64, stored as
  float32), so FAISS's distance estimates stay unbiased.

The byte layout is FAISS's (IndexIVF::sa_encode: the list number, then RaBitQuantizer's sign bits, three
sign-bit factors, the ex-bits and two ex-bit factors; RaBitQuantizerMultiBit.cpp and RaBitQUtils.cpp in
FAISS 1.15). Measured on 50,000 real MiniLM token vectors (384 wide, and two layers concatenated: 768),
nlist 256 and 1,024, 500 held-out queries: recall@50 at nprobe 4/8/16/all within 0.0008 of FAISS's own
codes (never more); estimated inner products bias -4.7e-4 / -6.0e-4 against FAISS's -4.5e-4 / -5.5e-4, the
same RMSE; one core, 768 wide, nlist 1,024: 0.017 against 0.14 ms per vector (the assignment to the nearest
centroid, a matrix product, is most of it). Because this depends on FAISS's internal layout, ``encode`` checks its first
call for each layout against ``index.sa_encode`` and uses FAISS from then on when they disagree.
"""

from __future__ import annotations

import logging
import threading

import numpy as np

log = logging.getLogger(__name__)

VERIFY_ROWS = 64  # rows of the first call per layout compared with index.sa_encode
BATCH = 1024  # rows per pass (temporaries of a few MB)
TOP = 16  # the q of the model: at most this many saturated dimensions
_LEVEL_EPS = 1e-5  # FAISS rounds t * o_j + 1e-5 down (a double)
_T_END_LEVELS = 10  # FAISS's search stops at t = (M + 10) / max o_j
_T_START = {1: 0.15, 2: 0.20, 3: 0.52, 4: 0.59, 5: 0.71, 6: 0.75, 7: 0.77, 8: 0.81}  # its start, per ex-bit count

_checked: dict[tuple, bool] = {}  # layout -> our codes agreed with FAISS's
_lock = threading.Lock()


def applies(index) -> bool:
    """Whether ``encode`` computes the codes itself (a trained plain inner-product IndexIVFRaBitQ with
    ex-bits, as ``indexing.default_factory`` makes for embeddings); otherwise it hands over to FAISS."""
    return _plain_ivf_rabitq(index) is not None


def _plain_ivf_rabitq(index):
    import faiss

    if type(index).__name__ != "IndexIVFRaBitQ" or not isinstance(index, faiss.IndexIVFRaBitQ):
        return None
    bits = int(getattr(getattr(index, "rabitq", None), "nb_bits", 1))  # (FAISS before multi-bit RaBitQ: 1)
    if not 2 <= bits <= 9 or index.metric_type != faiss.METRIC_INNER_PRODUCT or not index.is_trained:
        return None
    return index


def encode(index, x: np.ndarray) -> np.ndarray:
    """uint8 [n, index.sa_code_size()]: codes for ``index.add_sa_codes``, as ``index.sa_encode(x)`` gives
    (lists, signs and sign factors identical; ex-bits chosen as in the module docstring)."""
    import faiss

    x = np.ascontiguousarray(x, dtype=np.float32)
    ivf = _plain_ivf_rabitq(index)
    if ivf is None or not len(x):
        return index.sa_encode(x)
    layout = (faiss.__version__, ivf.d, int(ivf.rabitq.nb_bits), ivf.coarse_code_size(), ivf.sa_code_size())
    ok = _checked.get(layout)
    if ok is False:
        return index.sa_encode(x)
    centroids = ivf.quantizer.reconstruct_n(0, ivf.nlist)
    from .indexing import nearest_cells  # (indexing imports this module)

    lists = nearest_cells(centroids, x)  # in torch: FAISS's BLAS threads would spin beside the model's streams
    out = np.empty((len(x), ivf.sa_code_size()), np.uint8)
    for s in range(0, len(x), BATCH):
        out[s:s + BATCH] = _encode_rows(ivf, x[s:s + BATCH], lists[s:s + BATCH], centroids)
    if ok is None:
        m = min(VERIFY_ROWS, len(x))
        agree = _agrees(ivf, index.sa_encode(x[:m]), out[:m], x[:m], centroids)
        with _lock:
            _checked[layout] = agree
        if not agree:
            log.warning("RaBitQ codes: this FAISS (%s) lays them out differently; using its own encoder", faiss.__version__)
            return index.sa_encode(x)
    return out


def _scaling(o: np.ndarray, ex_bits: int) -> np.ndarray:
    """t per row of o (float32 [B, d], unit rows of |r|): the model's best (module docstring)."""
    B, d = o.shape
    M = (1 << ex_bits) - 1
    half = M + 0.5
    # the largest o_j, from the maxima of groups of 8 neighbours (a partial sort of d values costs more;
    # neighbours, not strided groups: a concatenation of layers has its outlier dimensions d/2 apart)
    if d % 8 == 0 and d >= 128:
        cand = o[:, 0::8].copy()
        for k in range(1, 8):  # (o[:, k::8][:, g] is dimension 8 g + k)
            np.maximum(cand, o[:, k::8], out=cand)
    else:
        cand = o
    m = min(TOP, cand.shape[1])
    top = -np.sort(-cand, axis=1)[:, :m].astype(np.float64)
    zero = np.zeros((B, 1))
    S = np.concatenate([zero, np.cumsum(top, axis=1)], axis=1)  # [B, q = 0..m]
    A = 1.0 - np.concatenate([zero, np.cumsum(top * top, axis=1)], axis=1)
    q = np.arange(m + 1, dtype=np.float64)
    E = (d - q) / 12.0 + half * half * q
    b = half * S
    with np.errstate(divide="ignore", invalid="ignore"):
        t = E / np.maximum(b, 1e-30)
        low = np.concatenate([zero, M / top], axis=1)  # exactly q saturated: M / o_(q) <= t < M / o_(q+1)
        high = np.concatenate([M / top, np.full((B, 1), np.inf)], axis=1)
        t = np.minimum(np.maximum(t, low), high * (1 - 1e-12))
        top1 = np.maximum(top[:, :1], 1e-30)
        t_end = (M + _T_END_LEVELS) / top1
        t = np.clip(t, _T_START[ex_bits] * t_end, t_end)
        f = (t * A + b) / np.sqrt(t * t * A + E)
    f = np.where(np.isfinite(f), f, -np.inf)
    return t[np.arange(B), f.argmax(axis=1)]


def _pack(codes: np.ndarray, bits: int) -> np.ndarray:
    """[n, d] codes of ``bits`` bits -> bytes, dimension j at bit j * bits, lowest bit first."""
    n, d = codes.shape
    if bits == 4 and d % 2 == 0:
        return codes[:, 0::2] | (codes[:, 1::2] << 4)
    if bits == 8:
        return codes
    planes = ((codes[:, :, None] >> np.arange(bits, dtype=np.uint8)) & 1).reshape(n, d * bits)
    return np.packbits(planes, axis=1, bitorder="little")


def _encode_rows(ivf, x: np.ndarray, lists: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    n, d = x.shape
    ex_bits = int(ivf.rabitq.nb_bits) - 1
    M = (1 << ex_bits) - 1
    head = ivf.coarse_code_size()
    signs = (d + 7) // 8
    ex_at = head + signs + 12
    ex_len = (d * ex_bits + 7) // 8
    out = np.empty((n, ivf.sa_code_size()), np.uint8)
    for i in range(head):
        out[:, i] = (lists >> (8 * i)) & 0xFF
    c = centroids[lists]
    r = x - c
    out[:, head:head + signs] = np.packbits(r > 0, axis=1, bitorder="little")
    # (per-row sums in float32, kept in float64 after: 768 terms round at ~1e-6 relative)
    norm2 = np.einsum("ij,ij->i", r, r).astype(np.float64)
    norm = np.sqrt(norm2)
    flat = norm < 1e-10  # a vector on its centroid: FAISS stores zero ex-bits and ex factors
    inv_norm = 1.0 / np.where(flat, 1.0, norm)
    o = np.abs(r)
    l1 = o.sum(axis=1, dtype=np.float64)
    o *= inv_norm[:, None].astype(np.float32)
    t = _scaling(o, ex_bits).astype(np.float32)
    levels = o * t[:, None]
    levels += np.float32(_LEVEL_EPS)
    np.floor(levels, out=levels)
    np.minimum(levels, M, out=levels)
    aligned = np.einsum("ij,ij->i", levels, o).astype(np.float64) + 0.5 * l1 * inv_norm
    code = levels.astype(np.uint8)
    code ^= (r < 0).view(np.uint8) * np.uint8(M)  # a negative dimension stores M - code
    code[flat] = 0
    out[:, ex_at:ex_at + ex_len] = _pack(code, ex_bits)
    with np.errstate(divide="ignore", invalid="ignore"):
        # the sign bits' factors: ||r||^2 - ||x||^2, ||r|| / (||r||_1 / (||r|| sqrt d)), and the error bound
        spread = l1 * inv_norm / np.sqrt(d)
        half_l1 = 0.5 * l1
        ratio = norm2 * (d * 0.25) / (half_l1 * half_l1)
        error = np.where((half_l1 > 1.2e-7) & (ratio > 1),
                         norm * 1.9 * np.sqrt(np.maximum(ratio - 1, 0) / max(d - 1, 1)), 0.0)
        factors = np.stack([norm2 - np.einsum("ij,ij->i", x, x),
                            np.where(np.abs(spread) < 1.2e-7, 1.0, 1.0 / spread) * norm, error], axis=1)
        # the ex-bits' factors: <r, c> and ||r|| / <codes + 1/2, o>
        extra = np.stack([np.einsum("ij,ij->i", r, c),
                          np.where(flat, 1.0, 1.0 / aligned) * norm], axis=1)
    extra[flat] = 0
    out[:, head + signs:ex_at] = factors.astype(np.float32).view(np.uint8)
    out[:, ex_at + ex_len:] = extra.astype(np.float32).view(np.uint8)
    return out


def _agrees(ivf, ref: np.ndarray, got: np.ndarray, x: np.ndarray, centroids: np.ndarray) -> bool:
    """Our codes against FAISS's for the same rows: the same list numbers (ties aside), identical sign
    bits, the same sign factors and <r, c> to float32 rounding, and residuals rebuilt from our ex-bits
    about as close to the true ones as from FAISS's (a misread layout gives garbage there)."""
    d = ivf.d
    head, signs = ivf.coarse_code_size(), (d + 7) // 8
    ex_bits = int(ivf.rabitq.nb_bits) - 1
    ex_at, ex_len = signs + 12, (d * ex_bits + 7) // 8
    same = (ref[:, :head] == got[:, :head]).all(axis=1)
    if same.mean() < 0.9:
        return False
    lists = sum(ref[same][:, i].astype(np.int64) << (8 * i) for i in range(head))
    ref, got = ref[same][:, head:], got[same][:, head:]
    residual = x[same].astype(np.float64) - centroids[lists]
    if not (ref[:, :signs] == got[:, :signs]).all():
        return False

    def floats(body, at, k):
        return np.ascontiguousarray(body[:, at:at + 4 * k]).view(np.float32)

    if not np.allclose(floats(ref, signs, 3), floats(got, signs, 3), rtol=1e-4, atol=1e-5):
        return False
    if not np.allclose(floats(ref, ex_at + ex_len, 1), floats(got, ex_at + ex_len, 1), rtol=1e-3, atol=1e-5):
        return False

    def rebuilt(body):  # sign and ex-bits -> +-(code + 1/2), times the stored ||r|| / <code + 1/2, o>
        sign = np.unpackbits(body[:, :signs], axis=1, bitorder="little")[:, :d].astype(np.int64)
        planes = np.unpackbits(np.ascontiguousarray(body[:, ex_at:ex_at + ex_len]), axis=1, bitorder="little")
        ex = (planes[:, :d * ex_bits].reshape(len(body), d, ex_bits).astype(np.int64) << np.arange(ex_bits)).sum(axis=2)
        value = ((sign << ex_bits) + ex) - ((1 << ex_bits) - 0.5)
        return value * floats(body, ex_at + ex_len + 4, 1).astype(np.float64)

    scale = np.maximum(np.linalg.norm(residual, axis=1), 1e-30)
    theirs = np.linalg.norm(rebuilt(ref) - residual, axis=1) / scale
    ours = np.linalg.norm(rebuilt(got) - residual, axis=1) / scale
    return bool(np.median(ours) <= 1.05 * np.median(theirs) + 1e-3 and (ours <= 2 * theirs + 0.02).all())
