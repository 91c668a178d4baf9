"""Errors a user can act on: each names the input, what was tried and what to do next."""

import re


class ExbertError(Exception):
    """Base class of every error exbert-hub raises on purpose."""


class ModelNotFoundError(ExbertError, OSError):
    """A model name or path that resolved to nothing."""


class InputError(ExbertError, ValueError):
    """Text the engine will not analyze as given (empty, too long, bad mask position...)."""


class UnsupportedModelError(ExbertError, ValueError):
    """A model the engine can load but not analyze (no attention outputs, unknown layout...)."""


_PATH = re.compile(r"(?<![\w.:/])(?:~|/)[^\s'\"`,;:()]*(?:/[^\s'\"`,;:()]*)+")


def user_message(err: BaseException, limit: int = 400) -> str:
    """One line for any error, as plain text: ExbertError messages are written for users; anything else
    gives its type and first line. Newlines and runs of spaces become one space; server paths are cut."""
    if isinstance(err, ExbertError):
        text = str(err)
    else:
        first = (str(err).strip().splitlines() or [""])[0]
        text = f"{type(err).__name__}: {first}" if first else type(err).__name__
    # a list in a message ("Tried:\n  - a\n  - b") becomes "Tried: a; b"
    text = re.sub(r":[ \t]*\n\s*[-*][ \t]+", ": ", text)
    text = re.sub(r"\.?[ \t]*\n\s*[-*][ \t]+", "; ", text)
    text = re.sub(r"([^.;:!?\s])[ \t]*\n\s*", r"\1. ", text)  # lines are sentences: never run them together
    text = " ".join(text.split())
    text = _PATH.sub("(a server path)", text)
    return text if len(text) <= limit else text[: limit - 1] + "…"
