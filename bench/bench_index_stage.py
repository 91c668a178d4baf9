"""The index stage of a compressed build on its own: each index's ``IndexStream.finish`` (nprobe tuning and
recall through the reader's searches), one thread, from a build stopped just before that stage, so two code
trees can be timed side by side on the same codes (bench/RESULTS.md, S23).

    # once: a 20,000-gloss BERT-base-size build (random weights) stopped before its index stage
    HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false .venv/bin/python bench/bench_index_stage.py snapshot SNAPSHOT_DIR --sentences 20000
    # then, for this tree and an older one (git worktree add OLD_TREE REV), alternating per layer:
    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_index_stage.py finish SNAPSHOT_DIR --kind embedding --layers 0-11 --trees . OLD_TREE
    # where one index's time goes
    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_index_stage.py finish SNAPSHOT_DIR --kind heads --layers 5 --profile

Each finish runs in its own process (``--trees``: with that tree's ``corpus_builder`` first on the path) and
writes its index files into a scratch folder, never into the snapshot. One JSON line per (tree, layer):
seconds and the card entry's nprobe and recall@50.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

FINISH = r"""
import cProfile, json, pstats, re, sys, time
from pathlib import Path
tree, snap, kind, layer, work, heads, profile = sys.argv[1], Path(sys.argv[2]), sys.argv[3], int(sys.argv[4]), Path(sys.argv[5]), int(sys.argv[6]), sys.argv[7] == "1"
sys.path.insert(0, tree)
import faiss, torch
faiss.omp_set_num_threads(1); torch.set_num_threads(1)
from corpus_builder import indexing
from exbert_hub import corpus_format as cf
indexing.TUNING_THREADS = 1
stem = cf.index_stem(kind, layer)
codes = snap / cf.BUILD_DIR / "codes" / stem
last = ".cells.npy" if (codes / "shard-00000.cells.npy").exists() else ".truth.npz"
shards = sorted(int(re.match(r"shard-(\d+)", p.name).group(1)) for p in codes.glob("shard-*" + last))
s = indexing.IndexStream(work, kind, layer, heads, None, 200)
s.codes_dir = codes
s.trained_file = snap / cf.BUILD_DIR / "trained" / f"{stem}.faiss"
s.extra_file = snap / cf.BUILD_DIR / "trained" / f"{stem}.npz"
prof = cProfile.Profile() if profile else None
t0 = time.perf_counter()
if prof: prof.enable()
stats = s.finish(shards)
if prof: prof.disable()
seconds = time.perf_counter() - t0
hc = stats.get("head_cells") or {}
print(json.dumps({"tree": tree, "kind": kind, "layer": layer, "vectors": stats["vectors"], "seconds": round(seconds, 2),
                  "nprobe": stats.get("nprobe"), "recall_at_50_tuning": stats.get("recall_at_50_tuning"),
                  "recall_at_50": stats.get("recall_at_50"), "head_nprobe": hc.get("nprobe"),
                  "head_recall_at_50": hc.get("recall_at_50")}))
if prof: pstats.Stats(prof, stream=sys.stderr).sort_stats("tottime").print_stats(25)
"""


def layers(spec: str) -> list[int]:
    out = []
    for part in spec.split(","):
        a, _, b = part.partition("-")
        out += list(range(int(a), int(b or a) + 1))
    return out


def snapshot(args) -> None:
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "bench"))
    import bench_build
    from corpus_builder import build, builder

    class Stop(Exception):
        pass

    def stop(self, progress):
        raise Stop()

    builder.Builder._index_stage = stop  # the shards, the training and every shard's codes: all but the stage
    model = bench_build.bert_base_folder(Path(tempfile.mkdtemp(prefix="bench-index-stage-")))
    t0 = time.perf_counter()
    try:
        build(str(model), args.source, str(args.snapshot), max_sentences=args.sentences, batch_size=32,
              progress=False, workers=1, overwrite=True)
    except Stop:
        print(json.dumps({"snapshot": str(args.snapshot), "seconds": round(time.perf_counter() - t0, 1)}))
        return
    raise SystemExit("the build ended without an index stage to stop at (fewer vectors than the exact limit?)")


def finish(args) -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-index-stage-out-"))
    for layer in layers(args.layers):
        for tree in args.trees:
            run = subprocess.run([sys.executable, "-c", FINISH, str(Path(tree).resolve()), str(args.snapshot), args.kind,
                                  str(layer), str(work), str(args.heads), "1" if args.profile else "0"],
                                 capture_output=True, text=True)
            if run.returncode:
                raise SystemExit(run.stderr[-3000:])
            print(run.stdout.strip(), flush=True)
            if args.profile:
                print(run.stderr, file=sys.stderr)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("snapshot")
    s.add_argument("snapshot", type=Path)
    s.add_argument("--sentences", type=int, default=20000)
    s.add_argument("--source", default="builtin:wordnet-glosses")
    f = sub.add_parser("finish")
    f.add_argument("snapshot", type=Path)
    f.add_argument("--kind", choices=("heads", "embedding"), default="embedding")
    f.add_argument("--layers", default="5")
    f.add_argument("--heads", type=int, default=12, help="the model's heads (the BERT-base-size model: 12)")
    f.add_argument("--trees", nargs="+", default=[str(ROOT)])
    f.add_argument("--profile", action="store_true")
    args = p.parse_args()
    snapshot(args) if args.command == "snapshot" else finish(args)


if __name__ == "__main__":
    main()
