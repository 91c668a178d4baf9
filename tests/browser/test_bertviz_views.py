"""Head, model and neuron views (BertViz-style gr.HTML components) driven in Debian Chromium.

A minimal gr.Blocks holds the three views; a textbox names which analysis to show (tiny BERT with a
sentence pair, tiny Llama with grouped-query attention, tiny T5, an XSS token, ~1,000 tokens) and a
button sends the three payloads. Screenshots of every view go to test-artifacts/views-*.png.
Uses the session fixtures ``tiny`` / ``tiny_engine`` (tests/conftest.py) and ``browser``
(tests/browser/conftest.py).
"""

from __future__ import annotations

import base64
import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from exbert_hub.views.head_view import CSR, AnalysisStore, decode_float32, decode_layer, encode_layer, head_view_payload
from exbert_hub.views.model_view import model_view_payload, pool_attention
from exbert_hub.views.neuron_view import neuron_view_payload
from exbert_hub.views.transport import decode_attention

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
XSS = "<img src=x onerror=alert(1)>"
LONG_TOKENS = 1000


# --------------------------------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------------------------------
def _sharp_long_bert(tiny, folder: Path) -> Path:
    """Tiny BERT with 1,100 positions and sharpened attention (q/k weights x 12) so lines show at 1k tokens."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    if (folder / "config.json").exists():
        return folder
    src = tiny("bert")
    cfg = BertConfig.from_pretrained(src)
    cfg.max_position_embeddings = 1100
    torch.manual_seed(1)
    model = BertForMaskedLM(cfg)
    with torch.no_grad():
        for layer in model.bert.encoder.layer:
            layer.attention.self.query.weight.mul_(12.0)
            layer.attention.self.key.weight.mul_(12.0)
    model.save_pretrained(folder)
    tok = AutoTokenizer.from_pretrained(src)
    tok.model_max_length = 1100
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def analyses(tiny, tiny_engine, tmp_path_factory):
    import exbert_hub
    from pydoc_data.topics import topics

    bert = tiny_engine("bert")
    out = {
        "pair": bert.analyze("The cat sat on the mat.", pair="A dog barked loudly."),
        "llama": tiny_engine("llama").analyze("The cat sat on the mat and looked at the dog."),
        "t5": tiny_engine("t5").analyze("The cat sat on the mat.", target="Le chat dort."),
    }
    out["lazy"] = out["pair"]
    out["budget"] = out["pair"]
    xss = bert.analyze(XSS + " and more")
    display = list(xss.input.display)
    display[1] = XSS  # one token whose whole text is the attack string
    out["xss"] = dataclasses.replace(xss, input=dataclasses.replace(xss.input, display=display))
    long_engine = exbert_hub.load(str(_sharp_long_bert(tiny, tmp_path_factory.mktemp("long") / "bert")))
    words = " ".join(topics["if"].split() * 20)
    ids = long_engine.tokenizer(words, add_special_tokens=False)["input_ids"][: LONG_TOKENS - 2]
    out["long"] = long_engine.analyze(long_engine.tokenizer.decode(ids))
    return out


@pytest.fixture(scope="module")
def views_app(analyses):
    import gradio as gr

    from exbert_hub.views.head_view import HeadView
    from exbert_hub.views.model_view import ModelView
    from exbert_hub.views.neuron_view import NeuronView

    store = AnalysisStore(max_items=16)
    with gr.Blocks(title="views test") as demo:
        with gr.Row():
            which = gr.Textbox(label="which", elem_id="which")
            show = gr.Button("Show", elem_id="show")
        hv = HeadView(elem_id="hv", store=store)
        mv = ModelView(elem_id="mv", store=store)
        nv = NeuronView(elem_id="nv", store=store)

        def payloads(name: str):
            a = analyses[name.strip()]
            hv_kwargs = {"lazy": {"prefetch_bytes": 0}, "budget": {"line_budget": 300}}.get(name.strip(), {})
            nv_kwargs = {"token": 3, "layer": 1, "head": 3} if name.strip() == "llama" else {}
            return hv.payload(a, **hv_kwargs), mv.payload(a), nv.payload(a, **nv_kwargs)

        show.click(payloads, which, [hv, mv, nv])
    demo.launch(prevent_thread_lock=True, quiet=True)
    yield SimpleNamespace(url=demo.local_url.rstrip("/") + "/", store=store)
    demo.close()


@pytest.fixture
def vpage(browser, views_app):
    context = browser.new_context(viewport={"width": 1300, "height": 1000})
    pg = context.new_page()
    pg.set_default_timeout(30_000)
    pg.dialogs, pg.errors = [], []
    pg.on("dialog", lambda d: (pg.dialogs.append(d.message), d.dismiss()))
    pg.on("pageerror", lambda e: pg.errors.append(str(e)))
    yield pg
    context.close()


def _open(pg, views_app, name: str, dark: bool = False) -> None:
    pg.goto(views_app.url + ("?__theme=dark" if dark else ""))
    pg.wait_for_selector(".xh-hv .xh-empty")
    pg.locator("#which textarea").fill(name)
    pg.locator("#show").click()
    pg.wait_for_function("() => ['.xh-hv', '.xh-mv', '.xh-nv'].every(s => document.querySelector(s).dataset.drawn)")


def _shot(pg, selector: str, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    pg.locator(selector).screenshot(path=str(ARTIFACTS / f"views-{name}.png"))


def _lines(pg) -> int:
    return int(pg.eval_on_selector(".xh-hv", "e => e.dataset.lines"))


def _wait_lines_change(pg, before: int) -> int:
    pg.wait_for_function(f"() => document.querySelector('.xh-hv').dataset.lines !== '{before}'")
    return _lines(pg)


def _bytes(payload: dict) -> np.ndarray:
    """The uint8 of a head-view layer payload (dense or CSR), as the browser expands them."""
    b64 = base64.b64decode
    if payload["encoding"] == CSR:
        h, nq, nk = payload["shape"]
        indptr = np.frombuffer(b64(payload["indptr"]), "<u4").astype(np.int64)
        q = np.zeros((h * nq, nk), np.uint8)
        q[np.repeat(np.arange(h * nq), np.diff(indptr)), np.frombuffer(b64(payload["indices"]), "<u2")] = \
            np.frombuffer(b64(payload["values"]), np.uint8)
        return q.reshape(h, nq, nk)
    return np.frombuffer(b64(payload["b64"]), dtype=np.uint8).reshape(payload["shape"])


def _weights(payload: dict) -> np.ndarray:
    """Weights exactly as the browser decodes them (float64 math, stored as float32 in the lookup table)."""
    q = _bytes(payload).astype(np.float64)
    w = payload["scale"] * (q / 255) * (q / 255)
    return w.astype(np.float32).astype(np.float64)


def _visible(w: np.ndarray) -> np.ndarray:
    return w * 255 >= 0.5


# --------------------------------------------------------------------------------------------------
# Python side: compact payloads
# --------------------------------------------------------------------------------------------------
def test_payloads_are_compact_and_typed(analyses):
    a = analyses["pair"]
    hv = head_view_payload(a, layer=1, heads=[0, 2], key="k")
    L, H, T, _ = a.attentions.shape
    att = hv["attention"]["self"]
    assert set(att) == {str(i) for i in range(L)}  # small: every layer prefetched
    assert att["1"]["shape"] == [H, T, T] and att["1"]["encoding"] == "uint8"
    np.testing.assert_allclose(decode_attention(att["1"]), a.attentions[1], atol=0.004)
    assert hv["heads"] == [0, 2] and hv["pair_start"] == a.pair_start
    lazy = head_view_payload(a, layer=1, key="k", prefetch_bytes=0)
    assert set(lazy["attention"]["self"]) == {"1"}
    text = json.dumps(hv)
    assert len(text) < 4 * a.attentions.size  # base64 of one byte per weight, no float JSON
    mv = model_view_payload(a, layers=[1], heads=[3, 1], thumb_size=8)
    assert mv["thumbs"]["shape"] == [1, 2, 8, 8] and mv["pooled"]
    np.testing.assert_allclose(decode_attention(mv["thumbs"])[0, 0], pool_attention(a.attentions[1, 3], 8), atol=0.004)
    nv = neuron_view_payload(a, layer=1, head=2, token=4, key="k")
    terms = a.score_terms(1, 2, 4)
    np.testing.assert_array_equal(decode_float32(nv["terms"]["keys"]), terms["keys"])
    np.testing.assert_array_equal(decode_float32(nv["terms"]["softmax"]), terms["softmax"])
    with pytest.raises(ValueError):
        head_view_payload(a, pair_filter="a->c")


def test_long_layers_go_sparse_without_losing_drawn_lines(analyses):
    a = analyses["long"]
    att = a.attentions[1]
    p = encode_layer(att)
    assert p["encoding"] == CSR
    dense = encode_layer(att, sparse_ratio=0)  # never sparse
    assert dense["encoding"] == "uint8"
    assert len(json.dumps(p)) < 0.7 * len(json.dumps(dense))
    drawn = _weights(dense) * 255 >= 0.5
    np.testing.assert_array_equal(_weights(p)[drawn], _weights(dense)[drawn])
    assert (_weights(p)[~drawn] == 0).all()
    np.testing.assert_allclose(decode_layer(p)[drawn], decode_attention(dense).reshape(att.shape)[drawn])


def test_pool_attention_keeps_maxima():
    x = np.zeros((1, 1, 100, 100), np.float32)
    x[0, 0, 57, 3] = 0.9
    p = pool_attention(x, 10)
    assert p.shape == (1, 1, 10, 10) and p[0, 0, 5, 0] == pytest.approx(0.9) and p.sum() == pytest.approx(0.9)


def test_store_keys_and_eviction(analyses):
    store = AnalysisStore(max_items=2)
    a, b, c = analyses["pair"], analyses["llama"], analyses["t5"]
    ka = store.put(a)
    assert store.put(a) == ka and store.get(ka) is a and len(ka) >= 20
    store.put(b)
    store.put(c)
    with pytest.raises(KeyError):
        store.get(ka)


# --------------------------------------------------------------------------------------------------
# browser
# --------------------------------------------------------------------------------------------------
@pytest.mark.browser
def test_head_view_lines_hover_toggle_pair(vpage, views_app, analyses):
    pg = vpage
    _open(pg, views_app, "pair")
    a = analyses["pair"]
    payload = head_view_payload(a)
    w = _weights(payload["attention"]["self"]["0"])  # [H, T, T] as the browser sees it
    H, T, _ = w.shape
    assert pg.locator(".xh-hv canvas").count() == 1 and pg.locator(".xh-hv svg").count() == 0
    assert pg.locator(".xh-hv .xh-left .xh-tok").count() == T
    total = _lines(pg)
    assert total == int(_visible(w).sum()) > 0
    _shot(pg, "#hv", "head-light")

    # hover a query token: only its lines
    pg.hover(".xh-hv .xh-left .xh-tok >> nth=2")
    hovered = _wait_lines_change(pg, total)
    assert hovered == int(_visible(w[:, 2, :]).sum())
    pg.hover(".xh-hv .xh-right .xh-tok >> nth=4")
    pg.wait_for_function(f"() => document.querySelector('.xh-hv').dataset.lines === '{int(_visible(w[:, :, 4]).sum())}'")
    _shot(pg, "#hv", "head-hover")
    pg.mouse.move(5, 5)
    _wait_lines_change(pg, int(_visible(w[:, :, 4]).sum()))
    assert _lines(pg) == total

    # click head 0: hidden; double-click head 2: only head 2
    pg.click(".xh-hv .xh-head[data-head='0']")
    assert _wait_lines_change(pg, total) == int(_visible(w[1:]).sum())
    assert pg.eval_on_selector(".xh-hv", "e => e.dataset.heads") == ",".join(str(h) for h in range(1, H))
    pg.dblclick(".xh-hv .xh-head[data-head='2']")
    pg.wait_for_function("() => document.querySelector('.xh-hv').dataset.heads === '2'")
    assert _lines(pg) == int(_visible(w[2]).sum())
    assert pg.locator(".xh-hv .xh-head.xh-off").count() == H - 1
    pg.click(".xh-hv .xh-all")
    pg.wait_for_function(f"() => document.querySelector('.xh-hv').dataset.lines === '{total}'")

    # sentence-pair filter A -> B
    seg = np.asarray(a.segments)
    pg.select_option(".xh-hv select.xh-pair", "a->b")
    expect = int(_visible(w[:, seg == 0][:, :, seg == 1]).sum())
    pg.wait_for_function(f"() => document.querySelector('.xh-hv').dataset.lines === '{expect}'")
    assert pg.locator(".xh-hv .xh-left .xh-tok.xh-dim").count() == int((seg == 1).sum())
    assert pg.locator(".xh-hv .xh-right .xh-tok.xh-dim").count() == int((seg == 0).sum())
    _shot(pg, "#hv", "head-pair-a-b")

    # another layer (prefetched)
    pg.select_option(".xh-hv select.xh-layer", "1")
    pg.wait_for_function("() => document.querySelector('.xh-hv').dataset.layer === '1'")
    assert not pg.errors and not pg.dialogs


@pytest.mark.browser
def test_head_view_fetches_layers_lazily(vpage, views_app, analyses):
    pg = vpage
    _open(pg, views_app, "lazy")
    requests = []
    pg.on("request", lambda r: requests.append(r.url) if "component_server" in r.url else None)
    drawn = pg.eval_on_selector(".xh-hv", "e => e.dataset.drawn")
    pg.select_option(".xh-hv select.xh-layer", "1")
    pg.wait_for_function(f"() => document.querySelector('.xh-hv').dataset.drawn !== '{drawn}'")
    assert requests, "layer 1 was not fetched from the server"
    w = _weights(head_view_payload(analyses["lazy"], layer=1)["attention"]["self"]["1"])
    assert _lines(pg) == int(_visible(w).sum())
    assert not pg.errors


@pytest.mark.browser
def test_head_view_line_budget(vpage, views_app, analyses):
    pg = vpage
    _open(pg, views_app, "budget")
    w = _weights(head_view_payload(analyses["budget"])["attention"]["self"]["0"])
    total = int(_visible(w).sum())
    assert total > 300
    shown = _lines(pg)
    assert 0 < shown <= 300
    notice = pg.locator(".xh-hv .xh-notice")
    assert notice.is_visible() and f"of {total:,} lines" in notice.inner_text()
    # the strongest are kept: every drawn line is at least as strong as every hidden one
    b = np.floor(w[_visible(w)] * 255 + 0.5)
    assert (b >= np.sort(b)[::-1][shown - 1]).sum() >= shown
    pg.click(".xh-hv .xh-showall")
    pg.wait_for_function(f"() => document.querySelector('.xh-hv').dataset.lines === '{total}'")
    assert "Showing all" in notice.inner_text()
    assert not pg.errors


@pytest.mark.browser
def test_encoder_decoder_stacks(vpage, views_app, analyses):
    pg = vpage
    _open(pg, views_app, "t5")
    a = analyses["t5"]
    n_enc, n_dec = len(a.display_tokens), len(a.decoder_input.display)
    assert pg.locator(".xh-hv select.xh-stack option").count() == 3
    pg.select_option(".xh-hv select.xh-stack", "cross")
    pg.wait_for_function("() => document.querySelector('.xh-hv').dataset.stack === 'cross'")
    assert pg.locator(".xh-hv .xh-left .xh-tok").count() == n_dec
    assert pg.locator(".xh-hv .xh-right .xh-tok").count() == n_enc
    assert _lines(pg) > 0
    _shot(pg, "#hv", "head-t5-cross")
    # neuron view: T5 has a position bias; the decoder also has a causal mask
    assert pg.locator(".xh-nv .xh-hrow [data-col='bias']").count() == 1
    pg.select_option(".xh-nv select.xh-stack", "decoder")
    pg.wait_for_function("() => document.querySelector('.xh-nv').dataset.stack === 'decoder'")
    token = int(pg.eval_on_selector(".xh-nv", "e => e.dataset.token"))
    assert pg.locator(".xh-nv .xh-hrow [data-col='mask']").count() == 1
    assert pg.locator(".xh-nv .xh-row.xh-masked").count() == n_dec - token - 1
    _check_neuron_numbers(pg, a, "decoder")
    # model view: switch to the cross attention grid
    pg.select_option(".xh-mv select.xh-stack", "cross")
    pg.wait_for_function("() => document.querySelector('.xh-mv select.xh-stack') && document.querySelector('.xh-mv select.xh-stack').value === 'cross'")
    assert not pg.errors


@pytest.mark.browser
def test_model_view_grid_click_and_theme(vpage, views_app, analyses):
    pg = vpage
    _open(pg, views_app, "pair")
    a = analyses["pair"]
    L, H, T, _ = a.attentions.shape
    mv = pg.locator(".xh-mv")
    assert mv.get_attribute("data-thumbs") == str(L * H)
    assert pg.locator(".xh-mv .xh-grid canvas").count() == 1 and pg.locator(".xh-mv svg").count() == 0
    geom = json.loads(mv.get_attribute("data-geom"))
    # the thumbnails are painted (not all one colour)
    colours = pg.eval_on_selector(".xh-mv .xh-grid canvas", """(c, g) => {
        const ctx = c.getContext('2d'), d = window.devicePixelRatio || 1, seen = new Set();
        const px = ctx.getImageData(Math.round((g.labelW + 2) * d), Math.round((g.headerH + 2) * d), Math.round((g.cell - 4) * d), Math.round((g.cell - 4) * d)).data;
        for (let i = 0; i < px.length; i += 4) seen.add(px[i] + ',' + px[i + 1] + ',' + px[i + 2]);
        return seen.size; }""", geom)
    assert colours > 3
    _shot(pg, "#mv", "model-light")
    box = pg.locator(".xh-mv .xh-grid canvas").bounding_box()
    r, c = 1, 2
    pg.mouse.click(box["x"] + geom["labelW"] + c * (geom["cell"] + geom["gap"]) + geom["cell"] / 2,
                   box["y"] + geom["headerH"] + r * (geom["cell"] + geom["gap"]) + geom["cell"] / 2)
    pg.wait_for_selector(".xh-mv .xh-modal-box[data-loaded]")
    assert mv.get_attribute("data-open") == f"{r},{c}"
    assert "full precision" in pg.locator(".xh-mv .xh-modal-head").inner_text()
    assert pg.locator(".xh-mv .xh-modal .xh-left .xh-tok").count() == T
    full = a.attentions[r, c].astype(np.float64)
    assert int(mv.get_attribute("data-open-lines")) == int((full * 255 >= 0.5).sum())
    pg.screenshot(path=str(ARTIFACTS / "views-model-open.png"))
    pg.keyboard.press("Escape")
    pg.wait_for_selector(".xh-mv .xh-modal", state="hidden")
    pg.click(".xh-mv .xh-theme")
    pg.wait_for_function("() => document.querySelector('.xh-mv').dataset.theme === 'dark'")
    assert "xh-dark" in mv.get_attribute("class")
    _shot(pg, "#mv", "model-dark")
    assert not pg.errors


def _row_numbers(pg, col: str) -> list[str]:
    return pg.eval_on_selector_all(f".xh-nv .xh-row [data-col='{col}']", "els => els.map(e => e.textContent)")


def _num(s: str) -> float:
    s = s.replace("\u2212", "-")
    return float("-inf") if s in ("-\u221e", "masked") else float(s)


def _check_neuron_numbers(pg, a, stack=None) -> None:
    d = pg.eval_on_selector(".xh-nv", "e => ({...e.dataset})")
    t = a.score_terms(int(d["layer"]), int(d["head"]), int(d["token"]), stack=stack)
    for col in ("dot", "scaled", "softmax") + (("bias",) if t["bias"] is not None else ()):
        shown = [_num(x) for x in _row_numbers(pg, col)]
        want = np.asarray(t[col], dtype=np.float64)
        assert len(shown) == len(want), col
        for s, v in zip(shown, want):
            assert abs(s - v) <= max(6e-4, 0.006 * abs(v)), (col, s, v)
    if t["mask"] is not None:
        shown = [_num(x) for x in _row_numbers(pg, "mask")]
        assert [s == float("-inf") for s in shown] == [bool(v <= -1e9) for v in t["mask"]]


@pytest.mark.browser
def test_neuron_view_matches_score_terms(vpage, views_app, analyses):
    pg = vpage
    _open(pg, views_app, "pair")
    a = analyses["pair"]
    assert pg.locator(".xh-nv .xh-row").count() == len(a.display_tokens)
    for col in ("k", "q \u00d7 k", "q \u00b7 k", "\u00d7 scale", "softmax"):
        assert col in pg.locator(".xh-nv .xh-hrow").inner_text()
    assert pg.locator(".xh-nv canvas.xh-strip").count() == 2
    _check_neuron_numbers(pg, a)
    _shot(pg, "#nv", "neuron-bert")
    # another head, another layer, another token: fetched lazily, numbers follow
    pg.select_option(".xh-nv select.xh-head-sel", "3")
    pg.wait_for_function("() => document.querySelector('.xh-nv').dataset.head === '3'")
    pg.select_option(".xh-nv select.xh-layer", "1")
    pg.wait_for_function("() => document.querySelector('.xh-nv').dataset.layer === '1'")
    pg.click(".xh-nv .xh-qtok[data-index='5']")
    pg.wait_for_function("() => document.querySelector('.xh-nv').dataset.token === '5'")
    _check_neuron_numbers(pg, a)
    assert not pg.errors


@pytest.mark.browser
def test_neuron_view_llama_gqa_and_mask(vpage, views_app, analyses):
    pg = vpage
    _open(pg, views_app, "llama")
    a = analyses["llama"]
    st = a.stack()
    group = st.num_heads // st.keys[1].shape[0]
    assert group > 1, "the tiny llama should use grouped-query attention"
    info = pg.locator(".xh-nv .xh-info").inner_text()
    assert f"key head {3 // group}" in info and "Grouped-query" in info
    n = len(a.display_tokens)
    assert pg.locator(".xh-nv .xh-row.xh-masked").count() == n - 3 - 1  # causal: keys after token 3
    _check_neuron_numbers(pg, a)
    _shot(pg, "#nv", "neuron-llama")
    _shot(pg, "#hv", "head-llama")
    assert not pg.errors


@pytest.mark.browser
def test_tokens_are_text_never_html(vpage, views_app):
    pg = vpage
    _open(pg, views_app, "xss")
    pg.wait_for_timeout(300)
    texts = pg.eval_on_selector_all(".xh-hv .xh-left .xh-tok", "els => els.map(e => e.textContent)")
    assert XSS in texts
    assert XSS in pg.eval_on_selector_all(".xh-nv .xh-qtok", "els => els.map(e => e.textContent)")
    assert XSS in pg.eval_on_selector_all(".xh-nv .xh-row .xh-tokc", "els => els.map(e => e.textContent)")
    geom = json.loads(pg.locator(".xh-mv").get_attribute("data-geom"))
    box = pg.locator(".xh-mv .xh-grid canvas").bounding_box()
    pg.mouse.click(box["x"] + geom["labelW"] + geom["cell"] / 2, box["y"] + geom["headerH"] + geom["cell"] / 2)
    pg.wait_for_selector(".xh-mv .xh-modal-box[data-loaded]")
    assert XSS in pg.eval_on_selector_all(".xh-mv .xh-modal .xh-tok", "els => els.map(e => e.textContent)")
    assert pg.locator("[data-view] img").count() == 0
    assert not pg.dialogs and not pg.errors
    pg.keyboard.press("Escape")
    _shot(pg, "#hv", "head-xss")


@pytest.mark.browser
def test_thousand_tokens_scroll_and_readable(vpage, views_app, analyses):
    pg = vpage
    _open(pg, views_app, "long", dark=True)
    a = analyses["long"]
    T = len(a.display_tokens)
    assert T >= LONG_TOKENS - 10
    labels = pg.locator(".xh-hv .xh-left .xh-tok")
    assert labels.count() == T
    # one row per token, rows do not overlap, the panel scrolls
    geo = pg.eval_on_selector_all(".xh-hv .xh-left .xh-tok", "els => els.map(e => [e.offsetTop, e.offsetHeight])")
    tops = np.array([g[0] for g in geo])
    assert (np.diff(tops) >= np.array([g[1] for g in geo])[:-1]).all() and geo[0][1] >= 16
    sc = pg.eval_on_selector(".xh-hv .xh-lines", "e => [e.scrollHeight, e.clientHeight]")
    assert sc[0] > 10 * sc[1]
    assert _lines(pg) > 0
    w = _weights(head_view_payload(a)["attention"]["self"]["0"])
    # more visible lines than the default budget: the strongest 40,000 are drawn and the view says so
    assert pg.locator(".xh-hv .xh-notice").is_visible() == (int(_visible(w).sum()) > 40_000)
    pg.hover(".xh-hv .xh-left .xh-tok >> nth=5")
    pg.wait_for_function(f"() => document.querySelector('.xh-hv').dataset.lines === '{int(_visible(w[:, 5, :]).sum())}'")
    pg.mouse.move(5, 5)
    _shot(pg, "#hv", "head-1000-dark")
    pg.eval_on_selector(".xh-hv .xh-lines", "e => { e.scrollTop = e.scrollHeight / 2; }")
    pg.wait_for_timeout(200)
    assert _lines(pg) > 0
    _shot(pg, "#hv", "head-1000-dark-scrolled")
    # the model view pools the thumbnails
    assert "max-pooled" in pg.locator(".xh-mv .xh-toolbar").inner_text()
    _shot(pg, "#mv", "model-1000-dark")
    _shot(pg, "#nv", "neuron-1000-dark")
    assert not pg.errors
