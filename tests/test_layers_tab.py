"""Layers view: its payload, encodings and the numbers it shows, against numpy.

``synthetic(...)`` builds a LayersData from random numbers (and, when given an engine, real token lists
and an ``analyze`` that re-runs one example): the browser tests and the browser benchmark use it too.
"""

from __future__ import annotations

import base64

import numpy as np
import pytest

from exbert_hub.errors import InputError
from exbert_hub.views.head_view import decode_float32
from exbert_hub.views.layers_view import (
    LayersData,
    LayersStore,
    LayersView,
    ModelLayers,
    PointSet,
    decode_coords,
    distance_groups,
    encode_categories,
    encode_coords,
    head_payload,
    head_summary,
    layers_payload,
    plotly_js,
)

WORDS = ("the cat dog sat on a mat bank river money deposit loan fish ran quickly over under near red big "
         "small bird tree house").split()
POS = ("DET", "NOUN", "VERB", "ADP", "ADJ")


def synthetic(n_examples: int = 40, *, tokens: int = 8, layers: int = 2, heads: int = 4, seed: int = 0,
              engine=None, name: str = "random-model", two: bool = False, lazy: bool = False) -> LayersData:
    """A LayersData of random numbers: labels "yes"/"no", domains, spans A/B, predictions and stats.

    With ``engine`` the texts are tokenized by it (points = its non-special tokens) and heads open
    through ``engine.analyze``; without, every example has ``tokens`` whitespace words.
    ``lazy``: coordinates computed per layer by a callable (as projections are)."""
    rng = np.random.default_rng(seed)
    texts = [" ".join(rng.choice(WORDS, size=tokens)) for _ in range(n_examples)]
    gold = [("yes", "no")[int(rng.integers(2))] for _ in range(n_examples)]
    domain = [("news", "reviews", "forum")[i % 3] for i in range(n_examples)]

    def points_for(eng) -> PointSet:
        ex, tok, text, offs, pos, span = [], [], [], [], [], []
        for e, t in enumerate(texts):
            if eng is None:
                starts, pos_ = [], 0
                words = t.split(" ")
                for w in words:
                    starts.append((pos_, pos_ + len(w)))
                    pos_ += len(w) + 1
                items = [(i, w, s) for i, (w, s) in enumerate(zip(words, starts))]
            else:
                a = eng.analyze(t)
                items = [(i, t[o0:o1], (int(o0), int(o1))) for i, ((o0, o1), sp) in
                         enumerate(zip(a.offsets, a.special)) if not sp]
            for k, (i, w, (s0, s1)) in enumerate(items):
                ex.append(e); tok.append(i); text.append(w); offs.append((s0, s1))
                pos.append(POS[int(rng.integers(len(POS)))])
                span.append("A" if k == 0 else ("B" if k == len(items) - 1 else ""))
        return PointSet(np.asarray(ex), np.asarray(tok), text, np.asarray(offs, dtype=np.int64).reshape(-1, 2),
                        {"POS": pos, "span": span})

    def model(mname: str, eng, nl: int, nh: int, mseed: int) -> ModelLayers:
        r = np.random.default_rng(mseed)
        pts = points_for(eng)
        base = r.normal(size=(len(pts), 2)).astype(np.float32)
        drift = r.normal(size=(nl + 1, len(pts), 2)).astype(np.float32) * 0.3
        coords = np.cumsum(drift, axis=0) + base  # points move a little from layer to layer (aligned)
        stats = {"std": r.random((n_examples, nl, nh), dtype=np.float32) * 0.1,
                 "entropy": r.random((n_examples, nl, nh), dtype=np.float32) * 3,
                 "span A->B": r.random((n_examples, nl, nh), dtype=np.float32)}
        dist = {"cosine": r.random((n_examples, nl + 1), dtype=np.float32),
                "euclidean": r.random((n_examples, nl + 1), dtype=np.float32) * 10}
        preds = [g if r.random() < 0.7 else ("no" if g == "yes" else "yes") for g in gold]
        probs = 0.5 + 0.5 * r.random(n_examples)
        analyze = None if eng is None else (lambda e: eng.analyze(texts[e]))
        return ModelLayers(mname, nl, nh, pts, (lambda layer: coords[layer]) if lazy else coords, stats, dist,
                           preds, probs, analyze)

    models = [model(name, engine, layers, heads, seed + 1)]
    if two:
        models.append(model(name + "-b", engine, layers, heads, seed + 2))
    return LayersData(texts, models, {"label": gold, "domain": domain}, gold="label")


