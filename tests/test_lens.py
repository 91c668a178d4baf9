"""The logit lens against transformers' own logits (last layer) and a naive numpy head (every layer).

Families: BERT-kind masked LMs (BERT, RoBERTa, DistilBERT, ALBERT, ELECTRA), GPT-2, Llama (tiny and
the packaged SmolLM2), T5 and BART (decoder). Tolerances from float32 arithmetic (tests/tolerances.py).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tolerances import f32_close

from exbert_hub import InputError
from exbert_hub.analyses.lens import lens_head, logit_lens, target_id, target_trace
from exbert_hub.errors import UnsupportedModelError

TEXT = "The cat sat on the mat because it was tired."
MASKED = ["bert", "roberta", "distilbert", "albert", "electra"]
FAMILIES = MASKED + ["gpt2", "llama", "t5", "bart"]


def _model_logits(engine, a) -> np.ndarray:
    """float32[T, vocab]: transformers' own forward pass over the analysis' tokens."""
    inputs = {"input_ids": torch.as_tensor(a.ids)[None]}
    if a.decoder_input is not None:
        inputs["decoder_input_ids"] = torch.as_tensor(a.decoder_input.ids)[None]
    with torch.inference_mode():
        return engine.model(**inputs).logits[0].float().numpy()


def _softmax64(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=-1, keepdims=True)


def _hidden(engine) -> int:
    c = engine.config
    return int(getattr(c, "hidden_size", None) or getattr(c, "d_model", None) or getattr(c, "dim"))


def _check_last_layer(engine, a, k=5):
    lens = logit_lens(a, engine, top_k=k)
    want = _softmax64(_model_logits(engine, a))
    order = np.argsort(-want, axis=-1, kind="stable")[:, :k]
    got_ids, got_p = lens.top_ids[-1], lens.top_probs[-1]
    want_p = np.take_along_axis(want, order, axis=-1)
    d = _hidden(engine)
    f32_close(got_p, want_p, reduction=d, depth=3, err_msg="last-layer probabilities")
    # same ids, except where two probabilities are equal within the bound (ties may swap)
    diff = got_ids != order
    if diff.any():
        assert np.all(np.abs(np.take_along_axis(want, got_ids, axis=-1) - want_p)[diff] < 1e-5), "top ids differ"
    return lens


@pytest.mark.parametrize("family", FAMILIES)
def test_last_layer_is_the_models_prediction(family, tiny_engine):
    engine = tiny_engine(family)
    a = engine.analyze(TEXT)
    lens = _check_last_layer(engine, a)
    n_states = (a.decoder_hidden_states if a.decoder_hidden_states is not None else a.hidden_states).shape[0]
    assert lens.top_ids.shape[0] == n_states == engine.num_layers + 1
    assert lens.stack == ("decoder" if family in ("t5", "bart") else "self")
    assert np.all(np.diff(lens.top_probs, axis=-1) <= 0), "top-k must be in descending order"
    # the words are those of the engine's own predictions at the last layer
    words = lens.tokens(engine.tokenizer)[-1]
    assert [w for w, _ in a.predictions[3][:5]] == words[3]


def _layer_norm(x, w, b, eps):
    x = x.astype(np.float64)
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + (0 if b is None else b)


def _np(t):
    return t.detach().double().numpy()


def test_gpt2_every_layer_equals_naive_ln_f_and_lm_head(tiny_engine):
    engine = tiny_engine("gpt2")
    a = engine.analyze(TEXT)
    m = engine.model
    ln = m.transformer.ln_f
    W = _np(m.lm_head.weight)
    lens = logit_lens(a, engine, top_k=3)
    for s in range(a.hidden_states.shape[0]):
        h = a.hidden_states[s].astype(np.float64)
        if s < a.hidden_states.shape[0] - 1:  # the last hidden state is already ln_f's output
            h = _layer_norm(h, _np(ln.weight), _np(ln.bias), ln.eps)
        p = _softmax64(h @ W.T)
        want = np.sort(p, axis=-1)[:, ::-1][:, :3]
        f32_close(lens.top_probs[s], want, reduction=32, depth=3, err_msg=f"state {s}")


def test_llama_every_layer_equals_naive_rmsnorm_and_lm_head(tiny_engine):
    engine = tiny_engine("llama")
    a = engine.analyze(TEXT)
    m = engine.model
    w, eps = _np(m.model.norm.weight), m.config.rms_norm_eps
    W = _np(m.lm_head.weight)
    lens = logit_lens(a, engine, top_k=3)
    for s in range(a.hidden_states.shape[0] - 1):
        h = a.hidden_states[s].astype(np.float64)
        h = h / np.sqrt((h ** 2).mean(-1, keepdims=True) + eps) * w
        p = _softmax64(h @ W.T)
        assert np.array_equal(lens.top_ids[s][:, 0], p.argmax(-1))
        f32_close(lens.top_probs[s], np.sort(p, axis=-1)[:, ::-1][:, :3], reduction=32, depth=3)


def test_bert_every_layer_equals_naive_mlm_head(tiny_engine):
    from scipy.special import erf

    engine = tiny_engine("bert")
    a = engine.analyze(TEXT)
    pred = engine.model.cls.predictions
    dense, ln = pred.transform.dense, pred.transform.LayerNorm
    W, b = _np(pred.decoder.weight), _np(pred.decoder.bias)
    lens = logit_lens(a, engine, top_k=3)
    for s in range(a.hidden_states.shape[0]):
        x = a.hidden_states[s].astype(np.float64) @ _np(dense.weight).T + _np(dense.bias)
        x = 0.5 * x * (1 + erf(x / np.sqrt(2)))  # BERT's exact gelu
        x = _layer_norm(x, _np(ln.weight), _np(ln.bias), ln.eps)
        p = _softmax64(x @ W.T + b)
        f32_close(lens.top_probs[s], np.sort(p, axis=-1)[:, ::-1][:, :3], reduction=37, depth=4)


def test_t5_scales_the_tied_decoder_output(tiny_engine):
    engine = tiny_engine("t5")
    head = lens_head(engine.model, engine.kind)
    assert "d_model^-0.5" in head.describe and "final_layer_norm" in head.describe
    a = engine.analyze(TEXT, target="a short target")
    _check_last_layer(engine, a)
    # an intermediate layer by hand: RMS norm (T5 has no mean subtraction), x d_model^-0.5, lm_head
    ln = engine.model.decoder.final_layer_norm
    h = a.decoder_hidden_states[1].astype(np.float64)
    h = h / np.sqrt((h ** 2).mean(-1, keepdims=True) + ln.variance_epsilon) * _np(ln.weight)
    p = _softmax64((h * engine.config.d_model ** -0.5) @ _np(engine.model.lm_head.weight).T)
    lens = logit_lens(a, engine, top_k=2)
    f32_close(lens.top_probs[1], np.sort(p, axis=-1)[:, ::-1][:, :2], reduction=32, depth=3)


def test_positions_subset_and_chunks_agree(tiny_engine):
    engine = tiny_engine("gpt2")
    a = engine.analyze(TEXT)
    full = logit_lens(a, engine, top_k=4)
    part = logit_lens(a, engine, top_k=4, positions=[5, 2, -1], chunk=2)
    idx = [5, 2, len(a.tokens) - 1]
    assert part.positions.tolist() == idx
    assert np.array_equal(part.top_ids, full.top_ids[:, idx])
    f32_close(part.top_probs, full.top_probs[:, idx], reduction=32, depth=3)


@pytest.mark.parametrize("family", ["gpt2", "bert", "t5"])
def test_target_trace_ranks_and_probabilities(family, tiny_engine):
    engine = tiny_engine(family)
    a = engine.analyze(TEXT)
    lens = logit_lens(a, engine, top_k=1)
    pos = 4
    top = int(lens.top_ids[-1, pos, 0])
    trace = target_trace(a, engine, pos, top)
    assert trace.ranks[-1] == 1
    f32_close(trace.probs[-1], lens.top_probs[-1, pos, 0], reduction=32, depth=3)
    # every layer: rank = 1 + tokens with a larger logit, from the lens' own top-1 at that layer
    for s in range(len(trace.ranks)):
        if int(lens.top_ids[s, pos, 0]) == top:
            assert trace.ranks[s] == 1
        else:
            assert trace.ranks[s] > 1 and trace.probs[s] <= lens.top_probs[s, pos, 0] + 1e-6
    other = (top + 7) % engine.model.get_output_embeddings().weight.shape[0]
    t2 = target_trace(a, engine, pos, other)
    assert np.all(t2.ranks >= 1) and np.all((t2.probs >= 0) & (t2.probs <= 1))


def test_errors_are_one_line_input_errors(tiny_engine):
    engine = tiny_engine("gpt2")
    a = engine.analyze(TEXT)
    with pytest.raises(InputError, match="top_k"):
        logit_lens(a, engine, top_k=0)
    with pytest.raises(InputError, match="positions"):
        logit_lens(a, engine, positions=[999])
    with pytest.raises(InputError, match="target token id"):
        target_trace(a, engine, 0, 10**9)
    with pytest.raises(InputError, match="empty"):
        target_id(engine, "  ")
    assert isinstance(target_id(engine, "the"), int)


def test_encoder_without_head_is_refused(tiny_engine):
    engine = tiny_engine("electra-discriminator")
    a = engine.analyze(TEXT)
    with pytest.raises(InputError, match="language-model head"):
        logit_lens(a, engine)
    with pytest.raises(UnsupportedModelError):
        lens_head(engine.model, "encoder")


# --- the real Llama-family model ------------------------------------------------------------------------
@pytest.mark.integration
def test_smollm2_last_layer_is_the_models_prediction(smollm2):
    a = smollm2.analyze("The capital of France is Paris, and the capital of Italy is")
    lens = _check_last_layer(smollm2, a, k=5)
    assert "model.norm" in lens.head and "lm_head" in lens.head
    words = lens.tokens(smollm2.tokenizer)
    assert words[-1][-1][0].strip() == "Rome"  # the model's own next word
    tid = target_id(smollm2, "Rome")
    trace = target_trace(a, smollm2, -1, tid)
    assert trace.ranks[-1] == 1 and trace.ranks[0] > 1  # the embeddings alone do not predict it
