"""Engine overhead: time of engine.analyze / time of the bare forward pass, side by side in one run.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_engine.py [--repeats 7]

For the packaged MiniLM and a random BERT-base-sized masked LM (12 layers, 12 heads, hidden 768) at
16, 128 and 512 tokens. The bare pass is `model(**inputs, output_attentions=True,
output_hidden_states=True)` on the same model object and the same token ids, under inference_mode.
Runs alternate (bare, engine, bare, engine...) so load on the machine hits both alike; short inputs
get more runs (at least about 3 s of them); the ratio of medians is reported. Target: at most 1.25 everywhere.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import exbert_hub  # noqa: E402
from exbert_hub.resolve import _packaged_minilm  # noqa: E402


def prose() -> str:
    from pydoc_data.topics import topics

    return " ".join(topics[k] for k in sorted(topics))


def text_of(tokenizer, n_tokens: int, source: str) -> str:
    """A prefix of ``source`` that tokenizes to exactly ``n_tokens`` tokens (specials included)."""
    enc = tokenizer(source[:20 * n_tokens], add_special_tokens=False, return_offsets_mapping=True)
    specials = len(tokenizer("a")["input_ids"]) - 1
    body = n_tokens - specials
    end = enc["offset_mapping"][body - 1][1]
    text = source[:end]
    got = len(tokenizer(text)["input_ids"])
    assert got == n_tokens, (got, n_tokens)
    return text


def bert_base_folder(root: Path) -> Path:
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    folder = root / "bert-base-random"
    torch.manual_seed(0)
    model = BertForMaskedLM(BertConfig())  # BERT-base: 12 layers, 12 heads, hidden 768, 512 positions
    model.save_pretrained(folder)
    # the packaged MiniLM tokenizer is bert-base-uncased's WordPiece vocabulary
    AutoTokenizer.from_pretrained(_packaged_minilm()).save_pretrained(folder)
    return folder


def measure(engine, text: str, repeats: int) -> tuple[float, float]:
    tok, model = engine.tokenizer, engine.model
    inputs = tok(text, return_tensors="pt")
    inputs = {k: v for k, v in inputs.items() if k in ("input_ids", "attention_mask", "token_type_ids")}

    def bare():
        with torch.inference_mode():
            model(**inputs, output_attentions=True, output_hidden_states=True)

    def ours():
        engine.analyze(text)

    bare(), ours()  # warm up
    start = time.perf_counter()
    bare()
    once = time.perf_counter() - start
    # short inputs get more runs (at least ~3 s of them) so bursts of load elsewhere average out
    repeats = max(repeats, min(200, int(3.0 / max(once, 1e-3))))
    t_bare, t_ours = [], []
    for _ in range(repeats):
        for fn, times in ((bare, t_bare), (ours, t_ours)):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    return statistics.median(t_bare), statistics.median(t_ours)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--sizes", type=int, nargs="+", default=[16, 128, 512])
    args = parser.parse_args()
    source = prose()
    print(f"torch threads: {torch.get_num_threads()}")
    print("| model | tokens | bare forward (ms) | engine.analyze (ms) | ratio |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        models = [exbert_hub.MINILM, str(bert_base_folder(Path(tmp)))]
        for name in models:
            engine = exbert_hub.load(name)
            label = "all-MiniLM-L6-v2 (packaged)" if name == exbert_hub.MINILM else "random BERT-base MLM"
            for n in args.sizes:
                text = text_of(engine.tokenizer, n, source)
                t_bare, t_ours = measure(engine, text, args.repeats)
                print(f"| {label} | {n} | {t_bare * 1e3:.1f} | {t_ours * 1e3:.1f} | {t_ours / t_bare:.3f} |", flush=True)


if __name__ == "__main__":
    main()
