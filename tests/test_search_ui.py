"""Corpus search for the app (exbert_hub.search_ui): results, attention of the hits, histograms, errors, API.

One small corpus is built per session with the real builder on the tiny random BERT (2 layers, 4 heads)
from the offline builtin source (~15 s).
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from tolerances import f32_close

from exbert_hub.corpus import CorpusError, CorpusModelMismatch, load_corpus
from exbert_hub.errors import ExbertError, InputError
from exbert_hub.search_ui import (
    FIELDS,
    MAX_K,
    SPECIAL,
    SearchUIError,
    category,
    corpus_status,
    histogram_counts,
    metadata_histograms,
    search_results,
    sentence_attention,
    view_payload,
)

SENTENCES = 60


@pytest.fixture(scope="session")
def bert_corpus(tiny, tmp_path_factory):
    import corpus_builder

    out = tmp_path_factory.mktemp("search-corpus") / "corpus"
    corpus_builder.build(str(tiny("bert")), "builtin:python-docs", str(out), max_sentences=SENTENCES,
                         workers=0, progress=False)
    return out


@pytest.fixture(scope="session")
def engine(tiny_engine):
    return tiny_engine("bert")


@pytest.fixture(scope="session")
def corpus(bert_corpus, engine):
    return load_corpus(str(bert_corpus), model=engine.name)


def _content_word(corpus, sentence_id: int) -> int:
    """The last noun/verb/adjective of a corpus sentence (late in the sentence: its context is unique)."""
    toks = corpus.sentence_tokens(sentence_id)
    return max(i for i, t in enumerate(toks) if not t.special and t.pos in ("NOUN", "VERB", "ADJ", "PROPN"))


# --------------------------------------------------------------------------------------------------
# results
# --------------------------------------------------------------------------------------------------
def test_results_shape_and_json(corpus, engine):
    a = engine.analyze("The cat sat on the mat because it was tired.")
    res = search_results(corpus, a, token=2, layer=1, k=20, engine=engine)
    json.dumps(res)  # JSON-safe
    assert set(res) >= {"query", "corpus", "attention", "fields", "colors", "hits"}
    q = res["query"]
    assert (q["token"], q["token_text"], q["layer"], q["by"], q["k"]) == (2, "cat", 1, "embedding", 20)
    assert res["corpus"]["sentences"] == corpus.num_sentences and res["corpus"]["model"] == engine.name
    assert res["attention"]["source"] == "recomputed" and res["attention"]["heads"] is None
    hits = res["hits"]
    assert len(hits) == 20 and [h["rank"] for h in hits] == list(range(1, 21))
    scores = [h["score"] for h in hits]
    assert scores == sorted(scores, reverse=True)
    per_token = ("tokens", "space_before", "special", "pos", "tag", "dep", "ent", "iob", "lemma", "word", "head",
                 "word_text", "attention")
    for h in hits:
        n = len(h["tokens"])
        assert all(len(h[key]) == n for key in per_token), h["sentence"]
        assert 0 <= h["match"] < n and not h["special"][h["match"]]  # special tokens are never indexed
        assert h["special"][0] and h["tokens"][0] == "[CLS]" and h["pos"][0] == ""
        assert abs(sum(h["attention"]) - 1.0) < 1e-3  # a softmax row (mean over heads)
        assert h["max_att"] is not None and not h["special"][h["max_att"]]
        words = [h["attention"][i] for i in range(n) if not h["special"][i]]
        assert h["attention"][h["max_att"]] == max(words)
        # the display tokens rebuild the sentence (spaces from the offsets)
        text = "".join((" " if sp and i > 1 else "") + t for i, (t, sp, s) in
                       enumerate(zip(h["tokens"], h["space_before"], h["special"])) if not s)
        assert text.lower() == h["sentence"].lower().strip()
    # every category has a colour, for every field
    for field in FIELDS:
        cats = {category(h, field, i) for h in hits for i in range(len(h["tokens"]))}
        assert cats <= set(res["colors"][field]) and SPECIAL in cats
    view = view_payload(res, left=3, right=4, field="dep")
    assert view["view"] == {"left": 3, "right": 4, "field": "dep"} and view["hits"] is res["hits"]


def test_a_corpus_token_finds_itself_first(corpus, engine):
    for sid in (0, 7, 31):
        a = engine.analyze(corpus.sentence(sid))
        tok = _content_word(corpus, sid)
        for layer in (0, 1):
            res = search_results(corpus, a, token=tok, layer=layer, k=5, engine=engine)
            top = res["hits"][0]
            assert (top["sentence_id"], top["match"]) == (sid, tok)
            assert top["score"] == pytest.approx(1.0, abs=2e-3)
            assert top["tokens"][tok] == a.display_tokens[tok]


def test_heads_search(corpus, engine):
    sid = 5
    a = engine.analyze(corpus.sentence(sid))
    tok = _content_word(corpus, sid)
    res = search_results(corpus, a, token=tok, layer=0, by="heads", heads=[2, 0, 2], k=10, engine=engine)
    assert res["query"]["heads"] == [0, 2] and res["attention"]["heads"] == [0, 2]
    assert res["hits"][0]["score"] == pytest.approx(1.0, abs=2e-3)
    assert any((h["sentence_id"], h["match"]) == (sid, tok) for h in res["hits"] if h["score"] > 0.998)
    # the attention shown is the mean over the selected heads
    h = res["hits"][0]
    ref = engine.analyze(h["sentence"]).attentions[0][[0, 2]].mean(axis=0)[h["match"]]
    np.testing.assert_allclose(h["attention"], ref, atol=1e-4)
    with pytest.raises(InputError, match="at least one head"):
        search_results(corpus, a, token=tok, layer=0, by="heads", heads=[], engine=engine)
    with pytest.raises(InputError, match="do not exist"):
        search_results(corpus, a, token=tok, layer=0, by="heads", heads=[0, 9], engine=engine)


def test_batched_attention_equals_engine_analyze(corpus, engine):
    ids = [0, 3, 11, 12, 40, 59]
    sentences = {i: (corpus.sentence(i), [t.token for t in corpus.sentence_tokens(i)]) for i in ids}
    got = sentence_attention(engine, sentences, layer=1, heads=None)
    assert set(got) == set(ids)
    for i in ids:
        ref = engine.analyze(corpus.sentence(i)).attentions[1].mean(axis=0)
        assert got[i].shape == ref.shape
        f32_close(got[i], ref, 1536, 2)  # a padded batch vs one sentence, through layers 0 and 1
    # corpus tokens that are not the tokenizer's (another tokenizer version): no attention, never misaligned
    text, toks = sentences[3]
    assert sentence_attention(engine, {3: (text, ["X"] + toks[1:])}, layer=1) == {}


@pytest.mark.parametrize("family", ["gpt2", "llama", "roberta", "t5"])
def test_batched_attention_other_families(tiny_engine, family):
    """Causal (right padding, GQA), byte-level BPE and encoder-decoder (per-sentence path) models."""
    eng = tiny_engine(family)
    texts = ["The cat sat on the mat.", "A much longer sentence about the attention of small models goes here.",
             "Short one.", "Another sentence, with a comma, and some more words in it."]
    refs = {i: eng.analyze(t) for i, t in enumerate(texts)}
    sentences = {i: (t, list(refs[i].tokens)) for i, t in enumerate(texts)}
    calls = []
    analyze = eng.analyze
    eng.analyze = lambda *a, **kw: calls.append(a) or analyze(*a, **kw)  # counts the per-sentence path
    got = sentence_attention(eng, sentences, layer=1, heads=[1, 2])
    assert set(got) == set(sentences)
    assert len(calls) == (len(texts) if family == "t5" else 0)  # one batched pass for all the others
    for i in sentences:
        f32_close(got[i], refs[i].attentions[1][[1, 2]].mean(axis=0), 64, 2)  # tiny: widths <= 64, layers 0-1


# --------------------------------------------------------------------------------------------------
# histograms
# --------------------------------------------------------------------------------------------------
def test_histogram_counts_and_figure(corpus, engine):
    a = engine.analyze("The interpreter evaluates the expression and returns its value.")
    res = search_results(corpus, a, token=2, layer=1, k=40, engine=engine)
    hits = res["hits"]
    for field in FIELDS:
        c = histogram_counts(res, field)
        assert sum(c["matched"]) == len(hits)
        assert sum(c["attended"]) == sum(h["max_att"] is not None for h in hits) == len(hits)
        expected = {}
        for h in hits:
            cat = category(h, field, h["match"])
            expected[cat] = expected.get(cat, 0) + 1
        assert dict(zip(c["categories"], c["matched"])) == {k: expected.get(k, 0) for k in c["categories"]}
        assert SPECIAL not in c["categories"]  # neither a match nor the most-attended token is special
        assert sum(c["positions"].values()) == len(hits) == sum(c["offsets"].values())
        assert set(c["positions"]) == {h["match"] for h in hits}
        assert set(c["offsets"]) == {h["max_att"] - h["match"] for h in hits}
        fig = metadata_histograms(res, field)
        matched, attended, positions, offsets = fig.data
        assert list(matched.x) == c["categories"] and list(matched.y) == c["matched"]
        assert list(attended.y) == c["attended"]
        assert list(positions.x) == list(c["positions"]) and sum(positions.y) == len(hits)
        assert sum(offsets.y) == len(hits)
        assert fig.layout.annotations[0].text.startswith(FIELDS[field])
    if any(h["ent"][h["match"]] == "" for h in hits):
        assert "none" in histogram_counts(res, "ent")["categories"]
    with pytest.raises(InputError, match="field must be one of"):
        histogram_counts(res, "shape")
    empty = histogram_counts({"hits": []}, "pos")
    assert empty["categories"] == [] and empty["positions"] == {}
    assert len(metadata_histograms({"hits": []}, "pos").data) == 4


# --------------------------------------------------------------------------------------------------
# errors: one clear line, never a trace
# --------------------------------------------------------------------------------------------------
def test_bad_corpus_and_inputs_give_clear_errors(corpus, engine, bert_corpus, tmp_path):
    a = engine.analyze("The cat sat on the mat.")
    with pytest.raises(CorpusError, match="no corpus folder"):
        search_results(str(tmp_path / "missing"), a, token=2, layer=0, engine=engine)
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "README.md").write_text("# just a folder\n")
    with pytest.raises(CorpusError, match="not an exbert-hub corpus"):
        search_results(str(tmp_path / "plain"), a, token=2, layer=0, engine=engine)
    with pytest.raises(SearchUIError, match="no corpus loaded"):
        search_results("", a, token=2, layer=0, engine=engine)
    other = dataclasses.replace(a, model_name="bert-base-uncased")
    with pytest.raises(CorpusModelMismatch, match="built with the model"):
        search_results(corpus, other, token=2, layer=0, engine=engine)
    with pytest.raises(SearchUIError, match="analyze a text first"):
        search_results(corpus, None, token=2, layer=0, engine=engine)
    with pytest.raises(InputError, match="token 99 is out of range"):
        search_results(corpus, a, token=99, layer=0, engine=engine)
    with pytest.raises(InputError, match="layer 7 is out of range"):
        search_results(corpus, a, token=2, layer=7, engine=engine)
    with pytest.raises(InputError, match=f"between 1 and {MAX_K}"):
        search_results(corpus, a, token=2, layer=0, k=MAX_K + 1, engine=engine)
    with pytest.raises(InputError, match="by must be"):
        search_results(corpus, a, token=2, layer=0, by="context", engine=engine)
    # the tab's status line: what the corpus holds, or the reason in one line (no trace)
    ok = corpus_status(str(bert_corpus), engine.name)
    assert ok.startswith("Corpus ") and f"{corpus.num_sentences:,} sentences" in ok and "layers 0, 1" in ok
    for ref, model, words in [(str(tmp_path / "missing"), None, "no corpus folder"),
                              ("", engine.name, "no corpus loaded"),
                              (str(bert_corpus), "bert-base-uncased", "built with the model"),
                              (str(tmp_path / "plain"), None, "not an exbert-hub corpus")]:
        msg = corpus_status(ref, model)
        assert msg.startswith("\u26a0") and words in msg and "Traceback" not in msg and "\n" not in msg


# --------------------------------------------------------------------------------------------------
# the tab builds inside a caller's Blocks, and the HTTP API answers through gradio_client
# --------------------------------------------------------------------------------------------------
def test_tab_and_api_through_gradio_client(bert_corpus, engine, corpus):
    import gradio as gr
    from gradio_client import Client

    from exbert_hub.app import AnalysisStore, Request
    from exbert_hub.search_ui import add_search_tab, register_search_api

    store = AnalysisStore()
    model = engine.name
    with gr.Blocks() as demo:
        key = gr.State(None)
        with gr.Tabs():
            with gr.Tab("First"):
                gr.Markdown("first")
            tab = add_search_tab(key_state=key, get_analysis=store.get, corpus_ref=str(bert_corpus))
        fn = register_search_api(model, str(bert_corpus), analyze=lambda m, t: store.run(Request(m, t))[1])
    assert tab.corpus.value == bert_corpus.name and tab.k.value == 50 and tab.view.elem_id == "xs-view"  # a label, no path
    demo.launch(prevent_thread_lock=True, quiet=True)
    try:
        client = Client(demo.local_url, verbose=False)
        text = corpus.sentence(7)
        tok = _content_word(corpus, 7)
        res = client.predict(text=text, token=tok, layer=1, by="embedding", heads=None, k=5, model=model,
                             corpus=str(bert_corpus), api_name="/search")
        assert len(res["hits"]) == 5 and (res["hits"][0]["sentence_id"], res["hits"][0]["match"]) == (7, tok)
        assert res["corpus"]["ref"] == bert_corpus.name and str(bert_corpus.parent) not in json.dumps(res)  # no server path
        assert res == json.loads(json.dumps(fn(text, tok, 1, "embedding", None, 5, model, str(bert_corpus))))
        # defaults: the app's model and corpus; heads as a list
        res = client.predict(text=text, token=tok, layer=0, by="heads", heads=[1, 3], api_name="/search")
        assert res["query"]["heads"] == [1, 3] and len(res["hits"]) == 50
        with pytest.raises(Exception, match="no corpus folder"):
            client.predict(text=text, token=tok, layer=0, corpus="/no/such/corpus", api_name="/search")
        with pytest.raises(Exception, match="out of range"):
            client.predict(text=text, token=500, layer=0, api_name="/search")
    finally:
        demo.close()
