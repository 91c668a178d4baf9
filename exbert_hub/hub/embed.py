"""Embed mode of the app: ``?embed=1&tab=explorer&text=...`` shows one view and nothing else.

For pages that embed the Space in an ``<iframe>`` (700 x 450 is enough) or a ``<gradio-app>`` element:
no header, no text boxes, no tab bar and no footer; the tab of the link (``tab=``, default the first)
with its view made to fit; a link "open full app" to the same address without ``embed`` (with the
selection made meanwhile, which the views keep in the address). The app adds :func:`embed_head` to its
page head; nothing changes without ``embed=1``.
"""

from __future__ import annotations

EMBED_CSS = """
html.xh-embed footer, html.xh-embed #xh-header, html.xh-embed .row:has(#xh-text),
html.xh-embed #xh-tabs > .tab-wrapper, html.xh-embed #xh-tabs [role=tablist] { display: none !important; }
html.xh-embed .gradio-container { padding: 4px 6px !important; max-width: none !important; min-height: 0 !important; }
html.xh-embed .gradio-container main, html.xh-embed .gradio-container .main { padding: 0 !important; margin: 0 !important; }
/* the banner's slot only while it holds a message */
html.xh-embed #xh-message:not(:has(.xh-banner)) { display: none !important; }
html.xh-embed #xh-tabs .html-container { padding: 2px 0 !important; }
html.xh-embed #xh-tabs, html.xh-embed #xh-tabs .tabitem { padding: 0 !important; border: 0 !important; }
html.xh-embed .xh-hv, html.xh-embed .xh-nv { --xh-height: 300px; }
html.xh-embed .xh-mv { --xh-height: 340px; }
html.xh-embed .xb-scroll { max-height: 300px; }
.xh-embed-link { position: fixed; bottom: 6px; right: 8px; z-index: 1000; font: 600 12px system-ui, sans-serif;
  padding: 3px 8px; border-radius: 6px; background: #1d4ed8; color: #ffffff !important; text-decoration: none; }
.xh-embed-link:hover, .xh-embed-link:focus { background: #1e3a8a; }
"""

EMBED_JS = """
(function () {
  "use strict";
  const params = new URLSearchParams(window.location.search);
  const on = params.get("embed");
  if (!on || on === "0" || on === "false") return;
  document.documentElement.classList.add("xh-embed");
  // the same address without embed, with whatever the views wrote into it since
  function fullUrl() {
    const q = new URLSearchParams(window.location.search);
    q.delete("embed");
    const qs = q.toString();
    return window.location.origin + window.location.pathname + (qs ? "?" + qs : "") + window.location.hash;
  }
  function addLink() {
    if (!document.body || document.querySelector(".xh-embed-link")) return;
    const a = document.createElement("a");
    a.className = "xh-embed-link";
    a.textContent = "open full app \\u2197";
    a.target = "_blank";
    a.rel = "noopener";
    a.href = fullUrl();
    const refresh = () => { a.href = fullUrl(); };
    a.addEventListener("mouseenter", refresh);
    a.addEventListener("focus", refresh);
    a.addEventListener("mousedown", refresh);
    document.body.append(a);
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", addLink);
  else addLink();
})();
"""


def embed_head() -> str:
    """The ``<style>`` and ``<script>`` of embed mode, for the app's page head (inert without ``embed=1``)."""
    return f"<style>{EMBED_CSS}</style>\n<script>{EMBED_JS}</script>"
