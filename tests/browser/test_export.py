"""Exported views in Chromium: the HTML opens from file:// with every other request refused (and
none made), keeps its state and stays interactive; the SVG's lines are the attention's; the PNG is 2x."""

from __future__ import annotations

import base64
import struct
import xml.etree.ElementTree as ET

import numpy as np
import pytest

import exbert_hub
from exbert_hub.views.head_view import decode_layer, encode_layer

from conftest import ARTIFACTS

pytestmark = pytest.mark.browser
TEXT = "The cat sat on the mat."


@pytest.fixture(scope="module")
def bert(tiny_engine):
    return tiny_engine("bert").analyze(TEXT)


def open_offline(page, path):
    """Open an exported file; every request is recorded, and refused unless it is the file itself."""
    url = path.resolve().as_uri()
    requests: list[str] = []

    def route(r):
        requests.append(r.request.url)
        r.continue_() if r.request.url == url else r.abort()

    page.route("**/*", route)
    page.goto(url)
    page.wait_for_selector(".xh-export-view[data-ready]", timeout=30_000)
    assert page.get_attribute(".xh-export-view", "data-ready") == "1"
    return requests, url


def test_head_view_html_offline_keeps_state_and_reacts(page, bert, tmp_path):
    path = exbert_hub.export(bert, "head", tmp_path / "head.html", layer=1, heads=[0, 2], token=3)
    requests, url = open_offline(page, path)
    root = page.locator(".xh-hv")
    assert root.get_attribute("data-layer") == "1" and root.get_attribute("data-heads") == "0,2"
    assert root.get_attribute("data-pinned") == "left:3"
    pinned_lines = int(root.get_attribute("data-lines"))
    # lines of the pinned token in heads 0 and 2 with a visible weight (as the view draws them)
    att = decode_layer(encode_layer(bert.attentions[1]))
    assert pinned_lines == int((att[[0, 2], 3] * 255 >= 0.5).sum())
    page.locator(".xh-hv .xh-head[data-head='1']").click()  # interactive without a server
    page.wait_for_function("() => document.querySelector('.xh-hv').dataset.heads === '0,1,2'")
    assert int(root.get_attribute("data-lines")) > pinned_lines
    page.select_option(".xh-hv .xh-layer", "0")
    page.wait_for_function("() => document.querySelector('.xh-hv').dataset.layer === '0'")
    assert "not sent" not in page.locator(".xh-hv .xh-status").inner_text()
    assert requests == [url] and not page.errors
    assert page.evaluate("location.search") == ""  # the page address is never written


def test_explorer_and_neuron_html_offline(page, bert, tmp_path):
    path = exbert_hub.export(bert, "explorer", tmp_path / "e.html", layer=1, heads=[1, 3], token=2, threshold=0.5)
    requests, url = open_offline(page, path)
    assert page.locator(".xb-root").get_attribute("data-renderer") == "svg"
    assert page.locator(".xb-root svg.xb-svg path").count() > 0
    assert page.locator(".xb-col-left .xb-tok[data-pos='2']").evaluate("e => e.className").count("frozen") or \
        page.locator(".xb-root").get_attribute("data-active") == "left:2"
    assert requests == [url] and not page.errors
    page.unroute("**/*")
    path = exbert_hub.export(bert, "neuron", tmp_path / "n.html", layer=1, heads=[3], token=2)
    requests, url = open_offline(page, path)
    nv = page.locator(".xh-nv")
    assert (nv.get_attribute("data-layer"), nv.get_attribute("data-head"), nv.get_attribute("data-token")) == ("1", "3", "2")
    page.locator(".xh-nv .xh-qtok[data-index='4']").click()  # another query token: answered by the page itself
    page.wait_for_function("() => document.querySelector('.xh-nv').dataset.token === '4'")
    assert requests == [url] and not page.errors


def test_model_view_html_opens_the_exported_head_at_full_precision(page, bert, tmp_path):
    path = exbert_hub.export(bert, "model", tmp_path / "m.html", layer=1, heads=[2])
    requests, url = open_offline(page, path)
    assert page.locator(".xh-mv").get_attribute("data-open") == "1,2"
    assert "full precision" in page.locator(".xh-modal-box").inner_text()
    assert requests == [url] and not page.errors


def save_svg_preview(browser, svg_path, name: str):
    """The SVG as Chromium draws it, as test-artifacts/<name>.png (for a person to look at)."""
    ARTIFACTS.mkdir(exist_ok=True)
    data = base64.b64encode(svg_path.read_bytes()).decode("ascii")
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    try:
        pg = context.new_page()
        pg.set_content(f'<body style="margin:0"><img id="i" src="data:image/svg+xml;base64,{data}"></body>')
        pg.wait_for_function("document.getElementById('i').complete")
        pg.locator("#i").screenshot(path=str(ARTIFACTS / f"{name}.png"))
    finally:
        context.close()


def test_svg_lines_are_the_attention_and_png_is_2x(browser, bert, tmp_path):
    svg_path = exbert_hub.export(bert, "head", tmp_path / "head.svg", browser=browser, layer=1, heads=[0, 2], token=3)
    tree = ET.parse(svg_path)
    ns = "{http://www.w3.org/2000/svg}"
    lines = [e for e in tree.iter(ns + "line") if e.get("stroke-opacity")]
    att = decode_layer(encode_layer(bert.attentions[1]))
    want = sorted(float(w) for w in att[[0, 2], 3].ravel() if w * 255 >= 0.5)
    got = sorted(float(e.get("stroke-opacity")) for e in lines)
    assert len(got) == len(want)
    np.testing.assert_allclose(got, np.minimum(want, 1.0), atol=6e-4)  # written with 3 decimals
    colours = {e.get("stroke") for e in lines}
    assert len(colours) == 2  # heads 0 and 2, one colour each
    texts = [e.text for e in tree.iter(ns + "text")]
    for token in ("[CLS]", "cat", "mat", "[SEP]"):
        assert token in texts  # the tokens are text, not pixels
    save_svg_preview(browser, svg_path, "export_head_svg")
    png = exbert_hub.export(bert, "head", tmp_path / "head.png", browser=browser, layer=1, heads=[0, 2], token=3).read_bytes()
    width, height = struct.unpack(">II", png[16:24])
    root = tree.getroot()
    assert abs(width - 2 * int(root.get("width"))) <= 4 and abs(height - 2 * int(root.get("height"))) <= 4
