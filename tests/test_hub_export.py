"""exbert_hub.export and the standalone page: the numbers against the analysis, the page's content
and its bounds (no request possible, no script injection), bad input in one line."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

import exbert_hub
from exbert_hub.errors import InputError
from exbert_hub.hub.standalone import SERVER_FIELDS, ViewState, standalone_page, view_payload

TEXT = "The cat sat on the mat."


@pytest.fixture(scope="module")
def bert(tiny_engine):
    return tiny_engine("bert").analyze(TEXT)


@pytest.fixture(scope="module")
def t5(tiny_engine):
    return tiny_engine("t5").analyze("Translate this.", target="Das ist es.")


def test_npz_holds_the_numbers_the_head_view_shows(bert, tmp_path):
    path = exbert_hub.export(bert, "head", tmp_path / "h.npz", layer=1, heads=[0, 2], token=3)
    z = np.load(path)
    np.testing.assert_array_equal(z["attention"], bert.attentions[1])  # full precision, every head
    np.testing.assert_array_equal(z["heads"], [0, 2])
    np.testing.assert_allclose(z["selected_mean"], bert.attentions[1][[0, 2]].mean(axis=0), rtol=0, atol=1e-7)
    assert list(z["tokens"]) == list(bert.display_tokens)
    meta = json.loads(str(z["meta"]))
    assert meta["state"]["layer"] == 1 and meta["state"]["heads"] == [0, 2] and meta["state"]["token"] == 3
    assert meta["model"] == bert.model_name and meta["text"] == TEXT


def test_json_of_the_neuron_view_is_score_terms(bert, tmp_path):
    path = exbert_hub.export(bert, "neuron", tmp_path / "n.json", layer=1, heads=[3], token=2)
    d = json.loads(path.read_text())
    terms = bert.score_terms(1, 3, 2)
    assert (d["layer"], d["head"], d["token"]) == (1, 3, 2)
    np.testing.assert_array_equal(np.float32(d["query"]), terms["query"])
    np.testing.assert_array_equal(np.float32(d["products"]), terms["products"])
    np.testing.assert_array_equal(np.float32(d["softmax"]), terms["softmax"])
    # the recomputed softmax is the model's own attention row (float32 arithmetic, 9 keys)
    np.testing.assert_allclose(d["softmax"], bert.attentions[1, 3, 2], rtol=1e-5, atol=1e-6)


def test_model_view_numbers_cover_the_stack_of_an_encoder_decoder(t5, tmp_path):
    z = np.load(exbert_hub.export(t5, "model", tmp_path / "m.npz", stack="cross"))
    np.testing.assert_array_equal(z["attention"], t5.cross_attentions)
    assert list(z["tokens"]) == list(t5.decoder_input.display) and list(z["key_tokens"]) == list(t5.input.display)


def test_html_is_self_contained_and_keeps_the_state(bert, tmp_path):
    page = exbert_hub.export(bert, "explorer", tmp_path / "e.html", layer=1, heads=[1, 3], token=4,
                             threshold=0.5, hide_special=True).read_text()
    assert "Content-Security-Policy" in page and "default-src 'none'" in page
    # nothing is loaded from anywhere: no src=/href= URLs and no import/fetch of other files
    assert not re.search(r"""(src|href)\s*=\s*["'](https?:|//|file:)""", page)
    data = json.loads(re.search(r'<script type="application/json" id="[^"]+-data">(.*?)</script>', page, re.S).group(1))
    init = data["payload"]["initial"]
    assert init == {"layer": 1, "heads": [1, 3], "token": 4, "threshold": 0.5, "hide_special": True, "weights": None}
    assert {"0", "1"} <= set(data["payload"]["attention"])  # every layer inline: nothing to fetch
    assert data["payload"]["can_mask"] is False  # masking needs the model
    assert "window.exbertHub" in page and "window.exbertHubExport.mount" in page


def test_text_cannot_close_the_script_or_inject_markup(tiny_engine, tmp_path):
    a = tiny_engine("bert").analyze("a </script><img src=x onerror=alert(1)> b")
    page = standalone_page(a, "head", ViewState())
    assert "<img src=x" not in page and "</script><img" not in page

    class Tags(HTMLParser):  # how a browser splits the page: the text must stay inside the data script
        def __init__(self):
            super().__init__()
            self.tags = []

        def handle_starttag(self, tag, attrs):
            self.tags.append(tag)

    parsed = Tags()
    parsed.feed(page)
    assert "img" not in parsed.tags and parsed.tags.count("script") == 4  # common, export, data, mount


