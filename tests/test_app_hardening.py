"""A public app: visitors' input is checked, messages are one line of text, memory is budgeted,
and one visitor's model load does not hold up the others."""

from __future__ import annotations

import copy
import threading
import time
from types import SimpleNamespace

import pytest
from serving import launch_on_free_port

from exbert_hub.budget import Budget, BusyError, analysis_bytes
from exbert_hub.errors import InputError, ModelNotFoundError
from exbert_hub.policy import Policy, PolicyError, is_hub_id, parse_bytes

TEXT = "The cat sat on the mat because it was tired."


# --------------------------------------------------------------------------------------------------
# messages
# --------------------------------------------------------------------------------------------------
def test_user_message_is_one_line_without_server_paths(tmp_path):
    from exbert_hub.app import user_message

    secret = tmp_path / "secret" / "x"
    err = ModelNotFoundError(f"could not find the model 'x'. Tried:\n  - local folder {secret}: does not exist"
                             "\n  - Hugging Face Hub: offline")
    msg = user_message(err)
    assert "\n" not in msg and "  " not in msg
    assert str(tmp_path) not in msg and "secret" not in msg and "(a server path)" in msg
    cached = tmp_path / ".cache" / "huggingface" / "hub" / "models--x" / "config.json"
    assert user_message(OSError(f"cannot open {cached}")).count("/") == 0
    assert len(user_message(InputError("x" * 5000))) <= 400


def test_banner_is_text_never_markup():
    from exbert_hub.tabs.base import banner as _message

    evil = '<a href="https://evil.example">x</a><img src="https://evil.example/p.png"><form><input type=password>'
    md = "[link](https://evil.example) ![](https://evil.example/i.png)"
    out = _message(evil + " " + md)
    # the only tags are the banner's own
    import re

    tags = set(re.findall(r"<\s*([a-zA-Z]+)", out))
    assert tags <= {"div", "span"}, tags
    assert "&lt;img" in out and "&lt;form&gt;" in out and "[link](https://evil.example)" in out


def test_kind_phrase_articles():
    from exbert_hub.app import kind_phrase

    assert kind_phrase("encoder") == "an encoder model"
    assert kind_phrase("encoder-decoder") == "an encoder-decoder model"
    assert kind_phrase("causal-lm") == "a causal-lm model"


def test_page_config_deep_copies(tiny):
    """Gradio deep-copies the page config on every page load; a component attribute holding an event
    trigger (with an asyncio Future) made each load log 'Exception ignored ... _closed' traces."""
    from exbert_hub.app import AnalysisStore, build_app

    demo = build_app(str(tiny("bert")), store=AnalysisStore())
    config = demo.get_config_file()
    for component in config["components"]:
        copy.deepcopy(component)  # raises TypeError: cannot pickle '_asyncio.Future' before the fix


# --------------------------------------------------------------------------------------------------
# the policy
# --------------------------------------------------------------------------------------------------
def test_hub_id_shape():
    assert is_hub_id("bert-base-uncased") and is_hub_id("google/flan-t5-small") and is_hub_id("a.b/c_d-e")
    for bad in ("/etc", "~/x", "../x", "a/../b", "a/b/c", "", ".hidden", "x" * 200, "<a href=x>", "C:\\x"):
        assert not is_hub_id(bad), bad


def test_policy_models_and_paths(tmp_path):
    p = Policy(models=("bert-*", "google/*")).with_operator(["/srv/models/mine"])
    assert p.check_model("bert-base-uncased", remote=True) is False  # a Hub id: never a folder for remote visitors
    p.check_model("google/flan-t5-small", remote=True)
    assert p.check_model("/srv/models/mine", remote=True) is True  # the operator's own
    with pytest.raises(PolicyError, match="does not load the model 'gpt2'"):
        p.check_model("gpt2", remote=True)
    # a folder: refused for a remote visitor with the same words whether it exists or not
    msgs = set()
    # an alias of an existing folder, a folder that does not exist, the home folder
    for path in (f"/proc/self/root{tmp_path}", str(tmp_path / "missing"), "~"):
        with pytest.raises(PolicyError) as info:
            p.check_model(path, remote=True)
        msgs.add(str(info.value).replace(repr(path), "NAME"))
    assert len(msgs) == 1 and "folder" in msgs.pop()
    assert p.check_model(str(tmp_path), remote=False) is True  # loopback visitors may name folders
    assert Policy(local_paths=True).check_model(str(tmp_path), remote=True) is True


def test_policy_from_env_and_budget_split():
    env = {"EXBERT_HUB_ALLOWED_MODELS": "bert-*, gpt2", "EXBERT_HUB_MEMORY_BUDGET": "10GB",
           "EXBERT_HUB_LOCAL_PATHS": "0", "EXBERT_HUB_MAX_PARAMS": "2e8"}
    p = Policy.from_env(env)
    assert p.models == ("bert-*", "gpt2") and p.memory_budget == 10**10 and p.max_params == 2 * 10**8
    assert p.model_cache_bytes + p.corpus_cache_bytes + p.analysis_cache_bytes + p.in_flight_bytes == p.memory_budget
    assert parse_bytes("800 MB") == 8 * 10**8 and parse_bytes("2GiB") == 2 * 2**30
    with pytest.raises(ValueError):
        parse_bytes("lots")


