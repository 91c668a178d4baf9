"""The explorer and the head view at 4,096 tokens of SmolLM2 in Chromium: rows come in sparse blocks as
they scroll into view (exbert_hub/views/rows.py); what is drawn is the engine's attention."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from serving import launch_on_free_port
from tolerances import f32_rel_bound

pytestmark = pytest.mark.browser

T = 4096


@pytest.fixture(scope="module")
def long_app():
    from pydoc_data.topics import topics

    import exbert_hub
    from exbert_hub import SMOLLM2, ModelCache
    from exbert_hub.app import build_app, launch_options

    engine = exbert_hub.load(SMOLLM2, cache=ModelCache())
    ids = engine.tokenizer(" ".join(list(topics.values())[:60]))["input_ids"]
    # a text of exactly T tokens (decode/encode round trip checked)
    text = engine.tokenizer.decode(ids[:T]).strip()  # the text box trims what it is given
    while len(engine.tokenizer(text)["input_ids"]) > T:
        text = text[:-20]
    from exbert_hub.policy import Policy

    # analyses are kept in 15 % of the budget: 12 GB keeps the 4k analysis (~1 GB), so fetches never re-run it
    demo = build_app(SMOLLM2, policy=Policy.from_env(memory_budget=12_000_000_000))
    launch_on_free_port(demo, **launch_options())
    yield SimpleNamespace(url=demo.local_url.rstrip("/") + "/", text=text, engine=engine)
    demo.close()


def _analyze(page, app):
    page.goto(app.url)
    page.wait_for_selector(".xb-root[data-ready='1']", timeout=120_000)
    page.locator("#xh-text textarea").fill(app.text)
    page.locator("#xh-analyze").click()
    page.wait_for_function("(n) => { const r = document.querySelector('.xb-root');"
                           " return r.dataset.ready === '1' && r.querySelectorAll('.xb-col-left .xb-tok').length >= n; }",
                           arg=T - 8, timeout=300_000)
    # the reference: the same text analysed by an engine of our own (same weights, same code)
    return app.engine.analyze(app.text)


def test_explorer_and_head_view_at_4096_tokens(page, long_app):
    a = _analyze(page, long_app)
    n = len(a.tokens)
    assert T - 8 <= n <= T
    assert page.locator(".xb-col-left .xb-tok").count() == n  # the page shows the same tokens
    # first draw: the rows in view, from block 0
    page.wait_for_function("() => +document.querySelector('.xb-root').dataset.lines > 0", timeout=60_000)
    s = page.evaluate("() => ({...document.querySelector('.xb-root').dataset})")
    assert s["renderer"] == "canvas" and int(s["blocks"]) <= 2
    first_lines = int(s["lines"])
    # scroll to the end: the later rows' blocks are fetched and drawn
    page.evaluate("() => { const sc = document.querySelector('.xb-scroll'); sc.scrollTop = sc.scrollHeight; }")
    page.wait_for_function("() => +document.querySelector('.xb-root').dataset.blocks >= 2", timeout=60_000)
    page.wait_for_function("() => +document.querySelector('.xb-root').dataset.canvasDrawn > 0", timeout=60_000)
    # hover a row near the end: its lines are the engine's weights (layer 0, all heads' mean)
    pos = n - 3
    tok = page.locator(f".xb-col-left .xb-tok[data-pos='{pos}']")
    tok.scroll_into_view_if_needed()
    tok.dispatch_event("mouseover")  # the hover (the pointer may rest on another row after the scroll)
    page.wait_for_function(f"() => document.querySelector('.xb-root').dataset.active === 'left:{pos}'")
    # its full row (every weight of every head) is fetched for it
    page.wait_for_function("() => { const r = document.querySelector('.xb-root'); return r.dataset.exact === '1' && +r.dataset.lines > 0; }")
    drawn = page.evaluate("""() => { const r = document.querySelector('.xb-root'); return r.dataset.hoverLines; }""")
    lines = [tuple(map(float, x.split(":"))) for x in drawn.split(",") if x]
    assert lines and {int(i) for i, _, _ in lines} == {pos}
    row = np.asarray(a.attentions[0, :, pos]).mean(axis=0)  # float32[T]: the mean of the 9 heads
    got = {int(j): w for _, j, w in lines}
    assert max(got) <= pos  # causal: nothing after the token
    tol = f32_rel_bound(n)
    for j, w in got.items():
        assert w == pytest.approx(float(row[j]), abs=tol)
    # the drawn lines are the row's largest weights until 70 % of it is drawn (the explorer's rule)
    order = np.argsort(-row, kind="stable")
    k = int(np.searchsorted(np.cumsum(row[order]), 0.7 - 1e-6)) + 1
    assert sorted(got) == sorted(order[:k].tolist()) or abs(len(got) - k) <= 1
    assert first_lines > 0
    page.screenshot(path=_artifact("long_explorer_4096.png"))

    # the head view: rows in view drawn from sparse blocks, scrolling loads the end
    page.get_by_role("tab", name="Head view").click()
    page.wait_for_function("() => { const r = document.querySelector('.xh-hv'); return r && +r.dataset.lines > 0; }",
                           timeout=60_000)
    page.evaluate("() => { const sc = document.querySelector('.xh-hv .xh-lines'); sc.scrollTop = sc.scrollHeight; }")
    page.wait_for_function("() => +document.querySelector('.xh-hv').dataset.blocks >= 2", timeout=60_000)
    page.wait_for_function("() => +document.querySelector('.xh-hv').dataset.lines > 0", timeout=60_000)
    page.screenshot(path=_artifact("long_head_view_4096.png"))
    assert not page.errors


def _artifact(name: str) -> str:
    from conftest import ARTIFACTS

    ARTIFACTS.mkdir(exist_ok=True)
    return str(ARTIFACTS / name)
