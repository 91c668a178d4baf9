"""corpus_builder.indexing's nprobe tuning of a FAISS IVF index (the embeddings' compressed index): the cell
coverage bound it starts from, checked against a direct count and against the searches' real recall, and
the nprobe it chooses, checked against a binary search over every candidate.

Real MiniLM token vectors (the packaged model over the builtin python-docs text)."""

from __future__ import annotations

import numpy as np
import pytest

faiss = pytest.importorskip("faiss")


@pytest.fixture(scope="module")
def tuned_setup(token_vectors):
    from corpus_builder import indexing, rabitq

    x = token_vectors
    index = faiss.index_factory(x.shape[1], "IVF64,RaBitQ5", faiss.METRIC_INNER_PRODUCT)
    index.train(x)
    index.add_sa_codes(rabitq.encode(index, x), np.arange(len(x), dtype=np.int64))
    rng = np.random.default_rng(0)
    q_rows = np.sort(rng.choice(len(x), size=120, replace=False))
    k = 50
    s = x[q_rows] @ x.T
    order = np.argsort(-s, axis=1, kind="stable")[:, : k + 1]
    truth = indexing.without_self(order, q_rows, k)
    return index, x, q_rows, truth, k


def test_cell_coverage_is_the_direct_count_and_bounds_recall(tuned_setup):
    from corpus_builder import indexing

    index, x, q_rows, truth, k = tuned_setup
    ivf = faiss.extract_index_ivf(index)
    nprobes = [1, 2, 4, 8, 16, 64]
    bound = indexing.cell_coverage(ivf, x[q_rows], truth, nprobes)
    _, own_cell = ivf.quantizer.search(x, 1)  # each vector's list, as FAISS assigned it
    for p, b in zip(nprobes, bound):
        _, near = ivf.quantizer.search(x[q_rows], p)
        direct = np.mean([np.isin(own_cell[t, 0], near[i]).mean() for i, t in enumerate(truth)])
        assert b == pytest.approx(direct, abs=1e-12)
        ivf.nprobe = p
        _, found = index.search(x[q_rows], k + 1)
        got = indexing.recall(indexing.without_self(found, q_rows, k), truth)
        assert got <= b + 1e-12  # a search finds nothing outside the cells it visits
    assert bound[-1] == 1.0 and bound[0] < 0.9  # every cell holds every neighbour; one cell misses many


@pytest.mark.parametrize("target", [0.8, 0.9, 0.95, 0.97, 0.999])
def test_tuned_nprobe_reaches_the_target_or_the_codes_cap_with_few_searches(tuned_setup, monkeypatch, target):
    """The chosen nprobe's real recall reaches the target or, when even every cell stays under it (the
    codes' precision), comes within SATURATION_MARGIN of every cell's recall; never more cells than the
    first candidate reaching the target; no candidate searched twice, none above the answer but the first
    (the first the cell coverage allows for the target), and every cell only when it is the answer."""
    from corpus_builder import indexing

    index, x, q_rows, truth, k = tuned_setup
    ivf = faiss.extract_index_ivf(index)
    half = len(q_rows) // 2
    candidates = sorted({p for p in indexing.NPROBES if p <= ivf.nlist} | {ivf.nlist})

    def rec(p):
        ivf.nprobe = p
        _, found = index.search(x[q_rows[:half]], k + 1)
        return indexing.recall(indexing.without_self(found, q_rows[:half], k), truth[:half])

    direct = {p: rec(p) for p in candidates}
    every = direct[candidates[-1]]
    real_recall, searched = indexing.recall, []

    def counting(found, t):
        searched.append(int(ivf.nprobe))
        return real_recall(found, t)

    monkeypatch.setattr(indexing, "recall", counting)
    chosen, tuned, measured = indexing._tune(index, x[q_rows], truth, q_rows, k, target)
    assert tuned == direct[chosen]
    assert tuned >= min(target, every - indexing.SATURATION_MARGIN)
    reaching = [p for p in candidates if direct[p] >= target]
    assert chosen <= (reaching[0] if reaching else candidates[-1])
    if every >= target + indexing.SATURATION_MARGIN:  # no cap in the way: the first reaching the target
        assert chosen == reaching[0]
    assert searched[-1] == chosen  # (the held-out half)
    tuning = searched[:-1]
    assert len(set(tuning)) == len(tuning)
    assert all(p <= chosen for p in tuning[1:])
    assert candidates[-1] not in tuning or chosen == candidates[-1]
    if target <= 0.9:
        assert chosen < candidates[-1] // 4  # these vectors cluster: a few cells reach it


def _scripted_search(monkeypatch, recall_at: dict, k: int, searched: list):
    """exbert_hub.corpus.search_head_cells replaced by a search whose recall@k at each nprobe is ``recall_at``'s
    (each query finds that share of its true rows, ids 0..k-1), recording the nprobes it is asked for."""
    import exbert_hub.corpus as corpus

    def search(index, centroids, cells, queries, heads, nprobe, kk, codes=None):
        searched.append(int(nprobe))
        hits = int(round(recall_at[int(nprobe)] * k))
        found = np.full((len(queries), kk), -1, dtype=np.int64)
        found[:, :hits] = np.arange(hits)
        return np.zeros(found.shape, np.float32), found

    monkeypatch.setattr(corpus, "search_head_cells", search)


@pytest.mark.parametrize("next_reaches", [True, False])
def test_head_tuning_tries_the_next_nprobe_before_the_every_cell_search(monkeypatch, next_reaches):
    """A guess from the recall estimate that misses the target: the next nprobe is searched next, at the same
    target; when it reaches it, it is the answer without the every-cell search (the costliest); when it
    does not, the full rule runs and still finds the smallest nprobe reaching the target."""
    from corpus_builder import indexing

    k, nq, cells = 20, 8, 64
    candidates = indexing.nprobe_candidates(cells)  # [1, 2, 4, 8, 12, 16, 24, 32, 48, 64]
    # real recall by nprobe: 0.95 from 12 cells on (or from 16 when the next one must miss)
    first = 12 if next_reaches else 16
    real = {p: (0.95 if p >= first else 0.5) for p in candidates}
    estimate = np.array([0.95 if p >= 8 else 0.5 for p in candidates])  # the estimate says 8 cells reach it
    searched: list = []
    _scripted_search(monkeypatch, real, k, searched)
    monkeypatch.setattr(indexing, "TUNING_THREADS", 1)  # one search call per measurement
    truth = np.tile(np.arange(k), (nq, 1))
    queries = np.zeros((nq, 4), np.float32)
    p, tuned, held = indexing.tune_head_cells(None, np.zeros((1, cells, 4), np.float32), None, queries,
                                              [[0]] * nq, truth, np.full(nq, -1), k, 0.9, codes=object(),
                                              estimate=estimate)
    assert p == first and tuned == 0.95 and held == 0.95
    if next_reaches:
        assert searched == [8, 12, 12]  # the guess, the next nprobe, the held-out half
    else:
        assert searched[:3] == [8, 12, cells] and searched[-1] == first and searched.count(first) == 2
