"""The explorer and the head view on an encoder-decoder (tiny random T5) in Chromium: Encoder / Decoder /
Cross attention, the drawn weights against transformers' own attentions, and the stack in deep links."""

from __future__ import annotations

from types import SimpleNamespace
from urllib.parse import parse_qs, urlencode, urlparse

import numpy as np
import pytest
import torch
from conftest import ARTIFACTS

pytestmark = pytest.mark.browser

TEXT = "The cat sat on the mat."
TARGET = "Le chat est assis sur le tapis."


def cross_and_decoder(eng, a) -> dict:
    with torch.inference_mode():
        out = eng.model(input_ids=torch.as_tensor(a.ids)[None], decoder_input_ids=torch.as_tensor(a.decoder_input.ids)[None],
                        attention_mask=torch.ones(1, len(a.ids), dtype=torch.long), output_attentions=True)
    return {"cross": [x[0].numpy() for x in out.cross_attentions], "decoder": [x[0].numpy() for x in out.decoder_attentions]}


@pytest.fixture(scope="module")
def t5_page(tiny, tiny_engine):
    """A page of the explorer and the head view over one T5 analysis with a decoder target, served from the
    app's AnalysisStore (lazy layers through the explorer's own fetch_layer)."""
    import gradio as gr
    from serving import launch_on_free_port

    from exbert_hub.service import AnalysisStore, Request, StoreRef
    from exbert_hub.tabs.explorer import fetch_layer
    from exbert_hub.views import common_head
    from exbert_hub.views.explorer import ExplorerView, explorer_payload
    from exbert_hub.views.head_view import HeadView, head_view_payload

    eng = tiny_engine("t5")
    store = AnalysisStore()
    key, a = store.run(Request(str(tiny("t5")), TEXT, target=TARGET), eng)

    def explorer_layer(data) -> dict:
        return fetch_layer(store, data)

    with gr.Blocks() as demo:
        btn = gr.Button("show", elem_id="show")
        ex = ExplorerView(None, fetch_layer=explorer_layer, elem_id="ex")
        hv = HeadView(None, store=StoreRef(store), elem_id="hv")
        btn.click(lambda: (explorer_payload(a, key=key, can_mask=eng.can_mask), head_view_payload(a, key=key)),
                  None, [ex, hv])
    launch_on_free_port(demo, head=common_head())
    yield SimpleNamespace(url=demo.local_url, a=a, ref=cross_and_decoder(eng, a))
    demo.close()


def ex_state(page) -> dict:
    return page.evaluate(
        """() => {
            const r = document.querySelector('#ex .xb-root');
            const texts = (sel) => Array.from(r.querySelectorAll(sel)).map(t => t.textContent);
            return {...r.dataset, left: texts('.xb-col-left .xb-tok'), right: texts('.xb-col-right .xb-tok'),
                    heads_text: texts('.xb-colheads .xb-ch'), caption: (r.querySelector('.xb-caption') || {}).textContent,
                    preds: texts('.xb-pred'), note: (r.querySelector('.xb-note') || {}).textContent,
                    sideTitle: (r.querySelector('.xb-side-title') || {}).textContent,
                    message: (r.querySelector('.xb-message') || {}).textContent,
                    options: Array.from(r.querySelectorAll('select.xb-stack option')).map(o => o.value)};
        }""")


def drawn_lines(page) -> list[tuple[int, int, float]]:
    hl = page.evaluate("() => document.querySelector('#ex .xb-root').dataset.hoverLines")
    return [(int(s), int(d), float(w)) for s, d, w in (x.split(":") for x in hl.split(",") if x)]


def edges(page) -> list[tuple[int, int]]:
    return [tuple(x) for x in page.evaluate(
        "() => Array.from(document.querySelectorAll('#ex svg.xb-svg path')).map(p => [+p.dataset.src, +p.dataset.dst])")]


def choose_stack(page, name: str):
    page.select_option("#ex select.xb-stack", name)
    page.wait_for_function(f"() => {{ const r = document.querySelector('#ex .xb-root'); return r.dataset.stack === '{name}' && +r.dataset.lines > 0; }}")


def weight_bound(v: np.ndarray, row: np.ndarray) -> np.ndarray:
    """What the browser draws for one head: the uint8 (sqrt) weight renormalised by its decoded row sum.
    Each weight is off by at most max_abs_error(v); the row sum by at most the sum of those."""
    from exbert_hub.views.transport import max_abs_error

    row_err = float(np.sum(max_abs_error(row)))
    return max_abs_error(v) + v * row_err / (1 - row_err) + 1e-6


