"""The installed ``swiftinfer`` command: the core commands plus the serving side's
(``keys``: the service's API keys)."""

from __future__ import annotations

import sys

from deployments.http import keys_cli
from swiftinfer_core.cli.main import main as core_main


def main(argv: list[str] | None = None) -> int:
    return core_main(argv, commands=(keys_cli.add_parser,))


if __name__ == "__main__":
    sys.exit(main())
