"""The tabs of the app, in order (see tabs.base for what a tab is)."""

from .base import AppContext, Tab
from .explorer import ExplorerTab
from .head import HeadTab
from .layers import LayersTab
from .lens import LensTab
from .model import ModelTab
from .neuron import NeuronTab
from .search import SearchTab

# The app shows these, in this order; a new tab is one module and one line here.
TABS: tuple[type[Tab], ...] = (
    ExplorerTab,
    HeadTab,
    ModelTab,
    NeuronTab,
    LensTab,
    LayersTab,
    SearchTab,
)

__all__ = ["AppContext", "Tab", "TABS"]
