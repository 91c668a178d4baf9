"""Memory of long analyses: what a pass frees is really given back, the model's tensors are let go once
copied, no key/value cache is made, and 4,096 SmolLM2 tokens fit in a server process of under 3 GB.

Peaks are measured in subprocesses (their peak RSS is their own, not the test session's).
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import textwrap
import weakref

import numpy as np
import pytest
import torch
from transformers.modeling_outputs import BaseModelOutput

import exbert_hub
from exbert_hub import ModelCache, capture
from exbert_hub import engine as engine_mod
from exbert_hub.linear_kernels import fast_linear

GLIBC = capture._MALLOC_TRIM is not None


def _run(code: str) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env,
                         timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


_FRAGMENT = """
    import json, torch
    from exbert_hub import capture

    def rss():
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) / 1024 for l in f if l.startswith("VmRSS:"))

    big = torch.ones(30 * 2**18)  # 30 MB: freeing it raises glibc's mmap threshold (smaller blocks go to the heap)
    del big
    kept, freed = [], []
    for i in range(40):  # 8 MB tensors, every other one kept: the heap cannot shrink from its top
        (kept if i % 2 else freed).append(torch.ones(2**21))
    before = rss()
    freed.clear()
    after_free = rss()
    released = capture.release_freed_memory() if RELEASE else False
    print(json.dumps({"before": before, "after_free": after_free, "after": rss(), "released": released}))
"""


@pytest.mark.skipif(not GLIBC, reason="malloc_trim is glibc's (Linux); elsewhere release_freed_memory is a no-op")
def test_freed_heap_memory_is_given_back():
    kept = _run("RELEASE = False\n" + textwrap.dedent(_FRAGMENT))
    given = _run("RELEASE = True\n" + textwrap.dedent(_FRAGMENT))
    # without it, freeing 160 MB of interleaved heap blocks does not lower the RSS (what inflated the 4k peak)
    assert kept["before"] - kept["after"] < 40, kept
    assert given["released"] is True
    assert given["after_free"] - given["after"] > 120, given


def test_take_layers_lets_go_of_each_model_tensor():
    states = tuple(torch.randn(1, 7, 5) for _ in range(4))
    expected = np.stack([s[0].numpy().copy() for s in states])
    out = BaseModelOutput(last_hidden_state=None, hidden_states=states)
    refs = [weakref.ref(s) for s in states]
    del states
    arr = engine_mod._take_layers(out, "hidden_states", trim=True)
    gc.collect()
    np.testing.assert_array_equal(arr, expected)
    # the output object itself is still alive, yet none of its tensors is (its dict entry went too)
    assert out.hidden_states is None and out["hidden_states"] is None
    assert all(r() is None for r in refs)


def test_no_key_value_cache_and_trimmed_recording(tiny, monkeypatch):
    engine = exbert_hub.load(str(tiny("llama")), cache=ModelCache())
    seen = []
    real = capture.recording

    def spy(**kw):
        seen.append(kw)
        return real(**kw)

    monkeypatch.setattr(capture, "recording", spy)
    ids = torch.as_tensor(engine.tokenizer("The cat sat on the mat.")["input_ids"])[None]
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    with torch.inference_mode():
        for mode in ("eager", "fused"):
            out, stacks = engine._forward(dict(inputs), mode)
            assert getattr(out, "past_key_values", None) is None and stacks is not None
            # same pass with transformers' own cache: the analysis is the same (the cache only kept values alive)
            if mode == "eager":
                with fast_linear():  # the engine's kernels (linear_kernels), so the numbers can be equal
                    ref = engine.model(**inputs, use_cache=True, output_hidden_states=True)
                assert ref.past_key_values is not None
                np.testing.assert_array_equal(out.logits.numpy(), ref.logits.numpy())
    assert [kw["trim"] for kw in seen] == [False, True]  # short inputs (eager) never pay for trimming


@pytest.mark.integration
def test_smollm2_4096_tokens_peak_under_3gb():
    """The issue's target: 4,096 tokens analysed, the server process's peak RSS (model included) <= 3 GB.
    Measured 2030 MiB (bench/RESULTS.md H11f); 2,600 MiB leaves room for other allocator behaviour.
    The packaged SmolLM2 is converted from GGUF once (5.8 GB peak on a fresh machine) and then read from the
    exbert-hub cache, as a server does: that first load runs in a process of its own."""
    _run("""
        import exbert_hub
        exbert_hub.load(exbert_hub.SMOLLM2)
        print("{}")
    """)
    got = _run("""
        import json, torch
        from pydoc_data.topics import topics

        def peak_mb():
            # this process's own high-water RSS (VmHWM). Not ru_maxrss: a child spawned by a big process (this
            # test's pytest) starts with its parent's high-water mark in ru_maxrss on Linux (vfork + exec)
            with open("/proc/self/status") as f:
                return next(int(l.split()[1]) / 1024 for l in f if l.startswith("VmHWM:"))

        import exbert_hub
        engine = exbert_hub.load(exbert_hub.SMOLLM2, max_tokens=4096)
        engine.analyze("warm up")
        ids = engine.tokenizer(" ".join(list(topics.values())[:60]))["input_ids"]
        a = engine.analyze(engine.tokenizer.decode(ids[:4200]), truncate=True)
        ref_rows = {0: a.attentions[0, 0, 7].copy(), 4095: a.attentions[29, 8, 4095].copy()}
        print(json.dumps({"tokens": len(a.tokens), "nbytes": a.nbytes,
                          "peak_mb": peak_mb(),
                          "row_sums": [float(r.sum()) for r in ref_rows.values()]}))
    """)
    assert got["tokens"] == 4096
    assert got["nbytes"] < 1.0e9
    assert got["row_sums"] == pytest.approx([1.0, 1.0], abs=1e-5)
    assert got["peak_mb"] < 2600, got


@pytest.mark.parametrize("family", ["llama", "bert"])
def test_mask_described_once_per_pass(family, tiny, monkeypatch):
    """The layers share one mask tensor; each call sees a new view of it. It is checked once per pass
    (at 512 SmolLM2 tokens, 30 checks of the view cost more than the attention itself), and every layer's
    description is what the mask is."""
    engine = exbert_hub.load(str(tiny(family)), cache=ModelCache())
    recs = []
    real = capture.recording

    def spy(**kw):
        cm = real(**kw)
        rec = cm.__enter__()
        recs.append(rec)

        class _CM:
            def __enter__(self):
                return rec

            def __exit__(self, *exc):
                return cm.__exit__(*exc)

        return _CM()

    monkeypatch.setattr(capture, "recording", spy)
    checks = []
    describe = capture.Recording.describe_mask

    def counted(self, mask):
        if mask is not None and id(mask) not in self._causal:
            checks.append(tuple(mask.shape))
        return describe(self, mask)

    monkeypatch.setattr(capture.Recording, "describe_mask", counted)
    a = engine.analyze("The cat sat on the mat, and the dog slept.")
    assert len(recs) == 1 and len(recs[0].calls) == a.num_layers
    assert len(checks) <= 1
    kinds = {s.kind for s in a.main_stack.mask_specs}
    assert kinds == ({"causal"} if family == "llama" else {"none"})
    if family == "llama":
        T = len(a.tokens)
        spec = a.main_stack.mask_specs[0]
        assert spec.fill < -1e4
        np.testing.assert_array_equal(a.main_stack.masks[a.num_layers - 1], np.triu(np.full((T, T), spec.fill, np.float32), 1))
