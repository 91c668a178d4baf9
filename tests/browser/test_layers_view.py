"""Layers view in Chromium: the layer slider moves the tracked points, a lasso selection makes the head
summary the mean over exactly the selected examples (checked against numpy), a cell click opens that
head (the engine's attention), colour-by switches, the selection comes back to Python, two models draw.

The view is shown on its own page (a gr.Blocks with only the view and a JSON box showing what the
``select_examples`` event sent to Python), with random data from tests/test_layers_tab.synthetic and
the tiny BERT model to open heads.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import gradio as gr
import numpy as np
import pytest
from serving import launch_on_free_port
from test_layers_tab import synthetic

from exbert_hub.app import launch_options
from exbert_hub.views.layers_view import LayersStore, LayersView, head_summary

pytestmark = pytest.mark.browser


def build_page(data_by_name: dict):
    """A page showing ``data_by_name[?data=NAME]`` in a LayersView; #xl-events holds the last selection event."""
    store = LayersStore()
    with gr.Blocks() as demo:
        view = LayersView(store=store, elem_id="xl-view")
        events = gr.Textbox(label="events", elem_id="xl-events")

        def show(request: gr.Request):
            name = request.query_params.get("data", "one")
            return view.payload(data_by_name[name], layer=0)

        def on_select(evt: gr.EventData):
            return json.dumps(getattr(evt, "_data", None))

        demo.load(show, None, view)
        view.select_examples(on_select, None, events)
    return demo


@pytest.fixture(scope="module")
def layers_page(tiny_engine):
    eng = tiny_engine("bert")
    one = synthetic(60, engine=eng, layers=2, heads=4, seed=3)
    two = synthetic(30, engine=eng, layers=2, heads=4, seed=5, two=True)
    demo = build_page({"one": one, "two": two})
    launch_on_free_port(demo, **launch_options())
    yield SimpleNamespace(url=demo.local_url.rstrip("/") + "/", one=one, two=two, engine=eng)
    demo.close()


def open_view(page, url: str, data: str = "one"):
    page.goto(url + "?data=" + data)
    page.wait_for_selector("#xl-view .xl-root[data-ready='1']", timeout=60_000)
    return page


def scatter_data(page, model: int = 0):
    return page.evaluate(f"""() => {{
        const gd = document.querySelector('#xl-view .xl-scatter[data-model="{model}"]');
        return gd.data.map(t => ({{x: Array.from(t.x || []), y: Array.from(t.y || []),
                                   color: Array.isArray(t.marker && t.marker.color) ? t.marker.color.slice(0, 50) : null}}));
    }}""")


def test_layer_slider_moves_the_tracked_points(page, layers_page):
    open_view(page, layers_page.url)
    data = layers_page.one
    m = data.models[0]
    before = scatter_data(page)
    pts = np.flatnonzero(m.points.example == 0)
    np.testing.assert_allclose(before[2]["x"], m.coords[0][pts, 0], atol=float(np.ptp(m.coords[0][:, 0])) / 30000)
    slider = page.locator("#xl-view .xl-slider")
    slider.focus()
    page.keyboard.press("ArrowRight")
    page.wait_for_function("() => document.querySelector('#xl-view .xl-scatter').dataset.layer === '1'")
    after = scatter_data(page)
    np.testing.assert_allclose(after[2]["x"], m.coords[1][pts, 0], atol=float(np.ptp(m.coords[1][:, 0])) / 30000)
    np.testing.assert_allclose(after[2]["y"], m.coords[1][pts, 1], atol=float(np.ptp(m.coords[1][:, 1])) / 30000)
    assert not np.allclose(before[2]["x"], after[2]["x"])
    assert len(after[0]["x"]) == len(m.points)
    assert "ly_layer=1" in page.url
    # the tracked example's path goes through every layer (3 hidden states per token, then a gap)
    assert len(after[1]["x"]) == len(pts) * 4
    assert page.locator("#xl-view .xl-layer-value").inner_text().startswith("1 of 2")
    assert not page.errors


