"""Generation: greedy equals transformers' generate, seeded sampling repeats, generated tokens are marked
and analysed (attention, logit lens)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from exbert_hub import InputError
from exbert_hub.analyses.lens import logit_lens
from exbert_hub.generation import MAX_NEW_TOKENS, generate, generated_flags

PROMPT = "The cat sat on the mat because"


def _hf_greedy(engine, text: str, n: int) -> list[int]:
    ids = torch.as_tensor([engine.tokenizer(text)["input_ids"]])
    with torch.inference_mode():
        out = engine.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                                    do_sample=False, pad_token_id=engine.tokenizer.pad_token_id or 0)
    return out[0, ids.shape[1]:].tolist()


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_greedy_equals_transformers_generate(family, tiny_engine):
    engine = tiny_engine(family)
    g = generate(engine, PROMPT, max_new_tokens=6)
    want = _hf_greedy(engine, PROMPT, len(g.new_ids))
    assert g.new_ids == want[: len(g.new_ids)]
    assert g.analysis.text == PROMPT + g.continuation


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_generated_tokens_are_marked_and_analysed(family, tiny_engine):
    engine = tiny_engine(family)
    g = generate(engine, PROMPT, max_new_tokens=8)
    a = g.analysis
    prompt_len = len(engine.analyze(PROMPT).tokens)
    flags = generated_flags(a)
    assert flags.shape == (len(a.tokens),) and flags.dtype == bool
    assert not flags[:prompt_len - 1].any()  # the prompt's tokens (one may merge with the continuation)
    assert flags.sum() >= 1 and np.all(flags[np.argmax(flags):])  # generated tokens come last, contiguous
    if g.same_tokens:
        assert flags.sum() == len([i for i in g.new_ids if i not in engine.tokenizer.all_special_ids])
    # their attention is there (causal rows sum to 1) and the logit lens covers them
    att = np.asarray(a.attentions)
    assert att.shape[-1] == len(a.tokens)
    np.testing.assert_allclose(att[:, :, flags].sum(-1), 1.0, atol=1e-5)
    lens = logit_lens(a, engine, top_k=1, positions=np.flatnonzero(flags))
    assert lens.top_ids.shape == (engine.num_layers + 1, int(flags.sum()), 1)
    # greedy: at the last layer, the lens' top token at a generated position is the next generated id
    if g.same_tokens and flags.sum() >= 2:
        first = int(np.argmax(flags))
        full = logit_lens(a, engine, top_k=1, positions=[first])
        assert int(full.top_ids[-1, 0, 0]) == int(a.ids[first + 1])


def test_seeded_sampling_repeats(tiny_engine):
    engine = tiny_engine("gpt2")
    a = generate(engine, PROMPT, max_new_tokens=10, sample=True, seed=7)
    b = generate(engine, PROMPT, max_new_tokens=10, sample=True, seed=7)
    c = generate(engine, PROMPT, max_new_tokens=10, sample=True, seed=8)
    assert a.new_ids == b.new_ids
    assert a.new_ids != c.new_ids  # a random 1,000-token model: ten equal draws would be a bug
    assert a.sample and a.seed == 7
    # top_k=1 sampling is greedy
    greedy = generate(engine, PROMPT, max_new_tokens=5)
    assert generate(engine, PROMPT, max_new_tokens=5, sample=True, seed=1, top_k=1).new_ids == greedy.new_ids
    assert generate(engine, PROMPT, max_new_tokens=5, sample=True, seed=1, top_p=1e-9).new_ids == greedy.new_ids


def test_bounds_and_errors(tiny_engine):
    engine = tiny_engine("gpt2")
    with pytest.raises(InputError, match=f"from 1 to {MAX_NEW_TOKENS}"):
        generate(engine, PROMPT, max_new_tokens=MAX_NEW_TOKENS + 1)
    with pytest.raises(InputError, match="new tokens"):
        generate(engine, PROMPT, max_new_tokens=0)
    with pytest.raises(InputError, match="temperature"):
        generate(engine, PROMPT, sample=True, temperature=0)
    with pytest.raises(InputError, match="empty"):
        generate(engine, "   ")
    with pytest.raises(InputError, match="causal LM"):
        generate(tiny_engine("bert"), PROMPT)
    # the engine's token limit bounds the continuation (tiny GPT-2 has 128 positions)
    long = " ".join(["word"] * 200)
    n_prompt = len(engine.tokenizer(long)["input_ids"])
    if n_prompt >= engine.token_limit:
        with pytest.raises(InputError, match="no room left"):
            generate(engine, long)
    # typed text has no generated tokens
    assert not generated_flags(engine.analyze(PROMPT)).any()


def test_the_same_text_analysed_again_keeps_its_generated_tokens(tiny_engine):
    engine = tiny_engine("llama")
    g = generate(engine, "A story about", max_new_tokens=5)
    again = engine.analyze(g.analysis.text)  # a new analysis (e.g. the app's store ran it again)
    assert not hasattr(again, "generated")
    assert np.array_equal(generated_flags(again), g.generated)


@pytest.mark.integration
def test_smollm2_greedy_continuation(smollm2):
    engine = smollm2
    prompt = "The capital of France is"
    g = generate(engine, prompt, max_new_tokens=4)
    assert g.new_ids == _hf_greedy(engine, prompt, 4)[: len(g.new_ids)]
    assert "Paris" in g.continuation
    assert g.generated.sum() >= 1 and g.analysis.tokens[int(np.argmax(g.generated))]
