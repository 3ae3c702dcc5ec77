"""A resumable catalogue job over files, folders and URLs, one JSONL line per item.

    fashion-florence-client extract photos/ more.jpg https://cdn/x.jpg --out results.jsonl

Each item becomes one JSONL line, ``{"item", "attributes", ...}`` or ``{"item", "error":
{"code", "status", "detail"}}``, written and flushed as soon as it completes, so a job
killed at any point loses at most the requests in flight. A rerun reads the output first
and skips every item already in it (``--retry-failed`` redoes the failed ones). Items are
absolute paths or URLs, so a rerun from another directory still matches.

The job talks to a server over HTTP. The server's own ``fashion-florence extract`` is this
same command, registered with an opener that can also serve the job in-process
(``--local``); that mode needs the server's install and so lives with the server.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, NoReturn, TextIO

from fashion_florence_client.client import AsyncClient
from fashion_florence_client.exceptions import ServiceCallError
from fashion_florence_client.protocol import Priority
from fashion_florence_client.retry import RetryPolicy

if TYPE_CHECKING:
    from tqdm import tqdm

IMAGE_SUFFIXES: Final = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif"})
API_KEY_ENV: Final = "FASHION_FLORENCE_API_KEY"  # not an argument: argv shows in `ps`

#: Opens the client a job runs on, from the parsed arguments and the client's options
#: (api_key, timeout_s, retry).
ClientOpener = Callable[
    [argparse.Namespace, dict[str, Any]], AbstractAsyncContextManager[AsyncClient]
]


def _is_url(item: str) -> bool:
    return item[:8].lower().startswith(("http://", "https://"))


def expand_inputs(arguments: Iterable[str]) -> list[str]:
    """URLs as given; folders to their image files (recursive, sorted); files to absolute
    paths. Duplicates dropped, first occurrence kept. A missing path stays an item: it
    gets an ``invalid_input`` line rather than vanishing from the report."""
    items: dict[str, None] = {}
    for raw in arguments:
        if _is_url(raw):
            items[raw] = None
            continue
        path = Path(raw).expanduser().resolve()
        if path.is_dir():
            for child in sorted(path.rglob("*")):
                if child.is_file() and child.suffix.lower() in IMAGE_SUFFIXES:
                    items[str(child)] = None
        else:
            items[str(path)] = None
    return list(items)


def read_list(path: Path) -> list[str]:
    """One item per line; blank lines and ``#`` comments ignored."""
    lines = (line.strip() for line in path.read_text(encoding="utf-8").splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def completed_items(out: Path, *, retry_failed: bool) -> set[str]:
    """Items already in ``out``. Repairs a last line cut short by a kill (dropped: that
    item is simply redone); with ``retry_failed`` removes failed lines so they are redone."""
    if not out.exists():
        return set()
    raw = out.read_bytes()
    if raw and not raw.endswith(b"\n"):
        raw = raw[: raw.rfind(b"\n") + 1]
        out.write_bytes(raw)
    done: set[str] = set()
    kept: list[bytes] = []
    for line in raw.splitlines(keepends=True):
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if not isinstance(record, dict) or not isinstance(record.get("item"), str):
            continue
        if retry_failed and "error" in record:
            continue
        done.add(record["item"])
        kept.append(line)
    if retry_failed and len(kept) != len(raw.splitlines()):
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_bytes(b"".join(kept))
        os.replace(tmp, out)  # atomic: a kill here leaves the old file or the new one
    return done


@dataclass
class Summary:
    skipped: int = 0
    done: int = 0
    failed: Counter[str] = field(default_factory=Counter)
    elapsed_s: float = 0.0

    @property
    def processed(self) -> int:
        return self.done + sum(self.failed.values())

    @property
    def images_per_s(self) -> float:
        return self.processed / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def render(self) -> str:
        failed = sum(self.failed.values())
        by_code = ", ".join(f"{code} {n}" for code, n in self.failed.most_common())
        return (
            f"done {self.done}, failed {failed}" + (f" ({by_code})" if by_code else "")
            + f", skipped {self.skipped} (already in the output); "
            f"{self.processed} in {self.elapsed_s:.1f}s = {self.images_per_s:.2f} images/s"
            + self._next_step(failed)
        )  # fmt: skip

    def _next_step(self, failed: int) -> str:
        """A plain rerun skips failed items too (they are in the output): say how to redo them."""
        if not failed:
            return ""
        step = f"\nthe {failed} failed item(s) are kept as errors; rerun with --retry-failed to redo them"
        if self.failed.get("connection_failed"):
            step += " (connection_failed: check that the service is up at --server)"
        return step


def result_line(item: str, result: Any) -> dict[str, Any]:
    if isinstance(result, ServiceCallError):
        error = {"code": result.code, "status": result.status, "detail": result.detail}
        return {"item": item, "error": error, "request_id": result.request_id}
    return {"item": item, **result.model_dump(mode="json", exclude={"timing_ms"})}


class _Progress:
    """tqdm's bar (rate, ETA) when tqdm is installed: the ``cli`` extra, and the server's
    install. Without it a plain line every few seconds, so the client's own dependencies
    stay httpx and pydantic."""

    PLAIN_EVERY_S: Final = 5.0

    def __init__(self, total: int, stream: TextIO, *, enabled: bool) -> None:
        self.total = total
        self.count = 0
        self._stream = stream
        self._enabled = enabled
        self._started = self._shown = time.monotonic()
        self._bar: tqdm[NoReturn] | None = None
        if enabled:
            try:
                from tqdm import tqdm
            except ImportError:
                return
            self._bar = tqdm(total=total, unit="img", file=stream, smoothing=0.1)

    def advance(self, failed: int) -> None:
        self.count += 1
        if self._bar is not None:
            if failed:
                self._bar.set_postfix(failed=failed, refresh=False)
            self._bar.update(1)
            return
        now = time.monotonic()
        if self._enabled and (now - self._shown >= self.PLAIN_EVERY_S or self.count == self.total):
            self._shown = now
            rate = self.count / max(now - self._started, 1e-9)
            line = f"{self.count}/{self.total} images, {failed} failed, {rate:.1f} images/s"
            print(line, file=self._stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


async def run_job(
    client: AsyncClient,
    items: Sequence[str],
    out: Path,
    *,
    concurrency: int,
    retry_failed: bool = False,
    progress: bool = True,
    stream: TextIO | None = None,
) -> Summary:
    """Run ``items`` not already in ``out`` and append their lines; progress goes to
    ``stream`` (stderr when None, looked up per call so redirections made after import,
    as by a test's capture, are honoured)."""
    done = completed_items(out, retry_failed=retry_failed)
    todo = [item for item in items if item not in done]
    summary = Summary(skipped=len(items) - len(todo))
    started = time.perf_counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    bar = _Progress(len(todo), stream or sys.stderr, enabled=progress)
    try:
        with out.open("a", encoding="utf-8") as sink:
            async for index, result in client.iter_extract(todo, concurrency=concurrency):
                sink.write(json.dumps(result_line(todo[index], result)) + "\n")
                sink.flush()  # a killed job keeps every line written so far
                if isinstance(result, ServiceCallError):
                    summary.failed[result.code] += 1
                else:
                    summary.done += 1
                bar.advance(failed=sum(summary.failed.values()))
    finally:
        bar.close()
        summary.elapsed_s = time.perf_counter() - started
    return summary


def server_client(args: argparse.Namespace, options: dict[str, Any]) -> AsyncClient:
    """The default opener: a client on ``--server``."""
    return AsyncClient(args.server, **options)


async def _main(args: argparse.Namespace, items: list[str], open_client: ClientOpener) -> Summary:
    options: dict[str, Any] = {
        "api_key": os.environ.get(API_KEY_ENV) or None,
        "timeout_s": args.timeout,
        "retry": RetryPolicy(max_attempts=args.retries + 1),
        # A catalogue job is a backfill: it must not delay a shop page's interactive calls.
        "priority": Priority.BATCH,
    }
    job = {"concurrency": args.concurrency, "retry_failed": args.retry_failed}
    job["progress"] = not args.no_progress
    async with open_client(args, options) as client:
        return await run_job(client, items, args.out, **job)


def _run(args: argparse.Namespace, *, open_client: ClientOpener) -> int:
    arguments = list(args.inputs)
    if args.from_file is not None:
        arguments += read_list(args.from_file)
    if not arguments:
        print("nothing to do: give paths, folders or URLs, or --from-file", file=sys.stderr)
        return 2
    items = expand_inputs(arguments)
    try:
        summary = asyncio.run(_main(args, items, open_client))
    except KeyboardInterrupt:
        print(f"interrupted: rerun the same command to resume ({args.out})", file=sys.stderr)
        return 130
    print(summary.render(), file=sys.stderr)
    return 1 if summary.failed else 0


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def register(
    commands: Any, *, open_client: ClientOpener = server_client
) -> argparse.ArgumentParser:
    """Add ``extract`` to a command's subcommands; returns its parser, so a caller can add
    the options its ``open_client`` reads (the server adds ``--local``)."""
    cmd: argparse.ArgumentParser = commands.add_parser(
        "extract",
        help="extract attributes for many images into JSONL (resumable)",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    cmd.add_argument("inputs", nargs="*", metavar="PATH_OR_URL", help="image files, folders, URLs")
    cmd.add_argument(
        "--from-file", type=Path, help="a list of paths/URLs, one per line (default: none)"
    )
    cmd.add_argument("--out", type=Path, required=True, help="JSONL output; reruns resume it")
    cmd.add_argument(
        "--concurrency", type=_positive, default=8, help="requests in flight (default 8)"
    )
    cmd.add_argument("--server", default="http://127.0.0.1:8000", help="service base URL")
    cmd.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    cmd.add_argument("--retries", type=int, default=4, help="retries on 503/504/network errors")
    cmd.add_argument("--retry-failed", action="store_true", help="redo items that failed before")
    cmd.add_argument("--no-progress", action="store_true", help="no progress bar")
    cmd.epilog = f"The API key, if the service needs one, is read from ${API_KEY_ENV}."
    cmd.set_defaults(handler=functools.partial(_run, open_client=open_client))
    return cmd