def lasso(page, model: int = 0, frac=(0.42, 0.42, 0.58, 0.58)):
    """Drag a lasso (a rectangle-shaped path) over a part of the scatter's plot area."""
    area = page.locator(f'#xl-view .xl-scatter[data-model="{model}"] .nsewdrag').first
    area.scroll_into_view_if_needed()
    box = area.bounding_box()
    x0, y0 = box["x"] + box["width"] * frac[0], box["y"] + box["height"] * frac[1]
    x1, y1 = box["x"] + box["width"] * frac[2], box["y"] + box["height"] * frac[3]
    page.mouse.move(x0, y0)
    page.mouse.down()
    for x, y in [(x1, y0), (x1, y1), (x0, y1), (x0, y0 + 2)]:
        page.mouse.move(x, y, steps=8)
    page.mouse.up()


def test_lasso_selection_averages_the_head_summary_over_exactly_the_selection(page, layers_page):
    open_view(page, layers_page.url)
    data = layers_page.one
    lasso(page)
    page.wait_for_function("() => document.querySelector('#xl-view .xl-summary').dataset.selection !== 'all'")
    sel = page.evaluate("() => document.querySelector('#xl-view .xl-summary').dataset.selection")
    examples = [int(e) for e in sel.split(",")]
    assert 0 < len(examples) < data.num_examples
    z = np.asarray(page.evaluate("() => document.querySelector('#xl-view .xl-summary').data[0].z"), dtype=np.float64)
    want = head_summary(data, "std", examples)
    np.testing.assert_allclose(z, want, rtol=1e-5)
    assert not np.allclose(z, head_summary(data, "std"))
    # the selection went back to Python through the gr.HTML event bridge
    page.wait_for_function("() => (document.querySelector('#xl-events textarea') || {}).value")
    sent = json.loads(page.locator("#xl-events textarea").input_value())
    assert sent["examples"] == examples and not sent["all"]
    # the table shows exactly the selected examples; the distance plot follows the selection
    rows = page.locator("#xl-view .xl-table tbody tr").evaluate_all("rs => rs.map(r => Number(r.dataset.example))")
    assert rows == examples
    assert page.evaluate("() => document.querySelector('#xl-view .xl-dist').dataset.selection") == sel
    # another statistic, same selection
    page.select_option("#xl-view .xl-stat select", "entropy")
    page.wait_for_function("() => document.querySelector('#xl-view .xl-summary').dataset.statistic === 'entropy'")
    z = np.asarray(page.evaluate("() => document.querySelector('#xl-view .xl-summary').data[0].z"), dtype=np.float64)
    np.testing.assert_allclose(z, head_summary(data, "entropy", examples), rtol=1e-5)
    page.locator("#xl-view .xl-clear").click()
    page.wait_for_function("() => document.querySelector('#xl-view .xl-summary').dataset.selection === 'all'")
    assert not page.errors


def test_cell_click_opens_that_head_for_the_tracked_example(page, layers_page):
    open_view(page, layers_page.url)
    data = layers_page.one
    page.locator("#xl-view .xl-table tbody tr[data-example='4']").click()
    page.wait_for_function("() => document.querySelector('#xl-view .xl-scatter').dataset.example === '4'")
    # click the cell of layer 1, head 2 (heatmap: x = head, y = layer)
    cells = page.locator("#xl-view .xl-summary .nsewdrag").first
    cells.scroll_into_view_if_needed()
    box = cells.bounding_box()
    page.mouse.click(box["x"] + box["width"] * (2.5 / 4), box["y"] + box["height"] * (0.5 / 2))
    page.wait_for_selector("#xl-view .xl-matrix.js-plotly-plot")
    mat = page.locator("#xl-view .xl-matrix")
    assert (mat.get_attribute("data-layer"), mat.get_attribute("data-head"), mat.get_attribute("data-example")) == ("1", "2", "4")
    z = np.asarray(page.evaluate("() => document.querySelector('#xl-view .xl-matrix').data[0].z"), dtype=np.float32)
    want = layers_page.engine.analyze(data.texts[4]).attentions[1, 2]
    np.testing.assert_allclose(z, want, rtol=1e-6, atol=1e-7)
    assert int(page.locator("#xl-view .xl-map").get_attribute("data-lines")) > 0
    assert "ly_head=1%2C2" in page.url or "ly_head=1,2" in page.url
    # another tracked example re-opens the same head for it
    page.locator("#xl-view .xl-table tbody tr[data-example='7']").click()
    page.wait_for_function("() => document.querySelector('#xl-view .xl-matrix') && document.querySelector('#xl-view .xl-matrix').dataset.example === '7'")
    assert not page.errors