def test_cross_and_decoder_attention_drawn_as_the_model_computed_them(page, t5_page):
    a, ref = t5_page.a, t5_page.ref
    page.goto(t5_page.url)
    page.click("#show")
    page.wait_for_selector("#ex .xb-root[data-ready='1']")
    s = ex_state(page)
    assert s["options"] == ["encoder", "decoder", "cross"] and s["stack"] == "encoder"
    assert s["left"] == s["right"] == list(a.display_tokens)
    # Cross: decoder tokens on the left (queries), the encoder's on the right (keys), and the labels say so
    choose_stack(page, "cross")
    s = ex_state(page)
    assert s["left"] == list(a.decoder_input.display) and s["right"] == list(a.display_tokens)
    assert "decoder token (left, queries)" in s["caption"] and "encoder's tokens (right, keys)" in s["caption"]
    assert "decoder\nfrom" in s["heads_text"] and "encoder\nto" in s["heads_text"]
    assert all(0 <= i < len(a.decoder_tokens) and 0 <= j < len(a.tokens) for i, j in edges(page))
    page.screenshot(path=str(ARTIFACTS / "explorer_encdec_cross.png"), full_page=True)
    # one head, every line (threshold 100%), one decoder token frozen: the weights drawn are the model's
    page.eval_on_selector("#ex .xb-threshold", "e => { e.value = '1'; e.dispatchEvent(new Event('input')); }")
    for layer, head, tok in ((0, 2, 3), (1, 1, 5)):
        page.select_option("#ex select.xb-layer", str(layer))
        page.dblclick(f"#ex .xb-chip[data-head='{head}']")
        page.wait_for_function(f"() => document.querySelector('#ex .xb-root').dataset.heads === '{head}'")
        if page.evaluate("() => document.querySelector('#ex .xb-root').dataset.token") != str(tok):
            page.click(f"#ex .xb-col-left .xb-tok[data-pos='{tok}']")
        page.wait_for_function(f"() => document.querySelector('#ex .xb-root').dataset.token === '{tok}' && "
                               f"document.querySelector('#ex .xb-root').dataset.layer === '{layer}'")
        lines = drawn_lines(page)
        want = ref["cross"][layer][head, tok]
        assert {src for src, _, _ in lines} == {tok}
        got = {dst: w for _, dst, w in lines}
        assert set(np.flatnonzero(want >= 0.01)) <= set(got)
        dst = np.array(sorted(got))
        w = np.array([got[j] for j in dst])
        assert np.all(np.abs(w - want[dst]) <= weight_bound(want[dst], want)), (w, want[dst])
        page.click(f"#ex .xb-col-left .xb-tok[data-pos='{tok}']")  # unfreeze
    # a decoder token: the decoder's next-token predictions; an encoder token: why there are none
    page.click("#ex .xb-col-left .xb-tok[data-pos='3']")
    s = ex_state(page)
    assert s["sideTitle"].startswith("Next token after") and len(s["preds"]) == 5
    page.click("#ex .xb-col-right .xb-tok[data-pos='2']")
    s = ex_state(page)
    assert s["preds"] == [] and "predictions are the decoder's" in s["note"]
    assert {dst for _, dst in edges(page)} == {2}  # frozen on an encoder token: lines into it
    # masking does not apply (no masked LM): a visible reason, no re-run
    key = s["key"]
    page.dblclick("#ex .xb-col-left .xb-tok[data-pos='3']")
    page.wait_for_function("() => document.querySelector('#ex .xb-message').textContent.includes('masked language model')")
    assert ex_state(page)["key"] == key
    # Decoder: causal, nothing drawn to a later token, later tokens marked as such
    page.eval_on_selector("#ex .xb-threshold", "e => { e.value = '0.9'; e.dispatchEvent(new Event('input')); }")
    choose_stack(page, "decoder")
    page.mouse.move(5, 5)  # (the pointer rested on a token: hovering it filters the lines)
    page.wait_for_function("() => document.querySelector('#ex .xb-root').dataset.active === ''")
    s = ex_state(page)
    assert s["left"] == s["right"] == list(a.decoder_input.display) and s["heads"] == "0,1,2,3"
    assert "attends to (earlier tokens)" in s["heads_text"]
    drawn = edges(page)
    assert len(drawn) >= len(a.decoder_tokens) and all(dst <= src for src, dst in drawn)
    page.click("#ex .xb-col-left .xb-tok[data-pos='4']")
    future = page.evaluate("() => Array.from(document.querySelectorAll('#ex .xb-col-right .xb-tok.xb-future')).map(d => +d.dataset.pos)")
    assert future == list(range(5, len(a.decoder_tokens)))
    lines = drawn_lines(page)
    layer = int(ex_state(page)["layer"])  # the layer stays what it was when the stack changed (1)
    assert layer == 1
    rows = ref["decoder"][layer][:, 4]  # [heads, keys]: the drawn weight is the mean of the heads' rows
    assert lines and all(dst <= 4 for _, dst, _ in lines)
    bound = np.mean([weight_bound(r, r) for r in rows], axis=0)
    for _, dst, w in lines:
        assert abs(w - rows[:, dst].mean()) <= bound[dst], (dst, w, rows[:, dst].mean())
    page.screenshot(path=str(ARTIFACTS / "explorer_encdec_decoder.png"), full_page=True)
    # the head view: the same three, cross with decoder tokens left and the encoder's right
    page.select_option("#hv select.xh-stack", "cross")
    page.wait_for_function("() => document.querySelector('#hv .xh-hv').dataset.stack === 'cross' && +document.querySelector('#hv .xh-hv').dataset.lines > 0")
    hv = page.evaluate("""() => ['left', 'right'].map(s => Array.from(document.querySelectorAll('#hv .xh-' + s + ' .xh-tok')).map(t => t.textContent))""")
    assert hv[0] == list(a.decoder_input.display) and hv[1] == list(a.display_tokens)
    assert not page.errors


