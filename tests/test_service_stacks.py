"""Encoder-decoders' three attention stacks (encoder, decoder, cross) through the service, the explorer's
payload and lazy fetches, and the HTTP API: numbers against transformers' own ``output_attentions``."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from serving import served_app
from tolerances import f32_close

from exbert_hub.errors import InputError
from exbert_hub.service import Request, attention_matrix, link_stack, stack_of, summarize
from exbert_hub.tabs.explorer import fetch_layer
from exbert_hub.views import rows
from exbert_hub.views.explorer import explorer_payload, layer_payload, rows_payload
from exbert_hub.views.transport import decode_attention, max_abs_error

TEXT = "The cat sat on the mat."
TARGET = "Le chat est assis sur le tapis."
FAMILIES = ("t5", "bart")


def model_attentions(eng, a):
    """transformers' own attentions (eager, output_attentions=True) for the analysis's encoder and decoder ids."""
    with torch.inference_mode():
        out = eng.model(input_ids=torch.as_tensor(a.ids)[None], attention_mask=torch.ones(1, len(a.ids), dtype=torch.long),
                        decoder_input_ids=torch.as_tensor(a.decoder_input.ids)[None], output_attentions=True)
    return {"encoder": [x[0].numpy() for x in out.encoder_attentions],
            "decoder": [x[0].numpy() for x in out.decoder_attentions],
            "cross": [x[0].numpy() for x in out.cross_attentions]}


@pytest.fixture(scope="module", params=FAMILIES)
def encdec(request, tiny_engine):
    eng = tiny_engine(request.param)
    a = eng.analyze(TEXT, target=TARGET)
    return SimpleNamespace(eng=eng, a=a, ref=model_attentions(eng, a), family=request.param)


def test_attention_matrix_of_each_stack_is_the_models(encdec):
    a, ref = encdec.a, encdec.ref
    t_enc, t_dec = len(a.tokens), len(a.decoder_tokens)
    assert t_enc != t_dec  # so that a transposed or wrong-stack matrix cannot pass
    shapes = {"encoder": (t_enc, t_enc), "decoder": (t_dec, t_dec), "cross": (t_dec, t_enc)}
    for stack, shape in shapes.items():
        for layer in range(len(ref[stack])):
            for head in range(ref[stack][layer].shape[0]):
                got = attention_matrix(a, layer, head, stack)
                assert got.shape == shape
                f32_close(got, ref[stack][layer][head], reduction=got.shape[1] + 8, err_msg=f"{stack} {layer} {head}")
            f32_close(attention_matrix(a, layer, -1, stack), ref[stack][layer].mean(axis=0), reduction=shape[1] + 8)
    # the decoder is causal: nothing above the diagonal
    dec = attention_matrix(a, 1, 0, "decoder")
    assert np.all(np.triu(dec, 1) == 0) and np.all(dec[np.tril_indices(len(dec))] > 0)
    # None: the main (encoder) stack, as before
    np.testing.assert_array_equal(attention_matrix(a, 0, 1), attention_matrix(a, 0, 1, "encoder"))


def test_bad_stack_is_one_clear_line(encdec):
    a = encdec.a
    for bad in ("self", "Cross attention", "x" * 500, 3):
        with pytest.raises(InputError) as err:
            attention_matrix(a, 0, 0, bad)
        msg = str(err.value)
        assert "encoder, decoder, cross" in msg and "\n" not in msg and len(msg) < 120
    for fn in (lambda s: summarize(encdec.eng, a, s), lambda s: explorer_payload(a, stack=s),
               lambda s: layer_payload(a, 0, s), lambda s: rows_payload(a, 0, 0, stack=s)):
        with pytest.raises(InputError, match="choose one of: encoder, decoder, cross"):
            fn("nope")
    assert stack_of(a, None) == "encoder" and stack_of(a, " Cross ") == "cross" and stack_of(a, "") == "encoder"
    with pytest.raises(InputError, match="layer 2 is out of range"):
        attention_matrix(a, 2, 0, "cross")


def test_single_stack_models_have_only_self(tiny_engine):
    a = tiny_engine("bert").analyze(TEXT)
    assert stack_of(a, None) == "self"
    with pytest.raises(InputError, match="choose one of: self"):
        attention_matrix(a, 0, 0, "cross")


def test_summarize_names_query_and_key_tokens(encdec):
    eng, a = encdec.eng, encdec.a
    out = summarize(eng, a, "cross")
    json.dumps(out)
    assert out["stack"] == "cross" and out["stacks"] == ["encoder", "decoder", "cross"]
    assert out["query_tokens"] == a.decoder_tokens and out["key_tokens"] == a.tokens
    assert out["layers"] == a.stacks["cross"].num_layers and out["heads"] == a.stacks["cross"].num_heads
    dec = summarize(eng, a, "decoder")
    assert dec["query_tokens"] == dec["key_tokens"] == a.decoder_tokens
    enc = summarize(eng, a)
    assert enc["stack"] == "encoder" and enc["query_tokens"] == enc["key_tokens"] == a.tokens
    # predictions are the decoder's, one per decoder token
    assert len(out["predictions"]) == len(a.decoder_tokens)


def test_request_target_reaches_the_engine(encdec):
    from exbert_hub.service import AnalysisStore

    eng = encdec.eng
    plain, with_target = Request("m", TEXT), Request("m", TEXT, target=TARGET)
    assert plain.key == Request("m", TEXT, None, (), False).key  # keys without a target did not change
    assert plain.key != with_target.key
    store = AnalysisStore()
    _, a = store.run(with_target, eng)
    assert a.target == TARGET and a.decoder_tokens == encdec.a.decoder_tokens
    _, b = store.run(plain, eng)
    assert b.target == TEXT  # no target: the decoder reads the text itself
    _, c = store.run(Request("m", TEXT, pair=TARGET), eng)  # the second text of an encoder-decoder
    assert c.target == TARGET and c.pair is None and c.tokens == encdec.a.tokens


def test_explorer_payload_per_stack(encdec):
    a, ref = encdec.a, encdec.ref
    t_enc, t_dec = len(a.tokens), len(a.decoder_tokens)
    p = explorer_payload(a, key="k", stack="cross", layer=1, token=3)
    json.dumps(p)
    assert p["stack"] == "cross" and p["main_stack"] == "encoder" and p["num_layers"] == len(ref["cross"])
    info = {s["name"]: s for s in p["stacks"]}
    assert (info["cross"]["query_seq"], info["cross"]["key_seq"]) == ("decoder", "input")
    assert info["decoder"]["causal"] and not info["cross"]["causal"] and not info["encoder"]["causal"]
    assert not info["cross"]["rollout"] and info["encoder"]["rollout"] and info["decoder"]["rollout"]
    assert p["sequences"]["decoder"]["tokens"] == a.decoder_input.display
    assert p["tokens"] == a.display_tokens and set(p["sequences"]) == {"decoder"}
    assert p["prediction_seq"] == "decoder" and len(p["predictions"]) == t_dec
    assert p["initial"]["token"] == 3 and p["initial"]["layer"] == 1
    # the cross layers as sent: decoder rows x encoder columns, the model's weights to the uint8 bound
    for layer in range(len(ref["cross"])):
        got = decode_attention(p["attention"][str(layer)])
        assert got.shape == (ref["cross"][layer].shape[0], t_dec, t_enc)
        assert np.all(np.abs(got - ref["cross"][layer]) <= max_abs_error(ref["cross"][layer], 1.0) + 1e-6)
    # small analyses: the other stacks are in the page too (switching needs no server)
    assert set(p["stack_attention"]) == {"encoder", "decoder"}
    dec0 = decode_attention(p["stack_attention"]["decoder"]["0"])
    assert np.all(np.abs(dec0 - ref["decoder"][0]) <= max_abs_error(ref["decoder"][0], 1.0) + 1e-6)
    # a token past the end of the decoder is dropped, not drawn
    assert explorer_payload(a, stack="cross", token=t_dec)["initial"]["token"] is None
    # big analyses: only the shown layer, fetched per stack
    lazy = explorer_payload(a, key="k", stack="decoder", layer=1, all_layers=False)
    assert set(lazy["attention"]) == {"1"} and lazy["stack_attention"] == {}
    assert explorer_payload(a)["stack"] == "encoder"


def test_lazy_fetch_by_stack_and_long_row_blocks(encdec, monkeypatch):
    from exbert_hub.service import AnalysisStore

    store = AnalysisStore()
    key, a = store.run(Request(str(encdec.eng.name), TEXT, target=TARGET), encdec.eng)
    ref = model_attentions(encdec.eng, a)
    res = fetch_layer(store, {"key": key, "layer": 1, "stack": "cross"})
    assert res["stack"] == "cross"
    got = decode_attention(res["attention"])
    assert np.all(np.abs(got - ref["cross"][1]) <= max_abs_error(ref["cross"][1], 1.0) + 1e-6)
    assert fetch_layer(store, {"key": key, "layer": 0})["stack"] == "encoder"
    bad = fetch_layer(store, {"key": key, "layer": 0, "stack": "sideways"})
    assert "choose one of" in bad["error"] and "Traceback" not in bad["error"]
    # long inputs: every stack is shown by row blocks; the weights kept are the model's own
    monkeypatch.setattr(rows, "LONG_LAYER_BYTES", 10)
    p = explorer_payload(a, key=key, stack="cross")
    assert p["long"] and p["attention"] == {} and all(s["long"] for s in p["stacks"])
    for stack in ("encoder", "decoder", "cross"):
        blk = fetch_layer(store, {"key": key, "layer": 1, "block": 0, "stack": stack})["rows"]
        assert blk["stack"] == stack
        q_len, k_len = ref[stack][1].shape[1:]
        assert (blk["r0"], blk["r1"], blk["keys"]) == (0, q_len, k_len)
        decoded = rows.decode_block(blk)
        for h in range(blk["heads"]):
            for i in range(q_len):
                idx, val = decoded[h][i]
                want = ref[stack][1][h, i]
                keep = np.flatnonzero(want >= rows.MIN_WEIGHT * (1 + 1e-5))
                assert set(keep) <= set(idx.tolist())
                f32_close(val, want[idx], reduction=k_len + 8)
        if stack == "decoder":  # causal: no key after the query
            assert all(np.all(decoded[h][i][0] <= i) for h in range(blk["heads"]) for i in range(q_len))
        row = fetch_layer(store, {"key": key, "layer": 0, "row": 2, "stack": stack})["rows"]
        full = np.frombuffer(__import__("base64").b64decode(row["b64"]), dtype="<f4").reshape(row["shape"])
        f32_close(full, ref[stack][0][:, 2], reduction=full.shape[1] + 8)


def test_link_stack_is_lenient(encdec):
    a = encdec.a
    assert link_stack(a, {"query": {"stack": "cross"}}) == ("cross", None)
    assert link_stack(a, {"stack": "decoder", "query": {"stack": "cross"}}) == ("decoder", None)
    stack, note = link_stack(a, {"query": {"stack": "<b>zz</b>" * 10}})
    assert stack == "encoder" and "encoder, decoder, cross" in note and "\n" not in note and len(note) < 160


# --------------------------------------------------------------------------------------------------
# HTTP API (gradio_client) on an app whose model is the tiny T5
# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def t5_api(tiny, tiny_engine):
    with served_app(str(tiny("t5"))) as (_, client):
        yield SimpleNamespace(client=client, engine=tiny_engine("t5"))


def test_api_stack_and_decoder_text(t5_api):
    """/attention takes `stack`; for encoder-decoders `pair` is the decoder's text (the app's second box)."""
    eng, c = t5_api.engine, t5_api.client
    a = eng.analyze(TEXT, target=TARGET)
    ref = model_attentions(eng, a)
    got = np.asarray(c.predict(text=TEXT, layer=1, head=2, stack="cross", pair=TARGET, api_name="/attention"))
    assert got.shape == (len(a.decoder_tokens), len(a.tokens))
    f32_close(got, ref["cross"][1][2], reduction=got.shape[1] + 8)
    got = np.asarray(c.predict(text=TEXT, layer=0, head=-1, stack="decoder", pair=TARGET, api_name="/attention"))
    f32_close(got, ref["decoder"][0].mean(axis=0), reduction=got.shape[1] + 8)
    plain = eng.analyze(TEXT)  # no decoder text: the decoder reads the text itself
    got = np.asarray(c.predict(text=TEXT, layer=0, head=1, stack="cross", api_name="/attention"))
    f32_close(got, plain.cross_attentions[0, 1], reduction=got.shape[1] + 8)
    res = c.predict(text=TEXT, pair=TARGET, api_name="/analyze")
    assert res["stacks"] == ["encoder", "decoder", "cross"] and res["decoder_tokens"] == a.decoder_tokens
    assert res["tokens"] == a.tokens and len(res["predictions"]) == len(a.decoder_tokens)
    with pytest.raises(Exception, match="choose one of: encoder, decoder, cross") as err:
        c.predict(text=TEXT, layer=0, head=0, stack="diagonal", api_name="/attention")
    assert "Traceback" not in str(err.value)
    with pytest.raises(Exception, match="stack has 40 characters"):
        c.predict(text=TEXT, layer=0, head=0, stack="x" * 40, api_name="/attention")
