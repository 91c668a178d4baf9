"""The fast logit lens (bfloat16 products, error bounds, float32 rescoring) against the float32 lens, on both of its
paths: the fused AMX kernel (lens_kernel.c, where this CPU has AMX) and the torch path (blocks, group bounds).

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
from exbert_hub.analyses import lens_kernel
from exbert_hub.analyses.lens import bf16_matmul_supported, lens_head, logit_lens

pytestmark = pytest.mark.skipif(not bf16_matmul_supported(), reason="this CPU has no native bfloat16 products")
TEXT = " ".join(["The cat sat on the mat because it was tired, and the dog barked at the door."] * 3)
CPU_HAS_AMX = all(f in lens_kernel.cpu_flags()[0] for f in lens_kernel.NEEDED_CPU_FLAGS)


@pytest.fixture(params=["kernel", "torch"])
def lens_path(request, monkeypatch):
    """Each fast-lens test on both paths: the fused kernel (skipped where the CPU has no AMX) and torch."""
    if request.param == "kernel":
        if lens_kernel.load() is None:
            pytest.skip(f"no lens kernel here: {lens_kernel.unavailable_reason()}")
    else:
        monkeypatch.setattr(lens_kernel, "load", lambda: None)
    return request.param


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
    states = lens_mod._stack_states(a, None)[1]  # the decoder's for encoder-decoders
    with torch.inference_mode():
        for s in states_idx:
            _check_state(s, states, head, w, states.shape[0], fast, ref)
    return fast, ref


def _check_state(s, states, head, w, n_states, fast, ref):
    x = head.pre(torch.from_numpy(np.ascontiguousarray(states[s])), s == n_states - 1).double() * head.linear.pre_scale
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


@pytest.mark.parametrize("family", ["llama", "gpt2", "t5", "bart"])  # t5: a pre-scale; bart: a bias
@pytest.mark.parametrize("top_k", [1, 5])
def test_fast_lens_equals_float32_lens_on_tiny_models(family, top_k, tiny_engine, fast_everywhere, lens_path):
    engine = tiny_engine(family)
    a = engine.analyze(TEXT)
    fast, _ = _check_against_float32(engine, a, range(lens_mod.num_hidden_states(a)), top_k=top_k)
    assert (fast.prob_error > 0).any()  # the fast path ran (not everything fell back to float32)


def test_rows_that_cannot_be_certified_are_computed_in_float32(tiny_engine, monkeypatch, fast_everywhere, lens_path):
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
    monkeypatch.setattr(lens_kernel, "load", lambda: None)  # the torch path (the kernel makes its own products)
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
    with torch.no_grad():
        lin.weight.mul_(1.0)  # a new version: the next call prepares it
    first = lens_mod._fast_weights(lin)
    assert lens_mod._fast_weights(lin) is first
    # the kernel's packed copy is made when first asked for, on the same prepared weights
    assert first.packed is None and lens_mod._fast_weights(lin, "packed") is first and first.packed is not None
    with torch.no_grad():
        lin.weight.mul_(1.0)  # same values, new version: prepared again
    assert lens_mod._fast_weights(lin) is not first


def test_heads_that_are_not_one_linear_map_use_float32(tiny_engine, fast_everywhere, lens_path):
    engine = tiny_engine("bert")  # transform + LayerNorm + decoder: no LinearHead
    a = engine.analyze("a short text")
    assert lens_head(engine.model, a.kind).linear is None
    fast = logit_lens(a, engine, fast=True)
    ref = logit_lens(a, engine, fast=False)
    assert np.array_equal(fast.top_ids, ref.top_ids) and np.array_equal(fast.top_probs, ref.top_probs)
    assert fast.prob_error is None


@pytest.mark.integration
def test_smollm2_default_lens_is_float32_and_fast_matches_it(smollm2, lens_path):
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
        fast, ref = _check_against_float32(engine, a, [0, 1, n // 2, n - 2, n - 1], top_k=k)
        assert np.median(fast.prob_error) < 0.05  # the bound says something for most cells
        if lens_path == "kernel":  # the last state goes with x split in two halves: near the model's own numbers
            last = np.abs(fast.top_probs[-1] - ref.top_probs[-1]) / ref.top_probs[-1]
            assert last.max() < 2e-3, last.max()  # measured 5e-4 on 1k tokens (3e-2 without the split)


@pytest.mark.skipif(not CPU_HAS_AMX, reason="this CPU has no AMX: the lens kernel does not apply")
def test_the_kernel_is_built_and_used_where_the_cpu_has_amx(tiny_engine, fast_everywhere, monkeypatch):
    assert lens_kernel.load() is not None, lens_kernel.unavailable_reason()
    engine = tiny_engine("llama")
    a = engine.analyze(TEXT)
    calls = []
    real = lens_kernel.lens_pass
    monkeypatch.setattr(lens_kernel, "lens_pass", lambda *args, **kw: calls.append(args[2] is not None) or real(*args, **kw))
    logit_lens(a, engine, top_k=3, fast=True)
    # every state but the last, then the last with x's low halves (then rows with loose bounds, split)
    assert calls[:2] == [False, True] and all(calls[2:]) and len(calls) <= 3
    calls.clear()
    monkeypatch.setattr(lens_mod, "REFINE_BOUND", 0.0)  # every row refined: and still within its bound
    fast, _ = _check_against_float32(engine, a, range(lens_mod.num_hidden_states(a)), top_k=3)
    assert calls[:3] == [False, True, True]


def test_no_compiler_means_the_torch_path(tiny_engine, fast_everywhere, monkeypatch, tmp_path):
    """A failing build is reported in one line and the lens runs on torch, with the same ids."""
    monkeypatch.setattr(lens_kernel, "_state", {"tried": False, "lib": None, "why": None})
    monkeypatch.setenv("EXBERT_HUB_CACHE", str(tmp_path))  # no kernel built before
    monkeypatch.setenv("CC", "/bin/false")
    engine = tiny_engine("gpt2")
    a = engine.analyze(TEXT)
    fast = logit_lens(a, engine, top_k=3, fast=True)
    assert lens_kernel.load() is None
    why = lens_kernel.unavailable_reason()
    assert why and "\n" not in why and str(tmp_path) not in why
    if CPU_HAS_AMX:
        assert why.startswith("the C compiler failed")
    assert not list(tmp_path.rglob("*.so"))  # nothing half-written left behind
    ref = logit_lens(a, engine, top_k=3, fast=False)
    assert np.array_equal(fast.top_ids, ref.top_ids)


@pytest.mark.skipif(not CPU_HAS_AMX, reason="this CPU has no AMX: the kernel is never built")
@pytest.mark.parametrize("case", ["read-only cache", "missing compiler", "compile error"])
def test_a_kernel_that_cannot_be_built_is_reported_in_one_line(case, monkeypatch, tmp_path):
    monkeypatch.setattr(lens_kernel, "_state", {"tried": False, "lib": None, "why": None})
    monkeypatch.setenv("EXBERT_HUB_CACHE", str(tmp_path / "cache"))
    if case == "read-only cache":
        (tmp_path / "cache").write_text("a file where the cache folder should be")
    elif case == "missing compiler":
        monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    else:
        bad = tmp_path / "broken.c"
        bad.write_text("this is not C\n")
        monkeypatch.setattr(lens_kernel, "SOURCE", bad)
    assert lens_kernel.load() is None
    why = lens_kernel.unavailable_reason()
    assert why and "\n" not in why and str(tmp_path) not in why, why
    assert {"read-only cache": "not writable", "missing compiler": "could not run",
            "compile error": "compiler failed"}[case] in why


def test_turned_off_by_the_environment(monkeypatch):
    monkeypatch.setenv("EXBERT_HUB_LENS_KERNEL", "0")
    assert lens_kernel.load() is None and "EXBERT_HUB_LENS_KERNEL=0" in lens_kernel.unavailable_reason()


@pytest.mark.skipif(not CPU_HAS_AMX, reason="this CPU has no AMX: the lens kernel does not apply")
def test_kernel_pass_equals_a_direct_computation():
    """Row maxima, exp sums and the heap of one pass against float64 sums of the same bfloat16 products,
    with a bias, a scale and a vocabulary and width that need padding."""
    lib = lens_kernel.load()
    assert lib is not None, lens_kernel.unavailable_reason()
    g = torch.Generator().manual_seed(1)
    n, d, v, heap = 70, 40, 1000, 24
    x = torch.randn(n, d, generator=g)
    w = torch.randn(v, d, generator=g) * 0.5
    bias = torch.randn(v, generator=g)
    lin = lens_mod.LinearHead(weight=w, bias=bias, post_mult=1.5)
    fw = lens_mod._fast_weights(lin, "packed")
    groups = fw.w.shape[0]
    xp = torch.zeros(96, 64)
    xp[:n, :d] = x
    delta = torch.rand(96, groups, generator=g)
    st, hub, hb, hid = lens_kernel.lens_pass(lib, xp.to(torch.bfloat16), None, fw.packed, fw.bias * 1.5, 1.5, delta, heap, 2)
    b = (xp[:n, :d].to(torch.bfloat16).double() @ w.to(torch.bfloat16).double().T) * 1.5 + bias.double() * 1.5
    m = b.amax(-1)
    np.testing.assert_allclose(st[:n, 0].numpy(), m.numpy(), rtol=1e-5, atol=1e-4)
    z = torch.exp(b - m[:, None])
    np.testing.assert_allclose(st[:n, 1].numpy(), z.sum(-1).numpy(), rtol=1e-4)  # (no group is 24 below here)
    e = (z * torch.expm1(delta[:n].double().repeat_interleave(128, dim=1)[:, :v])).sum(-1)
    np.testing.assert_allclose(st[:n, 2].numpy(), e.numpy(), rtol=1e-4)
    ub = b + delta[:n].double().repeat_interleave(128, dim=1)[:, :v]
    want = ub.topk(heap, dim=-1).indices.sort(-1).values
    assert torch.equal(hid[:n].long().sort(-1).values, want)
    np.testing.assert_allclose(hb[:n].gather(1, hid[:n].long().argsort(-1)).numpy(),
                               b.gather(1, hid[:n].long().sort(-1).values).numpy(), rtol=1e-5, atol=1e-4)
