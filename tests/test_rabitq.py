"""corpus_builder.rabitq: RaBitQ5 codes for FAISS's IVF index, computed without FAISS's per-vector search.

Real MiniLM token vectors (the packaged model over the builtin python-docs text); every figure is
compared with FAISS's own codes for the same trained index."""

from __future__ import annotations

import numpy as np
import pytest

faiss = pytest.importorskip("faiss")


def _trained(x, nlist=64):
    index = faiss.index_factory(x.shape[1], f"IVF{nlist},RaBitQ5", faiss.METRIC_INNER_PRODUCT)
    index.train(x)
    return index


def _fields(index, codes):
    d = index.d
    head, signs = index.coarse_code_size(), (d + 7) // 8
    ex_at = head + signs + 12
    ex_len = d * 4 // 8
    f = lambda at, k: np.ascontiguousarray(codes[:, at:at + 4 * k]).view(np.float32)  # noqa: E731
    return {"lists": codes[:, :head], "signs": codes[:, head:head + signs], "sign_factors": f(head + signs, 3),
            "ex_bits": codes[:, ex_at:ex_at + ex_len], "r_dot_c": f(ex_at + ex_len, 1), "rescale": f(ex_at + ex_len + 4, 1)}


def test_codes_share_faiss_layout_and_every_exact_field(token_vectors):
    """Same list, sign bits and sign factors as index.sa_encode; <r, c> to float32 rounding; the ex-bits
    (the chosen scaling) differ, and the rescale factor is the one for those ex-bits."""
    from corpus_builder import rabitq

    x = token_vectors
    index = _trained(x)
    assert rabitq.applies(index)
    ours, theirs = rabitq.encode(index, x), index.sa_encode(x)
    assert ours.shape == theirs.shape and ours.dtype == np.uint8
    a, b = _fields(index, ours), _fields(index, theirs)
    assert (a["lists"] == b["lists"]).mean() > 0.999  # (exact ties between two centroids aside)
    same = (a["lists"] == b["lists"]).all(axis=1)
    assert (a["signs"][same] == b["signs"][same]).all()
    # factors: float32 sums of 384 terms, differently ordered
    np.testing.assert_allclose(a["sign_factors"][same], b["sign_factors"][same], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(a["r_dot_c"][same], b["r_dot_c"][same], rtol=1e-3, atol=1e-5)
    assert (a["ex_bits"] != b["ex_bits"]).any(axis=1).mean() > 0.5  # a different scaling, really computed here
    # the rescale factor is ||r|| / <code + 1/2, o> for OUR codes: check it from the codes themselves
    lists = a["lists"][:, 0].astype(np.int64)
    r = x - index.quantizer.reconstruct_n(0, index.nlist)[lists]
    norm = np.linalg.norm(r.astype(np.float64), axis=1)
    o = np.abs(r) / norm[:, None]
    nib = a["ex_bits"]
    ex = np.empty((len(x), index.d), np.int64)
    ex[:, 0::2], ex[:, 1::2] = nib & 15, nib >> 4
    code = np.where(r < 0, 15 - ex, ex)
    np.testing.assert_allclose(a["rescale"][:, 0], norm / ((code + 0.5) * o).sum(axis=1), rtol=1e-5)


def test_search_with_these_codes_is_as_good_as_with_faiss_codes(token_vectors):
    """recall@50 against exact search at several nprobe, and the estimated inner products' error, with the
    index filled from these codes and from FAISS's (the same trained index)."""
    from corpus_builder import rabitq

    x = token_vectors
    rng = np.random.default_rng(0)
    q_rows = rng.choice(len(x), 200, replace=False)
    base = np.delete(x, q_rows, axis=0)
    queries = x[q_rows]
    index = _trained(base)
    ids = np.arange(len(base), dtype=np.int64)
    ours, theirs = faiss.clone_index(index), faiss.clone_index(index)
    ours.add_sa_codes(rabitq.encode(index, base), ids)
    theirs.add_sa_codes(index.sa_encode(base), ids)
    _, truth = faiss.knn(queries, base, 50, metric=faiss.METRIC_INNER_PRODUCT)
    for nprobe in (2, 8, 64):
        got = {}
        for name, idx in (("ours", ours), ("faiss", theirs)):
            idx.nprobe = nprobe
            scores, rows = idx.search(queries, 50)
            got[name] = np.mean([len(set(r) & set(t)) / 50 for r, t in zip(rows, truth)])
            if nprobe == 64:  # every cell: the estimates against the true inner products of the rows found
                exact = np.einsum("qd,qkd->qk", queries, base[rows])
                err = scores - exact
                got[name + "_rmse"], got[name + "_bias"] = float(np.sqrt((err ** 2).mean())), float(err.mean())
        # 200 queries x 50: a 0.005 margin is a quarter of one query's worth of misses per nprobe
        assert got["ours"] >= got["faiss"] - 0.005, (nprobe, got)
    assert got["ours_rmse"] <= 1.15 * got["faiss_rmse"] and abs(got["ours_bias"]) <= abs(got["faiss_bias"]) + 1e-3, got


def test_a_layout_that_disagrees_falls_back_to_faiss(token_vectors, monkeypatch, caplog):
    """When the first call's codes do not match FAISS's layout (here: the nibbles of the ex-bits swapped),
    that call and every later one for the layout return index.sa_encode's codes, with one warning."""
    from corpus_builder import rabitq

    x = token_vectors[:3000]
    index = _trained(x, nlist=32)
    real = rabitq._encode_rows

    def swapped(ivf, rows, lists, centroids):
        out = real(ivf, rows, lists, centroids)
        at = ivf.coarse_code_size() + ivf.d // 8 + 12
        ex = out[:, at:at + ivf.d // 2]
        out[:, at:at + ivf.d // 2] = (ex >> 4) | (ex << 4)
        return out

    monkeypatch.setattr(rabitq, "_encode_rows", swapped)
    monkeypatch.setattr(rabitq, "_checked", {})
    with caplog.at_level("WARNING", logger="corpus_builder.rabitq"):
        first = rabitq.encode(index, x)
        later = rabitq.encode(index, x[:500])
    assert (first == index.sa_encode(x)).all() and (later == index.sa_encode(x[:500])).all()
    assert sum("lays them out differently" in r.getMessage() for r in caplog.records) == 1


def test_other_indexes_are_encoded_by_faiss(token_vectors):
    from corpus_builder import rabitq

    x = token_vectors[:2000]
    for factory in ("IVF16,SQ6", "IVF16,RaBitQ"):
        index = faiss.index_factory(x.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
        index.train(x)
        assert not rabitq.applies(index)
        assert (rabitq.encode(index, x) == index.sa_encode(x)).all()
