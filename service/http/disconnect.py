"""Stop working for clients that have gone.

Once a request's body has been read, the next ASGI message is ``http.disconnect``: it
arrives when the client hangs up (or after the response). Watching for it lets a request
whose client left be cancelled while it waits, so its image is skipped when the next
batch forms instead of costing device time for nobody.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any, TypeVar

from starlette.requests import Request

from fashion_florence_client.problems import ErrorCode
from service.errors import ServiceError

T = TypeVar("T")


async def _disconnected(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def cancel_on_disconnect(request: Request, work: Coroutine[Any, Any, T]) -> T:
    """Await ``work``; cancel it and raise ``client_closed_request`` if the client leaves."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            return task.result()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        raise ServiceError(ErrorCode.CLIENT_CLOSED_REQUEST, "the client disconnected")
    finally:
        watcher.cancel()
        if not task.done():  # we were cancelled ourselves
            task.cancel()
