"""Two models in the Layers view: tokens of different tokenizers aligned by word through their character
offsets (against a mapping written by hand and a naive re-implementation), and layers matched by
relative depth."""

from __future__ import annotations

import re

import numpy as np
import pytest

from exbert_hub.examples import analyze_examples, load_examples
from exbert_hub.tabs.layers import layers_data
from exbert_hub.views.layers_view import (
    align_points,
    decode_coords,
    example_text,
    layers_payload,
    matched_layer,
    token_words,
)

SENTENCE = "The unhappiness of cats, isn't it?"


@pytest.fixture(scope="module")
def two(tiny_engine):
    """LayersData of the tiny BERT (WordPiece) and the tiny RoBERTa (byte-level BPE) on the same lines."""
    lines = [SENTENCE, "Unbelievable  results:   co-operation wins.", "A dog ran."]
    ex = load_examples(lines)
    ra = analyze_examples(tiny_engine("bert"), ex, progress=False, spacy=None)
    rb = analyze_examples(tiny_engine("roberta"), ex, progress=False, spacy=None)
    return layers_data([ra, rb])


def aligned_texts(data, i: int) -> list[str]:
    indptr, indices = align_points(data, 0, 1)
    return [data.models[1].points.text[j] for j in indices[indptr[i]:indptr[i + 1]]]


def test_token_words_by_hand():
    text = "Hi there, you."
    # words: Hi(0-2) there(3-8) ,(8-9) you(10-13) .(13-14)
    offs = np.asarray([[0, 2], [2, 3], [3, 5], [5, 9], [9, 10], [10, 14], [4, 4]])
    assert token_words(text, offs).tolist() == [[0, 0], [0, -1], [1, 1], [1, 2], [0, -1], [3, 4], [0, -1]]


def test_different_tokenizers_align_by_word_as_written_by_hand(two):
    a, b = two.models[0].points, two.models[1].points
    first_a = [t for t, e in zip(a.text, a.example) if e == 0]
    first_b = [t for t, e in zip(b.text, b.example) if e == 0]
    # the two tokenizations differ (WordPiece vs byte-level BPE; points show the text they cover)
    assert first_a == ["The", "un", "ha", "pp", "iness", "of", "cats", ",", "isn", "'", "t", "it", "?"]
    assert first_b == ["The", "un", "ha", "pp", "ine", "ss", "of", "c", "at", "s", ",", "is", "n", "'", "t", "it", "?"]
    want = {  # token of A -> tokens of B covering the same words
        "The": ["The"], "un": ["un", "ha", "pp", "ine", "ss"], "ha": ["un", "ha", "pp", "ine", "ss"],
        "pp": ["un", "ha", "pp", "ine", "ss"], "iness": ["un", "ha", "pp", "ine", "ss"], "of": ["of"],
        "cats": ["c", "at", "s"], ",": [","], "isn": ["is", "n"], "'": ["'"], "t": ["t"], "it": ["it"], "?": ["?"],
    }
    for i, tok in enumerate(first_a):
        assert aligned_texts(two, i) == want[tok], tok
    # and back: every BPE piece of "cats" finds the one WordPiece token
    indptr, indices = align_points(two, 1, 0)
    for j, tok in enumerate(first_b):
        if tok in ("c", "at", "s"):
            assert [a.text[i] for i in indices[indptr[j]:indptr[j + 1]]] == ["cats"]


def naive_alignment(data, source: int, target: int) -> list[list[int]]:
    """For every pair of points of one example: the sets of word indices (character by character) meet."""
    def words_of(points, i):
        text = example_text(data, int(points.example[i]))
        s, f = (int(v) for v in points.offsets[i])
        return {k for k, m in enumerate(re.finditer(r"\w+|[^\w\s]", text)) if set(range(*m.span())) & set(range(s, f))}

    a, b = data.models[source].points, data.models[target].points
    wb = [words_of(b, j) for j in range(len(b))]
    out = []
    for i in range(len(a)):
        wa = words_of(a, i)
        out.append([j for j in range(len(b)) if b.example[j] == a.example[i] and wa & wb[j]])
    return out


