"""Sequence and token classifiers as kinds of their own: label names and probabilities against the model.

Each tiny random classifier (tests/tiny_models.py: BERT sequence and token heads, a Llama sequence head)
is loaded a second time here with its checkpoint's own class, and the engine's probabilities are
compared with the softmax (or sigmoid) of that model's own logits.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

import exbert_hub
from exbert_hub import InputError, ModelCache
from exbert_hub.analysis import SEQUENCE_CLASSIFICATION, TOKEN_CLASSIFICATION
from exbert_hub.engine import detect_kind

import tiny_models
from tolerances import f32_close

TEXT = "John lives in Paris with his cat."


@pytest.fixture(scope="module")
def cache():
    return ModelCache(max_models=8)


@pytest.fixture(scope="module")
def folder(tiny):
    return lambda family: tiny(family)


def _reference_logits(path, text: str, pair: str | None = None) -> tuple[np.ndarray, list[int], object]:
    """logits[0] of the checkpoint's own class (float32), the input ids, and the config."""
    import transformers as tf

    config = tf.AutoConfig.from_pretrained(path)
    model = getattr(tf, config.architectures[0]).from_pretrained(path, attn_implementation="eager").eval()
    tok = tf.AutoTokenizer.from_pretrained(path)
    enc = tok(text, pair, return_tensors="pt")
    with torch.no_grad():
        out = model(**enc, output_attentions=True)
    return out.logits[0].numpy(), enc["input_ids"][0].tolist(), (config, out)


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


@pytest.mark.parametrize("family", list(tiny_models.CLASSIFIERS))
def test_kind_detected_from_the_head(family, folder, cache):
    engine = exbert_hub.load(str(folder(family)), cache=cache)
    assert engine.kind == tiny_models.CLASSIFIERS[family]
    assert engine.analyze(TEXT).kind == engine.kind


@pytest.mark.parametrize("family", ["bert-seqcls", "llama-seqcls"])
def test_sequence_classifier_one_prediction_for_the_text(family, folder, cache):
    path = folder(family)
    a = exbert_hub.load(str(path), cache=cache).analyze(TEXT)
    logits, ids, (config, out) = _reference_logits(path, TEXT)
    assert a.ids.tolist() == ids
    c = a.classification
    assert c is not None and not c.per_token and c.activation == "softmax"
    assert c.labels == tiny_models.SEQ_LABELS == [config.id2label[i] for i in range(config.num_labels)]
    assert c.logits.shape == c.probabilities.shape == (3,)
    f32_close(c.logits, logits, reduction=32, depth=3)
    f32_close(c.probabilities, _softmax(logits.astype(np.float64)), reduction=32, depth=3)
    assert c.predicted == config.id2label[int(np.argmax(logits))]
    top = c.top()
    assert [p for _, p in top] == sorted((p for _, p in top), reverse=True)
    assert top[0][0] == c.predicted and sum(p for _, p in top) == pytest.approx(1.0, abs=1e-5)
    assert a.predictions is None  # one prediction for the text, not per position
    assert c.predicted in a.prediction_note and f"{top[0][1]:.1%}" in a.prediction_note
    # attention is still the model's own
    for layer, w in enumerate(out.attentions):
        f32_close(a.attentions[layer], w[0].numpy(), reduction=32, depth=layer + 1)


def test_token_classifier_one_prediction_per_token(folder, cache):
    path = folder("bert-tokcls")
    a = exbert_hub.load(str(path), cache=cache).analyze(TEXT, top_k=2)
    logits, ids, (config, _) = _reference_logits(path, TEXT)
    c = a.classification
    assert c.per_token and c.labels == tiny_models.TOKEN_LABELS
    assert c.probabilities.shape == (len(ids), len(tiny_models.TOKEN_LABELS))
    f32_close(c.probabilities, _softmax(logits.astype(np.float64)), reduction=32, depth=3)
    want = [config.id2label[i] for i in np.argmax(logits, axis=-1).tolist()]
    assert c.predicted == want
    assert len(set(want)) > 1  # the tiny head really distinguishes tokens
    # the views' per-position predictions are the labels, top-k of each token
    assert len(a.predictions) == len(ids)
    for i, row in enumerate(a.predictions):
        assert len(row) == 2 and row[0][0] == want[i]
        assert row[0][1] == pytest.approx(float(c.probabilities[i].max()), abs=1e-7)
    assert c.top(1, position=3) == [a.predictions[3][0]]
    with pytest.raises(InputError, match="token classifier"):
        c.top(1)
    with pytest.raises(InputError, match="out of range"):
        c.top(1, position=len(ids))


