/* exbert-hub neuron view. Runs as the body of js_on_load(element, trigger, props, server, upload, watch).
 * Value: neuron_view_payload(...) (see neuron_view.py). Terms of other selections are fetched lazily
 * with server.neuron_view_terms. Token text is only ever set with textContent.
 */
(function neuronView() {
  const root = element.querySelector(".xh-nv") || element;
  const cache = new Map(); // "stack|layer|head|token" -> decoded terms
  let S = null;
  let fetchId = 0;

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text != null) e.textContent = String(text);
    return e;
  }
  function label(s) {
    const hub = window.exbertHub;
    return hub && hub.tokenLabel ? hub.tokenLabel(s) : String(s);
  }
  function f32(p) {
    if (!p) return null;
    const bytes = window.exbertHub.base64ToBytes(p.b64);
    const copy = new Uint8Array(bytes.length);
    copy.set(bytes);
    return { shape: p.shape.map(Number), data: new Float32Array(copy.buffer) };
  }
  function fmt(x) {
    if (x == null || Number.isNaN(x)) return "";
    if (!Number.isFinite(x) || x <= -1e30) return x > 0 ? "+\u221e" : "\u2212\u221e";
    const a = Math.abs(x);
    if (a !== 0 && (a >= 1e5 || a < 1e-3)) return x.toExponential(2);
    return x.toFixed(3);
  }
  function isMasked(v) { return !Number.isFinite(v) || v <= -1e9; }

  function message(cls, text) { root.replaceChildren(el("div", cls, text)); }

  function decodeTerms(t) {
    const out = { ...t };
    for (const k of ["query", "keys", "dot", "scaled", "bias", "mask", "logits", "softmax", "model"]) out[k] = f32(t[k]);
    return out;
  }
  function termKey(stack, layer, head, token) { return stack + "|" + layer + "|" + head + "|" + token; }

  function render(value) {
    if (!value || typeof value !== "object") { S = null; message("xh-empty", "Run an analysis to see the neuron view."); return; }
    if (value.error) { S = null; message("xh-error", value.error); return; }
    if (!window.exbertHub) { message("xh-error", "exbert-hub: common.js is not loaded on this page"); return; }
    if (!S || S.key !== value.key) cache.clear();
    S = {
      key: value.key, sequences: value.sequences, stacks: value.stacks || [], stack: value.stack,
      layer: value.layer || 0, head: value.head || 0, token: value.token || 0,
    };
    // in the app the address holds the selection the other views made (the payload may be older)
    if (window.exbertHub.ready) Object.assign(S, urlChange());
    if (value.terms && !value.terms.error) cache.set(termKey(value.stack, value.terms.layer, value.terms.head, value.terms.token), decodeTerms(value.terms));
    build();
    if (value.terms && value.terms.error) { S.status.textContent = value.terms.error; return; }
    select({});
  }

  function stackInfo() { return S.stacks.find((s) => s.name === S.stack) || S.stacks[0]; }

  // --- the selection in the page address (shared with the other views) ------------------------
  // what differs between the address's layer / first head / token and this view (input tokens only)
  function urlChange() {
    const XH = window.exbertHub, info = stackInfo();
    const out = {};
    if (!XH.urlSelection || info.query_seq !== "input") return out;
    const sel = XH.urlSelection(info.layers, info.heads, S.sequences.input.tokens.length);
    if (sel.layer != null && sel.layer !== S.layer) out.layer = sel.layer;
    if (sel.heads && sel.heads.length && sel.heads.indexOf(S.head) < 0) out.head = sel.heads[0];
    if (sel.token != null && sel.token !== S.token) out.token = sel.token;
    return out;
  }
  function toUrl() {
    const XH = window.exbertHub, info = stackInfo();
    if (!XH.writeSelection || info.query_seq !== "input") return;
    XH.writeSelection({ layer: S.layer, heads: [S.head], numHeads: info.heads, token: S.token });
  }
  // the query token a stack opens on: the last non-special one for causal attention (it sees every
  // key), else the first non-special one
  function defaultToken(info) {
    const q = S.sequences[info.query_seq];
    const idx = [];
    q.special.forEach((sp, i) => { if (!sp) idx.push(i); });
    if (!idx.length) return 0;
    return info.causal ? idx[idx.length - 1] : idx[0];
  }

  function build() {
    root.replaceChildren();
    const info = stackInfo();
    const bar = el("div", "xh-toolbar");
    if (S.stacks.length > 1) {
      const lab = el("label", null, "Attention");
      const sel = el("select", "xh-stack");
      const names = { encoder: "Encoder", decoder: "Decoder", cross: "Cross (decoder \u2192 encoder)", self: "Self" };
      for (const s of S.stacks) sel.append(new Option(names[s.name] || s.name, s.name));
      sel.value = S.stack;
      sel.addEventListener("change", () => {
        const inf = S.stacks.find((s) => s.name === sel.value);
        S.stack = sel.value;
        S.layer = Math.min(S.layer, inf.layers - 1);
        S.head = Math.min(S.head, inf.heads - 1);
        const q = S.sequences[inf.query_seq];
        S.token = inf.causal ? defaultToken(inf) : Math.min(S.token, q.tokens.length - 1);
        build();
        select({});
      });
      lab.append(sel);
      bar.append(lab);
    }
    const layerLab = el("label", null);
    layerLab.append(el("span", "xh-field-name", "Layer"));
    const layerSel = el("select", "xh-layer");
    for (let l = 0; l < info.layers; l++) layerSel.append(new Option(String(l), String(l)));
    layerSel.value = String(S.layer);
    layerSel.addEventListener("change", () => select({ layer: Number(layerSel.value) }, true));
    layerLab.append(layerSel);
    const headLab = el("label", null);
    headLab.append(el("span", "xh-field-name", "Head"));
    const swatch = el("span", "xh-head-swatch");
    swatch.title = "this head's colour in every view";
    const headSel = el("select", "xh-head-sel");
    for (let h = 0; h < info.heads; h++) headSel.append(new Option(String(h), String(h)));
    headSel.value = String(S.head);
    headSel.addEventListener("change", () => select({ head: Number(headSel.value) }, true));
    headLab.append(swatch, headSel);
    bar.append(layerLab, headLab);
    const legend = el("span", "xh-legend");
    legend.append(el("span", null, "negative"), el("i"), el("span", null, "positive"));
    bar.append(legend);
    root.append(bar);
    const infoLine = el("div", "xh-info");
    root.append(infoLine);
    const body = el("div", "xh-body");
    const qlist = el("div", "xh-qlist");
    qlist.append(el("div", "xh-qtitle", info.query_seq === "decoder" ? "decoder query token" : "query token"));
    const q = S.sequences[info.query_seq];
    q.tokens.forEach((t, i) => {
      const cont = q.continues && q.continues[i];
      const d = el("div", "xh-qtok" + (q.special[i] ? " xh-special" : "") + (cont ? " xh-cont" : ""), label(t));
      d.dataset.index = String(i);
      d.title = label(t) + "  (#" + i + ")" + (cont ? "  continues the word before it" : "");
      qlist.append(d);
    });
    qlist.addEventListener("click", (ev) => {
      const d = ev.target.closest(".xh-qtok");
      if (d) select({ token: Number(d.dataset.index) }, true);
    });
    qlist.tabIndex = 0;
    qlist.addEventListener("keydown", (ev) => {
      if (ev.key === "ArrowDown" || ev.key === "ArrowUp") {
        ev.preventDefault();
        select({ token: Math.max(0, Math.min(q.tokens.length - 1, S.token + (ev.key === "ArrowDown" ? 1 : -1))) }, true);
      }
    });
    const table = el("div", "xh-table");
    body.append(qlist, table);
    root.append(body);
    const readout = el("div", "xh-readout");
    const status = el("div", "xh-status");
    root.append(readout, status);
    Object.assign(S, { layerSel, headSel, swatch, qlist, table, infoLine, readout, status, body });
  }

  // user: the change comes from the user (written into the address)
  async function select(change, user) {
    Object.assign(S, change);
    if (user) toUrl();
    S.layerSel.value = String(S.layer);
    S.headSel.value = String(S.head);
    S.swatch.style.background = window.exbertHub.headColor(S.head);
    S.qlist.querySelectorAll(".xh-qtok.xh-sel").forEach((d) => d.classList.remove("xh-sel"));
    const sel = S.qlist.children[S.token + 1];
    if (sel) { sel.classList.add("xh-sel"); if (change.token == null) sel.scrollIntoView({ block: "nearest" }); }
    const ck = termKey(S.stack, S.layer, S.head, S.token);
    let terms = cache.get(ck);
    if (!terms) {
      if (!S.key || !server || !server.neuron_view_terms) { S.status.textContent = "This selection was not sent and cannot be fetched (no server)."; return; }
      const id = ++fetchId;
      S.status.textContent = "Loading\u2026";
      let res;
      try { res = await server.neuron_view_terms({ key: S.key, stack: S.stack, layer: S.layer, head: S.head, token: S.token }); }
      catch (err) { res = { error: String(err && err.message || err) }; }
      if (id !== fetchId) return;
      if (!res || res.error) { S.status.textContent = "Could not load these terms: " + (res ? res.error : "no answer"); return; }
      terms = decodeTerms(res);
      cache.set(ck, terms);
    }
    S.status.textContent = "";
    S.terms = terms;
    draw();
  }

  function describe(t) {
    const info = stackInfo();
    const qseq = S.sequences[info.query_seq];
    const parts = [];
    const tokText = (qseq.continues && qseq.continues[t.token] ? "##" : "") + label(qseq.tokens[t.token]);
    const b = (s) => el("b", null, s);
    const line = S.infoLine;
    line.replaceChildren();
    line.append("Query ", b("\u201c" + tokText + "\u201d (#" + t.token + ")"), ", layer " + t.layer + ", head " + t.head + ". ");
    if (t.group > 1) {
      const a = t.kv_head * t.group, z = a + t.group - 1;
      line.append("Grouped-query attention: keys come from ", b("key head " + t.kv_head), ", shared by query heads " + a + "\u2013" + z + " (" + t.kv_heads + " key heads for " + info.heads + " query heads). ");
    }
    const d = t.query.shape[0];
    const inv = 1 / Math.sqrt(d);
    const sc = Math.abs(t.scale - inv) < 1e-6 ? "1/\u221a" + d + " = " + t.scale.toPrecision(4) : Math.abs(t.scale - 1) < 1e-9 ? "1 (no scaling)" : t.scale.toPrecision(4);
    line.append("Scale " + sc + ". ");
    if (t.bias) line.append("The model adds a position bias to every score. ");
    if (t.mask) {
      let masked = 0;
      for (const v of t.mask.data) if (isMasked(v)) masked++;
      if (masked) line.append(masked + " masked key" + (masked > 1 ? "s" : "") + " (greyed). ");
    }
    let worst = 0;
    for (let j = 0; j < t.softmax.data.length; j++) worst = Math.max(worst, Math.abs(t.softmax.data[j] - t.model.data[j]));
    line.append("Recomputed softmax vs the model's attention: max difference " + worst.toExponential(1) + ". q and k are the vectors the model multiplied (after rotary embeddings where it has them).");
    void parts;
  }

  function draw() {
    const t = S.terms;
    const info = stackInfo();
    describe(t);
    const kseq = S.sequences[info.key_seq];
    const n = t.keys.shape[0], d = t.keys.shape[1];
    const q = t.query.data, K = t.keys.data;
    const prod = new Float32Array(n * d);
    for (let j = 0; j < n; j++) for (let x = 0; x < d; x++) prod[j * d + x] = K[j * d + x] * q[x];
    S.prod = prod;
    const rowH = n > 200 ? 18 : 20;
    const font = "13px ui-monospace, SFMono-Regular, Menlo, Consolas, monospace";
    const labels = kseq.tokens.map(label);
    const kcont = kseq.continues || [];
    const ctx0 = document.createElement("canvas").getContext("2d");
    ctx0.font = font;
    let tokW = 76;
    labels.forEach((s, j) => { tokW = Math.max(tokW, ctx0.measureText((kcont[j] ? "##" : "") + s).width + 16); });
    tokW = Math.min(Math.ceil(tokW), 170);
    // use the width there is: wider vector cells (up to 16 px per dimension), then a wider softmax bar
    const numW = 78 + 78 + (t.bias ? 74 : 0) + (t.mask ? 70 : 0) + (t.bias || t.mask ? 78 : 0);
    const avail = availWidth();
    let cw = Math.max(2, Math.min(10, Math.floor(220 / d)));
    const extra = avail - (tokW + numW + 140 + 2 * (cw * d + 8)) - 4;
    if (extra > 0) cw = Math.min(16, cw + Math.floor((0.7 * extra) / (2 * d)));
    else cw = Math.max(2, cw + Math.floor(extra / (2 * d)));   // narrow: thinner cells (the table scrolls)
    const stripW = cw * d + 8;
    const softW = Math.max(140, Math.min(420, avail - (tokW + numW + 2 * stripW) - 4));
    S.drawnWidth = avail;
    const cols = [
      { id: "tok", title: "key", w: tokW },
      { id: "k", title: "k", w: stripW, strip: true },
      { id: "qk", title: "q \u00d7 k", w: stripW, strip: true },
      { id: "dot", title: "q \u00b7 k", w: 78, num: true },
      { id: "scaled", title: "\u00d7 scale", w: 78, num: true },
    ];
    if (t.bias) cols.push({ id: "bias", title: "+ bias", w: 74, num: true });
    if (t.mask) cols.push({ id: "mask", title: "+ mask", w: 70, num: true });
    if (t.bias || t.mask) cols.push({ id: "logits", title: "= logit", w: 78, num: true });
    cols.push({ id: "softmax", title: "softmax", w: softW });
    let x = 0;
    for (const c of cols) { c.x = x; x += c.w; }
    const total = x;
    const table = S.table;
    const keepScroll = table.scrollTop;
    table.replaceChildren();
    // header: the query vector (aligned with the key vectors) and the column titles
    const thead = el("div", "xh-thead");
    thead.style.width = total + "px";
    const qrow = el("div", "xh-qrow");
    const hrow = el("div", "xh-hrow");
    for (const c of cols) {
      const qc = el("div", "xh-c" + (c.num ? " xh-num" : ""));
      qc.style.width = c.w + "px";
      if (c.id === "tok") { qc.classList.add("xh-tokc"); qc.textContent = "query q"; qc.title = "the query vector of " + label(S.sequences[info.query_seq].tokens[t.token]) + " (#" + t.token + ")"; }
      if (c.id === "k") {
        const cv = document.createElement("canvas");
        cv.className = "xh-qstrip";
        qc.style.padding = "0";
        qc.append(cv);
        S.qCanvas = cv;
      }
      qrow.append(qc);
      const hc = el("div", "xh-c" + (c.num ? " xh-num" : ""), c.title);
      hc.style.width = c.w + "px";
      hc.dataset.col = c.id;
      hrow.append(hc);
    }
    thead.append(qrow, hrow);
    table.append(thead);
    // rows
    const rows = el("div", "xh-rows");
    rows.style.height = n * rowH + "px";
    rows.style.width = total + "px";
    const get = (name, j) => (t[name] ? t[name].data[j] : null);
    let pmax = 0;
    for (let j = 0; j < n; j++) pmax = Math.max(pmax, t.softmax.data[j]);
    const frag = document.createDocumentFragment();
    for (let j = 0; j < n; j++) {
      const masked = t.mask ? isMasked(t.mask.data[j]) : false;
      const r = el("div", "xh-row" + (masked ? " xh-masked" : ""));
      r.style.top = j * rowH + "px";
      r.style.height = rowH + "px";
      r.style.width = total + "px";
      r.dataset.index = String(j);
      for (const c of cols) {
        let cell;
        if (c.id === "tok") {
          cell = el("div", "xh-c xh-tokc" + (kseq.special[j] ? " xh-special" : "") + (kcont[j] ? " xh-cont" : ""), labels[j]);
          cell.title = labels[j] + "  (#" + j + ")" + (kcont[j] ? "  continues the word before it" : "");
        } else if (c.strip) {
          cell = el("div", "xh-c");
        } else if (c.id === "softmax") {
          cell = el("div", "xh-c xh-softc");
          const barEl = el("div", "xh-bar");
          const fill = el("i");
          fill.style.width = (pmax > 0 ? (100 * t.softmax.data[j]) / pmax : 0).toFixed(1) + "%";
          barEl.append(fill);
          const num = el("span", "xh-num", fmt(t.softmax.data[j]));
          num.dataset.col = "softmax";
          cell.append(barEl, num);
        } else if (c.id === "mask") {
          const v = get("mask", j);
          cell = el("div", "xh-c xh-num", isMasked(v) ? "masked" : fmt(v));
        } else {
          cell = el("div", "xh-c xh-num", fmt(get(c.id, j)));
        }
        cell.style.width = c.w + "px";
        if (c.id !== "softmax") cell.dataset.col = c.id;
        r.append(cell);
      }
      frag.append(r);
    }
    rows.append(frag);
    // the two strip columns: one tall canvas each
    const styles = getComputedStyle(root);
    const pos = (styles.getPropertyValue("--xh-pos") || "#2f6fde").trim();
    const neg = (styles.getPropertyValue("--xh-neg") || "#e8731a").trim();
    const height = n * rowH;
    const dpr = Math.max(0.5, Math.min(window.devicePixelRatio || 1, 2, 32000 / Math.max(1, height)));
    const strip = (col, arr, scaleMax) => {
      const cv = el("canvas", "xh-strip");
      cv.style.left = col.x + "px";
      cv.style.width = col.w + "px";
      cv.style.height = height + "px";
      cv.width = Math.round(col.w * dpr);
      cv.height = Math.round(height * dpr);
      const c2 = cv.getContext("2d");
      c2.setTransform(dpr, 0, 0, dpr, 0, 0);
      paintRows(c2, arr, n, d, cw, rowH, scaleMax, pos, neg, t.mask ? t.mask.data : null);
      rows.append(cv);
    };
    const kmax = maxAbs(K), pmaxAbs = maxAbs(prod);
    strip(cols[1], K, kmax);
    strip(cols[2], prod, pmaxAbs);
    table.append(rows);
    // query strip in the header
    const qc = S.qCanvas;
    qc.style.width = stripW + "px";
    qc.style.height = rowH + "px";
    qc.width = Math.round(stripW * dpr);
    qc.height = Math.round(rowH * dpr);
    const qctx = qc.getContext("2d");
    qctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    paintRows(qctx, q, 1, d, cw, rowH, maxAbs(q), pos, neg, null);
    table.scrollTop = keepScroll;
    // a row is hovered: say which numbers are under the mouse
    rows.addEventListener("mousemove", (ev) => {
      const rect = rows.getBoundingClientRect();
      const j = Math.floor((ev.clientY - rect.top) / rowH), px = ev.clientX - rect.left;
      if (j < 0 || j >= n) return;
      let text = "key #" + j + " \u201c" + labels[j] + "\u201d";
      for (const c of [cols[1], cols[2]]) {
        if (px >= c.x + 4 && px < c.x + 4 + cw * d) {
          const dim = Math.floor((px - c.x - 4) / cw);
          text += "   dim " + dim + ":  q = " + fmt(q[dim]) + "   k = " + fmt(K[j * d + dim]) + "   q\u00d7k = " + fmt(prod[j * d + dim]);
        }
      }
      text += "   softmax = " + fmt(t.softmax.data[j]);
      S.readout.textContent = text;
    });
    rows.addEventListener("mouseleave", () => { S.readout.textContent = ""; });
    root.dataset.layer = String(t.layer);
    root.dataset.head = String(t.head);
    root.dataset.token = String(t.token);
    root.dataset.stack = t.stack;
    root.dataset.rows = String(n);
    root.dataset.drawn = String((Number(root.dataset.drawn) || 0) + 1);
  }

  // width for the table: the view's width less the query list (a default while the tab is hidden)
  function availWidth() {
    const w = S.body ? S.body.clientWidth : 0;
    if (!w) return 900;
    return Math.max(300, w - (S.qlist ? S.qlist.offsetWidth : 120) - 12 - 2);
  }

  function maxAbs(a) {
    let m = 0;
    for (let i = 0; i < a.length; i++) { const v = Math.abs(a[i]); if (v > m && Number.isFinite(v)) m = v; }
    return m || 1;
  }

  // one row of d cells per key: blue positive, orange negative, opacity |x| / max |x| of the column
  function paintRows(ctx, arr, n, d, cw, rowH, scaleMax, pos, neg, mask) {
    const gap = cw >= 4 ? 1 : 0;
    for (let j = 0; j < n; j++) {
      const y = j * rowH + 3, h = rowH - 6;
      const dimmed = mask && isMasked(mask[j]);
      for (let x = 0; x < d; x++) {
        const v = arr[j * d + x];
        if (!v) continue;
        ctx.globalAlpha = Math.min(1, Math.abs(v) / scaleMax) * (dimmed ? 0.35 : 1);
        ctx.fillStyle = v > 0 ? pos : neg;
        ctx.fillRect(4 + x * cw, y, cw - gap, h);
      }
    }
    ctx.globalAlpha = 1;
  }

  // shown again (its tab selected): follow what the other views selected meanwhile; fill the width
  if (window.exbertHub && window.exbertHub.onShown) {
    window.exbertHub.onShown(root, () => {
      if (!S || !S.terms) return;
      const change = window.exbertHub.ready ? urlChange() : {};
      if (Object.keys(change).length) select(change);
      else if (Math.abs(availWidth() - (S.drawnWidth || 0)) > 8) draw();
    });
  }
  if (window.ResizeObserver) {
    let timer = 0;
    new ResizeObserver(() => {
      clearTimeout(timer);
      timer = setTimeout(() => { if (S && S.terms && Math.abs(availWidth() - (S.drawnWidth || 0)) > 8) draw(); }, 150);
    }).observe(root);
  }

  watch("value", () => render(props.value));
  render(props.value);
})();
