"""The extraction job on Ray Data: ``fashion-florence extract --engine ray SOURCE... --out DIR``.

    items (from_items) -> intake_batch (Ray tasks: fetch, decode, resize)
                       -> ExtractStage (an actor pool: the engine, ``--actors``, ``--gpus-per-actor``)
                       -> write_parquet (one row per item, ``service.jobs.output``)

Ray schedules, retries and streams; nothing here does. Without ``--address`` the job starts a
local Ray instance and stops it at the end; with one it joins that cluster. Rerunning the same
command skips every id already written (``--retry-failed`` redoes the failures), and the job
checks at the end that each id it ran has exactly one row. The summary is the HTTP job's:
done, failed by code, images/s (from the pipeline's start, actors' model load included), plus
Ray's own start-up time.

The driver imports neither torch nor transformers: the stages read the model's image
processor where they run, and the demo model (no ``FF_MODEL_PATH``) is built by a Ray task
before they start. The driver does hold the list of items and the
ids already written in memory (about 200 bytes an item): shard a backfill of many millions
into several jobs, each with its own output directory.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import time
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from pydantic import ValidationError

from fashion_florence_client.catalogue import Summary
from service.jobs.inputs import InputError, Item, collect_items
from service.jobs.output import OUTPUT_SCHEMA, open_output, scan_output
from service.jobs.stages import ExtractStage, intake_batch
from service.settings import Settings

if TYPE_CHECKING:
    import ray.data

log = logging.getLogger(__name__)

#: CPUs each intake task asks Ray for.
INTAKE_CPUS: Final = 1.0
#: An actor that dies (a lost device, a killed process) is restarted this often, and its
#: batch retried as often; bounded, so a batch that kills every actor fails the job
#: instead of looping forever.
ACTOR_RESTARTS: Final = 3
USAGE_STATS_ENV: Final = "RAY_USAGE_STATS_ENABLED"
#: Ray Data splits the items into blocks of about one batch, up to this many.
MAX_BLOCKS: Final = 10_000


class JobError(RuntimeError):
    """The job cannot run as configured; the message says why."""


@dataclass(frozen=True, slots=True)
class RayJobOptions:
    out: str
    address: str | None = None
    actors: int = 1
    gpus_per_actor: float = 0.0
    cpus_per_actor: float = 1.0
    batch_size: int | None = None
    rows_per_file: int = 1024
    retry_failed: bool = False
    progress: bool = True


@dataclass
class JobReport:
    summary: Summary
    startup_s: float = 0.0  # ray.init, when this job started or joined Ray
    missing: list[str] = field(default_factory=list)  # ids run but without a row
    duplicates: Counter[str] = field(default_factory=Counter)  # ids with extra rows

    def render(self) -> str:
        text = self.summary.render() + f"; Ray start-up {self.startup_s:.1f}s"
        if self.missing:
            text += f"\n{len(self.missing)} items have no row: rerun the same command"
        if self.duplicates:
            text += f"\n{len(self.duplicates)} ids have more than one row (a bug: report it)"
        return text

    @property
    def ok(self) -> bool:
        return not (self.summary.failed or self.missing or self.duplicates)


def resolve_demo_model(settings: Settings) -> str:
    """Runs as a Ray task when no FF_MODEL_PATH is set: the demo model's directory, built
    first if needed (as the server would), once, before any stage looks for it."""
    from model_store.demo_cache import ensure_demo_model

    trained = settings.demo_model == "trained"
    return str(ensure_demo_model(settings.demo_model_dir, trained=trained))


def _connect(options: RayJobOptions) -> bool:
    """Join or start Ray; True if this job started it (and so stops it)."""
    import ray

    if ray.is_initialized():
        return False
    # Ray reports usage statistics to its makers unless told not to; the service never
    # phones home, and neither does its job (RAY_USAGE_STATS_ENABLED=1 opts in).
    os.environ.setdefault(USAGE_STATS_ENV, "0")
    ray.init(address=options.address, include_dashboard=False, logging_level=logging.WARNING)
    return True


def resource_shortfall(options: RayJobOptions, cpus: float, gpus: float) -> str | None:
    """Why ``cpus`` and ``gpus`` cannot run the job's actors and one intake task, or None."""
    need_cpus = options.actors * options.cpus_per_actor + INTAKE_CPUS
    need_gpus = options.actors * options.gpus_per_actor
    if need_cpus <= cpus and need_gpus <= gpus:
        return None
    return (
        f"{options.actors} actors x {options.cpus_per_actor:g} CPU / "
        f"{options.gpus_per_actor:g} GPU plus {INTAKE_CPUS:g} CPU for intake need "
        f"{need_cpus:g} CPUs and {need_gpus:g} GPUs; Ray has {cpus:g} and {gpus:g}"
    )


