"""Browser benchmark of the layers view: the scatter of 20,000 points redrawn when the layer changes.

Ours: LayersView.setLayer (the view's real path: the points on a 2-D canvas under plotly's axes, the
tracked tokens' stars and paths through plotly), timed in the page from the call until the browser has
painted (two animation frames). Side by side in the same page and run, with the same decoded layers, on
a second plot of the same size drawn by plotly's scattergl with fixed axis ranges (no autorange):

  reference    what InterpreT/Dash do on a slider move: a whole new figure (Plotly.react, fresh arrays)
  gl_update    Plotly.update of x/y + selectedpoints (how the view drew before H9c)
  gl_restyle   Plotly.restyle of x/y only on the prebuilt scattergl trace
  canvas_only  ours without the stars/paths/plotly call: the canvas point layer alone

``--profile`` also records a Chromium CPU profile (CDP Profiler) of ``--profile-runs`` layer changes
and prints the functions with the most self time, grouped by script (what takes the time).

    .venv/bin/python bench/bench_layers_browser.py [--points 20000] [--repeats 30] [--profile]

Prints Markdown lines for bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "browser")]

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

PAINTED = "await new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)));"

# a second plot of the same size, colours, axes and points, drawn by plotly's scattergl (how the view drew
# before H9c, and how InterpreT draws): the variants below time it in the same page and run as ours
SETUP_GL = """() => {
  const src = document.querySelector('#xl-view .xl-scatter'), api = document.querySelector('#xl-view .xl-root').__xl;
  const c = api.coords(0, 0), r = src.getBoundingClientRect();
  const div = document.createElement('div'); div.id = 'bench-gl';
  div.style.cssText = 'width:' + r.width + 'px;height:' + r.height + 'px';
  document.querySelector('#xl-view').append(div);
  const L = src._fullLayout;
  window.__benchLayout = {margin: {l: 36, r: 8, t: 8, b: 28}, dragmode: 'lasso', showlegend: false, hovermode: 'closest',
    xaxis: {range: L.xaxis.range.slice()}, yaxis: {range: L.yaxis.range.slice()}};
  window.__benchTrace = (x, y) => ({type: 'scattergl', mode: 'markers', x, y, hoverinfo: 'none',
    marker: {size: 5, color: src.data[0].marker.color.slice(), opacity: 0.78, line: {width: 0}},
    selected: {marker: {opacity: 0.9}}, unselected: {marker: {opacity: 0.12}}});
  return Plotly.newPlot(div, [window.__benchTrace(c.x, c.y)], window.__benchLayout, {displaylogo: false}).then(() => true);
}"""

VARIANTS = {
    "ours": f"""async (layer) => {{
      const api = document.querySelector('#xl-view .xl-root').__xl;
      const t0 = performance.now();
      await api.setLayer(layer);
      {PAINTED}
      return performance.now() - t0;
    }}""",
    "reference": f"""async (layer) => {{
      const gd = document.getElementById('bench-gl');
      const c = document.querySelector('#xl-view .xl-root').__xl.coords(0, layer);
      const x = Float32Array.from(c.x), y = Float32Array.from(c.y);
      const t0 = performance.now();
      await Plotly.react(gd, [window.__benchTrace(x, y)], Object.assign({{}}, window.__benchLayout, {{datarevision: layer + Math.random()}}));
      {PAINTED}
      return performance.now() - t0;
    }}""",
    "gl_update": f"""async (layer) => {{
      const gd = document.getElementById('bench-gl');
      const c = document.querySelector('#xl-view .xl-root').__xl.coords(0, layer);
      const t0 = performance.now();
      await Plotly.update(gd, {{x: [c.x], y: [c.y], selectedpoints: [null]}}, {{}}, [0]);
      {PAINTED}
      return performance.now() - t0;
    }}""",
    "gl_restyle": f"""async (layer) => {{
      const gd = document.getElementById('bench-gl');
      const c = document.querySelector('#xl-view .xl-root').__xl.coords(0, layer);
      const t0 = performance.now();
      await Plotly.restyle(gd, {{x: [c.x], y: [c.y]}}, [0]);
      {PAINTED}
      return performance.now() - t0;
    }}""",
    "canvas_only": f"""async (layer) => {{
      const api = document.querySelector('#xl-view .xl-root').__xl;
      const gd = document.querySelector('#xl-view .xl-scatter'), c = api.coords(0, layer);
      const t0 = performance.now();
      gd.data[0].x = c.x; gd.data[0].y = c.y;
      api.redrawPoints();
      {PAINTED}
      return performance.now() - t0;
    }}""",
}


def profile(page, runs: int) -> list[tuple[str, float]]:
    """Self time (ms) per function over ``runs`` calls of setLayer, from Chromium's CPU profiler."""
    cdp = page.context.new_cdp_session(page)
    cdp.send("Profiler.enable")
    cdp.send("Profiler.setSamplingInterval", {"interval": 200})
    cdp.send("Profiler.start")
    for i in range(runs):
        page.evaluate(VARIANTS["ours"], (i % 6) + 1)
    prof = cdp.send("Profiler.stop")["profile"]
    nodes = {n["id"]: n for n in prof["nodes"]}
    dt = prof["timeDeltas"]
    self_us: dict[str, float] = defaultdict(float)
    for sid, d in zip(prof["samples"], dt[1:] + [0]):
        f = nodes[sid]["callFrame"]
        url = f["url"].rsplit("/", 1)[-1][:40] or "(native)"
        self_us[f"{f['functionName'] or '(anonymous)'} [{url}]"] += d
    total = sum(self_us.values())
    top = sorted(self_us.items(), key=lambda kv: -kv[1])[:18]
    return [(name, us / 1000 / runs) for name, us in top] + [("TOTAL per layer change", total / 1000 / runs)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--points", type=int, default=20_000)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--variants", default="ours,reference,gl_update,gl_restyle,canvas_only")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--profile-runs", type=int, default=12)
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
    names = [v for v in args.variants.split(",") if v]
    times: dict[str, list[float]] = {v: [] for v in names}
    prof = None
    try:
        with sync_playwright() as p:
            b = p.chromium.launch(executable_path=os.environ.get("EXBERT_HUB_CHROMIUM", "/usr/bin/chromium"), args=CHROMIUM_ARGS)
            page = b.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(url)
            page.wait_for_selector("#xl-view .xl-root[data-ready='1']", timeout=120_000)
            page.evaluate(SETUP_GL)
            for i in range(args.repeats + 2):
                layer = (i % 6) + 1
                for v in names:  # interleaved: every variant sees the same machine load
                    t = page.evaluate(VARIANTS[v], layer)
                    if i >= 2:  # warm-up: first draws compile shaders
                        times[v].append(t)
            if args.profile:
                prof = profile(page, args.profile_runs)
            (ROOT / "test-artifacts").mkdir(exist_ok=True)
            page.screenshot(path=str(ROOT / "test-artifacts" / "bench_layers_browser.png"))
            b.close()
    finally:
        demo.close()
    ref = statistics.median(times["reference"]) if "reference" in times else None
    print(f"| variant ({n:,} points, layer change) | median ms | p95 ms | / reference |")
    print("|---|---|---|---|")
    for v in names:
        med, p95 = statistics.median(times[v]), sorted(times[v])[int(0.95 * (len(times[v]) - 1))]
        print(f"| {v} | {med:.0f} | {p95:.0f} | {med / ref:.2f} |" if ref else f"| {v} | {med:.0f} | {p95:.0f} | - |")
    if prof:
        print("\n| function [script] (CPU profile of setLayer) | self ms per layer change |\n|---|---|")
        for name, ms in prof:
            print(f"| {name} | {ms:.1f} |")


if __name__ == "__main__":
    main()
