"""``fashion-florence extract --engine ray``: the options, and the hand-off to the job.

Importing this module imports neither Ray nor torch: the command's other engines (and the
server) never need them.
"""

from __future__ import annotations

import argparse
import sys
from typing import Final

ENGINES: Final = ("http", "local", "ray")


def _positive_float(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def add_arguments(cmd: argparse.ArgumentParser) -> None:
    """The Ray engine's options on ``extract`` (ignored by the other engines)."""
    cmd.add_argument(
        "--engine",
        choices=ENGINES,
        default=None,
        help="http: a server (default); local: the service in-process; ray: a Ray Data job "
        "writing parquet files into --out (a directory; tables .csv/.jsonl/.parquet with "
        "'id' and 'path' or 'url' columns are inputs too)",
    )
    ray = cmd.add_argument_group("--engine ray")
    ray.add_argument("--address", help="join this Ray cluster (default: start a local one)")
    ray.add_argument(
        "--actors", type=_positive_int, default=1, help="model copies (Ray actors), default 1"
    )
    ray.add_argument(
        "--gpus-per-actor", type=_positive_float, default=0.0, help="GPUs per model copy"
    )
    ray.add_argument(
        "--cpus-per-actor", type=_positive_float, default=1.0, help="CPUs per model copy"
    )
    ray.add_argument(
        "--batch-size", type=_positive_int, default=None, help="images per engine batch "
        "(default FF_MAX_BATCH_SIZE)",
    )  # fmt: skip
    ray.add_argument(
        "--rows-per-file", type=_positive_int, default=1024,
        help="rows per parquet file at least (the last one may hold fewer); a killed job "
        "redoes at most the rows not yet in a file",
    )  # fmt: skip


def engine_of(args: argparse.Namespace) -> str:
    engine: str | None = args.engine
    if args.local and engine not in (None, "local"):
        print("--local is --engine local: give one of them", file=sys.stderr)
        raise SystemExit(2)
    return "local" if args.local else (engine or "http")


def run(args: argparse.Namespace) -> int:
    from service.jobs.ray_job import run_from_args

    return run_from_args(args)
