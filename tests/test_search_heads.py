"""One-head and few-head search through per-head cells (compressed heads indexes).

Checked against naive re-implementations over the corpus's own float16 vectors (--keep-vectors): each
vector's cell is its nearest centroid per head, the candidates are exactly the vectors whose selected heads
fall in the query's nearest cells, scoring every cell equals the index's own full scan (the FAISS path of
version-1 corpora, whose heads index is IVF + SQ6), and corpus.search takes the per-head codes for every
heads query (version 2).
"""

from __future__ import annotations

import numpy as np
import pytest

from exbert_hub import corpus_format as cf

DOCS = "builtin:python-docs"
MINILM = "sentence-transformers/all-MiniLM-L6-v2"
LAYER = 1


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """MiniLM (a tiny random BERT's tokens are near-copies of each other: no ranking to check)."""
    from corpus_builder import build

    out = build(MINILM, DOCS, str(tmp_path_factory.mktemp("ivf") / "corpus"), max_sentences=150, workers=0,
                progress=False, exact_limit=0, recall_queries=60, layers=[LAYER], keep_vectors=True)
    return MINILM, out


@pytest.fixture(scope="module")
def corpus(built):
    from exbert_hub.corpus import CorpusCache, load_corpus

    return load_corpus(str(built[1]), cache=CorpusCache())


@pytest.fixture(scope="module")
def engine(built):
    import exbert_hub

    return exbert_hub.load(built[0])


def _kept(folder):
    files = sorted((folder / cf.kept_vectors_dir("heads", LAYER)).glob("*.npy"))
    return np.concatenate([np.load(f) for f in files]).astype(np.float32)


