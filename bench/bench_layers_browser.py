"""Browser benchmark of the layers view: the scatter of 20,000 points redrawn when the layer changes.

Ours: LayersView.setLayer (Plotly.update of the one scattergl trace's x/y, the tracked-token traces
and the axis ranges), timed in the page from the call until plotly has drawn and the browser has
painted (two animation frames). Reference, in the same page and run: what InterpreT/Dash do on a
slider move, a whole new figure of the same points (Plotly.react with a freshly built figure).

    .venv/bin/python bench/bench_layers_browser.py [--points 20000] [--repeats 30]

Prints one Markdown line for bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "browser")]

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

TIME_OURS = """async (layer) => {
  const api = document.querySelector('#xl-view .xl-root').__xl;
  const t0 = performance.now();
  await api.setLayer(layer);
  await new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)));
  return performance.now() - t0;
}"""

# the same points as a whole new figure (what a Dash callback sends back on every slider move)
TIME_REFERENCE = """async (layer) => {
  const gd = document.querySelector('#xl-view .xl-scatter');
  const src = gd.data[0];
  const n = src.x.length, x = new Float32Array(n), y = new Float32Array(n);
  for (let i = 0; i < n; i++) { x[i] = src.x[i] + 0.01 * layer; y[i] = src.y[i] - 0.01 * layer; }
  const t0 = performance.now();
  await Plotly.react(gd, [{type: 'scattergl', mode: 'markers', x, y, marker: {size: 5, color: src.marker.color.slice()}},
                          gd.data[1], gd.data[2]], Object.assign({}, gd.layout, {datarevision: layer + Math.random()}));
  await new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)));
  return performance.now() - t0;
}"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--points", type=int, default=20_000)
    ap.add_argument("--repeats", type=int, default=30)
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright
    from serving import launch_on_free_port
    from test_layers_tab import synthetic
    from test_layers_view import build_page

    from exbert_hub.app import launch_options

    tokens = 10
    data = synthetic(args.points // tokens, tokens=tokens, layers=6, heads=12, seed=1)
    n = len(data.models[0].points)
    demo = build_page({"one": data})
    launch_on_free_port(demo, **launch_options())
    url = demo.local_url.rstrip("/") + "/?data=one"
    try:
        with sync_playwright() as p:
            b = p.chromium.launch(executable_path=os.environ.get("EXBERT_HUB_CHROMIUM", "/usr/bin/chromium"), args=CHROMIUM_ARGS)
            page = b.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(url)
            page.wait_for_selector("#xl-view .xl-root[data-ready='1']", timeout=120_000)
            ours, ref = [], []
            for i in range(args.repeats + 2):
                layer = (i % 6) + 1
                a = page.evaluate(TIME_OURS, layer)
                r = page.evaluate(TIME_REFERENCE, layer)
                if i >= 2:  # warm-up: first draws compile shaders
                    ours.append(a)
                    ref.append(r)
            page.screenshot(path=str(ROOT / "test-artifacts" / "bench_layers_browser.png"))
            b.close()
    finally:
        demo.close()
    med, p95 = statistics.median(ours), sorted(ours)[int(0.95 * (len(ours) - 1))]
    rmed = statistics.median(ref)
    print(f"| layers view, {n:,} points, layer change | ours median {med:.0f} ms, p95 {p95:.0f} ms (target <= 200 ms: "
          f"{'met' if p95 <= 200 else 'NOT met'}) | reference (new figure, Plotly.react) median {rmed:.0f} ms | "
          f"ratio ours/reference {med / rmed:.2f} |")


if __name__ == "__main__":
    main()
