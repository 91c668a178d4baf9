/* exbert-hub corpus search results (js_on_load of SearchView).
 * Runs as a function of (element, trigger, props, server, upload, watch).
 *
 * Value: exbert_hub.search_ui.view_payload(...) = search results + view {left, right, field}.
 * Per hit one row: rank, score, the metadata colour matrix (offsets -left..+right around the match)
 * and the sentence cropped to that window (match highlighted, its attention as an orange underline).
 * Token text is only ever set with textContent (never innerHTML).
 */
(function () {
  "use strict";
  const FIELDS = { pos: "POS", dep: "DEP", ent: "Entity", tag: "Tag" };
  const SPECIAL = "[special]";
  const NO_ENTITY = "none";
  const MAX_WINDOW = 30;
  const S = { p: null, left: 6, right: 6, field: "pos", tip: null, serial: 0 };

  function getRoot() { return element.querySelector(".xs-root") || element; }

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text != null) e.textContent = String(text);
    return e;
  }
  function tokenLabel(s) {
    const XH = window.exbertHub;
    if (XH && XH.tokenLabel) return XH.tokenLabel(s);
    s = String(s == null ? "" : s);
    return s === "" ? "\u2205" : s.replace(/\n/g, "\u21b5");
  }
  // colours come from Python's palette; anything else is refused (never a CSS injection)
  function safeColor(c) {
    return typeof c === "string" && /^(#[0-9a-fA-F]{3,8}|hsl\(\s*[0-9.]+\s*,\s*[0-9.]+%\s*,\s*[0-9.]+%\s*\))$/.test(c) ? c : "#9ca3af";
  }
  function clampInt(x, lo, hi, dflt) {
    x = parseInt(x, 10);
    if (!Number.isFinite(x)) return dflt;
    return Math.max(lo, Math.min(hi, x));
  }
  function pct(x) {
    x = Number(x);
    if (!Number.isFinite(x)) return "";
    if (x >= 0.1) return (100 * x).toFixed(0) + "%";
    if (x >= 0.001) return (100 * x).toFixed(1) + "%";
    return "<0.1%";
  }

  function category(hit, field, i) {
    if (i == null || i < 0 || i >= hit.tokens.length) return null;
    if (hit.special[i]) return SPECIAL;
    const v = (hit[field] || [])[i];
    if (field === "ent") return v || NO_ENTITY;
    return v || "?";
  }
  function colorOf(field, cat) {
    const m = (S.p && S.p.colors && S.p.colors[field]) || {};
    return safeColor(m[cat]);
  }
  // -------------------------------------------------------------------------------------------
  // value -> state
  // -------------------------------------------------------------------------------------------
  function load(value) {
    const root = getRoot();
    hideTip();
    root.dataset.serial = String(++S.serial);  // tests wait for a new value to be drawn
    if (!value || !Array.isArray(value.hits)) {
      S.p = null;
      root.replaceChildren(el("div", "xs-empty", "Choose a token and press Search to find similar tokens in the corpus."));
      root.dataset.ready = "0";
      return;
    }
    S.p = value;
    const v = value.view || {};
    S.left = clampInt(v.left, 0, MAX_WINDOW, 6);
    S.right = clampInt(v.right, 0, MAX_WINDOW, 6);
    S.field = FIELDS[v.field] ? v.field : "pos";
    for (const h of value.hits) prepareHit(h);
    render();
  }

  function prepareHit(h) {
    // attention normalised by its largest weight on a non-special token (specials are sinks)
    h._norm = null;
    if (Array.isArray(h.attention)) {
      let mx = 0;
      h.attention.forEach((a, i) => { if (!h.special[i] && a > mx) mx = a; });
      h._norm = mx > 0 ? mx : null;
    }
    h._words = {};
    h.word.forEach((w, i) => { if (w >= 0 && !(w in h._words)) h._words[w] = h.word_text[i]; });
  }

  // -------------------------------------------------------------------------------------------
  // drawing
  // -------------------------------------------------------------------------------------------
  function render() {
    const root = getRoot();
    const p = S.p;
    const q = p.query || {}, c = p.corpus || {};
    const top = el("div", "xs-top");
    const summary = el("div", "xs-summary");
    const qtok = el("span", "xs-qtok" + (q.continues ? " xs-cont" : ""), tokenLabel(q.token_text));
    if (q.continues) qtok.title = "a word piece: continues the word before it";
    const n = p.hits.length;
    summary.append(
      el("span", "xs-count", n + (n === 1 ? " hit" : " hits")),
      el("span", null, " for "),
      qtok,
      el("span", "xs-meta", " \u00b7 layer " + q.layer + " \u00b7 by " + q.by +
        (q.by === "heads" ? " (" + (q.heads && q.heads.length ? "heads " + q.heads.join(", ") : "all heads") + ")" : "") +
        " \u00b7 " + (c.sentences != null ? Number(c.sentences).toLocaleString() + " sentences" : "corpus")),
    );
    const note = el("div", "xs-note", (p.attention && p.attention.note ? "Underline: " + p.attention.note + "." : ""));
    const toolbar = el("div", "xs-toolbar");
    const lab = el("label", "xs-field-label", "Colour matrix by ");
    const select = el("select", "xs-field");
    for (const [k, name] of Object.entries(FIELDS)) {
      const o = el("option", null, name);
      o.value = k;
      select.append(o);
    }
    select.value = S.field;
    select.addEventListener("change", () => setField(select.value, true));
    lab.append(select);
    const legend = el("div", "xs-legend");
    toolbar.append(lab, legend);
    top.append(summary, note, toolbar);

    const table = el("div", "xs-table");
    const tip = el("div", "xs-tip");
    tip.setAttribute("role", "tooltip");
    S.tip = tip;
    root.replaceChildren(top, table, tip);
    root.dataset.ready = "1";
    root.dataset.hits = String(n);
    drawRows();
  }

  function windowOf(h) {
    return [Math.max(0, h.match - S.left), Math.min(h.tokens.length - 1, h.match + S.right)];
  }

  function drawRows() {
    const root = getRoot();
    const table = root.querySelector(".xs-table");
    if (!table || !S.p) return;
    const hits = S.p.hits;
    root.dataset.left = String(S.left);
    root.dataset.right = String(S.right);
    root.dataset.field = S.field;
    root.style.setProperty("--xs-cols", String(S.left + S.right + 1));
    fitWidth();
    const frag = document.createDocumentFragment();
    // header: offsets above the matrix columns
    const head = el("div", "xs-row xs-head");
    head.append(el("span", "xs-rank", "#"), el("span", "xs-score", "score"));
    const offs = el("span", "xs-cells");
    for (let o = -S.left; o <= S.right; o++) {
      const lab = el("span", "xs-off" + (o === 0 ? " xs-off0" : ""), o === 0 ? "0" : (o > 0 ? "+" + o : "\u2212" + -o));
      offs.append(lab);
    }
    head.append(offs, el("span", "xs-sent xs-sent-head", "sentence (match highlighted, underline = its attention)"));
    frag.append(head);
    if (!hits.length) frag.append(el("div", "xs-none", "No hits."));
    hits.forEach((h, r) => frag.append(hitRow(h, r)));
    table.replaceChildren(frag);
    paintCells();
  }

  function hitRow(h, r) {
    const row = el("div", "xs-row");
    row.dataset.row = String(r);
    row.append(el("span", "xs-rank", String(h.rank)), el("span", "xs-score", Number(h.score).toFixed(3)));
    const cells = el("span", "xs-cells");
    for (let o = -S.left; o <= S.right; o++) {
      const i = h.match + o;
      const cell = el("span", "xs-cell" + (o === 0 ? " xs-cell0" : ""));
      cell.dataset.pos = String(i);
      cell.dataset.off = String(o);
      if (i < 0 || i >= h.tokens.length) cell.classList.add("xs-out");
      cells.append(cell);
    }
    const sent = el("span", "xs-sent");
    const [a, b] = windowOf(h);
    if (a > 0) sent.append(el("span", "xs-ell", "\u2026 "));
    for (let i = a; i <= b; i++) {
      if (i > a && h.space_before[i]) sent.append(document.createTextNode(" "));
      const t = el("span", "xs-tok", tokenLabel(h.tokens[i]));
      t.dataset.pos = String(i);
      if (h.special[i]) t.classList.add("xs-special");
      if (i === h.match) t.classList.add("xs-match");
      if (i === h.max_att && i !== h.match) t.classList.add("xs-maxatt");
      if (h._norm && i !== h.match && !h.special[i]) {
        const w = Math.min(1, h.attention[i] / h._norm);
        t.style.setProperty("--w", w.toFixed(3));
        t.classList.add("xs-att");
      }
      sent.append(t);
    }
    if (b < h.tokens.length - 1) sent.append(el("span", "xs-ell", " \u2026"));
    row.append(cells, sent);
    return row;
  }

  // the sentence column needs ~220 px beside rank, score and matrix; else it goes under them
  function fitWidth() {
    const root = getRoot();
    const w = root.clientWidth;
    if (!w) return;
    const cell = 17, cols = S.left + S.right + 1;
    const fixed = 14 * 2.4 + 14 * 3.4 + cols * cell + 8 + 3 * 10 + 8;
    root.classList.toggle("xs-narrow", w - fixed < 220);
  }
  if (window.ResizeObserver) new ResizeObserver(() => { if (S.p) fitWidth(); }).observe(element);

  // colour the matrix cells for the current field, and rebuild the legend
  function paintCells() {
    const root = getRoot();
    if (!S.p) return;
    const counts = new Map();
    root.querySelectorAll(".xs-row[data-row]").forEach((row) => {
      const h = S.p.hits[+row.dataset.row];
      row.querySelectorAll(".xs-cell").forEach((cell) => {
        const cat = category(h, S.field, +cell.dataset.pos);
        if (cat == null) { cell.style.background = ""; delete cell.dataset.cat; return; }
        cell.dataset.cat = cat;
        cell.style.background = colorOf(S.field, cat);
        counts.set(cat, (counts.get(cat) || 0) + 1);
      });
    });
    const legend = root.querySelector(".xs-legend");
    if (!legend) return;
    const items = [...counts.entries()].sort((x, y) => y[1] - x[1] || String(x[0]).localeCompare(String(y[0])));
    legend.replaceChildren(...items.map(([cat, n]) => {
      const chip = el("span", "xs-chip");
      chip.dataset.cat = cat;
      const sw = el("span", "xs-swatch");
      sw.style.background = colorOf(S.field, cat);
      chip.append(sw, el("span", "xs-chip-name", cat), el("span", "xs-chip-n", String(n)));
      chip.title = cat + ": " + n + " cells";
      return chip;
    }));
    root.dataset.legend = items.map(([cat]) => cat).join("|");
  }

  function setField(field, fromUser) {
    if (!FIELDS[field] || !S.p) return;
    S.field = field;
    const sel = getRoot().querySelector(".xs-field");
    if (sel && sel.value !== field) sel.value = field;
    getRoot().dataset.field = field;
    paintCells();
    if (fromUser) trigger("field", { field: field });
  }

  // -------------------------------------------------------------------------------------------
  // tooltip and highlighting
  // -------------------------------------------------------------------------------------------
  function tipRow(name, value) {
    const r = el("div", "xs-tip-row");
    r.append(el("span", "xs-tip-k", name), el("span", "xs-tip-v", value));
    return r;
  }

  function showTip(h, i, ev) {
    const tip = S.tip;
    if (!tip || i < 0 || i >= h.tokens.length) return;
    const rows = [];
    const title = el("div", "xs-tip-title");
    // a word piece after the first of its word (same spaCy word, no space before it) is marked ##
    const cont = i > 0 && !h.special[i] && !h.special[i - 1] && !h.space_before[i] && h.word[i] >= 0 && h.word[i] === h.word[i - 1];
    title.append(el("span", "xs-tip-tok" + (cont ? " xs-cont" : ""), tokenLabel(h.tokens[i])));
    if (!h.special[i] && h.word_text[i] && h.word_text[i] !== h.tokens[i]) {
      title.append(el("span", "xs-tip-word", " in \u201c" + h.word_text[i] + "\u201d"));
    }
    rows.push(title);
    if (i === h.match) rows.push(el("div", "xs-tip-badge", "matched token \u00b7 score " + Number(h.score).toFixed(3)));
    if (h.special[i]) {
      rows.push(el("div", "xs-tip-muted", "special token: no spaCy features"));
    } else {
      rows.push(tipRow("POS", (h.pos[i] || "?") + (h.tag[i] ? " \u00b7 " + h.tag[i] : "")));
      const headWord = h._words[h.head[i]];
      const dep = h.dep[i] || "?";
      rows.push(tipRow("DEP", dep + (dep !== "ROOT" && headWord != null ? " \u2192 " + headWord : "")));
      rows.push(tipRow("Entity", h.ent[i] ? h.ent[i] + (h.iob[i] ? " (" + h.iob[i] + ")" : "") : "\u2014"));
      if (h.lemma[i]) rows.push(tipRow("Lemma", h.lemma[i]));
    }
    if (Array.isArray(h.attention)) {
      const label = i === h.match ? "Self-attention" : "Attention";
      rows.push(tipRow(label, pct(h.attention[i]) + (i === h.max_att ? "  (most attended)" : "")));
    }
    const off = i - h.match;
    if (off !== 0) rows.push(tipRow("Offset", (off > 0 ? "+" : "\u2212") + Math.abs(off)));
    tip.replaceChildren(...rows);
    tip.classList.add("xs-show");
    tip.dataset.row = String(h.rank - 1);
    tip.dataset.pos = String(i);
    moveTip(ev);
  }

  function moveTip(ev) {
    const tip = S.tip;
    if (!tip || !tip.classList.contains("xs-show") || !ev) return;
    const pad = 14;
    const w = tip.offsetWidth, hgt = tip.offsetHeight;
    let x = ev.clientX + pad, y = ev.clientY + pad;
    if (x + w > window.innerWidth - 4) x = Math.max(4, ev.clientX - w - pad);
    if (y + hgt > window.innerHeight - 4) y = Math.max(4, ev.clientY - hgt - pad);
    tip.style.left = x + "px";
    tip.style.top = y + "px";
  }

  function hideTip() {
    if (S.tip) S.tip.classList.remove("xs-show");
    getRoot().querySelectorAll(".xs-hl").forEach((e) => e.classList.remove("xs-hl"));
  }

  function highlight(row, pos) {
    getRoot().querySelectorAll(".xs-hl").forEach((e) => e.classList.remove("xs-hl"));
    row.querySelectorAll('[data-pos="' + pos + '"]').forEach((e) => e.classList.add("xs-hl"));
  }

  function focusCategory(cat) {
    const root = getRoot();
    root.classList.toggle("xs-focus", cat != null);
    root.querySelectorAll(".xs-cell").forEach((c) => c.classList.toggle("xs-keep", cat != null && c.dataset.cat === cat));
    root.querySelectorAll(".xs-chip").forEach((c) => c.classList.toggle("xs-keep", cat != null && c.dataset.cat === cat));
  }

  // one set of delegated listeners on the persistent element
  element.addEventListener("mouseover", (ev) => {
    const t = ev.target;
    if (!(t instanceof Element) || !S.p) return;
    const chip = t.closest(".xs-chip");
    if (chip) { focusCategory(chip.dataset.cat); return; }
    const item = t.closest(".xs-tok, .xs-cell");
    const row = t.closest(".xs-row[data-row]");
    if (!item || !row || item.classList.contains("xs-out")) return;
    const h = S.p.hits[+row.dataset.row];
    const pos = +item.dataset.pos;
    highlight(row, pos);
    showTip(h, pos, ev);
  });
  element.addEventListener("mousemove", (ev) => moveTip(ev));
  element.addEventListener("mouseout", (ev) => {
    const t = ev.target;
    if (!(t instanceof Element)) return;
    const to = ev.relatedTarget;
    if (t.closest(".xs-chip") && !(to instanceof Element && to.closest(".xs-chip"))) focusCategory(null);
    if (t.closest(".xs-tok, .xs-cell") && !(to instanceof Element && to.closest(".xs-tok, .xs-cell"))) hideTip();
  });
  // the context window sliders of the tab (no round trip to Python)
  element.addEventListener("xs-window", (ev) => {
    const d = ev.detail || {};
    S.left = clampInt(d.left, 0, MAX_WINDOW, S.left);
    S.right = clampInt(d.right, 0, MAX_WINDOW, S.right);
    hideTip();
    drawRows();
  });

  watch("value", () => load(props.value));
  load(props.value);
})();
