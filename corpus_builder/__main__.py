"""python -m corpus_builder build|publish ... (see --help)."""

from __future__ import annotations

import argparse
import logging
import sys


def _layers(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--layers takes comma-separated integers, got {text!r}") from None


def parser() -> argparse.ArgumentParser:
    from .builder import DEFAULT_EXACT_LIMIT, DEFAULT_SPACY

    p = argparse.ArgumentParser(prog="python -m corpus_builder", description="Build and publish exbert-hub corpora.")
    sub = p.add_subparsers(dest="command", required=True)

    b = sub.add_parser("build", help="build (or resume) a corpus folder",
                       description="Annotate sentences with spaCy, run the model, store token vectors and FAISS "
                                   "indexes as a Hugging Face dataset folder. Rerun the same command to resume.")
    b.add_argument("--model", required=True, help="Hub id or folder of the model (the app must use the same)")
    b.add_argument("--source", default="builtin:python-docs",
                   help="text file or folder, parquet/json/csv file, Hub dataset id, builtin:wordnet (WordNet usage examples, offline: apt-get install wordnet-base), builtin:wordnet-glosses, or builtin:python-docs (default, offline)")
    b.add_argument("--out", required=True, help="output folder (a dataset repository)")
    b.add_argument("--config", default=None, help="Hub dataset config (e.g. wikitext-2-raw-v1)")
    b.add_argument("--split", default="train", help="dataset split (default train)")
    b.add_argument("--column", default="text", help="dataset column holding the text (default text)")
    b.add_argument("--spacy", default=DEFAULT_SPACY, help=f"spaCy pipeline (default {DEFAULT_SPACY})")
    b.add_argument("--max-sentences", type=int, default=None, help="stop after this many sentences")
    b.add_argument("--batch-size", type=int, default=32, help="sentences per forward pass (default 32)")
    b.add_argument("--max-tokens", type=int, default=128, help="skip sentences longer than this many tokens (default 128)")
    b.add_argument("--min-words", type=int, default=3, help="skip sentences with fewer words (default 3)")
    b.add_argument("--layers", type=_layers, default=None, help="comma-separated layers to index (default all)")
    b.add_argument("--workers", type=int, default=1, help="spaCy worker processes running beside the model (0: none)")
    b.add_argument("--shard-chars", type=int, default=50_000, help="characters of text per resumable shard")
    b.add_argument("--exact-limit", type=int, default=DEFAULT_EXACT_LIMIT,
                   help=f"up to this many vectors per index: exact search over float16 vectors; above: compressed indexes (IVF + 5-bit RaBitQ for embeddings, per-head codes for heads) (default {DEFAULT_EXACT_LIMIT:,})")
    b.add_argument("--index-factory", default=None, help="FAISS index_factory string for the compressed tier")
    b.add_argument("--recall-queries", type=int, default=200, help="sampled queries: half tune nprobe, half measure recall@50")
    b.add_argument("--keep-vectors", action="store_true",
                   help="also keep every shard's float16 vectors in vectors/ (large; for analysis or re-indexing)")
    b.add_argument("--two-pass-indexes", action="store_true",
                   help="write every shard's vectors and build the compressed indexes after the shards (the old way); "
                        "default: train on the first vectors and encode each shard as it arrives, no vector files")
    b.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                   help="run spaCy and the model on a Ray cluster (Ray Data): --ray alone starts a local cluster; "
                        "--ray ADDRESS joins a running one (auto, ray://head:10001, head:6379). Needs exbert-hub[ray]")
    b.add_argument("--ray-actors", type=int, default=None,
                   help="model actors (default: one per GPU, else half the cluster's CPUs / --ray-cpus-per-actor)")
    b.add_argument("--ray-gpus-per-actor", type=float, default=None, help="GPUs per model actor (default 1 when the cluster has GPUs, else 0)")
    b.add_argument("--ray-cpus-per-actor", type=float, default=1.0, help="CPUs per model actor (default 1; its torch threads)")
    b.add_argument("--ray-spacy-actors", type=int, default=None,
                   help="spaCy actors, one CPU each (default: the cluster's CPUs the model actors leave)")
    b.add_argument("--ray-num-cpus", type=int, default=None, help="CPUs of the local cluster that --ray alone starts (default all)")
    b.add_argument("--ray-object-store-memory", type=int, default=None, help="object store bytes of that local cluster")
    b.add_argument("--overwrite", action="store_true", help="replace what --out holds")
    b.add_argument("--quiet", action="store_true", help="no progress bars")

    u = sub.add_parser("publish", help="upload a finished corpus folder to the Hugging Face Hub")
    u.add_argument("folder")
    u.add_argument("--repo-id", required=True, help="user/name of the dataset repository")
    u.add_argument("--private", action="store_true")
    u.add_argument("--token", default=None, help="Hub token (default: HF_TOKEN or `hf auth login`)")
    u.add_argument("--message", default=None, help="commit message")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from exbert_hub.errors import ExbertError

    try:
        if args.command == "build":
            from .builder import build

            out = build(args.model, args.source, args.out, config=args.config, split=args.split, column=args.column,
                        spacy=args.spacy, max_sentences=args.max_sentences, batch_size=args.batch_size,
                        max_tokens=args.max_tokens, min_words=args.min_words, layers=args.layers, workers=args.workers,
                        shard_chars=args.shard_chars, exact_limit=args.exact_limit, index_factory=args.index_factory,
                        recall_queries=args.recall_queries, keep_vectors=args.keep_vectors, overwrite=args.overwrite,
                        stream_indexes=not args.two_pass_indexes, progress=not args.quiet, ray=args.ray,
                        ray_actors=args.ray_actors, ray_gpus_per_actor=args.ray_gpus_per_actor,
                        ray_cpus_per_actor=args.ray_cpus_per_actor, ray_spacy_actors=args.ray_spacy_actors, ray_num_cpus=args.ray_num_cpus,
                        ray_object_store_memory=args.ray_object_store_memory)
            print(f"corpus written to {out}")
        else:
            from .publishing import publish

            url = publish(args.folder, args.repo_id, private=args.private, token=args.token, commit_message=args.message)
            print(f"published: {url}")
    except (ExbertError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
