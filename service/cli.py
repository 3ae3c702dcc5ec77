"""The ``fashion-florence`` command: ``serve``, ``extract`` and ``model ...``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError

from fashion_florence_client.cli_help import document_defaults
from model_store.cli import register as register_model_commands
from model_store.pipeline_cli import register as register_pipeline_commands
from model_store.predictors import PredictorFactory
from service.local_job import register as register_extract_command


def _decoding_runs(
    model: str,
    *,
    adapter: Path | None = None,
    device: str | None = None,
    max_new_tokens: int | None = None,
) -> dict[str, PredictorFactory]:
    """``eval``'s and ``train``'s predictors on the serving engine (imported when used:
    it brings torch, which ``--help`` and the data commands do without)."""
    from service.evaluation import decoding_runs

    return decoding_runs(model, adapter=adapter, device=device, max_new_tokens=max_new_tokens)


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
    serve.add_argument(
        "--host", default=None, help="listen address (default: FF_HOST, else 0.0.0.0)"
    )
    serve.add_argument(
        "--port", type=int, default=None, help="listen port (default: FF_PORT, else 8000)"
    )
    serve.set_defaults(handler=_serve)
    register_extract_command(commands)
    register_model_commands(commands)
    register_pipeline_commands(commands, _decoding_runs)  # data build/synth/check, train, eval
    return document_defaults(parser)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.handler(args))


if __name__ == "__main__":
    raise SystemExit(main())