# --------------------------------------------------------------------------------------------------
def test_coords_round_trip_within_a_step():
    xy = np.random.default_rng(1).normal(size=(5000, 2)).astype(np.float32) * 30
    p = encode_coords(xy)
    back = decode_coords(p)
    step = (xy.max(axis=0) - xy.min(axis=0)) / 65535
    assert np.all(np.abs(back - xy) <= step * 0.5 + 1e-5 * np.abs(xy).max())
    assert len(base64.b64decode(p["b64"])) == 5000 * 2 * 2  # two bytes per coordinate


def test_categories_by_frequency_and_other():
    c = encode_categories(["b", "a", "b", None, "c"])
    assert c["categories"] == ["b", "", "a", "c"]
    assert list(np.frombuffer(base64.b64decode(c["codes"]), dtype=np.uint8)) == [0, 2, 0, 1, 3]
    many = encode_categories([f"v{i}" for i in range(100)] + ["v1"])
    names = many["categories"]
    assert len(names) == 23 and names[0] == "v1" and names[-1] == "other"
    codes = np.frombuffer(base64.b64decode(many["codes"]), dtype=np.uint8)
    assert names[codes[99]] == "other" and names[codes[100]] == "v1"


def test_head_summary_is_the_mean_over_exactly_the_selection():
    data = synthetic(30, two=True)
    sel = [3, 7, 7, 21]
    want = data.models[0].head_stats["entropy"][[3, 7, 21]].astype(np.float64).mean(axis=0)
    got = head_summary(data, "entropy", sel)
    assert got.shape == (2, 4)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    np.testing.assert_allclose(head_summary(data, "std"), data.models[0].head_stats["std"].mean(axis=0), rtol=1e-6)
    diff = head_summary(data, "std", sel, model="diff")
    np.testing.assert_allclose(diff, head_summary(data, "std", sel, model=0) - head_summary(data, "std", sel, model=1), rtol=1e-6)
    with pytest.raises(InputError, match="statistic 'nope'"):
        head_summary(data, "nope")
    with pytest.raises(InputError, match="examples must be indices"):
        head_summary(data, "std", [30])


def test_head_summary_leaves_nan_examples_out():
    data = synthetic(6)
    st = data.models[0].head_stats["span A->B"]
    st[2] = np.nan
    np.testing.assert_allclose(head_summary(data, "span A->B"), st[[0, 1, 3, 4, 5]].mean(axis=0), rtol=1e-6)


