"""The app composes tabs (exbert_hub/tabs): a tab is one module with build/value/wire/api."""

from __future__ import annotations

import gradio as gr
import pytest
from serving import launch_on_free_port

from exbert_hub.tabs import TABS, Tab
from exbert_hub.tabs.explorer import ExplorerTab

TEXT = "The cat sat on the mat."


class EchoTab(Tab):
    """A tab of the test's own: shows the tokens of the analysis and serves them at /echo_tokens."""

    id = "echo"
    label = "Echo"

    def build(self, ctx):
        self.built_with = ctx
        return gr.JSON(None, elem_id="xh-echo")

    def value(self, ctx, key, analysis, engine, view):
        return {"key": key, "tokens": list(analysis.tokens), "layer": view.get("layer")}

    def api(self, ctx):
        def echo_tokens(text: str, model: str | None = None, request: gr.Request = None) -> list[str]:
            """The tokens of `text`."""
            from exbert_hub.tabs.base import api_error

            try:
                return list(ctx.analysis(model, text, request=request)[1].tokens)
            except Exception as err:  # noqa: BLE001
                raise api_error(err) from None

        gr.api(echo_tokens, api_name="echo_tokens")


class BrokenTab(Tab):
    id = "broken"
    label = "Broken"

    def build(self, ctx):
        raise RuntimeError("this view has a bug")


def _tab_labels(demo) -> list[str]:
    return [c["props"]["label"] for c in demo.config["components"] if c["type"] == "tabitem"]


def test_the_app_shows_exactly_the_listed_tabs_in_order(tiny):
    from exbert_hub.app import AnalysisStore, build_app

    demo = build_app(str(tiny("bert")), store=AnalysisStore(), tabs=(ExplorerTab, EchoTab))
    assert _tab_labels(demo) == ["Attention explorer", "Echo"]
    full = build_app(str(tiny("bert")), store=AnalysisStore())
    assert _tab_labels(full) == [t.label for t in TABS]
    assert len({t.id for t in TABS}) == len(TABS)


def test_a_broken_tab_is_an_error_not_a_missing_tab(tiny):
    """Guarded imports once turned a broken view into a line of Markdown; now the build fails loudly."""
    from exbert_hub.app import AnalysisStore, build_app

    with pytest.raises(RuntimeError, match="this view has a bug"):
        build_app(str(tiny("bert")), store=AnalysisStore(), tabs=(ExplorerTab, BrokenTab))


def test_a_tab_gets_the_shown_analysis_and_serves_its_endpoint(tiny, tiny_engine):
    from gradio_client import Client

    from exbert_hub.app import AnalysisStore, build_app

    model = str(tiny("bert"))
    demo = build_app(model, store=AnalysisStore(), tabs=(EchoTab, ExplorerTab))
    launch_on_free_port(demo)
    try:
        client = Client(demo.local_url, verbose=False)
        assert client.predict(TEXT, api_name="/echo_tokens") == tiny_engine("bert").analyze(TEXT).tokens
        with pytest.raises(Exception) as err:
            client.predict("", api_name="/echo_tokens")
        assert "text" in str(err.value) and "\n" not in str(err.value).strip()
    finally:
        demo.close()


def test_the_first_tab_gets_its_value_from_the_deep_link(tiny, tiny_engine):
    """on_load runs the link's analysis and hands it, with the link's view state, to the visible tab."""
    from exbert_hub.app import AnalysisStore, build_app

    model = str(tiny("bert"))
    demo = build_app(model, store=AnalysisStore(), tabs=(EchoTab, ExplorerTab))
    on_load = next(fn for fn in demo.fns.values() if fn.name == "on_load").fn

    class FakeRequest:
        query_params = {"text": TEXT, "layer": "1", "tab": "echo"}
        client = type("C", (), {"host": "127.0.0.1"})()
        headers: dict = {}

    out = on_load(FakeRequest())
    echo = next(c for c in demo.blocks.values() if getattr(c, "elem_id", None) == "xh-echo")
    assert out[echo]["tokens"] == tiny_engine("bert").analyze(TEXT).tokens
    assert out[echo]["layer"] == 1


def test_views_of_a_stack_link_clamp_to_that_stack(tiny_engine):
    """A link with stack=cross names a decoder token: the head, neuron and model tabs open that stack, and
    the token index is kept inside the decoder's tokens (not read as an encoder token)."""
    from exbert_hub.tabs.head import HeadTab
    from exbert_hub.tabs.model import ModelTab
    from exbert_hub.tabs.neuron import NeuronTab

    eng = tiny_engine("t5")
    a = eng.analyze("The cat sat on the mat and then it slept all day long.", target="Die Katze.")
    enc, dec = a.stack("encoder"), a.stack("cross")
    assert dec.q_len < enc.q_len  # the test needs a decoder shorter than the encoder
    inside, outside = dec.q_len - 1, dec.q_len + 1  # the second is an encoder token only
    for tab in (HeadTab(), NeuronTab(), ModelTab()):
        value = tab.value(None, None, a, eng, {"stack": "cross", "layer": 1, "token": inside})
        assert value["stack"] == "cross", tab.id
    nv = NeuronTab().value(None, None, a, eng, {"stack": "cross", "layer": 1, "heads": [1], "token": inside})
    assert (nv["stack"], nv["terms"]["layer"], nv["terms"]["head"], nv["terms"]["token"]) == ("cross", 1, 1, inside)
    far = NeuronTab().value(None, None, a, eng, {"stack": "cross", "token": outside})
    assert far["terms"]["token"] != outside
    bad = HeadTab().value(None, None, a, eng, {"stack": "nope"})
    assert bad["stack"] == "encoder" and "nope" in bad["stack_note"]
