"""Resolve once, then dial only the addresses that were checked.

The URL keeps its host name, so the ``Host`` header, the TLS server name (SNI), certificate
verification and the connection pool's key are all the name, as for any client. Only the
TCP dial is different: :class:`PinnedNetworkBackend` looks the name up in the addresses
pinned for the current task (a context variable set by the fetcher around each request)
and dials those IPs, never a name. A host without a pin is refused, so nothing below the
fetcher can ever resolve a name a second time (the DNS-rebinding window).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import typing
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Protocol

import httpcore
import httpx

__all__ = [
    "PinnedNetworkBackend",
    "Resolver",
    "SystemResolver",
    "pinned",
    "pinned_transport",
]

_PINS: ContextVar[Mapping[str, tuple[str, ...]] | None] = ContextVar("ff_fetch_pins", default=None)


class Resolver(Protocol):
    async def resolve(self, host: str, port: int) -> Sequence[str]:
        """Every address ``host`` resolves to (as text); raise ``OSError`` if none."""
        ...


class SystemResolver:
    """The operating system's resolver (``getaddrinfo`` in the loop's thread pool)."""

    async def resolve(self, host: str, port: int) -> Sequence[str]:
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
        )
        return list(dict.fromkeys(str(info[4][0]) for info in infos))


@contextmanager
def pinned(host: str, addresses: Sequence[str]) -> Iterator[None]:
    """Within this block (and this task), ``host`` is dialled at ``addresses`` only."""
    token = _PINS.set({host: tuple(addresses)})
    try:
        yield
    finally:
        _PINS.reset(token)


class PinnedNetworkBackend(httpcore.AsyncNetworkBackend):
    """Dials the pinned addresses of a host in order; refuses hosts without a pin."""

    def __init__(self, inner: httpcore.AsyncNetworkBackend | None = None) -> None:
        self._inner = inner or httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        pins = _PINS.get()
        addresses = pins.get(host) if pins is not None else None
        if not addresses:
            raise httpcore.ConnectError(f"refusing to dial {host!r}: no checked address pinned")
        options = list(socket_options) if socket_options is not None else None
        failure: Exception | None = None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(
                    address, port, timeout=timeout, local_address=local_address,
                    socket_options=options,
                )  # fmt: skip
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc  # every address was checked; try the next one
        assert failure is not None
        raise failure

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("unix sockets are never dialled")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def pinned_transport(
    backend: httpcore.AsyncNetworkBackend,
    *,
    limits: httpx.Limits | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> httpx.AsyncHTTPTransport:
    """An httpx transport (HTTP/1.1, no proxy, no retries) that dials through ``backend``."""
    limits = limits or httpx.Limits(max_connections=100, max_keepalive_connections=20)
    transport = httpx.AsyncHTTPTransport(trust_env=False, retries=0, limits=limits)
    # httpx has no public parameter for the network backend, so its pool is replaced by an
    # identical one built with ours. tests/service/intake asserts that every dial goes
    # through the backend, so an httpx release that renames `_pool` fails the suite loudly.
    pool = httpcore.AsyncConnectionPool(
        ssl_context=ssl_context or httpx.create_ssl_context(trust_env=False),
        max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections,
        keepalive_expiry=limits.keepalive_expiry,
        http1=True,
        http2=False,
        retries=0,
        network_backend=backend,
    )
    typing.cast(typing.Any, transport)._pool = pool
    return transport
