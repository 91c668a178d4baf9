"""exbert_hub.show in a real notebook: executed by nbclient on a real kernel, its outputs opened in
Chromium with every request refused; several views in one notebook draw, each in its own element."""

from __future__ import annotations

import json
import re
import shutil

import pytest

pytestmark = pytest.mark.browser
nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")


def _in_own_thread(fn):
    """Run ``fn`` in a thread of its own: Playwright's sync API refuses a thread with a running asyncio
    loop, and an earlier test of the session (a kernel client, Gradio) can leave one in the main thread."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(fn).result()


def test_views_display_inline_without_cdn_or_requirejs(tiny, tmp_path):
    model = str(tiny("bert"))
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell(
            "import exbert_hub\n"
            f"a = exbert_hub.load({model!r}).analyze('The cat sat on the mat.')"),
        nbformat.v4.new_code_cell("exbert_hub.show(a, 'head', layer=1, heads=[0, 2])"),
        nbformat.v4.new_code_cell("exbert_hub.show(a, 'head', layer=0, heads=[3])"),
        nbformat.v4.new_code_cell("exbert_hub.show(a, 'explorer', layer=1, token=2)"),
        nbformat.v4.new_code_cell("exbert_hub.show(a, 'model')"),
        nbformat.v4.new_code_cell("exbert_hub.show(a, 'neuron', layer=1, head=1, token=3)"),
    ]
    client = nbclient.NotebookClient(nb, timeout=240, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    htmls = []
    for cell in nb.cells[1:]:
        [out] = [o for o in cell.outputs if o.output_type == "execute_result"]
        htmls.append(out.data["text/html"])
    for h in htmls:
        assert "require(" not in h and "requirejs" not in h.lower()
        assert not re.search(r"""(src|href)\s*=\s*["'](https?:|//)""", h)  # no CDN
    ids = [re.search(r'id="(xh-x-[0-9a-f]+)"', h).group(1) for h in htmls]
    assert len(set(ids)) == len(ids)
    # the outputs one after another in one page, as a notebook front end shows them
    page_file = tmp_path / "notebook-outputs.html"
    page_file.write_text("<!doctype html><meta charset=utf-8><body>" +
                         "".join(f'<div class="output">{h}</div>' for h in htmls) + "</body>")
    url = page_file.as_uri()

    def open_in_chromium():
        from exbert_hub.hub.export import CHROMIUM_ARGS, chromium_path

        sync_api = pytest.importorskip("playwright.sync_api")
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
            try:
                context = browser.new_context(viewport={"width": 1300, "height": 900})
                try:
                    page = context.new_page()
                    requests = []
                    page.route("**/*", lambda r: (requests.append(r.request.url),
                                                  r.continue_() if r.request.url == url else r.abort()))
                    errors = []
                    page.on("pageerror", lambda e: errors.append(str(e)))
                    page.goto(url)
                    page.wait_for_function("() => Array.from(document.querySelectorAll('.xh-export-view'))"
                                           ".every((e) => e.dataset.ready)", timeout=60_000)
                    state = page.evaluate("""() => Array.from(document.querySelectorAll('.xh-export-view')).map((e) => ({
                        ready: e.dataset.ready, view: e.dataset.view,
                        data: Object.assign({}, (e.querySelector('.xh-hv, .xh-nv, .xh-mv, .xb-root') || {}).dataset)}))""")
                    assert [s["ready"] for s in state] == ["1"] * 5 and not errors and requests == [url]
                    head1, head2, explorer, model_view, neuron = state
                    assert (head1["data"]["layer"], head1["data"]["heads"]) == ("1", "0,2")
                    assert (head2["data"]["layer"], head2["data"]["heads"]) == ("0", "3")  # two head views, no collision
                    assert int(head1["data"]["lines"]) > 0 and int(head2["data"]["lines"]) > 0
                    assert explorer["data"]["ready"] == "1" and model_view["data"]["thumbs"] == "8"
                    assert (neuron["data"]["layer"], neuron["data"]["head"], neuron["data"]["token"]) == ("1", "1", "3")
                    page.screenshot(path=str(tmp_path / "notebook.png"), full_page=True)
                finally:
                    context.close()
            finally:
                browser.close()

    _in_own_thread(open_in_chromium)