# --------------------------------------------------------------------------------------------------
# the memory budget
# --------------------------------------------------------------------------------------------------
def test_build_app_gives_every_cache_its_share(tiny):
    import exbert_hub.engine as engine
    from exbert_hub.app import build_app
    from exbert_hub.corpus import CORPUS_CACHE

    before = engine.MODEL_CACHE.max_bytes, CORPUS_CACHE.max_bytes
    try:
        p = Policy(memory_budget=2 * 10**9)
        build_app(str(tiny("bert")), policy=p)
        assert engine.MODEL_CACHE.max_bytes == p.model_cache_bytes == 8 * 10**8
        assert CORPUS_CACHE.max_bytes == p.corpus_cache_bytes
    finally:
        engine.MODEL_CACHE.max_bytes = before[0]
        CORPUS_CACHE.configure(max_bytes=before[1])


def test_budget_waits_then_reports_busy():
    b = Budget(100, wait_s=0.3)
    with b.reserve(80):
        t0 = time.monotonic()
        with pytest.raises(BusyError, match="busy"):
            with b.reserve(30):
                pass
        assert time.monotonic() - t0 >= 0.25
        with b.reserve(20):  # what fits runs at once
            assert b.used == 100
    assert b.used == 0 and b.peak == 100
    with pytest.raises(InputError, match="shorter text"):
        with b.reserve(101):
            pass


def test_budget_admits_a_waiting_request_when_another_ends():
    b = Budget(100, wait_s=5)
    order = []

    def second():
        with b.reserve(60):
            order.append("second")

    with b.reserve(60):
        t = threading.Thread(target=second)
        t.start()
        time.sleep(0.2)
        order.append("first done")
    t.join(5)
    assert order == ["first done", "second"]


def test_analysis_bytes_bounds_a_real_analysis(tiny_engine):
    from exbert_hub.service import analysis_nbytes as _analysis_nbytes

    eng = tiny_engine("bert")
    a = eng.analyze(TEXT)
    est = analysis_bytes(eng, len(a.tokens))
    held = _analysis_nbytes(a)
    assert held == a.nbytes  # what is held: queries, keys, contexts, hidden states (attention on demand)
    # the estimate is the pass's peak: what is held plus the [T, vocab] logits the forward pass makes
    assert held <= est <= 10 * (held + len(a.tokens) * eng.config.vocab_size * 4)


def test_store_counts_work_in_progress(tiny_engine, tiny):
    """Two analyses at once reserve their sizes from the store's budget, released afterwards."""
    from exbert_hub.app import AnalysisStore, Request

    eng = tiny_engine("bert")
    store = AnalysisStore(budget=Budget(10**9))
    seen = []
    real = eng.analyze

    def spy(*args, **kwargs):
        seen.append(store.budget.used)
        return real(*args, **kwargs)

    eng.analyze = spy
    try:
        store.run(Request(str(tiny("bert")), TEXT), eng)
    finally:
        del eng.analyze
    assert seen and seen[0] >= analysis_bytes(eng, 12) and store.budget.used == 0


# --------------------------------------------------------------------------------------------------
# the HTTP API: wrong types, policy, concurrency
# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def served(tiny, tiny_engine):
    from gradio_client import Client

    from exbert_hub.app import AnalysisStore, build_app, queue

    model = str(tiny("bert"))
    policy = Policy(models=("allowed-*",), memory_budget=4 * 10**9)
    demo = queue(build_app(model, store=AnalysisStore(), policy=policy))
    launch_on_free_port(demo)
    try:
        yield SimpleNamespace(client=Client(demo.local_url, verbose=False), model=model, demo=demo)
    finally:
        demo.close()


def _error_of(client, *args, api_name):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError) as info:
        client.predict(*args, api_name=api_name)
    msg = str(info.value)
    assert "\n" not in msg.strip() and "Traceback" not in msg
    return msg


@pytest.mark.parametrize("args, api_name, expected", [
    ((TEXT, "abc", 0), "/attention", "layer must be a whole number, got 'abc'"),
    ((TEXT, 1.7, 0), "/attention", "layer must be a whole number, got 1.7"),
    ((TEXT, 0, "x"), "/attention", "head must be a whole number"),
    ((TEXT, None, 5), "/analyze", "model must be text, got int"),  # (text, pair, model)
    ((TEXT, 9, 0), "/attention", "layer 9 is out of range"),
    ((TEXT, -3), "/mask", "position must be at least 0"),
    ((TEXT, 1, 0, "embedding", "0,1"), "/search", "heads must be a list of whole numbers such as [0, 1]"),
    ((TEXT, 1, 0, "embedding", None, 500), "/search", "k must be from 1 to 200"),
])
def test_wrong_types_get_one_line(served, args, api_name, expected):
    msg = _error_of(served.client, *args, api_name=api_name)
    assert expected in msg, msg


