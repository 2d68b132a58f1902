"""``swiftinfer``: chat in a terminal, evaluate streaming perplexity, fetch a model,
and (with the service installed) manage its API keys.

The serving package adds its own commands (``deployments/cli.py``: ``keys``), so the
core never imports the serving layer."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

from swiftinfer_core.cli import chat, eval_ppl
from swiftinfer_core.model.catalog import FETCHED

AddParser = Callable[[argparse._SubParsersAction], None]


def main(argv: list[str] | None = None, commands: Iterable[AddParser] = ()) -> int:
    """Parse ``argv`` and run the command; ``commands`` add sub-parsers beyond the core's."""
    parser = argparse.ArgumentParser(prog="swiftinfer", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    chat.add_parser(sub)
    eval_ppl.add_parser(sub)
    for add_parser in commands:
        add_parser(sub)
    fetch = sub.add_parser("fetch-model", help="fetch and convert a model once (the default one, or gemma3-270m); print its folder")
    fetch.add_argument("name", nargs="?", default="default", choices=list(FETCHED))
    fetch.add_argument("--gguf", type=Path, help="convert this GGUF file (checked against the pinned SHA-256) instead of fetching it")
    fetch.add_argument("--tokenizer", type=Path, help="with --gguf: a folder holding this model's tokenizer converted elsewhere "
                       "(where the local transformers loses the GGUF tokenizer's merges)")
    fetch.set_defaults(func=_fetch)
    args = parser.parse_args(argv)
    return args.func(args) or 0


def _fetch(args) -> int:
    from swiftinfer_core.model.catalog import resolve_model

    print(resolve_model(args.name, gguf=args.gguf, tokenizer=args.tokenizer))
    return 0


if __name__ == "__main__":
    sys.exit(main())