def _check_resources(options: RayJobOptions, *, local: bool) -> None:
    import ray

    resources: dict[str, float] = ray.cluster_resources()  # type: ignore[no-untyped-call]
    message = resource_shortfall(options, resources.get("CPU", 0.0), resources.get("GPU", 0.0))
    if message is None:
        return
    if local:  # nothing will ever add resources: the job would wait forever
        raise JobError(message + " (lower --actors or --cpus-per-actor)")
    log.warning("%s now; waiting for the cluster to scale up", message)


def build_dataset(
    todo: Sequence[Item], settings: Settings, options: RayJobOptions
) -> ray.data.Dataset:
    import ray.data

    batch = options.batch_size or settings.max_batch_size
    blocks = max(1, min(math.ceil(len(todo) / batch), MAX_BLOCKS))
    rows = [{"id": item.id, "source": item.source} for item in todo]
    items = ray.data.from_items(rows, override_num_blocks=blocks)
    prepared = items.map_batches(
        intake_batch,  # type: ignore[arg-type]  # a pyarrow batch (batch_format below)
        batch_size=batch,
        batch_format="pyarrow",
        fn_kwargs={"settings": settings},
        num_cpus=INTAKE_CPUS,
    )
    with warnings.catch_warnings():
        # Bounded restarts have no named parameter yet; Ray 2.60 calls the remote-args
        # route deprecated (for removal in 2.64, hence the extra's upper bound).
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
        return prepared.map_batches(
            ExtractStage,
            batch_size=batch,
            batch_format="pyarrow",
            fn_constructor_kwargs={"settings": settings},
            compute=ray.data.ActorPoolStrategy(size=options.actors),
            num_cpus=options.cpus_per_actor,
            num_gpus=options.gpus_per_actor or None,
            max_restarts=ACTOR_RESTARTS,
            max_task_retries=ACTOR_RESTARTS,
        )


def _execute(todo: Sequence[Item], settings: Settings, options: RayJobOptions) -> None:
    import ray
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = options.progress
    if settings.model_path is None:
        source = ray.get(ray.remote(resolve_demo_model).remote(settings))
        settings = settings.model_copy(update={"model_path": source})
    filesystem, root = open_output(options.out)
    dataset = build_dataset(todo, settings, options)
    dataset.write_parquet(
        root,
        filesystem=filesystem,
        schema=OUTPUT_SCHEMA,
        min_rows_per_file=options.rows_per_file,
    )


def run_job(items: Sequence[Item], options: RayJobOptions, settings: Settings) -> JobReport:
    """Run the items not yet in ``options.out``; the report is read back from the output."""
    before = scan_output(options.out, retry_failed=options.retry_failed)
    todo = [item for item in items if item.id not in before.ids]
    report = JobReport(Summary(skipped=len(items) - len(todo)))
    if not todo:
        return report
    started = time.perf_counter()
    owned = _connect(options)
    try:
        report.startup_s = time.perf_counter() - started
        # A submitted Ray job's driver (KubeRay's entrypoint) joins through RAY_ADDRESS.
        joined = options.address is not None or "RAY_ADDRESS" in os.environ
        _check_resources(options, local=owned and not joined)
        started = time.perf_counter()
        _execute(todo, settings, options)
        report.summary.elapsed_s = time.perf_counter() - started
    finally:
        if owned:
            import ray

            ray.shutdown()
    _account(report, todo, scan_output(options.out))
    return report


def _account(report: JobReport, todo: Sequence[Item], after: Any) -> None:
    for item in todo:
        if item.id in after.failed:
            report.summary.failed[after.failed[item.id]] += 1
        elif item.id in after.succeeded:
            report.summary.done += 1
        else:
            report.missing.append(item.id)
    ran = {item.id for item in todo}
    report.duplicates = Counter({i: n for i, n in after.duplicates.items() if i in ran})


def options_from_args(args: argparse.Namespace) -> RayJobOptions:
    return RayJobOptions(
        out=str(args.out),
        address=args.address,
        actors=args.actors,
        gpus_per_actor=args.gpus_per_actor,
        cpus_per_actor=args.cpus_per_actor,
        batch_size=args.batch_size,
        rows_per_file=args.rows_per_file,
        retry_failed=args.retry_failed,
        progress=not args.no_progress,
    )


def run_from_args(args: argparse.Namespace) -> int:
    try:
        settings = Settings()
        items = collect_items(args.inputs, args.from_file)
    except ValidationError as exc:
        print(f"invalid configuration (FF_* environment variables):\n{exc}", file=sys.stderr)
        return 2
    except InputError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    if not items:
        print("nothing to do: give paths, folders, URLs, tables, or --from-file", file=sys.stderr)
        return 2
    if args.out.is_file():  # most likely the HTTP job's JSONL, given to the wrong engine
        print(f"--out {args.out} is a file: --engine ray writes a directory", file=sys.stderr)
        return 2
    try:
        report = run_job(items, options_from_args(args), settings)
    except JobError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interrupted: rerun the same command to resume ({args.out})", file=sys.stderr)
        return 130
    print(report.render(), file=sys.stderr)
    return 0 if report.ok else 1
