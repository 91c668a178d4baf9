"""What the views show for a token (the browser tests compare the page against these)."""

from __future__ import annotations


def token_label(s: str) -> str:
    """exbertHub.tokenLabel (common.js): empty -> the empty-set sign, newlines and tabs as arrows, leading and
    trailing spaces as middle dots."""
    if s == "":
        return "\u2205"
    s = s.replace("\n", "\u21b5").replace("\t", "\u21e5")
    lead, trail = len(s) - len(s.lstrip(" ")), len(s) - len(s.rstrip(" "))
    if lead == len(s):
        return "\u00b7" * lead
    return "\u00b7" * lead + s.strip(" ") + "\u00b7" * trail
