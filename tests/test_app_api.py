"""The app's HTTP API through gradio_client (app launched in-process on a free port), plus the pure-python
pieces of the app shell: transport quantisation and the explorer payload."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from serving import served_app

from exbert_hub.views.transport import decode_attention, encode_attention, encode_signed, max_abs_error

TEXT = "The cat sat on the mat because it was tired."
API_NAMES = {"/analyze", "/attention", "/mask", "/query_key", "/neuron", "/model_info"}


# --------------------------------------------------------------------------------------------------
# transport and payloads (no server)
# --------------------------------------------------------------------------------------------------
def test_transport_roundtrip_precision():
    rng = np.random.default_rng(0)
    att = rng.dirichlet(np.full(300, 0.3), size=(2, 3, 300)).astype(np.float32)
    p = encode_attention(att)
    assert p["shape"] == [2, 3, 300, 300] and p["encoding"] == "uint8" and p["transform"] == "sqrt"
    assert len(p["b64"]) == 4 * ((att.size + 2) // 3)  # one byte per weight, base64
    back = decode_attention(p)
    assert back.shape == att.shape and back.dtype == np.float32
    assert np.all(np.abs(back - att) <= max_abs_error(att, p["scale"]) + 1e-7)
    # small weights stay visible (linear uint8 would round 1e-3 to 0)
    tiny = np.full((1, 1000), 1e-3, dtype=np.float32)
    tiny[0, 0] = 1.0
    assert decode_attention(encode_attention(tiny))[0, 1] > 5e-4
    assert decode_attention(encode_attention(tiny, transform="linear"))[0, 1] == 0
    # all zeros, NaN and negatives are safe
    z = decode_attention(encode_attention(np.array([[0.0, np.nan, -1.0]])))
    assert np.all(z == 0)
    s = rng.normal(size=(4, 16)).astype(np.float32)
    assert np.abs(decode_attention(encode_signed(s)) - s).max() <= np.abs(s).max() / 254 + 1e-6


def test_explorer_payload_is_compact_and_json_safe(tiny_engine):
    import json

    from exbert_hub.views.explorer import explorer_payload

    eng = tiny_engine("bert")
    a = eng.analyze(TEXT)
    p = explorer_payload(a, key="k", layer=1, heads=[3, 0, 9], token=2, threshold=2.0)
    json.dumps(p)  # JSON-safe
    assert p["tokens"] == a.display_tokens and p["num_layers"] == 2 and p["num_heads"] == 4
    assert p["initial"] == {"layer": 1, "heads": [0, 3], "token": 2, "threshold": 1.0, "hide_special": False,
                            "weights": None}
    assert p["can_mask"] is True and p["causal"] is False and len(p["predictions"][2]) == 5
    # small: every layer sent, and the rollout as the layer after the last (exbert_hub.analyses.rollout)
    assert set(p["attention"]) == {"0", "1", "2"}
    np.testing.assert_allclose(decode_attention(p["attention"]["1"]), a.attentions[1], atol=0.01)
    from exbert_hub.analyses.rollout import attention_rollout

    rollout = attention_rollout(a)[-1]
    np.testing.assert_allclose(decode_attention(p["attention"]["2"])[0], rollout, atol=0.01)
    # big inputs send only the shown layer
    lazy = explorer_payload(a, layer=1, all_layers=False)
    assert set(lazy["attention"]) == {"1"} and lazy["all_layers"] is False


# --------------------------------------------------------------------------------------------------
# HTTP API
# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def api(tiny, tiny_engine):
    model = str(tiny("bert"))
    with served_app(model) as (demo, client):
        yield SimpleNamespace(client=client, model=model, engine=tiny_engine("bert"), demo=demo)


def test_api_names_are_documented(api):
    info = api.client.view_api(return_format="dict", print_info=False)
    named = set(info["named_endpoints"])
    assert API_NAMES <= named
    # UI-only handlers (EventData, page load) are not part of the API
    assert not any(n.startswith(("/on_", "/lambda")) for n in named), named
    params = {p["parameter_name"] for p in info["named_endpoints"]["/attention"]["parameters"]}
    assert {"text", "layer", "head", "model"} <= params
    # every public endpoint is in the README's table, so the documentation stays true
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    undocumented = {n for n in named if f"`{n}`" not in readme}
    assert not undocumented, undocumented


def test_analyze_matches_engine(api):
    res = api.client.predict(TEXT, api_name="/analyze")
    a = api.engine.analyze(TEXT)
    assert res["tokens"] == a.tokens and res["display_tokens"] == a.display_tokens
    assert res["kind"] == "masked-lm" and res["layers"] == 2 and res["heads"] == 4 and res["can_mask"] is True
    assert len(res["predictions"]) == len(a.tokens)
    for got, want in zip(res["predictions"], a.predictions):
        assert [g["token"] for g in got] == [w for w, _ in want]
        np.testing.assert_allclose([g["prob"] for g in got], [p for _, p in want], rtol=1e-5)
    # a sentence pair (encoders)
    res = api.client.predict(TEXT, "It slept.", api_name="/analyze")
    assert 1 in res["segments"] and res["tokens"][-1] == "[SEP]"


def test_attention_matches_engine(api):
    a = api.engine.analyze(TEXT)
    got = np.asarray(api.client.predict(TEXT, 1, 2, api_name="/attention"))
    np.testing.assert_allclose(got, a.attentions[1, 2], atol=1e-6)
    mean = np.asarray(api.client.predict(text=TEXT, layer=0, head=-1, api_name="/attention"))
    np.testing.assert_allclose(mean, a.attentions[0].mean(axis=0), atol=1e-6)


def test_mask_matches_engine(api):
    res = api.client.predict(TEXT, 2, api_name="/mask")
    a = api.engine.analyze(TEXT, mask=[2])
    assert res["tokens"][2] == "[MASK]" and res["masked"] == [2]
    assert [p["token"] for p in res["mask_predictions"]] == [w for w, _ in a.predictions[2]]
    with pytest.raises(Exception, match="special token"):
        api.client.predict(TEXT, 0, api_name="/mask")


def test_query_key_and_neuron_match_engine(api):
    a = api.engine.analyze(TEXT)
    qk = api.client.predict(TEXT, 1, 3, api_name="/query_key")
    q, k = a.query_key(1, 3)
    np.testing.assert_allclose(np.asarray(qk["queries"]), q, atol=1e-6)
    np.testing.assert_allclose(np.asarray(qk["keys"]), k, atol=1e-6)
    n = api.client.predict(TEXT, 1, 3, 2, api_name="/neuron")
    np.testing.assert_allclose(np.asarray(n["softmax"]), a.attentions[1, 3, 2], atol=1e-5)
    assert n["tokens"] == a.tokens and len(n["query"]) == q.shape[1]


def test_model_info_and_clear_errors(api):
    info = api.client.predict(api_name="/model_info")
    assert info["kind"] == "masked-lm" and info["layers"] == 2 and info["heads"] == 4
    with pytest.raises(Exception, match="layer 7 is out of range") as err:
        api.client.predict(TEXT, 7, 0, api_name="/attention")
    assert "Traceback" not in str(err.value)
    with pytest.raises(Exception, match="no-such-model-xyz"):
        api.client.predict(TEXT, None, "no-such-model-xyz", api_name="/analyze")
    with pytest.raises(Exception, match="[Ee]mpty|text"):
        api.client.predict("", api_name="/analyze")


def test_space_app_builds_the_app(monkeypatch):
    import runpy
    from pathlib import Path

    import gradio as gr

    from exbert_hub.resolve import MINILM

    monkeypatch.setenv("EXBERT_HUB_MODEL", MINILM)
    space = Path(__file__).resolve().parents[1] / "spaces" / "app.py"
    ns = runpy.run_path(str(space), run_name="space_app")  # not __main__: built, not launched
    assert isinstance(ns["demo"], gr.Blocks) and ns["MODEL"] == MINILM
    front = (space.parent / "README.md").read_text(encoding="utf-8").split("---")[1]
    assert "sdk: gradio" in front and "app_file: app.py" in front


def test_cli_parses_options():
    from exbert_hub.cli import parser

    args = parser().parse_args(["--model", "bert-base-uncased", "--port", "7999", "--host", "0.0.0.0", "--share"])
    assert (args.model, args.port, args.host, args.share) == ("bert-base-uncased", 7999, "0.0.0.0", True)
