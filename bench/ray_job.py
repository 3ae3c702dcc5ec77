"""The Ray job against the other ways to run a catalogue: images/s over the same photos.

    python -m bench.ray_job [--photos DIR] [--model-dir DIR] [--batch-size 16] [--out JSON]

Same model, same batch size (``FF_MAX_BATCH_SIZE``) and the same photos (the 372 test
photos by default) for every row:

* ``ray.init`` alone (a local Ray instance with this machine's CPUs), once;
* the Ray job (``run_job``, as ``extract --engine ray``) with 1 actor (1 CPU) and with 2
  actors (0.5 CPU each: with the intake tasks' CPU that is all of a 2-core machine), one
  file per batch: the time to its first file is its fixed cost (actors loading and warming
  the model, the first blocks), the rate after it the steady throughput;
* ``extract --local`` (the service in-process) and the HTTP job against ``fashion-florence
  serve`` on 127.0.0.1 (both with the model loaded first, as their summaries count).

Prints a Markdown table and writes the figures as JSON. Nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from bench.models import prepare_model
from bench.servers import free_port, spawn
from fashion_florence_client import catalogue
from fashion_florence_client.client import AsyncClient
from service import local_job
from service.jobs.inputs import collect_items
from service.jobs.ray_job import RayJobOptions, run_job
from service.settings import Settings

REPO: Final = Path(__file__).resolve().parents[1]
PHOTOS: Final = REPO.parent / "shared" / "data" / "clothing-small" / "test"
HTTP_CONCURRENCY: Final = 32  # two batches in flight, so the server's batches can fill


class _FirstFile:
    """Watches an output directory from a thread: when its first parquet file appeared."""

    def __init__(self, out: Path) -> None:
        self._out = out
        self.at: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self._stop.wait(0.05):
            if self._out.is_dir() and any(self._out.glob("*.parquet")):
                self.at = time.perf_counter()
                return

    def __enter__(self) -> _FirstFile:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def _ray_run(items: list[Any], settings: Settings, actors: int, work: Path) -> dict[str, Any]:
    """One job over ``items``; "fixed" is the time to its first file (one batch of rows:
    the actors loading and warming the model, the first blocks), "steady" the rate after."""
    out = work / f"ray-{actors}"
    batch = settings.max_batch_size
    options = RayJobOptions(
        out=str(out),
        actors=actors,
        cpus_per_actor=1.0 if actors == 1 else 0.5,
        rows_per_file=batch,
        progress=False,
    )
    started = time.perf_counter()
    with _FirstFile(out) as first:
        report = run_job(items, options, settings)
    elapsed = time.perf_counter() - started
    if report.summary.processed != len(items) or report.missing:
        raise RuntimeError(f"the Ray job did not run every photo: {report.render()}")
    row: dict[str, Any] = {
        "images": len(items),
        "wall_s": elapsed,
        "images_per_s": len(items) / elapsed,
        "summary": report.render(),
    }
    if first.at is not None and elapsed > first.at - started:
        row["fixed_s"] = first.at - started
        row["steady_images_per_s"] = (len(items) - batch) / (elapsed - row["fixed_s"])
    return row


def ray_rows(photos: Path, model: Path, batch: int, work: Path) -> dict[str, Any]:
    import ray

    settings = Settings(model_path=str(model), max_batch_size=batch)
    items = collect_items([str(photos)])
    # The workers start from this environment and must import this checkout.
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(REPO), str(REPO / "clients" / "python"), os.environ.get("PYTHONPATH", "")]
    )
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"  # nothing leaves the machine
    started = time.perf_counter()
    ray.init(include_dashboard=False, logging_level=logging.WARNING)
    figures: dict[str, Any] = {"ray_init_s": time.perf_counter() - started}
    try:
        for actors in (1, 2):
            figures[f"ray_{actors}"] = _ray_run(items, settings, actors, work)
    finally:
        ray.shutdown()
    return figures


def _timed_job(
    open_client: Callable[[], Any], items: list[str], out: Path, fixed_s: float | None = None
) -> dict[str, Any]:
    """The catalogue job's own figures; "fixed" is the model load before it (the in-process
    service's start, or the server's cold start when given)."""

    async def run() -> tuple[catalogue.Summary, float]:
        started = time.perf_counter()
        async with open_client() as client:
            loaded = time.perf_counter() - started
            summary = await catalogue.run_job(
                client, items, out, concurrency=HTTP_CONCURRENCY, progress=False
            )
        return summary, loaded

    summary, loaded = asyncio.run(run())
    if summary.processed != len(items):
        raise RuntimeError(f"the job did not run every photo: {summary.render()}")
    return {
        "images": len(items),
        "wall_s": summary.elapsed_s,
        "images_per_s": summary.images_per_s,
        "fixed_s": loaded if fixed_s is None else fixed_s,
        "steady_images_per_s": summary.images_per_s,
        "summary": summary.render(),
    }


def service_rows(photos: Path, model: Path, batch: int, work: Path) -> dict[str, Any]:
    env = {"FF_MODEL_PATH": str(model), "FF_MAX_BATCH_SIZE": str(batch), "FF_LOG_FORMAT": "plain"}
    items = catalogue.expand_inputs([str(photos)])
    for name, value in env.items():
        os.environ[name] = value
    local = _timed_job(local_job.local_client, items, work / "local.jsonl")
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "service.cli",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    with spawn(argv, env, port, cwd=REPO) as server:
        http = _timed_job(
            lambda: AsyncClient(server.base_url), items, work / "http.jsonl", server.cold_start_s
        )
    return {"local": local, "http": http}


def markdown(figures: dict[str, Any]) -> str:
    lines = [
        "| run | images | wall s | images/s | fixed s (not in wall for local/HTTP) | steady images/s |",
        "|---|---|---|---|---|---|",
    ]
    for key, label in (
        ("ray_1", "Ray job, 1 actor x 1 CPU"),
        ("ray_2", "Ray job, 2 actors x 0.5 CPU"),
        ("local", "`extract --local`"),
        ("http", f"HTTP job, concurrency {HTTP_CONCURRENCY}, against `serve`"),
    ):
        row = figures[key]
        fixed = f"{row['fixed_s']:.1f}" if "fixed_s" in row else "-"
        steady = f"{row['steady_images_per_s']:.1f}" if "steady_images_per_s" in row else "-"
        lines.append(
            f"| {label} | {row['images']} | {row['wall_s']:.1f} | {row['images_per_s']:.1f} "
            f"| {fixed} | {steady} |"
        )
    lines.append(f"\n`ray.init` (local instance): {figures['ray_init_s']:.1f} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=Path, default=PHOTOS)
    parser.add_argument("--model-dir", type=Path, help="default: the trained demo, built here")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="ff-bench-ray-") as tmp:
        work = Path(tmp)
        model = args.model_dir or prepare_model(work / "model")
        figures = {
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs (load {os.getloadavg()[0]:.1f})",
            "batch_size": args.batch_size,
            **ray_rows(args.photos, model, args.batch_size, work),
            **service_rows(args.photos, model, args.batch_size, work),
        }
    print(markdown(figures))
    print(figures["machine"])
    if args.out is not None:
        args.out.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
