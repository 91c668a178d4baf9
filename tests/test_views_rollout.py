"""The attention rollout as the head view's layer after the last (like the explorer's)."""

from __future__ import annotations

import numpy as np
import pytest

from exbert_hub.analyses.rollout import attention_rollout
from exbert_hub.views.head_view import decode_layer, head_view_layer_payload, head_view_payload, stacks_payload
from exbert_hub.views.transport import max_abs_error

TEXT = "The cat sat on the mat because it was tired."


def _naive_rollout(att: np.ndarray) -> np.ndarray:
    """Abnar & Zuidema with the residual identity, straight from the definition (float64)."""
    t = att.shape[-1]
    out = np.eye(t)
    for layer in att:
        a = 0.5 * layer.astype(np.float64).mean(axis=0) + 0.5 * np.eye(t)
        a /= a.sum(axis=-1, keepdims=True)
        out = a @ out
    return out


@pytest.mark.parametrize("family, stack", [("bert", "self"), ("llama", "self"), ("t5", "encoder"), ("t5", "decoder")])
def test_head_view_rollout_layer(family, stack, tiny_engine):
    eng = tiny_engine(family)
    a = eng.analyze(TEXT, target="Le chat.") if family == "t5" else eng.analyze(TEXT)
    st = a.stack(stack)
    info = {s["name"]: s for s in stacks_payload(a)}
    assert info[stack]["rollout"] and ("cross" not in info or not info["cross"]["rollout"])
    want = attention_rollout(a, stack)[-1]
    np.testing.assert_allclose(want, _naive_rollout(np.asarray(st.attentions)), atol=1e-5)
    L = st.num_layers
    for payload in (head_view_payload(a, layer=L, stack=stack)["attention"][stack][str(L)],
                    head_view_layer_payload(a, stack, L)["attention"]):
        got = decode_layer(payload)
        assert got.shape == (st.num_heads,) + want.shape
        for h in range(st.num_heads):  # every head carries the rollout, within the transport's error
            vis = want >= 0.5 / 255 * payload["scale"]  # sparse payloads leave out what is never drawn
            assert np.all(np.abs(got[h] - want)[vis] <= max_abs_error(want, payload["scale"])[vis] + 1e-6)
    with pytest.raises(ValueError, match="layer"):
        head_view_layer_payload(a, stack, L + 1)
