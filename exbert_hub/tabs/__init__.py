"""The tabs of the app, in order (see tabs.base for what a tab is)."""

from .base import AppContext, Tab

__all__ = ["AppContext", "Tab"]
