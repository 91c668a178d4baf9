"""analyze_examples with spaCy in its own process (corpus_builder.annotate.Worker) beside the model:
the same annotations as spaCy in this process, on texts with several sentences, pairs, and a sentence
the annotator's prose filter drops (parsed again here)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tolerances import f32_close

import exbert_hub
from exbert_hub import analyze_examples, batching, examples, load_examples
from corpus_builder.annotate import annotate, load_pipeline

WINOGRAD = Path(__file__).parent / "fixtures" / "examples" / "winograd.jsonl"
MIXED = [
    {"text": "The trophy did not fit. It was too big, said Anna in Paris.", "pair": "Was the trophy big?"},
    {"text": "Call 555 1234 567 89 0 12. Then wait for the reply.", "pair": "12 34 56 78."},  # digits: filtered
    {"text": "  Leading spaces,  double  spaces and a tab\there.", "pair": "The suitcase was small."},
    {"text": "Apple bought a startup in London for $1 billion on Monday.", "pair": "Who bought it?"},
]


@pytest.fixture(scope="module")
def minilm():
    return exbert_hub.load("sentence-transformers/all-MiniLM-L6-v2")


def same_parse(a: examples._Parse, b: examples._Parse) -> None:
    np.testing.assert_array_equal(a.token_words, b.token_words)
    np.testing.assert_array_equal(a.word_heads, b.word_heads)
    assert (a.pos, a.dep, a.ent) == (b.pos, b.dep, b.ent)


def test_worker_parses_equal_in_process_parses(minilm):
    ex = load_examples(MIXED, pair="pair")
    encoded = batching.encode(minilm, ex.texts, ex.pairs)
    plan = batching.plan_batches([len(x) for x in encoded], 64)  # several requests
    assert len(plan) > 1
    here = examples._parse(load_pipeline("en_core_web_sm"), ex, encoded)
    worker = examples._WorkerParses("en_core_web_sm", ex, encoded, plan)
    try:
        there = [worker.get(e) for e in reversed(range(len(ex)))][::-1]  # any order of asking
    finally:
        worker.close()
    for a, b in zip(here, there):
        same_parse(a, b)
    # the words really came from the worker's sentences, except the text with the dropped sentence
    assert sum(len(p.pos) for p in here) > 40 and here[0].pos.count("PROPN") >= 2 and "GPE" in here[3].ent


def test_sentences_that_do_not_cover_the_text_are_refused():
    text = MIXED[1]["text"]
    kept = annotate("en_core_web_sm", [(0, text)], 0, 5000)
    assert [s.text for s in kept] == ["Then wait for the reply."]  # the digits sentence is filtered out
    assert examples._from_sentences(text, kept) is None
    whole = MIXED[0]["text"]
    words = examples._from_sentences(whole, annotate("en_core_web_sm", [(0, whole)], 0, 5000))
    ref = examples._doc_words(load_pipeline("en_core_web_sm")(whole))
    assert words == ref and len({s for s in words.starts}) == len(words.starts)
    assert [whole[s:e] for s, e in zip(words.starts, words.ends)][5:8] == [".", "It", "was"]


def test_analyze_examples_worker_and_in_process_agree(minilm):
    ex = load_examples(WINOGRAD, labels=["label"], spans=["pronoun", "candidate"])
    here = analyze_examples(minilm, ex, progress=False, batch_tokens=256, spacy_process=False)
    there = analyze_examples(minilm, ex, progress=False, batch_tokens=256)
    assert (there.pos, there.dep, there.ent) == (here.pos, here.dep, here.ent)
    assert "NOUN" in there.pos and "nsubj" in there.dep
    L = minilm.num_layers
    for name in ("grammar_directed", "grammar_symmetric"):  # the same parse: the same correlations
        assert np.isfinite(there.head_stats[name]).all()
        f32_close(there.head_stats[name], here.head_stats[name], 64, L, err_msg=name)
    # the worker stays for the next call, idle
    w = examples._IDLE_WORKERS["en_core_web_sm"]
    assert w.proc.poll() is None and w.pending == 0
    again = analyze_examples(minilm, ex, progress=False, batch_tokens=256)
    assert examples._IDLE_WORKERS["en_core_web_sm"] is w and again.pos == here.pos


def test_a_missing_pipeline_is_one_line(minilm):
    from corpus_builder.annotate import SpacyError

    ex = load_examples(["One short text."])
    with pytest.raises(SpacyError, match="could not load the spaCy pipeline 'xx_no_such_pipeline'"):
        analyze_examples(minilm, ex, progress=False, spacy="xx_no_such_pipeline")
    assert "xx_no_such_pipeline" not in examples._IDLE_WORKERS
