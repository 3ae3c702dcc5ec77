"""Fetch image bytes from an http(s) URL with hard limits on size and time.

Every network failure surfaces as a :class:`ServiceError`; nothing else escapes ``fetch``.

Extension points for the SSRF hardening (a later issue), kept in one place each:

- :meth:`ImageFetcher.validate_url` is applied to the first URL and to every redirect
  target; address checks (resolve, reject private/loopback/link-local ranges) belong there.
- ``transport`` is the seam for pinning the connection to the address that was validated
  (a custom :class:`httpx.AsyncBaseTransport`); tests use it to inject failures.

Redirects are followed by hand so that each hop passes through ``validate_url``.
"""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Final, Self

import httpx

from service.errors import ErrorCode, ServiceError
from service.settings import Settings

__all__ = ["ImageFetcher", "fetcher_from_settings"]

_ALLOWED_SCHEMES: Final = frozenset({"http", "https"})
_USER_AGENT: Final = "fashion-florence-fetcher/1"
# Images are already compressed; asking for identity keeps the byte cap exact (no
# decompression bombs inside the HTTP layer). Encoded answers are refused.
_REQUEST_HEADERS: Final = {
    "User-Agent": _USER_AGENT,
    "Accept": "image/*",
    "Accept-Encoding": "identity",
}


class ImageFetcher:
    """Downloads one image per :meth:`fetch` call through a shared ``httpx.AsyncClient``."""

    def __init__(
        self,
        max_bytes: int,
        connect_timeout_s: float,
        read_timeout_s: float,
        total_timeout_s: float,
        max_redirects: int = 3,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        if min(connect_timeout_s, read_timeout_s, total_timeout_s) <= 0:
            raise ValueError("timeouts must be positive")
        if max_redirects < 0:
            raise ValueError("max_redirects must not be negative")
        self.max_bytes = max_bytes
        self.total_timeout_s = total_timeout_s
        self.max_redirects = max_redirects
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
            transport=transport,
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

    def validate_url(self, url: str | httpx.URL) -> httpx.URL:
        """The parsed URL if it may be fetched, else ``ServiceError(URL_NOT_ALLOWED)``."""
        try:
            parsed = url if isinstance(url, httpx.URL) else httpx.URL(url)
        except (httpx.InvalidURL, TypeError, ValueError) as exc:
            raise ServiceError(
                ErrorCode.URL_NOT_ALLOWED, f"The URL is malformed ({exc})."
            ) from None
        if parsed.scheme not in _ALLOWED_SCHEMES:
            shown = parsed.scheme or "(none)"
            raise ServiceError(
                ErrorCode.URL_NOT_ALLOWED,
                f"The URL scheme {shown!r} is not allowed; use http or https.",
            )
        if not parsed.host:
            raise ServiceError(ErrorCode.URL_NOT_ALLOWED, "The URL has no host.")
        if parsed.userinfo:
            raise ServiceError(
                ErrorCode.URL_NOT_ALLOWED, "URLs with credentials (user:password@) are not allowed."
            )
        return parsed

    async def fetch(self, url: str) -> bytes:
        """The body of ``url`` after at most ``max_redirects`` redirects.

        Raises ``ServiceError`` with ``URL_NOT_ALLOWED``, ``URL_FETCH_FAILED``,
        ``URL_FETCH_TIMEOUT`` or ``IMAGE_TOO_LARGE``.
        """
        target = self.validate_url(url)
        try:
            async with asyncio.timeout(self.total_timeout_s):
                for _hop in range(self.max_redirects + 1):
                    body, location = await self._get_once(target)
                    if location is None:
                        return body
                    target = self.validate_url(location)
        except TimeoutError:
            raise ServiceError(
                ErrorCode.URL_FETCH_TIMEOUT,
                f"Fetching from {target.host} took longer than {self.total_timeout_s:g} s.",
            ) from None
        raise ServiceError(
            ErrorCode.URL_FETCH_FAILED,
            f"Too many redirects (more than {self.max_redirects}); last hop was {target.host}.",
        )

    async def _get_once(self, url: httpx.URL) -> tuple[bytes, httpx.URL | None]:
        """One GET: ``(body, None)`` on success, ``(b"", next_url)`` on a redirect."""
        host = url.host
        try:
            async with self._client.stream("GET", url) as response:
                if response.has_redirect_location:
                    return b"", self._redirect_target(response)
                if not response.is_success:
                    raise ServiceError(
                        ErrorCode.URL_FETCH_FAILED,
                        f"{host} answered HTTP {response.status_code} {response.reason_phrase}.",
                    )
                self._check_encoding(response)
                self._check_declared_length(response)
                return await self._read_capped(response), None
        except httpx.TimeoutException as exc:
            phase = {
                httpx.ConnectTimeout: "connecting to",
                httpx.ReadTimeout: "reading from",
                httpx.WriteTimeout: "writing to",
                httpx.PoolTimeout: "waiting for a connection to",
            }.get(type(exc), "talking to")
            raise ServiceError(ErrorCode.URL_FETCH_TIMEOUT, f"Timed out {phase} {host}.") from None
        except (httpx.HTTPError, httpx.InvalidURL, httpx.StreamError, OSError) as exc:
            raise ServiceError(
                ErrorCode.URL_FETCH_FAILED,
                f"Could not fetch from {host} ({type(exc).__name__}: {exc}).",
            ) from None

    @staticmethod
    def _redirect_target(response: httpx.Response) -> httpx.URL:
        location = response.headers["location"]
        try:
            return response.url.join(location)
        except httpx.InvalidURL as exc:
            raise ServiceError(
                ErrorCode.URL_FETCH_FAILED,
                f"{response.url.host} redirected to a malformed URL ({exc}).",
            ) from None

    @staticmethod
    def _check_encoding(response: httpx.Response) -> None:
        encoding = response.headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise ServiceError(
                ErrorCode.URL_FETCH_FAILED,
                f"{response.url.host} sent Content-Encoding {encoding!r}; only identity is "
                "accepted for images.",
            )

    def _check_declared_length(self, response: httpx.Response) -> None:
        declared = response.headers.get("content-length")
        if declared is None:
            return
        try:
            length = int(declared)
        except ValueError:
            raise ServiceError(
                ErrorCode.URL_FETCH_FAILED,
                f"{response.url.host} sent an invalid Content-Length {declared!r}.",
            ) from None
        if length > self.max_bytes:
            raise ServiceError(
                ErrorCode.IMAGE_TOO_LARGE,
                f"The image at {response.url.host} is {length} bytes; "
                f"the limit is {self.max_bytes} bytes.",
            )

    async def _read_capped(self, response: httpx.Response) -> bytes:
        body = bytearray()
        async for chunk in response.aiter_raw():
            body += chunk
            if len(body) > self.max_bytes:
                raise ServiceError(
                    ErrorCode.IMAGE_TOO_LARGE,
                    f"The image at {response.url.host} exceeds the limit of "
                    f"{self.max_bytes} bytes.",
                )
        return bytes(body)


def fetcher_from_settings(
    settings: Settings, *, transport: httpx.AsyncBaseTransport | None = None
) -> ImageFetcher:
    """An :class:`ImageFetcher` with the limits from ``settings`` (milliseconds -> seconds)."""
    return ImageFetcher(
        max_bytes=settings.max_image_bytes,
        connect_timeout_s=settings.fetch_connect_timeout_ms / 1000.0,
        read_timeout_s=settings.fetch_read_timeout_ms / 1000.0,
        total_timeout_s=settings.fetch_total_timeout_ms / 1000.0,
        transport=transport,
    )
