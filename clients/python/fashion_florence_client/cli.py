"""The ``fashion-florence-client`` command: ``extract``, a catalogue job against a server.

    fashion-florence-client extract photos/ --out results.jsonl --server http://florence:8000

The API key, if the service needs one, comes from ``$FASHION_FLORENCE_API_KEY``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from fashion_florence_client import catalogue
from fashion_florence_client.cli_help import document_defaults


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fashion-florence-client",
        description="Fashion Florence client: catalogue jobs against a running service.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    catalogue.register(commands)
    return document_defaults(parser)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.handler(args))


if __name__ == "__main__":
    raise SystemExit(main())