def test_sentence_pair_classification(folder, cache):
    path = folder("bert-seqcls")
    a = exbert_hub.load(str(path), cache=cache).analyze("A man plays a guitar.", pair="Someone makes music.")
    logits, ids, _ = _reference_logits(path, "A man plays a guitar.", "Someone makes music.")
    assert a.ids.tolist() == ids and a.pair_start is not None
    f32_close(a.classification.probabilities, _softmax(logits.astype(np.float64)), reduction=32, depth=3)


def test_multi_label_uses_sigmoid(folder, cache, tmp_path):
    path = tmp_path / "multilabel"
    shutil.copytree(folder("bert-seqcls"), path)
    cfg = json.loads((path / "config.json").read_text())
    cfg["problem_type"] = "multi_label_classification"
    (path / "config.json").write_text(json.dumps(cfg))
    a = exbert_hub.load(str(path), cache=cache).analyze(TEXT)
    logits, _, _ = _reference_logits(path, TEXT)
    assert a.classification.activation == "sigmoid"
    f32_close(a.classification.probabilities, 1 / (1 + np.exp(-logits.astype(np.float64))), reduction=32, depth=3)


def test_kind_override(folder, cache):
    # the classifier read as a plain encoder: no head, no classification
    enc = exbert_hub.load(str(folder("bert-seqcls")), cache=cache, kind="encoder")
    assert enc.kind == "encoder"
    a = enc.analyze(TEXT)
    assert a.classification is None and a.predictions is None
    # a masked LM given a (new, randomly initialised) token-classification head: default label names
    tok = exbert_hub.load(str(folder("bert")), cache=cache, kind=TOKEN_CLASSIFICATION)
    b = tok.analyze(TEXT)
    assert tok.kind == b.kind == TOKEN_CLASSIFICATION
    assert b.classification.labels == ["LABEL_0", "LABEL_1"]
    assert b.classification.probabilities.shape == (len(b.tokens), 2)
    np.testing.assert_allclose(b.classification.probabilities.sum(axis=1), 1.0, atol=1e-6)
    seq = exbert_hub.load(str(folder("bert-tokcls")), cache=cache, kind=SEQUENCE_CLASSIFICATION)
    c = seq.analyze(TEXT).classification  # the config's 5 label names, now for the whole text
    assert c.labels == tiny_models.TOKEN_LABELS and c.probabilities.shape == (5,) and not c.per_token


def test_classifiers_refuse_masking_and_unknown_kinds(folder, cache):
    engine = exbert_hub.load(str(folder("bert-seqcls")), cache=cache)
    with pytest.raises(InputError, match="masking needs a masked language model"):
        engine.analyze(TEXT, mask=[1])
    with pytest.raises(InputError, match="token-classification"):  # the message lists the kinds
        exbert_hub.load(str(folder("bert-seqcls")), cache=cache, kind="classifier")


@pytest.mark.parametrize("architectures, kind", [
    (["BertForSequenceClassification"], SEQUENCE_CLASSIFICATION),
    (["DistilBertForTokenClassification"], TOKEN_CLASSIFICATION),
    (["LlamaForSequenceClassification"], SEQUENCE_CLASSIFICATION),
    (["BertForMaskedLM"], "masked-lm"),
])
def test_detect_kind_from_architectures(architectures, kind):
    from transformers import BertConfig

    assert detect_kind(BertConfig(architectures=architectures)) == kind


@pytest.mark.parametrize("family", ["bert-seqcls", "bert-tokcls"])
def test_classify_turns_logits_into_the_analysis_classification(family, folder, cache):
    """engine.classify (what analyze_examples uses) gives what analyze gives, from an array or a tensor."""
    engine = exbert_hub.load(str(folder(family)), cache=cache)
    c = engine.analyze(TEXT).classification
    for logits in (c.logits, torch.from_numpy(c.logits)):
        got = engine.classify(logits)
        assert got.labels == c.labels and got.per_token == c.per_token and got.activation == c.activation
        np.testing.assert_array_equal(got.probabilities, c.probabilities)


def test_classify_refuses_a_model_without_labels(folder, cache):
    engine = exbert_hub.load(str(folder("bert")), cache=cache)
    with pytest.raises(exbert_hub.errors.InputError, match="not a classifier"):
        engine.classify(np.zeros(3, np.float32))
