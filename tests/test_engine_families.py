"""The engine against transformers itself, for every model family (tiny random models, seconds to run).

For each family the engine's analysis is compared with a separate plain eager forward pass of the same
weights (loaded here with the checkpoint's own class), and the captured queries and keys are checked by
recomputing every attention row in numpy.
"""

from __future__ import annotations

import contextlib
import re

import numpy as np
import pytest
import torch

import exbert_hub
from exbert_hub import InputError

import tiny_models
from tiny_models import FAMILIES, KINDS

TEXT = "The quick brown fox jumps over the lazy dog."
ENC_DEC = [f for f in FAMILIES if KINDS[f] == "encoder-decoder"]
MASKED = [f for f in FAMILIES if KINDS[f] == "masked-lm"]
CAUSAL = [f for f in FAMILIES if KINDS[f] == "causal-lm"]


# --- the reference: transformers' own eager forward pass -------------------------------------------------
class Reference:
    """The tiny model loaded independently of the engine, with its checkpoint's own class."""

    _cache: dict = {}

    def __init__(self, folder):
        import transformers as tf

        config = tf.AutoConfig.from_pretrained(folder)
        self.cls_name = config.architectures[0]
        self.model = getattr(tf, self.cls_name).from_pretrained(folder, attn_implementation="eager").eval()
        self.tok = tf.AutoTokenizer.from_pretrained(folder)
        self.config = self.model.config
        self.enc_dec = bool(getattr(self.config, "is_encoder_decoder", False))

    @classmethod
    def of(cls, folder) -> "Reference":
        key = str(folder)
        if key not in cls._cache:
            cls._cache[key] = cls(folder)
        return cls._cache[key]

    def decoder_ids(self, target: str) -> list[int]:
        """Teacher forcing, computed here: the start token then the target's ids shifted right by one."""
        labels = self.tok(target)["input_ids"]
        return [self.config.decoder_start_token_id] + labels[:-1]

    def forward(self, ids, token_type_ids=None, decoder_ids=None, values: dict | None = None):
        """A plain eager forward pass; ``values`` (if given) collects each stack's value vectors in layer order."""
        kwargs = {"input_ids": torch.tensor([list(ids)]), "attention_mask": torch.ones(1, len(ids), dtype=torch.long)}
        if token_type_ids is not None:
            kwargs["token_type_ids"] = torch.tensor([list(token_type_ids)])
        if self.enc_dec:
            kwargs["decoder_input_ids"] = torch.tensor([list(decoder_ids)])
        with torch.no_grad(), (self._value_hooks(values) if values is not None else contextlib.nullcontext()):
            return self.model(**kwargs, output_attentions=True, output_hidden_states=True, return_dict=True)

    def stacks(self, out) -> dict[str, tuple]:
        if self.enc_dec:
            return {"encoder": out.encoder_attentions, "decoder": out.decoder_attentions, "cross": out.cross_attentions}
        return {"self": out.attentions}

    def hidden(self, out) -> dict[str, tuple]:
        if self.enc_dec:
            return {"encoder": out.encoder_hidden_states, "decoder": out.decoder_hidden_states}
        return {"self": out.hidden_states}

    _VALUE = re.compile(r"(attention\.self\.value|attention\.value|attention\.v_lin|attn\.c_attn|self_attn\.v_proj|"
                        r"encoder_attn\.v_proj|SelfAttention\.v|EncDecAttention\.v)$")

    def _stack_name(self, module_name: str) -> str:
        if "encoder_attn" in module_name or "EncDecAttention" in module_name:
            return "cross"
        if not self.enc_dec:
            return "self"
        return "decoder" if "decoder" in module_name.split(".") else "encoder"

    @contextlib.contextmanager
    def _value_hooks(self, values: dict):
        handles = []
        for name, module in self.model.named_modules():
            if not self._VALUE.search(name):
                continue
            stack = self._stack_name(name)

            def hook(mod, args, output, stack=stack, gpt2=name.endswith("c_attn")):
                v = output  # [batch, tokens, features]
                if gpt2:  # GPT-2 projects query, key and value in one Conv1D: value is the last third
                    v = v[..., 2 * (v.shape[-1] // 3):]
                values.setdefault(stack, []).append(v.detach().clone())

            handles.append(module.register_forward_hook(hook))
        assert handles, f"no value projection found in {self.cls_name}"
        try:
            yield
        finally:
            for h in handles:
                h.remove()


@pytest.fixture(scope="module", params=FAMILIES)
def family(request):
    return request.param


@pytest.fixture(scope="module")
def case(family, tiny, tiny_engine):
    """(engine, analysis of TEXT, reference, reference output, value vectors per stack) for one family."""
    engine = tiny_engine(family)
    analysis = engine.analyze(TEXT)
    ref = Reference.of(tiny(family))
    enc = ref.tok(TEXT)
    decoder_ids = ref.decoder_ids(TEXT) if ref.enc_dec else None
    values: dict = {}
    out = ref.forward(enc["input_ids"], enc.get("token_type_ids"), decoder_ids, values=values)
    return engine, analysis, ref, out, values


def _stack_names(analysis) -> list[str]:
    return list(analysis.stacks)


def _softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=-1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=-1, keepdims=True)


# --- (f) kind, and the inputs the engine fed the model ----------------------------------------------------
def test_kind_detected(case, family):
    engine, a, ref, _, _ = case
    assert engine.kind == KINDS[family]
    assert a.kind == KINDS[family]
    assert engine.origin == "local"


def test_input_ids_are_the_tokenizers(case, family):
    engine, a, ref, _, _ = case
    enc = ref.tok(TEXT)
    assert a.ids.tolist() == enc["input_ids"]
    assert a.tokens == ref.tok.convert_ids_to_tokens(enc["input_ids"])
    assert len(a.display_tokens) == len(a.tokens) == a.offsets.shape[0] == len(a.special) == len(a.segments)
    for i, (s, e) in enumerate(a.offsets):
        if a.special[i]:
            assert a.display_tokens[i] == a.tokens[i] and (s, e) == (0, 0)
        elif e > s:
            assert a.display_tokens[i] == TEXT[s:e]
        else:  # a lone space token (byte-level BPE): shown as what it decodes to, never as "Ġ"
            assert a.display_tokens[i] == ref.tok.decode([int(a.ids[i])])
    assert not any("Ġ" in d for d in a.display_tokens)
    if ref.enc_dec:
        assert a.decoder_input.ids.tolist() == ref.decoder_ids(TEXT)
        assert len(a.decoder_tokens) == len(a.decoder_input.ids)
    else:
        assert a.decoder_tokens is None and a.decoder_attentions is None and a.cross_attentions is None


def test_stacks_of_each_kind(case, family):
    _, a, _, _, _ = case
    expected = ["encoder", "decoder", "cross"] if family in ENC_DEC else ["self"]
    assert _stack_names(a) == expected
    for name in expected:
        s = a.stack(name)
        assert s.num_layers == 2 and s.num_heads == 4
        assert s.has_query_key, f"{family}: queries/keys of the {name} attention were not captured"
    if family in ENC_DEC:
        T, Td = len(a.tokens), len(a.decoder_tokens)
        assert a.attentions.shape == (2, 4, T, T)
        assert a.decoder_attentions.shape == (2, 4, Td, Td)
        assert a.cross_attentions.shape == (2, 4, Td, T)


# --- (a) attentions equal transformers' eager attentions ------------------------------------------------
def test_attentions_equal_transformers_eager(case):
    _, a, ref, out, _ = case
    ref_stacks = ref.stacks(out)
    assert set(ref_stacks) == set(a.stacks)
    for name, weights in ref_stacks.items():
        expected = torch.cat(list(weights), dim=0).numpy()
        got = a.stack(name).attentions
        assert got.dtype == np.float32
        assert got.shape == expected.shape, name
        np.testing.assert_allclose(got, expected, atol=1e-6, rtol=0, err_msg=f"{name} attentions")
        np.testing.assert_allclose(got.sum(-1), 1.0, atol=1e-5)


# --- (b) every head of every stack recomputed from the captured queries and keys --------------------------
def test_scores_recomputed_from_query_key(case, family):
    _, a, _, _, _ = case
    checked = 0
    for name, stack in a.stacks.items():
        for layer in range(stack.num_layers):
            mask = stack.masks[layer]
            bias = stack.biases[layer]
            for head in range(stack.num_heads):
                q, k = a.query_key(layer, head, stack=name)
                assert q.dtype == np.float32 and k.dtype == np.float32
                assert q.ndim == 2 and k.ndim == 2 and q.shape[1] == k.shape[1]
                logits = (q.astype(np.float64) @ k.astype(np.float64).T) * stack.scales[layer]
                if bias is not None:
                    logits = logits + bias[head]
                if mask is not None:
                    logits = logits + mask
                np.testing.assert_allclose(
                    _softmax(logits), stack.attentions[layer, head], atol=1e-4, rtol=0,
                    err_msg=f"{family} {name} layer {layer} head {head}",
                )
                checked += 1
    assert checked == sum(s.num_layers * s.num_heads for s in a.stacks.values())


def _causal(stack_name: str, family: str) -> bool:
    return stack_name == "decoder" or (stack_name == "self" and KINDS[family] == "causal-lm")


def test_masks_are_causal_exactly_where_expected(case, family):
    """The recorded additive masks: causal in decoders, nothing masked in encoders (no padding)."""
    _, a, _, _, _ = case
    for name, stack in a.stacks.items():
        for layer, mask in enumerate(stack.masks):
            q_len, k_len = stack.attentions.shape[2:]
            if _causal(name, family):
                assert mask is not None, f"{family} {name} layer {layer}: causal attention without a mask"
                future = np.triu(np.ones((q_len, k_len), dtype=bool), k=1)
                assert np.all(mask[future] <= -1e4)
                assert np.all(mask[~future] == 0)
                assert np.all(stack.attentions[layer][:, future] == 0)
            else:
                assert mask is None or np.all(mask == 0), f"{family} {name} layer {layer}: unexpected masking"


def test_t5_relative_position_bias_is_the_models(tiny, tiny_engine):
    """T5's bias is recorded per head and equals the bias its relative-attention embedding gives."""
    a = tiny_engine("t5").analyze(TEXT)
    ref = Reference.of(tiny("t5"))
    T, Td = len(a.tokens), len(a.decoder_tokens)
    with torch.no_grad():
        enc_bias = ref.model.encoder.block[0].layer[0].SelfAttention.compute_bias(T, T)[0].numpy()
        dec_bias = ref.model.decoder.block[0].layer[0].SelfAttention.compute_bias(Td, Td)[0].numpy()
    assert np.abs(enc_bias).max() > 0.5  # the bias is large enough to matter in this test
    for layer in range(2):  # T5 computes the bias in layer 0 and reuses it in every later layer
        np.testing.assert_allclose(a.stack("encoder").biases[layer], enc_bias, atol=1e-6)
        np.testing.assert_allclose(a.stack("decoder").biases[layer], dec_bias, atol=1e-6)
        cross = a.stack("cross").biases[layer]
        assert cross is None or np.all(cross == 0)
    assert a.stack("encoder").scales == [1.0, 1.0]  # T5 does not scale q.k
    terms = a.score_terms(1, 2, 3, stack="encoder")
    np.testing.assert_allclose(terms["bias"], enc_bias[2, 3], atol=1e-6)


# --- (c) score_terms ------------------------------------------------------------------------------------
def test_score_terms_softmax_is_the_attention_row(case, family):
    _, a, _, _, _ = case
    for name, stack in a.stacks.items():
        q_len = stack.attentions.shape[2]
        for layer in range(stack.num_layers):
            for head in range(stack.num_heads):
                for token in range(q_len):
                    t = a.score_terms(layer, head, token, stack=name)
                    np.testing.assert_allclose(t["softmax"], stack.attentions[layer, head, token], atol=1e-5,
                                               err_msg=f"{family} {name} {layer}/{head}/{token}")
    # the terms add up as documented
    name = "decoder" if family in ENC_DEC else "self"
    t = a.score_terms(1, 3, 4, stack=name)
    q, k = a.query_key(1, 3, stack=name)
    np.testing.assert_array_equal(t["query"], q[4])
    np.testing.assert_array_equal(t["keys"], k)
    np.testing.assert_allclose(t["products"], k * q[4][None, :], rtol=1e-6)
    np.testing.assert_allclose(t["dot"], t["products"].sum(axis=1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(t["scaled"], t["dot"] * t["scale"], rtol=1e-6)
    expected = t["scaled"] + (0 if t["bias"] is None else t["bias"]) + (0 if t["mask"] is None else t["mask"])
    np.testing.assert_allclose(t["logits"], expected, rtol=1e-6)
    if _causal(name, family):
        assert t["mask"] is not None and np.all(t["mask"][5:] <= -1e4)
    with pytest.raises(InputError):
        a.score_terms(1, 3, 10_000, stack=name)


def test_query_key_argument_errors(case):
    _, a, _, _, _ = case
    with pytest.raises(InputError, match="layer"):
        a.query_key(2, 0)
    with pytest.raises(InputError, match="head"):
        a.query_key(0, 4)
    with pytest.raises(InputError, match="no 'nope' attention"):
        a.query_key(0, 0, stack="nope")


# --- (d) contexts are attention @ values -----------------------------------------------------------------
def test_contexts_are_attention_times_values(case, family):
    _, a, ref, _, values = case
    for name, stack in a.stacks.items():
        L, H, q_len, k_len = stack.attentions.shape
        ctx = stack.contexts
        assert ctx is not None and ctx.dtype == np.float32
        head_dim = ctx.shape[2] // H
        assert ctx.shape == (L, q_len, H * head_dim)
        assert len(values[name]) == L, f"{family} {name}: {len(values[name])} value projections seen"
        for layer in range(L):
            v = values[name][layer][0].numpy()  # [k, kv_heads * head_dim]
            kv_heads = v.shape[1] // head_dim
            v = v.reshape(k_len, kv_heads, head_dim)
            group = H // kv_heads
            expected = np.concatenate(
                [stack.attentions[layer, h] @ v[:, h // group] for h in range(H)], axis=1
            )
            np.testing.assert_allclose(ctx[layer], expected, atol=1e-5, err_msg=f"{family} {name} layer {layer}")
        assert np.abs(ctx).max() > 0


def test_llama_shares_key_value_heads(tiny_engine):
    a = tiny_engine("llama").analyze(TEXT)
    stack = a.stack()
    assert [q.shape[0] for q in stack.queries] == [4, 4]
    assert [k.shape[0] for k in stack.keys] == [2, 2]
    _, k0 = a.query_key(0, 0)
    _, k1 = a.query_key(0, 1)
    _, k2 = a.query_key(0, 2)
    np.testing.assert_array_equal(k0, k1)  # query heads 0 and 1 read key head 0
    assert not np.allclose(k0, k2)


# --- queries and keys against the projections, computed independently -----------------------------------
def _projection_outputs(model, names: list[str], run):
    got = {}
    handles = [dict(model.named_modules())[n].register_forward_hook(
        lambda mod, args, out, n=n: got.__setitem__(n, out[0].detach().clone())) for n in names]
    try:
        run()
    finally:
        for h in handles:
            h.remove()
    return got


def test_bert_query_key_are_the_projections(tiny, tiny_engine):
    a = tiny_engine("bert").analyze(TEXT)
    ref = Reference.of(tiny("bert"))
    names = [f"bert.encoder.layer.{i}.attention.self.{p}" for i in range(2) for p in ("query", "key")]
    proj = _projection_outputs(ref.model, names, lambda: ref.forward(a.ids.tolist(), [0] * len(a.ids)))
    for layer in range(2):
        for head in range(4):
            q, k = a.query_key(layer, head)
            sl = slice(8 * head, 8 * head + 8)
            np.testing.assert_allclose(q, proj[f"bert.encoder.layer.{layer}.attention.self.query"][:, sl], atol=1e-6)
            np.testing.assert_allclose(k, proj[f"bert.encoder.layer.{layer}.attention.self.key"][:, sl], atol=1e-6)
        assert a.stack().scales[layer] == pytest.approx(8 ** -0.5)


def _rope(x: np.ndarray, theta: float) -> np.ndarray:
    """Rotary position embedding (rotate-half convention) of x[heads, T, d], written out in numpy."""
    _, T, d = x.shape
    inv_freq = 1.0 / theta ** (np.arange(0, d, 2, dtype=np.float64) / d)
    angles = np.arange(T, dtype=np.float64)[:, None] * inv_freq[None, :]
    cos, sin = np.cos(np.concatenate([angles, angles], -1)), np.sin(np.concatenate([angles, angles], -1))
    rotated = np.concatenate([-x[..., d // 2:], x[..., : d // 2]], axis=-1)
    return x * cos + rotated * sin


def test_llama_query_key_are_after_rotary(tiny, tiny_engine):
    a = tiny_engine("llama").analyze(TEXT)
    ref = Reference.of(tiny("llama"))
    names = [f"model.layers.{i}.self_attn.{p}" for i in range(2) for p in ("q_proj", "k_proj")]
    proj = _projection_outputs(ref.model, names, lambda: ref.forward(a.ids.tolist()))
    theta = ref.config.rope_parameters["rope_theta"]
    T = len(a.tokens)
    for layer in range(2):
        q_raw = proj[f"model.layers.{layer}.self_attn.q_proj"].numpy().reshape(T, 4, 8).transpose(1, 0, 2)
        k_raw = proj[f"model.layers.{layer}.self_attn.k_proj"].numpy().reshape(T, 2, 8).transpose(1, 0, 2)
        q_rot, k_rot = _rope(q_raw.astype(np.float64), theta), _rope(k_raw.astype(np.float64), theta)
        for head in range(4):
            q, k = a.query_key(layer, head)
            np.testing.assert_allclose(q, q_rot[head], atol=1e-5)
            np.testing.assert_allclose(k, k_rot[head // 2], atol=1e-5)
            assert not np.allclose(q, q_raw[head], atol=1e-3)  # rotary really was applied (positions > 0)


# --- (e) hidden states ----------------------------------------------------------------------------------
def test_hidden_states_equal_transformers(case):
    _, a, ref, out, _ = case
    hidden = ref.hidden(out)
    np.testing.assert_allclose(a.hidden_states, torch.cat(list(hidden["encoder" if ref.enc_dec else "self"])).numpy(),
                               atol=1e-6)
    assert a.hidden_states.shape == (3, len(a.tokens), 32)
    if ref.enc_dec:
        np.testing.assert_allclose(a.decoder_hidden_states, torch.cat(list(hidden["decoder"])).numpy(), atol=1e-6)
    else:
        assert a.decoder_hidden_states is None


# --- (g) predictions ------------------------------------------------------------------------------------
def test_predictions_are_the_lm_heads_argmax(case, family):
    _, a, ref, out, _ = case
    if KINDS[family] == "encoder":
        assert a.predictions is None
        assert "no token predictions" in a.prediction_note
        return
    logits = out.logits[0]
    n = len(a.decoder_tokens) if ref.enc_dec else len(a.tokens)
    assert logits.shape[0] == n and len(a.predictions) == n
    probs = torch.softmax(logits, -1)
    for i in range(n):
        row = a.predictions[i]
        assert len(row) == 5
        ps = [p for _, p in row]
        assert ps == sorted(ps, reverse=True)
        top = int(torch.argmax(logits[i]))
        assert row[0][0] == ref.tok.decode([top])
        assert row[0][1] == pytest.approx(float(probs[i, top]), abs=1e-6)
    assert a.prediction_note
    if KINDS[family] == "causal-lm":
        assert "follows" in a.prediction_note


def test_top_k(tiny_engine):
    a = tiny_engine("gpt2").analyze(TEXT, top_k=3)
    assert all(len(row) == 3 for row in a.predictions)
    for bad in (0, 101):
        with pytest.raises(InputError, match="top_k"):
            tiny_engine("gpt2").analyze(TEXT, top_k=bad)


@pytest.mark.parametrize("fam", ENC_DEC)
def test_encoder_decoder_target(fam, tiny, tiny_engine):
    """An explicit decoder target: teacher forcing on it, cross attention from its tokens to the input's."""
    target = "A fox jumped."
    a = tiny_engine(fam).analyze(TEXT, target=target)
    ref = Reference.of(tiny(fam))
    dec = ref.decoder_ids(target)
    assert a.target == target
    assert a.decoder_input.ids.tolist() == dec
    assert a.decoder_input.special[0]  # the start token
    out = ref.forward(ref.tok(TEXT)["input_ids"], decoder_ids=dec)
    np.testing.assert_allclose(a.cross_attentions, torch.cat(list(out.cross_attentions)).numpy(), atol=1e-6)
    assert a.cross_attentions.shape[2:] == (len(dec), len(a.tokens))
    top = torch.argmax(out.logits[0], -1).tolist()
    assert [row[0][0] for row in a.predictions] == [ref.tok.decode([t]) for t in top]


def test_target_only_for_encoder_decoders(tiny_engine):
    with pytest.raises(InputError, match="decoder target"):
        tiny_engine("bert").analyze(TEXT, target="x")


# --- (h) masking ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("fam", MASKED)
def test_mask_replaces_token_and_changes_predictions(fam, tiny, tiny_engine):
    engine = tiny_engine(fam)
    plain = engine.analyze(TEXT)
    i = 3
    assert not plain.special[i]
    a = engine.analyze(TEXT, mask=[i])
    mask_id = engine.tokenizer.mask_token_id
    assert a.masked == [i]
    assert a.ids[i] == mask_id
    assert a.tokens[i] == engine.tokenizer.mask_token
    assert a.original_tokens[i] == plain.tokens[i]
    np.testing.assert_array_equal(np.delete(a.ids, i), np.delete(plain.ids, i))
    assert a.predictions[i] != plain.predictions[i]
    assert plain.ids[i] != mask_id  # analyzing with a mask did not change the earlier analysis
    # the prediction at the mask is the model's own on the masked ids
    ref = Reference.of(tiny(fam))
    enc = ref.tok(TEXT)
    out = ref.forward(a.ids.tolist(), enc.get("token_type_ids"))
    assert a.predictions[i][0][0] == ref.tok.decode([int(torch.argmax(out.logits[0, i]))])
    np.testing.assert_allclose(a.attentions, torch.cat(list(out.attentions)).numpy(), atol=1e-6)


def test_mask_several_positions(tiny_engine):
    a = tiny_engine("bert").analyze(TEXT, mask=[4, 2, 4])
    assert a.masked == [2, 4]
    assert [a.tokens[i] for i in (2, 4)] == ["[MASK]", "[MASK]"]


@pytest.mark.parametrize("fam", [f for f in FAMILIES if KINDS[f] != "masked-lm"])
def test_masking_a_model_without_mlm_head_is_refused(fam, tiny_engine):
    with pytest.raises(InputError, match="mask"):
        tiny_engine(fam).analyze(TEXT, mask=[1])


def test_mask_position_errors(tiny_engine):
    engine = tiny_engine("bert")
    with pytest.raises(InputError, match="special"):
        engine.analyze(TEXT, mask=[0])  # [CLS]
    with pytest.raises(InputError, match="cannot mask token 99"):
        engine.analyze(TEXT, mask=[99])
    with pytest.raises(InputError, match="cannot mask token -1"):
        engine.analyze(TEXT, mask=[-1])


# --- (i) sentence pairs ---------------------------------------------------------------------------------
def test_bert_pair_segments_and_token_types(tiny, tiny_engine):
    first, second = "The cat sat on the mat.", "It was very happy."
    engine = tiny_engine("bert")
    a = engine.analyze(first, pair=second)
    ref = Reference.of(tiny("bert"))
    enc = ref.tok(first, second)
    assert a.ids.tolist() == enc["input_ids"]
    assert a.segments.tolist() == enc["token_type_ids"]
    n_first = len(ref.tok(first)["input_ids"])  # [CLS] first [SEP]
    assert a.pair_start == n_first
    assert a.tokens[a.pair_start - 1] == "[SEP]" and a.tokens[-1] == "[SEP]"
    assert a.display_tokens[a.pair_start:a.pair_start + 3] == ["It", "was", "very"]  # the text, not the lowercased token
    s, e = a.offsets[a.pair_start + 2]
    assert second[s:e] == "very"
    assert a.pair == second
    # the engine passed the segments as token types: its attention is the model's with them ...
    with_types = torch.cat(list(ref.forward(enc["input_ids"], enc["token_type_ids"]).attentions)).numpy()
    without = torch.cat(list(ref.forward(enc["input_ids"], [0] * len(enc["input_ids"])).attentions)).numpy()
    np.testing.assert_allclose(a.attentions, with_types, atol=1e-6)
    # ... and token types matter, so the comparison above can fail
    assert np.abs(with_types - without).max() > 1e-4
    assert engine.analyze(first).pair_start is None


@pytest.mark.parametrize("fam", ["roberta", "distilbert", "electra-discriminator"])
def test_pairs_on_other_encoders(fam, tiny_engine):
    first, second = "The cat sat.", "It was happy."
    a = tiny_engine(fam).analyze(first, pair=second)
    assert a.pair_start is not None
    assert set(a.segments[a.pair_start:].tolist()) == {1}
    assert set(a.segments[:a.pair_start].tolist()) == {0}
    assert "happy" in "".join(a.display_tokens[a.pair_start:])
    assert a.attentions.shape[-1] == len(a.tokens)


@pytest.mark.parametrize("fam", CAUSAL + ENC_DEC)
def test_pair_on_non_encoder_is_refused(fam, tiny_engine):
    with pytest.raises(InputError, match="pair"):
        tiny_engine(fam).analyze("The cat sat.", pair="It was happy.")


def test_repr_and_sizes(tiny_engine):
    engine = tiny_engine("llama")
    assert engine.num_layers == 2 and engine.num_heads == 4
    assert "llama" in repr(engine) or "causal-lm" in repr(engine)
    assert isinstance(engine, exbert_hub.Engine)
    assert tiny_models.KINDS["llama"] == engine.kind


# --- kind detection from configs alone (no weights) ------------------------------------------------------
@pytest.mark.parametrize("model_type,architectures,kind", [
    ("bert", ["BertForMaskedLM"], "masked-lm"),
    ("bert", ["BertForPreTraining"], "masked-lm"),  # bert-base-* checkpoints with both pre-training heads
    ("bert", ["BertModel"], "encoder"),  # e.g. sentence-transformers: no LM head in the weights
    ("bert", ["BertForSequenceClassification"], "sequence-classification"),  # a kind of its own (issue 11)
    ("electra", ["ElectraForPreTraining"], "encoder"),  # the discriminator predicts replaced tokens, not words
    ("electra", ["ElectraForMaskedLM"], "masked-lm"),
    ("gpt2", ["GPT2LMHeadModel"], "causal-lm"),
    ("llama", ["LlamaForCausalLM"], "causal-lm"),
    ("gpt2", None, "causal-lm"),  # no architectures: from the model type
    ("roberta", None, "masked-lm"),
    ("t5", ["T5ForConditionalGeneration"], "encoder-decoder"),
    ("bart", None, "encoder-decoder"),
])
def test_detect_kind_from_config(model_type, architectures, kind):
    from transformers import AutoConfig

    from exbert_hub.engine import detect_kind

    config = AutoConfig.for_model(model_type)
    config.architectures = architectures
    assert detect_kind(config) == kind
