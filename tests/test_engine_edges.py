"""The engine's edges: bad input, length limits and truncation, unknown names, remote code, weight formats, the cache."""

from __future__ import annotations

import builtins
import json
import shutil
import threading
import time

import numpy as np
import pytest

import exbert_hub
from exbert_hub import ExbertError, InputError, ModelCache, ModelNotFoundError, UnsupportedModelError
from exbert_hub import engine as engine_module

TEXT = "The quick brown fox jumps over the lazy dog."


# --- empty and oversized text ---------------------------------------------------------------------------
@pytest.mark.parametrize("text", ["", " ", "\n\t  \n"])
def test_empty_text_is_refused(text, tiny_engine):
    with pytest.raises(InputError, match="empty"):
        tiny_engine("bert").analyze(text)


def test_empty_pair_or_target_is_refused(tiny_engine):
    with pytest.raises(InputError, match="pair is empty"):
        tiny_engine("bert").analyze(TEXT, pair="  ")
    with pytest.raises(InputError, match="target is empty"):
        tiny_engine("t5").analyze(TEXT, target="")


@pytest.mark.parametrize("bad", [None, 3, b"bytes", ["a list"]])
def test_non_string_text_is_refused(bad, tiny_engine):
    with pytest.raises(InputError, match="must be a string"):
        tiny_engine("bert").analyze(bad)


def _text_of(n_words: int) -> str:
    return " ".join(["the"] * n_words)


def test_too_long_names_count_and_position_limit(tiny_engine):
    engine = tiny_engine("gpt2")  # 128 positions
    text = _text_of(200)
    n = len(engine.tokenizer(text)["input_ids"])
    assert n > 128
    assert engine.token_limit == 128
    with pytest.raises(InputError) as err:
        engine.analyze(text)
    msg = str(err.value)
    assert f"{n} tokens" in msg
    assert "at most 128" in msg and "128 positions" in msg
    assert "truncate=True" in msg


def test_too_long_names_the_engine_cap(tiny_engine):
    engine = tiny_engine("bert", max_tokens=16)
    text = _text_of(30)
    with pytest.raises(InputError) as err:
        engine.analyze(text)
    assert "32 tokens" in str(err.value)  # [CLS] + 30 + [SEP]
    assert "at most 16" in str(err.value) and "max_tokens=16" in str(err.value)


@pytest.mark.parametrize("family,positions", [
    ("roberta", 128),  # 130 position embeddings, the first two reserved (padding index 1)
    ("bart", 128),  # 128 + BART's built-in offset of 2
    ("gpt2", 128),
    ("llama", 256),
    ("bert", 512),
    ("distilbert", 512),
])
def test_exactly_the_position_limit_runs(family, positions, tiny_engine):
    """The longest text the limit allows runs (RoBERTa's positions start after its padding index)."""
    engine = tiny_engine(family)
    assert engine.token_limit == positions
    specials = len(engine.tokenizer("the")["input_ids"]) - 1
    text = _text_of(positions - specials)
    a = engine.analyze(text)
    assert len(a.tokens) == positions and not a.truncated
    assert a.attentions.shape[-1] == positions
    with pytest.raises(InputError, match=f"{positions + 1} tokens"):
        engine.analyze(text + " the")


def test_truncate_keeps_the_first_tokens(tiny_engine):
    engine = tiny_engine("bert", max_tokens=16)
    text = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen"
    full = engine.tokenizer(text)["input_ids"]
    a = engine.analyze(text, truncate=True)
    assert a.truncated and a.dropped_tokens == len(full) - 16
    assert len(a.tokens) == 16 and a.attentions.shape == (2, 4, 16, 16) and a.hidden_states.shape[1] == 16
    assert a.tokens[0] == "[CLS]" and a.tokens[-1] == "[SEP]"
    assert a.ids[:-1].tolist() == full[:15]
    assert a.display_tokens[1:4] == ["one", "two", "three"]
    assert len(a.predictions) == 16
    short = engine.analyze("one two three", truncate=True)
    assert not short.truncated and short.dropped_tokens == 0


def test_truncate_a_pair(tiny_engine):
    engine = tiny_engine("bert", max_tokens=16)
    first, second = _text_of(12), "a b c d e f g h i j"
    n = len(engine.tokenizer(first, second)["input_ids"])
    a = engine.analyze(first, pair=second, truncate=True)
    assert len(a.tokens) == 16 and a.dropped_tokens == n - 16
    assert a.pair_start is not None and a.segments[a.pair_start] == 1 and a.tokens[-1] == "[SEP]"


