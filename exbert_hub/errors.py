"""Errors a user can act on: each names the input, what was tried and what to do next."""


class ExbertError(Exception):
    """Base class of every error exbert-hub raises on purpose."""


class ModelNotFoundError(ExbertError, OSError):
    """A model name or path that resolved to nothing."""


class InputError(ExbertError, ValueError):
    """Text the engine will not analyze as given (empty, too long, bad mask position...)."""


class UnsupportedModelError(ExbertError, ValueError):
    """A model the engine can load but not analyze (no attention outputs, unknown layout...)."""
