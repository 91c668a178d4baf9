"""Export a view: ``exbert_hub.export(analysis, view, path, **state)``.

The format comes from the suffix of ``path``:

* ``.html``: one self-contained page (the view's own JS and CSS, common.js and the data inline, a
  Content-Security-Policy that allows no request); it opens from file:// offline and stays interactive.
* ``.svg``: the same page drawn in headless Chromium, written as vectors (text, boxes, lines; pixel
  heatmaps such as the model view's thumbnails as embedded images). For papers.
* ``.png``: the same drawing as a picture at 2x (``scale=``).
* ``.npz`` / ``.json``: the numbers the view shows (:func:`exbert_hub.hub.standalone.view_numbers`).

State (kept by every format): ``layer``, ``heads``, ``token``, ``threshold``, ``hide_special``,
``stack``, ``pair_filter``, ``theme``, ``head`` (see :class:`exbert_hub.hub.standalone.ViewState`).

    >>> a = exbert_hub.load("bert-base-uncased").analyze("The cat sat on the mat.")
    >>> exbert_hub.export(a, "head", "head.svg", layer=4, heads=[2, 7], token=3)
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ..analysis import Analysis
from ..errors import InputError
from .standalone import DEFAULT_BUDGET, ViewState, check_view, new_uid, numbers_json, standalone_page, view_numbers

FORMATS = (".html", ".svg", ".png", ".npz", ".json")
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium_path() -> str:
    """The Chromium that draws SVG/PNG exports: ``EXBERT_HUB_CHROMIUM``, else Debian's, else one on PATH."""
    for candidate in (os.environ.get("EXBERT_HUB_CHROMIUM"), CHROMIUM, shutil.which("chromium"),
                      shutil.which("chromium-browser"), shutil.which("google-chrome")):
        if candidate and Path(candidate).exists():
            return candidate
    raise InputError("SVG and PNG export need Chromium: install it (apt-get install chromium) or set "
                     "EXBERT_HUB_CHROMIUM to its path; .html, .npz and .json need nothing")


def export(analysis: Analysis, view: str, path: str | os.PathLike, *, scale: float = 2.0, width: int = 1100,
           budget: int = DEFAULT_BUDGET, browser: Any = None, **state: Any) -> Path:
    """Write ``view`` ("explorer", "head", "model" or "neuron") of ``analysis`` to ``path``; returns the path.

    scale: pixels per CSS pixel of a PNG (2: sharp on papers and high-density screens). width: the
    page width the view is laid out in (SVG/PNG). budget: characters of precomputed lazy answers an
    HTML export may carry (other stacks, full-precision heads, neuron terms of other selections).
    browser: a Playwright Chromium ``Browser`` to draw SVG/PNG in (default: one launched for this call).
    """
    check_view(view)
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise InputError(f"cannot export to {path.name!r}: give a file ending in {', '.join(FORMATS)}")
    vs = ViewState.of(**state).check(analysis)
    if suffix == ".html":
        path.write_text(standalone_page(analysis, view, vs, budget=budget), encoding="utf-8")
    elif suffix in (".svg", ".png"):
        svg, png = render_static(analysis, view, vs, svg=suffix == ".svg", png=suffix == ".png", scale=scale, width=width,
                                 browser=browser)
        if suffix == ".svg":
            path.write_text(svg, encoding="utf-8")
        else:
            path.write_bytes(png)
    else:
        numbers = view_numbers(analysis, view, vs)
        if suffix == ".json":
            path.write_text(json.dumps(numbers_json(numbers)), encoding="utf-8")
        else:
            arrays = {k: v for k, v in numbers.items() if isinstance(v, np.ndarray)}
            plain = {k: v for k, v in numbers.items() if not isinstance(v, np.ndarray)}
            np.savez_compressed(path, **arrays, meta=np.array(json.dumps(plain)))
    return path


def _loop_running() -> bool:
    import asyncio

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def render_static(analysis: Analysis, view: str, state: ViewState, *, svg: bool = True, png: bool = False,
                  scale: float = 2.0, width: int = 1100, timeout_ms: int = 60_000,
                  browser: Any = None) -> tuple[str | None, bytes | None]:
    """(SVG text, PNG bytes) of a view drawn in headless Chromium from its standalone page.

    The page is opened from a temporary file with every other request refused (none is expected).
    browser: a Playwright ``Browser`` to use (default: Chromium launched for this call and closed).
    """
    if browser is None and _loop_running():
        # a notebook's kernel runs an asyncio loop in this thread, where Playwright's sync API refuses to
        # start: draw in a thread of its own
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=1) as pool:
            return pool.submit(render_static, analysis, view, state, svg=svg, png=png, scale=scale,
                               width=width, timeout_ms=timeout_ms).result()
    if browser is None:
        from playwright.sync_api import sync_playwright

        with sync_playwright() as p:
            own = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
            try:
                return render_static(analysis, view, state, svg=svg, png=png, scale=scale, width=width,
                                     timeout_ms=timeout_ms, browser=own)
            finally:
                own.close()
    uid = new_uid()
    page_html = standalone_page(analysis, view, state, static=True, uid=uid, budget=0)
    with tempfile.TemporaryDirectory(prefix="exbert-export-") as tmp:
        file = Path(tmp) / "view.html"
        file.write_text(page_html, encoding="utf-8")
        url = file.as_uri()
        context = browser.new_context(viewport={"width": int(width), "height": 800},
                                      device_scale_factor=float(scale))
        try:
            page = context.new_page()
            page.route("**/*", lambda route: route.continue_() if route.request.url == url else route.abort())
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(url)
            page.wait_for_selector(f"#{uid}[data-ready]", timeout=timeout_ms)
            if errors or page.get_attribute(f"#{uid}", "data-ready") != "1":
                raise InputError(f"the {view} view could not be drawn for export: {'; '.join(errors) or 'it did not finish'}")
            # the whole view in the window, so sticky canvases draw every row
            height = page.evaluate(f"Math.ceil(document.getElementById('{uid}-box').getBoundingClientRect().bottom) + 16")
            page.set_viewport_size({"width": int(width), "height": int(min(max(height, 200), 16000))})
            page.evaluate("() => new Promise((r) => { window.dispatchEvent(new Event('resize')); "
                          "setTimeout(() => requestAnimationFrame(() => requestAnimationFrame(r)), 250); })")
            svg_text = page.evaluate(f"window.exbertHubExport.toSVG('{uid}')") if svg else None
            png_bytes = page.locator(f"#{uid}-box").screenshot(type="png") if png else None
        finally:
            context.close()
    return svg_text, png_bytes
