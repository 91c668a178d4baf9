"""Checks of values that arrive from visitors (HTTP API, deep links): one-line InputErrors, never a cast
that silently changes the value (``layer=1.7`` is refused, not taken as 1)."""

from __future__ import annotations

import numbers
from typing import Any

from .errors import InputError


def _shown(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def as_int(value: Any, name: str, *, lo: int | None = None, hi: int | None = None) -> int:
    """An integer from an int, an integral float (3.0) or a string of digits ("3"); else InputError."""
    if isinstance(value, bool):
        raise InputError(f"{name} must be a whole number, got {_shown(value)}")
    if isinstance(value, numbers.Integral):
        out = int(value)
    elif isinstance(value, numbers.Real) and float(value).is_integer():
        out = int(value)
    elif isinstance(value, str) and value.strip().lstrip("-").isdigit() and len(value.strip()) <= 12:
        out = int(value.strip())
    else:
        raise InputError(f"{name} must be a whole number, got {_shown(value)}")
    if lo is not None and out < lo or hi is not None and out > hi:
        span = f"from {lo} to {hi}" if lo is not None and hi is not None else (f"at least {lo}" if lo is not None else f"at most {hi}")
        raise InputError(f"{name} must be {span}, got {out}")
    return out


def as_text(value: Any, name: str, *, optional: bool = False, max_chars: int | None = None) -> str | None:
    """A string (None or blank allowed when ``optional``); lone surrogates are refused with their position."""
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise InputError(f"{name} must be text, got {type(value).__name__}")
    if optional and not value.strip():
        return None
    if max_chars is not None and len(value) > max_chars:
        raise InputError(f"{name} has {len(value):,} characters; the limit is {max_chars:,}")
    for i, ch in enumerate(value):
        if "\ud800" <= ch <= "\udfff":
            raise InputError(f"{name} contains an invalid character (a lone surrogate) at position {i}; "
                             "remove it or send the text as UTF-8")
    return value


def as_int_list(value: Any, name: str, *, optional: bool = True) -> list[int] | None:
    """A list of whole numbers (None allowed when ``optional``); "0,1" is refused with the form to use."""
    if value is None and optional:
        return None
    if isinstance(value, str):
        raise InputError(f"{name} must be a list of whole numbers such as [0, 1], got the text {_shown(value)}")
    if not isinstance(value, (list, tuple)):
        raise InputError(f"{name} must be a list of whole numbers such as [0, 1], got {type(value).__name__}")
    if len(value) > 4096:
        raise InputError(f"{name} has {len(value)} entries; at most 4096")
    return [as_int(v, f"each of {name}") for v in value]
