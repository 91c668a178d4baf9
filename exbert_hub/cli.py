"""Command line: ``exbert-hub --model NAME [--corpus PATH] [--port N] [--host ADDR] [--share]``
(or ``python -m exbert_hub``) opens the app; the Hub side has subcommands (see :func:`hub_parser`):

    exbert-hub space deploy --model ID [--corpus DATASET] --repo-id user/name [--private] [--hardware H] [--dry-run --out DIR]
    exbert-hub card snippet --model ID --space user/name [--text ...] [--view explorer|head] [--image-out FILE]
    exbert-hub card add --model ID --space user/name [--text ...]
    exbert-hub export --model ID --text ... --view head --out FILE.{html,svg,png,npz,json} [--layer L --heads 0,3 --token T]
"""

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
    p.add_argument("--device", default=None, choices=["auto", "cpu", "cuda"],
                   help="where models run (default auto: cuda when present); sets EXBERT_HUB_DEVICE")
    p.add_argument("--dtype", default=None, choices=["auto", "float32", "bfloat16", "float16"],
                   help="model precision (default auto: bfloat16/float16 on a GPU, float32 on CPU); sets EXBERT_HUB_DTYPE")
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


HUB_COMMANDS = ("space", "card", "export")


def _index_list(raw: str | None) -> list[int] | None:
    if raw is None:
        return None
    try:
        return [int(x) for x in raw.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a comma-separated list of whole numbers (e.g. 0,3,5)") from None


def hub_parser() -> argparse.ArgumentParser:
    """The Hub subcommands: space deploy, card snippet, card add, export."""
    p = argparse.ArgumentParser(prog="exbert-hub", description="exbert-hub on the Hugging Face Hub and off the app.")
    sub = p.add_subparsers(dest="command", required=True)
    space = sub.add_parser("space", help="the app as a Hugging Face Space").add_subparsers(dest="action", required=True)
    d = space.add_parser("deploy", help="create or update a Space running exbert-hub (standard HF auth)")
    d.add_argument("--model", required=True, help="Hub model id the Space opens (e.g. bert-base-uncased)")
    d.add_argument("--corpus", default=None, help="Hub dataset id of a corpus built by corpus_builder")
    d.add_argument("--repo-id", default=None, help="the Space: user/name (not needed with --dry-run)")
    d.add_argument("--private", action="store_true", help="a private Space")
    d.add_argument("--hardware", default=None, help="e.g. cpu-upgrade, t4-small (default: the free CPU)")
    d.add_argument("--dry-run", action="store_true", help="only write the Space's folder (with --out)")
    d.add_argument("--out", default=None, help="folder to write the Space into (--dry-run), e.g. spaces")
    d.add_argument("--no-wheel", action="store_true", help="--dry-run without building the package's wheel")
    card = sub.add_parser("card", help="the model-card widget").add_subparsers(dest="action", required=True)
    for name, text in (("snippet", "print the card's Markdown and write its preview picture"),
                       ("add", "open a pull request adding the widget to the model's card")):
        c = card.add_parser(name, help=text)
        c.add_argument("--model", required=True, help="Hub model id whose card gets the widget")
        c.add_argument("--space", required=True, help="the exbert-hub Space the widget links to (user/name)")
        c.add_argument("--text", default=None, help="the sample sentence (default: a short English one)")
        c.add_argument("--view", default="explorer", choices=("explorer", "head"))
        c.add_argument("--layer", type=int, default=None)
        c.add_argument("--heads", type=_index_list, default=None, help="e.g. 0,3")
        c.add_argument("--load", default=None, help="model to run for the picture (a local copy of --model; default --model)")
        if name == "snippet":
            c.add_argument("--image-out", default="exbert-hub-preview.png", help="where to write the preview PNG ('' for none)")
            c.add_argument("--image-url", default=None, help="the preview's address in the Markdown (default: the model repo's)")
    e = sub.add_parser("export", help="save a view as .html, .svg, .png, .npz or .json")
    e.add_argument("--model", "-m", default=DEFAULT_MODEL)
    e.add_argument("--text", required=True)
    e.add_argument("--pair", default=None, help="sentence B (encoders)")
    e.add_argument("--view", default="head", choices=("explorer", "head", "model", "neuron"))
    e.add_argument("--out", required=True, help="the file; its suffix is the format")
    e.add_argument("--layer", type=int, default=0)
    e.add_argument("--heads", type=_index_list, default=None, help="e.g. 0,3 (default: all)")
    e.add_argument("--token", type=int, default=None)
    e.add_argument("--threshold", type=float, default=0.7)
    e.add_argument("--hide-special", action="store_true")
    e.add_argument("--stack", default=None, help="encoder, decoder or cross (encoder-decoders)")
    return p


def hub_main(argv: list[str]) -> int:
    args = hub_parser().parse_args(argv)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    # the subcommands have no --device/--dtype flags: the EXBERT_HUB_* variables still apply
    for var, value in (("EXBERT_HUB_DEVICE", getattr(args, "device", None)), ("EXBERT_HUB_DTYPE", getattr(args, "dtype", None))):
        if value is not None:  # read by exbert_hub.engine.placement for every model this process loads
            os.environ[var] = value
    from .errors import ExbertError

    try:
        if args.command == "space":
            from .hub.deploy import SpaceConfig, deploy_space, space_folder

            if args.dry_run:
                if not args.out:
                    raise ExbertError("--dry-run needs --out DIR (the folder to write the Space into)")
                out = space_folder(args.out, SpaceConfig(model=args.model, corpus=args.corpus), wheel=not args.no_wheel)
                print(f"wrote the Space's folder to {out}")
                return 0
            if not args.repo_id:
                raise ExbertError("space deploy needs --repo-id user/name (or --dry-run --out DIR)")
            done = deploy_space(args.model, args.repo_id, corpus=args.corpus, private=args.private,
                                hardware=args.hardware, folder=args.out)
            print(f"deployed {done.repo_id}: {done.url} (app: {done.app_url})")
            return 0
        if args.command == "card":
            from .hub import card as cards
            from .engine import load

            text = args.text or cards.SAMPLE_TEXT
            make_png = args.action == "add" or bool(args.image_out)
            png = None
            if make_png:
                analysis = load(args.load or args.model).analyze(text)
                png = cards.preview_png(analysis, args.view, layer=args.layer, heads=args.heads)
            if args.action == "snippet":
                if png is not None:
                    with open(args.image_out, "wb") as f:
                        f.write(png)
                    print(f"<!-- preview written to {args.image_out}: upload it as {cards.PREVIEW_PATH} in {args.model} -->",
                          file=sys.stderr)
                print(cards.snippet(args.model, args.space, text=text, view=args.view, layer=args.layer,
                                    heads=args.heads, image=args.image_url), end="")
                return 0
            res = cards.add_to_card(args.model, args.space, png, text=text, view=args.view, layer=args.layer, heads=args.heads)
            print(f"{args.model}: the card already has the exbert-hub widget; nothing changed" if res.already
                  else f"opened a pull request on {args.model}: {res.pr_url}")
            return 0
        from .engine import load
        from .hub.export import export

        analysis = load(args.model).analyze(args.text, pair=args.pair)
        path = export(analysis, args.view, args.out, layer=args.layer, heads=args.heads, token=args.token,
                      threshold=args.threshold, hide_special=args.hide_special, stack=args.stack)
        print(f"wrote {path}")
        return 0
    except ExbertError as err:
        print(f"exbert-hub: {err}", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in HUB_COMMANDS:
        return hub_main(argv)
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "httpcore", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    for var, value in (("EXBERT_HUB_DEVICE", args.device), ("EXBERT_HUB_DTYPE", args.dtype)):
        if value is not None:  # read by exbert_hub.engine.placement for every model this process loads
            os.environ[var] = value
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
