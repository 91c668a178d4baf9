"""exbert_hub.analyses.heads: each statistic by hand on small matrices, and against a naive loop version."""

from __future__ import annotations

import math

import numpy as np
import pytest

from exbert_hub.analyses import heads


def rand_attn(rng, shape, n):
    x = rng.random((*shape, n, n)) ** 3
    return (x / x.sum(-1, keepdims=True)).astype(np.float32)


# --- by hand ------------------------------------------------------------------------------------
def test_std_and_entropy_by_hand():
    uniform = np.full((1, 4, 4), 0.25, dtype=np.float32)
    one_hot = np.eye(4, dtype=np.float32)[None]
    assert heads.attention_std(uniform)[0] == pytest.approx(0.0)
    assert heads.attention_entropy(uniform)[0] == pytest.approx(math.log(4))
    # one-hot: 4 ones and 12 zeros; mean 1/4, std sqrt(1/4 * 3/4) = sqrt(3)/4
    assert heads.attention_std(one_hot)[0] == pytest.approx(math.sqrt(3) / 4)
    assert heads.attention_entropy(one_hot)[0] == pytest.approx(0.0)


def test_removing_specials_renormalises_rows():
    # [CLS] a b [SEP]: token a puts half on [SEP], b puts 0.25 on [CLS]
    attn = np.array([[[1, 0, 0, 0], [0, 0.25, 0.25, 0.5], [0.25, 0.375, 0.375, 0], [0, 0, 0, 1]]], dtype=np.float32)
    keep = np.array([False, True, True, False])
    sub = heads.restrict(attn, keep)
    np.testing.assert_allclose(sub[0], [[0.5, 0.5], [0.5, 0.5]])
    assert heads.attention_entropy(attn, keep)[0] == pytest.approx(math.log(2))
    assert heads.attention_std(attn, keep)[0] == pytest.approx(0.0)


def test_dependency_matrix_by_hand():
    # words: The(0) cat(1) sat(2); The -> cat, cat -> sat, sat root. tokens: [CLS] the ca ##t sat [SEP]
    tw = np.array([-1, 0, 1, 1, 2, -1])
    d = heads.dependency_matrix(tw, np.array([1, 2, 2]))
    want = np.zeros((6, 6), dtype=np.float32)
    want[1, 2] = want[1, 3] = 1  # the -> both pieces of cat
    want[2, 4] = want[3, 4] = 1  # each piece of cat -> sat
    np.testing.assert_array_equal(d, want)


def test_grammar_correlation_by_hand():
    # 3 words, edges 0 -> 1, 1 -> 2 (2 is root). A head that attends exactly along the edges correlates 1.
    dep = heads.dependency_matrix(np.array([0, 1, 2]), np.array([1, 2, 2]))
    follow = np.array([[[0, 1, 0], [0, 0, 1], [0, 0, 1]]], dtype=np.float32)
    assert heads.grammar_correlation(follow, dep)[0] == pytest.approx(1.0)
    # the reverse direction (head -> dependent) is uncorrelated in the directed variant...
    reverse = np.array([[[1, 0, 0], [1, 0, 0], [0, 1, 0]]], dtype=np.float32)
    # off-diagonal pairs (0,1)(0,2)(1,0)(1,2)(2,0)(2,1): attn 0 0 1 0 0 1, dep 1 0 0 1 0 0 -> r = -0.5
    assert heads.grammar_correlation(reverse, dep)[0] == pytest.approx(-0.5)
    # ...and perfectly correlated in the symmetric one: pairs (0,1),(0,2),(1,2): sym attn .5 0 .5, dep 1 0 1
    assert heads.grammar_correlation(reverse, dep, symmetric=True)[0] == pytest.approx(1.0)
    assert np.isnan(heads.grammar_correlation(follow, np.zeros((3, 3), np.float32))[0])


