"""The export button of each view tab, clicked in the app: the file keeps what the visitor selected."""

from __future__ import annotations

import json
from urllib.parse import urlencode

import numpy as np
import pytest

pytestmark = pytest.mark.browser

TEXT = "The cat sat on the mat."


def test_head_tab_export_button_writes_the_selected_layer_and_heads(page, explorer_app, tiny_engine):
    page.goto(explorer_app.url + "?" + urlencode({"tab": "head", "text": TEXT, "layer": 1, "heads": "2"}))
    page.wait_for_selector(".xh-hv[data-drawn]", timeout=90_000)
    page.click("#xh-export-format-head input")
    page.click('li[role=option][aria-label="numbers (.json)"]')
    page.click("#xh-export-head")
    link = page.wait_for_selector("#xh-export-file-head a[href]", timeout=60_000)
    got = json.loads(page.request.get(link.get_attribute("href")).text())
    a = tiny_engine("bert").analyze(TEXT)
    assert got["view"] == "head" and got["tokens"] == a.display_tokens
    assert got["state"]["layer"] == 1 and got["heads"] == [2]
    np.testing.assert_allclose(np.array(got["attention"]), a.attentions[1], atol=1e-6)
    assert not page.errors


def test_model_tab_exports_a_2x_png_drawn_on_the_server(page, explorer_app):
    page.goto(explorer_app.url + "?" + urlencode({"tab": "model", "text": TEXT}))
    page.wait_for_selector(".xh-mv[data-drawn]", timeout=90_000)
    page.click("#xh-export-format-model input")
    page.click('li[role=option][aria-label="PNG (2x)"]')
    page.click("#xh-export-model")
    link = page.wait_for_selector("#xh-export-file-model a[href]", timeout=90_000)
    png = page.request.get(link.get_attribute("href")).body()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width = int.from_bytes(png[16:20], "big")
    assert width >= 2 * 600  # drawn at 2x
    assert page.locator("#xh-message .xh-banner").count() == 0
    assert not page.errors
