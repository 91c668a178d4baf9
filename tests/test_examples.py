"""exbert_hub.examples: load_examples (sources, columns, spans, errors) and analyze_examples (real numbers)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from tolerances import f32_close

import exbert_hub
from exbert_hub import InputError, analyze_examples, load_examples
from exbert_hub.analyses import heads

FIXTURES = Path(__file__).parent / "fixtures" / "examples"
WINOGRAD = FIXTURES / "winograd.jsonl"
ASPECTS = FIXTURES / "aspects.jsonl"


# --- load_examples ------------------------------------------------------------------------------
def test_winograd_fixture_spans_are_the_words():
    ex = load_examples(WINOGRAD, labels=["label", "schema"], spans=["pronoun", "candidate"])
    assert len(ex) == 32 and ex.span_names == ["pronoun", "candidate"]
    first = ex.texts[0]
    s, e = ex.spans["pronoun"][0]
    assert first[s:e] == "it"
    assert [ex.texts[i][slice(*ex.spans["candidate"][i])] for i in (0, 1)] == ["trophy", "suitcase"]
    assert ex.labels["label"][:2] == ["referent", "other"] and ex.labels["schema"][:3] == [0, 0, 0]


def test_sources_give_the_same_set(tmp_path):
    rows = [json.loads(line) for line in WINOGRAD.read_text().splitlines()]
    a = load_examples(WINOGRAD, labels=["label"], spans=["pronoun", "candidate"])
    b = load_examples(rows, labels=["label"], spans=["pronoun", "candidate"])
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "w.parquet")
    c = load_examples(str(tmp_path / "w.parquet"), labels=["label"], spans=["pronoun", "candidate"])
    import csv

    with open(tmp_path / "w.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        for r in rows:
            w.writerow({k: json.dumps(v) if isinstance(v, list) else v for k, v in r.items()})
    d = load_examples(tmp_path / "w.csv", labels=["label"], spans=["pronoun", "candidate"])
    assert a.fingerprint == b.fingerprint == c.fingerprint == d.fingerprint
    assert a.source == "winograd.jsonl" and str(tmp_path) not in d.source
    strings = load_examples(["one sentence.", "two sentences here."])
    assert strings.texts == ["one sentence.", "two sentences here."] and strings.labels == {}
    assert load_examples(["x y"]).fingerprint != load_examples(["x z"]).fingerprint


def test_span_forms():
    text = "The trophy did not fit into the suitcase because it was too big."
    rows = [{"text": text, "s": v} for v in ([4, 10], {"start": 4, "end": 10}, {"words": [1]}, 1, "trophy",
                                               {"words": [1, 3]}, {"text": "the", "occurrence": 0})]
    ex = load_examples(rows, spans=["s"])
    got = [text[s:e] for s, e in ex.spans["s"]]
    assert got == ["trophy", "trophy", "trophy", "trophy", "trophy", "trophy did not", "the"]


@pytest.mark.parametrize("kwargs, message", [
    (dict(labels=["gold"]), "the column 'gold' is not in"),
    (dict(spans=["pronoun"], text="sentence"), "its columns are: text, pronoun"),
    (dict(labels="label"), "labels must be a list"),
    (dict(limit=10), "has more than limit=10 examples: take fewer rows or raise limit"),
    (dict(limit=0), "limit must be a whole number"),
])
def test_errors_are_one_line(kwargs, message):
    with pytest.raises(InputError) as err:
        load_examples(WINOGRAD, **kwargs)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_bad_values_are_named():
    with pytest.raises(InputError, match=r"example 0, span 's': characters 3 to 99 are outside the text \(5 characters\)"):
        load_examples([{"text": "hello", "s": [3, 99]}], spans=["s"])
    with pytest.raises(InputError, match="word 7 is outside the text"):
        load_examples([{"text": "hello world", "s": {"words": [7]}}], spans=["s"])
    with pytest.raises(InputError, match="'dog' is not in the text"):
        load_examples([{"text": "hello world", "s": "dog"}], spans=["s"])
    with pytest.raises(InputError, match="the 'text' column must be text, got int"):
        load_examples([{"text": 3}])
    with pytest.raises(InputError, match="the 'text' column is empty"):
        load_examples([{"text": "  "}])
    with pytest.raises(InputError, match="has no examples"):
        load_examples([])
    with pytest.raises(InputError, match="label column 'l' holds a list"):
        load_examples([{"text": "a", "l": [1]}], labels=["l"])
    with pytest.raises(InputError, match="was not found"):
        load_examples("no/such/file.jsonl")
    with pytest.raises(InputError, match="not a dict"):
        load_examples({"text": "a"})


def test_a_built_corpus_is_a_source(tiny, tmp_path):
    from corpus_builder import build
    from exbert_hub.corpus import load_corpus

    model = str(tiny("bert"))
    build(model, "builtin:python-docs", str(tmp_path / "corpus"), max_sentences=12, workers=0, progress=False)
    corpus = load_corpus(str(tmp_path / "corpus"), model=model)
    ex = load_examples(corpus)
    assert ex.texts == [corpus.sentence(i) for i in range(corpus.num_sentences)] and len(ex) == 12
    assert str(tmp_path) not in ex.source
    with pytest.raises(InputError, match="has 12, more than limit=5 examples"):
        load_examples(corpus, limit=5)


def test_hub_dataset_offline_is_one_line():
    with pytest.raises(InputError) as err:
        load_examples("someone-who-does-not-exist/no-such-dataset", split="validation[:10]")
    msg = str(err.value)
    assert msg.startswith("could not load the dataset 'someone-who-does-not-exist/no-such-dataset'") and "\n" not in msg
    with pytest.raises(InputError, match="neither a Hub dataset id nor a"):
        load_examples("../etc/passwd")


# --- analyze_examples on the real MiniLM ---------------------------------------------------------
@pytest.fixture(scope="module")
def minilm():
    return exbert_hub.load("sentence-transformers/all-MiniLM-L6-v2")


@pytest.fixture(scope="module")
def winograd_result(minilm, tmp_path_factory):
    ex = load_examples(WINOGRAD, labels=["label", "schema"], spans=["pronoun", "candidate"])
    return analyze_examples(minilm, ex, progress=False, cache_dir=tmp_path_factory.mktemp("ex-cache"), batch_tokens=256)


def test_hidden_states_and_statistics_equal_engine_analyze(minilm, winograd_result):
    r = winograd_result
    cfg = minilm.config
    L = minilm.num_layers
    assert r.hidden.shape == (L + 1, r.num_rows, cfg.hidden_size)
    assert r.num_rows == sum(len(t) for t in r.tokens)  # track="all": every token
    for e in (0, 5, 31):
        a = minilm.analyze(r.examples.texts[e])
        rows = r.rows_of(e)
        assert r.tokens[e] == a.tokens and r.row_token[rows].tolist() == list(range(len(a.tokens)))
        f32_close(r.hidden[:, rows], a.hidden_states, cfg.intermediate_size, L)
        want = heads.head_statistics(a.attentions, a.special)
        for name in ("std", "entropy", "std_words", "to_special", "to_previous", "to_self"):
            f32_close(r.head_stats[name][e], want[name], cfg.intermediate_size, L, err_msg=name)
        # span intensity straight from the matrix: pronoun "it" -> candidate tokens
        p = r.span_rows("pronoun", e)
        c = r.span_rows("candidate", e)
        pt, ct = r.row_token[p], r.row_token[c]
        assert [a.display_tokens[i] for i in pt] in (["it"], ["they"], ["she"], ["he"])
        f32_close(r.head_stats["span_a_to_b"][e], a.attentions[..., pt, :][..., ct].max(axis=(-1, -2)),
                  cfg.intermediate_size, L)
        np.testing.assert_allclose(r.attention(e, 2, 7), a.attentions[2, 7])


def test_spacy_annotations_and_grammar_correlation(winograd_result):
    r = winograd_result
    rows = r.rows_of(0)
    words = [(r.tokens[0][r.row_token[i]], r.pos[i], r.dep[i]) for i in rows]
    assert words[0] == ("[CLS]", "", "") and ("trophy", "NOUN", "nsubj") in words and ("fit", "VERB", "ROOT") in words
    g = r.head_stats["grammar_directed"]
    assert g.shape == (32, 6, 12) and np.isfinite(g).all() and (np.abs(g) <= 1).all()


def test_summary_distances_and_cache(minilm, winograd_result):
    r = winograd_result
    sel = [0, 3, 4]
    np.testing.assert_allclose(r.head_summary("std", sel), r.head_stats["std"][sel].mean(axis=0), rtol=1e-6)
    d = r.span_distances("cosine", group_by="label")
    assert set(d) == {"referent", "other"} and d["other"].shape == (7,)
    vals = r.span_distance_values("euclidean")
    a = r.hidden[:, r.span_rows(0, 1)].mean(axis=1)
    b = r.hidden[:, r.span_rows(1, 1)].mean(axis=1)
    f32_close(vals[:, 1], np.linalg.norm(a - b, axis=-1), 384)
    t0 = time.perf_counter()
    again = analyze_examples(minilm, r.examples, progress=False, cache_dir=r.cache_path.parent)
    reopened = time.perf_counter() - t0
    assert again.from_cache and not r.from_cache and reopened < 1.0  # no forward pass, no spaCy
    np.testing.assert_array_equal(np.asarray(again.hidden), r.hidden)
    for k in r.head_stats:
        np.testing.assert_array_equal(again.head_stats[k], r.head_stats[k])
    assert again.pos == r.pos and again.tokens == r.tokens
    np.testing.assert_array_equal(again.attention(3, 1, 1), r.attention(3, 1, 1))
    p = r.projection("pca")
    assert p.shape == (7, r.num_rows, 2)
    np.testing.assert_array_equal(again.projection("pca"), p)  # read from the projection file
    assert any(f.name.startswith("projection-") for f in r.cache_path.iterdir())


def test_track_spans_keeps_only_span_tokens(minilm):
    ex = load_examples(ASPECTS, labels=["domain", "sentiment"], spans=["aspect"])
    r = analyze_examples(minilm, ex, track="spans", progress=False)
    for e in range(len(ex)):  # the word pieces of each aspect word, and nothing else
        pieces = "".join(r.tokens[e][t].removeprefix("##") for t in r.row_token[r.rows_of(e)])
        assert pieces == ex.texts[e][slice(*ex.spans["aspect"][e])].lower()
    assert r.num_rows > len(ex)  # "trackpad", "webcam"... are several pieces
    full = analyze_examples(minilm, ex, track="all", progress=False)
    rows = full.span_rows("aspect")
    np.testing.assert_allclose(r.hidden, full.hidden[:, rows])
    assert r.nbytes < full.nbytes


# --- predictions ---------------------------------------------------------------------------------
def test_sequence_classifier_predictions_equal_engine_analyze(tiny_engine):
    engine = tiny_engine("bert-seqcls")
    ex = load_examples(ASPECTS, labels=["sentiment"], spans=["aspect"])
    r = analyze_examples(engine, ex, progress=False, batch_tokens=64, spacy=None)
    assert r.class_labels == ["negative", "neutral", "positive"]
    for e in (0, 7, 19):
        a = engine.analyze(ex.texts[e])
        assert r.prediction[e] == a.classification.predicted
        f32_close(r.probabilities[e], a.classification.probabilities, 37, 2)
        assert r.probability[e] == pytest.approx(a.classification.probabilities.max(), rel=1e-5)
    ok = r.correct("sentiment")
    assert ok == [p == g for p, g in zip(r.prediction, ex.labels["sentiment"])]
    assert np.isnan(r.head_stats["grammar_directed"]).all()  # spacy=None


def test_causal_classifier_pools_the_last_real_token_in_padded_batches(tiny_engine):
    engine = tiny_engine("llama-seqcls")
    ex = load_examples(ASPECTS, labels=["sentiment"])
    r = analyze_examples(engine, ex, progress=False, spacy=None)
    for e in (0, 4, 12):
        f32_close(r.probabilities[e], engine.analyze(ex.texts[e]).classification.probabilities, 37, 2)


def test_token_classifier_and_lm_predictions(tiny_engine):
    engine = tiny_engine("bert-tokcls")
    ex = load_examples(ASPECTS, spans=["aspect"])
    r = analyze_examples(engine, ex, progress=False, spacy=None)
    a = engine.analyze(ex.texts[2])
    rows = r.rows_of(2)
    assert [r.token_prediction[i] for i in rows] == a.classification.predicted
    lm = tiny_engine("gpt2")
    r = analyze_examples(lm, ex, progress=False, spacy=None)
    a = lm.analyze(ex.texts[1])
    rows = r.rows_of(1)
    assert [r.token_prediction[i] for i in rows] == [p[0][0] for p in a.predictions]
    f32_close(r.token_probability[rows], [p[0][1] for p in a.predictions], 37, 2)


def test_analyze_examples_errors(minilm):
    ex = load_examples(["a b c"])
    with pytest.raises(InputError, match="track must be one of all, spans"):
        analyze_examples(minilm, ex, track="some", progress=False)
    with pytest.raises(InputError, match="track='spans' needs span columns"):
        analyze_examples(minilm, ex, track="spans", progress=False)
    with pytest.raises(InputError, match="must be an ExampleSet"):
        analyze_examples(minilm, ["a"], progress=False)
    r = analyze_examples(minilm, ex, progress=False, spacy=None)
    with pytest.raises(InputError, match="distances need two span columns"):
        r.span_distances()
    with pytest.raises(InputError, match="example 5 is out of range"):
        r.attention(5, 0, 0)
    with pytest.raises(InputError, match="unknown head statistic"):
        r.head_summary("nope")
