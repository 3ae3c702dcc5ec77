"""The ``fashion-florence`` command: ``serve``, ``extract`` and ``model ...``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pydantic import ValidationError

from model_store.cli import register as register_model_commands
from model_store.pipeline_cli import register as register_pipeline_commands
from service.local_job import register as register_extract_command


def _serve(args: argparse.Namespace) -> int:
    from service.settings import Settings, describe_invalid
    from service.supervisor import serve

    overrides = {k: v for k, v in {"host": args.host, "port": args.port}.items() if v is not None}
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        for line in describe_invalid(exc):
            print(f"fashion-florence serve: {line}", file=sys.stderr)
        return 2
    from service.telemetry.logs import configure_logging

    configure_logging(settings.log_format, settings.log_level)
    return serve(settings)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fashion-florence", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="start the HTTP service (settings from FF_* env)")
    serve.add_argument("--host", default=None, help="overrides FF_HOST")
    serve.add_argument("--port", type=int, default=None, help="overrides FF_PORT")
    serve.set_defaults(handler=_serve)
    register_extract_command(commands)
    register_model_commands(commands)
    register_pipeline_commands(commands)  # data build/synth/check, train, eval
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.handler(args))


if __name__ == "__main__":
    raise SystemExit(main())
