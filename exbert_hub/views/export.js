/* exbert-hub: a view outside the app (exported HTML, notebooks) and its vector picture (SVG).
 *
 *   exbertHubExport.mount(uid, viewFn)   run a view's js_on_load code (viewFn) on <div id=uid>, with the
 *                                         payload, the local server's answers and the exported selection
 *                                         of <script id=uid-data>
 *   exbertHubExport.toSVG(uid) -> string  the view as drawn, as SVG: text, boxes and lines as vectors
 *                                         (pixel heatmaps as embedded images)
 *
 * Defined once per page (a notebook loads it in every cell that shows a view). Needs common.js first.
 * Outside the app there is no page address to share a selection through: the views read the exported
 * selection on their first draw, and never write the address.
 */
(function () {
  "use strict";
  if (window.exbertHubExport) return;
  const XH = window.exbertHub;
  if (!XH) throw new Error("exbert-hub export: common.js must be loaded first");

  // --- the views' address functions, outside the app -------------------------------------------
  let drawing = null;  // {selection, params} while a view draws for the first time
  Object.defineProperty(XH, "urlSelection", {
    configurable: true,
    get() { return drawing ? () => Object.assign({ layer: null, heads: null, token: null }, drawing.selection) : null; },
  });
  Object.defineProperty(XH, "initialParams", {
    configurable: true,
    get() { return drawing ? drawing.params : new URLSearchParams(); },
  });
  XH.setUrlParams = function () {};
  XH.writeSelection = null;
  XH.hasTab = () => false;
  XH.requestSearch = () => false;
  XH.standalone = true;

  function localServer(data) {
    const server = {};
    const answers = data.answers || {};
    for (const [fn, fields] of Object.entries(data.fields || {})) {
      server[fn] = async function (request) {
        const key = fields.map((f) => String(request && request[f])).join("|");
        const table = answers[fn] || {};
        if (Object.prototype.hasOwnProperty.call(table, key)) return table[key];
        return { error: "not in this export (export this selection again from the app or Python)" };
      };
    }
    return server;
  }

  // what each view marks when it has drawn (export tests and static pictures wait for it)
  function drawn(host, view) {
    const q = (s) => host.querySelector(s);
    if (view === "explorer") { const r = q(".xb-root"); return !!(r && r.dataset.ready === "1"); }
    if (view === "head") { const r = q(".xh-hv"); return !!(r && r.dataset.drawn); }
    if (view === "model") {
      const r = q(".xh-mv");
      if (!r || !r.dataset.drawn) return false;
      return !r.dataset.open || !!q(".xh-modal-box[data-loaded='1']");
    }
    if (view === "neuron") { const r = q(".xh-nv"); return !!(r && r.dataset.rows); }
    return true;
  }

  function mount(uid, viewFn) {
    const host = document.getElementById(uid);
    const data = JSON.parse(document.getElementById(uid + "-data").textContent);
    host.exbertExport = data;
    const sel = data.selection || {};
    const params = new URLSearchParams();
    if (data.open && sel.layer != null && sel.heads && sel.heads.length === 1) {
      params.set("tab", "model"); params.set("layer", String(sel.layer)); params.set("heads", String(sel.heads[0]));
    }
    const props = { value: data.payload };
    drawing = { selection: sel, params };
    try {
      viewFn(host, function trigger() {}, props, localServer(data), async function upload() {
        throw new Error("no uploads in an export");
      }, function watch() {});
    } catch (err) {
      console.error("exbert-hub export:", err);
      host.dataset.error = String(err && err.message || err);
    } finally {
      drawing = null;
    }
    let frames = 0;
    (function wait() {
      if (drawn(host, data.view) || ++frames > 600) {
        requestAnimationFrame(() => { host.dataset.ready = drawn(host, data.view) ? "1" : "timeout"; });
        return;
      }
      requestAnimationFrame(wait);
    })();
  }

  // --- SVG --------------------------------------------------------------------------------------
  const SVG_NS = "http://www.w3.org/2000/svg";
  function esc(s) { return String(s).replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[c]); }
  function alphaOf(color) {
    const m = /rgba?\(([^)]+)\)/.exec(color || "");
    if (!m) return color && color !== "transparent" ? 1 : 0;
    const parts = m[1].split(/[ ,/]+/).filter(Boolean);
    return parts.length > 3 ? parseFloat(parts[3]) : 1;
  }
  function num(x) { return Math.round(x * 100) / 100; }

  // lines of a head view's canvas, from the payload and the state the view shows (dataset of .xh-hv)
  function headLines(root, canvas, data, ox, oy, out) {
    const p = data.payload;
    const stack = root.dataset.stack, layer = root.dataset.layer;
    const layers = (p.attention || {})[stack] || {};
    let enc = layers[layer];
    if (!enc) {
      const ans = ((data.answers || {}).head_view_layer || {})[stack + "|" + layer];
      enc = ans && ans.attention;
    }
    if (!enc) return false;
    const att = decodeLayer(enc);
    const heads = (root.dataset.heads || "").split(",").filter((x) => x !== "").map(Number);
    const pinned = root.dataset.pinned ? root.dataset.pinned.split(":") : null;
    const leftCol = root.querySelector(".xh-left"), first = leftCol && leftCol.querySelector(".xh-tok");
    if (!first) return false;
    const rh = first.getBoundingClientRect().height;
    const cr = canvas.getBoundingClientRect(), top = leftCol.getBoundingClientRect().top;
    const x0 = cr.left - ox, x1 = cr.right - ox;
    const [H, nq, nk] = att.shape;
    // the sentence-pair filter as the view applies it
    let rowOk = null, colOk = null;
    const pairSel = root.querySelector(".xh-pair");
    const seg = p.sequences && p.sequences.input && p.sequences.input.segments;
    if (pairSel && pairSel.value !== "all" && seg) {
      const [a, b] = pairSel.value.split("->").map((x) => (x === "a" ? 0 : 1));
      rowOk = (i) => seg[i] === a; colOk = (j) => seg[j] === b;
    }
    const lines = [];
    for (const h of heads) {
      if (h >= H) continue;
      const color = XH.headColor(h);
      for (let i = 0; i < nq; i++) {
        if (pinned && pinned[0] === "left" && i !== Number(pinned[1])) continue;
        if (rowOk && !rowOk(i)) continue;
        for (let j = 0; j < nk; j++) {
          if (pinned && pinned[0] === "right" && j !== Number(pinned[1])) continue;
          if (colOk && !colOk(j)) continue;
          const w = att.lut[att.data[(h * nq + i) * nk + j]];
          if (w * 255 < 0.5) continue;
          lines.push([w, i, j, color]);
        }
      }
    }
    const budget = p.line_budget || 0;
    if (!pinned && budget && lines.length > budget) { lines.sort((a, b) => b[0] - a[0]); lines.length = budget; }
    const width = rh >= 20 ? 1.8 : 1.4;
    out.push('<g fill="none" stroke-width="' + width + '" stroke-linecap="round">');
    lines.sort((a, b) => a[0] - b[0]);  // strongest on top, as the view blends them
    for (const [w, i, j, color] of lines) {
      const yi = top - oy + i * rh + rh / 2, yj = top - oy + j * rh + rh / 2;
      out.push('<line x1="' + num(x0) + '" y1="' + num(yi) + '" x2="' + num(x1) + '" y2="' + num(yj) +
        '" stroke="' + color + '" stroke-opacity="' + Math.min(1, w).toFixed(3) + '"/>');
    }
    out.push("</g>");
    return true;
  }

  function decodeLayer(p) {
    if (p.encoding !== "csr-uint8") return XH.decodeAttention(p);
    const [h, nq, nk] = p.shape.map(Number);
    const ib = XH.base64ToBytes(p.indptr), xb = XH.base64ToBytes(p.indices), values = XH.base64ToBytes(p.values);
    const indptr = new Uint32Array(ib.buffer, ib.byteOffset, ib.byteLength / 4);
    const indices = new Uint16Array(xb.buffer, xb.byteOffset, xb.byteLength / 2);
    const data = new Uint8Array(h * nq * nk);
    for (let r = 0; r < h * nq; r++) for (let t = indptr[r]; t < indptr[r + 1]; t++) data[r * nk + indices[t]] = values[t];
    return { shape: [h, nq, nk], data, lut: XH.lookupTable(p) };
  }

  const SVG_PROPS = ["stroke", "stroke-width", "stroke-opacity", "fill", "fill-opacity", "opacity", "font-size",
    "font-family", "font-weight", "stroke-linecap", "stroke-dasharray"];
  function inlineSvg(node, ox, oy) {
    const r = node.getBoundingClientRect();
    const clone = node.cloneNode(true);
    const src = [node, ...node.querySelectorAll("*")], dst = [clone, ...clone.querySelectorAll("*")];
    src.forEach((s, k) => {
      const cs = getComputedStyle(s), d = dst[k];
      if (cs.display === "none" || cs.visibility === "hidden") { d.setAttribute("display", "none"); return; }
      for (const prop of SVG_PROPS) { const v = cs.getPropertyValue(prop); if (v) d.setAttribute(prop, v); }
      d.removeAttribute("class"); d.removeAttribute("style");
    });
    clone.setAttribute("x", num(r.left - ox)); clone.setAttribute("y", num(r.top - oy));
    clone.setAttribute("width", num(r.width)); clone.setAttribute("height", num(r.height));
    clone.setAttribute("overflow", "hidden");
    return new XMLSerializer().serializeToString(clone);
  }

  function textOf(node, cs) {
    let t = node.nodeValue;
    if (cs.textTransform === "uppercase") t = t.toUpperCase();
    else if (cs.textTransform === "lowercase") t = t.toLowerCase();
    return t;
  }

  function fontAttrs(cs) {
    return ' font-family="' + esc(cs.fontFamily) + '" font-size="' + cs.fontSize + '"' +
      (cs.fontWeight !== "400" && cs.fontWeight !== "normal" ? ' font-weight="' + cs.fontWeight + '"' : "") +
      (cs.fontStyle === "italic" ? ' font-style="italic"' : "") + ' fill="' + cs.color + '"';
  }

  function toSVG(uid) {
    const host = document.getElementById(uid);
    const box = document.getElementById(uid + "-box") || host;
    const data = host.exbertExport || {};
    const br = box.getBoundingClientRect();
    const ox = br.left, oy = br.top, W = Math.ceil(box.scrollWidth || br.width), Hh = Math.ceil(box.scrollHeight || br.height);
    const out = [];
    const range = document.createRange();
    function visit(el) {
      const cs = getComputedStyle(el);
      if (cs.display === "none" || cs.visibility === "hidden" || parseFloat(cs.opacity) === 0) return;
      if (el.hidden) return;
      const r = el.getBoundingClientRect();
      if (r.width === 0 && r.height === 0 && el.children.length === 0) return;
      const x = num(r.left - ox), y = num(r.top - oy), w = num(r.width), h = num(r.height);
      const rx = parseFloat(cs.borderTopLeftRadius) || 0;
      if (alphaOf(cs.backgroundColor) > 0) {
        out.push('<rect x="' + x + '" y="' + y + '" width="' + w + '" height="' + h + '"' + (rx ? ' rx="' + rx + '"' : "") +
          ' fill="' + cs.backgroundColor + '"/>');
      }
      const bw = parseFloat(cs.borderTopWidth) || 0;
      const uniform = ["Right", "Bottom", "Left"].every((s) => cs["border" + s + "Width"] === cs.borderTopWidth && cs["border" + s + "Color"] === cs.borderTopColor);
      if (bw > 0 && uniform && alphaOf(cs.borderTopColor) > 0 && cs.borderTopStyle !== "none") {
        out.push('<rect x="' + num(x + bw / 2) + '" y="' + num(y + bw / 2) + '" width="' + num(w - bw) + '" height="' + num(h - bw) + '"' +
          (rx ? ' rx="' + rx + '"' : "") + ' fill="none" stroke="' + cs.borderTopColor + '" stroke-width="' + bw + '"/>');
      } else {
        for (const [side, x1, y1, x2, y2] of [["Top", x, y, x + w, y], ["Bottom", x, y + h, x + w, y + h], ["Left", x, y, x, y + h], ["Right", x + w, y, x + w, y + h]]) {
          const sw = parseFloat(cs["border" + side + "Width"]) || 0;
          if (sw > 0 && cs["border" + side + "Style"] !== "none" && alphaOf(cs["border" + side + "Color"]) > 0) {
            out.push('<line x1="' + x1 + '" y1="' + y1 + '" x2="' + x2 + '" y2="' + y2 + '" stroke="' + cs["border" + side + "Color"] + '" stroke-width="' + sw + '"/>');
          }
        }
      }
      const tag = el.tagName.toLowerCase();
      if (tag === "svg") { out.push(inlineSvg(el, ox, oy)); return; }
      if (tag === "canvas") {
        const root = el.closest(".xh-hv");
        if (el.classList.contains("xh-lines-canvas") && root && headLines(root, el, data, ox, oy, out)) return;
        if (el.width && el.height) {
          let url = "";
          try { url = el.toDataURL("image/png"); } catch (err) { url = ""; }
          if (url) out.push('<image x="' + x + '" y="' + y + '" width="' + w + '" height="' + h + '" preserveAspectRatio="none" href="' + url + '"/>');
        }
        return;
      }
      if (tag === "select") {
        const opt = el.options[el.selectedIndex];
        if (opt) out.push('<text x="' + num(x + (parseFloat(cs.paddingLeft) || 4)) + '" y="' + num(y + h / 2) + '" dominant-baseline="central"' + fontAttrs(cs) + ">" + esc(opt.textContent) + "</text>");
        return;
      }
      if (tag === "input" && el.type === "range") {
        const lo = Number(el.min || 0), hi = Number(el.max || 100), v = Number(el.value);
        const fx = x + w * (hi > lo ? (v - lo) / (hi - lo) : 0);
        out.push('<line x1="' + x + '" y1="' + num(y + h / 2) + '" x2="' + num(x + w) + '" y2="' + num(y + h / 2) + '" stroke="#9ca3af" stroke-width="3" stroke-linecap="round"/>');
        out.push('<circle cx="' + num(fx) + '" cy="' + num(y + h / 2) + '" r="6" fill="' + (cs.accentColor && cs.accentColor !== "auto" ? cs.accentColor : "#2563eb") + '"/>');
        return;
      }
      if (tag === "input" && (el.type === "checkbox" || el.type === "radio")) {
        const s = Math.min(w, h), cx = x + w / 2, cy = y + h / 2;
        out.push('<rect x="' + num(cx - s / 2) + '" y="' + num(cy - s / 2) + '" width="' + num(s) + '" height="' + num(s) + '" rx="' +
          (el.type === "radio" ? num(s / 2) : 2) + '" fill="' + (el.checked ? "#2563eb" : "#ffffff") + '" stroke="#6b7280"/>');
        if (el.checked) out.push('<path d="M' + num(cx - s * 0.3) + " " + num(cy) + " L" + num(cx - s * 0.05) + " " + num(cy + s * 0.25) +
          " L" + num(cx + s * 0.32) + " " + num(cy - s * 0.25) + '" fill="none" stroke="#ffffff" stroke-width="2"/>');
        return;
      }
      if (tag === "input" || tag === "textarea") {
        if (el.value) out.push('<text x="' + num(x + 4) + '" y="' + num(y + h / 2) + '" dominant-baseline="central"' + fontAttrs(cs) + ">" + esc(el.value) + "</text>");
        return;
      }
      if (tag === "script" || tag === "style") return;
      // a closed <details> shows only its summary
      const children = tag === "details" && !el.open ? Array.from(el.children).filter((c) => c.tagName === "SUMMARY") : el.childNodes;
      for (const child of children) {
        if (child.nodeType === Node.ELEMENT_NODE) visit(child);
        else if (child.nodeType === Node.TEXT_NODE && child.nodeValue.trim()) text(child, cs);
      }
    }
    function text(node, cs) {
      const value = textOf(node, cs);
      const re = /\S+/g;
      let m;
      // one <text> per word, where the browser laid it out (wrapped lines stay where they were)
      while ((m = re.exec(node.nodeValue))) {
        range.setStart(node, m.index); range.setEnd(node, m.index + m[0].length);
        const rects = range.getClientRects();
        if (!rects.length) continue;
        const r = rects[0];
        if (r.width === 0) continue;
        out.push('<text x="' + num(r.left - ox) + '" y="' + num(r.top - oy + r.height / 2) + '" dominant-baseline="central"' +
          fontAttrs(cs) + ' xml:space="preserve">' + esc(value.substr(m.index, m[0].length)) + "</text>");
      }
    }
    visit(box);
    return '<svg xmlns="' + SVG_NS + '" width="' + W + '" height="' + Hh + '" viewBox="0 0 ' + W + " " + Hh + '">' +
      '<rect width="100%" height="100%" fill="#ffffff"/>' + out.join("") + "</svg>";
  }

  window.exbertHubExport = { version: 1, mount, toSVG };
})();
