"""What a visitor of a public app sees when things go wrong: one line of text, once, in a slot that
never moves the page, and a page whose parts agree."""

from __future__ import annotations

from urllib.parse import urlencode, urlparse

import pytest

pytestmark = pytest.mark.browser

TEXT = "The cat sat on the mat because it was tired."
EVIL = ('<a href="http://127.0.0.1:9/evil" id="evil-link">click</a><img src="http://127.0.0.1:9/evil.png" id="evil-img">'
        '<form id="evil-form"><input type="password"></form> [md](http://127.0.0.1:9/md) ![](http://127.0.0.1:9/i.png)')


@pytest.fixture(scope="module")
def encoder_app():
    """The app on the packaged MiniLM (an encoder: it cannot mask)."""
    from types import SimpleNamespace

    import exbert_hub
    from exbert_hub.app import AnalysisStore, build_app, launch_options

    demo = build_app(exbert_hub.MINILM, store=AnalysisStore(max_items=4))
    demo.launch(prevent_thread_lock=True, quiet=True, **launch_options())  # gradio finds a free port
    yield SimpleNamespace(url=demo.local_url.rstrip("/") + "/", model=exbert_hub.MINILM, demo=demo)
    demo.close()


def _open(page, app, **params):
    page.goto(app.url + ("?" + urlencode(params) if params else ""))
    page.wait_for_selector(".xb-root[data-ready='1']", timeout=60_000)


def _banner(page) -> str:
    return page.evaluate("() => (document.querySelector('#xh-message .xh-banner') || {}).textContent || ''")


def _toasts(page) -> int:
    return page.evaluate("() => document.querySelectorAll('.toast-body, [data-testid=\"toast-body\"]').length")


def test_markup_in_a_shared_link_is_shown_as_text(page, explorer_app):
    requests = []
    page.on("request", lambda r: requests.append(r.url))
    _open(page, explorer_app, model=EVIL, text=TEXT)
    page.wait_for_function("() => !!document.querySelector('#xh-message .xh-banner')")
    banner = _banner(page)
    assert "<a href=" in banner and "<img src=" in banner and "[md](" in banner  # the characters, as text
    assert page.evaluate("() => !document.querySelector('#evil-link, #evil-img, #evil-form, #xh-message a, "
                         "#xh-message img, #xh-message form, #xh-message input')")
    page.wait_for_timeout(500)
    assert not [u for u in requests if urlparse(u).netloc == "127.0.0.1:9"]  # nothing fetched from the link's host
    assert _toasts(page) == 0
    # the link's bad model fell back to the app's model, and the page says which
    assert page.input_value("#xh-model textarea, #xh-model input") == explorer_app.model
    assert not page.dialogs


def test_unknown_model_is_one_line_once_and_the_page_stays_consistent(page, explorer_app):
    _open(page, explorer_app, text=TEXT)
    tabs_y = page.locator("#xh-tabs").bounding_box()["y"]
    box = page.locator("#xh-model textarea, #xh-model input").first
    box.fill("no-such-model-anywhere-12345")
    page.click("#xh-analyze")
    page.wait_for_function("() => !!document.querySelector('#xh-message .xh-banner')")
    banner = _banner(page)
    assert "no-such-model-anywhere-12345" in banner and "\n" not in banner.strip()
    assert page.evaluate("() => document.querySelector('#xh-message .xh-banner').getClientRects().length") == 1
    assert page.evaluate("() => { const b = document.querySelector('#xh-message .xh-banner');"
                         " return b.scrollHeight <= 2 * parseFloat(getComputedStyle(b).lineHeight); }")
    page.wait_for_timeout(700)
    assert _toasts(page) == 0  # no second copy of the message over the Analyze button
    # the model box says what the views show
    assert box.input_value() == explorer_app.model
    # the banner has its own slot: nothing under it moved
    assert abs(page.locator("#xh-tabs").bounding_box()["y"] - tabs_y) < 1
    # and it goes when the next action succeeds
    page.click("#xh-analyze")
    page.wait_for_function("() => !document.querySelector('#xh-message .xh-banner')")
    assert abs(page.locator("#xh-tabs").bounding_box()["y"] - tabs_y) < 1


def test_mask_link_on_a_model_that_cannot_mask_shows_the_text_unmasked(page, encoder_app):
    _open(page, encoder_app, text=TEXT, mask="2")
    page.wait_for_function("() => !!document.querySelector('#xh-message .xh-banner')")
    assert "cannot mask" in _banner(page) and "an encoder" in _banner(page)
    left = page.evaluate("() => Array.from(document.querySelectorAll('.xb-col-left .xb-tok')).map(t => t.textContent)")
    assert len(left) == 13 and "cat" in " ".join(left) and "[MASK]" not in left
    assert int(page.evaluate("() => document.querySelector('.xb-root').dataset.lines")) > 0