def test_lone_surrogate_over_rest_gets_one_line(served):
    """gradio_client cannot even send a lone surrogate (httpx refuses); JSON's \\ud800 escape can."""
    import json

    import httpx

    base = served.demo.local_url.rstrip("/")
    body = json.dumps({"data": ["abc\ud800def", None, None]}, ensure_ascii=True)
    r = httpx.post(f"{base}/gradio_api/call/analyze", content=body, headers={"content-type": "application/json"})
    event = r.json()["event_id"]
    stream = httpx.get(f"{base}/gradio_api/call/analyze/{event}", timeout=60).text
    assert "event: error" in stream, stream
    assert "lone surrogate) at position 3" in stream, stream


def test_layer_given_as_integral_float_or_digits_is_taken(served):
    a = served.client.predict(TEXT, 1.0, 0, api_name="/attention")
    b = served.client.predict(TEXT, "1", 0, api_name="/attention")
    assert a == b and len(a) == len(a[0])


def test_remote_visitor_cannot_name_folders_or_other_models(served, monkeypatch, tiny):
    import exbert_hub.app as app
    import exbert_hub.policy as policy

    monkeypatch.setattr(app, "is_remote", lambda request: True)
    monkeypatch.setattr(policy, "is_remote", lambda request: True)
    alias = f"/proc/self/root{tiny('gpt2')}"  # a real model folder, through another path
    msg = _error_of(served.client, alias, api_name="/model_info")
    assert "not a Hugging Face Hub id" in msg and "/proc" not in msg and "gpt2" not in msg
    msg = _error_of(served.client, "gpt2", api_name="/model_info")
    assert "does not load the model 'gpt2'" in msg
    # the operator's own model (a local folder) is still served to remote visitors
    assert served.client.predict(api_name="/model_info")["layers"] == 2
    # corpora: no server folders, no Hub dataset the operator did not allow
    msg = _error_of(served.client, TEXT, 1, 0, "embedding", None, 5, None, "~/.cache", api_name="/search")
    assert "corpus name is not a Hub dataset id" in msg and "/root" not in msg and ".cache" not in msg
    msg = _error_of(served.client, TEXT, 1, 0, "embedding", None, 5, None, "someone/corpus", api_name="/search")
    assert "does not open the corpus 'someone/corpus'" in msg
    # a visitor's model name on /search goes through the policy too
    msg = _error_of(served.client, TEXT, 1, 0, "embedding", None, 5, "gpt2", None, api_name="/search")
    assert "does not load the model 'gpt2'" in msg


def test_a_slow_load_of_another_model_does_not_hold_up_analyses(served, tiny, monkeypatch, tmp_path):
    """One visitor's model load (seconds, under LOAD_LOCK) while another visitor analyzes the app's model."""
    from gradio_client import Client

    import exbert_hub.engine as engine

    started = threading.Event()

    def slow_load(*args, **kwargs):
        started.set()
        time.sleep(4)
        raise ModelNotFoundError("this test's slow model never arrives")

    served.client.predict(TEXT, api_name="/analyze")  # the app's model is loaded and cached
    monkeypatch.setattr(engine, "_load_model", slow_load)
    import shutil

    other = str(shutil.copytree(tiny("gpt2"), tmp_path / "never-loaded"))  # a folder no test loaded: _load_model
    slow = threading.Thread(target=_swallow, args=(served, other))
    slow.start()
    assert started.wait(10)
    t0 = time.monotonic()
    res = Client(served.demo.local_url, verbose=False).predict(TEXT + " Again.", api_name="/analyze")
    took = time.monotonic() - t0
    slow.join(10)
    assert res["layers"] == 2
    assert took < 2.0, f"an analysis of the loaded model waited {took:.1f} s behind another model's load"


def _swallow(served, model):
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    try:
        Client(served.demo.local_url, verbose=False).predict(TEXT, None, model, api_name="/analyze")
    except AppError:
        pass


def test_store_gives_freed_memory_back_after_each_new_analysis(tiny_engine, tiny, monkeypatch):
    """Freed analysis arrays stayed in glibc's per-thread arenas (RSS grew with every new text)."""
    import sys

    import exbert_hub.service as app
    from exbert_hub import budget

    if sys.platform.startswith("linux"):
        assert budget._MALLOC_TRIM is not None  # glibc on this machine kind
    calls = []
    monkeypatch.setattr(app, "release_freed_memory", lambda: calls.append(1))
    store = app.AnalysisStore()
    eng = tiny_engine("bert")
    store.run(app.Request(str(tiny("bert")), TEXT), eng)
    store.run(app.Request(str(tiny("bert")), TEXT), eng)  # kept: nothing new was freed
    store.run(app.Request(str(tiny("bert")), TEXT + " Again."), eng)
    assert len(calls) == 2
    budget.release_freed_memory()  # the real call works
