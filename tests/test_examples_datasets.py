"""load_examples from Hub datasets (offline: datasets.load_dataset on a local folder stands in for the Hub)
read no more than limit + 1 rows; spans in the pair ("pair:<column>" or {"pair": true, ...})."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import numpy as np
import pytest

import exbert_hub
from exbert_hub import InputError, analyze_examples, load_examples

WINOGRAD = Path(__file__).parent / "fixtures" / "examples" / "winograd.jsonl"
ROWS = [json.loads(line) for line in WINOGRAD.read_text().splitlines()]


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """'team/winograd' -> a local folder of three .jsonl files (the fixture's 32 rows), through the real
    datasets.load_dataset; every call's arguments are recorded."""
    folder = tmp_path / "winograd"
    (folder / "data").mkdir(parents=True)
    for k, part in enumerate((ROWS[:10], ROWS[10:20], ROWS[20:])):
        (folder / "data" / f"train-{k}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    calls = []
    real = datasets.load_dataset

    def load(path, name=None, **kw):
        calls.append({"path": path, "name": name, **kw})
        return real(str(folder) if path == "team/winograd" else path, name, **kw)

    monkeypatch.setattr(datasets, "load_dataset", load)
    return calls


def test_hub_split_is_streamed_and_equals_the_file(hub):
    got = load_examples("team/winograd", labels=["label"], spans=["pronoun", "candidate"], limit=32)
    want = load_examples(WINOGRAD, labels=["label"], spans=["pronoun", "candidate"])
    assert got.fingerprint == want.fingerprint and len(got) == 32
    assert got.source == "team/winograd [train]"
    assert hub == [{"path": "team/winograd", "name": None, "split": "train", "streaming": True}]


def test_a_split_over_the_limit_is_refused_after_limit_plus_one_rows(monkeypatch):
    read = []

    def rows():
        for i in range(100_000):
            read.append(i)
            yield {"text": f"Sentence number {i} is here."}

    def load(path, name=None, split=None, streaming=False, **kw):
        assert streaming and split == "train"
        return datasets.IterableDataset.from_generator(rows)

    monkeypatch.setattr(datasets, "load_dataset", load)
    with pytest.raises(InputError, match=r"has more than limit=10 examples: take a part \(e\.g\. split='train\[:10\]'\)"):
        load_examples("team/big", limit=10)
    assert len(read) <= 11 + 1  # the iterator may look one row ahead; never the whole split
    read.clear()
    ex = load_examples("team/big", split="train[50:60]", limit=10)  # a row range: exactly those rows
    assert ex.texts == [f"Sentence number {i} is here." for i in range(50, 60)] and len(read) <= 61


def test_row_ranges_and_the_sliced_fallback(hub, monkeypatch):
    ex = load_examples("team/winograd", split="train[5:15]", limit=10)
    assert ex.texts == [r["text"] for r in ROWS[5:15]] and hub[-1]["split"] == "train"
    with pytest.raises(InputError, match="has more than limit=10"):
        load_examples("team/winograd", split="train[5:16]", limit=10)
    # a dataset that cannot stream: the split is loaded cut to limit + 1 rows
    real = datasets.load_dataset

    def no_stream(path, name=None, **kw):
        if kw.get("streaming"):
            hub.append({"path": path, "name": name, **kw})
            raise NotImplementedError("this dataset does not stream")
        return real(path, name, **kw)

    monkeypatch.setattr(datasets, "load_dataset", no_stream)
    with pytest.raises(InputError, match="has more than limit=10"):
        load_examples("team/winograd", limit=10)
    assert hub[-2:] == [{"path": "team/winograd", "name": None, "split": "train", "streaming": True},
                        {"path": "team/winograd", "name": None, "split": "train[0:11]"}]
    ex = load_examples("team/winograd", limit=40)
    assert len(ex) == 32 and hub[-1]["split"] == "train[0:41]"
    ex = load_examples("team/winograd", split="train[:50%]", limit=40)  # percentages: as given
    assert len(ex) == 16 and hub[-1]["split"] == "train[:50%]"


PAIRS = [
    {"text": "The trophy does not fit into the suitcase.", "pair": "Because it is too big.",
     "pronoun": {"pair": True, "text": "it"}, "candidate": "trophy", "cand2": "suitcase", "label": "trophy"},
    {"text": "Anna thanked Maria warmly.", "pair": "She had helped her a lot.",
     "pronoun": {"pair": True, "words": [0]}, "candidate": [0, 4], "cand2": "Maria", "label": "Maria"},
]


def test_spans_in_the_pair():
    ex = load_examples(PAIRS, pair="pair", labels=["label"], spans=["pronoun", "candidate"])
    assert ex.spans["pronoun"] == [(8, 10), (0, 3)] and ex.span_segments == {"pronoun": [1, 1]}
    assert [ex.pairs[e][slice(*ex.spans["pronoun"][e])] for e in (0, 1)] == ["it", "She"]
    assert ex.span_segment("candidate", 0) == 0 and ex.texts[1][slice(*ex.spans["candidate"][1])] == "Anna"
    # the column prefix: every span of the column is in the pair
    rows = [{**r, "in_pair": "is"} for r in PAIRS[:1]] + [{**r, "in_pair": "helped"} for r in PAIRS[1:]]
    col = load_examples(rows, pair="pair", spans=["pair:in_pair"])
    assert col.span_names == ["in_pair"] and col.span_segments == {"in_pair": [1, 1]}
    assert [col.pairs[e][slice(*col.spans["in_pair"][e])] for e in (0, 1)] == ["is", "helped"]
    # the same characters in the text are another set; rows round-trip
    flat = load_examples([{**r, "pronoun": [8, 10]} for r in PAIRS[:1]], pair="pair", spans=["pronoun"])
    again = load_examples(ex.to_rows(), pair="pair", labels=["label"], spans=["pronoun", "candidate"])
    assert flat.fingerprint != load_examples(PAIRS[:1], pair="pair", spans=["pronoun"]).fingerprint
    assert again.fingerprint == ex.fingerprint and again.span_segments == ex.span_segments
    plain = load_examples(WINOGRAD, spans=["pronoun"])
    assert plain.span_segments == {}  # no pair spans: nothing new in the fingerprint either


def test_pair_span_errors():
    with pytest.raises(InputError, match=r"example 0, span 'pronoun' \(in the pair\) is in the pair, but no pair column"):
        load_examples(PAIRS, spans=["pronoun"])
    with pytest.raises(InputError, match=r"span 'pronoun' \(in the pair\): 'them' is not in the text 'Because it is too big.'"):
        load_examples([{**PAIRS[0], "pronoun": {"pair": True, "text": "them"}}], pair="pair", spans=["pronoun"])
    with pytest.raises(InputError, match="the column 'nothing' is not in"):
        load_examples(PAIRS, pair="pair", spans=["pair:nothing"])
    with pytest.raises(InputError, match=r'"pair" must be true or false'):
        load_examples([{**PAIRS[0], "pronoun": {"pair": "yes", "text": "it"}}], pair="pair", spans=["pronoun"])


def test_pair_spans_mark_the_pair_tokens():
    engine = exbert_hub.load("sentence-transformers/all-MiniLM-L6-v2")
    ex = load_examples(PAIRS, pair="pair", labels=["label"], spans=["pronoun", "candidate"])
    r = analyze_examples(engine, ex, progress=False, spacy=None)
    for e in range(len(ex)):
        a, b = r.row_token[r.span_rows("pronoun", e)], r.row_token[r.span_rows("candidate", e)]
        assert [r.tokens[e][t] for t in a] == [["it"], ["she"]][e] and (r.segments[e][a] == 1).all()
        assert [r.tokens[e][t] for t in b] == [["trophy"], ["anna"]][e] and (r.segments[e][b] == 0).all()
    d = r.span_distance_values("cosine")  # span A in the pair, span B in the text: defined at every layer
    assert d.shape == (engine.num_layers + 1, 2) and np.isfinite(d).all()
    assert np.isfinite(r.head_stats["span_a_to_b"]).all()
