"""Explorer and head view at 1k/2k/4k SmolLM2 tokens: payload bytes and time to first draw in Chromium.

Each view's value (what the page receives for an analysis) and the lazy fetches of its first draw are
counted as JSON bytes; the time to first draw is measured in the page, from the click that delivers the
(precomputed) value to the first frame with lines. Beside it: the bytes one dense uint8 layer would take
(what the views sent before row blocks), as the reference.

    HF_HUB_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False .venv/bin/python bench/bench_views_long.py
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import gradio as gr  # noqa: E402

import exbert_hub  # noqa: E402
from exbert_hub import SMOLLM2, ModelCache  # noqa: E402
from exbert_hub.views.explorer import ExplorerView, explorer_payload, layer_payload, rows_payload  # noqa: E402
from exbert_hub.views.head_view import AnalysisStore, HeadView, head_view_layer_payload, head_view_payload  # noqa: E402
from exbert_hub.views.rows import block_payload, is_long  # noqa: E402
from exbert_hub.views import common_head  # noqa: E402


def main() -> None:
    from pydoc_data.topics import topics
    from playwright.sync_api import sync_playwright
    from serving import launch_on_free_port

    engine = exbert_hub.load(SMOLLM2, cache=ModelCache())
    ids = engine.tokenizer(" ".join(list(topics.values())[:60]))["input_ids"]
    store = AnalysisStore(max_items=4, max_bytes=10**10)
    analyses = {}
    for n in (1024, 2048, 4096):
        analyses[n] = engine.analyze(engine.tokenizer.decode(ids[:n]), truncate=True)

    def fetch(data):
        a = store.get(data["key"])
        if data.get("block") is not None or data.get("row") is not None:
            return {"key": data["key"], "layer": data["layer"], "rows": rows_payload(a, data["layer"], data.get("block"), data.get("row"))}
        return {"key": data["key"], "layer": data["layer"], "attention": layer_payload(a, data["layer"])}
    fetch.__name__ = "explorer_layer"

    with gr.Blocks() as demo:
        which = gr.Number(value=0, elem_id="which")
        b_ex = gr.Button("explorer", elem_id="b-ex")
        b_hv = gr.Button("head", elem_id="b-hv")
        ex = ExplorerView(None, fetch_layer=fetch, elem_id="ex")
        hv = HeadView(None, store=store, elem_id="hv")
        b_ex.click(lambda n: explorer_payload(analyses[int(n)], key=store.put(analyses[int(n)])), which, ex)
        b_hv.click(lambda n: head_view_payload(analyses[int(n)], key=store.put(analyses[int(n)])), which, hv)
    launch_on_free_port(demo, head=common_head())
    rows = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--headless", "--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(demo.local_url)
        page.wait_for_selector("#b-ex")
        for n, a in analyses.items():
            key = store.put(a)
            st = a.main_stack
            long = is_long(st)
            ex_value = len(json.dumps(explorer_payload(a, key=key)))
            hv_value = len(json.dumps(head_view_payload(a, key=key)))
            # the first draw's fetches: the blocks of the rows in view (1 at 64 rows a block), or nothing
            first_fetch = len(json.dumps(block_payload(a, "self", 0, 0))) if long else 0
            dense = st.num_heads * st.q_len * st.k_len
            times = {}
            for view, btn, sel in (("explorer", "#b-ex", "#ex .xb-root"), ("head", "#b-hv", "#hv .xh-hv")):
                page.fill("#which input", str(n))
                page.evaluate("(sel) => { const r = document.querySelector(sel); if (r) { r.dataset.lines = '0'; r.dataset.drawn = '0'; } }", sel)
                t0 = page.evaluate("() => performance.now()")
                page.click(btn)
                try:
                    page.wait_for_function(
                        "([sel, n]) => { const r = document.querySelector(sel); return r && +r.dataset.lines > 0 &&"
                        " (r.querySelectorAll('.xb-tok, .xh-left .xh-tok').length >= n * (sel.includes('xb') ? 2 : 1) - 16); }",
                        arg=[sel, n], timeout=120_000)
                except Exception:
                    print("stuck", view, n, page.evaluate("(sel) => { const r = document.querySelector(sel); return r && {...r.dataset,"
                          " toks: r.querySelectorAll('.xb-tok, .xh-left .xh-tok').length, status: (r.querySelector('.xb-status, .xh-status') || {}).textContent}; }", sel))
                    raise
                t1 = page.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(() => r(performance.now()))))")
                times[view] = (t1 - t0) / 1000
            rows.append((n, long, ex_value, hv_value, first_fetch, dense, times["explorer"], times["head"]))
            print(rows[-1], flush=True)
        browser.close()
    demo.close()
    print("\n| tokens | mode | explorer value | head view value | first draw's fetches | one dense uint8 layer (before) | explorer first draw | head view first draw |")
    print("|---|---|---|---|---|---|---|---|")
    for n, long, ev, hvv, ff, dense, te, th in rows:
        print(f"| {n:,} | {'row blocks' if long else 'whole layer'} | {ev / 1e6:.2f} MB | {hvv / 1e6:.2f} MB | {ff / 1e6:.2f} MB | "
              f"{dense / 1e6:.1f} MB | {te:.2f} s | {th:.2f} s |")


if __name__ == "__main__":
    main()
