"""AttentionViz's joint projection of one head's queries and keys: the layout keeps every attention
weight, puts both clouds on the same centre and mean norm; the PCA equals a naive one; on MiniLM the
vectors are the engine's own queries and keys of the tracked tokens."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import exbert_hub
from exbert_hub import InputError, analyze_examples, load_examples
from exbert_hub.analyses import projections


def softmax_rows(s):
    s = s - s.max(axis=1, keepdims=True)
    e = np.exp(s)
    return e / e.sum(axis=1, keepdims=True)


def clouds(seed=0, n=60, m=50, d=16):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(n, d)) * 4 + 10  # far from the keys, larger
    k = rng.normal(size=(m, d)) * 0.5 - 3
    return q.astype(np.float32), k.astype(np.float32)


def test_layout_keeps_the_attention_and_matches_centres_and_norms():
    q, k = clouds()
    q2, k2 = projections.query_key_layout(q, k)
    d = q.shape[1]
    np.testing.assert_allclose(softmax_rows(q2.astype(np.float64) @ k2.T / np.sqrt(d)),
                               softmax_rows(q.astype(np.float64) @ k.T / np.sqrt(d)), atol=1e-5)
    s = np.sqrt(np.linalg.norm(k2, axis=1).mean() / np.linalg.norm(q2, axis=1).mean())
    assert s == pytest.approx(1.0, abs=1e-5)  # the same mean norm
    # centres: by hand, keys moved onto the queries' centre, then the two scalings
    shifted = k + (q.mean(0) - k.mean(0))
    c = np.sqrt(np.linalg.norm(shifted, axis=1).mean() / np.linalg.norm(q, axis=1).mean())
    np.testing.assert_allclose(q2, q * c, rtol=1e-5)
    np.testing.assert_allclose(k2, shifted / c, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(q2.mean(0) / c, k2.mean(0) * c, atol=1e-4)


def test_joint_pca_equals_a_naive_pca_of_both():
    q, k = clouds(1)
    yq, yk = projections.project_query_key(q, k, "pca")
    assert yq.shape == (60, 2) and yk.shape == (50, 2) and yq.dtype == np.float32
    q2, k2 = projections.query_key_layout(q, k)
    x = np.concatenate([q2, k2]).astype(np.float64)
    c = x - x.mean(0)
    ref = projections.normalise(c @ np.linalg.svd(c, full_matrices=False)[2][:2].T)
    y = np.concatenate([yq, yk])
    np.testing.assert_allclose(np.abs(y), np.abs(ref), atol=1e-4)  # PCA axes up to their signs
    with pytest.raises(ValueError, match="unknown projection"):
        projections.project_query_key(q, k, "mds")


def test_examples_query_key_projection_on_minilm():
    engine = exbert_hub.load("sentence-transformers/all-MiniLM-L6-v2")
    path = Path(__file__).parent / "fixtures" / "examples" / "winograd.jsonl"
    ex = load_examples(path, spans=["pronoun", "candidate"], limit=40)
    r = analyze_examples(engine, ex, progress=False, spacy=None, track="spans")
    yq, yk, rows = r.query_key_projection(2, 5, select=[3, 0, 1])
    assert rows.tolist() == np.concatenate([r.rows_of(e) for e in (0, 1, 3)]).tolist()
    # naive: the engine's queries and keys of those tokens, gathered by hand, projected the same way
    qs, ks = [], []
    for e in (0, 1, 3):
        q, k = engine.analyze(ex.texts[e]).query_key(2, 5)
        t = r.row_token[r.rows_of(e)]
        qs.append(q[t])
        ks.append(k[t])
    wq, wk = projections.project_query_key(np.concatenate(qs), np.concatenate(ks))
    np.testing.assert_allclose(yq, wq, atol=1e-5)
    np.testing.assert_allclose(yk, wk, atol=1e-5)
    assert r.query_key_projection(2, 5, select=[0, 1, 3])[0] is yq  # cached
    with pytest.raises(InputError, match="layer 9 is out of range"):
        r.query_key_projection(9, 0)
    with pytest.raises(InputError, match="example 99 is out of range"):
        r.query_key_projection(0, 0, select=[99])
