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
    // the shown attention stack ("self"; encoder-decoders: "encoder", "decoder", "cross"): its queries are
    // the left column (Q: TQ tokens), its keys the right one (K: TK tokens); T = TQ
    stack: "self", info: null, Q: null, K: null, TQ: 0, TK: 0,
    T: 0, H: 0, L: 0,
    layersBy: {},         // stack -> {layer -> decoded attention [H, TQ, TK]}
    layers: {},           // layersBy[stack]
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
    blocksBy: {},         // stack -> {layer -> Map(block -> ...)}
    blocks: {},           // blocksBy[stack]: layer -> Map(block -> {r0, r1, indptr, idx, val, mass})
    blockFetching: {},    // "stack|layer|block" -> true
    visR: [], rowOfR: null, // visible key (right column) positions, like vis / rowOf for the left
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
    const prev = S.p, prevStack = S.stack;
    const keep = value.initial && value.initial.keep_view && prev &&
      prev.num_layers === value.num_layers && prev.num_heads === value.num_heads && prev.model === value.model;
    S.p = value;
    S.layersBy = {}; S.blocksBy = {}; S.exactBy = {};
    S.fetching = {};
    S.blockRows = value.block_rows || 64;
    S.blockFetching = {};
    S.fetchError = null;
    const decodeInto = (stack, layers) => {
      const m = S.layersBy[stack] || (S.layersBy[stack] = {});
      for (const k of Object.keys(layers || {})) {
        try { m[+k] = XH.decodeAttention(layers[k]); } catch (err) { console.error(err); }
      }
    };
    decodeInto(value.stack || "self", value.attention);
    for (const [name, layers] of Object.entries(value.stack_attention || {})) decodeInto(name, layers);
    // re-analysed with the same model (Analyze): stay on the stack shown, if this analysis has it
    useStack(keep && stackOf(prevStack) ? prevStack : value.stack);
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
      if (XH.ready && XH.urlSelection) { urlStack(); applySelection(XH.urlSelection(S.L, S.H, S.T)); }
    } else {
      S.layer = XH.clamp(S.layer, 0, maxLayer());
      if (S.frozen && S.frozen.pos >= S.T) S.frozen = null;
      if (init.token != null && init.token < S.T) S.frozen = { side: "left", pos: init.token };
    }
    S.hover = null;
    S.pendingMask = false;
    S.message = value.stack_note || "";
    S.stats = null; S.combo = null; S.edges = null;
    buildUI();
    ensureLayer(S.layer);
    syncUrl(true);
    redraw();
    root.dataset.ready = "1";
    XH.ready = true;  // the page's first analysis is in: views may now write the URL
  }

  // the last selectable layer: index S.L is the attention rollout when the stack offers it
  function maxLayer() { return S.L - 1 + (S.info && S.info.rollout ? 1 : 0); }

  // --- attention stacks ------------------------------------------------------------------------
  // what the payload says of a stack (payloads without "stacks": one self-attention over the input)
  function stackOf(name) {
    const p = S.p, list = p.stacks || [];
    if (!list.length) {
      return name == null || name === (p.stack || "self") ? { name: p.stack || "self", label: "Self", layers: p.num_layers,
        heads: p.num_heads, query_seq: "input", key_seq: "input", causal: !!p.causal, rollout: !!p.rollout, long: !!p.long } : null;
    }
    return list.find((s) => s.name === name) || null;
  }
  function seqOf(name) {
    const p = S.p, seqs = p.sequences || {};
    if (seqs[name]) return seqs[name];
    return { tokens: p.tokens, raw_tokens: p.raw_tokens, special: p.special, continues: p.continues, segments: p.segments,
      masked: p.masked, original_tokens: p.original_tokens, generated: p.generated };
  }
  // show stack `name` (its layers, heads and token columns); state of other stacks is kept for later
  function useStack(name) {
    const info = stackOf(name) || stackOf(S.p.stack) || stackOf(null);
    const heads = S.H;
    S.stack = info.name; S.info = info;
    S.Q = seqOf(info.query_seq); S.K = seqOf(info.key_seq);
    S.TQ = S.Q.tokens.length; S.TK = S.K.tokens.length; S.T = S.TQ;
    S.L = info.layers; S.H = info.heads;
    S.long = !!info.long;
    S.layers = S.layersBy[S.stack] || (S.layersBy[S.stack] = {});
    S.blocks = S.blocksBy[S.stack] || (S.blocksBy[S.stack] = {});
    S.exact = S.exactBy[S.stack] || (S.exactBy[S.stack] = new Map());
    if (heads !== S.H) { S.heads = new Set(range(S.H)); S.weights = new Array(S.H).fill(1); }
    S.layer = XH.clamp(S.layer | 0, 0, maxLayer());
    if (S.frozen && S.frozen.pos >= (S.frozen.side === "left" ? S.TQ : S.TK)) S.frozen = null;
    S.rowH = Math.max(S.TQ, S.TK) > 400 ? 16 : Math.max(S.TQ, S.TK) > 120 ? 18 : 22;
  }
  // the user picked another stack: same layer (when it has it), all heads, nothing frozen
  function setStack(name) {
    if (!stackOf(name) || name === S.stack) return;
    useStack(name);
    S.heads = new Set(range(S.H)); S.weights = new Array(S.H).fill(1);
    S.frozen = null; S.hover = null; S.message = ""; S.fetchError = null;
    S.stats = null; S.combo = null; S.edges = null;
    buildUI(); ensureLayer(S.layer); redraw(); syncUrl();
  }
  // the address's stack (a deep link, or the head view's choice), when this analysis has it
  function urlStack() {
    const want = XH.getUrlParam ? XH.getUrlParam("stack") : null;
    const name = want && stackOf(want) ? want : (S.p.main_stack || S.stack);
    if (name !== S.stack) { useStack(name); return true; }
    return false;
  }
  function isMainStack() { return S.stack === (S.p.main_stack || S.stack); }
  function mainLabel() { const m = stackOf(S.p.main_stack || S.stack); return m ? m.label || m.name : "encoder"; }
  // masking replaces a token of the input text: it applies where the left column is the input
  function maskSide() { return S.info.query_seq === "input"; }
  // one line over the columns saying what the left and right tokens are (encoder-decoders)
  function stackCaption() {
    const i = S.info;
    if (i.name === "cross") return "Cross attention: each decoder token (left, queries) attends to the encoder's tokens (right, keys).";
    if (i.name === "decoder") return "Decoder self-attention: each decoder token (left) attends to itself and the decoder tokens before it (right).";
    if (i.name === "encoder") return "Encoder self-attention: each input token (left) attends to the input's tokens (right).";
    return "";
  }

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
    const tok = sel.token != null && !(S.hideSpecial && S.Q.special[sel.token]) ? sel.token : null;
    if (tok !== (S.frozen ? S.frozen.pos : null)) { S.frozen = tok == null ? null : { side: "left", pos: tok }; changed = true; }
    if (changed) { S.combo = null; S.edges = null; }
    return changed;
  }
  // the explorer is shown again (its tab selected): follow what the other views selected meanwhile
  function adoptUrl() {
    if (!S.p || !ui || !XH.ready || !XH.urlSelection) return;
    const moved = urlStack();
    if (moved) { S.stats = null; S.combo = null; S.edges = null; buildUI(); }
    if (applySelection(XH.urlSelection(S.L, S.H, S.T)) || moved) { ensureLayer(S.layer); redraw(); }
  }

  function ensureLayer(layer) {
    if (S.long && S.p) { ensureBlocks(layer); return true; }
    if (S.layers[layer] || !S.p) return true;
    if (S.fetching[S.stack + "|" + layer]) return false;
    if (!server || typeof server.explorer_layer !== "function") {
      S.fetchError = "this layer is not in the page and the server cannot be reached";
      return false;
    }
    const key = S.p.key, stack = S.stack, into = S.layers;
    S.fetching[stack + "|" + layer] = true;
    setStatus("Loading layer " + layer + "\u2026");
    server.explorer_layer({ key: key, layer: layer, stack: stack }).then((res) => {
      if (!S.p || S.p.key !== key) return;  // a newer analysis arrived meanwhile
      delete S.fetching[stack + "|" + layer];
      if (!res || res.error) { if (stack === S.stack) { S.fetchError = (res && res.error) || "could not load layer " + layer; redraw(); } return; }
      into[res.layer] = XH.decodeAttention(res.attention);
      if (res.layer === S.layer && stack === S.stack) { S.stats = null; S.combo = null; S.edges = null; redraw(); }
    }).catch((err) => {
      delete S.fetching[stack + "|" + layer];
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
    const have = S.blocks[layer] || (S.blocks[layer] = new Map()), stack = S.stack;
    for (const blk of want) {
      const k = stack + "|" + layer + "|" + blk;
      if (have.has(blk) || S.blockFetching[k]) continue;
      if (!server || typeof server.explorer_layer !== "function") { S.fetchError = "the server cannot be reached"; return; }
      S.blockFetching[k] = true;
      const key = S.p.key;
      server.explorer_layer({ key: key, layer: layer, block: blk, stack: stack }).then((res) => {
        if (!S.p || S.p.key !== key) return;
        delete S.blockFetching[k];
        if (!res || res.error) { if (stack === S.stack) { S.fetchError = (res && res.error) || "could not load rows"; redraw(); } return; }
        have.set(blk, decodeBlock(res.rows));
        root.dataset.blocks = String(Object.values(S.blocks).reduce((n, m) => n + m.size, 0));
        if (layer === S.layer && stack === S.stack) { S.edges = null; schedule(); }
      }).catch((err) => { delete S.blockFetching[k]; S.fetchError = "could not load rows: " + err; schedule(); });
    }
  }
  // the active token's row in full (every weight of every head, float32[H * T]), fetched once
  function ensureExact(layer, i) {
    const k = layer + "|" + i, stack = S.stack, into = S.exact, fk = "row|" + stack + "|" + k;
    if (S.exact.has(k) || S.blockFetching[fk] || !server || typeof server.explorer_layer !== "function") return;
    S.blockFetching[fk] = true;
    const key = S.p.key;
    server.explorer_layer({ key: key, layer: layer, row: i, stack: stack }).then((res) => {
      delete S.blockFetching[fk];
      if (!S.p || S.p.key !== key || !res || res.error) return;
      const b = XH.base64ToBytes(res.rows.b64);
      into.set(k, new Float32Array(b.buffer, b.byteOffset, b.byteLength / 4));
      if (stack !== S.stack) return;
      if (S.combo) S.combo.rows.delete(i);
      if (layer === S.layer) { S.edges = null; schedule(); }
    }).catch(() => { delete S.blockFetching[fk]; });
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
    const exact = S.exact.get(S.layer + "|" + i), TK = S.TK, kspec = S.K.special;
    if (exact) {  // the whole row: every weight, as the engine computed it
      for (const h of S.heads) {
        const w = Math.max(0, +S.weights[h] || 0);
        if (!w) continue;
        let s = 0;
        for (let j = 0; j < TK; j++) if (!(S.hideSpecial && kspec[j])) s += exact[h * TK + j];
        const f = w / (s > 1e-9 ? s : 1);
        for (let j = 0; j < TK; j++) {
          const v = exact[h * TK + j];
          if (v > 0 && !(S.hideSpecial && kspec[j])) acc.set(j, (acc.get(j) || 0) + v * f);
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
        if (S.hideSpecial && kspec[j]) continue;
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
  // the rows of each column: left = the stack's queries (vis, rowOf), right = its keys (visR, rowOfR)
  function visibleTokens() {
    const side = (seq, n) => {
      const vis = [], rowOf = new Int32Array(n).fill(-1);
      for (let i = 0; i < n; i++) {
        if (S.hideSpecial && seq.special[i]) continue;
        rowOf[i] = vis.length; vis.push(i);
      }
      return [vis, rowOf];
    };
    [S.vis, S.rowOf] = side(S.Q, S.TQ);
    [S.visR, S.rowOfR] = side(S.K, S.TK);
  }

  // Per head: row sums over visible keys (to renormalise), row maxima, column means.
  function headStats() {
    if (S.long) return longStats();
    if (S.stats && S.stats.stack === S.stack && S.stats.layer === S.layer && S.stats.hide === S.hideSpecial) return S.stats;
    const att = S.layers[S.layer];
    const TQ = S.TQ, TK = S.TK, H = S.H, vis = S.vis, n = vis.length, lut = att.lut, data = att.data;
    const visMask = new Uint8Array(TK);  // visible keys (right column)
    for (const j of S.visR) visMask[j] = 1;
    const rowSum = new Float32Array(H * TQ), rowMax = new Float32Array(H * TQ), colMean = new Float32Array(H * TK);
    for (let h = 0; h < H; h++) {
      for (const i of vis) {
        const o = (h * TQ + i) * TK;
        let s = 0;
        for (let j = 0; j < TK; j++) if (visMask[j]) s += lut[data[o + j]];
        rowSum[h * TQ + i] = s > 0 ? s : 1;
      }
      for (const i of vis) {
        const o = (h * TQ + i) * TK, inv = 1 / rowSum[h * TQ + i];
        let m = 0;
        for (let j = 0; j < TK; j++) {
          if (!visMask[j]) continue;
          const v = lut[data[o + j]] * inv;
          if (v > m) m = v;
          colMean[h * TK + j] += v;
        }
        rowMax[h * TQ + i] = m;
      }
    }
    let colPeak = 0;
    for (let k = 0; k < colMean.length; k++) { colMean[k] /= Math.max(n, 1); if (colMean[k] > colPeak) colPeak = colMean[k]; }
    S.stats = { stack: S.stack, layer: S.layer, hide: S.hideSpecial, rowSum, rowMax, colMean, colPeak: colPeak || 1, visMask };
    return S.stats;
  }

  // long inputs: the same statistics over the loaded rows in view (column means: of those rows)
  function longStats() {
    const TQ = S.TQ, TK = S.TK, H = S.H, rows = rowsInView().filter((i) => headRow(0, i));
    const sig = S.stack + "|" + S.layer + "|" + S.hideSpecial + "|" + (rows[0] || 0) + "|" + rows.length;
    if (S.stats && S.stats.sig === sig) return S.stats;
    const visMask = new Uint8Array(TK);
    for (const j of S.visR) visMask[j] = 1;
    const rowSum = new Float32Array(H * TQ).fill(1), rowMax = new Float32Array(H * TQ), colMean = new Float32Array(H * TK);
    for (let h = 0; h < H; h++) {
      for (const i of rows) {
        const r = headRow(h, i), s = headRowSum(h, i);
        rowSum[h * TQ + i] = s;
        let m = 0;
        for (let t = r.a; t < r.e; t++) {
          const j = r.idx[t];
          if (!visMask[j]) continue;
          const v = r.val[t] / s;
          if (v > m) m = v;
          colMean[h * TK + j] += v / rows.length;
        }
        rowMax[h * TQ + i] = m;
      }
    }
    let colPeak = 0;
    for (let k = 0; k < colMean.length; k++) if (colMean[k] > colPeak) colPeak = colMean[k];
    S.stats = { sig, layer: S.layer, hide: S.hideSpecial, rowSum, rowMax, colMean, colPeak: colPeak || 1, visMask };
    return S.stats;
  }

  function comboKey() {
    return [S.stack, S.layer, S.hideSpecial, Array.from(S.heads).sort((a, b) => a - b).join("."), S.weights.join(".")].join("|");
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
    const TQ = S.TQ, TK = S.TK, lut = att.lut, data = att.data, vis = S.vis, visMask = st.visMask;
    const M = new Float32Array(TQ * TK);  // rows: queries (left), columns: keys (right)
    let wsum = 0;
    for (const h of S.heads) {
      const w = Math.max(0, +S.weights[h] || 0);
      if (!w) continue;
      wsum += w;
      for (const i of vis) {
        const o = (h * TQ + i) * TK, f = w / st.rowSum[h * TQ + i], r = i * TK;
        for (let j = 0; j < TK; j++) if (visMask[j]) M[r + j] += lut[data[o + j]] * f;
      }
    }
    if (wsum > 0) for (let k = 0; k < M.length; k++) M[k] /= wsum;
    // per visible row: keys sorted by weight (descending), reused while only the threshold changes
    const order = new Array(TQ);
    for (const i of vis) {
      const r = i * TK, idx = [];
      for (let j = 0; j < TK; j++) if (M[r + j] > 0) idx.push(j);
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
    const c = combined(), T = S.TK, M = c.M, th = S.threshold;  // M is [TQ, TK]: row i at i * TK
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
    if (S.info.rollout) { const o = el("option", null, "rollout"); o.value = String(S.L); o.title = "attention rollout across all layers"; ui.layer.append(o); }
    ui.layer.title = "Layer (0 = first)";
    layerLabel.append(ui.layer);
    ui.layerPrev = button("\u25C0", "xb-icon", "previous layer");
    ui.layerNext = button("\u25B6", "xb-icon", "next layer");
    const layerBox = el("div", "xb-group");
    layerBox.append(layerLabel, ui.layerPrev, ui.layerNext);
    // encoder-decoders: which attention (the encoder's, the decoder's, or the decoder's over the encoder)
    ui.stack = null;
    const stacks = p.stacks || [];
    let stackBox = null;
    if (stacks.length > 1) {
      stackBox = el("label", "xb-field xb-stack-field");
      stackBox.append(el("span", "xb-field-name", "Attention"));
      ui.stack = el("select", "xb-stack");
      for (const st of stacks) {
        const o = el("option", null, st.label || st.name);
        o.value = st.name;
        ui.stack.append(o);
      }
      ui.stack.title = "Encoder: the input attends to itself; Decoder: each decoder token to itself and earlier " +
        "decoder tokens; Cross: decoder tokens (left) attend to the encoder's tokens (right)";
      stackBox.append(ui.stack);
    }

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

    if (stackBox) bar.append(stackBox);
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
    ui.caption = el("div", "xb-caption", stackCaption());
    panel.append(ui.caption);
    ui.caption.hidden = !(p.stacks && p.stacks.length > 1);
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
      !p.can_mask ? "Double-click: mask (masked LMs only)" : maskSide() ? "Double-click: mask it and run again (again to unmask)"
        : "Double-click: mask (the input's tokens only: choose the " + mainLabel() + " attention)",
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
    const p = S.p, rowH = S.rowH, n = Math.max(S.vis.length, S.visR.length);
    const labelsOf = (seq, vis) => vis.map((i) => XH.tokenLabel(seq.tokens[i]));
    const labels = labelsOf(S.Q, S.vis), labelsR = labelsOf(S.K, S.visR);
    const widest = (seq, vis, ls) => vis.reduce((m, i, r) => Math.max(m, ls[r].length + ((seq.continues || [])[i] ? 2 : 0)), 1);
    const longest = Math.max(widest(S.Q, S.vis, labels), widest(S.K, S.visR, labelsR));
    const fontPx = rowH >= 22 ? 13 : rowH >= 18 ? 12 : 11;
    // (encoder-decoders: wide enough for the column's name, "decoder" / "encoder", over it)
    S.tokW = Math.round(XH.clamp(longest * fontPx * 0.62 + 18, p.stacks && p.stacks.length > 1 ? 76 : 56, 170));
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
    // which tokens each column holds, when the two differ or are not the input's (encoder-decoders)
    const seqName = (s) => (s === "decoder" ? "decoder" : "encoder");
    const named = p.stacks && p.stacks.length > 1;
    const fromH = el("div", "xb-ch xb-ch-tok" + (named ? " xb-ch-two" : ""), named ? seqName(S.info.query_seq) + "\nfrom" : "from");
    const toH = el("div", "xb-ch xb-ch-tok" + (named ? " xb-ch-two" : ""), named ? seqName(S.info.key_seq) + "\nto" : "to");
    fromH.title = "queries: " + (named ? "the " + seqName(S.info.query_seq) + "'s tokens" : "the tokens") + " that attend";
    toH.title = "keys: " + (named ? "the " + seqName(S.info.key_seq) + "'s tokens" : "the tokens") + " attended to";
    ui.head.replaceChildren(
      outH, fromH,
      el("div", "xb-ch xb-ch-mid", S.info.causal ? "attends to (earlier tokens)" : "attends to"),
      toH, inH);

    const makeCol = (col, side, seq, vis, ls) => {
      const frag = document.createDocumentFragment();
      const cont = seq.continues || [], masked = seq.masked || [];
      for (let r = 0; r < vis.length; r++) {
        const i = vis[r];
        const d = el("div", "xb-tok", ls[r]);
        d.dataset.pos = String(i);
        d.dataset.side = side;
        let title = "#" + i + "  " + seq.raw_tokens[i];
        if (cont[i]) { d.classList.add("xb-cont"); title += "  (continues the word before it)"; }
        if (seq.special[i]) d.classList.add("xb-special");
        if ((seq.generated || [])[i]) { d.classList.add("xb-generated"); title += "  (generated by the model)"; }
        if (seq.segments[i] === 1) d.classList.add("xb-segb");
        if (masked.indexOf(i) >= 0) { d.classList.add("xb-masked"); title += "  (masked; was " + seq.original_tokens[i] + ")"; }
        d.title = title;
        frag.append(d);
      }
      col.replaceChildren(frag);
    };
    makeCol(ui.colL, "left", S.Q, S.vis, labels);
    makeCol(ui.colR, "right", S.K, S.visR, labelsR);

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
    if (ui.stack) ui.stack.addEventListener("change", () => setStack(ui.stack.value));
    ui.layer.addEventListener("change", () => setLayer(+ui.layer.value));
    ui.layerPrev.addEventListener("click", () => setLayer(S.layer - 1));
    ui.layerNext.addEventListener("click", () => setLayer(S.layer + 1));
    ui.threshold.addEventListener("input", () => { S.threshold = +ui.threshold.value; S.edges = null; schedule(); });
    ui.threshold.addEventListener("change", () => syncUrl());
    ui.hide.addEventListener("change", () => {
      S.hideSpecial = ui.hide.checked;
      if (S.hideSpecial && S.frozen && (S.frozen.side === "left" ? S.Q : S.K).special[S.frozen.pos]) S.frozen = null;
      S.hover = null;
      buildColumns(); redraw(); syncUrl();
    });
    ui.allLinesBtn.addEventListener("click", () => { S.allLines = !S.allLines; S.edges = null; redraw(); });
    ui.searchBtn.addEventListener("click", () => {
      if (!S.frozen || !searchApplies()) return;
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
        const r = Math.floor((e.clientY - rect.top) / S.rowH), vis = side === "left" ? S.vis : S.visR;
        if (h >= 0 && h < S.H && r >= 0 && r < vis.length) {
          const v = stripValue(side, vis[r], h);
          strip.title = "head " + h + " \u00b7 " + (side === "left" ? "out of " : "into ") + "#" + vis[r] +
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
        if (t) maskToken(+t.dataset.pos, t.dataset.side);
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

  function maskToken(pos, side) {
    const p = S.p, seq = side === "right" ? S.K : S.Q;
    S.frozen = { side: side === "right" ? "right" : "left", pos };
    if (!p.can_mask) {
      S.message = "Masking needs a masked language model; " + p.model + " is a " + p.model_kind + " model." +
        (p.causal ? " Select a token to see the predicted next token instead." : "");
      S.edges = null; redraw();
      return;
    }
    if ((side === "right" ? S.info.key_seq : S.info.query_seq) !== "input") {
      S.message = "Masking replaces a token of the input text; these are the decoder's tokens: choose the " +
        mainLabel() + " attention to mask.";
      S.edges = null; redraw();
      return;
    }
    S.frozen = { side: "left", pos };
    if (seq.special[pos]) {
      S.message = "Special tokens such as " + seq.raw_tokens[pos] + " cannot be masked: double-click a word piece.";
      redraw();
      return;
    }
    S.message = "";
    S.pendingMask = true;
    redraw();
    syncUrl();
    trigger("mask", {
      key: p.key, position: pos, stack: S.stack, layer: S.layer, heads: Array.from(S.heads).sort((a, b) => a - b),
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
    const named = S.p.stacks && S.p.stacks.length > 1 ? (S.info.label || S.info.name) + " attention \u00b7 " : "";
    let st = named + (S.layer === S.L ? "Attention rollout (all layers)" : "Layer " + S.layer) + " \u00b7 " + (nh === S.H ? "all " + S.H + " heads" : nh + " of " + S.H + " heads") +
      (nh > 1 ? (weighted ? " (weighted mean)" : " (mean)") : "") + " \u00b7 " + E.n.toLocaleString() + " lines";
    showLineNote(E, active);
    if (E.capped) st += " (the " + E.n.toLocaleString() + " strongest; " + E.capped.toLocaleString() + " more pass the threshold)";
    if (nh === 0) st += " \u00b7 select a head to draw attention";
    if (active) st += " \u00b7 " + (S.frozen ? "frozen on" : "hovering") + " #" + active.pos + " (" + (active.side === "left" ? "from" : "to") + ")";
    if (S.pendingMask) st += " \u00b7 masking and running again\u2026";
    if (S.p.truncated) st += " \u00b7 text cut to " + S.p.tokens.length + " tokens";
    setStatus(st);
    XH.setText(ui.message, S.message || "");
    ui.message.style.display = S.message ? "" : "none";
    const ds = root.dataset;
    ds.lines = String(E.n); ds.signature = E.signature; ds.layer = String(S.layer); ds.stack = S.stack;
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
    svg.setAttribute("viewBox", "0 0 " + W + " " + Math.max(S.vis.length, S.visR.length) * rowH);
    const frag = document.createDocumentFragment();
    const color = lineColor(), x0 = 2, x1 = W - 2, cx = W / 2;
    for (let m = 0; m < E.n; m++) {
      const y0 = S.rowOf[E.src[m]] * rowH + half, y1 = S.rowOfR[E.dst[m]] * rowH + half, w = E.w[m];
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
      const y0 = S.rowOf[E.src[m]] * rowH + half - top, y1 = S.rowOfR[E.dst[m]] * rowH + half - top;
      if ((y0 < -2 && y1 < -2) || (y0 > viewH + 2 && y1 > viewH + 2)) continue;
      inView[m] = 1; count++;
    }
    // many overlapping lines: fainter, so that the strong ones still stand out
    const density = XH.clamp(Math.sqrt(2500 / Math.max(count, 1)), 0.18, 1);
    let drawn = 0;
    for (let m = 0; m < E.n; m++) {
      if (!inView[m]) continue;
      const y0 = S.rowOf[E.src[m]] * rowH + half - top, y1 = S.rowOfR[E.dst[m]] * rowH + half - top;
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
    // pos is a query (left) or a key (right) position; rows are queries, columns keys
    const st = headStats(), att = S.layers[S.layer], TQ = S.TQ, TK = S.TK;
    const active = S.frozen || S.hover;
    if (S.long) {
      if (side === "right" && active && active.side === "left") return headVal(h, active.pos, pos) / headRowSum(h, active.pos);
      if (side === "right") return st.colMean[h * TK + pos] / st.colPeak;
      if (active && active.side === "right") return st.visMask[active.pos] ? headVal(h, pos, active.pos) / headRowSum(h, pos) : 0;
      return st.rowMax[h * TQ + pos];
    }
    if (side === "right") {
      if (active && active.side === "left") {
        const i = active.pos;
        return att.lut[att.data[(h * TQ + i) * TK + pos]] / st.rowSum[h * TQ + i];
      }
      return st.colMean[h * TK + pos] / st.colPeak;
    }
    if (active && active.side === "right") {
      const j = active.pos;
      if (!st.visMask[j]) return 0;
      return att.lut[att.data[(h * TQ + pos) * TK + j]] / st.rowSum[h * TQ + pos];
    }
    return st.rowMax[h * TQ + pos];
  }

  function drawStrips() {
    if (!layerReady()) return;
    const rowH = S.rowH, cw = S.cellW, pad = rowH > 16 ? 2 : 1;
    for (const [canvas, side] of [[ui.stripLCanvas, "left"], [ui.stripRCanvas, "right"]]) {
      const { g, viewH, top } = fitCanvas(canvas, S.stripW), vis = side === "left" ? S.vis : S.visR;
      const r0 = Math.max(0, Math.floor(top / rowH)), r1 = Math.min(vis.length, Math.ceil((top + viewH) / rowH));
      for (let r = r0; r < r1; r++) {
        const pos = vis[r], y = r * rowH - top;
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
    const TK = S.TK;
    const M = S.combo ? S.combo.M : null;  // [TQ, TK]
    // long inputs: the active row as a dense vector (the right column), the active column per row
    let focusRow = null;
    if (S.long && S.combo && active && active.side === "left") {
      focusRow = new Float32Array(TK);
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
          if (active.side === "left" && side === "right") v = M[active.pos * TK + pos];
          else if (active.side === "right" && side === "left") v = M[pos * TK + active.pos];
        }
        d.style.setProperty("--w", v > 0.002 ? Math.sqrt(v).toFixed(3) : "0");
        d.classList.toggle("xb-weighted", v > 0.002);
        d.classList.toggle("xb-active", !!active && active.pos === pos && active.side === side);
        d.classList.toggle("xb-frozen", !!S.frozen && S.frozen.pos === pos && S.frozen.side === side);
        // causal models: a token cannot attend to later tokens
        d.classList.toggle("xb-future", !!(S.info.causal && active && active.side === "left" && side === "right" && pos > active.pos));
      }
    }
  }

  function showPredictions() {
    const p = S.p, active = S.frozen || S.hover;
    const next = p.model_kind === "causal-lm" || p.model_kind === "encoder-decoder";  // predicts the following token
    const predSeq = p.prediction_seq || "input";
    ui.preds.replaceChildren();
    XH.setText(ui.note, "");
    if (!active) {
      XH.setText(ui.sideTitle, "Predictions");
      XH.setText(ui.sideSub, p.predictions ? "Select a" + (predSeq === "decoder" ? " decoder" : "") +
        " token to see the model's top predictions" + (next ? " for the token that follows it." : " at it.") : "");
      if (!p.predictions) XH.setText(ui.note, p.prediction_note || "This model makes no token predictions.");
      return;
    }
    const seqName = active.side === "right" ? S.info.key_seq : S.info.query_seq, seq = active.side === "right" ? S.K : S.Q;
    const pos = active.pos, tok = XH.pieceLabel(seq.tokens[pos], (seq.continues || [])[pos]);
    if (next && seqName === predSeq) {
      XH.setText(ui.sideTitle, "Next token after \u201c" + tok + "\u201d");
    } else {
      XH.setText(ui.sideTitle, "At \u201c" + tok + "\u201d");
    }
    let sub = "#" + pos + (p.stacks && p.stacks.length > 1 ? " of the " + (seqName === "decoder" ? "decoder" : "encoder") : "");
    if ((seq.masked || []).indexOf(pos) >= 0) sub += " \u00b7 masked (was \u201c" + seq.original_tokens[pos] + "\u201d)";
    else if (seq.special[pos]) sub += " \u00b7 special token";
    XH.setText(ui.sideSub, sub);
    if (!p.predictions) {
      XH.setText(ui.note, p.prediction_note || "This model makes no token predictions.");
      return;
    }
    if (seqName !== predSeq) {  // an encoder token: the model predicts the decoder's tokens only
      XH.setText(ui.note, "The model's predictions are the decoder's (the token after each decoder token): " +
        "select a decoder token (Decoder or Cross attention) to see them.");
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
    if (p.can_mask && seqName === "input" && (seq.masked || []).indexOf(pos) < 0 && !seq.special[pos]) XH.setText(ui.note, "Double-click the token to mask it.");
  }

  // the corpus search takes a token of the input at a layer of the main stack (not the rollout)
  function searchApplies() { return isMainStack() && (!S.frozen || S.frozen.side === "left" || S.info.key_seq === "input"); }

  function syncControls() {
    if (ui.stack) ui.stack.value = S.stack;
    ui.layer.value = String(S.layer);
    ui.layerPrev.disabled = S.layer <= 0;
    ui.layerNext.disabled = S.layer >= maxLayer();
    ui.threshold.value = String(S.threshold);
    XH.setText(ui.thValue, Math.round(S.threshold * 100) + "%");
    ui.hide.checked = S.hideSpecial;
    ui.hideLabel.classList.toggle("xb-on", S.hideSpecial);
    ui.searchBtn.hidden = !(XH.hasTab && XH.hasTab("search"));
    if (!searchApplies()) {  // the corpus holds the input's (encoder's) vectors, per its own layers and heads
      ui.searchBtn.disabled = true;
      XH.setText(ui.searchBtn, "Corpus search: " + mainLabel() + " attention only");
      ui.searchBtn.title = "The corpus holds the " + mainLabel().toLowerCase() + "'s vectors of the input's tokens: " +
        "choose the " + mainLabel() + " attention to search with a token";
    } else {
      const tokens = S.p.tokens, cont = S.p.continues || [];
      ui.searchBtn.disabled = !S.frozen;
      XH.setText(ui.searchBtn, S.frozen ? "Search \u201c" + XH.pieceLabel(tokens[S.frozen.pos], cont[S.frozen.pos]) +
        "\u201d in the corpus" : "Search this token in the corpus");
      ui.searchBtn.title = S.frozen ? "Open the Corpus search tab with this token, layer " + S.layer +
        " and the selected heads, and search" : "Click a token to freeze it, then search the corpus for tokens like it";
    }
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
      stack: isMainStack() ? null : S.stack,
    };
    if (withText) {
      // (encoder-decoders: the second box, `pair` in the address, is the decoder's text when it is not the text)
      const target = p.model_kind === "encoder-decoder" && p.target != null && p.target !== p.text ? p.target : null;
      values.model = p.model; values.text = p.text; values.pair = p.pair || target;
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