def test_colour_by_switches(page, layers_page):
    open_view(page, layers_page.url)
    data = layers_page.one
    m = data.models[0]
    before = scatter_data(page)[0]["color"]
    page.select_option("#xl-view .xl-color select", "correct")
    page.wait_for_function("() => document.querySelector('#xl-view .xl-root').dataset.color === 'correct'")
    after = scatter_data(page)[0]["color"]
    correct = data.correct(0)
    want = ["#2e9e5b" if correct[e] else "#d6404e" for e in m.points.example[:50]]
    assert after == want and before != after
    legend = page.locator("#xl-view .xl-legend").inner_text()
    assert "correct" in legend and "wrong" in legend
    page.select_option("#xl-view .xl-color select", "span")
    span = scatter_data(page)[0]["color"]
    assert [c for c, s in zip(span, m.points.tags["span"]) if s == "A"] == ["#1f6fd1"] * m.points.tags["span"][:50].count("A")
    assert "ly_color=span" in page.url
    assert not page.errors


def test_hover_shows_the_token_in_its_sentence(page, layers_page):
    open_view(page, layers_page.url)
    data = layers_page.one
    m = data.models[0]
    # the mouse on point i: its pixel from plotly's axes; the tooltip names the point under the mouse
    i = int(np.argmax(m.coords[0][:, 0]))  # the rightmost point: no other point on top of it
    x, y = page.evaluate(f"""() => {{ const gd = document.querySelector('#xl-view .xl-scatter');
        const L = gd._fullLayout, r = gd.getBoundingClientRect(), t = gd.data[0];
        return [r.left + L._size.l + L.xaxis.l2p(t.x[{i}]), r.top + L._size.t + L.yaxis.l2p(t.y[{i}])]; }}""")
    page.mouse.move(x - 30, y)
    page.mouse.move(x, y, steps=5)
    tip = page.locator("#xl-view .xl-tooltip")
    tip.wait_for(state="visible")
    e = int(m.points.example[i])
    assert tip.locator("mark").inner_text() == m.points.text[i]
    assert f"example #{e}" in tip.inner_text()
    assert data.texts[e].split(" ")[-1] in tip.inner_text()


def test_two_models_draw_side_by_side(page, layers_page):
    open_view(page, layers_page.url, "two")
    data = layers_page.two
    assert page.locator("#xl-view .xl-scatter").count() == 2
    for i in (0, 1):
        d = scatter_data(page, i)
        assert len(d[0]["x"]) == len(data.models[i].points)
    # head summary of B, and A - B
    page.select_option("#xl-view .xl-summary-model select", "diff")
    page.wait_for_function("() => document.querySelector('#xl-view .xl-summary').dataset.model === 'diff'")
    z = np.asarray(page.evaluate("() => document.querySelector('#xl-view .xl-summary').data[0].z"), dtype=np.float64)
    np.testing.assert_allclose(z, head_summary(data, "std", model="diff"), rtol=1e-5, atol=1e-7)
    # both predictions in the table, distances of both
    heads = page.locator("#xl-view .xl-table th").all_inner_texts()
    assert "A prediction" in heads and "B prediction" in heads
    names = page.evaluate("() => document.querySelector('#xl-view .xl-dist').data.map(t => t.name)")
    assert any(n.startswith("A ") for n in names) and any(n.startswith("B ") for n in names)
    # a lasso in B selects examples in A too
    lasso(page, model=1)
    page.wait_for_function("() => document.querySelector('#xl-view .xl-root').dataset.selection !== 'all'")
    sel = [int(e) for e in page.evaluate("() => document.querySelector('#xl-view .xl-root').dataset.selection").split(",")]
    sel_a = page.evaluate("() => document.querySelector('#xl-view .xl-scatter[data-model=\"0\"]').data[0].selectedpoints")
    want = np.flatnonzero(np.isin(data.models[0].points.example, sel))
    assert sorted(sel_a) == want.tolist()
    assert not page.errors
