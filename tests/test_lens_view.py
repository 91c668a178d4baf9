"""The lens view's payloads: rows are the logit lens' words, blocks cover every position, targets trace."""

from __future__ import annotations

import json

import numpy as np
import pytest

from exbert_hub.analyses.lens import logit_lens, target_trace
from exbert_hub.views.lens_view import (
    ROW_BLOCK, LensCache, lens_rows_payload, lens_target_payload, lens_view_payload,
)

TEXT = " ".join(["the cat sat on the mat"] * 20)  # > 2 blocks of tokens


@pytest.fixture(scope="module")
def llama(tiny_engine):
    eng = tiny_engine("llama")
    return eng, eng.analyze(TEXT)


def test_payload_is_json_and_opens_on_the_last_position_of_a_causal_lm(llama):
    eng, a = llama
    n = len(a.tokens)
    p = lens_view_payload(a, eng, key="k1")
    json.dumps(p)
    assert p["n"] == n and p["causal"] and p["states"] == ["emb", "1", "2"]
    assert p["initial"]["position"] == n - 1
    assert list(p["blocks"]) == [str((n - 1) // ROW_BLOCK)]
    assert p["head"] == "model.norm -> lm_head"


def test_rows_are_the_lens_words(llama):
    eng, a = llama
    lens = logit_lens(a, eng, top_k=5)
    words = lens.tokens(eng.tokenizer)
    n = len(a.tokens)
    for block in range((n + ROW_BLOCK - 1) // ROW_BLOCK):
        rows = lens_rows_payload(a, eng, block)
        assert rows["start"] == block * ROW_BLOCK and rows["end"] == min(n, (block + 1) * ROW_BLOCK)
        for r, pos in enumerate(range(rows["start"], rows["end"])):
            for s in range(lens.num_states):
                assert rows["words"][r][s] == words[s][pos]
                assert rows["ids"][r][s] == lens.top_ids[s, pos].tolist()
                np.testing.assert_allclose(rows["probs"][r][s], lens.top_probs[s, pos], atol=1e-5)


def test_cache_computes_a_block_once():
    cache = LensCache(max_blocks=2)
    calls = []
    make = lambda: calls.append(1) or {"x": len(calls)}  # noqa: E731
    assert cache.get(("a", 0), make) == cache.get(("a", 0), make) == {"x": 1}
    cache.get(("a", 1), make)
    cache.get(("a", 2), make)
    cache.get(("a", 0), make)  # evicted (2 blocks kept): computed again
    assert len(calls) == 4


def test_target_by_word_and_by_id(llama):
    eng, a = llama
    by_id = lens_target_payload(a, eng, 3, 17)
    want = target_trace(a, eng, 3, 17)
    assert by_id["ranks"] == want.ranks.tolist() and by_id["token_id"] == 17
    by_word = lens_target_payload(a, eng, 3, "the")  # one token of the tiny BPE (" the")
    assert len(by_word["probs"]) == 3 and by_word["token"].strip() == "the"
    assert by_word["token_id"] == eng.tokenizer(" the", add_special_tokens=False)["input_ids"][0]
    split = lens_target_payload(a, eng, 3, "zebra")  # not one token: its first piece
    assert split["token_id"] == eng.tokenizer(" zebra", add_special_tokens=False)["input_ids"][0]


def test_masked_lm_opens_on_the_first_position_and_t5_reads_the_decoder(tiny_engine):
    bert = tiny_engine("bert")
    p = lens_view_payload(bert.analyze("a short text"), bert)
    assert p["initial"]["position"] == 0 and not p["causal"]
    t5 = tiny_engine("t5")
    a = t5.analyze("a source text", target="a decoder text")
    p = lens_view_payload(a, t5)
    assert p["stack"] == "decoder" and p["tokens"] == [str(t) for t in a.decoder_input.display]


def test_rows_come_from_the_fast_lens_over_a_whole_span(llama, monkeypatch):
    """The view's grid is the fast lens (exact top-k, bounded probabilities), computed for SPAN_ROWS
    positions at once and cached: every block of the span is a slice of that one computation."""
    from exbert_hub.analyses import lens as lens_mod
    from exbert_hub.views import lens_view as view_mod

    eng, a = llama
    monkeypatch.setattr(lens_mod, "FAST_MIN_VOCAB", 0)  # the tiny vocabulary would use float32
    monkeypatch.setattr(lens_mod, "FAST_EXTRA_GROUPS", 2)  # else its 8 groups would all be rescored
    fast = logit_lens(a, eng, top_k=5, fast=True)
    if lens_mod.bf16_matmul_supported():
        assert fast.prob_error is not None and (fast.prob_error > 0).any()
    else:  # no native bfloat16 products on this CPU: the float32 lens, whose probabilities need no bound
        assert fast.prob_error is None
    words = fast.tokens(eng.tokenizer)
    calls = []
    real = view_mod._span_lens
    monkeypatch.setattr(view_mod, "_span_lens", lambda *args: calls.append(args[2]) or real(*args))
    monkeypatch.setattr(view_mod, "CACHE", LensCache())
    n = len(a.tokens)
    for block in range((n + ROW_BLOCK - 1) // ROW_BLOCK):
        rows = lens_rows_payload(a, eng, block, key="fast-span")
        for r, pos in enumerate(range(rows["start"], rows["end"])):
            for s in range(fast.num_states):
                assert rows["words"][r][s] == words[s][pos]
                assert rows["ids"][r][s] == fast.top_ids[s, pos].tolist()
                np.testing.assert_allclose(rows["probs"][r][s], fast.top_probs[s, pos], atol=1e-5)
    assert calls == [0]  # one span computed, once
