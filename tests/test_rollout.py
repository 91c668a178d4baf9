"""Attention rollout against a direct computation (loops over every entry, float64)."""

from __future__ import annotations

import numpy as np
import pytest
from tolerances import f32_close

from exbert_hub import InputError
from exbert_hub.analyses.rollout import attention_rollout

TEXT = "The cat sat on the mat because it was tired."


def _naive(att: np.ndarray, residual: float = 0.5) -> np.ndarray:
    """att float[L, H, T, T] -> rollout after each layer, entry by entry."""
    n_layers, n_heads, t, _ = att.shape
    rolled = [[1.0 if i == j else 0.0 for j in range(t)] for i in range(t)]
    out = []
    for layer in range(n_layers):
        a_hat = []
        for i in range(t):
            row = [(1 - residual) * sum(float(att[layer, h, i, j]) for h in range(n_heads)) / n_heads
                   + (residual if i == j else 0.0) for j in range(t)]
            total = sum(row)
            a_hat.append([x / total for x in row])
        rolled = [[sum(a_hat[i][m] * rolled[m][j] for m in range(t)) for j in range(t)] for i in range(t)]
        out.append(rolled)
    return np.asarray(out)


@pytest.mark.parametrize("family", ["bert", "gpt2", "llama"])
def test_rollout_equals_the_direct_computation(family, tiny_engine):
    a = tiny_engine(family).analyze(TEXT)
    got = attention_rollout(a)
    want = _naive(np.asarray(a.attentions))
    assert got.shape == (a.num_layers, len(a.tokens), len(a.tokens))
    f32_close(got, want, reduction=len(a.tokens), depth=a.num_layers)
    f32_close(got.sum(-1), np.ones(got.shape[:2]), reduction=len(a.tokens), depth=a.num_layers)
    if family != "bert":  # causal: nothing flows from later tokens
        assert np.all(np.triu(got[-1], k=1) == 0)


def test_rollout_of_the_decoder_stack_and_heads_subset(tiny_engine):
    a = tiny_engine("t5").analyze(TEXT, target="a short target")
    dec = np.asarray(a.decoder_attentions)
    f32_close(attention_rollout(a, "decoder"), _naive(dec), reduction=dec.shape[-1], depth=2)
    enc = np.asarray(a.attentions)[:, [1, 3]]
    f32_close(attention_rollout(a, "encoder", heads=[3, 1], residual=0.3), _naive(enc, 0.3),
              reduction=enc.shape[-1], depth=2)
    with pytest.raises(InputError, match="cross attention"):
        attention_rollout(a, "cross")
    with pytest.raises(InputError, match="residual"):
        attention_rollout(a, residual=2)
    with pytest.raises(InputError, match="heads"):
        attention_rollout(a, heads=[9])


def test_explorer_offers_rollout_as_the_layer_after_the_last(tiny_engine):
    from exbert_hub.views.explorer import explorer_payload, layer_payload
    from exbert_hub.views.transport import decode_attention, max_abs_error

    a = tiny_engine("gpt2").analyze(TEXT)
    p = explorer_payload(a)
    n_layers = a.num_layers
    assert p["rollout"] and str(n_layers) in p["attention"]
    got = decode_attention(p["attention"][str(n_layers)])
    want = attention_rollout(a)[-1]
    assert got.shape == (a.num_heads,) + want.shape
    scale = p["attention"][str(n_layers)]["scale"]
    for h in range(a.num_heads):  # every head carries the rollout (any head selection shows it)
        assert np.all(np.abs(got[h] - want) <= max_abs_error(want, scale) + 1e-7)
    assert layer_payload(a, n_layers)["b64"] == p["attention"][str(n_layers)]["b64"]
