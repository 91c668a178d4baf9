"""The lens view in Chromium: the grid's top tokens are Python's, a cell click shows its top-k, the
target's line plot draws, rows far down are fetched when scrolled to."""

from __future__ import annotations

import numpy as np
import pytest
from serving import launch_on_free_port
from view_labels import token_label

from exbert_hub.analyses.lens import logit_lens
from exbert_hub.views.head_view import AnalysisStore
from exbert_hub.views.lens_view import ROW_BLOCK, LensView, lens_view_payload

pytestmark = pytest.mark.browser

TEXT = " ".join(["the cat sat on the mat"] * 25)


@pytest.fixture(scope="module")
def lens_app(tiny_engine):
    import gradio as gr

    eng = tiny_engine("llama")
    a = eng.analyze(TEXT)
    store = AnalysisStore()
    key = store.put(a)
    with gr.Blocks() as demo:
        view = LensView(None, store=store, engine_of=lambda k: eng, elem_id="xl-test")
        demo.load(lambda: lens_view_payload(a, eng, key=key), None, view)
    launch_on_free_port(demo)
    lens = logit_lens(a, eng, top_k=5)
    yield demo.local_url, eng, a, lens
    demo.close()


def _cells(page, pos):
    return page.eval_on_selector_all(f'.xl-row[data-pos="{pos}"] .xl-cell', "cs => cs.map(c => c.textContent)")


def test_grid_cell_click_topk_and_target_plot(page, lens_app):
    url, eng, a, lens = lens_app
    words = lens.tokens(eng.tokenizer)
    n = len(a.tokens)
    page.goto(url)
    page.wait_for_selector('.xl-root[data-ready="1"]')
    last = n - 1
    page.wait_for_selector(f'.xl-row[data-pos="{last}"] .xl-cell:not(.xl-loading)')
    # the grid opened on the last position (the next token of the text); every cell is Python's top word
    for pos in (last, last - 3):
        assert _cells(page, pos) == [token_label(words[s][pos][0]) for s in range(lens.num_states)]
    # click the cell of the middle layer: its top-5 with probabilities
    page.click(f'.xl-row[data-pos="{last - 3}"] .xl-cell[data-state="1"]')
    items = page.eval_on_selector_all(".xl-topk li .xl-word", "bs => bs.map(b => b.textContent)")
    assert items == [token_label(w) for w in words[1][last - 3]]
    assert page.locator(".xl-cell.xl-selected").count() == 1
    # the default target (the last layer's top token) is traced: two SVG lines with one point per state
    page.wait_for_selector("svg.xl-chart-prob polyline", state="attached")  # flat lines have no height
    pts = page.get_attribute("svg.xl-chart-prob polyline", "points").split()
    assert len(pts) == lens.num_states
    caption = page.text_content(".xl-plot-caption")
    assert "rank 1" in caption  # the model's own prediction is its last layer's top token
    # pick the third word of the top-k: the plot redraws for it
    third = int(lens.top_ids[1, last - 3, 2])
    page.locator(".xl-topk li .xl-word").nth(2).click()
    page.wait_for_function("(w) => document.querySelector('.xl-target-input').value === w",
                           arg=token_label(eng.tokenizer.decode([third])))
    assert page.locator("svg.xl-chart-rank polyline").count() == 1
    assert not page.errors


def test_scrolling_fetches_the_rows_not_sent(page, lens_app):
    url, eng, a, lens = lens_app
    words = lens.tokens(eng.tokenizer)
    n = len(a.tokens)
    assert n > 2 * ROW_BLOCK
    page.goto(url)
    page.wait_for_selector('.xl-root[data-ready="1"]')
    page.eval_on_selector(".xl-scroller", "s => { s.scrollTop = 0; }")
    page.wait_for_selector('.xl-row[data-pos="0"] .xl-cell:not(.xl-loading)')
    assert _cells(page, 2) == [token_label(words[s][2][0]) for s in range(lens.num_states)]
    # only the rows in sight are in the page
    assert page.locator(".xl-row[data-pos]").count() < 60
    assert not page.errors
    np.testing.assert_array_equal(lens.positions, np.arange(n))
