"""A short prepared check for a machine with a CUDA GPU (under 5 minutes): run it there, paste its output
into bench/RESULTS.md (section "H11a: GPU check").

    HF_HUB_OFFLINE=1 .venv/bin/python bench/gpu_check.py

What it checks, on the packaged SmolLM2 (and MiniLM):
1. ``load(device="auto", dtype="auto")`` picks cuda and bfloat16 (float16 where bfloat16 is unsupported).
2. Results on the GPU agree with CPU float32 within the dtype's bound (tests/test_engine_device.py:
   4 * eps * sqrt(depth + 1) relative to the values' scale; eps = 2**-8 for bfloat16, 2**-11 float16),
   for hidden states and every layer's attention; and GPU float32 agrees with CPU float32 to 1e-3.
3. A 4,096-token SmolLM2 analysis on the GPU: time, torch.cuda.max_memory_allocated, and one head's
   attention row recomputed against score_terms.
4. ``device_map="auto"`` loads and analyses (accelerate).
Exit status 1 if a check fails.
"""

from __future__ import annotations

import math
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402

import exbert_hub  # noqa: E402
from exbert_hub import ModelCache  # noqa: E402

TEXT = "The quick brown fox jumps over the lazy dog near the river bank. The capital of France is"
EPS = {"bfloat16": 2.0 ** -8, "float16": 2.0 ** -11, "float32": 1e-3 / 8}
failures: list[str] = []


def check(ok: bool, what: str) -> None:
    print(("ok   " if ok else "FAIL ") + what, flush=True)
    if not ok:
        failures.append(what)


def compare(name: str, dtype: str, device: str = "cuda") -> None:
    cpu = exbert_hub.load(name, cache=ModelCache(), device="cpu", dtype="float32").analyze(TEXT)
    gpu = exbert_hub.load(name, cache=ModelCache(), device=device, dtype=dtype).analyze(TEXT)
    worst_h = worst_a = 0.0
    for i in range(cpu.num_layers + 1):
        bound = 4 * EPS[dtype] * math.sqrt(i + 1) * max(float(np.abs(cpu.hidden_states[i]).max()), 1.0)
        worst_h = max(worst_h, float(np.abs(gpu.hidden_states[i] - cpu.hidden_states[i]).max()) / bound)
    for layer in range(cpu.num_layers):
        bound = 4 * EPS[dtype] * math.sqrt(layer + 2)
        worst_a = max(worst_a, float(np.abs(gpu.attentions[layer] - cpu.attentions[layer]).max()) / bound)
    check(worst_h <= 1 and worst_a <= 1,
          f"{name} {device} {dtype} vs cpu float32: hidden {worst_h:.2f}, attention {worst_a:.2f} of the bound")


def main() -> int:
    if not torch.cuda.is_available():
        print("no CUDA GPU here: nothing to check")
        return 1
    print(torch.cuda.get_device_name(0), "bf16 supported:", torch.cuda.is_bf16_supported(), "torch", torch.__version__)
    e = exbert_hub.load(exbert_hub.SMOLLM2, cache=ModelCache())
    want = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    check(e.device.startswith("cuda") and e.dtype == want, f"auto -> {e.device} {e.dtype}")
    for name in (exbert_hub.MINILM, exbert_hub.SMOLLM2):
        compare(name, "float32")
        compare(name, want)
        compare(name, "float16")
    # long input on the GPU
    from pydoc_data.topics import topics

    long = exbert_hub.load(exbert_hub.SMOLLM2, cache=ModelCache(), max_tokens=4096)
    text = " ".join(list(topics.values())[:60])
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    a = long.analyze(text, truncate=True)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    row = a.attentions[29, 8, 4000]
    terms = a.score_terms(29, 8, 4000)
    check(len(a.tokens) == 4096 and np.abs(row - terms["softmax"]).max() < 1e-5,
          f"SmolLM2 4,096 tokens on {long.device} {long.dtype}: {seconds:.2f} s, "
          f"GPU peak {torch.cuda.max_memory_allocated() / 1e9:.2f} GB, host-side analysis {a.nbytes / 1e9:.2f} GB")
    try:
        m = exbert_hub.load(exbert_hub.SMOLLM2, cache=ModelCache(), device_map="auto")
        b = m.analyze(TEXT)
        check(b.predictions is not None, f"device_map='auto': {m.device} {m.dtype}, next token {b.predictions[-1][0]}")
    except Exception as err:  # noqa: BLE001 - reported, not raised
        check(False, f"device_map='auto' failed: {type(err).__name__}: {err}")
    print("FAILED:" if failures else "all checks passed", *failures, sep="\n  ")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
