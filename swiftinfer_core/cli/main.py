"""``swiftinfer``: chat in a terminal, evaluate streaming perplexity, fetch a model, manage API keys."""

from __future__ import annotations

import argparse
import sys

from swiftinfer_core.cli import chat, eval_ppl, keys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="swiftinfer", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    chat.add_parser(sub)
    eval_ppl.add_parser(sub)
    keys.add_parser(sub)
    fetch = sub.add_parser("fetch-model", help="fetch and convert a model once (the default one, or gemma3-270m); print its folder")
    fetch.add_argument("name", nargs="?", default="default", choices=["default", "gemma3-270m"])
    fetch.set_defaults(func=_fetch)
    args = parser.parse_args(argv)
    return args.func(args) or 0


def _fetch(args) -> int:
    from swiftinfer_core.model.catalog import resolve_model

    print(resolve_model(args.name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
