"""``fashion-florence extract``: the client's catalogue job, plus ``--local``.

    fashion-florence extract photos/ --out results.jsonl --local

The job itself (inputs, resumable JSONL, progress, summary, every other option) is
:mod:`fashion_florence_client.catalogue`, the same code as ``fashion-florence-client
extract``. What only the server's install can add is ``--local``: the job served by an
in-process copy of the service (``create_app`` behind httpx's ASGI transport), with the
same admission, cache, batcher and engine code as a server, without a port; and
``--engine ray`` (:mod:`service.jobs`), the same intake and engine as Ray Data stages.
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import httpx

from fashion_florence_client import catalogue
from fashion_florence_client.client import AsyncClient
from service.jobs import cli as jobs_cli


def create_local_app() -> Any:
    """The service itself, settings from FF_* (imported here: only --local needs it)."""
    from service.http.app import create_app

    return create_app()


@asynccontextmanager
async def local_client(**options: Any) -> AsyncIterator[AsyncClient]:
    """An in-process service, loaded and warmed, and a client on it."""
    from service.serving.lifecycle import Phase

    app = create_local_app()
    async with app.router.lifespan_context(app):
        runtime = app.state.runtime
        await runtime.wait_ready()
        if runtime.phase != Phase.READY:
            raise SystemExit(f"the local service did not start: {runtime.error}")
        transport = httpx.ASGITransport(app=app)
        async with AsyncClient("http://local", transport=transport, **options) as client:
            yield client


def _open_client(
    args: argparse.Namespace, options: dict[str, Any]
) -> AbstractAsyncContextManager[AsyncClient]:
    if jobs_cli.engine_of(args) == "local":
        return local_client(**options)
    return catalogue.server_client(args, options)


def register(commands: Any) -> None:
    """Add ``extract`` to the ``fashion-florence`` subcommands."""
    cmd = catalogue.register(commands, open_client=_open_client)
    cmd.add_argument(
        "--local", action="store_true", help="run the service in-process (FF_* settings)"
    )
    jobs_cli.add_arguments(cmd)
    over_http = cmd.get_default("handler")

    def handler(args: argparse.Namespace) -> int:
        if jobs_cli.engine_of(args) == "ray":
            return jobs_cli.run(args)
        return int(over_http(args))

    cmd.set_defaults(handler=handler)
