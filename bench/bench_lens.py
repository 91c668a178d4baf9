"""Logit lens over every layer of a ~1k-token SmolLM2 analysis, side by side with references, in one run.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_lens.py [--tokens 1024] [--repeat 3]

Ours: exbert_hub.analyses.lens.logit_lens (all 31 hidden states, top-5): the default fast lens and fast=False.
References in the same process: the naive lens (each layer's whole [T, vocab] logits, softmax, topk)
and one forward pass of the model over the same tokens (what analysing the text costs at least).
Prints the times and the ratios; the issue's target is <= 1.5 s for ours.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

import exbert_hub
from exbert_hub.analyses.lens import lens_head, logit_lens


def _median(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


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

    def ours():
        return logit_lens(a, eng, top_k=5)  # fast (bfloat16 candidates, float32 rescoring) by default

    def ours_f32():
        return logit_lens(a, eng, top_k=5, fast=False)

    def naive():
        with torch.inference_mode():
            for s in range(states.shape[0]):
                logits = head.logits(torch.from_numpy(np.ascontiguousarray(states[s])), last=s == states.shape[0] - 1)
                torch.topk(torch.softmax(logits, dim=-1), 5, dim=-1)

    def forward():
        with torch.inference_mode():
            eng.model(input_ids=torch.as_tensor([a.ids]))

    print("load before:", os.getloadavg())
    t_ours, t_f32, t_naive, t_fwd = (_median(f, args.repeat) for f in (ours, ours_f32, naive, forward))
    print("load after:", os.getloadavg(), f"(medians of {args.repeat} runs)")
    print(f"SmolLM2, {n} tokens, {states.shape[0]} hidden states, vocab {eng.config.vocab_size}, "
          f"torch threads {torch.get_num_threads()}")
    print(f"logit lens (ours, all layers, top-5): {t_ours:.2f} s")
    print(f"our lens, fast=False (float32):       {t_f32:.2f} s   ours/float32 = {t_ours / t_f32:.2f}")
    print(f"naive lens (whole logits per layer):  {t_naive:.2f} s   ours/naive = {t_ours / t_naive:.2f}")
    print(f"one forward pass:                     {t_fwd:.2f} s   ours/forward = {t_ours / t_fwd:.1f}")
    print(f"one 64-position block (what the view computes per scroll): {_median(lambda: logit_lens(a, eng, top_k=5, positions=range(64)), args.repeat):.2f} s")
    print(f"target: <= 1.5 s for all layers: {'met' if t_ours <= 1.5 else 'NOT met'}")


if __name__ == "__main__":
    main()
