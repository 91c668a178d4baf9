"""Browser views of an Analysis: gr.HTML components with their own JavaScript and CSS.

Every view sends attention to the browser through :mod:`exbert_hub.views.transport` (uint8 in base64,
never float JSON) and relies on ``common.js`` (``window.exbertHub``), which the app loads once for all
views (see :func:`exbert_hub.views.common_head`).
"""

from __future__ import annotations

from importlib import resources


def asset(name: str) -> str:
    """The text of a file shipped in this package (``explorer.js``, ``common.js``...)."""
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


def common_head() -> str:
    """A ``<script>`` with common.js, for ``launch(head=...)``: defines ``window.exbertHub`` for every view."""
    js = asset("common.js").replace("</script", "<\\/script")
    return f"<script>\n{js}\n</script>"
