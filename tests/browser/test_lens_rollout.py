"""Attention rollout as a layer of the explorer, in Chromium (the app on the tiny BERT)."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.browser


def test_rollout_is_selectable_in_the_explorer(page, explorer_app):
    page.goto(explorer_app.url)
    page.wait_for_selector(".xb-root[data-ready='1']", timeout=60_000)
    root = ".xb-root"
    options = page.eval_on_selector_all(".xb-layer option", "os => os.map(o => o.textContent)")
    assert options == ["0", "1", "rollout"]  # the tiny BERT has 2 layers
    before = page.get_attribute(root, "data-signature")
    page.select_option(".xb-layer", label="rollout")
    page.wait_for_function("() => document.querySelector('.xb-root').dataset.layer === '2'")
    assert page.get_attribute(root, "data-signature") != before
    assert int(page.get_attribute(root, "data-lines")) > 0
    assert "Attention rollout" in page.text_content(root)
    assert not page.errors
