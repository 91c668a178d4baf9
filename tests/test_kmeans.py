"""corpus_builder.indexing.kmeans: the builder's k-means (every IVF cell, coarse cell and per-head cell),
against FAISS's own k-means on real MiniLM token vectors, and on clusters whose answer is known."""
from __future__ import annotations

import numpy as np
import pytest

faiss = pytest.importorskip("faiss")
torch = pytest.importorskip("torch")

from corpus_builder import indexing  # noqa: E402


@pytest.fixture(params=["native", "float32"])
def dtype(request, monkeypatch):
    """Both product dtypes: this CPU's (bfloat16 where it has it) and float32 (CPUs without bfloat16)."""
    if request.param == "float32":
        monkeypatch.setattr(indexing, "_KMEANS_DTYPE", torch.float32)
    return request.param


def _inner(x, c):
    return float((x @ c.T).max(axis=1).mean())


def _sq_dist(x, c):
    d2 = (x * x).sum(1)[:, None] - 2 * (x @ c.T) + (c * c).sum(1)[None]
    return float(d2.min(axis=1).mean())


def test_cells_as_good_as_faiss_kmeans(token_vectors, dtype):
    x = token_vectors
    km = faiss.Kmeans(x.shape[1], 64, niter=indexing.IVF_TRAIN_ITERATIONS, seed=0, spherical=True)
    km.train(x)
    ours = indexing.kmeans(x, 64, seed=0, spherical=True)
    assert ours.shape == (64, x.shape[1]) and ours.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, rtol=1e-5)
    # the mean inner product to the assigned cell: two k-means runs from other starts differ by ~0.1-0.3%
    assert _inner(x, ours) >= _inner(x, km.centroids) - 0.005
    # plain (L2) k-means, as the per-head cells use it: 32-wide slices
    s = np.ascontiguousarray(x[:, :32])
    km = faiss.Kmeans(32, 32, niter=indexing.IVF_TRAIN_ITERATIONS, seed=0)
    km.train(s)
    assert _sq_dist(s, indexing.kmeans(s, 32, seed=0)) <= _sq_dist(s, km.centroids) * 1.01


def test_converged_cells_are_the_means_of_their_points(dtype):
    """Lloyd's fixed point, against a direct computation: every cell the mean of the points nearest it (with
    bfloat16 products: one exact step from it gains under 0.1%).
    (Separated clusters are not always all found: k-means from random starts, FAISS's too, can leave two
    cells in one cluster and one cell over two; seeds 0-5 on these data: both do, at times.)"""
    rng = np.random.default_rng(3)
    centres = rng.standard_normal((16, 48)).astype(np.float32) * 10
    x = centres[rng.integers(0, 16, size=4000)] + rng.standard_normal((4000, 48)).astype(np.float32) * 0.05
    cells = indexing.kmeans(x, 16, niter=40, seed=1)
    found = ((x[:, None, :] - cells[None]) ** 2).sum(-1).argmin(1)
    assert len(set(found.tolist())) == 16
    means = np.stack([x[found == c].mean(0) for c in range(16)])
    if dtype == "float32":
        np.testing.assert_allclose(cells, means, atol=1e-3)
    else:  # bfloat16 products: points within its rounding of a boundary may sit in either cell
        assert _sq_dist(x, cells) <= _sq_dist(x, means) * 1.001
    # two clusters: found from any start
    two = np.concatenate([x[:100] * 0 + 5, x[:100] * 0 - 5]) + rng.standard_normal((200, 48)).astype(np.float32)
    for seed in range(4):
        cells = indexing.kmeans(two, 2, seed=seed)
        assert sorted(np.round(cells.mean(1)).tolist()) == [-5.0, 5.0]


def test_empty_cells_are_split_not_left_nan(dtype):
    x = np.repeat(np.eye(8, dtype=np.float32), 20, axis=0)  # 8 distinct points, 12 cells
    x += np.random.default_rng(0).standard_normal(x.shape).astype(np.float32) * 1e-3
    cells = indexing.kmeans(x, 12, seed=0)
    assert np.isfinite(cells).all()
    found = ((x[:, None, :] - cells[None]) ** 2).sum(-1).argmin(1)
    assert len(set(found.tolist())) >= 8  # every distinct point keeps a cell of its own


def test_ivf_trained_by_kmeans_has_faiss_recall(token_vectors, dtype):
    """An IVF index whose cells come from ``train_ivf``: recall@50 at a few nprobes within 0.01 of the same
    index trained by FAISS (queries drawn from the vectors, their own row left out)."""
    x = token_vectors
    q = x[::40]
    exact = np.argsort(-(q @ x.T), axis=1)[:, 1:51]

    def recalls(index):
        index.add(x)
        out = []
        for p in (2, 4, 8):
            faiss.extract_index_ivf(index).nprobe = p
            found = index.search(q, 51)[1][:, 1:]
            out.append(np.mean([len(set(f) & set(t)) / 50 for f, t in zip(found, exact)]))
        return np.array(out)

    theirs = faiss.index_factory(x.shape[1], "IVF64,Flat", faiss.METRIC_INNER_PRODUCT)
    theirs.train(x)
    ours = faiss.index_factory(x.shape[1], "IVF64,Flat", faiss.METRIC_INNER_PRODUCT)
    indexing.train_ivf(ours, x)
    quantizer = faiss.extract_index_ivf(ours).quantizer
    assert quantizer.ntotal == 64
    np.testing.assert_allclose(np.linalg.norm(quantizer.reconstruct_n(0, 64), axis=1), 1.0, rtol=1e-5)
    assert (recalls(ours) >= recalls(theirs) - 0.01).all()


