"""The views at long inputs: sparse row blocks instead of whole layers (exbert_hub/views/rows.py), and the
views' "causal" read from the mask the model used."""

from __future__ import annotations

import json

import numpy as np
import pytest

from exbert_hub.views import rows as rows_mod
from exbert_hub.views.explorer import explorer_payload, rows_payload
from exbert_hub.views.head_view import head_view_payload
from exbert_hub.views.neuron_view import is_causal
from exbert_hub.views.rows import MIN_WEIGHT, block_payload, decode_block
from tolerances import f32_close, f32_rel_bound

TEXT = "The quick brown fox jumps over the lazy dog. It was not amused, and the dog slept on the mat."


def _check_block(a, stack, layer, block, block_rows=rows_mod.BLOCK_ROWS):
    p = block_payload(a, stack, layer, block, block_rows)
    st = a.stack(stack)
    got = decode_block(p)
    r0, r1 = p["r0"], p["r1"]
    assert (r0, r1) == (block * block_rows, min(st.q_len, (block + 1) * block_rows))
    special = rows_mod.key_special(a, stack)
    mass = np.frombuffer(__import__("base64").b64decode(p["special_mass"]), "<f4").reshape(st.num_heads, -1)
    for h in range(st.num_heads):
        head = np.asarray(st.attentions[layer, h])  # the whole head [q, k], computed at once
        for i in range(r0, r1):
            ref = head[i]
            idx, val = got[h][i - r0]
            # exactly the weights a view can draw, with the engine's own float32 numbers
            # (a row computed alone may differ from the whole head in the last float32 bits)
            tol = f32_rel_bound(st.k_len)
            want = np.flatnonzero(ref >= np.float32(MIN_WEIGHT))
            differ = np.setxor1d(idx, want)
            assert np.all(np.abs(ref[differ] - MIN_WEIGHT) <= tol), differ
            f32_close(val, ref[idx], reduction=st.k_len)
            assert mass[h, i - r0] == pytest.approx(float(ref[special].sum()), abs=f32_rel_bound(st.k_len))
    return p


@pytest.mark.parametrize("family", ["bert", "llama", "t5"])
def test_blocks_hold_the_engines_weights(family, tiny_engine):
    eng = tiny_engine(family)
    a = eng.analyze(TEXT, target="Le renard brun.") if family == "t5" else eng.analyze(TEXT)
    for stack in a.stacks:
        st = a.stack(stack)
        for block in range(rows_mod.num_blocks(st, 8)):
            _check_block(a, stack, st.num_layers - 1, block, block_rows=8)
    with pytest.raises(ValueError, match="block"):
        block_payload(a, next(iter(a.stacks)), 0, 99, 8)


def test_long_payloads_carry_no_layer(tiny_engine, monkeypatch):
    eng = tiny_engine("llama")
    a = eng.analyze(TEXT)
    monkeypatch.setattr(rows_mod, "LONG_LAYER_BYTES", 10)  # everything is "long"
    p = explorer_payload(a, key="k")
    assert p["long"] and p["attention"] == {} and not p["rollout"] and p["block_rows"] == rows_mod.BLOCK_ROWS
    hv = head_view_payload(a, key="k")
    assert hv["long"] and hv["attention"] == {"self": {}}
    # without a key (exported pages) nothing can be fetched later: the layers are sent as before
    assert not explorer_payload(a)["long"] and explorer_payload(a)["attention"]
    assert head_view_payload(a)["attention"]["self"]
    assert rows_payload(a, 1, 0)["r1"] == len(a.tokens)


def test_causal_comes_from_the_mask(tiny_engine):
    """A Llama sequence classifier is no causal LM, yet its attention is causal."""
    clf = tiny_engine("llama-seqcls").analyze(TEXT)
    assert clf.kind == "sequence-classification"
    assert {m.kind for m in clf.main_stack.mask_specs} == {"causal"}
    assert is_causal(clf) and explorer_payload(clf)["causal"]
    bert = tiny_engine("bert").analyze(TEXT)
    assert not is_causal(bert) and not explorer_payload(bert)["causal"]
    assert is_causal(tiny_engine("llama").analyze(TEXT))
    t5 = tiny_engine("t5").analyze(TEXT, target="Le renard.")
    assert not is_causal(t5, "encoder") and is_causal(t5, "decoder") and not is_causal(t5, "cross")


@pytest.fixture(scope="module")
def smollm2_4k():
    import exbert_hub
    from exbert_hub import SMOLLM2, ModelCache
    from pydoc_data.topics import topics

    engine = exbert_hub.load(SMOLLM2, cache=ModelCache(), max_tokens=4096)
    ids = engine.tokenizer(" ".join(list(topics.values())[:60]))["input_ids"]
    return engine.analyze(engine.tokenizer.decode(ids[:4200]), truncate=True)


def test_smollm2_4096_tokens_payloads_are_small(smollm2_4k):
    a = smollm2_4k
    T = len(a.tokens)
    assert T == 4096 and rows_mod.is_long(a.main_stack)
    ex = json.dumps(explorer_payload(a, key="k"))
    hv = json.dumps(head_view_payload(a, key="k"))
    # tokens and predictions only: a dense layer would be 151 MB of uint8
    assert len(ex) < 3_000_000 and len(hv) < 1_000_000
    # a block is bounded by heads * rows * 510 weights * 6 bytes, whatever T is
    bound = a.num_heads * rows_mod.BLOCK_ROWS * int(1 / MIN_WEIGHT) * 6 * 4 / 3 + 4096
    for layer, block in ((0, 0), (29, T // rows_mod.BLOCK_ROWS - 1)):
        p = block_payload(a, "self", layer, block)
        assert len(json.dumps(p)) < bound
    _check_block(a, "self", 29, T // rows_mod.BLOCK_ROWS - 1)


def test_views_keep_an_empty_store_they_are_given():
    """An empty store has len 0 (falsy): the views must still use it, not the module's default."""
    from exbert_hub.views.head_view import AnalysisStore, HeadView
    from exbert_hub.views.model_view import ModelView
    from exbert_hub.views.neuron_view import NeuronView

    store = AnalysisStore()
    for cls in (HeadView, ModelView, NeuronView):
        assert cls(None, store=store).store is store
