"""Device and precision: load(device=, dtype=, device_map=), the cache key, and bfloat16/float16 results
against float32 within bounds derived from each format's precision.

bfloat16 keeps 8 significant bits (eps = 2**-8 relative rounding step; float16: 2**-11). Matmuls on CPU
accumulate in float32 and round their inputs and outputs, so each layer adds an error of a few eps
relative to the values' scale; errors of random sign add like a random walk over layers. The bound is
4 * eps * sqrt(depth + 1) relative to max(|values|, 1) (measured here: 1.5-4.6 eps for MiniLM and
SmolLM2 hidden states, attention weights within 9 eps after SmolLM2's 30 layers, against a bound of
22 eps there), while a real bug (a wrong mask, a lost scale) moves values by 0.1 or more.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import exbert_hub
from exbert_hub import MINILM, SMOLLM2, InputError, ModelCache
from exbert_hub.engine import Placement, placement

TEXT = "The quick brown fox jumps over the lazy dog near the river bank."
EPS = {"bfloat16": 2.0 ** -8, "float16": 2.0 ** -11}


def low_precision_bound(dtype: str, depth: int, margin: float = 4.0) -> float:
    return margin * EPS[dtype] * math.sqrt(depth + 1)


def _close(got, want, bound: float, what: str) -> None:
    want = np.asarray(want, dtype=np.float64)
    scale = max(float(np.abs(want).max()), 1.0)
    err = float(np.abs(np.asarray(got, dtype=np.float64) - want).max())
    assert err <= bound * scale, f"{what}: {err:.3g} > {bound * scale:.3g}"


def test_auto_is_cpu_float32_without_a_gpu():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: auto means cuda here (bench/gpu_check.py checks it)")
    assert placement("auto", "auto") == Placement("cpu", "float32", None)
    assert placement("cpu", "bfloat16").torch_dtype == torch.bfloat16


def test_process_default_from_the_environment(monkeypatch):
    monkeypatch.setenv("EXBERT_HUB_DTYPE", "bfloat16")
    monkeypatch.setenv("EXBERT_HUB_DEVICE", "cpu")
    assert placement() == Placement("cpu", "bfloat16", None)
    assert placement(dtype="float32").dtype == "float32"  # an explicit argument wins


@pytest.mark.parametrize("kwargs, match", [
    ({"device": "tpu"}, "device must be one of auto, cpu, cuda"),
    ({"device": 3}, "device must be"),
    ({"dtype": "float64"}, "dtype must be one of auto, float32, bfloat16, float16"),
    ({"device_map": "balanced"}, "device_map must be None or 'auto'"),
])
def test_bad_arguments_are_one_line(kwargs, match, tiny):
    with pytest.raises(InputError, match=match):
        exbert_hub.load(str(tiny("bert")), cache=ModelCache(), **kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_cuda_without_a_gpu_says_so(tiny):
    with pytest.raises(InputError, match="needs a CUDA GPU and none is available here"):
        exbert_hub.load(str(tiny("bert")), cache=ModelCache(), device="cuda")
    with pytest.raises(InputError, match="device_map='auto'"):
        exbert_hub.load(str(tiny("bert")), cache=ModelCache(), device_map="auto")


def test_dtype_is_part_of_the_cache_key(tiny):
    cache = ModelCache()
    f32 = exbert_hub.load(str(tiny("llama")), cache=cache)
    bf16 = exbert_hub.load(str(tiny("llama")), cache=cache, dtype="bfloat16")
    again = exbert_hub.load(str(tiny("llama")), cache=cache, dtype="bfloat16")
    assert cache.loads == 2 and len(cache) == 2
    assert f32.dtype == "float32" and bf16.dtype == "bfloat16" and f32.device == bf16.device == "cpu"
    assert next(bf16.model.parameters()).dtype == torch.bfloat16
    assert again.model is bf16.model and f32.model is not bf16.model
    # what the model cache counts: half the bytes
    assert bf16._loaded.nbytes * 2 == f32._loaded.nbytes


def _compare(name: str, dtype: str, cache: ModelCache, **kwargs) -> None:
    a = exbert_hub.load(name, cache=cache, **kwargs).analyze(TEXT)
    b = exbert_hub.load(name, cache=cache, dtype=dtype, **kwargs).analyze(TEXT)
    assert b.hidden_states.dtype == np.float32  # results are float32 whatever the model ran in
    assert a.tokens == b.tokens
    for i in range(a.num_layers + 1):
        _close(b.hidden_states[i], a.hidden_states[i], low_precision_bound(dtype, i), f"{name} hidden {i}")
    for name_, st in a.stacks.items():
        for layer in range(st.num_layers):
            _close(b.stack(name_).attentions[layer], st.attentions[layer], low_precision_bound(dtype, layer + 1),
                   f"{name} {name_} attention {layer}")
    # and the difference is real: the low-precision model did not silently run in float32
    assert np.abs(b.hidden_states[-1] - a.hidden_states[-1]).max() > 0


@pytest.mark.parametrize("family", ["bert", "llama", "gpt2", "t5"])
def test_bfloat16_agrees_with_float32_tiny(family, tiny):
    _compare(str(tiny(family)), "bfloat16", ModelCache())


def test_float16_agrees_with_float32_tiny(tiny):
    _compare(str(tiny("llama")), "float16", ModelCache())


@pytest.mark.parametrize("name", [MINILM, SMOLLM2])
def test_bfloat16_agrees_with_float32_real(name):
    _compare(name, "bfloat16", ModelCache())
