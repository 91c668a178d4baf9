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
  if (window.exbertHub && window.exbertHub.version >= 1) return;

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

  // Tableau-like categorical colours for heads, then golden-angle hues beyond them.
  const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
    "#7f7f7f", "#bcbd22", "#17becf", "#3b4cc0", "#b40426", "#5b8c00", "#c06c00", "#6a3d9a", "#008080"];
  function headColor(h) {
    if (h < PALETTE.length) return PALETTE[h];
    return "hsl(" + ((h * 137.508) % 360).toFixed(0) + ",62%,45%)";
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

  // Parse "0,3,5" -> [0,3,5] (valid integers in [0, n) only); null when absent.
  function parseIndexList(s, n) {
    if (s == null || s === "") return null;
    return String(s).split(",").map((x) => parseInt(x, 10)).filter((x) => Number.isInteger(x) && x >= 0 && x < n);
  }

  window.exbertHub = {
    version: 1,
    base64ToBytes, decodeAttention, lookupTable,
    escapeText, el, setText, tokenLabel,
    headColor, formatProb, clamp, parseIndexList,
    urlParams, getUrlParam, setUrlParams,
  };
})();
