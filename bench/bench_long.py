"""Long inputs on SmolLM2: engine.analyze vs model(..., output_attentions=True), side by side.

Each measurement runs in its own subprocess (so its peak RSS is its own): the process loads the model,
makes one short warm-up pass, then times one call on T tokens of English prose (Python's documentation,
shipped with CPython) and reports its peak RSS (the whole process: what a server would need) and the
increase over the RSS after loading (what the call itself needed).

    .venv/bin/python bench/bench_long.py [--tokens 512 1024 2048 3072 4096 8192] [--repeats 1]
    .venv/bin/python bench/bench_long.py --ab 512 --repeats 7     # time only: both alternated in ONE process

The reference keeps every attention matrix (30 layers x 9 heads x T^2 float32: 18 GB at 4,096 tokens).
When the machine cannot hold that (MemAvailable), the reference is not run: its peak is then given two
ways: a floor (the process after loading plus the arrays the call returns, attentions, hidden states and
logits, all alive at once: it cannot need less) and an estimate (a quadratic
a + b T + c T^2 fitted to its peaks measured at the smaller sizes of the same run); memory ratios are
given against both.

--ab T: one process loads the model once and alternates engine.analyze and the reference call on the
same T tokens, --repeats times each (after one warm-up of each): medians and the ratio of medians, so
that the load of a shared machine falls on both alike.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _peak_mb() -> float:
    """This process's own high-water RSS (VmHWM). ru_maxrss would include the high-water mark of the process
    that spawned it (Linux keeps it across vfork + exec); the driver here is small, but a big one is not."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmHWM:"))


def _text(tokenizer, n: int) -> str:
    from pydoc_data.topics import topics

    words, ids = [], []
    for value in topics.values():  # just enough prose for n tokens
        words.append(value)
        ids = tokenizer(" ".join(words))["input_ids"]
        if len(ids) > n:
            break
    return tokenizer.decode(ids[:n])


def child(mode: str, n: int) -> dict:
    import torch

    import exbert_hub

    engine = exbert_hub.load(exbert_hub.SMOLLM2, max_tokens=n)
    text = _text(engine.tokenizer, n + 8)
    ids = torch.as_tensor(engine.tokenizer(text)["input_ids"][:n])[None]
    with torch.inference_mode():  # warm-up (kernels, allocator)
        engine.model(input_ids=ids[:, :32])
    if mode == "engine":
        engine.analyze("warm up")
    base = _rss_mb()
    t0 = time.perf_counter()
    if mode == "engine":
        a = engine.analyze(text, truncate=True)
        tokens = len(a.tokens)
    else:
        with torch.inference_mode():
            out = engine.model(input_ids=ids, attention_mask=torch.ones_like(ids), output_attentions=True,
                               output_hidden_states=True)
        tokens = int(ids.shape[1])
        assert len(out.attentions) == engine.num_layers
    seconds = time.perf_counter() - t0
    peak = _peak_mb()
    return {"mode": mode, "tokens": tokens, "seconds": seconds, "peak_mb": peak, "call_mb": peak - base}