def test_span_intensity_and_clark_by_hand():
    attn = np.array([[[0.1, 0.2, 0.7], [0.6, 0.3, 0.1], [0.25, 0.5, 0.25]]], dtype=np.float32)
    ab, ba = heads.span_intensity(attn, np.array([0]), np.array([1, 2]))
    assert ab[0] == pytest.approx(0.7) and ba[0] == pytest.approx(0.6)
    nan_ab, _ = heads.span_intensity(attn, np.array([], dtype=int), np.array([1]))
    assert np.isnan(nan_ab[0])
    c = heads.clark_statistics(attn, np.array([True, False, False]))
    assert c["to_special"][0] == pytest.approx((0.1 + 0.6 + 0.25) / 3)
    assert c["to_previous"][0] == pytest.approx((0.6 + 0.5) / 2)
    assert c["to_next"][0] == pytest.approx((0.2 + 0.1) / 2)
    assert c["to_self"][0] == pytest.approx((0.1 + 0.3 + 0.25) / 3)


# --- against naive loops ------------------------------------------------------------------------
def naive(attn2d, special, tw, wh, a, b):
    n = len(attn2d)
    out = {}
    vals = [attn2d[i][j] for i in range(n) for j in range(n)]
    m = sum(vals) / len(vals)
    out["std"] = math.sqrt(sum((v - m) ** 2 for v in vals) / len(vals))
    ent = 0.0
    for i in range(n):
        ent += -sum(p * math.log(p) for p in attn2d[i] if p > 0)
    out["entropy"] = ent / n
    words = [i for i in range(n) if not special[i]]
    rows = []
    for i in words:
        s = sum(attn2d[i][j] for j in words)
        rows.append([attn2d[i][j] / s for j in words])
    flat = [v for r in rows for v in r]
    m = sum(flat) / len(flat)
    out["std_words"] = math.sqrt(sum((v - m) ** 2 for v in flat) / len(flat))
    out["entropy_words"] = sum(-sum(p * math.log(p) for p in r if p > 0) for r in rows) / len(rows)

    def pearson(xs, ys):
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        num = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
        den = math.sqrt(sum((x - mx) ** 2 for x in xs) * sum((y - my) ** 2 for y in ys))
        return num / den

    has = [i for i in range(n) if tw[i] >= 0]
    dep = lambda i, j: 1.0 if tw[i] != tw[j] and wh[tw[i]] == tw[j] else 0.0  # noqa: E731
    xs, ys = [], []
    for i in has:
        for j in has:
            if i != j:
                xs.append(attn2d[i][j])
                ys.append(dep(i, j))
    out["grammar_directed"] = pearson(xs, ys)
    xs, ys = [], []
    for ii, i in enumerate(has):
        for j in has[ii + 1:]:
            xs.append((attn2d[i][j] + attn2d[j][i]) / 2)
            ys.append(max(dep(i, j), dep(j, i)))
    out["grammar_symmetric"] = pearson(xs, ys)
    out["span_a_to_b"] = max(attn2d[i][j] for i in a for j in b)
    out["span_b_to_a"] = max(attn2d[j][i] for i in a for j in b)
    out["to_special"] = sum(sum(attn2d[i][j] for j in range(n) if special[j]) for i in range(n)) / n
    out["to_previous"] = sum(attn2d[i][i - 1] for i in range(1, n)) / (n - 1)
    out["to_next"] = sum(attn2d[i][i + 1] for i in range(n - 1)) / (n - 1)
    out["to_self"] = sum(attn2d[i][i] for i in range(n)) / n
    return out


def test_head_statistics_equal_naive_loops():
    rng = np.random.default_rng(7)
    n = 9
    attn = rand_attn(rng, (2, 3), n)
    special = np.array([True] + [False] * 7 + [True])
    tw = np.array([-1, 0, 1, 1, 2, 3, 4, 4, -1])  # 5 words, word 1 and 4 split in two pieces
    wh = np.array([1, 2, 2, 2, 3])
    a, b = np.array([2, 3]), np.array([5, 6, 7])
    got = heads.head_statistics(attn, special, tw, wh, a, b)
    assert set(got) == set(heads.STATISTICS)
    for layer in range(2):
        for h in range(3):
            want = naive(attn[layer, h].astype(np.float64).tolist(), special, tw, wh, a, b)
            for name, value in want.items():
                assert got[name][layer, h] == pytest.approx(value, rel=1e-5, abs=1e-6), name
