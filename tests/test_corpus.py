"""Corpus search on a real MiniLM corpus: known top hits, score semantics, metadata, model checks, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from tolerances import f32_rel_bound

from exbert_hub import corpus_format as cf

MINILM = "sentence-transformers/all-MiniLM-L6-v2"


@pytest.fixture(scope="module")
def minilm():
    import exbert_hub

    return exbert_hub.load(MINILM)


@pytest.fixture(scope="module")
def corpus_dir(minilm, tmp_path_factory):
    from corpus_builder import build

    out = tmp_path_factory.mktemp("minilm") / "corpus"
    build(MINILM, "builtin:python-docs", str(out), max_sentences=120, workers=0, progress=False)
    return out


@pytest.fixture(scope="module")
def corpus(corpus_dir):
    from exbert_hub.corpus import load_corpus

    return load_corpus(str(corpus_dir), model=MINILM)


CASES = [(0, 3, 0), (17, 5, 3), (42, 2, 5), (88, 7, 4), (119, 1, 2)]


@pytest.mark.parametrize("by,heads", [("embedding", None), ("heads", None), ("heads", [0, 5]), ("heads", [11])])
def test_own_live_vector_is_the_top_hit(corpus, minilm, by, heads):
    assert corpus.num_sentences == 120
    for sid, token, layer in CASES:
        a = minilm.analyze(corpus.sentence(sid))
        hits = corpus.search(a, token=token, layer=layer, by=by, heads=heads, k=50)
        assert len(hits) == 50
        assert (hits[0].sentence_id, hits[0].token_index) == (sid, token), (sid, token, layer)
        assert hits[0].score == pytest.approx(1.0, abs=2e-3)
        assert hits[0].sentence == a.text
        assert hits[0].token.token == a.tokens[token]
        scores = [h.score for h in hits]
        assert scores == sorted(scores, reverse=True) and scores[1] < scores[0]


def test_scores_are_cosines_as_documented(corpus, minilm):
    a = minilm.analyze("Functions return values to their caller.")
    layer, token = 4, 1
    for by, heads in (("embedding", None), ("heads", None), ("heads", [2, 7])):
        for hit in corpus.search(a, token=token, layer=layer, by=by, heads=heads, k=5):
            b = minilm.analyze(hit.sentence)
            if by == "embedding":
                x, y = a.hidden_states[layer + 1, token], b.hidden_states[layer + 1, hit.token_index]
                expected = x @ y / np.linalg.norm(x) / np.linalg.norm(y)
            else:
                H = minilm.num_heads
                x = a.contexts[layer, token].reshape(H, -1)
                y = b.contexts[layer, hit.token_index].reshape(H, -1)
                cos = (x * y).sum(1) / np.linalg.norm(x, axis=1) / np.linalg.norm(y, axis=1)
                expected = cos[heads if heads else slice(None)].mean()
            assert hit.score == pytest.approx(float(expected), abs=3e-3), (by, heads)


def test_a_new_sentence_finds_the_same_word(corpus, minilm):
    a = minilm.analyze("The function returns a list of values.")
    assert a.tokens[2] == "function"
    hits = corpus.search(a, token=2, layer=4, by="embedding", k=10)
    assert [h.token.text.lower() for h in hits[:3]] == ["function"] * 3


def test_hit_tokens_carry_spacy_metadata(corpus, minilm):
    a = minilm.analyze(corpus.sentence(17))
    hit = corpus.search(a, token=5, layer=3, k=1)[0]
    assert [t.token for t in hit.tokens] == a.tokens
    assert hit.tokens[0].special and hit.tokens[-1].special
    tok = hit.token
    assert tok.pos and tok.tag and tok.dep and tok.lemma and tok.ent_iob in "BIO"
    assert hit.sentence[tok.start:tok.end] == tok.text and tok.text.lower() in tok.word_text.lower() + tok.token
    assert 0 <= tok.head <= max(t.word for t in hit.tokens)
    json.dumps(hit.to_dict())  # plain types, ready for the app / HTTP API


def test_negative_layer_and_card(corpus, minilm):
    a = minilm.analyze(corpus.sentence(3))
    assert corpus.search(a, token=2, layer=-1, k=3)[0].sentence_id == 3
    assert corpus.meta["model"] == MINILM and corpus.meta["model_kind"] == "encoder"
    assert corpus.meta["layers"] == [0, 1, 2, 3, 4, 5]
    assert corpus.meta["build"]["batched_vs_engine_max_rel_diff"] < f32_rel_bound(1536, 6)  # MiniLM: 6 layers, FFN 1536
    assert corpus.index_info("heads", 2)["tier"] == cf.EXACT


def test_load_dataset_on_the_folder(corpus_dir):
    import datasets

    tokens = datasets.load_dataset(str(corpus_dir), split="train")
    assert {"pos", "dep", "ent_type", "vector_row"} <= set(tokens.column_names)
    sentences = datasets.load_dataset(str(corpus_dir), "sentences", split="train")
    assert len(sentences) == 120


# --- the model must match ---------------------------------------------------------------------------
def test_other_model_is_refused_naming_both(corpus, corpus_dir, tiny):
    import exbert_hub
    from exbert_hub.corpus import CorpusModelMismatch, load_corpus

    other = exbert_hub.load(str(tiny("bert")))
    a = other.analyze("The cat sat on the mat.")
    with pytest.raises(CorpusModelMismatch) as err:
        corpus.search(a, token=1, layer=0)
    assert MINILM in str(err.value) and str(tiny("bert")) in str(err.value)
    with pytest.raises(CorpusModelMismatch, match="bert-base-uncased"):
        load_corpus(str(corpus_dir), model="bert-base-uncased")


def test_search_argument_errors(corpus, minilm):
    from exbert_hub.errors import InputError

    a = minilm.analyze("The cat sat on the mat.")
    with pytest.raises(InputError, match="token 99 is out of range"):
        corpus.search(a, token=99, layer=0)
    with pytest.raises(InputError, match="layer 6 is out of range"):
        corpus.search(a, token=1, layer=6)
    with pytest.raises(InputError, match="by must be"):
        corpus.search(a, token=1, layer=0, by="attention")
    with pytest.raises(InputError, match="heads \\[12\\] do not exist"):
        corpus.search(a, token=1, layer=0, by="heads", heads=[3, 12])
    with pytest.raises(InputError, match="at least one head"):
        corpus.search(a, token=1, layer=0, by="heads", heads=[])
    with pytest.raises(InputError, match="heads= is for by='heads'"):
        corpus.search(a, token=1, layer=0, heads=[1])
    with pytest.raises(InputError, match="k must be"):
        corpus.search(a, token=1, layer=0, k=0)


def test_unindexed_layer(tiny, tmp_path):
    import exbert_hub
    from corpus_builder import build
    from exbert_hub.corpus import load_corpus
    from exbert_hub.errors import InputError

    model = str(tiny("bert"))
    out = build(model, "builtin:python-docs", str(tmp_path / "c"), max_sentences=30, workers=0, progress=False, layers=[1])
    corpus = load_corpus(str(out))
    assert corpus.layers == [1] and not (out / cf.index_file("embedding", 0, cf.EXACT)).exists()
    a = exbert_hub.load(model).analyze(corpus.sentence(0))
    with pytest.raises(InputError, match=r"layer 0 is not indexed.*\[1\]"):
        corpus.search(a, token=1, layer=0)
    assert corpus.search(a, token=1, layer=1, k=5)[0].score == pytest.approx(1.0, abs=2e-3)


# --- opening ---------------------------------------------------------------------------------------
def test_open_errors(tmp_path, corpus_dir):
    from exbert_hub.corpus import CorpusError, load_corpus

    with pytest.raises(CorpusError, match="no corpus folder"):
        load_corpus(str(tmp_path / "nothing" / "here"))
    with pytest.raises(CorpusError, match="not an exbert-hub corpus"):
        load_corpus(str(tmp_path))
    with pytest.raises(CorpusError, match="offline"):
        load_corpus("someone-xyz/no-such-corpus")
    (tmp_path / "unfinished" / cf.BUILD_DIR).mkdir(parents=True)
    with pytest.raises(CorpusError, match="unfinished build"):
        load_corpus(str(tmp_path / "unfinished"))


def test_hub_id_goes_through_snapshot_download(monkeypatch, corpus_dir):
    import huggingface_hub

    from exbert_hub.corpus import load_corpus

    asked = {}

    def fake_snapshot_download(repo_id, repo_type=None, revision=None, **kw):
        asked.update(repo_id=repo_id, repo_type=repo_type, revision=revision)
        return str(corpus_dir)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    corpus = load_corpus("user/minilm-python-docs", model=MINILM)
    assert asked == {"repo_id": "user/minilm-python-docs", "repo_type": "dataset", "revision": None}
    assert corpus.num_sentences == 120