def test_fewer_points_than_cells_is_one_clear_error():
    with pytest.raises(ValueError, match="16 cells needs at least 16 points, got 10"):
        indexing.kmeans(np.ones((10, 4), np.float32), 16)


@pytest.mark.parametrize("factory", ["PCA32,IVF16,Flat", "OPQ8,IVF16,Flat"])
def test_an_ivf_behind_a_transform_is_left_to_faiss(token_vectors, factory):
    """Its cells live in the transformed space: ``train_ivf`` must not put ours (of the raw vectors) there.
    Trained through it, the index equals the one FAISS trains alone."""
    x = np.ascontiguousarray(token_vectors[:3000])
    ours, theirs = (faiss.index_factory(x.shape[1], factory, faiss.METRIC_INNER_PRODUCT) for _ in range(2))
    indexing.train_ivf(ours, x)
    theirs.train(x)
    a, b = (faiss.extract_index_ivf(i).quantizer for i in (ours, theirs))
    np.testing.assert_array_equal(a.reconstruct_n(0, 16), b.reconstruct_n(0, 16))


@pytest.fixture(params=["onednn", "matmul"])
def product_path(request, monkeypatch):
    """Both float32 product paths of products_with: oneDNN (where torch has it) and torch's matmul."""
    from exbert_hub import linear_kernels

    if request.param == "onednn" and not linear_kernels.onednn_exact():
        pytest.skip("this torch has no oneDNN")
    monkeypatch.setattr(linear_kernels, "onednn_preferred", lambda: request.param == "onednn")  # on any CPU
    return request.param


def test_products_are_float32_exact_on_both_paths(token_vectors, product_path):
    from tolerances import f32_close

    x, c = token_vectors[:3000], token_vectors[3000:3512]
    with torch.inference_mode():
        got = indexing.products_with(c)(torch.from_numpy(np.ascontiguousarray(x))).numpy()
    assert got.dtype == np.float32 and got.shape == (3000, 512)
    f32_close(got, x.astype(np.float64) @ c.astype(np.float64).T, reduction=x.shape[1])


def test_nearest_cells_are_the_exact_argmax_on_both_paths(token_vectors, product_path):
    from tolerances import f32_rel_bound

    x = token_vectors[:5000]
    # near-identical rows (a token whose vector hardly changes with its context) out: k-means may put two
    # cells on such a clump, and every row in it is then a true tie between them (seen: 2.3% of the rows on
    # an Intel machine's MiniLM vectors, two centroids 3e-4 apart)
    near = np.triu(x @ x.T > 1 - 5e-5, k=1)  # squared distance under 1e-4
    x = x[~near.any(axis=0)]
    c = indexing.kmeans(x, 128)
    assert min(np.linalg.norm(c[i] - c[i + 1:], axis=1).min() for i in range(len(c) - 1)) > 1e-2
    exact = x.astype(np.float64) @ c.astype(np.float64).T
    got = indexing.nearest_cells(c, x)
    want = exact.argmax(1)
    top2 = np.sort(exact, axis=1)[:, -2:]
    close_call = top2[:, 1] - top2[:, 0] <= 2 * f32_rel_bound(x.shape[1])  # a float32 tie may go either way
    assert (got[~close_call] == want[~close_call]).all()
    assert close_call.mean() < 0.01
    best_two = np.argsort(exact[close_call], axis=1)[:, -2:]
    assert (best_two == got[close_call][:, None]).any(axis=1).all()


def test_float16_vectors_convert_exactly_in_every_layout(tmp_path):
    """as_float32 (the builder's float16 -> float32, by torch): numpy's exact values, from a read-only
    memory map (the kept shard files), a row slice, a column slice and a fancy-indexed copy; float32 as is."""
    rng = np.random.default_rng(0)
    x16 = (rng.standard_normal((300, 96)) * 4).astype(np.float16)
    x16[0, :4] = [np.float16(6e-8), np.float16(-0.0), np.float16(65504), np.float16(-6.1e-5)]  # subnormal, -0, max
    np.save(tmp_path / "v.npy", x16)
    mm = np.load(tmp_path / "v.npy", mmap_mode="r")
    for a in (mm, mm[10:200], x16[:, 32:64], x16[[5, 3, 299, 3]]):
        got = indexing.as_float32(a)
        want = np.asarray(a).astype(np.float32)
        assert got.dtype == np.float32 and got.flags.c_contiguous and got.shape == want.shape
        assert np.array_equal(got.view(np.uint32), want.view(np.uint32))  # bit for bit, signed zero included
    x32 = x16.astype(np.float32)
    assert indexing.as_float32(x32) is x32