def ab(n: int, repeats: int) -> None:
    import statistics

    import torch

    import exbert_hub

    engine = exbert_hub.load(exbert_hub.SMOLLM2, max_tokens=max(n, 64))
    text = _text(engine.tokenizer, n + 8)
    a = engine.analyze(text, truncate=True)
    ids = torch.as_tensor(a.ids)[None]

    def reference() -> None:
        with torch.inference_mode():
            out = engine.model(input_ids=ids, attention_mask=torch.ones_like(ids), output_attentions=True,
                               output_hidden_states=True)
        assert len(out.attentions) == engine.num_layers

    calls = {"engine": lambda: engine.analyze(text, truncate=True), "reference": reference}
    times: dict[str, list[float]] = {k: [] for k in calls}
    cpu: dict[str, list[float]] = {k: [] for k in calls}  # this process's CPU seconds (all its threads)
    for name, fn in calls.items():  # warm-up
        fn()
    for _ in range(repeats):
        for name, fn in calls.items():
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            times[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    med = {k: statistics.median(v) for k, v in times.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    print(f"T={len(a.tokens)} alternated x{repeats}: engine median {med['engine']:.3f} s "
          f"(all {', '.join(f'{x:.2f}' for x in times['engine'])}); reference median {med['reference']:.3f} s "
          f"(all {', '.join(f'{x:.2f}' for x in times['reference'])}); time ratio {med['engine'] / med['reference']:.3f}"
          f"; min ratio {min(times['engine']) / min(times['reference']):.3f}; CPU s medians engine "
          f"{med_cpu['engine']:.2f} reference {med_cpu['reference']:.2f} (ratio {med_cpu['engine'] / med_cpu['reference']:.3f})")


def _available_mb() -> float:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    return 0.0


def run(mode: str, n: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", mode, str(n)], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{mode} at {n} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _reference_floor_mb(n: int, base_mb: float) -> float:
    """What the reference's process holds at once, at least: the process after loading plus the arrays the
    call returns (attentions 30 x 9 x T^2, hidden states 31 x T x 576, logits T x 49,152; float32)."""
    return base_mb + (30 * 9 * n * n + 31 * n * 576 + n * 49_152) * 4 / 2**20


def main() -> None:
    import numpy as np

    p = argparse.ArgumentParser()
    p.add_argument("--tokens", type=int, nargs="+", default=[512, 1024, 2048, 3072, 4096, 8192])
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--child", nargs=2, metavar=("MODE", "TOKENS"))
    p.add_argument("--ab", type=int, metavar="TOKENS")
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]))))
        return
    if args.ab:
        ab(args.ab, args.repeats)
        return
    rows = []
    for n in args.tokens:
        attn_mb = 30 * 9 * n * n * 4 / 2**20
        # alternated, best of --repeats each: other work on a shared machine slows one run, not a best-of
        best: dict[str, dict] = {}
        for _ in range(args.repeats):
            modes = ["engine"]
            if attn_mb * 1.2 + 3000 < 0.85 * _available_mb():
                modes.append("reference")
            for mode in modes:
                r = run(mode, n)
                if mode not in best or r["seconds"] < best[mode]["seconds"]:
                    best[mode] = r
        ours, ref = best["engine"], best.get("reference")
        rows.append((n, ours, ref))
        print(f"T={n:5d}  engine {ours['seconds']:6.1f} s peak {ours['peak_mb']:7.0f} MB (call {ours['call_mb']:6.0f})"
              + (f"  | reference {ref['seconds']:6.1f} s peak {ref['peak_mb']:7.0f} MB  | memory ratio "
                 f"{ours['peak_mb'] / ref['peak_mb']:.3f}  time ratio {ours['seconds'] / ref['seconds']:.2f}"
                 if ref else "  | reference not run (memory)"), flush=True)
    measured = [(n, ref["peak_mb"]) for n, _, ref in rows if ref]
    fit = np.polyfit(*zip(*measured), 2) if len(measured) >= 3 else None
    if fit is not None:
        print(f"reference peak fit (MB) = {fit[2]:.1f} + {fit[1]:.4f} T + {fit[0]:.6f} T^2 "
              f"over T = {', '.join(str(n) for n, _ in measured)}")
    print("\n| tokens | analyze s | reference s | time ratio | analyze peak MB | reference peak MB | memory ratio |")
    print("|---|---|---|---|---|---|---|")
    for n, ours, ref in rows:
        if ref:
            print(f"| {n} | {ours['seconds']:.1f} | {ref['seconds']:.1f} | {ours['seconds'] / ref['seconds']:.2f} | "
                  f"{ours['peak_mb']:.0f} | {ref['peak_mb']:.0f} (measured) | {ours['peak_mb'] / ref['peak_mb']:.3f} |")
            continue
        floor = _reference_floor_mb(n, ours["peak_mb"] - ours["call_mb"])
        ref_text, ratio = f">= {floor:.0f} (floor: its arrays + process)", f"<= {ours['peak_mb'] / floor:.3f}"
        if fit is not None:
            est = float(np.polyval(fit, n))
            ref_text += f"; ~{est:.0f} (quadratic fit, estimate)"
            ratio += f"; ~{ours['peak_mb'] / est:.3f}"
        print(f"| {n} | {ours['seconds']:.1f} | not run | n/a | {ours['peak_mb']:.0f} | {ref_text} | {ratio} |")


if __name__ == "__main__":
    main()
