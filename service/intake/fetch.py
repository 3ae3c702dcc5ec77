"""Fetch image bytes from an http(s) URL chosen by the caller, without becoming an SSRF proxy.

Per hop (the first URL and every redirect, followed by hand, at most ``max_redirects``):

1. the URL is checked and its host normalized (:mod:`service.intake.urls`), then matched
   against the optional allowlist;
2. the host is resolved once, every address is checked (:mod:`service.intake.addresses`)
   and one blocked address refuses the whole answer;
3. the request goes out with the checked addresses pinned (:mod:`service.intake.pinning`),
   so nothing resolves the name again.

Proxies from the environment are ignored (``trust_env=False``). The body is capped by
``Content-Length`` and while streaming; connect and read timeouts bound each step and one
deadline bounds the whole fetch, resolution and redirects included.

Errors: what the caller's URL itself shows (scheme, credentials, spelling, allowlist) is
``url_not_allowed``. Everything else the network decides (blocked, unresolvable, refused,
timed out, bad redirect) is one ``url_fetch_failed`` with a generic detail, so the endpoint
cannot be used to map the internal network; the real reason goes to the log and to
``on_failure`` (the metric label). An upstream HTTP status is shown: only checked, public
addresses are ever contacted. The content is judged by decoding it, never by its
``Content-Type``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Sequence
from enum import StrEnum
from types import TracebackType
from typing import Final, Self

import httpcore
import httpx

from fashion_florence_client.problems import ErrorCode
from service.errors import ServiceError
from service.intake.addresses import AddressPolicy, IPAddress, parse_ip
from service.intake.pinning import (
    PinnedNetworkBackend,
    Resolver,
    SystemResolver,
    pinned,
    pinned_transport,
)
from service.intake.urls import HostAllowlist, Target, UrlRefusedError, parse_target
from service.settings import Settings

__all__ = ["FetchFailure", "ImageFetcher", "fetcher_from_settings"]

log = logging.getLogger(__name__)

_USER_AGENT: Final = "fashion-florence-fetcher/1"
# Images are already compressed; asking for identity keeps the byte cap exact (no
# decompression bombs inside the HTTP layer). Encoded answers are refused.
_REQUEST_HEADERS: Final = {
    "User-Agent": _USER_AGENT,
    "Accept": "image/*",
    "Accept-Encoding": "identity",
}
_GENERIC_DETAIL: Final = "The image URL could not be fetched."


class FetchFailure(StrEnum):
    """Why a fetch failed: the log's and the metric's label (a small, fixed set)."""

    URL_NOT_ALLOWED = "url_not_allowed"
    HOST_NOT_ALLOWED = "host_not_allowed"
    BLOCKED_ADDRESS = "blocked_address"
    UNRESOLVABLE = "unresolvable"
    CONNECT_FAILED = "connect_failed"
    TIMEOUT = "timeout"
    HTTP_STATUS = "http_status"
    TOO_MANY_REDIRECTS = "too_many_redirects"
    BAD_REDIRECT = "bad_redirect"
    BAD_ENCODING = "bad_encoding"
    PROTOCOL_ERROR = "protocol_error"
    TOO_LARGE = "too_large"


def _without_query(url: str | httpx.URL) -> str:
    # Signed image URLs carry credentials in the query string: never write those to logs.
    return str(url).split("?", 1)[0].split("#", 1)[0][:500]


class _FailedError(Exception):
    def __init__(self, reason: FetchFailure, log_detail: str, public: str | None = None) -> None:
        super().__init__(log_detail)
        self.reason = reason
        self.log_detail = log_detail
        self.public = public or _GENERIC_DETAIL


class ImageFetcher:
    """Downloads one image per :meth:`fetch` call through a shared ``httpx.AsyncClient``."""

    def __init__(
        self,
        max_bytes: int,
        connect_timeout_s: float,
        read_timeout_s: float,
        total_timeout_s: float,
        max_redirects: int = 3,
        *,
        resolver: Resolver | None = None,
        network_backend: httpcore.AsyncNetworkBackend | None = None,
        allowed_hosts: Iterable[str] = (),
        allow_loopback: bool = False,
        on_failure: Callable[[str], None] | None = None,
    ) -> None:
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        if min(connect_timeout_s, read_timeout_s, total_timeout_s) <= 0:
            raise ValueError("timeouts must be positive")
        if max_redirects < 0:
            raise ValueError("max_redirects must not be negative")
        self.max_bytes = max_bytes
        self.connect_timeout_s = connect_timeout_s
        self.total_timeout_s = total_timeout_s
        self.max_redirects = max_redirects
        self._resolver = resolver or SystemResolver()
        self._policy = AddressPolicy(allow_loopback=allow_loopback)
        self._allowlist = HostAllowlist(allowed_hosts)
        self._on_failure = on_failure
        if allow_loopback:
            log.warning("URL fetching may dial loopback addresses: a test-only setting")
        self._client = httpx.AsyncClient(
            trust_env=False,
            follow_redirects=False,
            timeout=httpx.Timeout(
                connect=connect_timeout_s,
                read=read_timeout_s,
                write=read_timeout_s,
                pool=connect_timeout_s,
            ),
            headers=_REQUEST_HEADERS,
            transport=pinned_transport(PinnedNetworkBackend(network_backend)),
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def check_url(self, url: str | httpx.URL) -> Target:
        """The normalized target if the URL itself may be fetched, else ``URL_NOT_ALLOWED``."""
        try:
            target = parse_target(url)
        except UrlRefusedError as exc:
            self._report(FetchFailure.URL_NOT_ALLOWED, str(exc), url=str(url))
            raise ServiceError(ErrorCode.URL_NOT_ALLOWED, str(exc)) from None
        if not self._allowlist.allows(target.host):
            self._report(FetchFailure.HOST_NOT_ALLOWED, target.host, url=str(url))
            raise ServiceError(
                ErrorCode.URL_NOT_ALLOWED, f"The host {target.host!r} is not on the allowlist."
            )
        return target

    async def fetch(self, url: str) -> bytes:
        """The body of ``url`` after at most ``max_redirects`` redirects.

        Raises ``ServiceError`` with ``URL_NOT_ALLOWED``, ``URL_FETCH_FAILED`` or
        ``IMAGE_TOO_LARGE``.
        """
        target = self.check_url(url)
        try:
            return await self._fetch(target)
        except _FailedError as failure:
            self._report(failure.reason, failure.log_detail, url=url)
            raise ServiceError(ErrorCode.URL_FETCH_FAILED, failure.public) from None
        except ServiceError as exc:
            if exc.code is ErrorCode.IMAGE_TOO_LARGE:
                self._report(FetchFailure.TOO_LARGE, exc.detail, url=url)
            raise

    def _report(self, reason: FetchFailure, detail: str, *, url: str | None = None) -> None:
        # Blocked targets are what an SSRF attempt looks like: worth a warning.
        level = logging.WARNING if reason is FetchFailure.BLOCKED_ADDRESS else logging.INFO
        shown = _without_query(url) if url is not None else None
        log.log(level, "url fetch refused: reason=%s url=%r detail=%s", reason, shown, detail)
        if self._on_failure is not None:
            self._on_failure(reason.value)

    async def _fetch(self, target: Target) -> bytes:
        try:
            async with asyncio.timeout(self.total_timeout_s):
                for _hop in range(self.max_redirects + 1):
                    addresses = await self._addresses(target)
                    body, location = await self._get_once(target, addresses)
                    if location is None:
                        return body
                    target = self._next_hop(target, location)
        except TimeoutError:
            raise _FailedError(
                FetchFailure.TIMEOUT,
                f"{target.host}: over the {self.total_timeout_s:g} s deadline",
            ) from None
        raise _FailedError(
            FetchFailure.TOO_MANY_REDIRECTS,
            f"more than {self.max_redirects} redirects; last hop {_without_query(target.url)}",
            f"The image URL redirected more than {self.max_redirects} times.",
        )

    async def _addresses(self, target: Target) -> list[str]:
        """Resolve (once) and check: the addresses to dial, or a failure."""
        found: Sequence[IPAddress]
        if target.ip is not None:
            found = [target.ip]
        else:
            found = await self._resolve(target)
        dial, refusal = self._policy.check_all(found)
        if refusal is not None:
            raise _FailedError(FetchFailure.BLOCKED_ADDRESS, f"{target.host} -> {refusal}")
        return dial

    async def _resolve(self, target: Target) -> list[IPAddress]:
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                answer = await self._resolver.resolve(target.host, target.port)
        except TimeoutError:
            raise _FailedError(FetchFailure.TIMEOUT, f"resolving {target.host}") from None
        except (OSError, UnicodeError) as exc:
            raise _FailedError(FetchFailure.UNRESOLVABLE, f"{target.host}: {exc}") from None
        parsed = [parse_ip(text) for text in answer]
        if not parsed:
            raise _FailedError(FetchFailure.UNRESOLVABLE, f"{target.host}: empty answer")
        unparsable = [text for text, ip in zip(answer, parsed, strict=True) if ip is None]
        if unparsable:  # fail closed: an answer we cannot read is not one we can check
            raise _FailedError(
                FetchFailure.BLOCKED_ADDRESS, f"{target.host} -> unreadable {unparsable}"
            )
        return [ip for ip in parsed if ip is not None]

    def _next_hop(self, current: Target, location: str) -> Target:
        try:
            joined = current.url.join(location)
            target = parse_target(joined)
        except (httpx.InvalidURL, UrlRefusedError, ValueError) as exc:
            raise _FailedError(
                FetchFailure.BAD_REDIRECT,
                f"{current.host} redirected to {_without_query(location)!r}: {exc}",
            ) from None
        if not self._allowlist.allows(target.host):
            raise _FailedError(
                FetchFailure.BAD_REDIRECT,
                f"{current.host} redirected off the allowlist to {target.host}",
            )
        return target

    async def _get_once(self, target: Target, addresses: list[str]) -> tuple[bytes, str | None]:
        """One GET: ``(body, None)`` on success, ``(b"", location)`` on a redirect."""
        host = target.host
        try:
            with pinned(host, addresses):
                async with self._client.stream("GET", target.url) as response:
                    if response.has_redirect_location:
                        return b"", response.headers["location"]
                    if not response.is_success:
                        status = f"HTTP {response.status_code}"
                        raise _FailedError(
                            FetchFailure.HTTP_STATUS,
                            f"{host} answered {status}",
                            f"The image host answered {status} {response.reason_phrase}.",
                        )
                    self._check_encoding(response)
                    self._check_declared_length(response)
                    return await self._read_capped(response), None
        except httpx.TimeoutException as exc:
            raise _FailedError(
                FetchFailure.TIMEOUT, f"{host} {addresses}: {type(exc).__name__}"
            ) from None
        except httpx.ConnectError as exc:
            raise _FailedError(FetchFailure.CONNECT_FAILED, f"{host} {addresses}: {exc}") from None
        except (httpx.HTTPError, httpx.InvalidURL, httpx.StreamError, OSError) as exc:
            raise _FailedError(
                FetchFailure.PROTOCOL_ERROR, f"{host}: {type(exc).__name__}: {exc}"
            ) from None

    @staticmethod
    def _check_encoding(response: httpx.Response) -> None:
        encoding = response.headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise _FailedError(
                FetchFailure.BAD_ENCODING,
                f"{response.url.host} sent Content-Encoding {encoding!r}",
                f"The image host sent Content-Encoding {encoding!r}; only identity is "
                "accepted for images.",
            )

    def _check_declared_length(self, response: httpx.Response) -> None:
        declared = response.headers.get("content-length")
        if declared is None:
            return
        if not declared.isdigit() or len(declared) > 18:
            raise _FailedError(
                FetchFailure.PROTOCOL_ERROR,
                f"{response.url.host} sent Content-Length {declared!r}",
            )
        if int(declared) > self.max_bytes:
            raise ServiceError(
                ErrorCode.IMAGE_TOO_LARGE,
                f"The image is {declared} bytes; the limit is {self.max_bytes} bytes.",
            )

    async def _read_capped(self, response: httpx.Response) -> bytes:
        body = bytearray()
        async for chunk in response.aiter_raw():
            body += chunk
            if len(body) > self.max_bytes:
                # Leaving the stream block closes the connection: nothing more is read.
                raise ServiceError(
                    ErrorCode.IMAGE_TOO_LARGE,
                    f"The image exceeds the limit of {self.max_bytes} bytes.",
                )
        return bytes(body)


def fetcher_from_settings(
    settings: Settings,
    *,
    resolver: Resolver | None = None,
    network_backend: httpcore.AsyncNetworkBackend | None = None,
    on_failure: Callable[[str], None] | None = None,
) -> ImageFetcher:
    """An :class:`ImageFetcher` with the limits from ``settings`` (milliseconds -> seconds)."""
    return ImageFetcher(
        max_bytes=settings.max_image_bytes,
        connect_timeout_s=settings.fetch_connect_timeout_ms / 1000.0,
        read_timeout_s=settings.fetch_read_timeout_ms / 1000.0,
        total_timeout_s=settings.fetch_total_timeout_ms / 1000.0,
        max_redirects=settings.fetch_max_redirects,
        resolver=resolver,
        network_backend=network_backend,
        allowed_hosts=settings.url_allowed_hosts,
        allow_loopback=settings.url_allow_loopback_for_tests,
        on_failure=on_failure,
    )