def test_truncate_on_a_causal_model(tiny_engine):
    engine = tiny_engine("gpt2")
    a = engine.analyze(_text_of(300), truncate=True)
    assert len(a.tokens) == 128 and a.dropped_tokens == 300 - 128 and a.truncated


def test_long_decoder_target(tiny_engine):
    engine = tiny_engine("t5", max_tokens=12)
    target = _text_of(20)
    n = len(engine.tokenizer(target)["input_ids"])
    with pytest.raises(InputError, match=f"target is {n} tokens"):
        engine.analyze("a short text", target=target)
    a = engine.analyze("a short text", target=target, truncate=True)
    assert len(a.decoder_tokens) == 12 and a.decoder_attentions.shape[-1] == 12
    assert a.cross_attentions.shape[2:] == (12, len(a.tokens))
    # the decoder reads the start token and the first 11 labels: n - 12 labels were cut, and it is reported
    assert a.truncated and a.decoder_dropped_tokens == n - 12 and a.dropped_tokens == 0


def test_max_chars(tiny_engine):
    engine = tiny_engine("bert", max_chars=50)
    assert engine.analyze("x" * 50).tokens  # exactly the limit is fine
    with pytest.raises(InputError) as err:
        engine.analyze("x" * 51)
    assert "51 characters" in str(err.value) and "limit is 50" in str(err.value)
    with pytest.raises(InputError, match="pair has 60 characters"):
        engine.analyze("short", pair="y" * 60)


def test_engines_with_different_limits_share_one_model(tiny, tiny_engine):
    cache = ModelCache()
    a = exbert_hub.load(str(tiny("bert")), cache=cache, max_tokens=16)
    b = exbert_hub.load(str(tiny("bert")), cache=cache, max_tokens=64)
    assert a.model is b.model and cache.loads == 1
    assert (a.token_limit, b.token_limit) == (16, 64)


# --- text that looks like markup ------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["bert", "gpt2", "roberta"])
def test_markup_like_text_keeps_its_characters(family, tiny_engine):
    text = "<img src=x onerror=alert(1)>"
    a = tiny_engine(family).analyze(text)
    shown = "".join(d for d, s in zip(a.display_tokens, a.special) if not s)
    assert shown.replace(" ", "") == text.replace(" ", "")  # nothing escaped, dropped or lowercased
    assert "<" in a.display_tokens and ">" in a.display_tokens
    for i, (s, e) in enumerate(a.offsets):
        if e > s:
            assert text[s:e] == a.display_tokens[i]


# --- names that resolve to nothing ----------------------------------------------------------------------
def test_unknown_model_name_says_what_was_tried():
    name = "no-such-org/no-such-model-xyz"
    with pytest.raises(ModelNotFoundError) as err:
        exbert_hub.load(name, cache=ModelCache())
    msg = str(err.value)
    assert name in msg
    assert "local folder" in msg and "Hub" in msg and "packaged" in msg
    assert "HF_HUB_OFFLINE" in msg  # says why the Hub was not asked
    assert isinstance(err.value, OSError)  # callers catching OSError (like from_pretrained's) still work


