/* exbert-hub layers view. Runs as the body of js_on_load(element, trigger, props, server, upload, watch),
 * after the head view's line panel (layers_view.py prepends it). Value: layers_payload(...) (layers_view.py).
 * Text from the data (tokens, sentences, labels) is only ever set with textContent.
 *
 * For tests and benchmarks the root element carries `__xl`: {setLayer(l) -> Promise (resolves once drawn),
 * setColor(name), setExample(e), select(examples | null), openHead(layer, head), state()}.
 */
(function layersView() {
  const root = element.querySelector(".xl-root") || element;
  const CAT = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7",
    "#9c755f", "#2f4b7c", "#a05195", "#008f7a", "#d45087", "#665191", "#b5a000", "#0086ad",
    "#c0392b", "#16a085", "#8e6c00", "#6a3d9a", "#1f78b4", "#e377c2", "#17becf", "#8c564b"];
  const FIXED = { "": "#c3c7cf", other: "#8a8f98", correct: "#2e9e5b", wrong: "#d6404e", A: "#1f6fd1", B: "#e8710a" };
  const MAX_ROWS = 300;
  let S = null;
  let fetchId = 0;

  const el = (tag, cls, text) => xhEl(tag, cls, text);
  const hub = () => window.exbertHub;
  function b64(s) { return xhB64(s); }
  function u32(s) { const b = b64(s); return new Uint32Array(b.buffer, b.byteOffset, b.byteLength / 4); }
  function u16(s) { const b = b64(s); return new Uint16Array(b.buffer, b.byteOffset, b.byteLength / 2); }
  function f32(p) { const b = b64(p.b64); return { shape: p.shape.map(Number), data: new Float32Array(b.buffer, b.byteOffset, b.byteLength / 4) }; }
  function codes(c) { return c.dtype === "uint16" ? u16(c.codes) : b64(c.codes); }
  function fmt(v) {
    if (v == null || !isFinite(v)) return "\u2013";
    const a = Math.abs(v);
    return a !== 0 && (a < 0.001 || a >= 10000) ? v.toExponential(2) : v.toPrecision(3);
  }
  function decodeCoords(c) {
    const q = u16(c.b64), n = c.n, x = new Float32Array(n), y = new Float32Array(n);
    const [lx, ly] = c.lo, sx = (c.hi[0] - lx) / 65535, sy = (c.hi[1] - ly) / 65535;
    for (let i = 0; i < n; i++) { x[i] = lx + q[2 * i] * sx; y[i] = ly + q[2 * i + 1] * sy; }
    return { x, y, lo: c.lo, hi: c.hi };
  }
  function colorOf(name, i) { return name in FIXED ? FIXED[name] : CAT[i % CAT.length]; }

  // --- plotly.js, from the plotly package through a server function, cached by the browser ----
  async function loadPlotly(version) {
    if (window.Plotly) return window.Plotly;
    if (!window.__xlPlotly) {
      window.__xlPlotly = (async () => {
        const cacheKey = "exbert-hub-plotly-" + (version || "x") + ".js";
        let js = null, cache = null;
        try { if (window.caches) { cache = await caches.open("exbert-hub"); const r = await cache.match(cacheKey); if (r) js = await r.text(); } } catch (err) { cache = null; }
        if (!js) {
          const res = await server.layers_plotly(version || null);
          js = res && res.js;
          if (!js) throw new Error("plotly.js could not be loaded");
          if (cache) cache.put(cacheKey, new Response(js, { headers: { "Content-Type": "text/javascript" } })).catch(() => {});
        }
        const url = URL.createObjectURL(new Blob([js], { type: "text/javascript" }));
        await new Promise((ok, bad) => {
          const s = document.createElement("script");
          s.src = url; s.onload = ok; s.onerror = () => bad(new Error("plotly.js did not run"));
          document.head.append(s);
        });
        return window.Plotly;
      })();
      window.__xlPlotly.catch(() => { window.__xlPlotly = null; });
    }
    return window.__xlPlotly;
  }

  function message(cls, text) { root.replaceChildren(el("div", cls, text)); }

  // --- state from a payload ----------------------------------------------------------------------
  function render(value) {
    if (!value || typeof value !== "object") { S = null; message("xl-empty", "Choose an example set and press Analyze examples to see its layers."); return; }
    if (value.error) { S = null; message("xl-error", value.error); return; }
    if (!window.exbertHub) { message("xl-error", "exbert-hub: common.js is not loaded on this page"); return; }
    const models = value.models.map((m) => {
      const p = m.points;
      const coords = new Map();
      for (const [l, c] of Object.entries(m.coords)) coords.set(Number(l), decodeCoords(c));
      const stats = new Map();
      for (const [s, a] of Object.entries(m.stats)) stats.set(s, f32(a));
      const dist = {};
      for (const [d, a] of Object.entries(m.distances)) dist[d] = f32(a);
      const colors = {};
      for (const [name, c] of Object.entries(p.colors)) colors[name] = { categories: c.categories, codes: codes(c) };
      const ex = u32(p.example);
      const byExample = new Map();
      for (let i = 0; i < p.n; i++) { const e = ex[i]; if (!byExample.has(e)) byExample.set(e, []); byExample.get(e).push(i); }
      return {
        name: m.name, layers: m.layers, heads: m.heads, states: m.states, method: m.method, n: p.n,
        example: ex, token: p.token_dtype === "uint32" ? u32(p.token) : u16(p.token), offsets: u32(p.offsets), text: p.text,
        colors, coords, stats, dist, byExample, predictions: m.predictions, probabilities: m.probabilities,
        statistics: m.statistics, canOpen: m.can_open, plot: null, pending: new Map(),
        align: m.align ? { indptr: u32(m.align.indptr), indices: u32(m.align.indices) } : null,
      };
    });
    const ex = value.examples;
    S = {
      key: value.key, title: value.title, n: ex.n, texts: ex.texts, pairs: ex.pairs, columns: ex.columns, gold: ex.gold,
      models, plotlyVersion: value.plotly, diffOk: !!value.diff_ok,
      layer: value.layer, statistic: value.statistic, example: value.example, color: value.color,
      selection: value.selection ? new Set(value.selection) : null,
      summaryModel: "0", metric: Object.keys(models[0].dist)[0] || null, groupBy: ex.gold || null,
      head: value.head, openRes: null, drawn: 0,
    };
    fromUrl();
    if (value.link && Object.keys(value.link).length) hub().setUrlParams(value.link);
    build();
  }

  // --- deep links: ly_layer, ly_stat, ly_example, ly_head ("layer,head"), ly_color -------------------
  function fromUrl() {
    const q = hub().urlParams();
    const int = (k, n) => { const v = parseInt(q.get(k), 10); return Number.isInteger(v) && v >= 0 && v < n ? v : null; };
    const l = int("ly_layer", S.models[0].states); if (l != null) S.layer = l;
    const e = int("ly_example", S.n); if (e != null) S.example = e;
    const st = q.get("ly_stat"); if (st && S.models[0].statistics.includes(st)) S.statistic = st;
    const c = q.get("ly_color"); if (c && c in S.models[0].colors) S.color = c;
    const h = (q.get("ly_head") || "").split(",").map((x) => parseInt(x, 10));
    const m = S.models[0];
    if (h.length === 2 && h.every(Number.isInteger) && h[0] >= 0 && h[0] < m.layers && h[1] >= 0 && h[1] < m.heads) S.head = h;
  }
  function toUrl() {
    hub().setUrlParams({ ly_layer: S.layer, ly_stat: S.statistic, ly_example: S.example, ly_color: S.color,
      ly_head: S.head ? S.head.join(",") : null });
    fixGradients();
  }
  // plotly fills colour bars with url(<page address>#gradient); once the address changes (deep-link
  // parameters) those fills point at another page and the bars go blank: point them at this document
  function fixGradients() {
    for (const n of root.querySelectorAll(".js-plotly-plot [style*='url(']")) {
      const f = n.style.fill;
      const m = /url\(["']?[^"')]*#([^"')]+)["']?\)/.exec(f || "");
      if (m) n.style.fill = "url(#" + m[1] + ")";
    }
  }

  // --- layout --------------------------------------------------------------------------------------
  function select(label, options, current, onchange, cls) {
    const wrap = el("label", cls || null);
    wrap.append(el("span", "xl-field-name", label));
    const s = el("select");
    for (const [v, text] of options) {
      const o = el("option", null, text);
      o.value = String(v);
      if (String(v) === String(current)) o.selected = true;
      s.append(o);
    }
    s.addEventListener("change", () => onchange(s.value));
    wrap.append(s);
    return { wrap, input: s };
  }

  function build() {
    root.replaceChildren();
    const bar = el("div", "xl-toolbar xh-toolbar");
    // layer slider
    const lw = el("label", "xl-layer");
    lw.append(el("span", "xl-field-name", "Layer"));
    const slider = el("input", "xl-slider");
    slider.type = "range"; slider.min = "0"; slider.max = String(S.models[0].states - 1); slider.step = "1"; slider.value = String(S.layer);
    slider.setAttribute("aria-label", "Layer (0 = embeddings)");
    const lval = el("span", "xl-layer-value");
    lw.append(slider, lval);
    slider.addEventListener("input", () => setLayer(Number(slider.value)));
    bar.append(lw);
    S.slider = slider; S.layerLabel = lval;
    // colour by
    const names = Object.keys(S.models[0].colors);
    const pretty = { span: "span", prediction: "prediction", correct: "correct / wrong" };
    const color = select("Colour by", names.map((n) => [n, pretty[n] || n]), S.color, (v) => setColor(v), "xl-color");
    bar.append(color.wrap);
    S.colorSelect = color.input;
    // tracked example
    const exOpts = S.texts.map((t, i) => [i, "#" + i + "  " + (t.length > 48 ? t.slice(0, 47) + "\u2026" : t)]);
    const exs = select("Example", exOpts, S.example, (v) => setExample(Number(v)), "xl-example");
    bar.append(exs.wrap);
    S.exampleSelect = exs.input;
    const clear = el("button", "xh-btn xl-clear", "Select all");
    clear.type = "button";
    clear.addEventListener("click", () => selectExamples(null, true));
    bar.append(clear);
    S.selInfo = el("span", "xl-selinfo");
    bar.append(S.selInfo);
    root.append(bar);
    if (S.title) root.append(el("div", "xl-title", S.title));

    // scatter(s) and legend
    const top = el("div", "xl-row xl-top");
    const scat = el("div", "xl-scatters" + (S.models.length > 1 ? " xl-two" : ""));
    S.models.forEach((m, i) => {
      const box = el("div", "xl-panel xl-scatter-box");
      const title = el("div", "xl-panel-title xl-scatter-title");
      // the layer before the method: a long model name may cut the end of the title
      m.layerEl = el("span", "xl-model-layer", "");  // this model's hidden state (B: matched by relative depth)
      title.append(m.layerEl, el("span", null, " \u00b7 " + String(m.method || "").toUpperCase() + " of the tracked tokens \u00b7 "),
        el("span", "xl-model-name", (S.models.length > 1 ? (i ? "B: " : "A: ") : "") + m.name));
      title.title = m.name;
      box.append(title);
      const wrap = el("div", "xl-scatter-wrap");
      const div = el("div", "xl-scatter");
      div.dataset.model = String(i);
      // the tokens aligned with the hovered / clicked one (the other model's words), drawn over the plot
      m.overlay = document.createElementNS("http://www.w3.org/2000/svg", "svg");
      m.overlay.setAttribute("class", "xl-overlay");
      m.overlay.setAttribute("aria-hidden", "true");
      m.canvas = el("canvas", "xl-points");
      m.canvas.setAttribute("aria-hidden", "true");
      wrap.append(m.canvas, div, m.overlay);
      box.append(wrap);
      scat.append(box);
      m.div = div;
    });
    S.legend = el("div", "xl-legend");
    scat.append(S.legend);
    S.hint = el("div", "xh-hint", "Drag to lasso examples (box select and zoom in the plot's toolbar); double-click the plot to select all. Click a point to track its example."
      + (S.models.length > 1 ? " Hovering or clicking a token rings the tokens of the same words in the other model." : ""));
    scat.append(S.hint);
    top.append(scat);
    // head summary
    const hs = el("div", "xl-panel xl-summary-box");
    const hsBar = el("div", "xl-panel-bar");
    hsBar.append(el("span", "xl-panel-title", "Head summary"));
    const statSel = select("Statistic", S.models[0].statistics.map((s) => [s, s]), S.statistic, (v) => setStatistic(v), "xl-stat");
    hsBar.append(statSel.wrap);
    S.statSelect = statSel.input;
    if (S.models.length > 1) {
      const opts = [["0", "A"], ["1", "B"]];
      if (S.diffOk) opts.push(["diff", "A \u2212 B"]);
      const ms = select("Model", opts, S.summaryModel, (v) => { S.summaryModel = v; drawSummary(); }, "xl-summary-model");
      hsBar.append(ms.wrap);
    }
    hs.append(hsBar);
    S.summaryDiv = el("div", "xl-summary");
    hs.append(S.summaryDiv);
    hs.append(el("div", "xh-hint", "Mean over the selected examples. Click a cell to open that head for the tracked example."));
    const two = S.models.length > 1;
    if (!two) top.append(hs);  // two models: the scatters take the whole width, the summary goes below
    root.append(top);

    // distances and the opened head
    const mid = el("div", "xl-row");
    const dbox = el("div", "xl-panel xl-dist-box");
    const dBar = el("div", "xl-panel-bar");
    dBar.append(el("span", "xl-panel-title", "Distance of span A to span B per layer"));
    const metrics = Object.keys(S.models[0].dist);
    if (metrics.length) {
      const ms = select("Distance", metrics.map((d) => [d, d]), S.metric, (v) => { S.metric = v; drawDistances(); }, "xl-metric");
      dBar.append(ms.wrap);
      const cols = Object.keys(S.columns);
      const gs = select("Group by", [["", "none"]].concat(cols.map((c) => [c, c])), S.groupBy || "", (v) => { S.groupBy = v || null; drawDistances(); }, "xl-groupby");
      dBar.append(gs.wrap);
    }
    dbox.append(dBar);
    S.distDiv = el("div", "xl-dist");
    dbox.append(S.distDiv);
    S.headBox = el("div", "xl-panel xl-head-box");
    // without two spans there is nothing to plot: a one-line note instead of an empty panel
    const noDist = el("div", "xh-hint xl-no-dist", "Distances per layer need two span columns (span A, span B) in the example set.");
    if (two) {
      const heads = el("div", "xl-row xl-heads-row");
      heads.append(hs, S.headBox);
      root.append(heads);
      if (metrics.length) { mid.append(dbox); root.append(mid); } else root.append(noDist);
    } else {
      if (metrics.length) mid.append(dbox); else root.append(noDist);
      mid.append(S.headBox);
      root.append(mid);
    }

    // table
    S.tableBox = el("div", "xl-panel xl-table-box");
    root.append(S.tableBox);
    S.tooltip = el("div", "xl-tooltip");
    S.tooltip.hidden = true;
    root.append(S.tooltip);

    root.__xl = api();
    drawLegend();
    drawHeadBox();
    drawTable();
    updateSelInfo();
    loadPlotly(S.plotlyVersion).then(() => {
      if (!S) return;
      for (const m of S.models) initScatter(m);
      drawSummary();
      drawDistances();
      setLayer(S.layer, true);
      if (S.head) openHead(S.head[0], S.head[1]);
      root.dataset.ready = "1";
    }).catch((err) => { root.prepend(el("div", "xl-error", "The plots need plotly.js: " + (err && err.message || err))); });
  }

  function plotTheme() {
    const cs = getComputedStyle(root);
    const fg = cs.color || "#1f2328";
    return {
      paper_bgcolor: "rgba(0,0,0,0)", plot_bgcolor: "rgba(0,0,0,0)",
      font: { family: cs.fontFamily || "system-ui, sans-serif", size: 12, color: fg },
    };
  }
  const CONFIG = { displaylogo: false, responsive: true, scrollZoom: false,
    modeBarButtonsToRemove: ["toImage", "autoScale2d", "resetScale2d"] };

  // --- the scatter ---------------------------------------------------------------------------------
  function pointColors(m) {
    const c = m.colors[S.color];
    const palette = c.categories.map(colorOf);
    const out = new Array(m.n);
    for (let i = 0; i < m.n; i++) out[i] = palette[c.codes[i]];
    return out;
  }
  function selectedPoints(m) {
    if (!S.selection) return null;
    const out = [];
    for (const e of S.selection) { const pts = m.byExample.get(e); if (pts) for (const i of pts) out.push(i); }
    return out.sort((a, b) => a - b);
  }
  // model B's hidden state at the same relative depth as A's (embeddings <-> embeddings, last <-> last):
  // round(l * (SB - 1) / (SA - 1)) over the numbers of hidden states (layers_view.matched_layer)
  function matchedLayer(l, sa, sb) { return sa <= 1 ? 0 : Math.floor(l * (sb - 1) / (sa - 1) + 0.5); }
  function layerOf(m) { return m === S.models[0] ? S.layer : matchedLayer(S.layer, S.models[0].states, m.states); }
  function layerText(l, m) { return l === 0 ? "0 \u00b7 embeddings" : l + " of " + (m.states - 1); }

  // --- words in common between the two models (different tokenizers: by character offsets) -------------
  function alignedOf(m, i) {
    if (!m.align) return [];
    const a = m.align, out = [];
    for (let k = a.indptr[i]; k < a.indptr[i + 1]; k++) out.push(a.indices[k]);
    return out;
  }
  // which points of model m to ring: the hovered (else the clicked) token in its own model, and in the
  // other model the tokens of the same words
  function marksFor(m) {
    const f = S.focus || S.pin;
    if (!f || S.models.length < 2) return [];
    return f.model === m ? [f.point] : alignedOf(f.model, f.point);
  }
  function drawMarks() {
    if (!S) return;
    for (const m of S.models) {
      const svg = m.overlay, gd = m.div, L = gd && gd._fullLayout;
      if (!svg) continue;
      svg.replaceChildren();
      const pts = marksFor(m);
      gd.dataset.marked = pts.join(",");
      const c = m.coords.get(layerOf(m));
      if (!L || !L.xaxis || !L.xaxis.l2p || !c || !pts.length) continue;
      const own = (S.focus || S.pin).model === m;
      for (const i of pts) {
        const ring = document.createElementNS("http://www.w3.org/2000/svg", "circle");
        ring.setAttribute("cx", String(L._size.l + L.xaxis.l2p(c.x[i])));
        ring.setAttribute("cy", String(L._size.t + L.yaxis.l2p(c.y[i])));
        ring.setAttribute("r", own ? "8" : "7");
        ring.setAttribute("class", own ? "xl-mark-own" : "xl-mark-aligned");
        svg.append(ring);
      }
    }
  }

  function initScatter(m) {
    const layout = Object.assign(plotTheme(), {
      margin: { l: 36, r: 8, t: 8, b: 28 }, dragmode: "lasso", showlegend: false, hovermode: false,
      xaxis: { zeroline: false, showgrid: true, gridcolor: "rgba(128,128,128,0.15)", automargin: true },
      yaxis: { zeroline: false, showgrid: true, gridcolor: "rgba(128,128,128,0.15)", automargin: true },
      uirevision: "keep",
    });
    // trace 0 holds the points (x, y, marker.color, selectedpoints) but plotly does not draw it (hidden, so
    // plotly makes no WebGL context at all): the canvas under the axes draws exactly these arrays. A
    // scattergl redraw of 20k points took ~160-200 ms in software WebGL, the canvas a few ms
    // (bench/bench_layers_browser.py); hover, click and lasso are computed here from the same arrays
    const traces = [
      { type: "scatter", mode: "markers", x: [], y: [], hoverinfo: "none", name: "tokens", visible: false,
        marker: { size: 5, color: pointColors(m), opacity: 0.78, line: { width: 0 } },
        selected: { marker: { opacity: 0.9 } }, unselected: { marker: { opacity: 0.12 } } },
      { type: "scatter", mode: "lines", x: [], y: [], hoverinfo: "skip", name: "path",
        line: { color: "rgba(60,60,60,0.25)", width: 1 } },
      { type: "scatter", mode: "markers+text", x: [], y: [], text: [], textposition: "top center", hoverinfo: "none",
        name: "tracked", cliponaxis: false, textfont: { size: 12 },
        marker: { symbol: "star", size: 14, color: "#111827", line: { color: "#ffffff", width: 1.2 } } },
    ];
    Plotly.newPlot(m.div, traces, layout, CONFIG);
    m.plot = m.div;
    let pending = null, down = null;
    const unhover = () => { S.tooltip.hidden = true; if (S.focus) { S.focus = null; drawMarks(); } };
    m.div.addEventListener("mousemove", (ev) => {
      if (ev.buttons) return;  // dragging a lasso
      pending = ev;
      if (m.hoverFrame) return;
      m.hoverFrame = requestAnimationFrame(() => {
        m.hoverFrame = 0;
        const i = nearestPoint(m, pending.clientX, pending.clientY);
        if (i == null) unhover(); else if (!S.focus || S.focus.model !== m || S.focus.point !== i) hover(m, i, pending);
        else placeTip(pending);
      });
    });
    m.div.addEventListener("mouseleave", unhover);
    m.div.addEventListener("mousedown", (ev) => { down = [ev.clientX, ev.clientY]; });
    m.div.addEventListener("click", (ev) => {
      // plotly re-dispatches a click after a press without a drag; a lasso ends with a drag
      if (down && Math.hypot(ev.clientX - down[0], ev.clientY - down[1]) > 4) return;
      const i = nearestPoint(m, ev.clientX, ev.clientY);
      if (i == null) return;
      setExample(m.example[i]);
      trackToken(m, i);
    });
    m.div.on("plotly_relayout", () => { drawPoints(m); drawMarks(); });
    m.div.on("plotly_selected", (ev) => {
      // a click without a drag, or plotly re-reporting after the view dropped its outline
      if (!ev || S.quiet) return;
      const inside = insideSelection(m, ev);
      if (inside == null) return;
      const exs = new Set();
      for (const i of inside) exs.add(m.example[i]);
      if (exs.size) selectExamples(Array.from(exs), true, m);
    });
    m.div.on("plotly_deselect", () => { if (!S.quiet) selectExamples(null, true, m); });
    m.div.on("plotly_selecting", () => { S.tooltip.hidden = true; });
    if (window.ResizeObserver) new ResizeObserver(() => { drawPoints(m); drawMarks(); }).observe(m.div);
  }

  // --- the canvas point layer: draws trace 0's x, y, marker.color and selectedpoints ----------------
  const POINT_R = 2.5;  // marker size 5
  // the pixels of one dot (radius r device pixels) with their anti-aliased coverage, 4x4 supersampled
  function discOf(r) {
    const out = [], R = Math.ceil(r);
    for (let dy = -R; dy <= R; dy++) for (let dx = -R; dx <= R; dx++) {
      let cov = 0;
      for (let sy = 0; sy < 4; sy++) for (let sx = 0; sx < 4; sx++) {
        const ox = dx + (sx + 0.5) / 4 - 0.5, oy = dy + (sy + 0.5) / 4 - 0.5;
        if (ox * ox + oy * oy <= r * r) cov++;
      }
      if (cov) out.push(dx, dy, cov / 16);
    }
    return out;
  }
  const RGB = new Map();
  function rgbOf(c) {
    let v = RGB.get(c);
    if (!v) { const h = /^#([0-9a-f]{6})$/i.exec(c); const n = h ? parseInt(h[1], 16) : 0x8a8f98; v = [n >> 16, (n >> 8) & 255, n & 255]; RGB.set(c, v); }
    return v;
  }
  // One pass over the points writing straight into the canvas's pixels (source-over blending by hand):
  // 20k dots in a few ms where 20k drawImage/arc calls take 30-70 ms in a software-rendered canvas.
  function drawPoints(m) {
    const gd = m.div, L = gd && gd._fullLayout, t = gd && gd.data && gd.data[0];
    if (!L || !L.xaxis || !L.xaxis.range || !t || !m.canvas) return;
    const dpr = window.devicePixelRatio || 1, sz = L._size, cv = m.canvas;
    const w = Math.max(1, Math.round(sz.w * dpr)), h = Math.max(1, Math.round(sz.h * dpr));
    if (cv.width !== w || cv.height !== h) { cv.width = w; cv.height = h; m.pixels = null; }
    cv.style.left = sz.l + "px"; cv.style.top = sz.t + "px"; cv.style.width = sz.w + "px"; cv.style.height = sz.h + "px";
    const g = cv.getContext("2d");
    if (!m.pixels) { m.pixels = g.createImageData(w, h); m.disc = discOf(POINT_R * dpr); }
    const px = m.pixels.data, disc = m.disc;
    px.fill(0);
    const x = t.x, y = t.y, n = x ? x.length : 0;
    const colors = t.marker.color, sel = t.selectedpoints;
    const chosen = sel ? new Uint8Array(n) : null;
    if (sel) for (const i of sel) chosen[i] = 1;
    const xa = L.xaxis, ya = L.yaxis, x0 = xa.range[0], y1 = ya.range[1];
    const kx = w / (xa.range[1] - x0), ky = h / (ya.range[0] - y1);
    for (const pass of sel ? [2, 1] : [0]) {  // unselected first, selected on top
      const alpha = pass === 0 ? 0.78 : pass === 1 ? 0.9 : 0.12;
      for (let i = 0; i < n; i++) {
        if (sel && (chosen[i] ? 1 : 2) !== pass) continue;
        const cx = Math.round((x[i] - x0) * kx), cy = Math.round((y[i] - y1) * ky);
        if (cx < -4 || cy < -4 || cx > w + 4 || cy > h + 4) continue;
        const [r, gr, b] = rgbOf(colors[i]);
        for (let k = 0; k < disc.length; k += 3) {
          const qx = cx + disc[k], qy = cy + disc[k + 1];
          if (qx < 0 || qy < 0 || qx >= w || qy >= h) continue;
          const o = (qy * w + qx) * 4, sa = alpha * disc[k + 2], da = px[o + 3] / 255, oa = sa + da * (1 - sa);
          const f = sa / oa, d = 1 - f;
          px[o] = r * f + px[o] * d; px[o + 1] = gr * f + px[o + 1] * d; px[o + 2] = b * f + px[o + 2] * d; px[o + 3] = oa * 255;
        }
      }
    }
    g.putImageData(m.pixels, 0, 0);
    gd.dataset.drawn = String(n);
  }
  // index of the point nearest to the mouse (within 8 px; the later one wins ties: it is drawn on top)
  function nearestPoint(m, cx, cy) {
    const gd = m.div, L = gd._fullLayout, t = gd.data && gd.data[0];
    if (!L || !L.xaxis || !t || !t.x || !t.x.length) return null;
    const r = gd.getBoundingClientRect(), sz = L._size;
    const px = cx - r.left - sz.l, py = cy - r.top - sz.t;
    if (px < -8 || py < -8 || px > sz.w + 8 || py > sz.h + 8) return null;
    const xa = L.xaxis, ya = L.yaxis, x0 = xa.range[0], y1 = ya.range[1];
    const kx = sz.w / (xa.range[1] - x0), ky = sz.h / (ya.range[0] - y1);
    let best = null, bd = 64;
    for (let i = 0; i < t.x.length; i++) {
      const dx = (t.x[i] - x0) * kx - px, dy = (t.y[i] - y1) * ky - py, d = dx * dx + dy * dy;
      if (d <= bd) { bd = d; best = i; }
    }
    return best;
  }
  // the points inside a lasso (ev.lassoPoints) or box (ev.range), in data coordinates; null: neither
  function insideSelection(m, ev) {
    const t = m.div.data[0], out = [];
    if (ev.range && ev.range.x && ev.range.y) {
      const [xa, xb] = ev.range.x.slice().sort((a, b) => a - b), [ya, yb] = ev.range.y.slice().sort((a, b) => a - b);
      for (let i = 0; i < t.x.length; i++) if (t.x[i] >= xa && t.x[i] <= xb && t.y[i] >= ya && t.y[i] <= yb) out.push(i);
      return out;
    }
    const poly = ev.lassoPoints;
    if (!poly || !poly.x || poly.x.length < 3) return null;
    const px = poly.x, py = poly.y, k = px.length;
    for (let i = 0; i < t.x.length; i++) {
      const x = t.x[i], y = t.y[i];
      let inside = false;
      for (let a = 0, b = k - 1; a < k; b = a++) {
        if ((py[a] > y) !== (py[b] > y) && x < (px[b] - px[a]) * (y - py[a]) / (py[b] - py[a]) + px[a]) inside = !inside;
      }
      if (inside) out.push(i);
    }
    return out;
  }

  function hover(m, i, ev) {
    const e = m.example[i];
    const tip = S.tooltip;
    tip.replaceChildren();
    tip.append(el("div", "xl-tip-token", xhLabel(m.text[i])));
    const full = S.pairs && S.pairs[e] ? S.texts[e] + "\n" + S.pairs[e] : S.texts[e];
    const s = m.offsets[2 * i], t = m.offsets[2 * i + 1];
    const sent = el("div", "xl-tip-text");
    const lo = Math.max(0, s - 120), hi = Math.min(full.length, t + 120);
    sent.append((lo > 0 ? "\u2026" : "") + full.slice(lo, s));
    sent.append(el("mark", null, full.slice(s, t)));
    sent.append(full.slice(t, hi) + (hi < full.length ? "\u2026" : ""));
    tip.append(sent);
    const meta = el("div", "xl-tip-meta");
    const bits = ["example #" + e, "token " + m.token[i]];
    for (const [name, c] of Object.entries(m.colors)) {
      const v = c.categories[c.codes[i]];
      if (v !== "") bits.push(name + ": " + v);
    }
    meta.textContent = bits.join(" \u00b7 ");
    tip.append(meta);
    if (S.models.length > 1) {
      const other = S.models[1 - S.models.indexOf(m)];
      const same = alignedOf(m, i).map((j) => xhLabel(other.text[j]));
      tip.append(el("div", "xl-tip-meta", (other === S.models[1] ? "B" : "A") + ": " + (same.length ? same.join(" ") : "(no word in common)")));
    }
    S.focus = { model: m, point: i };
    drawMarks();
    tip.hidden = false;
    placeTip(ev);
  }
  function placeTip(ev) {
    const tip = S.tooltip, r = root.getBoundingClientRect();
    const x = (ev ? ev.clientX : r.left) - r.left + 14, y = (ev ? ev.clientY : r.top) - r.top + 14;
    tip.style.left = Math.min(x, r.width - 340) + "px";
    tip.style.top = y + "px";
  }

  function coordsFor(m, layer) {
    if (m.coords.has(layer)) return Promise.resolve(m.coords.get(layer));
    if (!S.key) return Promise.reject(new Error("layer " + layer + " was not sent and there is no server to ask"));
    if (!m.pending.has(layer)) {
      const idx = S.models.indexOf(m);
      m.pending.set(layer, server.layers_coords({ key: S.key, model: idx, layer }).then((res) => {
        m.pending.delete(layer);
        if (!res || res.error) throw new Error(res ? res.error : "no answer");
        const c = decodeCoords(res.coords);
        m.coords.set(layer, c);
        return c;
      }, (err) => { m.pending.delete(layer); throw err; }));
    }
    return m.pending.get(layer);
  }

  function trackedTrace(m, c, layer) {
    const pts = m.byExample.get(S.example) || [];
    const x = [], y = [], text = [];
    for (const i of pts) { x.push(c.x[i]); y.push(c.y[i]); text.push(xhLabel(m.text[i])); }
    // each tracked token's path through the layers drawn so far (layers not fetched yet are skipped)
    const px = [], py = [];
    const have = Array.from(m.coords.keys()).sort((a, b) => a - b);
    if (have.length > 1) {
      for (const i of pts) {
        for (const l of have) { const cl = m.coords.get(l); px.push(cl.x[i]); py.push(cl.y[i]); }
        px.push(null); py.push(null);
      }
    }
    return { x, y, text, px, py, layer };
  }

  // Move every scatter to the current layer; resolves once plotly has drawn it.
  async function drawScatter(m) {
    const layer = layerOf(m);
    const c = await coordsFor(m, layer);
    if (!S || layerOf(m) !== layer || !m.plot) return;
    const t = trackedTrace(m, c, layer);
    const pad = (lo, hi) => { const d = (hi - lo) * 0.04 || 1; return [lo - d, hi + d]; };
    const sel = selectedPoints(m);
    // the selection is a set of examples: every token of theirs is drawn selected (in every model), and
    // plotly's own lasso outline is dropped (it would re-select only the points inside it)
    // one frame for every layer drawn so far (aligned projections share their scale): the axes stay
    // put when the layer changes, so the points visibly move, and plotly need not lay the axes out again
    let lo0 = Infinity, lo1 = Infinity, hi0 = -Infinity, hi1 = -Infinity;
    for (const cl of m.coords.values()) { lo0 = Math.min(lo0, cl.lo[0]); lo1 = Math.min(lo1, cl.lo[1]); hi0 = Math.max(hi0, cl.hi[0]); hi1 = Math.max(hi1, cl.hi[1]); }
    const frame = [pad(lo0, hi0), pad(lo1, hi1)];
    const lay = {};
    if (!m.frame || m.frame.join() !== frame.join()) { lay["xaxis.range"] = frame[0]; lay["yaxis.range"] = frame[1]; m.frame = frame; }
    if (m.div.layout && m.div.layout.selections && m.div.layout.selections.length) lay.selections = [];
    const pts = m.div.data[0];
    pts.x = c.x; pts.y = c.y; pts.selectedpoints = sel;
    S.quiet = true;
    try {
      await Plotly.update(m.div, { x: [t.px, t.x], y: [t.py, t.y], text: [null, t.text] }, lay, [1, 2]);
    } finally { setTimeout(() => { S.quiet = false; }, 0); }
    drawPoints(m);
    m.div.dataset.layer = String(layer);
    m.div.dataset.example = String(S.example);
    drawMarks();
  }

  // --- the head summary ---------------------------------------------------------------------------
  async function statFor(m, stat) {
    if (m.stats.has(stat)) return m.stats.get(stat);
    if (!S.key) throw new Error("statistic " + stat + " was not sent");
    const res = await server.layers_stat({ key: S.key, model: S.models.indexOf(m), statistic: stat });
    if (!res || res.error) throw new Error(res ? res.error : "no answer");
    const a = f32(res.stat);
    m.stats.set(stat, a);
    return a;
  }
  function selectionList() {
    if (!S.selection) return null;
    return Array.from(S.selection).sort((a, b) => a - b);
  }
  // mean over the selected examples of stat [E, L, H] -> z[L][H]; NaN entries (no spans) left out
  function meanOver(a, examples) {
    const [E, L, H] = a.shape;
    const rows = examples || Array.from({ length: E }, (_, e) => e);
    const sum = new Float64Array(L * H), cnt = new Uint32Array(L * H);
    for (const e of rows) {
      const o = e * L * H;
      for (let k = 0; k < L * H; k++) { const v = a.data[o + k]; if (!Number.isNaN(v)) { sum[k] += v; cnt[k]++; } }
    }
    const z = [];
    for (let l = 0; l < L; l++) { const row = []; for (let h = 0; h < H; h++) { const k = l * H + h; row.push(cnt[k] ? sum[k] / cnt[k] : null); } z.push(row); }
    return z;
  }

  async function drawSummary() {
    const id = ++fetchId;
    const which = S.summaryModel;
    let z, m = S.models[which === "1" ? 1 : 0];
    try {
      const ex = selectionList();
      if (which === "diff") {
        const za = meanOver(await statFor(S.models[0], S.statistic), ex), zb = meanOver(await statFor(S.models[1], S.statistic), ex);
        z = za.map((row, l) => row.map((v, h) => (v == null || zb[l][h] == null ? null : v - zb[l][h])));
      } else {
        z = meanOver(await statFor(m, S.statistic), ex);
      }
    } catch (err) {
      S.summaryDiv.replaceChildren(el("div", "xl-error", String(err && err.message || err)));
      return;
    }
    if (id !== fetchId || !S) return;
    const diff = which === "diff";
    const trace = {
      type: "heatmap", z, x: Array.from({ length: m.heads }, (_, h) => h), y: Array.from({ length: m.layers }, (_, l) => l),
      colorscale: diff ? "RdBu" : "Viridis", zmid: diff ? 0 : undefined, reversescale: diff,
      hovertemplate: "layer %{y} \u00b7 head %{x}<br>" + S.statistic + " = %{z:.4g}<extra></extra>",
      colorbar: { thickness: 10, outlinewidth: 0 }, xgap: 1, ygap: 1,
    };
    const shapes = S.head ? [{ type: "rect", x0: S.head[1] - 0.5, x1: S.head[1] + 0.5, y0: S.head[0] - 0.5, y1: S.head[0] + 0.5,
      line: { color: "#f97316", width: 3 } }] : [];
    const layout = Object.assign(plotTheme(), {
      margin: { l: 44, r: 8, t: 8, b: 36 }, shapes,
      xaxis: { title: { text: "head" }, dtick: m.heads > 16 ? 4 : 1, constrain: "domain" },
      yaxis: { title: { text: "layer" }, dtick: m.layers > 16 ? 4 : 1, autorange: true },
    });
    const fresh = !S.summaryDiv.classList.contains("js-plotly-plot");
    if (fresh) S.summaryDiv.replaceChildren();
    await Plotly.react(S.summaryDiv, [trace], layout, CONFIG);
    fixGradients();
    if (fresh) {
      S.summaryDiv.on("plotly_click", (ev) => {
        const p = ev.points && ev.points[0];
        if (p) openHead(Number(p.y), Number(p.x));
      });
    }
    S.summaryDiv.dataset.statistic = S.statistic;
    S.summaryDiv.dataset.selection = ex_key();
    S.summaryDiv.dataset.model = which;
  }
  function ex_key() { return S.selection ? selectionList().join(",") : "all"; }

  // --- one head for the tracked example: matrix and map ------------------------------------------
  function drawHeadBox(note) {
    const box = S.headBox;
    box.replaceChildren();
    const bar = el("div", "xl-panel-bar");
    if (!S.head) {
      bar.append(el("span", "xl-panel-title", "One head"));
      box.append(bar, el("div", "xl-empty", note || "Click a cell of the head summary to open that head for the tracked example."));
      return;
    }
    bar.append(el("span", "xl-panel-title", "Layer " + S.head[0] + " \u00b7 head " + S.head[1] + " \u00b7 example #" + S.example));
    const close = el("button", "xh-btn xl-close", "Close \u2715");
    close.type = "button";
    close.addEventListener("click", () => { S.head = null; S.openRes = null; drawHeadBox(); drawSummary(); toUrl(); });
    bar.append(close);
    box.append(bar);
    if (note) box.append(el("div", "xh-hint", note));
  }

  async function openHead(layer, head) {
    S.head = [layer, head];
    toUrl();
    drawSummary();
    const mi = S.summaryModel === "1" ? 1 : 0, m = S.models[mi];
    if (!m.canOpen) { drawHeadBox("Heads cannot be opened here (no model on the server)."); return; }
    drawHeadBox("loading\u2026");
    const id = ++S.drawn;
    let res;
    try { res = await server.layers_head({ key: S.key, model: mi, example: S.example, layer, head }); }
    catch (err) { res = { error: String(err && err.message || err) }; }
    if (!S || id !== S.drawn) return;
    if (!res || res.error) { drawHeadBox("Could not open this head: " + (res ? res.error : "no answer")); return; }
    S.openRes = res;
    drawHeadBox();
    const seq = res.sequences.input;
    const att = f32(res.attention);
    const [nq, nk] = att.shape;
    const body = el("div", "xl-head-body");
    const mat = el("div", "xl-matrix");
    const map = el("div", "xl-map");
    body.append(mat, map);
    S.headBox.append(body);
    const z = [];
    for (let i = 0; i < nq; i++) z.push(Array.from(att.data.subarray(i * nk, (i + 1) * nk)));
    const labels = seq.tokens.map((t, i) => hub().pieceLabel(t, seq.continues && seq.continues[i]));
    const idx = (n) => Array.from({ length: n }, (_, i) => i);
    const tick = (n) => ({ tickmode: "array", tickvals: idx(n), ticktext: labels.slice(0, n), tickfont: { size: n > 40 ? 8 : 11 }, automargin: true });
    const layout = Object.assign(plotTheme(), {
      margin: { l: 10, r: 8, t: 8, b: 10 },
      xaxis: Object.assign(tick(nk), { side: "bottom", tickangle: -60, title: { text: "attended token" } }),
      yaxis: Object.assign(tick(nq), { autorange: "reversed", title: { text: "attending token" } }),
    });
    await Plotly.newPlot(mat, [{ type: "heatmap", z, x: idx(nk), y: idx(nq), colorscale: "Blues", reversescale: true, zmin: 0,
      customdata: z.map((row, i) => row.map((_, j) => [labels[i], labels[j]])),
      hovertemplate: "%{customdata[0]} \u2192 %{customdata[1]}<br>%{z:.4f}<extra></extra>",
      colorbar: { thickness: 10, outlinewidth: 0 } }], layout, CONFIG);
    mat.dataset.layer = String(layer); mat.dataset.head = String(head); mat.dataset.example = String(res.example);
    const panel = xhLinePanel(map, { maxLineWidth: 260, leftTitle: "tokens attending \u2192", rightTitle: "\u2192 attended tokens" });
    panel.setTokens(seq.tokens, seq.tokens, seq.special, seq.special, seq.continues, seq.continues);
    panel.setSeries([{ head, color: xhHeadColor(head), data: att.data, lut: null, offset: 0, nq, nk, visible: true }]);
    panel.redraw();
    map.dataset.lines = String(panel.state.lines);
    S.headBox.dataset.open = layer + "," + head;
  }

  // --- distances per layer ------------------------------------------------------------------------
  function drawDistances() {
    if (!S.metric || !window.Plotly) return;
    const ex = selectionList();
    const traces = [];
    const groupsOf = S.groupBy ? S.columns[S.groupBy] : null;
    S.models.forEach((m, mi) => {
      const d = m.dist[S.metric];
      if (!d) return;
      const [E, L1] = d.shape;
      const rows = ex || Array.from({ length: E }, (_, e) => e);
      const groups = new Map();
      for (const e of rows) {
        const g = groupsOf ? groupsOf[e] : "all";
        let any = false;
        for (let l = 0; l < L1; l++) if (!Number.isNaN(d.data[e * L1 + l])) { any = true; break; }
        if (!any) continue;
        if (!groups.has(g)) groups.set(g, []);
        groups.get(g).push(e);
      }
      const names = Array.from(groups.keys()).sort();
      const means = {};
      // a model of another depth is drawn at relative depth on A's layer axis (its own layer in the hover)
      const sa = S.models[0].states, scale = L1 > 1 && L1 !== sa ? (sa - 1) / (L1 - 1) : 1;
      const xs = Array.from({ length: L1 }, (_, l) => l * scale), own = Array.from({ length: L1 }, (_, l) => l);
      const hov = scale === 1 ? undefined : "%{fullData.name}: %{y:.4g} (its layer %{customdata})<extra></extra>";
      names.forEach((g, gi) => {
        const es = groups.get(g);
        const y = [];
        for (let l = 0; l < L1; l++) { let s = 0; for (const e of es) s += d.data[e * L1 + l]; y.push(s / es.length); }
        means[g] = y;
        traces.push({ type: "scatter", mode: "lines+markers", x: xs, y, customdata: own, hovertemplate: hov,
          name: (S.models.length > 1 ? (mi ? "B " : "A ") : "") + g + " (" + es.length + ")",
          line: { color: colorOf(g, gi), width: 2, dash: mi ? "dot" : "solid" }, marker: { size: 5 } });
      });
      if (names.length === 2) {
        const [a, b] = names;
        traces.push({ type: "scatter", mode: "lines", x: xs, customdata: own, hovertemplate: hov,
          y: means[a].map((v, l) => v - means[b][l]), name: (S.models.length > 1 ? (mi ? "B " : "A ") : "") + a + " \u2212 " + b,
          line: { color: "#6b7280", width: 1.5, dash: mi ? "dashdot" : "dash" } });
      }
    });
    const layout = Object.assign(plotTheme(), {
      margin: { l: 48, r: 8, t: 8, b: 36 }, hovermode: "x unified",
      xaxis: { title: { text: S.models.some((m) => m.states !== S.models[0].states)
        ? "layer of A (0 = embeddings; B at the same relative depth)" : "layer (0 = embeddings)" }, dtick: 1 },
      yaxis: { title: { text: S.metric + " distance" }, zeroline: true },
      legend: { orientation: "h", y: -0.25 },
      shapes: [{ type: "line", x0: S.layer, x1: S.layer, yref: "paper", y0: 0, y1: 1, line: { color: "#f97316", width: 1.5, dash: "dot" } }],
    });
    if (!S.distDiv.classList.contains("js-plotly-plot")) S.distDiv.replaceChildren();
    Plotly.react(S.distDiv, traces, layout, CONFIG);
    S.distDiv.dataset.selection = ex_key();
  }

  // --- table ------------------------------------------------------------------------------------------
  function drawTable() {
    const box = S.tableBox;
    box.replaceChildren();
    const ex = selectionList() || Array.from({ length: S.n }, (_, e) => e);
    const bar = el("div", "xl-panel-bar");
    bar.append(el("span", "xl-panel-title", "Examples" + (S.selection ? " (selected)" : "")),
      el("span", "xh-hint", ex.length > MAX_ROWS ? "showing " + MAX_ROWS + " of " + ex.length : ex.length + " example" + (ex.length === 1 ? "" : "s")));
    box.append(bar);
    const scroller = el("div", "xl-table-scroll");
    const table = el("table", "xl-table");
    const head = el("tr");
    const two = S.models.length > 1;
    const cols = ["#", "example"];
    if (S.gold) cols.push("gold (" + S.gold + ")");
    S.models.forEach((m, mi) => { if (m.predictions) cols.push((two ? (mi ? "B " : "A ") : "") + "prediction", "probability", "correct"); });
    for (const c of cols) head.append(el("th", null, c));
    const thead = el("thead"); thead.append(head); table.append(thead);
    const tbody = el("tbody");
    for (const e of ex.slice(0, MAX_ROWS)) {
      const tr = el("tr");
      tr.dataset.example = String(e);
      if (e === S.example) tr.classList.add("xl-tracked");
      tr.append(el("td", "xl-num", e));
      const text = S.pairs && S.pairs[e] ? S.texts[e] + "  \u2016  " + S.pairs[e] : S.texts[e];
      const td = el("td", "xl-text", text); td.title = text; tr.append(td);
      const gold = S.gold ? S.columns[S.gold][e] : null;
      if (S.gold) tr.append(el("td", null, gold));
      S.models.forEach((m) => {
        if (!m.predictions) return;
        const p = m.predictions[e], pr = m.probabilities ? m.probabilities[e] : null;
        tr.append(el("td", null, p == null ? "\u2013" : p), el("td", "xl-num", pr == null ? "\u2013" : hub().formatProb(pr)));
        const ok = S.gold && p != null && gold !== "" ? String(p) === String(gold) : null;
        const c = el("td", "xl-ok " + (ok == null ? "" : ok ? "xl-yes" : "xl-no"), ok == null ? "\u2013" : ok ? "\u2713" : "\u2717");
        c.setAttribute("aria-label", ok == null ? "unknown" : ok ? "correct" : "wrong");
        tr.append(c);
      });
      tr.addEventListener("click", () => setExample(e));
      tbody.append(tr);
    }
    table.append(tbody);
    scroller.append(table);
    box.append(scroller);
  }

  function drawLegend() {
    const m = S.models[0], c = m.colors[S.color];
    const counts = new Uint32Array(c.categories.length);
    for (let i = 0; i < m.n; i++) counts[c.codes[i]]++;
    S.legend.replaceChildren();
    S.legend.append(el("span", "xl-field-name", (S.color === "correct" ? "correct / wrong" : S.color) + ":"));
    c.categories.forEach((name, i) => {
      const item = el("span", "xl-legend-item");
      const sw = el("span", "xl-swatch"); sw.style.background = colorOf(name, i);
      item.append(sw, el("span", null, (name === "" ? "(none)" : name) + " " + counts[i]));
      S.legend.append(item);
    });
  }

  function updateSelInfo() {
    S.selInfo.textContent = S.selection ? S.selection.size + " of " + S.n + " examples selected" : "all " + S.n + " examples";
    root.dataset.selection = ex_key();
  }

  // --- actions -------------------------------------------------------------------------------------
  async function setLayer(l, quiet) {
    S.layer = Math.max(0, Math.min(l, Number(S.slider.max)));
    S.slider.value = String(S.layer);
    const m0 = S.models[0];
    S.layerLabel.textContent = layerText(S.layer, m0) + (S.models.length > 1 ? " \u00b7 B: " + layerText(layerOf(S.models[1]), S.models[1]) : "");
    for (const m of S.models) m.layerEl.textContent = "Layer " + layerText(layerOf(m), m);
    root.dataset.layer = String(S.layer);
    if (!quiet) toUrl();
    if (!window.Plotly) return;
    try { await Promise.all(S.models.map(drawScatter)); }
    catch (err) { S.hint.textContent = "Could not draw layer " + S.layer + ": " + (err && err.message || err); return; }
    // the distance plot only moves its layer marker (a whole new plot cost ~40 ms per layer change)
    if (S.distDiv.classList.contains("js-plotly-plot") && S.distDiv.layout && (S.distDiv.layout.shapes || []).length) {
      Plotly.relayout(S.distDiv, { "shapes[0].x0": S.layer, "shapes[0].x1": S.layer });
    } else drawDistances();
  }
  function setColor(name) {
    if (!(name in S.models[0].colors)) return;
    S.color = name;
    S.colorSelect.value = name;
    root.dataset.color = name;
    for (const m of S.models) if (m.plot && m.colors[name]) { m.div.data[0].marker.color = pointColors(m); drawPoints(m); }
    drawLegend();
    toUrl();
  }
  // a clicked token stays ringed (with the other model's tokens of the same words) until another example
  function trackToken(m, i) {
    S.pin = { model: m, point: i };
    root.dataset.pinned = S.models.indexOf(m) + ":" + i;
    drawMarks();
  }
  function setExample(e) {
    if (!(e >= 0 && e < S.n)) return;
    if (S.pin && S.pin.model.example[S.pin.point] !== e) { S.pin = null; delete root.dataset.pinned; }
    S.example = e;
    S.exampleSelect.value = String(e);
    root.dataset.example = String(e);
    toUrl();
    drawTable();
    if (window.Plotly) S.models.forEach(drawScatter);
    if (S.head) openHead(S.head[0], S.head[1]);
  }
  function selectExamples(list, fromUser, source) {
    S.selection = list == null ? null : new Set(list.map(Number));
    updateSelInfo();
    if (window.Plotly) {
      S.models.forEach(drawScatter);
      drawSummary();
      drawDistances();
    }
    drawTable();
    if (fromUser) trigger("select_examples", { examples: list == null ? [] : selectionList(), all: list == null, model: source ? S.models.indexOf(source) : 0 });
  }
  function setStatistic(s) {
    S.statistic = s;
    S.statSelect.value = s;
    toUrl();
    drawSummary();
  }

  function api() {
    return {
      setLayer: (l) => setLayer(l),
      setColor, setExample, setStatistic,
      select: (list) => selectExamples(list, true),
      openHead: (l, h) => openHead(l, h),
      coords: (model, layer) => S.models[model].coords.get(layer) || null,  // decoded {x, y} (benchmarks)
      redrawPoints: () => S.models.forEach(drawPoints),
      trackToken: (model, point) => { const m = S.models[model]; setExample(m.example[point]); trackToken(m, point); },
      state: () => ({ layer: S.layer, example: S.example, color: S.color, statistic: S.statistic,
        selection: selectionList(), head: S.head }),
    };
  }

  root.ownerDocument.addEventListener("keydown", (ev) => { if (ev.key === "Escape" && S && S.tooltip) S.tooltip.hidden = true; });
  watch("value", () => render(props.value));
  render(props.value);
})();