def url_params(page) -> dict:
    return {k: v[0] for k, v in parse_qs(urlparse(page.url).query).items()}


def test_stack_in_the_app_deep_link_lazy_layers_and_search(page, explorer_app, tiny, tiny_engine, monkeypatch):
    """In the app: ?stack=cross opens the cross attention; the choice goes into the address; the other stacks'
    layers come from the server when the page does not hold them; corpus search says it needs the encoder."""
    from exbert_hub.views import explorer

    monkeypatch.setattr(explorer, "ALL_LAYERS_BYTES", 0)  # only the shown layer in the page: the rest is fetched
    t5 = str(tiny("t5"))
    page.goto(explorer_app.url + "?" + urlencode({"model": t5, "text": TEXT, "stack": "cross", "layer": 1}))
    page.wait_for_selector(".xb-root[data-ready='1']", timeout=60_000)
    page.wait_for_function("() => +document.querySelector('.xb-root').dataset.lines > 0")
    s = page.evaluate("() => ({...document.querySelector('.xb-root').dataset, value: document.querySelector('select.xb-stack').value})")
    assert (s["stack"], s["layer"], s["value"]) == ("cross", "1", "cross")
    search = page.locator(".xb-search-corpus")
    if search.is_visible():  # the app has a corpus search tab: it takes encoder tokens only
        assert search.is_disabled() and "Encoder attention only" in search.text_content()
    page.select_option("select.xb-stack", "decoder")
    page.wait_for_function("() => { const r = document.querySelector('.xb-root'); return r.dataset.stack === 'decoder' && +r.dataset.lines > 0; }")
    assert url_params(page)["stack"] == "decoder"
    page.select_option("select.xb-layer", "0")  # fetched from the server (not in the page)
    page.wait_for_function("() => { const r = document.querySelector('.xb-root'); return r.dataset.layer === '0' && +r.dataset.lines > 0; }")
    assert "Loading" not in page.text_content(".xb-status")
    page.select_option("select.xb-stack", "encoder")
    page.wait_for_function("() => document.querySelector('.xb-root').dataset.stack === 'encoder'")
    assert "stack" not in url_params(page)
    if search.is_visible():
        assert "Encoder attention only" not in search.text_content()
    # the head view opens on the stack of the address
    page.select_option("select.xb-stack", "cross")
    page.wait_for_function("() => new URLSearchParams(location.search).get('stack') === 'cross'")
    page.click("button[role='tab']:has-text('Head view')")
    page.wait_for_function("() => { const h = document.querySelector('#xh-head-view .xh-hv'); return h && h.dataset.stack === 'cross' && +h.dataset.lines > 0; }")
    page.screenshot(path=str(ARTIFACTS / "head_view_encdec_cross.png"), full_page=True)
    # the decoder's text: the second box (its label says so), in the address as `pair`
    page.click("button[role='tab']:has-text('Attention explorer')")
    page.wait_for_selector(".xb-root[data-ready='1']")
    assert "Decoder text" in page.text_content("#xh-pair")
    key = page.evaluate("() => document.querySelector('.xb-root').dataset.key")
    page.fill("#xh-pair textarea", TARGET)
    page.click("#xh-analyze")
    page.wait_for_function("k => document.querySelector('.xb-root').dataset.key !== k", arg=key)
    page.wait_for_function("() => document.querySelector('.xb-root').dataset.stack === 'cross'")  # the stack shown stays
    a = tiny_engine("t5").analyze(TEXT, target=TARGET)
    left = page.evaluate("() => Array.from(document.querySelectorAll('.xb-col-left .xb-tok')).map(t => t.textContent)")
    assert left == list(a.decoder_input.display) and url_params(page)["pair"] == TARGET
    page.reload()
    page.wait_for_selector(".xb-root[data-ready='1']", timeout=60_000)
    page.wait_for_function("() => document.querySelector('.xb-root').dataset.stack === 'cross'")
    assert page.evaluate("() => Array.from(document.querySelectorAll('.xb-col-left .xb-tok')).map(t => t.textContent)") == left
    assert page.input_value("#xh-pair textarea") == TARGET
    # a link naming a stack the model does not have: the encoder, and a line saying why
    page.goto(explorer_app.url + "?" + urlencode({"model": t5, "text": TEXT, "stack": "sideways"}))
    page.wait_for_selector(".xb-root[data-ready='1']", timeout=60_000)
    page.wait_for_function("() => document.querySelector('.xb-root').dataset.stack === 'encoder'")
    assert "'sideways'" in page.text_content(".xb-message") and "showing the encoder attention" in page.text_content(".xb-message")
    assert not page.errors