def test_local_server_answers_other_stacks_and_respects_the_budget(t5):
    payload, answers, _ = view_payload(t5, "head", ViewState(stack="encoder"))
    assert payload["key"] == "export" and set(payload["attention"]) == {"encoder"}
    keys = set(answers["head_view_layer"])
    assert keys == {f"{s}|{l}" for s in ("decoder", "cross") for l in range(2)}
    assert SERVER_FIELDS["head_view_layer"] == ("stack", "layer")
    _, none, _ = view_payload(t5, "head", ViewState(stack="encoder"), budget=0)
    assert none == {}
    _, neuron, _ = view_payload(t5, "neuron", ViewState(layer=1, heads=(2,)), budget=10**9)
    n = len(t5.input.tokens)
    assert len(neuron["neuron_view_terms"]) == 2 * 4 * n  # every layer, head and query token
    _, some, _ = view_payload(t5, "neuron", ViewState(layer=1, heads=(2,)), budget=12_000)
    assert f"encoder|1|2|0" in some["neuron_view_terms"]  # the exported head comes first
    assert len(some["neuron_view_terms"]) < 2 * 4 * n


@pytest.mark.parametrize("kwargs, words", [
    (dict(view="graph", path="x.html"), "unknown view 'graph'"),
    (dict(view="head", path="x.pdf"), "ending in .html"),
    (dict(view="head", path="x.html", layer=7), "layer 7 is out of range"),
    (dict(view="head", path="x.html", heads=[9]), "head 9 is out of range"),
    (dict(view="explorer", path="x.html", token=99), "token 99 is out of range"),
    (dict(view="explorer", path="x.html", threshold=2), "threshold 2.0 is out of range"),
    (dict(view="head", path="x.html", colour="red"), "unknown view state colour"),
])
def test_bad_input_is_one_line(bert, tmp_path, kwargs, words):
    kwargs["path"] = tmp_path / kwargs["path"]
    with pytest.raises(InputError) as err:
        exbert_hub.export(bert, **kwargs)
    assert words in str(err.value) and "\n" not in str(err.value)


def test_app_export_keeps_the_address_state(bert, tmp_path):
    from exbert_hub.hub.app_export import export_for, state_from_query
    from exbert_hub.views.head_view import AnalysisStore

    assert state_from_query("?layer=1&heads=0,3&token=2&threshold=0.5&hide=1", bert) == {
        "layer": 1, "token": 2, "heads": [0, 3], "threshold": 0.5, "hide_special": True}
    # out of range or not numbers: left out, never an error
    assert state_from_query("?layer=9&heads=1,x&token=-1&threshold=7", bert) == {}
    store = AnalysisStore()
    key = store.put(bert)
    path = export_for(store, key, "head", ".npz", "?layer=1&heads=2", folder=tmp_path)
    z = np.load(path)
    np.testing.assert_array_equal(z["attention"], bert.attentions[1])
    np.testing.assert_array_equal(z["heads"], [2])
    with pytest.raises(InputError, match="nothing to export yet"):
        export_for(store, "no-such-key", "head", ".html")
    with pytest.raises(InputError, match="export format"):
        export_for(store, key, "head", ".exe")


def test_png_export_works_where_an_asyncio_loop_runs(bert, tmp_path):
    """In a notebook the kernel's asyncio loop runs in the caller's thread; Playwright's sync API refuses
    to start there, so the export draws in a thread of its own."""
    import asyncio

    async def inside_a_loop():
        return exbert_hub.export(bert, "head", tmp_path / "in-loop.png", layer=1)

    # in a thread of its own: an earlier test of the session may leave a loop running in this one
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=1) as pool:
        path = pool.submit(asyncio.run, inside_a_loop()).result()
    assert Path(path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_explorer_export_keeps_the_chosen_stack(t5):
    payload, _, _ = view_payload(t5, "explorer", ViewState(stack="cross", layer=1))
    assert payload["stack"] == "cross"
    default, _, _ = view_payload(t5, "explorer", ViewState())
    assert default["stack"] == "encoder"
