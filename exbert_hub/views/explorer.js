/* exbert-hub attention explorer (js_on_load of ExplorerView).
 * Runs as a function of (element, trigger, props, server, upload, watch).
 *
 * Value: the dict of exbert_hub.views.explorer.explorer_payload. Everything here is drawn from the
 * uint8 attention (window.exbertHub.decodeAttention); token text is only ever set with textContent.
 */
(function () {
  "use strict";
  const XH = window.exbertHub;
  const root = element.querySelector(".xb-root") || element;
  if (!XH) {
    root.textContent = "exbert-hub: common.js is not loaded (launch the app with exbert_hub.app.launch).";
    return;
  }
  const el = XH.el;
  const SVG_NS = "http://www.w3.org/2000/svg";
  const SVG_MAX_TOKENS = 300;     // above this many visible tokens lines go to a canvas
  const SVG_MAX_LINES = 6000;     // ... or above this many lines
  const MAX_LINES = 60000;        // strongest lines kept when more pass the threshold
  // By default each token draws at most its LINE_BUDGET / tokens strongest lines (at least 2), so a
  // long text shows a few thousand lines, not a solid wall; "Show all lines" lifts it (see lineNote).
  const LINE_BUDGET = 3000;
  const LINE_COLOR = "#2563eb";

  // ---------------------------------------------------------------------------------------------
  // state
  // ---------------------------------------------------------------------------------------------
  const S = {
    p: null,              // payload
    T: 0, H: 0, L: 0,
    layers: {},           // layer -> decoded attention [H, T, T]
    layer: 0,
    heads: new Set(),
    weights: [],
    threshold: 0.7,
    hideSpecial: false,
    hover: null,          // {side: "left"|"right", pos}
    frozen: null,
    vis: [],              // visible token positions
    rowOf: null,          // Int32Array pos -> visible row (-1 hidden)
    stats: null,          // per-head stats cache (layer, hideSpecial)
    combo: null,          // combined matrix cache
    edges: null,          // {src, dst, w, n}
    renderer: "svg",
    rowH: 22,
    fetching: {},
    fetchError: null,
    message: "",
    pendingMask: false,
    allLines: false,      // the user asked for every line that passes the threshold (no per-token cap)
    long: false,          // long input: rows come in sparse blocks as they scroll into view (rows.py)
    blockRows: 64,
    blocks: {},           // layer -> Map(block -> {r0, r1, indptr, idx, val, mass})
    blockFetching: {},    // "layer|block" -> true
  };
  let ui = null;
  let rafId = 0;

  // ---------------------------------------------------------------------------------------------
  // payload -> state
  // ---------------------------------------------------------------------------------------------
  function load(value) {
    if (!value || !value.tokens) {
      root.replaceChildren(el("div", "xb-empty", "Analyze a text to see its attention."));
      root.dataset.ready = "0";
      S.p = null;
      return;
    }
    const prev = S.p;
    const keep = value.initial && value.initial.keep_view && prev &&
      prev.num_layers === value.num_layers && prev.num_heads === value.num_heads && prev.model === value.model;
    S.p = value;
    S.T = value.tokens.length; S.H = value.num_heads; S.L = value.num_layers;
    S.layers = {};
    S.fetching = {};
    S.long = !!value.long; S.blockRows = value.block_rows || 64;
    S.blocks = {}; S.blockFetching = {}; S.exact = new Map();
    S.fetchError = null;
    for (const k of Object.keys(value.attention || {})) {
      try { S.layers[+k] = XH.decodeAttention(value.attention[k]); } catch (err) { console.error(err); }
    }
    const init = value.initial || {};
    if (!keep) {
      S.layer = XH.clamp(init.layer | 0, 0, maxLayer());
      S.heads = new Set(init.heads == null ? range(S.H) : init.heads.filter((h) => h >= 0 && h < S.H));
      S.weights = init.weights && init.weights.length === S.H ? init.weights.slice() : new Array(S.H).fill(1);
      S.threshold = init.threshold == null ? 0.7 : init.threshold;
      S.hideSpecial = !!init.hide_special;
      S.frozen = init.token == null || init.token >= S.T ? null : { side: "left", pos: init.token };
      S.allLines = false;
      // once the page's first analysis is in, the address holds the selection the other views made
      // (the payload's view may be the link's, older): it wins
      if (XH.ready && XH.urlSelection) applySelection(XH.urlSelection(S.L, S.H, S.T));
    } else {
      S.layer = XH.clamp(S.layer, 0, maxLayer());
      if (S.frozen && S.frozen.pos >= S.T) S.frozen = null;
      if (init.token != null && init.token < S.T) S.frozen = { side: "left", pos: init.token };
    }
    S.hover = null;
    S.pendingMask = false;
    S.message = "";
    S.rowH = S.T > 400 ? 16 : S.T > 120 ? 18 : 22;
    S.stats = null; S.combo = null; S.edges = null;
    buildUI();
    ensureLayer(S.layer);
    syncUrl(true);
    redraw();
    root.dataset.ready = "1";
    XH.ready = true;  // the page's first analysis is in: views may now write the URL
  }

  // the last selectable layer: index S.L is the attention rollout when the payload offers it
  function maxLayer() { return S.L - 1 + (S.p && S.p.rollout ? 1 : 0); }

  function range(n) { const a = []; for (let i = 0; i < n; i++) a.push(i); return a; }

  // Take a selection {layer, heads, token} written by another view into the address (null heads: all).
  // Returns whether anything changed.
  function applySelection(sel) {
    let changed = false;
    if (sel.layer != null && sel.layer !== S.layer) {
      S.layer = sel.layer; S.stats = null; S.fetchError = null; changed = true;
    }
    const heads = sel.heads == null ? range(S.H) : sel.heads;
    const cur = Array.from(S.heads).sort((a, b) => a - b);
    if (heads.join(",") !== cur.join(",")) { S.heads = new Set(heads); changed = true; }
    const tok = sel.token != null && !(S.hideSpecial && S.p.special[sel.token]) ? sel.token : null;
    if (tok !== (S.frozen ? S.frozen.pos : null)) { S.frozen = tok == null ? null : { side: "left", pos: tok }; changed = true; }
    if (changed) { S.combo = null; S.edges = null; }
    return changed;
  }
  // the explorer is shown again (its tab selected): follow what the other views selected meanwhile
  function adoptUrl() {
    if (!S.p || !ui || !XH.ready || !XH.urlSelection) return;
    if (applySelection(XH.urlSelection(S.L, S.H, S.T))) { ensureLayer(S.layer); redraw(); }
  }

  function ensureLayer(layer) {
    if (S.long && S.p) { ensureBlocks(layer); return true; }
    if (S.layers[layer] || !S.p) return true;
    if (S.fetching[layer]) return false;
    if (!server || typeof server.explorer_layer !== "function") {
      S.fetchError = "this layer is not in the page and the server cannot be reached";
      return false;
    }
    const key = S.p.key;
    S.fetching[layer] = true;
    setStatus("Loading layer " + layer + "\u2026");
    server.explorer_layer({ key: key, layer: layer }).then((res) => {
      if (!S.p || S.p.key !== key) return;  // a newer analysis arrived meanwhile
      delete S.fetching[layer];
      if (!res || res.error) { S.fetchError = (res && res.error) || "could not load layer " + layer; redraw(); return; }
      S.layers[res.layer] = XH.decodeAttention(res.attention);
      if (res.layer === S.layer) { S.stats = null; S.combo = null; S.edges = null; redraw(); }
    }).catch((err) => {
      delete S.fetching[layer];
      S.fetchError = "could not load layer " + layer + ": " + err;
      redraw();
    });
    return false;
  }

  // ---------------------------------------------------------------------------------------------
  // long inputs: sparse row blocks (exbert_hub/views/rows.py), fetched for the rows in view
  // ---------------------------------------------------------------------------------------------
  // the token positions whose rows are in the scroll area's view (visible rows, hidden specials skipped)
  function rowsInView() {
    const rowH = S.rowH, top = ui && ui.scroll ? ui.scroll.scrollTop : 0, h = (ui && ui.scroll && ui.scroll.clientHeight) || 640;
    const a = Math.max(0, Math.floor(top / rowH)), b = Math.min(S.vis.length, Math.ceil((top + h) / rowH));
    return S.vis.slice(a, b);
  }
  function decodeBlock(p) {
    const b = (s) => XH.base64ToBytes(s);
    const ib = b(p.indptr), xb = b(p.indices), vb = b(p.values), mb = b(p.special_mass);
    return { r0: p.r0, r1: p.r1, n: p.r1 - p.r0,
      indptr: new Uint32Array(ib.buffer, ib.byteOffset, ib.byteLength / 4),
      idx: new Uint16Array(xb.buffer, xb.byteOffset, xb.byteLength / 2),
      val: new Float32Array(vb.buffer, vb.byteOffset, vb.byteLength / 4),
      mass: new Float32Array(mb.buffer, mb.byteOffset, mb.byteLength / 4) };
  }
  // fetch the blocks holding the rows in view (and the active token's) that are not here yet
  function ensureBlocks(layer) {
    if (!S.long || !S.p || !ui) return;
    const want = new Set(rowsInView().map((i) => Math.floor(i / S.blockRows)));
    const active = S.frozen || S.hover;
    if (active && active.side === "left") { want.add(Math.floor(active.pos / S.blockRows)); ensureExact(layer, active.pos); }
    const have = S.blocks[layer] || (S.blocks[layer] = new Map());
    for (const blk of want) {
      const k = layer + "|" + blk;
      if (have.has(blk) || S.blockFetching[k]) continue;
      if (!server || typeof server.explorer_layer !== "function") { S.fetchError = "the server cannot be reached"; return; }
      S.blockFetching[k] = true;
      const key = S.p.key;
      server.explorer_layer({ key: key, layer: layer, block: blk }).then((res) => {
        if (!S.p || S.p.key !== key) return;
        delete S.blockFetching[k];
        if (!res || res.error) { S.fetchError = (res && res.error) || "could not load rows"; redraw(); return; }
        have.set(blk, decodeBlock(res.rows));
        root.dataset.blocks = String(Object.values(S.blocks).reduce((n, m) => n + m.size, 0));
        if (layer === S.layer) { S.edges = null; schedule(); }
      }).catch((err) => { delete S.blockFetching[k]; S.fetchError = "could not load rows: " + err; schedule(); });
    }
  }
  // the active token's row in full (every weight of every head, float32[H * T]), fetched once
  function ensureExact(layer, i) {
    const k = layer + "|" + i;
    if (S.exact.has(k) || S.blockFetching["row|" + k] || !server || typeof server.explorer_layer !== "function") return;
    S.blockFetching["row|" + k] = true;
    const key = S.p.key;
    server.explorer_layer({ key: key, layer: layer, row: i }).then((res) => {
      delete S.blockFetching["row|" + k];
      if (!S.p || S.p.key !== key || !res || res.error) return;
      const b = XH.base64ToBytes(res.rows.b64);
      S.exact.set(k, new Float32Array(b.buffer, b.byteOffset, b.byteLength / 4));
      if (S.combo) S.combo.rows.delete(i);
      if (layer === S.layer) { S.edges = null; schedule(); }
    }).catch(() => { delete S.blockFetching["row|" + k]; });
  }
  // head h's kept weights of row i: {idx, val, a, e, mass} (entries a..e-1), or null when not loaded
  function headRow(h, i) {
    const m = S.blocks[S.layer];
    const blk = m && m.get(Math.floor(i / S.blockRows));
    if (!blk) return null;
    const r = h * blk.n + (i - blk.r0);
    return { idx: blk.idx, val: blk.val, a: blk.indptr[r], e: blk.indptr[r + 1], mass: blk.mass[r] };
  }
  function headVal(h, i, j) {
    const r = headRow(h, i);
    if (!r) return 0;
    let lo = r.a, hi = r.e - 1;
    while (lo <= hi) { const mid = (lo + hi) >> 1, x = r.idx[mid]; if (x === j) return r.val[mid]; if (x < j) lo = mid + 1; else hi = mid - 1; }
    return 0;
  }
  function headRowSum(h, i) {
    const r = headRow(h, i);
    const s = S.hideSpecial && r ? 1 - r.mass : 1;
    return s > 1e-9 ? s : 1;
  }
  // the drawn (combined) row i, keys by weight descending: {idx: Int32Array, val: Float32Array}, null if not loaded
  function combinedRow(i) {
    const c = combined();
    if (c.rows.has(i)) return c.rows.get(i);
    const acc = new Map();
    const exact = S.exact.get(S.layer + "|" + i), T = S.T;
    if (exact) {  // the whole row: every weight, as the engine computed it
      for (const h of S.heads) {
        const w = Math.max(0, +S.weights[h] || 0);
        if (!w) continue;
        let s = 0;
        for (let j = 0; j < T; j++) if (!(S.hideSpecial && S.p.special[j])) s += exact[h * T + j];
        const f = w / (s > 1e-9 ? s : 1);
        for (let j = 0; j < T; j++) {
          const v = exact[h * T + j];
          if (v > 0 && !(S.hideSpecial && S.p.special[j])) acc.set(j, (acc.get(j) || 0) + v * f);
        }
      }
      const keys = Array.from(acc.keys()).sort((a, b) => acc.get(b) - acc.get(a));
      const out = { idx: Int32Array.from(keys), val: Float32Array.from(keys, (j) => acc.get(j) / (c.wsum || 1)), exact: true };
      c.rows.set(i, out);
      return out;
    }
    for (const h of S.heads) {
      const w = Math.max(0, +S.weights[h] || 0);
      if (!w) continue;
      const r = headRow(h, i);
      if (!r) return null;
      const f = w / headRowSum(h, i);
      for (let t = r.a; t < r.e; t++) {
        const j = r.idx[t];
        if (S.hideSpecial && S.p.special[j]) continue;
        acc.set(j, (acc.get(j) || 0) + r.val[t] * f);
      }
    }
    const keys = Array.from(acc.keys()).sort((a, b) => acc.get(b) - acc.get(a));
    const out = { idx: Int32Array.from(keys), val: Float32Array.from(keys, (j) => acc.get(j) / (c.wsum || 1)) };
    c.rows.set(i, out);
    return out;
  }
  function combinedVal(i, j) {
    const r = combinedRow(i);
    if (!r) return 0;
    for (let t = 0; t < r.idx.length; t++) if (r.idx[t] === j) return r.val[t];
    return 0;
  }

  // ---------------------------------------------------------------------------------------------
  // computation
  // ---------------------------------------------------------------------------------------------
  function visibleTokens() {
    const p = S.p, vis = [];
    const rowOf = new Int32Array(S.T).fill(-1);
    for (let i = 0; i < S.T; i++) {
      if (S.hideSpecial && p.special[i]) continue;
      rowOf[i] = vis.length; vis.push(i);
    }
    S.vis = vis; S.rowOf = rowOf;
  }

  // Per head: row sums over visible keys (to renormalise), row maxima, column means.
  function headStats() {
    if (S.long) return longStats();
    if (S.stats && S.stats.layer === S.layer && S.stats.hide === S.hideSpecial) return S.stats;
    const att = S.layers[S.layer];
    const T = S.T, H = S.H, vis = S.vis, n = vis.length, lut = att.lut, data = att.data;
    const visMask = new Uint8Array(T);
    for (const i of vis) visMask[i] = 1;
    const rowSum = new Float32Array(H * T), rowMax = new Float32Array(H * T), colMean = new Float32Array(H * T);
    for (let h = 0; h < H; h++) {
      for (const i of vis) {
        const o = (h * T + i) * T;
        let s = 0;
        for (let j = 0; j < T; j++) if (visMask[j]) s += lut[data[o + j]];
        rowSum[h * T + i] = s > 0 ? s : 1;
      }
      for (const i of vis) {
        const o = (h * T + i) * T, inv = 1 / rowSum[h * T + i];
        let m = 0;
        for (let j = 0; j < T; j++) {
          if (!visMask[j]) continue;
          const v = lut[data[o + j]] * inv;
          if (v > m) m = v;
          colMean[h * T + j] += v;
        }
        rowMax[h * T + i] = m;
      }
    }
    let colPeak = 0;
    for (let k = 0; k < colMean.length; k++) { colMean[k] /= Math.max(n, 1); if (colMean[k] > colPeak) colPeak = colMean[k]; }
    S.stats = { layer: S.layer, hide: S.hideSpecial, rowSum, rowMax, colMean, colPeak: colPeak || 1, visMask };
    return S.stats;
  }

  // long inputs: the same statistics over the loaded rows in view (column means: of those rows)
  function longStats() {
    const T = S.T, H = S.H, rows = rowsInView().filter((i) => headRow(0, i));
    const sig = S.layer + "|" + S.hideSpecial + "|" + (rows[0] || 0) + "|" + rows.length;
    if (S.stats && S.stats.sig === sig) return S.stats;
    const visMask = new Uint8Array(T);
    for (const i of S.vis) visMask[i] = 1;
    const rowSum = new Float32Array(H * T).fill(1), rowMax = new Float32Array(H * T), colMean = new Float32Array(H * T);
    for (let h = 0; h < H; h++) {
      for (const i of rows) {
        const r = headRow(h, i), s = headRowSum(h, i);
        rowSum[h * T + i] = s;
        let m = 0;
        for (let t = r.a; t < r.e; t++) {
          const j = r.idx[t];
          if (!visMask[j]) continue;
          const v = r.val[t] / s;
          if (v > m) m = v;
          colMean[h * T + j] += v / rows.length;
        }
        rowMax[h * T + i] = m;
      }
    }
    let colPeak = 0;
    for (let k = 0; k < colMean.length; k++) if (colMean[k] > colPeak) colPeak = colMean[k];
    S.stats = { sig, layer: S.layer, hide: S.hideSpecial, rowSum, rowMax, colMean, colPeak: colPeak || 1, visMask };
    return S.stats;
  }

  function comboKey() {
    return [S.layer, S.hideSpecial, Array.from(S.heads).sort((a, b) => a - b).join("."), S.weights.join(".")].join("|");
  }

  // The drawn attention: weighted mean of the selected heads' renormalised rows.
  function combined() {
    const key = comboKey();
    if (S.combo && S.combo.key === key) return S.combo;
    if (S.long) {
      let wsum = 0;
      for (const h of S.heads) wsum += Math.max(0, +S.weights[h] || 0);
      S.combo = { key, wsum, rows: new Map() };
      S.edges = null;
      return S.combo;
    }
    const att = S.layers[S.layer], st = headStats();
    const T = S.T, lut = att.lut, data = att.data, vis = S.vis, visMask = st.visMask;
    const M = new Float32Array(T * T);
    let wsum = 0;
    for (const h of S.heads) {
      const w = Math.max(0, +S.weights[h] || 0);
      if (!w) continue;
      wsum += w;
      for (const i of vis) {
        const o = (h * T + i) * T, f = w / st.rowSum[h * T + i], r = i * T;
        for (let j = 0; j < T; j++) if (visMask[j]) M[r + j] += lut[data[o + j]] * f;
      }
    }
    if (wsum > 0) for (let k = 0; k < M.length; k++) M[k] /= wsum;
    // per visible row: keys sorted by weight (descending), reused while only the threshold changes
    const order = new Array(T);
    for (const i of vis) {
      const r = i * T, idx = [];
      for (let j = 0; j < T; j++) if (M[r + j] > 0) idx.push(j);
      idx.sort((a, b) => M[r + b] - M[r + a]);
      order[i] = idx;
    }
    S.combo = { key, M, wsum, order };
    S.edges = null;
    return S.combo;
  }

  // Lines: for each source token, its largest weights until `threshold` of its total is drawn.
  // With an active (hovered/frozen) token: only its lines (into it: the same rule on its column).
  function computeEdges() {
    if (S.long) return edgesFrom(longEdges());
    const c = combined(), T = S.T, M = c.M, th = S.threshold;
    const active = S.frozen || S.hover;
    const src = [], dst = [], wts = [];
    let passing = 0, perToken = Infinity;   // lines that pass the threshold; the per-token cap applied
    if (c.wsum > 0) {
      if (active && active.side === "right") {
        const j = active.pos, col = [];
        let total = 0;
        for (const i of S.vis) { const v = M[i * T + j]; if (v > 0) { col.push(i); total += v; } }
        col.sort((a, b) => M[b * T + j] - M[a * T + j]);
        let acc = 0;
        for (const i of col) {
          if (acc >= th * total - 1e-9 && acc > 0) break;
          const v = M[i * T + j]; acc += v;
          src.push(i); dst.push(j); wts.push(v);
        }
      } else {
        const rows = active ? [active.pos] : S.vis;
        const cap = active || S.allLines ? Infinity : perTokenCap();
        for (const i of rows) {
          const idx = c.order[i];
          if (!idx) continue;
          let acc = 0, k = 0;
          for (const j of idx) {
            if (acc >= th - 1e-6 && acc > 0) break;   // rows are normalised: total = 1
            const v = M[i * T + j]; acc += v; passing++;
            if (k++ < cap) { src.push(i); dst.push(j); wts.push(v); }
          }
        }
        perToken = cap;
      }
    }
    return edgesFrom({ src, dst, wts, passing, perToken });
  }

  // long inputs: the lines of the loaded rows in view (or of the active token), by the same rule
  function longEdges() {
    const c = combined(), th = S.threshold, active = S.frozen || S.hover;
    const src = [], dst = [], wts = [];
    let passing = 0, perToken = Infinity;
    if (c.wsum > 0) {
      if (active && active.side === "right") {
        const j = active.pos, col = [];
        let total = 0;
        for (const i of rowsInView()) { const v = combinedVal(i, j); if (v > 0) { col.push([i, v]); total += v; } }
        col.sort((a, b) => b[1] - a[1]);
        let acc = 0;
        for (const [i, v] of col) {
          if (acc >= th * total - 1e-9 && acc > 0) break;
          acc += v; src.push(i); dst.push(j); wts.push(v);
        }
      } else {
        const rows = active ? [active.pos] : rowsInView();
        const cap = active || S.allLines ? Infinity : Math.max(2, Math.floor(LINE_BUDGET / Math.max(1, rows.length)));
        for (const i of rows) {
          const r = combinedRow(i);
          if (!r) continue;
          let acc = 0, k = 0;
          for (let t = 0; t < r.idx.length; t++) {
            if (acc >= th - 1e-6 && acc > 0) break;
            const v = r.val[t]; acc += v; passing++;
            if (k++ < cap) { src.push(i); dst.push(r.idx[t]); wts.push(v); }
          }
        }
        perToken = cap;
      }
    }
    return { src, dst, wts, passing, perToken };
  }

  function edgesFrom(x) {
    const { src, dst, wts, passing, perToken } = x;
    let n = src.length, capped = 0;
    let order = range(n);
    if (n > MAX_LINES) {
      order.sort((a, b) => wts[b] - wts[a]);
      capped = n - MAX_LINES;
      order = order.slice(0, MAX_LINES);
    }
    order.sort((a, b) => wts[a] - wts[b]);   // strong lines drawn last (on top)
    const E = { src: new Int32Array(order.length), dst: new Int32Array(order.length), w: new Float32Array(order.length), capped,
      passing: Math.max(passing, src.length), perToken };
    order.forEach((k, m) => { E.src[m] = src[k]; E.dst[m] = dst[k]; E.w[m] = wts[k]; });
    E.n = order.length;
    let sig = 0;
    for (let m = 0; m < E.n; m++) sig = (sig * 31 + E.src[m] * 7 + E.dst[m] * 13 + Math.round(E.w[m] * 1000)) % 1000000007;
    E.signature = String(sig);
    return E;
  }

  // at most this many lines per token by default: LINE_BUDGET over the visible tokens, at least 2
  function perTokenCap() { return Math.max(2, Math.floor(LINE_BUDGET / Math.max(1, S.vis.length))); }

  // ---------------------------------------------------------------------------------------------
  // DOM
  // ---------------------------------------------------------------------------------------------
  function button(text, cls, title) {
    const b = el("button", "xb-btn " + (cls || ""), text);
    b.type = "button";
    if (title) b.title = title;
    return b;
  }

  function buildUI() {
    const p = S.p;
    root.replaceChildren();
    ui = {};
    // toolbar -----------------------------------------------------------------------------------
    const bar = el("div", "xb-toolbar");
    const layerLabel = el("label", "xb-field");
    layerLabel.append(el("span", "xb-field-name", "Layer"));
    ui.layer = el("select", "xb-layer");
    for (let l = 0; l < S.L; l++) { const o = el("option", null, String(l)); o.value = String(l); ui.layer.append(o); }
    if (p.rollout) { const o = el("option", null, "rollout"); o.value = String(S.L); o.title = "attention rollout across all layers"; ui.layer.append(o); }
    ui.layer.title = "Layer (0 = first)";
    layerLabel.append(ui.layer);
    ui.layerPrev = button("\u25C0", "xb-icon", "previous layer");
    ui.layerNext = button("\u25B6", "xb-icon", "next layer");
    const layerBox = el("div", "xb-group");
    layerBox.append(layerLabel, ui.layerPrev, ui.layerNext);

    const thLabel = el("label", "xb-field xb-threshold-field");
    thLabel.append(el("span", "xb-field-name", "Threshold"));
    ui.threshold = el("input", "xb-threshold");
    Object.assign(ui.threshold, { type: "range", min: "0.05", max: "1", step: "0.01" });
    ui.threshold.title = "For each token, draw its largest attentions until this share of its total is drawn";
    ui.thValue = el("span", "xb-th-value", "");
    thLabel.append(ui.threshold, ui.thValue);

    const hideLabel = el("label", "xb-field xb-check");
    ui.hide = el("input", "xb-hide-special");
    ui.hide.type = "checkbox";
    hideLabel.append(ui.hide, el("span", "xb-check-text", "Hide special tokens"));
    ui.hideLabel = hideLabel;
    hideLabel.title = "Remove [CLS]/[SEP]-style tokens and renormalise the remaining weights of each row";

    bar.append(layerBox, thLabel, hideLabel);

    // heads -------------------------------------------------------------------------------------
    const headsBar = el("div", "xb-headbar");
    headsBar.append(el("span", "xb-field-name", "Heads"));
    ui.all = button("All", "xb-all", "select every head");
    ui.none = button("None", "xb-none", "deselect every head");
    headsBar.append(ui.all, ui.none);
    ui.chips = el("div", "xb-chips");
    ui.chipEls = [];
    for (let h = 0; h < S.H; h++) {
      const c = button(String(h), "xb-chip", "head " + h + ": click to toggle, double-click to show only it");
      c.dataset.head = String(h);
      c.style.setProperty("--head", XH.headColor(h));
      c.style.setProperty("--head-fg", XH.headTextColor(h));
      ui.chips.append(c); ui.chipEls.push(c);
    }
    headsBar.append(ui.chips);
    ui.weightsBox = el("details", "xb-weights");
    const sum = el("summary", null, "Head weights");
    sum.title = "The drawn attention is the weighted mean of the selected heads (all weights 1 = plain mean)";
    ui.weightsBox.append(sum);
    const wgrid = el("div", "xb-weight-grid");
    ui.weightInputs = [];
    for (let h = 0; h < S.H; h++) {
      const lab = el("label", "xb-weight");
      const sw = el("span", "xb-swatch", String(h));
      sw.style.setProperty("--head", XH.headColor(h));
      sw.style.setProperty("--head-fg", XH.headTextColor(h));
      const inp = el("input", "xb-weight-input");
      Object.assign(inp, { type: "number", min: "0", step: "0.1" });
      inp.dataset.head = String(h);
      lab.append(sw, inp); wgrid.append(lab); ui.weightInputs.push(inp);
    }
    ui.resetWeights = button("Reset to 1", "xb-reset-weights");
    wgrid.append(ui.resetWeights);
    ui.weightsBox.append(wgrid);
    headsBar.append(ui.weightsBox);

    ui.status = el("div", "xb-status");
    ui.message = el("div", "xb-message");

    // main ----------------------------------------------------------------------------------------
    const main = el("div", "xb-main");
    const panel = el("div", "xb-panel");
    ui.panel = panel;
    ui.head = el("div", "xb-colheads");
    ui.scroll = el("div", "xb-scroll");
    ui.body = el("div", "xb-body");
    ui.stripL = el("div", "xb-strip xb-strip-left");
    ui.colL = el("div", "xb-col xb-col-left");
    ui.lines = el("div", "xb-lines");
    ui.colR = el("div", "xb-col xb-col-right");
    ui.stripR = el("div", "xb-strip xb-strip-right");
    ui.stripLCanvas = el("canvas", "xb-strip-canvas"); ui.stripL.append(ui.stripLCanvas);
    ui.stripRCanvas = el("canvas", "xb-strip-canvas"); ui.stripR.append(ui.stripRCanvas);
    ui.body.append(ui.stripL, ui.colL, ui.lines, ui.colR, ui.stripR);
    ui.scroll.append(ui.body);
    ui.lineNote = el("div", "xb-line-note");
    ui.lineNoteText = el("span", "xb-line-note-text");
    ui.allLinesBtn = button("Show all lines", "xb-all-lines", "draw every line that passes the threshold");
    ui.lineNote.append(ui.lineNoteText, ui.allLinesBtn);
    panel.append(ui.head, ui.scroll, ui.lineNote);

    const side = el("aside", "xb-side");
    ui.sideTitle = el("div", "xb-side-title", "");
    ui.sideSub = el("div", "xb-side-sub", "");
    ui.preds = el("ol", "xb-preds");
    ui.note = el("div", "xb-note", "");
    const help = el("div", "xb-help");
    const tips = ["Hover a token: only its lines", "Click: freeze / unfreeze",
      p.can_mask ? "Double-click: mask it and run again (again to unmask)" : "Double-click: mask (masked LMs only)",
      "Head squares: left = each head's strongest attention out of the token, right = attention into it " +
      "(with a token selected: from / to that token)"];
    const ul = el("ul");
    for (const t of tips) ul.append(el("li", null, t));
    help.append(ul);
    ui.searchBtn = button("Search this token in the corpus", "xb-search-corpus",
      "open the Corpus search tab with this token, layer and heads, and search");
    ui.searchBtn.hidden = !(XH.hasTab && XH.hasTab("search"));
    side.append(ui.sideTitle, ui.sideSub, ui.preds, ui.note, ui.searchBtn, help);

    main.append(panel, side);
    root.append(bar, headsBar, ui.status, ui.message, main);

    wire();
    buildColumns();
  }

  function buildColumns() {
    visibleTokens();
    const p = S.p, rowH = S.rowH, n = S.vis.length;
    const cont = p.continues || [];
    const labels = S.vis.map((i) => XH.tokenLabel(p.tokens[i]));
    const longest = S.vis.reduce((m, i, r) => Math.max(m, labels[r].length + (cont[i] ? 2 : 0)), 1);
    const fontPx = rowH >= 22 ? 13 : rowH >= 18 ? 12 : 11;
    S.tokW = Math.round(XH.clamp(longest * fontPx * 0.62 + 18, 56, 170));
    S.renderer = n > SVG_MAX_TOKENS ? "canvas" : "svg";
    root.style.setProperty("--xb-row", rowH + "px");
    root.style.setProperty("--xb-font", fontPx + "px");
    layoutColumns(true);
    ui.body.style.height = n * rowH + "px";
    ui.scroll.style.height = Math.min(n * rowH + 2, 640) + "px";

    const wide = S.stripW >= 90;
    const outH = el("div", "xb-ch", wide ? "heads out" : "out"), inH = el("div", "xb-ch", wide ? "heads in" : "in");
    outH.title = "one square per head: its strongest attention out of the token (click a column to toggle the head)";
    inH.title = "one square per head: attention into the token (click a column to toggle the head)";
    ui.head.replaceChildren(
      outH, el("div", "xb-ch xb-ch-tok", "from"),
      el("div", "xb-ch xb-ch-mid", p.causal ? "attends to (earlier tokens)" : "attends to"),
      el("div", "xb-ch xb-ch-tok", "to"), inH);

    const makeCol = (col, side) => {
      const frag = document.createDocumentFragment();
      for (let r = 0; r < n; r++) {
        const i = S.vis[r];
        const d = el("div", "xb-tok", labels[r]);
        d.dataset.pos = String(i);
        d.dataset.side = side;
        let title = "#" + i + "  " + p.raw_tokens[i];
        if (cont[i]) { d.classList.add("xb-cont"); title += "  (continues the word before it)"; }
        if (p.special[i]) d.classList.add("xb-special");
        if ((p.generated || [])[i]) { d.classList.add("xb-generated"); title += "  (generated by the model)"; }
        if (p.segments[i] === 1) d.classList.add("xb-segb");
        if (p.masked.indexOf(i) >= 0) { d.classList.add("xb-masked"); title += "  (masked; was " + p.original_tokens[i] + ")"; }
        d.title = title;
        frag.append(d);
      }
      col.replaceChildren(frag);
    };
    makeCol(ui.colL, "left");
    makeCol(ui.colR, "right");

    ui.lines.replaceChildren();
    if (S.renderer === "svg") {
      ui.svg = document.createElementNS(SVG_NS, "svg");
      ui.svg.setAttribute("class", "xb-svg");
      ui.svg.setAttribute("height", String(n * rowH));
      ui.lines.append(ui.svg);
      ui.canvas = null;
    } else {
      ui.canvas = el("canvas", "xb-canvas");
      ui.lines.append(ui.canvas);
      ui.svg = null;
    }
    root.dataset.renderer = S.renderer;
    S.stats = null; S.combo = null; S.edges = null;
  }

  // Grid columns: head squares | tokens | lines | tokens | head squares. The squares shrink on narrow
  // pages (down to 3 px per head) so that both token columns stay in view; below that the panel scrolls.
  function layoutColumns(force) {
    const avail = (ui.panel.clientWidth || 0) - 2;
    let tokW = S.tokW, minLines = 220;
    let cellW = Math.round(XH.clamp(Math.floor(132 / S.H), 4, 14));
    if (avail > 0 && 2 * (cellW * S.H + 2) + 2 * tokW + minLines > avail) {
      minLines = 80;   // narrow: shorter lines, smaller head squares, then narrower token columns (ellipsis)
      cellW = Math.min(cellW, Math.max(3, Math.floor((avail - 2 * tokW - minLines - 4) / (2 * S.H))));
      tokW = Math.max(56, Math.min(tokW, Math.floor((avail - 2 * (cellW * S.H + 2) - minLines) / 2)));
    }
    if (!force && cellW === S.cellW && tokW === S.colW && avail === S.layoutW) return false;
    const stripW = cellW * S.H + 2;
    S.cellW = cellW; S.stripW = stripW; S.layoutW = avail; S.colW = tokW;
    const lines = "minmax(" + minLines + "px, 1fr)";
    const cols = stripW + "px " + tokW + "px " + lines + " " + tokW + "px " + stripW + "px";
    ui.body.style.gridTemplateColumns = cols;
    ui.head.style.gridTemplateColumns = cols;
    return true;
  }

  function wire() {
    ui.layer.addEventListener("change", () => setLayer(+ui.layer.value));
    ui.layerPrev.addEventListener("click", () => setLayer(S.layer - 1));
    ui.layerNext.addEventListener("click", () => setLayer(S.layer + 1));
    ui.threshold.addEventListener("input", () => { S.threshold = +ui.threshold.value; S.edges = null; schedule(); });
    ui.threshold.addEventListener("change", () => syncUrl());
    ui.hide.addEventListener("change", () => {
      S.hideSpecial = ui.hide.checked;
      if (S.hideSpecial && S.frozen && S.p.special[S.frozen.pos]) S.frozen = null;
      S.hover = null;
      buildColumns(); redraw(); syncUrl();
    });
    ui.allLinesBtn.addEventListener("click", () => { S.allLines = !S.allLines; S.edges = null; redraw(); });
    ui.searchBtn.addEventListener("click", () => {
      if (!S.frozen) return;
      syncUrl();
      XH.requestSearch({ layer: S.layer, heads: Array.from(S.heads), numHeads: S.H, token: S.frozen.pos });
    });
    ui.all.addEventListener("click", () => { S.heads = new Set(range(S.H)); headsChanged(); });
    ui.none.addEventListener("click", () => { S.heads = new Set(); headsChanged(); });
    ui.chips.addEventListener("click", (e) => {
      const c = e.target.closest(".xb-chip");
      if (c) toggleHead(+c.dataset.head);
    });
    ui.chips.addEventListener("dblclick", (e) => {
      const c = e.target.closest(".xb-chip");
      if (c) { S.heads = new Set([+c.dataset.head]); headsChanged(); }
    });
    for (const inp of ui.weightInputs) {
      inp.addEventListener("change", () => {
        const v = parseFloat(inp.value);
        S.weights[+inp.dataset.head] = isFinite(v) && v >= 0 ? v : 1;
        headsChanged();
      });
    }
    ui.resetWeights.addEventListener("click", () => { S.weights = new Array(S.H).fill(1); headsChanged(); });
    // head squares: click a column of squares to toggle that head
    for (const [strip, side] of [[ui.stripL, "left"], [ui.stripR, "right"]]) {
      strip.addEventListener("click", (e) => {
        const rect = strip.getBoundingClientRect();
        const h = Math.floor((e.clientX - rect.left - 1) / S.cellW);
        if (h >= 0 && h < S.H) toggleHead(h);
      });
      strip.addEventListener("mousemove", (e) => {
        const rect = strip.getBoundingClientRect();
        const h = Math.floor((e.clientX - rect.left - 1) / S.cellW);
        const r = Math.floor((e.clientY - rect.top) / S.rowH);
        if (h >= 0 && h < S.H && r >= 0 && r < S.vis.length) {
          const v = stripValue(side, S.vis[r], h);
          strip.title = "head " + h + " \u00b7 " + (side === "left" ? "out of " : "into ") + "#" + S.vis[r] +
            ": " + (v == null ? "" : v.toFixed(3)) + " \u00b7 click to toggle head " + h;
        }
      });
    }
    // tokens: hover filters, click freezes, double-click masks
    for (const col of [ui.colL, ui.colR]) {
      col.addEventListener("mouseover", (e) => {
        const t = e.target.closest(".xb-tok");
        if (!t) return;
        const h = { side: t.dataset.side, pos: +t.dataset.pos };
        if (!S.hover || S.hover.side !== h.side || S.hover.pos !== h.pos) { S.hover = h; if (!S.frozen) S.edges = null; schedule(); }
      });
      col.addEventListener("mouseleave", () => { if (S.hover) { S.hover = null; if (!S.frozen) S.edges = null; schedule(); } });
      col.addEventListener("click", (e) => {
        const t = e.target.closest(".xb-tok");
        if (!t) return;
        const pos = +t.dataset.pos, side = t.dataset.side;
        if (e.detail > 1) return;   // the second click of a double-click
        S.frozen = S.frozen && S.frozen.pos === pos && S.frozen.side === side ? null : { side, pos };
        S.edges = null; redraw(); syncUrl();
      });
      col.addEventListener("dblclick", (e) => {
        const t = e.target.closest(".xb-tok");
        if (t) maskToken(+t.dataset.pos);
      });
    }
    ui.scroll.addEventListener("scroll", () => {
      // long inputs: other rows are in view now (their lines, their blocks)
      if (S.long) { S.edges = null; S.stats = null; schedule(); } else scheduleCanvas();
    }, { passive: true });
  }

  function toggleHead(h) {
    if (S.heads.has(h)) S.heads.delete(h); else S.heads.add(h);
    headsChanged();
  }
  function headsChanged() { S.combo = null; S.edges = null; redraw(); syncUrl(); }
  function setLayer(l) {
    l = XH.clamp(l | 0, 0, maxLayer());
    if (l === S.layer) { ui.layer.value = String(l); return; }
    S.layer = l; S.stats = null; S.combo = null; S.edges = null; S.fetchError = null;
    ensureLayer(l);
    redraw(); syncUrl();
  }

  function maskToken(pos) {
    const p = S.p;
    S.frozen = { side: "left", pos };
    if (!p.can_mask) {
      S.message = "Masking needs a masked language model; " + p.model + " is a " + p.model_kind + " model." +
        (p.causal ? " Select a token to see the predicted next token instead." : "");
      S.edges = null; redraw();
      return;
    }
    if (p.special[pos]) {
      S.message = "Special tokens such as " + p.raw_tokens[pos] + " cannot be masked: double-click a word piece.";
      redraw();
      return;
    }
    S.message = "";
    S.pendingMask = true;
    redraw();
    syncUrl();
    trigger("mask", {
      key: p.key, position: pos, layer: S.layer, heads: Array.from(S.heads).sort((a, b) => a - b),
      token: pos, threshold: S.threshold, hide_special: S.hideSpecial, weights: S.weights.slice(),
    });
  }

  // ---------------------------------------------------------------------------------------------
  // drawing
  // ---------------------------------------------------------------------------------------------
  function schedule() {
    if (rafId) return;
    rafId = requestAnimationFrame(() => { rafId = 0; redraw(); });
  }
  let canvasRaf = 0;
  function scheduleCanvas() {
    if (canvasRaf) return;
    canvasRaf = requestAnimationFrame(() => { canvasRaf = 0; if (S.edges) { drawCanvasLines(); drawStrips(); } });
  }

  function setStatus(text) { if (ui) XH.setText(ui.status, text); }

  function redraw() {
    if (!S.p || !ui) return;
    if (layoutColumns(false)) { S.edges = null; }
    syncControls();
    const active = S.frozen || S.hover;
    if (S.long) ensureBlocks(S.layer);
    if (!layerReady()) {
      clearLines();
      setStatus(S.fetchError ? "Layer " + S.layer + ": " + S.fetchError : "Loading layer " + S.layer + "\u2026");
      root.dataset.lines = "0";
      return;
    }
    if (!S.edges) S.edges = computeEdges();
    const E = S.edges;
    if (S.renderer === "svg" && E.n > SVG_MAX_LINES) switchRenderer("canvas");
    if (S.renderer === "svg") drawSvgLines(); else drawCanvasLines();
    drawStrips();
    highlightTokens(active);
    showPredictions();
    const nh = S.heads.size;
    const weighted = S.weights.some((w, h) => S.heads.has(h) && w !== 1);
    let st = (S.layer === S.L ? "Attention rollout (all layers)" : "Layer " + S.layer) + " \u00b7 " + (nh === S.H ? "all " + S.H + " heads" : nh + " of " + S.H + " heads") +
      (nh > 1 ? (weighted ? " (weighted mean)" : " (mean)") : "") + " \u00b7 " + E.n.toLocaleString() + " lines";
    showLineNote(E, active);
    if (E.capped) st += " (the " + E.n.toLocaleString() + " strongest; " + E.capped.toLocaleString() + " more pass the threshold)";
    if (nh === 0) st += " \u00b7 select a head to draw attention";
    if (active) st += " \u00b7 " + (S.frozen ? "frozen on" : "hovering") + " #" + active.pos + " (" + (active.side === "left" ? "from" : "to") + ")";
    if (S.pendingMask) st += " \u00b7 masking and running again\u2026";
    if (S.p.truncated) st += " \u00b7 text cut to " + S.T + " tokens";
    setStatus(st);
    XH.setText(ui.message, S.message || "");
    ui.message.style.display = S.message ? "" : "none";
    const ds = root.dataset;
    ds.lines = String(E.n); ds.signature = E.signature; ds.layer = String(S.layer);
    ds.heads = Array.from(S.heads).sort((a, b) => a - b).join(",");
    ds.token = S.frozen ? String(S.frozen.pos) : "";
    ds.active = active ? active.side + ":" + active.pos : "";
    ds.threshold = String(S.threshold);
    ds.key = S.p.key || "";
    // the active token's lines "src:dst:weight" (tests read what is drawn)
    let hl = "";
    ds.exact = S.long && active && active.side === "left" && S.exact.has(S.layer + "|" + active.pos) ? "1" : "";
    if (active && E.n <= 20000) { const parts = []; for (let m = 0; m < E.n; m++) parts.push(E.src[m] + ":" + E.dst[m] + ":" + E.w[m]); hl = parts.join(","); }
    ds.hoverLines = hl;
  }

  function layerReady() { return S.long ? !S.fetchError : !!S.layers[S.layer]; }

  // Under the panel: how many lines are drawn when each token's are capped, and a way to see all.
  function showLineNote(E, active) {
    const limited = !active && E.perToken !== Infinity && E.passing > E.n + E.capped;
    const all = !active && S.allLines && E.passing > perTokenCap() * S.vis.length;
    ui.lineNote.hidden = !(limited || all);
    root.dataset.lineCap = limited ? String(E.perToken) : "";
    root.dataset.passing = String(E.passing);
    if (limited) {
      XH.setText(ui.lineNoteText, "Each token shows its " + E.perToken + " strongest lines: " + E.n.toLocaleString() +
        " of the " + E.passing.toLocaleString() + " lines that pass the " + Math.round(S.threshold * 100) +
        "% threshold, so that long texts stay readable. Hover or click a token for all of its lines. ");
      XH.setText(ui.allLinesBtn, "Show all lines");
    } else if (all) {
      XH.setText(ui.lineNoteText, E.capped
        ? "Showing the strongest " + E.n.toLocaleString() + " of the " + E.passing.toLocaleString() +
          " lines that pass the threshold (the most this view draws). "
        : "Showing all " + E.n.toLocaleString() + " lines that pass the threshold. ");
      XH.setText(ui.allLinesBtn, "Fewer lines");
    }
  }

  function switchRenderer(kind) {
    S.renderer = kind;
    ui.lines.replaceChildren();
    if (kind === "canvas") { ui.canvas = el("canvas", "xb-canvas"); ui.lines.append(ui.canvas); ui.svg = null; }
    root.dataset.renderer = kind;
  }

  function clearLines() {
    if (ui.svg) ui.svg.replaceChildren();
    if (ui.canvas) { const g = ui.canvas.getContext("2d"); g.clearRect(0, 0, ui.canvas.width, ui.canvas.height); }
  }

  function lineColor() {
    if (S.heads.size === 1) return XH.headColor(S.heads.values().next().value);
    return LINE_COLOR;
  }

  function drawSvgLines() {
    const E = S.edges, W = ui.lines.clientWidth || 300, rowH = S.rowH, half = rowH / 2;
    const svg = ui.svg;
    svg.setAttribute("width", String(W));
    svg.setAttribute("viewBox", "0 0 " + W + " " + S.vis.length * rowH);
    const frag = document.createDocumentFragment();
    const color = lineColor(), x0 = 2, x1 = W - 2, cx = W / 2;
    for (let m = 0; m < E.n; m++) {
      const y0 = S.rowOf[E.src[m]] * rowH + half, y1 = S.rowOf[E.dst[m]] * rowH + half, w = E.w[m];
      const path = document.createElementNS(SVG_NS, "path");
      path.setAttribute("d", "M" + x0 + "," + y0 + " C" + cx + "," + y0 + " " + cx + "," + y1 + " " + x1 + "," + y1);
      path.setAttribute("stroke", color);
      path.setAttribute("stroke-width", (0.6 + 4 * w).toFixed(2));
      path.setAttribute("stroke-opacity", (0.12 + 0.88 * Math.sqrt(w)).toFixed(3));
      path.setAttribute("fill", "none");
      path.dataset.src = String(E.src[m]); path.dataset.dst = String(E.dst[m]);
      frag.append(path);
    }
    svg.replaceChildren(frag);
  }

  // A canvas the size of the visible part of the scroll area, redrawn on scroll (sticky).
  function fitCanvas(canvas, width) {
    const viewH = ui.scroll.clientHeight || 400;
    const dpr = Math.min(window.devicePixelRatio || 1, 2);
    const w = Math.max(1, Math.round(width * dpr)), h = Math.max(1, Math.round(viewH * dpr));
    if (canvas.width !== w || canvas.height !== h) { canvas.width = w; canvas.height = h; }
    canvas.style.width = width + "px"; canvas.style.height = viewH + "px";
    const g = canvas.getContext("2d");
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    g.clearRect(0, 0, width, viewH);
    return { g, viewH, top: ui.scroll.scrollTop };
  }

  function drawCanvasLines() {
    if (!ui.canvas || !S.edges) return;
    const E = S.edges, W = ui.lines.clientWidth || 300, rowH = S.rowH, half = rowH / 2;
    const { g, viewH, top } = fitCanvas(ui.canvas, W);
    const color = lineColor(), x0 = 2, x1 = W - 2, cx = W / 2;
    g.strokeStyle = color;
    g.lineCap = "round";
    const inView = new Uint8Array(E.n);
    let count = 0;
    for (let m = 0; m < E.n; m++) {
      const y0 = S.rowOf[E.src[m]] * rowH + half - top, y1 = S.rowOf[E.dst[m]] * rowH + half - top;
      if ((y0 < -2 && y1 < -2) || (y0 > viewH + 2 && y1 > viewH + 2)) continue;
      inView[m] = 1; count++;
    }
    // many overlapping lines: fainter, so that the strong ones still stand out
    const density = XH.clamp(Math.sqrt(2500 / Math.max(count, 1)), 0.18, 1);
    let drawn = 0;
    for (let m = 0; m < E.n; m++) {
      if (!inView[m]) continue;
      const y0 = S.rowOf[E.src[m]] * rowH + half - top, y1 = S.rowOf[E.dst[m]] * rowH + half - top;
      const w = E.w[m];
      g.globalAlpha = (0.1 + 0.9 * Math.sqrt(w)) * (w > 0.3 ? 1 : density);
      g.lineWidth = 0.6 + 4 * w;
      g.beginPath();
      g.moveTo(x0, y0);
      g.bezierCurveTo(cx, y0, cx, y1, x1, y1);
      g.stroke();
      drawn++;
    }
    g.globalAlpha = 1;
    root.dataset.canvasDrawn = String(drawn);
  }

  // Value of head h's square at token `pos` on a side (see the help text in the side panel).
  function stripValue(side, pos, h) {
    if (!layerReady()) return null;
    const st = headStats(), att = S.layers[S.layer], T = S.T;
    const active = S.frozen || S.hover;
    if (S.long) {
      if (side === "right" && active && active.side === "left") return headVal(h, active.pos, pos) / headRowSum(h, active.pos);
      if (side === "right") return st.colMean[h * T + pos] / st.colPeak;
      if (active && active.side === "right") return st.visMask[active.pos] ? headVal(h, pos, active.pos) / headRowSum(h, pos) : 0;
      return st.rowMax[h * T + pos];
    }
    if (side === "right") {
      if (active && active.side === "left") {
        const i = active.pos;
        return att.lut[att.data[(h * T + i) * T + pos]] / st.rowSum[h * T + i];
      }
      return st.colMean[h * T + pos] / st.colPeak;
    }
    if (active && active.side === "right") {
      const j = active.pos;
      if (!st.visMask[j]) return 0;
      return att.lut[att.data[(h * T + pos) * T + j]] / st.rowSum[h * T + pos];
    }
    return st.rowMax[h * T + pos];
  }

  function drawStrips() {
    if (!layerReady()) return;
    const rowH = S.rowH, cw = S.cellW, pad = rowH > 16 ? 2 : 1;
    for (const [canvas, side] of [[ui.stripLCanvas, "left"], [ui.stripRCanvas, "right"]]) {
      const { g, viewH, top } = fitCanvas(canvas, S.stripW);
      const r0 = Math.max(0, Math.floor(top / rowH)), r1 = Math.min(S.vis.length, Math.ceil((top + viewH) / rowH));
      for (let r = r0; r < r1; r++) {
        const pos = S.vis[r], y = r * rowH - top;
        for (let h = 0; h < S.H; h++) {
          const v = XH.clamp(stripValue(side, pos, h) || 0, 0, 1);
          const on = S.heads.has(h);
          g.fillStyle = on ? XH.headColor(h) : "#9ca3af";
          g.globalAlpha = 0.06 + (on ? 0.94 : 0.45) * Math.sqrt(v);
          g.fillRect(1 + h * cw, y + pad, cw - (cw > 5 ? 1 : 0), rowH - 2 * pad);
        }
      }
      g.globalAlpha = 1;
    }
  }

  function highlightTokens(active) {
    const p = S.p, T = S.T;
    const M = S.combo ? S.combo.M : null;
    // long inputs: the active row as a dense vector (the right column), the active column per row
    let focusRow = null;
    if (S.long && S.combo && active && active.side === "left") {
      focusRow = new Float32Array(T);
      const r = combinedRow(active.pos);
      if (r) for (let t = 0; t < r.idx.length; t++) focusRow[r.idx[t]] = r.val[t];
    }
    const inView = S.long && active && active.side === "right" ? new Set(rowsInView()) : null;
    for (const col of [ui.colL, ui.colR]) {
      for (const d of col.children) {
        const pos = +d.dataset.pos, side = d.dataset.side;
        let v = 0;
        if (active && S.long && S.combo) {
          if (active.side === "left" && side === "right") v = focusRow[pos];
          else if (active.side === "right" && side === "left" && inView.has(pos)) v = combinedVal(pos, active.pos);
        } else if (active && M) {
          if (active.side === "left" && side === "right") v = M[active.pos * T + pos];
          else if (active.side === "right" && side === "left") v = M[pos * T + active.pos];
        }
        d.style.setProperty("--w", v > 0.002 ? Math.sqrt(v).toFixed(3) : "0");
        d.classList.toggle("xb-weighted", v > 0.002);
        d.classList.toggle("xb-active", !!active && active.pos === pos && active.side === side);
        d.classList.toggle("xb-frozen", !!S.frozen && S.frozen.pos === pos && S.frozen.side === side);
        // causal models: a token cannot attend to later tokens
        d.classList.toggle("xb-future", !!(p.causal && active && active.side === "left" && side === "right" && pos > active.pos));
      }
    }
  }

  function showPredictions() {
    const p = S.p, active = S.frozen || S.hover;
    ui.preds.replaceChildren();
    XH.setText(ui.note, "");
    if (!active) {
      XH.setText(ui.sideTitle, "Predictions");
      XH.setText(ui.sideSub, p.predictions ? "Select a token to see the model's top predictions" +
        (p.model_kind === "causal-lm" ? " for the token that follows it." : " at it.") : "");
      if (!p.predictions) XH.setText(ui.note, p.prediction_note || "This model makes no token predictions.");
      return;
    }
    const pos = active.pos, tok = XH.pieceLabel(p.tokens[pos], (p.continues || [])[pos]);
    if (p.model_kind === "causal-lm") {
      XH.setText(ui.sideTitle, "Next token after \u201c" + tok + "\u201d");
    } else {
      XH.setText(ui.sideTitle, "At \u201c" + tok + "\u201d");
    }
    let sub = "#" + pos;
    if (p.masked.indexOf(pos) >= 0) sub += " \u00b7 masked (was \u201c" + p.original_tokens[pos] + "\u201d)";
    else if (p.special[pos]) sub += " \u00b7 special token";
    XH.setText(ui.sideSub, sub);
    if (!p.predictions) {
      XH.setText(ui.note, p.prediction_note || "This model makes no token predictions.");
      return;
    }
    const row = p.predictions[pos] || [];
    const top = row.length ? row[0][1] : 1;
    for (const [w, prob] of row) {
      const li = el("li", "xb-pred");
      const bar = el("span", "xb-pred-bar");
      bar.style.width = (100 * prob / Math.max(top, 1e-9)).toFixed(1) + "%";
      li.append(bar, el("span", "xb-pred-tok", XH.tokenLabel(w)), el("span", "xb-pred-p", XH.formatProb(prob)));
      ui.preds.append(li);
    }
    if (p.can_mask && p.masked.indexOf(pos) < 0 && !p.special[pos]) XH.setText(ui.note, "Double-click the token to mask it.");
  }

  function syncControls() {
    ui.layer.value = String(S.layer);
    ui.layerPrev.disabled = S.layer <= 0;
    ui.layerNext.disabled = S.layer >= maxLayer();
    ui.threshold.value = String(S.threshold);
    XH.setText(ui.thValue, Math.round(S.threshold * 100) + "%");
    ui.hide.checked = S.hideSpecial;
    ui.hideLabel.classList.toggle("xb-on", S.hideSpecial);
    ui.searchBtn.hidden = !(XH.hasTab && XH.hasTab("search"));
    ui.searchBtn.disabled = !S.frozen;
    XH.setText(ui.searchBtn, S.frozen ? "Search \u201c" + XH.pieceLabel(S.p.tokens[S.frozen.pos], (S.p.continues || [])[S.frozen.pos]) +
      "\u201d in the corpus" : "Search this token in the corpus");
    ui.searchBtn.title = S.frozen ? "Open the Corpus search tab with this token, layer " + S.layer +
      " and the selected heads, and search" : "Click a token to freeze it, then search the corpus for tokens like it";
    ui.chipEls.forEach((c, h) => {
      c.classList.toggle("xb-on", S.heads.has(h));
      c.setAttribute("aria-pressed", S.heads.has(h) ? "true" : "false");
      XH.setText(c, S.weights[h] !== 1 ? h + "\u00d7" + S.weights[h] : String(h));
    });
    ui.weightInputs.forEach((inp, h) => { if (document.activeElement !== inp) inp.value = String(S.weights[h]); });
  }

  // ---------------------------------------------------------------------------------------------
  // deep links
  // ---------------------------------------------------------------------------------------------
  function syncUrl(withText) {
    if (!S.p) return;
    const p = S.p;
    const heads = Array.from(S.heads).sort((a, b) => a - b);
    const values = {
      layer: S.layer,
      heads: heads.length === S.H ? null : heads.length ? heads.join(",") : "none",
      token: S.frozen ? S.frozen.pos : null,
      threshold: Math.abs(S.threshold - 0.7) < 1e-9 ? null : S.threshold,
      hide: S.hideSpecial ? "1" : null,
    };
    if (withText) {
      values.model = p.model; values.text = p.text; values.pair = p.pair || null;
      values.mask = p.masked.length ? p.masked.join(",") : null;
    }
    XH.setUrlParams(values);
  }

  // ---------------------------------------------------------------------------------------------
  let resizeTimer = 0;
  window.addEventListener("resize", () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(() => { if (S.p && ui) redraw(); }, 120);
  });
  // hidden tabs have no size: redraw when the explorer becomes visible, with the selection the other
  // views left in the address
  if (window.IntersectionObserver) {
    new IntersectionObserver((entries) => { if (entries.some((e) => e.isIntersecting) && S.p && ui) schedule(); }).observe(root);
  }
  if (XH.onShown) XH.onShown(root, adoptUrl);

  watch("value", () => load(props.value));
  load(props.value);
})();