def test_long_mode_row_blocks_for_cross_and_decoder(page, explorer_app, tiny, tiny_engine, monkeypatch):
    """Every stack shown by sparse row blocks (views/rows.py), as long inputs are: the frozen decoder
    token's row comes in full at float32, so the drawn cross weights are the model's to float32 rounding."""
    from exbert_hub.views import rows

    monkeypatch.setattr(rows, "LONG_LAYER_BYTES", 10)  # every stack of the tiny T5 counts as long
    t5 = str(tiny("t5"))
    eng = tiny_engine("t5")
    a = eng.analyze(TEXT)  # the app's decoder reads the text itself
    ref = cross_and_decoder(eng, a)
    page.goto(explorer_app.url + "?" + urlencode({"model": t5, "text": TEXT, "stack": "cross", "heads": "1"}))
    page.wait_for_selector(".xb-root[data-ready='1']", timeout=60_000)
    page.wait_for_function("() => { const r = document.querySelector('.xb-root'); return r.dataset.stack === 'cross' && +r.dataset.blocks > 0 && +r.dataset.lines > 0; }")
    page.eval_on_selector(".xb-threshold", "e => { e.value = '1'; e.dispatchEvent(new Event('input')); }")
    page.click(".xb-col-left .xb-tok[data-pos='4']")
    page.wait_for_function("() => { const r = document.querySelector('.xb-root'); return r.dataset.token === '4' && r.dataset.exact === '1'; }")
    hl = page.evaluate("() => document.querySelector('.xb-root').dataset.hoverLines")
    lines = [(int(s), int(d), float(w)) for s, d, w in (x.split(":") for x in hl.split(",") if x)]
    want = ref["cross"][0][1, 4]
    assert {s for s, _, _ in lines} == {4} and {d for _, d, _ in lines} == set(np.flatnonzero(want > 0))
    for _, dst, w in lines:
        assert abs(w - want[dst]) <= 1e-5 * max(want[dst], 1e-3) + 1e-6, (dst, w, want[dst])
    # the decoder by blocks: causal
    page.click(".xb-col-left .xb-tok[data-pos='4']")
    page.select_option("select.xb-stack", "decoder")
    page.wait_for_function("() => { const r = document.querySelector('.xb-root'); return r.dataset.stack === 'decoder' && +r.dataset.lines > 0; }")
    page.mouse.move(5, 5)
    page.wait_for_function("() => document.querySelector('.xb-root').dataset.active === ''")
    drawn = page.evaluate("() => Array.from(document.querySelectorAll('.xb-root svg.xb-svg path')).map(p => [+p.dataset.src, +p.dataset.dst])")
    assert drawn and all(d <= s for s, d in drawn)
    assert not page.errors
