"""exbert_hub.linear_kernels: float32 products on oneDNN inside the engine's and the batch runner's forward
passes, where that is the fast kernel. The numbers against torch's own kernels, which calls are routed,
and the rule that decides."""
from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from exbert_hub import linear_kernels as lk
from tolerances import f32_close

needs_onednn = pytest.mark.skipif(not lk.onednn_exact(), reason="this torch has no oneDNN")


@pytest.fixture
def routed(monkeypatch):
    """fast_linear applied on any CPU, and a count of the products that went to oneDNN."""
    monkeypatch.setattr(lk, "onednn_preferred", lambda: True)
    calls = []
    real = lk.onednn_linear

    def spy(x, weight, bias=None):
        calls.append(tuple(x.shape))
        return real(x, weight, bias)

    monkeypatch.setattr(lk, "onednn_linear", spy)
    return calls


@needs_onednn
@pytest.mark.parametrize("shape", [(7, 64), (3, 5, 64), (64,)])
@pytest.mark.parametrize("bias", [True, False])
def test_routed_products_equal_torch_within_float32(routed, shape, bias):
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(*shape, generator=g), torch.randn(48, 64, generator=g)
    b = torch.randn(48, generator=g) if bias else None
    with torch.inference_mode():
        want = F.linear(x.double(), w.double(), None if b is None else b.double())
        with lk.fast_linear():
            got = F.linear(x, w, b) if b is not None else F.linear(x, w)
            got_kw = F.linear(input=x, weight=w, bias=b)
    assert len(routed) == 2 and got.dtype == torch.float32 and got.shape == want.shape
    f32_close(got.numpy(), want.numpy(), reduction=64)
    assert torch.equal(got, got_kw)


@needs_onednn
def test_calls_oneDNN_should_not_take_are_torch_own(routed):
    x, w = torch.randn(4, 16), torch.randn(8, 16)
    with lk.fast_linear():
        with torch.inference_mode():
            as_double = F.linear(x.double(), w.double())  # not float32
            as_bf16 = F.linear(x.bfloat16(), w.bfloat16())
        wg = w.clone().requires_grad_()
        with_grad = F.linear(x, wg)  # autograd on: torch's kernel (oneDNN's op has no backward here)
        with_grad.sum().backward()
    assert routed == []
    assert torch.equal(as_double, F.linear(x.double(), w.double()))
    torch.testing.assert_close(wg.grad, x.sum(0).expand(8, 16))


@needs_onednn
def test_the_engine_forward_goes_through_oneDNN_and_matches_transformers(routed, tiny_engine):
    """A real forward of the engine (tiny BERT): its products routed, its hidden states within float32
    bounds of transformers' own (unrouted) forward of the same model."""
    engine = tiny_engine("bert")
    a = engine.analyze("the cat sat on the mat")
    assert routed, "no product went to oneDNN"
    inputs = engine.tokenizer("the cat sat on the mat", return_tensors="pt")
    with torch.inference_mode():
        ref = engine.model(**inputs, output_hidden_states=True, return_dict=True).hidden_states
    depth = len(ref) - 1
    width = ref[0].shape[-1]
    for layer in range(len(ref)):
        f32_close(np.asarray(a.hidden_states[layer]), ref[layer][0].numpy(), reduction=4 * width, depth=max(layer, 1),
                  err_msg=f"layer {layer} of {depth}")


@needs_onednn
def test_the_routing_is_per_thread(routed):
    x, w = torch.randn(4, 16), torch.randn(8, 16)
    seen = {}

    def other():
        with torch.inference_mode():
            F.linear(x, w)
        seen["calls"] = len(routed)

    with lk.fast_linear(), torch.inference_mode():
        t = threading.Thread(target=other)
        t.start()
        t.join()
        F.linear(x, w)
    assert seen["calls"] == 0 and len(routed) == 1


def test_the_rule(monkeypatch):
    monkeypatch.setattr(lk, "onednn_exact", lambda: True)
    monkeypatch.setattr(lk, "_AMD_X86", True)
    monkeypatch.delenv("EXBERT_HUB_ONEDNN_LINEAR", raising=False)
    assert lk.onednn_preferred()
    monkeypatch.setenv("EXBERT_HUB_ONEDNN_LINEAR", "0")
    assert not lk.onednn_preferred()
    monkeypatch.delenv("EXBERT_HUB_ONEDNN_LINEAR")
    monkeypatch.setattr(lk, "_AMD_X86", False)  # an Intel CPU: MKL's own fast path, left alone
    assert not lk.onednn_preferred()


def test_a_reduced_precision_setting_keeps_float32_products_off_oneDNN():
    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("medium")  # would let oneDNN round to bfloat16
        assert not lk.onednn_exact() and not lk.onednn_preferred()
    finally:
        torch.set_float32_matmul_precision(before)