def test_folder_without_config(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        exbert_hub.load(str(tmp_path), cache=ModelCache())


@pytest.mark.parametrize("name", ["", "   ", None])
def test_no_name(name):
    with pytest.raises(ModelNotFoundError, match="no model name"):
        exbert_hub.load(name, cache=ModelCache())


def test_unknown_kind_is_refused(tiny):
    with pytest.raises(InputError, match="unknown model kind"):
        exbert_hub.load(str(tiny("bert")), kind="summarizer", cache=ModelCache())


def test_forced_kind(tiny):
    """A masked LM can be looked at as a plain encoder (no predictions)."""
    e = exbert_hub.load(str(tiny("bert")), kind="encoder", cache=ModelCache())
    a = e.analyze(TEXT)
    assert e.kind == "encoder" and a.predictions is None and not e.can_mask


# --- remote code stays off ------------------------------------------------------------------------------
MARKER_CODE = """
import pathlib
pathlib.Path(__file__).with_name("MARKER").write_text("the model's own code ran")
from transformers import PretrainedConfig, PreTrainedModel
class EvilConfig(PretrainedConfig):
    model_type = "exbert-evil"
class EvilModel(PreTrainedModel):
    config_class = EvilConfig
"""


@pytest.fixture
def said_yes(monkeypatch):
    """Answer "y" to any prompt: if transformers asked whether to run a model's code, it would run it."""
    asked = []

    def answer(prompt=""):
        asked.append(prompt)
        return "y"

    monkeypatch.setattr(builtins, "input", answer)
    return asked


def test_custom_code_folder_is_not_executed(tmp_path, said_yes):
    folder = tmp_path / "custom"
    folder.mkdir()
    (folder / "evil.py").write_text(MARKER_CODE)
    (folder / "config.json").write_text(json.dumps({
        "model_type": "exbert-evil",
        "architectures": ["EvilModel"],
        "auto_map": {"AutoConfig": "evil.EvilConfig", "AutoModel": "evil.EvilModel",
                     "AutoModelForMaskedLM": "evil.EvilModel"},
    }))
    with pytest.raises(UnsupportedModelError) as err:
        exbert_hub.load(str(folder), cache=ModelCache())
    assert "trust_remote_code=True" in str(err.value)
    assert not (folder / "MARKER").exists()
    assert said_yes == []  # never even asked


def test_known_architecture_with_custom_code_uses_the_builtin_class(tiny, tmp_path, said_yes):
    """A BERT folder whose auto_map points at its own code loads with transformers' BERT; the code never runs."""
    folder = tmp_path / "bert-custom"
    shutil.copytree(tiny("bert"), folder)
    (folder / "evil.py").write_text(MARKER_CODE)
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModel": "evil.EvilModel", "AutoModelForMaskedLM": "evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps(config))
    e = exbert_hub.load(str(folder), cache=ModelCache())
    assert type(e.model).__module__.startswith("transformers.models.bert")
    assert e.analyze(TEXT).attentions.shape[:2] == (2, 4)
    assert not (folder / "MARKER").exists()
    assert said_yes == []


# --- weight formats -------------------------------------------------------------------------------------
def test_safetensors_preferred_over_a_corrupt_pickle(tiny, tiny_engine, tmp_path):
    folder = tmp_path / "both-formats"
    shutil.copytree(tiny("bert"), folder)
    assert (folder / "model.safetensors").exists()
    (folder / "pytorch_model.bin").write_bytes(b"not a pickle at all \x00\x01" * 100)
    e = exbert_hub.load(str(folder), cache=ModelCache())
    np.testing.assert_array_equal(e.analyze(TEXT).attentions, tiny_engine("bert").analyze(TEXT).attentions)


# --- the model cache ------------------------------------------------------------------------------------
@pytest.fixture
def slow_loads(monkeypatch):
    """Count real loads and make each one slow, so that concurrent callers really overlap."""
    calls = []
    original = engine_module._load_model

    def slow(*args, **kwargs):
        calls.append(threading.get_ident())
        time.sleep(0.3)
        return original(*args, **kwargs)

    monkeypatch.setattr(engine_module, "_load_model", slow)
    return calls


def test_concurrent_loads_load_once(tiny, slow_loads):
    cache = ModelCache()
    folder = str(tiny("bert"))
    barrier = threading.Barrier(4)
    engines, errors = [], []

    def worker():
        try:
            barrier.wait()
            engines.append(exbert_hub.load(folder, cache=cache))
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert len(engines) == 4
    assert cache.loads == 1 and len(slow_loads) == 1 and len(cache) == 1
    assert all(e.model is engines[0].model for e in engines)


