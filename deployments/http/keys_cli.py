"""``swiftinfer keys add|list|revoke``: the API keys of a SwiftInfer Serve service.

The command lives on the serving side, next to the key file it edits
(``api_keys.py``); ``deployments/cli.py`` adds it to the core ``swiftinfer``
parser. The file is ``--file``, else ``$SWIFTINFER_KEYS_FILE``, else
``~/.config/swiftinfer/keys.json``.
"""

from __future__ import annotations

import datetime as dt
import os
import sys
from pathlib import Path

from deployments.http.api_keys import KeyFileError, add_key, read_keys, revoke_key

ENV = "SWIFTINFER_KEYS_FILE"
DEFAULT = Path.home() / ".config" / "swiftinfer" / "keys.json"


def add_parser(sub) -> None:
    p = sub.add_parser("keys", help="create, list and revoke API keys of the Serve service")
    verbs = p.add_subparsers(dest="verb", required=True)
    add = verbs.add_parser("add", help="create a key and print it (once: only its hash is stored)")
    add.add_argument("name", help="key name, 1-64 of [A-Za-z0-9_.-]")
    add.add_argument("--tenant", default=None, help="tenant the key belongs to (default: the name); keys of one tenant share its conversations")
    verbs.add_parser("list", help="list keys: name, tenant, created, revoked")
    rev = verbs.add_parser("revoke", help="revoke a key (running ingresses refuse it within about a second)")
    rev.add_argument("name")
    for v in (add, verbs.choices["list"], rev):
        v.add_argument("--file", default=None, help=f"key file (default: ${ENV}, else {DEFAULT})")
    p.set_defaults(func=run)


def key_file(arg: str | None) -> Path:
    return Path(arg or os.environ.get(ENV) or DEFAULT).expanduser()


def _when(ts: float | None) -> str:
    return "-" if ts is None else dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def run(args) -> int:
    path = key_file(args.file)
    try:
        if args.verb == "add":
            key = add_key(path, args.name, args.tenant)
            print(key)
            print(f"key {args.name!r} added to {path}; it is shown only now, store it safely", file=sys.stderr)
        elif args.verb == "list":
            keys = read_keys(path) if path.exists() else []
            print(f"{'NAME':<24} {'TENANT':<20} {'CREATED':<21} REVOKED")
            for k in keys:
                print(f"{k.name:<24} {k.tenant:<20} {_when(k.created):<21} {_when(k.revoked)}")
        else:
            k = revoke_key(path, args.name)
            print(f"key {k.name!r} (tenant {k.tenant!r}) revoked at {_when(k.revoked)}")
    except KeyFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