def test_distance_groups_and_difference():
    data = synthetic(20)
    d = data.models[0].distances["cosine"]
    gold = np.asarray(data.columns["label"])
    sel = list(range(0, 20, 2))
    out = distance_groups(data, "cosine", sel)
    for g in ("no", "yes"):
        rows = [i for i in sel if gold[i] == g]
        np.testing.assert_allclose(out[g], d[rows].mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(out["difference"], out["no"] - out["yes"], rtol=1e-6)
    three = distance_groups(data, "euclidean", group_by="domain")
    assert set(three) == {"news", "reviews", "forum"}  # no difference line for three groups
    with pytest.raises(InputError, match="group_by 'x'"):
        distance_groups(data, "cosine", group_by="x")


def test_payload_is_compact_and_complete():
    data = synthetic(50, layers=3)
    p = layers_payload(data, key=None)
    m = p["models"][0]
    n_points = len(data.models[0].points)
    assert p["layer"] == 3 and p["statistic"] == "std" and p["color"] == "label"
    assert sorted(m["coords"]) == ["0", "1", "2", "3"]  # no key: every layer is sent
    back = decode_coords(m["coords"]["2"])
    np.testing.assert_allclose(back, data.models[0].coords[2], atol=float(np.ptp(data.models[0].coords[2])) / 65535)
    assert set(m["points"]["colors"]) == {"label", "domain", "POS", "span", "prediction", "correct"}
    stat = decode_float32(m["stats"]["entropy"])
    np.testing.assert_array_equal(stat, data.models[0].head_stats["entropy"])
    correct = data.correct(0)
    codes = np.frombuffer(base64.b64decode(m["points"]["colors"]["correct"]["codes"]), dtype=np.uint8)
    names = m["points"]["colors"]["correct"]["categories"]
    ex = data.models[0].points.example
    assert [names[c] for c in codes] == ["correct" if correct[e] else "wrong" for e in ex]
    # with a key, one layer and one statistic go at first when all layers exceed prefetch_bytes
    lazy = layers_payload(data, key="k", layer=1, statistic="entropy", prefetch_bytes=n_points * 4)
    assert list(lazy["models"][0]["coords"]) == ["1"] and list(lazy["models"][0]["stats"]) == ["entropy"]
    import json

    size = len(json.dumps(lazy))
    assert size < 30_000, size


def test_payload_checks_its_arguments():
    data = synthetic(5)
    with pytest.raises(InputError, match="layer 9 is out of range"):
        layers_payload(data, layer=9)
    with pytest.raises(InputError, match="statistic 'x'"):
        layers_payload(data, statistic="x")
    with pytest.raises(InputError, match="example 5 is out of range"):
        layers_payload(data, example=5)
    with pytest.raises(InputError, match="column 'label' has 2 values"):
        LayersData(data.texts, data.models, {"label": ["a", "b"]})


def test_lazy_projection_is_computed_once_per_layer():
    calls = []
    data = synthetic(8, lazy=True)
    f = data.models[0].coords
    data.models[0].coords = lambda layer: (calls.append(layer), f(layer))[1]
    data.models[0].layer_coords(1)
    data.models[0].layer_coords(1)
    assert calls == [1]


def test_server_functions_answer_with_one_line_errors():
    store = LayersStore()
    view = LayersView(store=store)
    data = synthetic(10, layers=2)
    p = view.payload(data, layer=0, prefetch_bytes=0)
    fns = {f.__name__: f for f in view.server_fns}
    res = fns["layers_coords"]({"key": p["key"], "model": 0, "layer": 2})
    np.testing.assert_allclose(decode_coords(res["coords"]), data.models[0].coords[2], atol=float(np.ptp(data.models[0].coords[2])) / 65535)
    assert "out of range" in fns["layers_coords"]({"key": p["key"], "model": 0, "layer": 7})["error"]
    assert "run it again" in fns["layers_stat"]({"key": "nope", "statistic": "std"})["error"]
    res = fns["layers_stat"]({"key": p["key"], "model": 0, "statistic": "entropy"})
    np.testing.assert_array_equal(decode_float32(res["stat"]), data.models[0].head_stats["entropy"])
    assert "cannot open heads" in fns["layers_head"]({"key": p["key"], "example": 0, "layer": 0, "head": 0})["error"]
    js = fns["layers_plotly"](None)
    assert js["js"] == plotly_js() and len(js["js"]) > 1_000_000


def test_head_payload_is_the_engines_attention(tiny_engine):
    eng = tiny_engine("bert")
    data = synthetic(6, engine=eng, layers=eng.num_layers if hasattr(eng, "num_layers") else 2)
    m = data.models[0]
    p = head_payload(data, 0, 3, 1, 2)
    want = eng.analyze(data.texts[3]).attentions[1, 2]
    np.testing.assert_array_equal(decode_float32(p["attention"]), want)
    assert p["sequences"]["input"]["tokens"][0] == "[CLS]"
    with pytest.raises(InputError, match="out of range"):
        head_payload(data, 0, 3, m.num_layers, 0)