def test_alignment_matches_a_naive_reimplementation(two):
    for s, t in ((0, 1), (1, 0)):
        indptr, indices = align_points(two, s, t)
        got = [indices[indptr[i]:indptr[i + 1]].tolist() for i in range(len(indptr) - 1)]
        assert got == naive_alignment(two, s, t)
        pts = two.models[s].points
        # every token that covers a character other than whitespace has a partner; the BPE's tokens of the
        # extra spaces (empty after trimming) have none
        covers = [bool(example_text(two, int(e))[o0:o1].strip()) for e, (o0, o1) in zip(pts.example, pts.offsets)]
        assert [len(g) > 0 for g in got] == covers
        assert all(covers) if s == 0 else not all(covers)


def test_alignment_of_sentence_pairs_uses_the_pair_offsets(tiny_engine):
    ex = load_examples([{"text": "Cats sleep.", "pair": "Unhappy dogs bark."}], pair="pair")
    data = layers_data([analyze_examples(tiny_engine("bert"), ex, progress=False, spacy=None),
                        analyze_examples(tiny_engine("roberta"), ex, progress=False, spacy=None)])
    indptr, indices = align_points(data, 0, 1)
    got = [indices[indptr[i]:indptr[i + 1]].tolist() for i in range(len(indptr) - 1)]
    assert got == naive_alignment(data, 0, 1)
    a, b = data.models[0].points, data.models[1].points
    i = a.text.index("dogs")
    js = indices[indptr[i]:indptr[i + 1]]
    # B's pieces of "dogs" in sentence B (offsets past "Cats sleep." + "\n"), none of sentence A
    assert "".join(b.text[j] for j in js) == "dogs" and all(int(b.offsets[j][0]) > len("Cats sleep.") for j in js)
    i = a.text.index("Cats")
    assert "".join(b.text[j] for j in indices[indptr[i]:indptr[i + 1]]) == "Cats"


def test_payload_carries_the_alignment_both_ways(two):
    p = layers_payload(two)
    import base64

    for s in (0, 1):
        indptr, indices = align_points(two, s, 1 - s)
        got_ptr = np.frombuffer(base64.b64decode(p["models"][s]["align"]["indptr"]), dtype="<u4")
        got_idx = np.frombuffer(base64.b64decode(p["models"][s]["align"]["indices"]), dtype="<u4")
        assert got_ptr.tolist() == indptr.tolist() and got_idx.tolist() == indices.tolist()
    # the table and distances stay per example: one row per example, both models' coordinates drawn
    assert p["examples"]["n"] == 3
    assert decode_coords(p["models"][1]["coords"]["0"]).shape == (len(two.models[1].points), 2)


def test_one_model_has_no_alignment(tiny_engine):
    ex = load_examples(["A dog ran."])
    data = layers_data([analyze_examples(tiny_engine("bert"), ex, progress=False, spacy=None)])
    assert "align" not in layers_payload(data)["models"][0]


def test_layers_match_by_relative_depth():
    # 6 layers (7 hidden states) against 2 layers (3): round(l * 2 / 6), halves up
    assert [matched_layer(l, 7, 3) for l in range(7)] == [0, 0, 1, 1, 1, 2, 2]
    assert [matched_layer(l, 3, 7) for l in range(3)] == [0, 3, 6]
    assert [matched_layer(l, 5, 3) for l in range(5)] == [0, 1, 1, 2, 2]  # 1 * 2 / 4 = 0.5 -> 1
    assert [matched_layer(l, 4, 4) for l in range(4)] == [0, 1, 2, 3]
    for sa, sb in ((7, 3), (3, 7), (13, 7), (2, 2)):
        assert matched_layer(0, sa, sb) == 0 and matched_layer(sa - 1, sa, sb) == sb - 1
