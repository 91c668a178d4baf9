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
