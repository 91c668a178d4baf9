/* exbert-hub layer lens view. Runs as the body of js_on_load(element, trigger, props, server, upload, watch).
 * Value: lens_view_payload(...) (see lens_view.py). Rows: positions; columns: the embeddings and each layer.
 * Only the rows in sight are in the page; blocks of rows not sent are fetched with server.lens_rows.
 * Token text is only ever set with textContent.
 */
const hub = window.exbertHub;
const root = element.querySelector(".xl-root") || element;
const ROW_H = 24;
const CELL_W = 66;
const LABEL_W = 150;
const S = { p: null, blocks: {}, pending: {}, sel: null, target: null };

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text != null) e.textContent = String(text);
  return e;
}
function label(s) { return hub && hub.tokenLabel ? hub.tokenLabel(s) : String(s); }
function pct(p) { return hub && hub.formatProb ? hub.formatProb(p) : (100 * p).toFixed(1) + "%"; }
// probability -> cell colour (one hue, stronger = more probable) and a readable text colour
function cellStyle(cell, p) {
  const a = 0.06 + 0.9 * Math.max(0, Math.min(1, p));
  cell.style.background = "rgba(37, 99, 235, " + a.toFixed(3) + ")";
  cell.style.color = a > 0.5 ? "#ffffff" : "";
}

function blockOf(pos) { return Math.floor(pos / S.p.row_block); }
function cellData(pos, state) {
  const b = S.blocks[blockOf(pos)];
  if (!b) return null;
  const r = pos - b.start;
  return { words: b.words[r][state], probs: b.probs[r][state], ids: b.ids[r][state] };
}

async function fetchBlock(block) {
  if (S.blocks[block] || S.pending[block]) return;
  if (!S.p.key || !server || !server.lens_rows) { S.status.textContent = "These rows were not sent and cannot be fetched (no server)."; return; }
  S.pending[block] = true;
  S.status.textContent = "Computing the lens for positions " + block * S.p.row_block + "\u2013" + Math.min(S.p.n, (block + 1) * S.p.row_block) + "\u2026";
  let res;
  try { res = await server.lens_rows({ key: S.p.key, block }); } catch (err) { res = { error: String(err) }; }
  S.pending[block] = false;
  if (res && res.error) { S.status.textContent = res.error; return; }
  S.blocks[block] = res;
  S.status.textContent = "";
  drawRows();
  if (S.sel && blockOf(S.sel.pos) === block) showDetail();
}

function build() {
  root.replaceChildren();
  root.dataset.ready = "0";
  const p = S.p;
  const head = el("div", "xl-head");
  head.append(el("span", "xl-model", p.model), el("span", "xl-sep", "\u00b7"), el("span", "xl-note", p.note),
    el("span", "xl-sep", "\u00b7"), el("span", "xl-path", "through " + p.head));
  const legend = el("div", "xl-legend");
  legend.append(el("span", null, "probability of the top token:"));
  for (const v of [0.05, 0.25, 0.5, 0.75, 1]) { const sw = el("span", "xl-swatch", pct(v)); cellStyle(sw, v); legend.append(sw); }
  const body = el("div", "xl-body");
  const gridWrap = el("div", "xl-gridwrap");
  const scroller = el("div", "xl-scroller");
  const content = el("div", "xl-content");
  const width = LABEL_W + CELL_W * p.states.length;
  content.style.width = width + "px";
  content.style.height = (ROW_H * (p.n + 1)) + "px";
  const header = el("div", "xl-row xl-header");
  header.style.width = width + "px";
  const corner = el("div", "xl-label xl-corner", p.causal ? "position \u2192 next" : "position");
  header.append(corner);
  p.states.forEach((s, i) => {
    const h = el("div", "xl-colhead", s === "emb" ? "emb" : "L" + s);
    h.title = s === "emb" ? "the embeddings (before layer 1)" : "after layer " + s;
    h.dataset.state = String(i);
    header.append(h);
  });
  const rows = el("div", "xl-rows");
  content.append(header, rows);
  scroller.append(content);
  gridWrap.append(scroller);
  const side = el("div", "xl-side");
  const detail = el("div", "xl-detail");
  const targetBox = el("div", "xl-target");
  const form = el("form", "xl-target-form");
  const input = el("input", "xl-target-input");
  input.type = "text"; input.placeholder = "target token, e.g. Paris or #1234";
  input.setAttribute("aria-label", "target token");
  const go = el("button", "xl-btn", "Trace");
  go.type = "submit";
  form.append(input, go);
  const plot = el("div", "xl-plot");
  targetBox.append(el("div", "xl-side-title", "Target token over the layers"), form, plot);
  side.append(detail, targetBox);
  body.append(gridWrap, side);
  S.status = el("div", "xl-status");
  root.append(head, legend, body, S.status);
  S.scroller = scroller; S.rows = rows; S.detail = detail; S.input = input; S.plot = plot;
  scroller.addEventListener("scroll", () => { cancelAnimationFrame(S.raf); S.raf = requestAnimationFrame(drawRows); });
  form.addEventListener("submit", (e) => { e.preventDefault(); const v = input.value.trim(); if (v && S.sel) trace(v); });
  rows.addEventListener("click", (e) => {
    const c = e.target.closest(".xl-cell");
    if (!c) return;
    select(Number(c.dataset.pos), Number(c.dataset.state));
  });
}

