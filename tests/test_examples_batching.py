"""exbert_hub.batching: the one batched forward path (token budget, unpadded attention to a reducer, logits)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tolerances import f32_close

from exbert_hub import batching

TEXTS = ["The cat sat on the mat.", "A much longer sentence about the history of the Roman empire and its wars.",
         "Hi there.", "Python is a programming language."]


def test_plan_batches_respects_the_token_budget():
    lengths = [5, 30, 7, 12, 12, 3, 50]
    plan = batching.plan_batches(lengths, batch_tokens=40)
    assert sorted(i for b in plan for i in b) == list(range(len(lengths)))
    for b in plan:
        assert len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 40
        assert [lengths[i] for i in b] == sorted(lengths[i] for i in b)
    assert [6] in plan  # longer than the budget: a batch of its own
    assert all(len(b) <= 2 for b in batching.plan_batches(lengths, batch_tokens=10**6, max_rows=2))
    with pytest.raises(ValueError):
        batching.plan_batches(lengths, batch_tokens=0)


@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_attention_reducer_and_logits_equal_engine_analyze(tiny_engine, family):
    engine = tiny_engine(family)
    runner = batching.BatchRunner(engine, logits=True)
    enc = batching.encode(engine, TEXTS)
    seen = {}
    outs = runner.run(enc, TEXTS, on_attention=lambda i, a: seen.__setitem__(i, a.copy()))
    cfg = engine.config
    width = max(cfg.hidden_size, getattr(cfg, "intermediate_size", 0) or 0)
    assert sorted(seen) == list(range(len(TEXTS)))
    for i, text in enumerate(TEXTS):
        a = engine.analyze(text)
        assert seen[i].shape == a.attentions.shape  # unpadded
        f32_close(seen[i], a.attentions, width, engine.num_layers)
        f32_close(outs[i].hidden, a.hidden_states, width, engine.num_layers)
        with torch.inference_mode():
            ref = engine.model(input_ids=torch.as_tensor(a.ids)[None]).logits[0].numpy()
        f32_close(outs[i].logits, ref, width, engine.num_layers)


def test_pairs_are_encoded_as_engine_analyze_does(tiny_engine):
    engine = tiny_engine("bert")
    texts, pairs = ["The trophy did not fit.", "Cats sleep."], ["It was too big.", "Dogs bark loudly."]
    enc = batching.encode(engine, texts, pairs)
    runner = batching.BatchRunner(engine)
    outs = runner.run(enc, texts, pairs)
    for e, o, t, p in zip(enc, outs, texts, pairs):
        a = engine.analyze(t, pair=p)
        assert e.tokens == a.tokens and e.segments == a.segments.tolist()
        assert [tuple(x) for x in a.offsets.tolist()] == e.offsets
        f32_close(o.hidden, a.hidden_states, engine.config.intermediate_size, engine.num_layers)


def test_encoder_decoder_falls_back_to_engine_analyze(tiny_engine):
    engine = tiny_engine("bart")
    runner = batching.BatchRunner(engine)
    assert not runner.batched and "encoder-decoder" in runner.fallback_reason
    got = []
    outs = runner.run(batching.encode(engine, TEXTS[:2]), TEXTS[:2], on_attention=lambda i, a: got.append(a.shape))
    a = engine.analyze(TEXTS[0])
    np.testing.assert_array_equal(outs[0].hidden, a.hidden_states)
    assert got[0] == a.attentions.shape
