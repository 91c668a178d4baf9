"""The fast logit lens (bfloat16 products in blocks, group bounds, float32 rescoring) against the float32 lens.

The top-k ids must be those of the float32 lens (up to ties within float32 rounding) and every
probability within the bound the lens reports (``Lens.prob_error``, derived in
exbert_hub.analyses.lens._fast_lens) plus float32 rounding. The reported bound is itself checked
against the per-token error bound computed here in float64 from the weights: with
delta_j = c sum_i |x_i| |w_ji| (c from bfloat16 inputs, float32 accumulation and a bfloat16 output),
the normaliser's error is at most sum over the tokens outside the top-k of exp(l_j) expm1(delta_j).
Tiny models have small vocabularies, under FAST_MIN_VOCAB: the tests lower it so the fast path runs.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from exbert_hub.analyses import lens as lens_mod
from exbert_hub.analyses.lens import bf16_matmul_supported, lens_head, logit_lens

pytestmark = pytest.mark.skipif(not bf16_matmul_supported(), reason="this CPU has no native bfloat16 products")
TEXT = " ".join(["The cat sat on the mat because it was tired, and the dog barked at the door."] * 3)


@pytest.fixture
def fast_everywhere(monkeypatch):
    monkeypatch.setattr(lens_mod, "FAST_MIN_VOCAB", 0)
    # a tiny model's 1,000 tokens are 8 groups: with the default extra groups top-5 would rescore all of
    # them, and the bounded part of the fast path would never run
    monkeypatch.setattr(lens_mod, "FAST_EXTRA_GROUPS", 2)


def _check_against_float32(engine, a, states_idx, top_k=5):
    fast = logit_lens(a, engine, top_k=top_k, fast=True)
    ref = logit_lens(a, engine, top_k=top_k, fast=False)
    assert fast.prob_error is not None and ref.prob_error is None
    head = lens_head(engine.model, a.kind)
    w = head.linear.weight.detach().double()
    n_states = a.hidden_states.shape[0]
    with torch.inference_mode():
        for s in states_idx:
            _check_state(s, a, head, w, n_states, fast, ref)
    return fast, ref


def _check_state(s, a, head, w, n_states, fast, ref):
    x = head.pre(torch.from_numpy(a.hidden_states[s]), s == n_states - 1).double() * head.linear.pre_scale
    logits = x @ w.T
    if head.linear.bias is not None:
        logits = logits + head.linear.bias.double()
    logits = logits * head.linear.post_mult
    e = torch.exp(logits - logits.amax(-1, keepdim=True))
    z = e.sum(-1)
    p = (e / z[:, None]).numpy()
    # ids: equal, or swapped with a token of (within float32 rounding) the same probability
    diff = fast.top_ids[s] != ref.top_ids[s]
    if diff.any():
        got = np.take_along_axis(p, fast.top_ids[s], axis=-1)
        want = np.take_along_axis(p, ref.top_ids[s], axis=-1)
        assert np.all(np.abs(got - want)[diff] <= 1e-5 * np.maximum(want[diff], 1e-3)), f"state {s}: top ids differ"
    # every probability within the reported bound + float32 rounding (float32 logits are within
    # gamma_d sum_i |x_i w_ji| of exact ones: a probability within twice the row's largest such term),
    # against float64 and against the float32 lens (which has that rounding too)
    f32 = 2 * x.shape[1] * 2.0 ** -24 * (x.abs() @ w.abs().T).amax(-1).numpy()[:, None] * head.linear.post_mult
    bound = fast.prob_error[s][:, None].astype(np.float64)
    want = np.take_along_axis(p, fast.top_ids[s], axis=-1)
    assert np.all(np.abs(fast.top_probs[s] - want) <= (bound + f32 + 1e-6) * want + 1e-7), f"state {s}: beyond the bound"
    assert np.all(np.abs(fast.top_probs[s] - ref.top_probs[s]) <= (bound + 2 * f32 + 1e-6) * ref.top_probs[s] + 1e-7), f"state {s}"


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize("top_k", [1, 5])
def test_fast_lens_equals_float32_lens_on_tiny_models(family, top_k, tiny_engine, fast_everywhere):
    engine = tiny_engine(family)
    a = engine.analyze(TEXT)
    fast, _ = _check_against_float32(engine, a, range(a.hidden_states.shape[0]), top_k=top_k)
    assert (fast.prob_error > 0).any()  # the fast path ran (not everything fell back to float32)


def test_rows_that_cannot_be_certified_are_computed_in_float32(tiny_engine, monkeypatch, fast_everywhere):
    engine = tiny_engine("llama")
    a = engine.analyze(TEXT)
    ref = logit_lens(a, engine, top_k=4, fast=False)
    monkeypatch.setattr(lens_mod, "BF16_U", 1.0)  # error bounds so wide that no row is certain
    monkeypatch.setattr(lens_mod, "FAST_EXTRA_GROUPS", 0)  # and not every group rescored
    fast = logit_lens(a, engine, top_k=4, fast=True)
    assert np.array_equal(fast.top_ids, ref.top_ids)
    np.testing.assert_array_equal(fast.top_probs, ref.top_probs)
    assert not fast.prob_error.any()


def test_no_process_wide_setting_is_touched(tiny_engine, fast_everywhere, monkeypatch):
    engine = tiny_engine("llama")
    seen = []
    real = lens_mod._bf16_group_stats

    def spy(*args, **kwargs):
        seen.append(torch.backends.mkldnn.matmul.fp32_precision)
        return real(*args, **kwargs)

    monkeypatch.setattr(lens_mod, "_bf16_group_stats", spy)
    before = torch.backends.mkldnn.matmul.fp32_precision
    logit_lens(engine.analyze(TEXT), engine, fast=True)
    assert seen and set(seen) == {before} and torch.backends.mkldnn.matmul.fp32_precision == before
    x, w = torch.randn(8, 64), torch.randn(32, 64)
    np.testing.assert_allclose((x @ w.T).numpy(), (x.double() @ w.double().T).numpy(), atol=1e-4)


def test_weights_changed_in_place_are_prepared_again(tiny_engine, fast_everywhere):
    engine = tiny_engine("gpt2")
    a = engine.analyze(TEXT)
    lin = lens_head(engine.model, a.kind).linear
    first = lens_mod._fast_weights(lin)
    assert lens_mod._fast_weights(lin) is first
    with torch.no_grad():
        lin.weight.mul_(1.0)  # same values, new version: prepared again
    assert lens_mod._fast_weights(lin) is not first


def test_heads_that_are_not_one_linear_map_use_float32(tiny_engine, fast_everywhere):
    engine = tiny_engine("bert")  # transform + LayerNorm + decoder: no LinearHead
    a = engine.analyze("a short text")
    assert lens_head(engine.model, a.kind).linear is None
    fast = logit_lens(a, engine, fast=True)
    ref = logit_lens(a, engine, fast=False)
    assert np.array_equal(fast.top_ids, ref.top_ids) and np.array_equal(fast.top_probs, ref.top_probs)
    assert fast.prob_error is None


@pytest.mark.integration
def test_smollm2_default_lens_is_float32_and_fast_matches_it(smollm2):
    engine = smollm2
    from pydoc_data.topics import topics

    ids = engine.tokenizer(" ".join(topics.values()))["input_ids"][:300]
    a = engine.analyze(engine.tokenizer.decode(ids, skip_special_tokens=True), truncate=True)
    n = a.hidden_states.shape[0]
    default = logit_lens(a, engine, top_k=5, positions=range(0, 300, 7))
    exact = logit_lens(a, engine, top_k=5, positions=range(0, 300, 7), fast=False)
    # the default is the exact float32 lens (fast is opt-in: its probabilities are not exact)
    assert np.array_equal(default.top_ids, exact.top_ids) and np.array_equal(default.top_probs, exact.top_probs)
    for k in (1, 5):
        fast, _ = _check_against_float32(engine, a, [0, 1, n // 2, n - 2, n - 1], top_k=k)
        assert np.median(fast.prob_error) < 0.05  # the bound says something for most cells