function drawRows() {
  const p = S.p;
  const top = S.scroller.scrollTop;
  const h = S.scroller.clientHeight || 500;
  const first = Math.max(0, Math.floor(top / ROW_H) - 5);
  const last = Math.min(p.n - 1, Math.ceil((top + h) / ROW_H) + 5);
  const frag = document.createDocumentFragment();
  for (let pos = first; pos <= last; pos++) {
    const row = el("div", "xl-row");
    row.style.top = (ROW_H * (pos + 1)) + "px";
    row.dataset.pos = String(pos);
    if (p.generated[pos]) row.classList.add("xl-generated");
    const lab = el("div", "xl-label", (p.continues[pos] ? "##" : "") + label(p.tokens[pos]));
    lab.title = "position " + pos + (p.generated[pos] ? " (generated)" : "") + ": " + label(p.tokens[pos]);
    if (p.special[pos]) lab.classList.add("xl-special");
    if (p.generated[pos]) lab.append(el("span", "xl-gen-mark", "gen"));
    row.append(lab);
    const b = S.blocks[blockOf(pos)];
    for (let s = 0; s < p.states.length; s++) {
      const c = el("div", "xl-cell");
      c.dataset.pos = String(pos); c.dataset.state = String(s);
      if (b) {
        const d = cellData(pos, s);
        c.textContent = label(d.words[0]);
        c.title = label(d.words[0]) + " " + pct(d.probs[0]) + " (" + (s === 0 ? "embeddings" : "layer " + p.states[s]) + ")";
        cellStyle(c, d.probs[0]);
      } else {
        c.classList.add("xl-loading");
      }
      if (S.sel && S.sel.pos === pos && S.sel.state === s) c.classList.add("xl-selected");
      row.append(c);
    }
    frag.append(row);
  }
  S.rows.replaceChildren(frag);
  for (let bl = blockOf(first); bl <= blockOf(last); bl++) if (!S.blocks[bl]) fetchBlock(bl);
  root.dataset.first = String(first); root.dataset.last = String(last);
}

function select(pos, state) {
  S.sel = { pos, state };
  drawRows();
  showDetail();
  const d = cellData(pos, S.p.states.length - 1);
  // the default target: what the model itself predicts here (its last layer's top token)
  if (d && (S.target == null || S.target.position !== pos)) trace("#" + d.ids[0]);
  else if (S.target) drawPlot();
}

function showDetail() {
  const p = S.p;
  S.detail.replaceChildren();
  if (!S.sel) { S.detail.append(el("div", "xl-hint", "Click a cell for its top " + p.top_k + ".")); return; }
  const { pos, state } = S.sel;
  const d = cellData(pos, state);
  const title = el("div", "xl-side-title");
  title.textContent = "Position " + pos + " \u201c" + label(p.tokens[pos]) + "\u201d, " +
    (state === 0 ? "embeddings" : "layer " + p.states[state]) + (p.generated[pos] ? " (generated token)" : "");
  S.detail.append(title);
  if (!d) { S.detail.append(el("div", "xl-hint", "Loading\u2026")); return; }
  const list = el("ol", "xl-topk");
  d.words.forEach((w, i) => {
    const li = el("li");
    const btn = el("button", "xl-word", label(w));
    btn.type = "button";
    btn.title = "trace this token over the layers";
    btn.addEventListener("click", () => { trace("#" + d.ids[i]); });
    const bar = el("span", "xl-bar");
    bar.style.width = Math.max(1, Math.round(100 * d.probs[i])) + "px";
    li.append(btn, bar, el("span", "xl-prob", pct(d.probs[i])));
    list.append(li);
  });
  S.detail.append(list);
}

