/* exbert-hub model view. Runs as the body of js_on_load(element, trigger, props, server, upload, watch),
 * after the line panel of head_view.js (model_view.py prepends it). Value: model_view_payload(...).
 */
(function modelView() {
  const root = element.querySelector(".xh-mv") || element;
  const THEME = {
    light: { bg: "#ffffff", cell: [255, 255, 255], fg: "#1f2328", muted: "#5f6b7a", border: "#d5dbe3", hi: "#f97316" },
    dark: { bg: "#12151b", cell: [18, 21, 27], fg: "#e6e8eb", muted: "#9aa4b2", border: "#303744", hi: "#fb923c" },
  };
  let S = null;
  let fetchId = 0;
  let rendered = 0;  // values drawn so far (a deep link opens its head on the first one only)

  function pageIsDark() { return !!(element.closest && element.closest(".dark")); }

  function message(cls, text) {
    root.replaceChildren(xhEl("div", cls, text));
  }

  function render(value) {
    if (!value || typeof value !== "object") { S = null; applyTheme("auto"); message("xh-empty", "Run an analysis to see the model view."); return; }
    if (value.error) { S = null; message("xh-error", value.error); return; }
    if (!window.exbertHub) { message("xh-error", "exbert-hub: common.js is not loaded on this page"); return; }
    root.dataset.renderAt = String(performance.now());
    const theme = S && S.themeChosen ? S.theme : (value.theme === "auto" || !value.theme ? (pageIsDark() ? "dark" : "light") : value.theme);
    S = {
      key: value.key, sequences: value.sequences, stacks: value.stacks || [], stack: value.stack,
      layers: value.layers, heads: value.heads, thumbSize: value.thumb_size || 64, pooled: value.pooled,
      thumbs: xhDecode(value.thumbs), theme, themeChosen: S ? S.themeChosen : false, hover: null,
    };
    applyTheme(theme);
    build();
    readSelection();
    drawGrid();
    // a link to this tab naming one layer and one head (?tab=model&layer=2&heads=4) reopens that head
    const XH = window.exbertHub, first = rendered++ === 0, q = XH.initialParams;
    if (first && q && q.get("tab") === "model" && S.selection.layer != null && S.selection.heads && S.selection.heads.length === 1) {
      const r = S.layers.indexOf(S.selection.layer), c = S.heads.indexOf(S.selection.heads[0]);
      if (r >= 0 && c >= 0) openHead(r, c, true);
    }
  }

  // The selection the views share through the address (layer, heads): its cells are framed in the grid.
  function readSelection() {
    const XH = window.exbertHub, info = stackInfo();
    S.selection = { layer: null, heads: null };
    if (!XH.urlSelection || info.query_seq !== "input") return;
    const sel = XH.urlSelection(info.layers, info.heads, null);
    S.selection = { layer: sel.layer, heads: sel.heads };
  }

  function applyTheme(theme) {
    const dark = theme === "dark" || (theme === "auto" && pageIsDark());
    root.classList.toggle("xh-dark", dark);
    root.classList.toggle("xh-light", !dark);
  }

  function stackInfo() { return S.stacks.find((s) => s.name === S.stack) || S.stacks[0]; }

  function build() {
    root.replaceChildren();
    const bar = xhEl("div", "xh-toolbar");
    if (S.stacks.length > 1) {
      const lab = xhEl("label", null, "Attention");
      const sel = xhEl("select", "xh-stack");
      const names = { encoder: "Encoder", decoder: "Decoder", cross: "Cross (decoder \u2192 encoder)", self: "Self" };
      for (const s of S.stacks) sel.append(new Option(names[s.name] || s.name, s.name));
      sel.value = S.stack;
      sel.addEventListener("change", () => switchStack(sel.value));
      lab.append(sel);
      bar.append(lab);
    }
    const themeBtn = xhEl("button", "xh-btn xh-theme", S.theme === "dark" ? "\u2600 Light" : "\u263e Dark");
    themeBtn.type = "button";
    themeBtn.title = "Switch between light and dark";
    themeBtn.addEventListener("click", () => {
      S.theme = S.theme === "dark" ? "light" : "dark";
      S.themeChosen = true;
      applyTheme(S.theme);
      themeBtn.textContent = S.theme === "dark" ? "\u2600 Light" : "\u263e Dark";
      drawGrid();
      if (S.modalPanel) S.modalPanel.redraw();
    });
    bar.append(themeBtn);
    const [, , tq, tk] = S.thumbs.shape;
    bar.append(xhEl("span", "xh-hint", S.layers.length + " layers \u00d7 " + S.heads.length + " heads" +
      (S.pooled ? " \u00b7 thumbnails max-pooled to " + tq + "\u00d7" + tk : "") + " \u00b7 click a head to open it"));
    root.append(bar);
    const grid = xhEl("div", "xh-grid");
    const canvas = xhEl("canvas", "xh-grid-canvas");
    canvas.setAttribute("role", "img");
    canvas.setAttribute("aria-label", "attention of every layer and head; click one to open it");
    grid.append(canvas);
    root.append(grid);
    const status = xhEl("div", "xh-status");
    root.append(status);
    const modal = xhEl("div", "xh-modal");
    modal.hidden = true;
    modal.addEventListener("click", (ev) => { if (ev.target === modal) closeModal(); });
    root.append(modal);
    Object.assign(S, { canvas, grid, status, modal });
    canvas.addEventListener("mousemove", (ev) => {
      const hit = hitTest(ev);
      const same = (hit && S.hover && hit.r === S.hover.r && hit.c === S.hover.c) || (!hit && !S.hover);
      if (same) return;
      S.hover = hit;
      canvas.title = hit ? "Layer " + S.layers[hit.r] + ", head " + S.heads[hit.c] : "";
      drawGrid();
    });
    canvas.addEventListener("mouseleave", () => { if (S.hover) { S.hover = null; drawGrid(); } });
    canvas.addEventListener("click", (ev) => {
      const hit = hitTest(ev);
      if (hit) openHead(hit.r, hit.c);
    });
    if (window.ResizeObserver) {
      let last = root.clientWidth;
      new ResizeObserver(() => {
        const w = root.clientWidth;
        if (w && w !== last) { last = w; drawGrid(); }
      }).observe(root);
    }
  }

  function geometry() {
    const cols = S.heads.length, rows = S.layers.length;
    const avail = Math.max(200, (S.grid.clientWidth || root.clientWidth || 900) - 4);
    // narrow pages: smaller gaps and thumbnails (down to 18 px) so that a row of heads fits
    const labelW = 30, headerH = 20, gap = avail < 600 ? 3 : 6;
    const cell = Math.max(18, Math.min(96, Math.floor((avail - labelW) / cols) - gap));
    return { cols, rows, labelW, headerH, gap, cell, width: labelW + cols * (cell + gap), height: headerH + rows * (cell + gap) };
  }

  function hitTest(ev) {
    const g = S.geom;
    if (!g) return null;
    const rect = S.canvas.getBoundingClientRect();
    const x = ev.clientX - rect.left - g.labelW, y = ev.clientY - rect.top - g.headerH;
    if (x < 0 || y < 0) return null;
    const c = Math.floor(x / (g.cell + g.gap)), r = Math.floor(y / (g.cell + g.gap));
    if (c >= g.cols || r >= g.rows || x - c * (g.cell + g.gap) > g.cell || y - r * (g.cell + g.gap) > g.cell) return null;
    return { r, c };
  }

  // all thumbnails at native resolution in one offscreen image, coloured by head, rebuilt per theme
  function atlas(theme) {
    if (S.atlas && S.atlas.theme === theme) return S.atlas.canvas;
    const [L, H, tq, tk] = S.thumbs.shape;
    const off = document.createElement("canvas");
    off.width = H * tk;
    off.height = L * tq;
    const octx = off.getContext("2d");
    const img = octx.createImageData(off.width, off.height);
    const px = img.data, data = S.thumbs.data, bg = THEME[theme].cell;
    for (let c = 0; c < H; c++) {
      let [r0, g0, b0] = xhRgb(xhHeadColor(S.heads[c]));
      if (theme === "dark") { r0 += (255 - r0) * 0.25; g0 += (255 - g0) * 0.25; b0 += (255 - b0) * 0.25; }
      // 256-entry colour ramp: background -> head colour (bytes are sqrt-scaled: small weights stay visible)
      const ramp = new Uint8ClampedArray(256 * 3);
      for (let q = 0; q < 256; q++) {
        const t = q / 255;
        ramp[q * 3] = bg[0] + (r0 - bg[0]) * t;
        ramp[q * 3 + 1] = bg[1] + (g0 - bg[1]) * t;
        ramp[q * 3 + 2] = bg[2] + (b0 - bg[2]) * t;
      }
      for (let l = 0; l < L; l++) {
        const base = (l * H + c) * tq * tk;
        for (let i = 0; i < tq; i++) {
          let p = ((l * tq + i) * off.width + c * tk) * 4;
          const rowBase = base + i * tk;
          for (let j = 0; j < tk; j++, p += 4) {
            const q = data[rowBase + j] * 3;
            px[p] = ramp[q]; px[p + 1] = ramp[q + 1]; px[p + 2] = ramp[q + 2]; px[p + 3] = 255;
          }
        }
      }
    }
    octx.putImageData(img, 0, 0);
    S.atlas = { theme, canvas: off };
    return off;
  }

  function drawGrid() {
    if (!S || !S.canvas) return;
    const g = geometry();
    S.geom = g;
    const theme = root.classList.contains("xh-dark") ? "dark" : "light";
    const T = THEME[theme];
    const canvas = S.canvas, dpr = Math.min(window.devicePixelRatio || 1, 2);
    canvas.style.width = g.width + "px";
    canvas.style.height = g.height + "px";
    canvas.width = Math.round(g.width * dpr);
    canvas.height = Math.round(g.height * dpr);
    const ctx = canvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.fillStyle = T.bg;
    ctx.fillRect(0, 0, g.width, g.height);
    const [, , tq, tk] = S.thumbs.shape;
    const img = atlas(theme);
    ctx.imageSmoothingEnabled = tq > g.cell || tk > g.cell;
    ctx.font = "11px system-ui, -apple-system, 'Segoe UI', sans-serif";
    ctx.textBaseline = "middle";
    ctx.textAlign = "center";
    for (let c = 0; c < g.cols; c++) {
      ctx.fillStyle = xhHeadColor(S.heads[c]);
      const x = g.labelW + c * (g.cell + g.gap);
      ctx.fillRect(x, g.headerH - 5, g.cell, 3);
      ctx.fillStyle = T.muted;
      ctx.fillText(String(S.heads[c]), x + g.cell / 2, 7);
    }
    ctx.textAlign = "right";
    for (let r = 0; r < g.rows; r++) {
      const y = g.headerH + r * (g.cell + g.gap);
      ctx.fillStyle = T.muted;
      ctx.fillText(String(S.layers[r]), g.labelW - 8, y + g.cell / 2);
      for (let c = 0; c < g.cols; c++) {
        const x = g.labelW + c * (g.cell + g.gap);
        ctx.drawImage(img, c * tk, r * tq, tk, tq, x, y, g.cell, g.cell);
        ctx.strokeStyle = T.border;
        ctx.lineWidth = 1;
        ctx.strokeRect(x - 0.5, y - 0.5, g.cell + 1, g.cell + 1);
      }
    }
    // the selected layer x heads (from the address): framed in the text colour
    const sel = S.selection || {};
    let framed = 0;
    if (sel.layer != null) {
      const r = S.layers.indexOf(sel.layer);
      ctx.strokeStyle = T.fg;
      ctx.lineWidth = 2;
      for (let c = 0; r >= 0 && c < g.cols; c++) {
        if (sel.heads && sel.heads.indexOf(S.heads[c]) < 0) continue;
        const x = g.labelW + c * (g.cell + g.gap), y = g.headerH + r * (g.cell + g.gap);
        ctx.strokeRect(x - 1, y - 1, g.cell + 2, g.cell + 2);
        framed++;
      }
    }
    root.dataset.selected = sel.layer == null ? "" : sel.layer + ":" + (sel.heads == null ? "all" : sel.heads.join(","));
    root.dataset.framed = String(framed);
    if (S.hover) {
      const x = g.labelW + S.hover.c * (g.cell + g.gap), y = g.headerH + S.hover.r * (g.cell + g.gap);
      ctx.strokeStyle = T.hi;
      ctx.lineWidth = 2.5;
      ctx.strokeRect(x - 1.5, y - 1.5, g.cell + 3, g.cell + 3);
    }
    ctx.save();
    ctx.textAlign = "left";
    ctx.fillStyle = T.muted;
    ctx.font = "10px system-ui, sans-serif";
    ctx.fillText("L\\H", 2, 7);
    ctx.restore();
    root.dataset.thumbs = String(g.rows * g.cols);
    root.dataset.geom = JSON.stringify({ labelW: g.labelW, headerH: g.headerH, gap: g.gap, cell: g.cell, rows: g.rows, cols: g.cols });
    root.dataset.theme = theme;
    root.dataset.drawn = String((Number(root.dataset.drawn) || 0) + 1);
    root.dataset.drawnAt = String(performance.now());
    // the frame after this one shows the drawing: benchmarks read paintedAt
    const mark = root.dataset.drawn;
    requestAnimationFrame(() => requestAnimationFrame(() => {
      if (root.dataset.drawn === mark) root.dataset.paintedAt = String(performance.now());
    }));
  }

  async function switchStack(name) {
    if (!S.key || !server || !server.model_view_thumbs) { S.status.textContent = "This stack cannot be fetched (no server)."; return; }
    const id = ++fetchId;
    S.status.textContent = "Loading the " + name + " attention\u2026";
    let res;
    try { res = await server.model_view_thumbs({ key: S.key, stack: name, thumb_size: S.thumbSize, theme: S.theme }); }
    catch (err) { res = { error: String(err && err.message || err) }; }
    if (id !== fetchId) return;
    if (!res || res.error) { S.status.textContent = "Could not load " + name + ": " + (res ? res.error : "no answer"); return; }
    render(res);
  }

  function closeModal() {
    S.modal.hidden = true;
    S.modal.replaceChildren();
    S.modalPanel = null;
    root.dataset.open = "";
  }

  async function openHead(r, c, restored) {
    const layer = S.layers[r], head = S.heads[c], info = stackInfo();
    // the opened head becomes the selection (layer, heads) in the address, as in the other views
    if (!restored && info.query_seq === "input" && window.exbertHub.writeSelection) {
      window.exbertHub.writeSelection({ layer, heads: [head], numHeads: info.heads });
      S.selection = { layer, heads: [head] };
      drawGrid();
    }
    const box = xhEl("div", "xh-modal-box");
    const headRow = xhEl("div", "xh-modal-head");
    const sw = xhEl("span", "xh-swatch");
    sw.style.background = xhHeadColor(head);
    const names = { encoder: "encoder", decoder: "decoder", cross: "cross attention", self: "" };
    headRow.append(sw, xhEl("span", "xh-modal-title", "Layer " + layer + " \u00b7 head " + head + (names[S.stack] ? " \u00b7 " + names[S.stack] : "")));
    const note = xhEl("span", "xh-hint", "loading full precision\u2026");
    headRow.append(note);
    const close = xhEl("button", "xh-btn xh-close", "Close \u2715");
    close.type = "button";
    close.addEventListener("click", closeModal);
    headRow.append(close);
    box.append(headRow);
    S.modal.replaceChildren(box);
    S.modal.hidden = false;
    box.style.width = "min(860px, 94vw)";
    const seqs = S.sequences;
    const panel = xhLinePanel(box, {
      maxLineWidth: 480,
      leftTitle: (info.query_seq === "decoder" ? "decoder " : "") + "tokens attending \u2192",
      rightTitle: "\u2192 attended " + (info.key_seq === "decoder" ? "decoder " : (info.query_seq !== info.key_seq ? "encoder " : "")) + "tokens",
    });
    panel.setTokens(seqs[info.query_seq].tokens, seqs[info.key_seq].tokens, seqs[info.query_seq].special, seqs[info.key_seq].special,
      seqs[info.query_seq].continues, seqs[info.key_seq].continues);
    box.append(xhEl("div", "xh-hint", "Hover a token to see only its lines; click it to pin. Esc or click outside to close."));
    S.modalPanel = panel;
    root.dataset.open = layer + "," + head;
    const id = ++fetchId;
    let att = null;
    if (S.key && server && server.model_view_head) {
      let res;
      try { res = await server.model_view_head({ key: S.key, stack: S.stack, layer, head }); }
      catch (err) { res = { error: String(err && err.message || err) }; }
      if (id !== fetchId || S.modalPanel !== panel) return;
      if (res && !res.error) { att = xhDecode(res.attention); note.textContent = "full precision (float32)"; }
      else note.textContent = "could not fetch this head: " + (res ? res.error : "no answer");
    }
    if (!att) {
      if (S.pooled) { if (!S.key) note.textContent = "not available without a server (thumbnails are pooled)"; return; }
      const [, H, tq, tk] = S.thumbs.shape;
      att = { shape: [tq, tk], data: S.thumbs.data.subarray((r * H + c) * tq * tk, (r * H + c + 1) * tq * tk), lut: S.thumbs.lut };
      if (!S.key) note.textContent = "from the thumbnail bytes (uint8)";
    }
    const [nq, nk] = att.shape;
    panel.setSeries([{ head, color: xhHeadColor(head), data: att.data, lut: att.lut, offset: 0, nq, nk, visible: true }]);
    panel.redraw();
    root.dataset.openLines = String(panel.state.lines);
    box.dataset.loaded = "1";
  }

  // shown again (its tab selected): frame what the other views selected meanwhile
  if (window.exbertHub && window.exbertHub.onShown) {
    window.exbertHub.onShown(root, () => { if (S && S.canvas) { readSelection(); drawGrid(); } });
  }
  root.ownerDocument.addEventListener("keydown", (ev) => { if (ev.key === "Escape" && S && S.modal && !S.modal.hidden) closeModal(); });
  watch("value", () => render(props.value));
  render(props.value);
})();
