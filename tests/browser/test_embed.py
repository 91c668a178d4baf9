"""Embed mode (?embed=1): one view, no page chrome, readable in a 700 x 450 iframe, a link to the full app."""

from __future__ import annotations

from urllib.parse import parse_qs, quote, urlsplit

import pytest
from conftest import ARTIFACTS

pytestmark = pytest.mark.browser
TEXT = "The cat sat on the mat."


def visible(page, selector: str) -> bool:
    return page.evaluate("""(s) => Array.from(document.querySelectorAll(s)).some((e) => {
        const r = e.getBoundingClientRect(), cs = getComputedStyle(e);
        return r.width > 0 && r.height > 0 && cs.display !== 'none' && cs.visibility !== 'hidden'; })""", selector)


def test_embed_shows_one_view_in_700_by_450(browser, explorer_app):
    context = browser.new_context(viewport={"width": 700, "height": 450})
    try:
        page = context.new_page()
        url = f"{explorer_app.url}?embed=1&tab=explorer&text={quote(TEXT)}&layer=1&token=3"
        page.goto(url)
        page.wait_for_selector(".xb-root[data-ready='1']", timeout=60_000)
        page.wait_for_timeout(300)
        page.screenshot(path=str(ARTIFACTS / "embed_explorer_700x450.png"))
        assert page.evaluate("document.documentElement.classList.contains('xh-embed')")
        for chrome in ("#xh-header", "#xh-text", "#xh-model", "#xh-analyze", "footer", "[role=tablist]"):
            assert not visible(page, chrome), chrome
        # the view starts at the top, its tokens and lines are in the window and nothing is wider than it
        box = page.locator(".xb-root").bounding_box()
        assert box["y"] < 60 and box["width"] <= 700
        assert page.evaluate("document.documentElement.scrollWidth") <= 700
        assert page.locator(".xb-root svg.xb-svg path").count() > 0
        tok = page.locator(".xb-col-left .xb-tok[data-pos='3']").bounding_box()
        assert tok and 0 < tok["y"] < 450 and tok["x"] >= 0
        link = page.locator("a.xh-embed-link")
        assert link.inner_text().strip().startswith("open full app") and link.is_visible()
        link.hover()
        q = parse_qs(urlsplit(link.get_attribute("href")).query)
        assert "embed" not in q and q["text"] == [TEXT] and q["tab"] == ["explorer"] and q["layer"] == ["1"]
        assert link.get_attribute("target") == "_blank"
        # without embed=1 the page is the full app
        page.goto(f"{explorer_app.url}?tab=explorer&text={quote(TEXT)}")
        page.wait_for_selector(".xb-root[data-ready='1']", timeout=60_000)
        assert visible(page, "#xh-text") and not page.locator("a.xh-embed-link").count()
    finally:
        context.close()


def test_embed_head_view(browser, explorer_app):
    context = browser.new_context(viewport={"width": 700, "height": 450})
    try:
        page = context.new_page()
        page.goto(f"{explorer_app.url}?embed=1&tab=head&text={quote(TEXT)}&layer=1&heads=0,2")
        page.wait_for_selector(".xh-hv[data-drawn]", timeout=60_000)
        page.wait_for_timeout(300)
        page.screenshot(path=str(ARTIFACTS / "embed_head_700x450.png"))
        assert not visible(page, "#xh-text") and not visible(page, "[role=tablist]")
        assert page.locator(".xh-hv").get_attribute("data-heads") == "0,2"
        assert page.locator(".xh-hv").bounding_box()["y"] < 60
    finally:
        context.close()
