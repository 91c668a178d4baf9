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


def theme_css() -> str:
    """The colour variables the head, neuron and layers views share (theme.css); each prepends it to its CSS."""
    return asset("theme.css")


def common_head() -> str:
    """A ``<script>`` with common.js, for ``launch(head=...)``: defines ``window.exbertHub`` for every view."""
    js = asset("common.js").replace("</script", "<\\/script")
    return f"<script>\n{js}\n</script>"


# Raw-token prefixes that START a word: SentencePiece's "▁", byte-level BPE's "Ġ" (space) and "Ċ" (newline).
WORD_START_MARKERS = ("\u2581", "\u0120", "\u010a")


def continuation_flags(tokens, display, offsets, special, segments=None) -> list[bool]:
    """Per token, True when it continues the word of the token before it (a non-initial word piece).

    From the tokenizer's own marks: WordPiece pieces start with "##" (in a WordPiece vocabulary, where
    [CLS]/[SEP] or "##" pieces appear, nothing else continues a word); a SentencePiece / byte-level BPE
    token that starts with a word-start mark ("▁", "Ġ") starts a word. Otherwise a token continues a word
    when its characters directly follow the previous token's (offsets adjacent, no space between) and both
    sides of the join are letters or digits ("par" + "sing"; not "mat" + "."). Special tokens, the first
    token after a special token or a segment change, and tokens without offsets never continue.
    """
    n = len(tokens)
    special = [bool(x) for x in special]
    segments = [0] * n if segments is None else [int(x) for x in segments]
    wordpiece = any(str(t).startswith("##") and len(str(t)) > 2 for t in tokens) or any(
        sp and str(t) in ("[CLS]", "[SEP]") for t, sp in zip(tokens, special))
    out = [False] * n
    prev = None
    for i in range(n):
        if special[i]:
            prev = None
            continue
        raw = str(tokens[i])
        if prev is not None and segments[prev] == segments[i]:
            if raw.startswith("##") and len(raw) > 2:
                out[i] = True
            elif not wordpiece and not raw.startswith(WORD_START_MARKERS):
                s, e = int(offsets[i][0]), int(offsets[i][1])
                ps, pe = int(offsets[prev][0]), int(offsets[prev][1])
                here, before = str(display[i])[:1], str(display[prev])[-1:]
                out[i] = e > s and pe > ps and s == pe and here.isalnum() and before.isalnum()
        prev = i
    return out


def sequence_continuations(seq) -> list[bool]:
    """:func:`continuation_flags` of an Analysis TokenSequence (``analysis.input``, ``decoder_input``)."""
    return continuation_flags(seq.tokens, seq.display, seq.offsets, seq.special, seq.segments)
