"""Command line: ``exbert-hub --model NAME [--corpus PATH] [--port N] [--host ADDR] [--share]``
(or ``python -m exbert_hub``)."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from .resolve import DEFAULT_MODEL


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="exbert-hub",
        description="Open the exbert-hub app: attention explorer, head/model/neuron views and an HTTP API for a model.",
    )
    p.add_argument("--model", "-m", default=DEFAULT_MODEL,
                   help=f"Hugging Face Hub id or local folder (default: {DEFAULT_MODEL}, packaged, works offline)")
    p.add_argument("--corpus", default=None,
                   help="corpus for the search tab: a folder built by corpus_builder or a Hub dataset id")
    p.add_argument("--port", type=int, default=None, help="port to listen on (default: the first free one from 7860)")
    p.add_argument("--host", default=None, help="address to bind, e.g. 0.0.0.0 to serve your network (default: 127.0.0.1)")
    p.add_argument("--share", action="store_true", help="create a temporary public gradio.live link")
    p.add_argument("--no-browser", action="store_true", help="do not open a browser tab")
    v = p.add_argument_group("what visitors may load (defaults: the EXBERT_HUB_* variables, see exbert_hub.policy)")
    v.add_argument("--allow-models", default=None, metavar="PATTERNS",
                   help="comma-separated Hub id patterns visitors may load, e.g. 'bert-*,google/*' ('' = only --model)")
    v.add_argument("--allow-corpora", default=None, metavar="PATTERNS",
                   help="Hub dataset patterns visitors may search besides --corpus")
    v.add_argument("--local-paths", action="store_true", default=None,
                   help="let visitors from other machines name folders on this server (off by default)")
    v.add_argument("--max-params", default=None, help="largest model a visitor may load, in parameters (e.g. 1e9)")
    v.add_argument("--memory-budget", default=None,
                   help="memory for models, kept analyses and work in progress together, e.g. 12GB")
    v.add_argument("--concurrency", type=int, default=None, help="calls served at once (default 4)")
    v.add_argument("--max-queue", type=int, default=None, help="calls waiting at most; more get 'queue full' (default 32)")
    return p


def policy_from_args(args):
    """The Policy of the CLI flags, over the EXBERT_HUB_* variables."""
    from .policy import Policy, parse_bytes

    def patterns(raw):
        return None if raw is None else tuple(x.strip() for x in raw.split(",") if x.strip())

    return Policy.from_env(
        models=patterns(args.allow_models), corpora=patterns(args.allow_corpora), local_paths=args.local_paths,
        max_params=None if args.max_params is None else int(float(args.max_params)),
        memory_budget=parse_bytes(args.memory_budget),
    )


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "httpcore", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from .app import launch
    from .errors import ExbertError

    try:
        policy = policy_from_args(args)
    except ValueError as err:
        print(f"exbert-hub: {err}", file=sys.stderr)
        return 2
    kwargs = {"share": args.share, "inbrowser": not args.no_browser, "policy": policy}
    if args.concurrency is not None:
        kwargs["concurrency"] = max(1, args.concurrency)
    if args.max_queue is not None:
        kwargs["max_queue"] = max(1, args.max_queue)
    if args.port is not None:
        kwargs["server_port"] = args.port
    if args.host is not None:
        kwargs["server_name"] = args.host
    try:
        launch(args.model, corpus=args.corpus, **kwargs)
    except ExbertError as err:
        print(f"exbert-hub: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
