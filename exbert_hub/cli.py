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
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "httpcore", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from .app import launch
    from .errors import ExbertError

    kwargs = {"share": args.share, "inbrowser": not args.no_browser}
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