def test_concurrent_loads_of_different_models_are_correct(tiny):
    """from_pretrained swaps process-wide functions while it runs; loads in parallel threads must not mix them up."""
    import torch
    import transformers
    from safetensors.torch import load_file

    families = ["bert", "gpt2", "llama", "roberta", "t5", "bart"]
    folders = {f: str(tiny(f)) for f in families}
    before = (transformers.PreTrainedModel.tie_weights, transformers.PreTrainedModel.init_weights,
              torch.nn.init.normal_, torch.linspace, torch.get_default_dtype())
    cache = ModelCache(max_models=len(families))
    barrier = threading.Barrier(len(families))
    engines, errors = {}, []

    def worker(f):
        try:
            barrier.wait()
            engines[f] = exbert_hub.load(folders[f], cache=cache)
        except Exception as err:  # noqa: BLE001
            errors.append((f, err))

    threads = [threading.Thread(target=worker, args=(f,)) for f in families]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    after = (transformers.PreTrainedModel.tie_weights, transformers.PreTrainedModel.init_weights,
             torch.nn.init.normal_, torch.linspace, torch.get_default_dtype())
    assert after == before, "a load left transformers' temporary patches installed"
    for f in families + ["distilbert"]:  # distilbert: a model loaded after the parallel loads
        e = engines.get(f) or exbert_hub.load(str(tiny(f)), cache=ModelCache())
        saved = load_file(str(tiny(f) / "model.safetensors"))
        state = e.model.state_dict()
        for name, tensor in saved.items():
            assert state[name].device.type == "cpu", f"{f}: {name} is on {state[name].device}"
            assert torch.equal(state[name], tensor), f"{f}: {name} differs from the checkpoint"


def test_concurrent_analyses_of_one_model(tiny_engine):
    """Threads analysing with one shared model get their own, correct results."""
    engine = tiny_engine("bert")
    texts = [f"sentence number {i} is here" for i in range(6)]
    expected = {t: engine.analyze(t).attentions for t in texts}
    results, errors = {}, []

    def worker(t):
        try:
            results[t] = engine.analyze(t).attentions
        except Exception as err:  # noqa: BLE001
            errors.append(err)

    threads = [threading.Thread(target=worker, args=(t,)) for t in texts]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert not errors
    for t in texts:
        np.testing.assert_array_equal(results[t], expected[t])


def test_cache_bounded_by_count_least_recently_used_first(tiny):
    cache = ModelCache(max_models=2)
    bert, gpt2, llama = (str(tiny(f)) for f in ("bert", "gpt2", "llama"))
    exbert_hub.load(bert, cache=cache)
    exbert_hub.load(gpt2, cache=cache)
    exbert_hub.load(bert, cache=cache)  # bert is now the most recently used
    assert cache.loads == 2
    exbert_hub.load(llama, cache=cache)
    assert len(cache) == 2 and cache.loads == 3
    exbert_hub.load(bert, cache=cache)  # still cached
    assert cache.loads == 3
    exbert_hub.load(gpt2, cache=cache)  # was evicted: loaded again
    assert cache.loads == 4 and len(cache) == 2


def test_cache_bounded_by_bytes(tiny):
    sizes = {f: exbert_hub.load(str(tiny(f)), cache=ModelCache())._loaded.nbytes for f in ("gpt2", "llama")}
    assert all(s > 0 for s in sizes.values())
    cache = ModelCache(max_models=10, max_bytes=sum(sizes.values()) - 1)  # room for one, not both
    exbert_hub.load(str(tiny("gpt2")), cache=cache)
    exbert_hub.load(str(tiny("llama")), cache=cache)
    assert len(cache) == 1 and cache.loads == 2
    exbert_hub.load(str(tiny("llama")), cache=cache)  # the one kept is the newest
    assert cache.loads == 2
    # a model bigger than the whole budget is still kept (alone): the caller is using it
    tiny_budget = ModelCache(max_bytes=1)
    exbert_hub.load(str(tiny("gpt2")), cache=tiny_budget)
    assert len(tiny_budget) == 1


def test_failed_load_is_not_cached_and_can_be_retried(tiny, monkeypatch):
    cache = ModelCache()
    original = engine_module._load_model
    failures = []

    def flaky(*args, **kwargs):
        if not failures:
            failures.append(1)
            raise OSError("disk hiccup")
        return original(*args, **kwargs)

    monkeypatch.setattr(engine_module, "_load_model", flaky)
    with pytest.raises(OSError, match="hiccup"):
        exbert_hub.load(str(tiny("bert")), cache=cache)
    assert len(cache) == 0 and cache.loads == 0
    assert exbert_hub.load(str(tiny("bert")), cache=cache).kind == "masked-lm"
    assert cache.loads == 1


def test_errors_share_a_base_class():
    for cls in (InputError, ModelNotFoundError, UnsupportedModelError):
        assert issubclass(cls, ExbertError)
    assert issubclass(InputError, ValueError)
