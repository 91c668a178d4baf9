/* exbert-hub: helpers shared by every view, loaded once per page through launch(head=...).
 *
 *   const att = exbertHub.decodeAttention(payload);   // payload from views/transport.py
 *   att.shape; att.data (Uint8Array); att.get(layer, head, i, j) -> float
 *   att.row(layer, head, i) -> Float32Array of decoded weights (the last axis)
 *
 * Token text must be shown with textContent (exbertHub.setText / exbertHub.el), never innerHTML.
 */
(function () {
  "use strict";
  if (window.exbertHub && window.exbertHub.version >= 2) return;

  function base64ToBytes(b64) {
    if (!b64) return new Uint8Array(0);
    if (typeof Uint8Array.fromBase64 === "function") return Uint8Array.fromBase64(b64);
    const bin = atob(b64);
    const out = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out;
  }

  // byte -> float lookup table for one payload (sqrt, linear or signed transform, times scale)
  function lookupTable(payload) {
    const scale = Number(payload.scale == null ? 1 : payload.scale);
    const transform = payload.transform || "sqrt";
    const lut = new Float32Array(256);
    for (let q = 0; q < 256; q++) {
      if (transform === "sqrt") lut[q] = scale * (q / 255) * (q / 255);
      else if (transform === "linear") lut[q] = scale * (q / 255);
      else if (transform === "signed") lut[q] = (scale * (q - 128)) / 127;
      else throw new Error("exbertHub: unknown transform " + transform);
    }
    return lut;
  }

  function decodeAttention(payload) {
    if (!payload || !payload.shape) throw new Error("exbertHub.decodeAttention: not a payload");
    if ((payload.encoding || "uint8") !== "uint8") throw new Error("exbertHub: unknown encoding " + payload.encoding);
    const shape = payload.shape.map(Number);
    const data = base64ToBytes(payload.b64);
    const size = shape.reduce((a, b) => a * b, 1);
    if (data.length !== size) throw new Error("exbertHub: " + data.length + " bytes for shape " + shape.join("x"));
    const strides = new Array(shape.length);
    let s = 1;
    for (let d = shape.length - 1; d >= 0; d--) { strides[d] = s; s *= shape[d]; }
    const lut = lookupTable(payload);
    function offset() {
      let o = 0;
      for (let d = 0; d < arguments.length; d++) o += arguments[d] * strides[d];
      return o;
    }
    return {
      shape, data, strides, lut, size,
      transform: payload.transform || "sqrt",
      scale: Number(payload.scale == null ? 1 : payload.scale),
      offset,
      get() { return lut[data[offset.apply(null, arguments)]]; },
      // decoded slice along the last axis (all leading indices given)
      row() {
        const n = shape[shape.length - 1];
        const o = offset.apply(null, arguments);
        const out = new Float32Array(n);
        for (let j = 0; j < n; j++) out[j] = lut[data[o + j]];
        return out;
      },
    };
  }

  const ESC = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;", "`": "&#96;" };
  function escapeText(s) {
    return String(s == null ? "" : s).replace(/[&<>"'`]/g, (c) => ESC[c]);
  }

  // element with a class and TEXT content (never parsed as HTML)
  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text != null) e.textContent = String(text);
    return e;
  }
  function setText(node, text) { node.textContent = String(text == null ? "" : text); return node; }

  // Visible form of a token: spaces and newlines shown as symbols, never empty.
  function tokenLabel(s) {
    s = String(s == null ? "" : s);
    if (s === "") return "\u2205";
    return s.replace(/\n/g, "\u21b5").replace(/\t/g, "\u21e5").replace(/^ +| +$/g, (m) => "\u00b7".repeat(m.length));
  }

  // THE head palette of every view (explorer, head, model and neuron views): 32 colours, OKLCH hues at
  // 11.25 degree steps in bit-reversed order (consecutive heads far apart), alternating lightness
  // 0.60 / 0.76 so neighbouring hues also differ in lightness. Readable on light and dark backgrounds.
  // Heads beyond 32 reuse the colours (the number on each head's control tells them apart).
  const PALETTE = ["#e23439", "#0f919c", "#7e8904", "#8d5bed", "#b17000", "#0f83de", "#049863", "#cb3ca7",
    "#c95b0e", "#088db5", "#42970a", "#b14bd0", "#997d0b", "#5a6dfb", "#0d9485", "#dc3175",
    "#ff8d6e", "#02c5e8", "#92c514", "#ca95fe", "#e2a50c", "#86b1fd", "#19cea5", "#fd81bd",
    "#fe9224", "#51bcfd", "#1bd35e", "#f678f2", "#c3b502", "#a7a6fe", "#00cac9", "#ff8795"];
  function headColor(h) {
    h = Number(h) | 0;
    return PALETTE[((h % PALETTE.length) + PALETTE.length) % PALETTE.length];
  }
  function hexRgb(hex) {
    const n = parseInt(String(hex).slice(1), 16);
    return [(n >> 16) & 255, (n >> 8) & 255, n & 255];
  }
  // WCAG relative luminance and contrast ratio of two [r, g, b] colours (0-255)
  function luminance(rgb) {
    const f = (c) => { c /= 255; return c <= 0.03928 ? c / 12.92 : Math.pow((c + 0.055) / 1.055, 2.4); };
    return 0.2126 * f(rgb[0]) + 0.7152 * f(rgb[1]) + 0.0722 * f(rgb[2]);
  }
  function contrast(a, b) {
    const la = luminance(a), lb = luminance(b);
    return (Math.max(la, lb) + 0.05) / (Math.min(la, lb) + 0.05);
  }
  // text colour to put on a head's colour: black or white, whichever contrasts more (black: at least
  // 4.7:1 on every colour of the palette; white reaches 4.5:1 on none of the mid-tones)
  function headTextColor(h) {
    const c = hexRgb(headColor(h));
    return contrast(c, [0, 0, 0]) >= contrast(c, [255, 255, 255]) ? "#000000" : "#ffffff";
  }

  function formatProb(p) {
    p = Number(p);
    if (!isFinite(p)) return "";
    if (p >= 0.1) return (100 * p).toFixed(0) + "%";
    if (p >= 0.01) return (100 * p).toFixed(1) + "%";
    if (p >= 0.0001) return (100 * p).toFixed(2) + "%";
    return p.toExponential(1);  // e.g. 3.3e-5 (a probability, not a percentage)
  }

  // URL query parameters (deep links). null/undefined/"" removes a key. Never reloads the page.
  function urlParams() { return new URLSearchParams(window.location.search); }
  function getUrlParam(key) { return urlParams().get(key); }
  function setUrlParams(values) {
    try {
      const params = urlParams();
      for (const [k, v] of Object.entries(values || {})) {
        if (v == null || v === "") params.delete(k);
        else params.set(k, Array.isArray(v) ? v.join(",") : String(v));
      }
      const qs = params.toString();
      const url = window.location.pathname + (qs ? "?" + qs : "") + window.location.hash;
      if (url !== window.location.pathname + window.location.search + window.location.hash) {
        window.history.replaceState(window.history.state, "", url);
      }
    } catch (err) {
      console.warn("exbertHub: could not update the URL", err);
    }
  }

  function clamp(x, lo, hi) { return Math.max(lo, Math.min(hi, x)); }

  // A word piece that continues the word before it ("sing" of "parsing") is shown with a faint
  // leading "##" (the views' CSS draws it; payloads carry `continues` flags, see views/__init__.py).
  const CONTINUATION = "##";
  function pieceLabel(s, continues) { return (continues ? CONTINUATION : "") + tokenLabel(s); }

  // --- the selection every view shares through the page address: layer, heads, token ------------
  // The address at load, before any view rewrote it (a deep link).
  const initialParams = new URLSearchParams(window.location.search);
  // {layer, heads, token} from the address; layer/token: an index or null, heads: null (all heads,
  // or absent), [] ("none") or the listed heads. Out-of-range values read as absent.
  function urlSelection(numLayers, numHeads, numTokens) {
    const q = urlParams();
    const index = (key, n) => {
      const v = q.get(key);
      if (v == null || v === "") return null;
      const x = parseInt(v, 10);
      return Number.isInteger(x) && x >= 0 && (n == null || x < n) ? x : null;
    };
    const hs = q.get("heads");
    let heads = null;
    if (hs === "none") heads = [];
    else if (hs != null && hs !== "" && hs !== "all") {
      heads = Array.from(new Set(parseIndexList(hs, numHeads == null ? Infinity : numHeads))).sort((a, b) => a - b);
    }
    return { layer: index("layer", numLayers), heads, token: index("token", numTokens) };
  }
  // The `heads` parameter of a selection: absent for all heads, "none" for none.
  function headsParam(heads, numHeads) {
    const hs = Array.from(heads).sort((a, b) => a - b);
    if (hs.length === numHeads) return null;
    return hs.length ? hs.join(",") : "none";
  }
  // Write a view's selection ({layer, heads: [..], numHeads, token}) into the address.
  function writeSelection(sel) {
    const values = {};
    if ("layer" in sel) values.layer = sel.layer;
    if ("heads" in sel) values.heads = headsParam(sel.heads, sel.numHeads);
    if ("token" in sel) values.token = sel.token;
    setUrlParams(values);
  }
  // Call fn() each time `node` comes into view (a tab selected, scrolled to).
  function onShown(node, fn) {
    if (!window.IntersectionObserver) return;
    let shown = false;
    new IntersectionObserver((entries) => {
      const now = entries.some((e) => e.isIntersecting);
      if (now && !shown) fn();
      shown = now;
    }).observe(node);
  }

  // --- tabs of the app (gr.Tab with elem_id "xh-tab-<id>") -----------------------------------------
  // Only the selected tab's panel is in the page: tabs are found in Gradio's page config.
  function tabItem(id) {
    const comps = (window.gradio_config && window.gradio_config.components) || [];
    return comps.find((c) => c.type === "tabitem" && c.props && c.props.elem_id === "xh-tab-" + id) || null;
  }
  function hasTab(id) {
    return !!(tabItem(id) || document.getElementById("xh-tab-" + id) || document.querySelector('[role=tab][data-tab-id="' + id + '"]'));
  }
  // Select a tab as a click would (Gradio runs its select events). On narrow pages the tab may sit in
  // the "More tabs" menu, whose buttons carry only the tab's label.
  function selectTab(id) {
    const item = tabItem(id);
    const tabId = item && item.props.id != null ? String(item.props.id) : id;
    const btn = document.querySelector('[role=tab][data-tab-id="' + tabId + '"]') || document.getElementById("xh-tab-" + id + "-button");
    if (btn) { btn.click(); return true; }
    const label = item && item.props.label != null ? String(item.props.label).trim() : null;
    const more = label && Array.from(document.querySelectorAll(".overflow-dropdown button")).find((b) => b.textContent.trim() === label);
    if (more) { more.click(); return true; }
    return false;
  }
  // The explorer's "Search this token in the corpus": the selection goes into the address, the search
  // tab is selected, and its select event (search_ui.add_search_tab) takes the request and runs it.
  let searchRequest = null;
  function requestSearch(sel) {
    if (!hasTab("search")) return false;
    if (sel) writeSelection(sel);
    searchRequest = Date.now();
    if (!selectTab("search")) { searchRequest = null; return false; }
    return true;
  }
  // "run" once after requestSearch (read by the search tab's select event), else "".
  function takeSearchRequest() {
    const r = searchRequest;
    searchRequest = null;
    return r && Date.now() - r < 60000 ? "run" : "";
  }

  // Parse "0,3,5" -> [0,3,5] (valid integers in [0, n) only); null when absent.
  function parseIndexList(s, n) {
    if (s == null || s === "") return null;
    return String(s).split(",").map((x) => parseInt(x, 10)).filter((x) => Number.isInteger(x) && x >= 0 && x < n);
  }

  window.exbertHub = {
    version: 2,
    base64ToBytes, decodeAttention, lookupTable,
    escapeText, el, setText, tokenLabel,
    headColor, headTextColor, hexRgb, luminance, contrast, PALETTE, formatProb, clamp, parseIndexList,
    CONTINUATION, pieceLabel,
    urlParams, getUrlParam, setUrlParams, initialParams, urlSelection, headsParam, writeSelection, onShown,
    hasTab, selectTab, requestSearch, takeSearchRequest,
  };
})();
