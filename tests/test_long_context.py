"""Long contexts: attention is not kept, it is computed on demand from the recorded queries and keys.

The fused forward pass (scaled_dot_product_attention, from engine.FUSED_FROM_TOKENS tokens on) is
checked against the eager pass on every tiny family by lowering that threshold; then SmolLM2 analyses
4,096 tokens and what it holds is counted.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import exbert_hub
from exbert_hub import SMOLLM2, InputError, ModelCache
from exbert_hub import analysis as analysis_mod
from exbert_hub import engine as engine_mod

import tiny_models
from tiny_models import FAMILIES, KINDS
from tolerances import f32_close

TEXT = "The quick brown fox jumps over the lazy dog. It was not amused, and the dog slept on."
CAUSAL = {"causal-lm"}


@pytest.fixture(scope="module")
def cache():
    return ModelCache(max_models=len(FAMILIES) + 1)


def _pair(family, tiny, cache, monkeypatch_module=None):
    engine = exbert_hub.load(str(tiny(family)), cache=cache)
    eager = engine.analyze(TEXT)
    old = engine_mod.FUSED_FROM_TOKENS
    engine_mod.FUSED_FROM_TOKENS = 1
    try:
        fused = engine.analyze(TEXT)
    finally:
        engine_mod.FUSED_FROM_TOKENS = old
    return engine, eager, fused


@pytest.mark.parametrize("family", FAMILIES)
def test_fused_pass_agrees_with_eager(family, tiny, cache):
    _, eager, fused = _pair(family, tiny, cache)
    depth = eager.num_layers
    f32_close(fused.hidden_states, eager.hidden_states, reduction=37, depth=depth, err_msg=f"{family} hidden")
    for name, st in eager.stacks.items():
        f32_close(np.asarray(fused.stack(name).attentions), np.asarray(st.attentions), reduction=32, depth=depth,
                  err_msg=f"{family} {name} attention")
        f32_close(fused.stack(name).contexts, st.contexts, reduction=37, depth=depth, err_msg=f"{family} {name} contexts")
    if eager.predictions is not None:
        for e_row, f_row in zip(eager.predictions, fused.predictions):
            assert e_row[0][0] == f_row[0][0]
            assert f_row[0][1] == pytest.approx(e_row[0][1], abs=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_no_query_by_key_array_is_kept(family, tiny, cache):
    _, eager, fused = _pair(family, tiny, cache)
    for a in (eager, fused):
        held = a.hidden_states.nbytes + (0 if a.decoder_hidden_states is None else a.decoder_hidden_states.nbytes)
        for name, st in a.stacks.items():
            assert st.weights is None and isinstance(st.attentions, analysis_mod.LazyAttention)
            held += st.contexts.nbytes + sum(x.nbytes for x in st.queries) + sum(x.nbytes for x in st.keys)
            causal = name == "decoder" or (name == "self" and KINDS[family] in CAUSAL)
            kinds = {spec.kind for spec in st.mask_specs}
            assert kinds == ({"causal"} if causal else {"none"}), (family, name, kinds)
            # T5 keeps its relative position bias [heads, q, k], computed once and shared by the layers
            for b in st.biases:
                if b is not None:
                    held += int(np.prod(b.shape)) * 4
                    break
        assert a.nbytes == held


def test_lazy_attention_indexes_like_numpy(tiny, cache):
    a = exbert_hub.load(str(tiny("llama")), cache=cache).analyze(TEXT)
    att = a.attentions
    full = np.asarray(att)
    L, H, T, _ = full.shape
    assert att.shape == full.shape == (2, 4, T, T) and att.ndim == 4 and att.dtype == np.float32
    assert len(att) == L and att.size == full.size and att.nbytes == full.nbytes
    np.testing.assert_array_equal(att[1], full[1])
    np.testing.assert_array_equal(att[1, 2], full[1, 2])
    np.testing.assert_allclose(att[1, 2, 5], full[1, 2, 5], atol=1e-7)  # one row, computed alone
    np.testing.assert_array_equal(att[:, 3], full[:, 3])
    np.testing.assert_array_equal(att[1, [0, 2]], full[1, [0, 2]])
    np.testing.assert_array_equal(att[-1, -1, 2:4], full[-1, -1, 2:4])
    np.testing.assert_array_equal(att[0, 1, :, 3], full[0, 1, :, 3])
    np.testing.assert_array_equal(att[..., 0], full[..., 0])
    np.testing.assert_array_equal(np.stack(list(att)), full)
    np.testing.assert_allclose(att.sum(-1), 1.0, atol=1e-5)  # numpy methods on the materialised array
    # exactly the softmax of the recorded pieces (the neuron view's terms)
    for i in (0, 5, T - 1):
        np.testing.assert_allclose(a.score_terms(1, 2, i)["softmax"], att[1, 2, i], atol=1e-6)
    with pytest.raises(IndexError):
        att[2]


def test_materialising_a_huge_attention_is_refused(tiny, cache, monkeypatch):
    a = exbert_hub.load(str(tiny("llama")), cache=cache).analyze(TEXT)
    monkeypatch.setattr(analysis_mod, "MAX_DENSE_ATTENTION_BYTES", 1000)
    with pytest.raises(InputError, match=r"index it by layer or head"):
        np.asarray(a.attentions)
    assert a.attentions[0, 0].shape[0] == len(a.tokens)  # a head still works


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_chunked_output_head_gives_the_models_predictions(family, tiny, cache, monkeypatch):
    """Long causal inputs: logits_to_keep=1 and the head applied 512 rows at a time; same top-k."""
    engine = exbert_hub.load(str(tiny(family)), cache=cache)
    assert engine._chunked_head()
    monkeypatch.setattr(engine_mod, "FUSED_FROM_TOKENS", 1)
    a = engine.analyze(TEXT, top_k=3)
    ids = torch.as_tensor(a.ids)[None]
    with torch.no_grad():
        logits = engine.model(input_ids=ids).logits[0]
    probs = torch.softmax(logits, -1)
    for i, row in enumerate(a.predictions):
        top = torch.topk(probs[i], 3)
        assert [w for w, _ in row] == engine.tokenizer.batch_decode([[int(t)] for t in top.indices])
        np.testing.assert_allclose([p for _, p in row], top.values.numpy(), atol=1e-6)


def test_caps_and_estimates(tiny, cache):
    engine = exbert_hub.load(str(tiny("llama")), cache=cache)
    assert engine.max_tokens == engine_mod.DEFAULT_MAX_TOKENS == 8192
    assert engine.token_limit == 256  # the tiny model's positions
    with pytest.raises(InputError, match=r"at most 256 fit"):
        engine.analyze("word " * 400)
    # the estimate grows with T but no longer with T^2 x layers x heads
    small, big = engine.estimate_bytes(100), engine.estimate_bytes(200)
    assert small < big < 5 * small


@pytest.fixture(scope="module")
def smollm2_4k():
    from pydoc_data.topics import topics

    engine = exbert_hub.load(SMOLLM2, cache=ModelCache(), max_tokens=4096)  # truncate=True cuts at 4,096
    text = " ".join(list(topics.values())[:60])
    ids = engine.tokenizer(text)["input_ids"]
    assert len(ids) > 4096
    a = engine.analyze(engine.tokenizer.decode(ids[:4200]), truncate=True)
    return engine, a


def test_smollm2_8192_tokens_allowed_and_beyond_refused():
    engine = exbert_hub.load(SMOLLM2, cache=ModelCache())
    assert engine.position_limit == 8192 and engine.token_limit == 8192
    assert engine.estimate_bytes(8192) <= engine_mod.DEFAULT_MAX_ANALYSIS_BYTES
    with pytest.raises(InputError, match=r"at most 8,192 fit"):
        engine._tokenize("a " * 9000, None, truncate=False)


def test_smollm2_4096_tokens(smollm2_4k):
    engine, a = smollm2_4k
    T = len(a.tokens)
    assert T == 4096 and a.truncated
    st = a.main_stack
    assert st.weights is None and {s.kind for s in st.mask_specs} == {"causal"}
    # what it holds: queries, keys, contexts and hidden states, ~1 GB (the dense attention would be 18 GB)
    assert a.nbytes < 1.0e9 < 18e9 < a.attentions.nbytes
    # any head's row, on demand, is the softmax of its recorded terms and respects causality
    for layer, head, i in ((0, 0, 10), (17, 4, 2000), (29, 8, T - 1)):
        row = a.attentions[layer, head, i]
        t = a.score_terms(layer, head, i)
        np.testing.assert_allclose(row, t["softmax"], atol=1e-6)
        assert np.all(row[i + 1:] == 0) and row.sum() == pytest.approx(1.0, abs=1e-5)
    # a whole head [T, T] agrees with its rows computed alone
    head = a.attentions[29, 8]
    np.testing.assert_allclose(head[T - 1], a.attentions[29, 8, T - 1], atol=1e-6)
    assert a.predictions is not None and len(a.predictions) == T
