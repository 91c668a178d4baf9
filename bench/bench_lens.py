"""Logit lens over every layer of a ~1k-token SmolLM2 analysis, side by side with references, in one run.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_lens.py [--tokens 1024] [--repeat 3]

Ours: the lens view's grid, logit_lens(fast=True) over all 31 hidden states and every position: top-1
(what each cell shows) and top-5 (what the view sends), on the fused AMX kernel where this CPU has one
(analyses/lens_kernel.c) and on the torch path (EXBERT_HUB_LENS_KERNEL=0). References in the same
process: the float32 lens (logit_lens default, fast=False, top-5), the naive lens (each layer's whole
[T, vocab] logits, softmax, topk) and one forward pass of the model over the same tokens. Then the fast
top-5 grid's accuracy against the float32 lens. Each measurement alternates
with the others (round-robin), medians; load averages before and after. Target: <= 1.5 s for the grid.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

import exbert_hub
from exbert_hub.analyses import lens_kernel
from exbert_hub.analyses.lens import lens_head, logit_lens


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=1024)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    from pydoc_data.topics import topics

    eng = exbert_hub.load(exbert_hub.SMOLLM2)
    text = " ".join(topics.values())
    ids = eng.tokenizer(text)["input_ids"][: args.tokens]
    text = eng.tokenizer.decode(ids, skip_special_tokens=True)
    a = eng.analyze(text, truncate=True)
    n = len(a.tokens)
    states = a.hidden_states
    head = lens_head(eng.model, a.kind)

    def grid():  # what each cell shows: top-1 and its probability (exact id, bounded probability)
        return logit_lens(a, eng, top_k=1, fast=True)

    def grid5():  # what the view sends per cell: top-5
        return logit_lens(a, eng, top_k=5, fast=True)

    def grid_torch():  # the torch path (no kernel): bfloat16 products in blocks, group bounds
        os.environ["EXBERT_HUB_LENS_KERNEL"] = "0"
        try:
            return logit_lens(a, eng, top_k=1, fast=True)
        finally:
            del os.environ["EXBERT_HUB_LENS_KERNEL"]

    def f32():
        return logit_lens(a, eng, top_k=5, fast=False)

    def naive():
        with torch.inference_mode():
            for s in range(states.shape[0]):
                logits = head.logits(torch.from_numpy(np.ascontiguousarray(states[s])), last=s == states.shape[0] - 1)
                torch.topk(torch.softmax(logits, dim=-1), 5, dim=-1)

    def forward():
        with torch.inference_mode():
            eng.model(input_ids=torch.as_tensor([a.ids]))

    grid()  # the head's bfloat16 copies are made once per model, the kernel built once per machine (not timed)
    grid_torch()
    print("lens kernel:", "loaded" if lens_kernel.load() is not None else f"not used ({lens_kernel.unavailable_reason()})")
    fns = {"grid": grid, "grid5": grid5, "grid_torch": grid_torch, "f32": f32, "naive": naive, "forward": forward}
    times: dict[str, list[float]] = {k: [] for k in fns}
    print("load before:", os.getloadavg())
    for _ in range(args.repeat):  # round-robin: the same load for every method
        for k, f in fns.items():
            t = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t)
    print("load after:", os.getloadavg(), f"(medians of {args.repeat} rounds)")
    med = {k: float(np.median(v)) for k, v in times.items()}
    lens1 = grid()
    print(f"SmolLM2, {n} tokens, {states.shape[0]} hidden states, vocab {eng.config.vocab_size}, "
          f"torch threads {torch.get_num_threads()}")
    print(f"grid, ours (fast, top-1, all layers):   {med['grid']:.2f} s   (rounds: {', '.join(f'{x:.2f}' for x in times['grid'])})")
    print(f"grid, ours (fast, top-5):               {med['grid5']:.2f} s")
    print(f"grid, torch path (top-1, no kernel):    {med['grid_torch']:.2f} s   grid/torch path = {med['grid'] / med['grid_torch']:.2f}")
    print(f"float32 lens (fast=False, top-5):       {med['f32']:.2f} s   grid/float32 = {med['grid'] / med['f32']:.2f}")
    print(f"naive lens (whole logits per layer):    {med['naive']:.2f} s   grid/naive = {med['grid'] / med['naive']:.2f}")
    print(f"one forward pass:                       {med['forward']:.2f} s   grid/forward = {med['grid'] / med['forward']:.2f}")
    err = lens1.prob_error
    print(f"cells computed in float32 (not certified): {float((err == 0).mean()):.1%}; probability bound "
          f"median {float(np.median(err)):.2e}, 90th percentile {float(np.quantile(err, 0.9)):.2e}")
    print(f"target: <= 1.5 s for the grid: {'met' if med['grid'] <= 1.5 else 'NOT met'}")
    fast5, ref5 = grid5(), f32()
    ids_equal = fast5.top_ids == ref5.top_ids
    rel = np.abs(fast5.top_probs - ref5.top_probs) / ref5.top_probs
    q = lambda r: ", ".join(f"{name} {float(np.quantile(r, p)):.1e}" for name, p in
                            (("median", 0.5), ("99th", 0.99), ("99.9th", 0.999), ("max", 1.0)))
    print(f"accuracy, fast top-5 vs float32 lens: ids equal in {float(ids_equal.mean()):.6%} of slots; "
          f"probability relative difference {q(rel)}; last state: {q(rel[-1])}")


if __name__ == "__main__":
    main()