async function trace(token) {
  if (!S.sel) return;
  if (!S.p.key || !server || !server.lens_target) { S.status.textContent = "No server to compute the target's trace."; return; }
  const pos = S.sel.pos;
  let res;
  try { res = await server.lens_target({ key: S.p.key, position: pos, token }); } catch (err) { res = { error: String(err) }; }
  if (res && res.error) { S.status.textContent = res.error; return; }
  S.target = res;
  S.input.value = label(res.token);
  drawPlot();
}

const SVG = "http://www.w3.org/2000/svg";
function svg(tag, attrs, text) {
  const e = document.createElementNS(SVG, tag);
  for (const k in attrs) e.setAttribute(k, String(attrs[k]));
  if (text != null) e.textContent = String(text);
  return e;
}

// two panels over the layers: probability (0..1, linear) and rank (1 at the top, log scale)
function drawPlot() {
  const t = S.target;
  S.plot.replaceChildren();
  if (!t) return;
  const n = t.probs.length;
  const W = 330, H = 120, L = 44, R = 8, T = 10, B = 20;
  const x = (i) => L + (n <= 1 ? 0 : (i * (W - L - R)) / (n - 1));
  const caption = el("div", "xl-plot-caption");
  caption.textContent = "\u201c" + label(t.token) + "\u201d at position " + t.position + ": rank " + t.ranks[n - 1] +
    ", " + pct(t.probs[n - 1]) + " at the last layer";
  S.plot.append(caption);
  const maxRank = Math.max(2, ...t.ranks);
  for (const kind of ["prob", "rank"]) {
    const s = svg("svg", { class: "xl-chart xl-chart-" + kind, viewBox: "0 0 " + W + " " + H, width: W, height: H, role: "img" });
    s.setAttribute("aria-label", kind === "prob" ? "probability of the target at each layer" : "rank of the target at each layer");
    const y = kind === "prob"
      ? (v) => T + (1 - v) * (H - T - B)
      : (v) => T + (Math.log(v) / Math.log(maxRank)) * (H - T - B);
    const ticks = kind === "prob" ? [0, 0.5, 1] : [1, Math.round(Math.sqrt(maxRank)), maxRank];
    for (const v of ticks) {
      s.append(svg("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), class: "xl-grid" }));
      s.append(svg("text", { x: L - 4, y: y(v) + 4, "text-anchor": "end", class: "xl-tick" }, kind === "prob" ? Math.round(100 * v) + "%" : String(v)));
    }
    s.append(svg("text", { x: 2, y: T + 2, class: "xl-axis", "dominant-baseline": "hanging" }, kind === "prob" ? "prob." : "rank"));
    const vals = kind === "prob" ? t.probs : t.ranks;
    const pts = vals.map((v, i) => x(i).toFixed(1) + "," + y(v).toFixed(1)).join(" ");
    s.append(svg("polyline", { points: pts, class: "xl-line xl-" + kind, fill: "none" }));
    vals.forEach((v, i) => {
      const c = svg("circle", { cx: x(i), cy: y(v), r: S.sel && S.sel.state === i ? 4 : 2.5, class: "xl-dot xl-" + kind });
      c.append(svg("title", {}, (i === 0 ? "embeddings" : "layer " + i) + ": " + (kind === "prob" ? pct(v) : "rank " + v)));
      s.append(c);
    });
    for (const i of [0, n - 1]) s.append(svg("text", { x: x(i), y: H - 4, "text-anchor": i ? "end" : "start", class: "xl-tick" }, i ? "L" + (n - 1) : "emb"));
    S.plot.append(s);
  }
}

function render(value) {
  S.p = value && value.view === "lens" ? value : null;
  S.blocks = {}; S.pending = {}; S.sel = null; S.target = null;
  if (!S.p) {
    root.replaceChildren(el("div", "xl-empty", value && value.error ? value.error : "Analyze a text with a language model to see what each layer predicts."));
    return;
  }
  for (const k in S.p.blocks) S.blocks[Number(k)] = S.p.blocks[k];
  build();
  const pos = S.p.initial && S.p.initial.position != null ? S.p.initial.position : 0;
  S.scroller.scrollTop = Math.max(0, (pos + 1) * ROW_H - S.scroller.clientHeight / 2);
  drawRows();
  showDetail();
  root.dataset.ready = "1";
}

watch("value", () => render(props.value));
render(props.value);