def test_card_and_files(corpus, built):
    info = corpus.index_info("heads", LAYER)
    hc = info["head_cells"]
    assert (hc["centroids"], hc["cells"]) == cf.head_cells_files("heads", LAYER)
    H = corpus.num_heads
    assert set(hc["nprobe"]) == {"1", "3", str(H)} and set(hc["recall_at_50"]) == {"1", "3", str(H)}
    assert all(0 < r <= 1 for r in hc["recall_at_50"].values())
    cents, cells = corpus._head_cells(LAYER)
    H = corpus.num_heads
    assert cents.dtype == np.float32 and cents.shape == (H, hc["cells_per_head"], info["dim"] // H)
    assert cells.shape == (H, info["vectors"]) and cells.dtype == np.uint8  # <= 256 cells per head
    # the card's bytes count the cells files; the download patterns take them
    from huggingface_hub.utils import filter_repo_objects

    assert set(filter_repo_objects(hc["files"], allow_patterns=cf.CORPUS_PATTERNS)) == set(hc["files"])


def test_cells_are_each_heads_nearest_centroid(corpus, built):
    X = _kept(built[1])
    cents, cells = corpus._head_cells(LAYER)
    H, C, d = cents.shape
    for h in range(H):
        scores = X[:, h * d:(h + 1) * d] @ cents[h].T  # inner product, as searched
        best = scores.max(axis=1)
        got = scores[np.arange(len(X)), cells[h]]
        assert np.all(got >= best - 1e-5 * np.maximum(1.0, np.abs(best)))  # ties within float32 rounding


def test_candidates_match_a_naive_selection(corpus, built):
    from exbert_hub.corpus import head_cell_candidates

    X = _kept(built[1])
    cents, cells = corpus._head_cells(LAYER)
    H, C, d = cents.shape
    rng = np.random.default_rng(3)
    for heads, nprobe in (([0], 1), ([2], 3), ([0, 1, 3], 2), ([1], C)):
        q = X[rng.integers(len(X))].copy()
        bitmap = head_cell_candidates(cents, cells, q, heads, nprobe)
        got = np.flatnonzero(np.unpackbits(bitmap, bitorder="little")[: len(X)])
        want = set()
        for h in heads:
            near = set(np.argsort(-(cents[h] @ q[h * d:(h + 1) * d]), kind="stable")[:nprobe].tolist())
            want |= {i for i in range(len(X)) if int(cells[h, i]) in near}
        assert set(got.tolist()) == want
    assert got.size == len(X)  # every cell: every vector


def test_every_cell_equals_the_index_full_scan(corpus, built, tmp_path):
    """Version-1 layout (a FAISS IVF + SQ6 heads index beside the cells, as the builder still makes when a
    factory is forced): the ID-selector path over every cell equals the index's own full scan."""
    import faiss

    from corpus_builder import indexing
    from exbert_hub.corpus import search_head_cells

    stats = indexing.build_index(tmp_path, "heads", LAYER, [_kept(built[1]).astype(np.float16)],
                                 num_heads=corpus.num_heads, factory="IVF16,SQ6", recall_queries=40)
    index = faiss.read_index(str(tmp_path / stats["file"]))
    cents, cells = np.load(tmp_path / stats["head_cells"]["centroids"]), np.load(tmp_path / stats["head_cells"]["cells"])
    H = corpus.num_heads
    rng = np.random.default_rng(0)
    queries = rng.standard_normal((20, index.d)).astype(np.float32)
    queries, kept = indexing.few_head_queries(queries, H, 1, rng)
    s1, r1 = search_head_cells(index, cents, cells, queries, kept, cents.shape[1], 10)
    ivf = faiss.extract_index_ivf(index)
    s2, r2 = index.search(queries, 10, params=faiss.SearchParametersIVF(nprobe=ivf.nlist))
    np.testing.assert_allclose(s1, s2, rtol=1e-5, atol=1e-6)
    assert (r1 == r2).mean() > 0.95  # equal scores may swap places


def test_search_uses_the_per_head_cells(corpus, engine, built, monkeypatch):
    from exbert_hub import corpus as corpus_mod

    X = _kept(built[1])
    calls = []
    real = corpus_mod.HeadCodes.search
    monkeypatch.setattr(corpus_mod.HeadCodes, "search", lambda self, *a, **k: calls.append(a[2]) or real(self, *a, **k))
    info = corpus.index_info("heads", LAYER)
    for sid in (3, 50, 120):
        a = engine.analyze(corpus.sentence(sid))
        for heads in ([1], [0, 2], [0, 1, 3]):
            hits = corpus.search(a, token=2, layer=LAYER, by="heads", heads=heads, k=20)
            assert (hits[0].sentence_id, hits[0].token_index) == (sid, 2)  # its own vector
            assert hits[0].score == pytest.approx(1.0, abs=2e-2)  # (6-bit codes)
            # the rest: among the exact top by the float16 vectors' mean cosine on those heads
            q, n = corpus.query_vector(a, 2, LAYER, "heads", heads)
            exact = np.argsort(-(X @ q))[:60]
            rows = [corpus._tokens.column("vector_row")[h.token_id].as_py() for h in hits]
            assert len(set(rows) & set(exact.tolist())) >= 15
    assert calls == [info["head_cells"]["nprobe"]["1"], info["head_cells"]["nprobe"]["3"],
                     info["head_cells"]["nprobe"]["3"]] * 3
    a = engine.analyze(corpus.sentence(3))
    H = corpus.num_heads
    hits = corpus.search(a, token=2, layer=LAYER, by="heads", k=5)  # all heads: the per-head codes too
    assert (hits[0].sentence_id, hits[0].token_index) == (3, 2) and hits[0].score == pytest.approx(1.0, abs=2e-2)
    assert len(calls) == 10 and calls[-1] == info["head_cells"]["nprobe"][str(H)]


def test_damaged_cells_file_is_one_line(built, tmp_path):
    import shutil

    from exbert_hub.corpus import CorpusCache, CorpusError, load_corpus

    copy = shutil.copytree(built[1], tmp_path / "c")
    rel = cf.head_cells_files("heads", LAYER)[1]
    np.save(copy / rel, np.zeros((2, 5), dtype=np.uint8))
    with pytest.raises(CorpusError, match="damaged: .*head-cells.npy holds uint8 \\(2, 5\\)") as err:
        load_corpus(str(copy), cache=CorpusCache())
    assert "\n" not in str(err.value) and str(tmp_path) not in str(err.value)
