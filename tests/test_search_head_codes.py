"""Per-head residual codes (10 bits: 8 + 2 refinement) of compressed heads indexes.

Checked against naive re-implementations over the corpus's own float16 vectors (--keep-vectors): the
codes decode to each head's residual within half a grid step (clipped tails aside), candidates are
exactly the vectors in the query's nearest cells, scores equal a naive decode-and-dot, the re-ranked top k
is the naive top k among the candidates, recall against exact search, old corpora (no codes files) search
as before, and damaged files give one line.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from exbert_hub import corpus_format as cf

DOCS = "builtin:python-docs"
MINILM = "sentence-transformers/all-MiniLM-L6-v2"
LAYER = 1


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    from corpus_builder import build

    return build(MINILM, DOCS, str(tmp_path_factory.mktemp("codes") / "corpus"), max_sentences=150, workers=0,
                 progress=False, exact_limit=0, recall_queries=60, layers=[LAYER], keep_vectors=True)


@pytest.fixture(scope="module")
def corpus(built):
    from exbert_hub.corpus import CorpusCache, load_corpus

    return load_corpus(str(built), cache=CorpusCache())


def _kept(folder):
    files = sorted((folder / cf.kept_vectors_dir("heads", LAYER)).glob("*.npy"))
    return np.concatenate([np.load(f) for f in files]).astype(np.float32)


def _naive_decode(hc, h):
    """float32[N, d]: head h's slices as the codes store them, decoded one dimension at a time."""
    N, d = hc.codes.shape[1], hc.codes.shape[2]
    out = np.empty((N, d), dtype=np.float32)
    for j in range(d):
        low = (hc.refine[h][:, j // 4].astype(np.int64) >> (2 * (j % 4))) & 3
        code = hc.codes[h][:, j].astype(np.int64) * 4 + low
        out[:, j] = hc.centroids[h][hc.cells[h], j] + hc.lo[h, j] + code * hc.step[h, j]
    return out


def test_card_files_and_decode(corpus, built):
    info = corpus.index_info("heads", LAYER)
    codes = info["head_cells"]["codes"]
    assert (codes["quant"], codes["codes"], codes["refine"]) == cf.head_codes_files("heads", LAYER)
    assert codes["bits"] == 10
    from huggingface_hub.utils import filter_repo_objects

    files = info["head_cells"]["files"]
    assert set(files) >= {codes["quant"], codes["codes"], codes["refine"]}
    assert set(filter_repo_objects(files, allow_patterns=cf.CORPUS_PATTERNS)) == set(files)
    # format 2: the per-head cells and codes are the whole heads index (no FAISS file beside them)
    assert info["file"] == codes["codes"] and info["factory"] == "HeadCells+HeadCodes10"
    assert info["bytes"] == sum((built / f).stat().st_size for f in files)
    assert not list((built / cf.INDEX_DIR).glob("heads-*.faiss"))
    X = _kept(built)
    hc = corpus._head_codes(LAYER)
    H, C, d = hc.centroids.shape
    naive = np.concatenate([_naive_decode(hc, h) for h in range(H)], axis=1)
    np.testing.assert_allclose(hc.decode(slice(0, 300)), naive[:300], rtol=1e-5, atol=1e-6)
    # in several blocks of rows (a last one shorter), and rows given as an array in any order
    import exbert_hub.corpus as corpus_module

    rows = np.random.default_rng(0).permutation(len(naive))[:1000]
    saved = corpus_module.DECODE_ROWS
    for block in (saved, 128, 77):
        corpus_module.DECODE_ROWS = block
        try:
            np.testing.assert_allclose(hc.decode(slice(None)), naive, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(hc.decode(rows), naive[rows], rtol=1e-5, atol=1e-6)
        finally:
            corpus_module.DECODE_ROWS = saved
    # the coarse cells (queries on more than 3 heads): each vector's nearest coarse centroid
    coarse = info["head_cells"]["coarse"]
    assert (coarse["centroids"], coarse["cells"]) == cf.head_coarse_files("heads", LAYER)
    assert {coarse["centroids"], coarse["cells"]} <= set(files)
    cents, assign = hc.coarse
    assert cents.shape == (coarse["nlist"], H * d) and assign.shape == (len(X),) and assign.dtype == np.uint16
    ip = X @ cents.T
    assert np.all(ip[np.arange(len(X)), assign] >= ip.max(axis=1) - 1e-4)
    for h in range(H):
        dec = _naive_decode(hc, h)
        err = np.abs(dec - X[:, h * d:(h + 1) * d])
        inside = err <= hc.step[h] / 2 * (1 + 1e-3) + 1e-6
        assert inside.mean() > 0.99  # only the clipped tails (0.1% each side in training) lie outside


def test_coarse_ivf_filled_by_the_decoded_chunks_is_the_readers(corpus, built):
    """The builder's tuning fills the coarse IVF from the chunks it decodes for its recall estimate: the
    same index as the reader's own (same rows, lists, codes: same results), set only once every chunk is read."""
    import faiss

    from exbert_hub.corpus import HeadCodes

    hc = corpus._head_codes(LAYER)
    fresh = lambda: HeadCodes(hc.centroids, hc.cells, np.stack([hc.lo, hc.step], axis=1), hc.codes, hc.refine, hc.coarse)  # noqa: E731
    readers, builders = fresh(), fresh()
    chunks = builders.decoded_chunks(700)
    next(chunks)
    assert builders._coarse_ivf is None  # (a chunk read, not all)
    seen = [0] + [a for a, _ in chunks]
    assert seen == list(range(0, hc.ntotal, 700)) and builders._coarse_ivf is not None
    a, b = readers.coarse_ivf(), builders.coarse_ivf()
    assert a.ntotal == b.ntotal == hc.ntotal
    q = np.ascontiguousarray(hc.decode(slice(0, 20)))
    params = faiss.SearchParametersIVF(nprobe=4)
    (da, ia), (db, ib) = a.search(q, 30, params=params), b.search(q, 30, params=params)
    assert (ia == ib).all() and (da == db).all()


def test_candidates_scores_and_top_k_match_naive(corpus, built):
    X = _kept(built)
    hc = corpus._head_codes(LAYER)
    H, C, d = hc.centroids.shape
    decoded = np.concatenate([_naive_decode(hc, h) for h in range(H)], axis=1)
    rng = np.random.default_rng(5)
    for heads, nprobe in (([0], 1), ([2], 4), ([0, 1, 3], 2), ([1, 2], C)):
        q = X[rng.integers(len(X))].copy()
        rows = hc.candidates(q, heads, nprobe)
        want = set()
        for h in heads:
            near = np.argsort(-(hc.centroids[h] @ q[h * d:(h + 1) * d]), kind="stable")[:nprobe]
            want |= set(np.flatnonzero(np.isin(hc.cells[h], near)).tolist())
        assert rows.tolist() == sorted(want)
        cols = np.concatenate([np.arange(h * d, (h + 1) * d) for h in heads])
        naive = decoded[rows][:, cols] @ q[cols]
        got = hc.scores(q, heads, rows, refined=True)
        np.testing.assert_allclose(got, naive, rtol=1e-4, atol=1e-4 * len(heads))
        # the 8-bit part: the same with the low bits replaced by their middle (1.5 steps)
        half = hc.scores(q, heads, rows, refined=False)
        shift = sum(float((hc.step[h] * 1.5) @ q[h * d:(h + 1) * d]) for h in heads)
        low_part = naive - (sum(((hc.refine[h][rows][:, np.arange(d) // 4].astype(np.int64) >> (2 * (np.arange(d) % 4))) & 3)
                                @ (hc.step[h] * q[h * d:(h + 1) * d]) for h in heads))
        np.testing.assert_allclose(half, low_part + shift, rtol=1e-4, atol=1e-4 * len(heads))
        # rerank >= candidates: the top 10 is the naive top 10 of the full scores
        s, r = hc.search(q, heads, nprobe, 10, rerank=len(rows))
        order = np.argsort(-naive, kind="stable")[:10]
        np.testing.assert_allclose(s, naive[order], rtol=1e-4, atol=1e-4 * len(heads))
        sure = rows[naive > naive[order[-1]] + 1e-4 * len(heads)]  # clearly above the 10th: must be found
        assert set(sure.tolist()) <= set(r.tolist())


def test_recall_against_exact_search(corpus, built):
    """Against the float16 vectors' exact top 20 on one, three and all heads, every cell visited: the codes
    alone decide (the card's tuned nprobe is checked at 1M in bench/RESULTS.md)."""
    from corpus_builder import indexing

    X = _kept(built)
    hc = corpus._head_codes(LAYER)
    H, C, _ = hc.centroids.shape
    rng = np.random.default_rng(1)
    rows = rng.choice(len(X), size=40, replace=False)
    for m in (1, 3, H):  # format 2: all heads are scored from the per-head codes too
        qs, kept = indexing.few_head_queries(X[rows], H, m, rng)
        found = np.stack([hc.search(q, hs, C, 20)[1] for q, hs in zip(qs, kept)])
        truth = np.stack([np.argsort(-(X @ q), kind="stable")[:20] for q in qs])
        assert indexing.recall(found, truth) >= 0.95
    info = corpus.index_info("heads", LAYER)["head_cells"]
    assert all(r >= 0.9 for r in info["recall_at_50"].values())  # the card's, tuned nprobe


def test_search_uses_codes_and_old_corpora_still_work(corpus, built, tmp_path):
    import exbert_hub
    from exbert_hub import corpus as corpus_mod
    from exbert_hub.corpus import CorpusCache, load_corpus

    engine = exbert_hub.load(MINILM)
    a = engine.analyze(corpus.sentence(7))
    new = corpus.search(a, token=2, layer=LAYER, by="heads", heads=[1], k=10)
    assert (new[0].sentence_id, new[0].token_index) == (7, 2)
    assert new[0].score == pytest.approx(1.0, abs=5e-3)  # 10-bit codes: closer than the 6-bit ones
    # a version-1 corpus: its heads index is a FAISS IVF + SQ6 file (made here by the builder's code with that
    # factory forced, from the kept vectors); first with its per-head codes, then without them (the oldest)
    from corpus_builder import indexing

    old = shutil.copytree(built, tmp_path / "old")
    for name in cf.head_cells_files("heads", LAYER) + cf.head_codes_files("heads", LAYER):
        (old / name).unlink()
    stats = indexing.build_index(old, "heads", LAYER, [_kept(built).astype(np.float16)], num_heads=corpus.num_heads,
                                 factory="IVF16,SQ6", recall_queries=40)
    assert stats["file"].endswith(".faiss")
    card = cf.read_card(old)
    card["format_version"] = 1
    card["indexes"]["heads"] = {LAYER: stats}
    body = (built / cf.CARD_FILE).read_text().split("---", 2)[2]
    cf.write_card(old, card, body)
    c1 = load_corpus(str(old), cache=CorpusCache())
    assert not isinstance(c1._index("heads", LAYER), corpus_mod.HeadCodes)  # the FAISS index
    for heads in ([1], None):  # one head: cells + codes; all heads: FAISS's IVF cells
        hits = c1.search(a, token=2, layer=LAYER, by="heads", heads=heads, k=10)
        assert (hits[0].sentence_id, hits[0].token_index) == (7, 2)
    hc = stats["head_cells"]
    for key in ("quant", "codes", "refine"):
        (old / hc["codes"][key]).unlink()
    hc["files"] = hc["files"][:2]
    del hc["codes"]
    card["indexes"]["heads"] = {LAYER: stats}
    cf.write_card(old, card, body)
    c2 = load_corpus(str(old), cache=CorpusCache())
    assert c2._head_codes(LAYER) is None
    hits = c2.search(a, token=2, layer=LAYER, by="heads", heads=[1], k=10)
    assert (hits[0].sentence_id, hits[0].token_index) == (7, 2)
    # a version-2 card whose codes file is gone: one line, no path
    broken = shutil.copytree(built, tmp_path / "broken")
    (broken / cf.head_codes_files("heads", LAYER)[1]).unlink()
    with pytest.raises(corpus_mod.CorpusError, match="incomplete: it lacks 'index/heads-layer01.head-codes.npy'") as err:
        load_corpus(str(broken), cache=CorpusCache())
    assert "\n" not in str(err.value) and str(tmp_path) not in str(err.value)


@pytest.mark.parametrize("which", ["codes", "refine", "quant"])
def test_damaged_code_files_are_one_line(built, tmp_path, which):
    from exbert_hub.corpus import CorpusCache, CorpusError, load_corpus

    copy = shutil.copytree(built, tmp_path / "c")
    rel = dict(zip(("quant", "codes", "refine"), cf.head_codes_files("heads", LAYER)))[which]
    np.save(copy / rel, np.zeros((2, 5), dtype=np.uint8))
    with pytest.raises(CorpusError, match=f"damaged: .*head-{which}.npy holds uint8 \\(2, 5\\)") as err:
        load_corpus(str(copy), cache=CorpusCache())
    assert "\n" not in str(err.value) and str(tmp_path) not in str(err.value)
    (copy / rel).write_bytes(b"not npy")
    with pytest.raises(CorpusError, match="not a readable .npy file") as err:
        load_corpus(str(copy), cache=CorpusCache())
    assert "\n" not in str(err.value)


def test_newer_format_is_refused_in_one_line(built, tmp_path):
    from exbert_hub.corpus import CorpusCache, CorpusError, load_corpus

    copy = shutil.copytree(built, tmp_path / "newer")
    card = cf.read_card(copy)
    assert card["format_version"] == cf.FORMAT_VERSION == 2
    card["format_version"] = cf.FORMAT_VERSION + 1
    cf.write_card(copy, card, (built / cf.CARD_FILE).read_text().split("---", 2)[2])
    with pytest.raises(CorpusError, match="version '3'; this exbert-hub reads 'exbert-hub-corpus' up to version 2: "
                                          "upgrade exbert-hub") as err:
        load_corpus(str(copy), cache=CorpusCache())
    assert "\n" not in str(err.value) and str(tmp_path) not in str(err.value)


def _naive_recalls(hc, X, qs, kept, truth, self_rows, k, nprobes, coarse):
    """recall@k at each nprobe of the top k by a naive decode-and-dot among every vector of the visited cells."""
    H, C, d = hc.centroids.shape
    decoded = np.concatenate([_naive_decode(hc, h) for h in range(H)], axis=1)
    out = []
    for p in nprobes:
        hits = 0.0
        for q, hs, t, s in zip(qs, kept, truth, self_rows):
            if coarse:
                cents, assign = hc.coarse
                near = np.argsort(-(cents @ q), kind="stable")[:p]
                rows = np.flatnonzero(np.isin(assign, near))
            else:
                rows = hc.candidates(q, hs, p)
            rows = rows[rows != s]
            top = rows[np.argsort(-(decoded[rows] @ q), kind="stable")[:k]]
            hits += len(set(top.tolist()) & set(t.tolist())) / len(t)
        out.append(hits / len(qs))
    return np.array(out)


def test_estimated_recalls_equal_a_naive_count_and_tuning_reaches_the_target(corpus, built):
    """The builder's nprobe guess (every nprobe from one pass over the codes) equals a naive count of the
    true neighbours in the top k among the visited cells' vectors; the tuned nprobe then reaches the target
    through the reader's own search, checked by running that search."""
    from corpus_builder import indexing
    from exbert_hub.corpus import search_head_cells

    X = _kept(built)
    hc = corpus._head_codes(LAYER)
    H, C, _ = hc.centroids.shape
    rng = np.random.default_rng(3)
    q_rows = rng.choice(len(X), size=24, replace=False)
    k = 20
    for m in (1, 3, H):
        qs, kept = indexing.few_head_queries(X[q_rows], H, m, rng)
        exact = np.stack([np.argsort(-(X @ q), kind="stable")[:k + 1] for q in qs])
        truth = indexing.without_self(exact, q_rows, k)
        coarse = m > 3
        nprobes = [1, 2, 8, len(hc.coarse[0]) if coarse else C]
        half = len(qs) // 2
        est, est_half = indexing.estimated_head_recalls(
            hc, [(qs, kept, truth, q_rows, nprobes, coarse),
                 (qs[:half], kept[:half], truth[:half], q_rows[:half], nprobes, coarse)], k)
        naive = _naive_recalls(hc, X, qs, kept, truth, q_rows, k, nprobes, coarse)
        # equal up to a tie in float rounding (one neighbour of one query)
        np.testing.assert_allclose(est, naive, atol=1.01 / (k * len(qs)))
        naive_half = _naive_recalls(hc, X, qs[:half], kept[:half], truth[:half], q_rows[:half], k, nprobes, coarse)
        np.testing.assert_allclose(est_half, naive_half, atol=1.01 / (k * half))  # groups kept apart
        assert np.all(np.diff(est) >= -1e-12)  # more cells never lose a neighbour
        count = len(hc.coarse[0]) if coarse else None
        p, tuned, held = indexing.tune_head_cells(None, hc.centroids, hc.cells, qs, kept, truth, q_rows, k,
                                                  indexing.RECALL_TARGET, hc, cells_count=count)

        def real(nprobe, sl):
            _, found = search_head_cells(None, hc.centroids, hc.cells, qs[sl], kept[sl], nprobe, k + 1, codes=hc)
            return indexing.recall(indexing.without_self(found, q_rows[sl], k), truth[sl])

        top = count or C
        assert tuned == pytest.approx(real(p, slice(0, half)))
        assert held == pytest.approx(real(p, slice(half, None)))
        # the target, or (past the codes' cap) within the margin of the lower of the two caps
        cap = min(float(est_half[-1]), real(top, slice(0, half)))
        assert tuned >= min(indexing.RECALL_TARGET, cap - indexing.SATURATION_MARGIN) - 1e-9
