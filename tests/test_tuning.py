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
def test_tuned_nprobe_is_the_full_binary_search_with_fewer_searches(tuned_setup, monkeypatch, target):
    from corpus_builder import indexing

    index, x, q_rows, truth, k = tuned_setup
    real_recall = indexing.recall
    calls = []  # one recall per search of the tuning

    def counting(found, t):
        calls.append(1)
        return real_recall(found, t)

    monkeypatch.setattr(indexing, "recall", counting)
    chosen, tuned, measured = indexing._tune(index, x[q_rows], truth, q_rows, k, target)
    with_bound = len(calls)
    calls.clear()
    monkeypatch.setattr(indexing, "cell_coverage", lambda ivf, q, t, nprobes: np.ones(len(nprobes)))
    plain = indexing._tune(index, x[q_rows], truth, q_rows, k, target)
    assert (chosen, tuned, measured) == plain
    without_bound = len(calls)
    monkeypatch.setattr(indexing, "recall", real_recall)
    # the answer checked directly: the smallest candidate reaching the target on the tuning half
    half = len(q_rows) // 2
    candidates = sorted({p for p in indexing.NPROBES if p <= 64} | {64})

    def rec(p):
        faiss.extract_index_ivf(index).nprobe = p
        _, found = index.search(x[q_rows[:half]], k + 1)
        return indexing.recall(indexing.without_self(found, q_rows[:half], k), truth[:half])

    reaching = [p for p in candidates if rec(p) >= target]
    assert chosen == (reaching[0] if reaching else candidates[-1])
    assert with_bound <= without_bound
