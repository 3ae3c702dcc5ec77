"""Python client for the Fashion Florence API, sync and async, on httpx.

    from service.client import Client
    with Client("http://florence:8000", api_key=KEY) as client:
        result = client.extract("shirt.jpg")           # bytes, a local path, or an http(s) URL
        print(result.attributes.category)

Results are the service's own pydantic models (``service.http.schemas``), so client and
server cannot drift. Failures raise one hierarchy, :class:`ServiceCallError`, carrying the
problem+json ``code``: branch on it, as on the server's. 503 and 504 answers and network
errors are retried with exponential backoff and jitter, never sooner than the server's
``Retry-After``; a 4xx is the caller's to fix and is never retried. Extraction is a pure
function of the image, so resending a request is safe. Importing this does not import torch.
"""

from __future__ import annotations

import asyncio
import email.utils
import os
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path
from typing import Any, Final

import httpx
from pydantic import ValidationError

from fashion_florence_client.problems import Problem
from fashion_florence_client.protocol import ExtractResponse, ModelResponse

#: Bytes are an image; a string starting with http(s):// is a URL; anything else a path.
ImageInput = bytes | str | os.PathLike[str]
RETRY_STATUSES: Final = frozenset({503, 504})
USER_AGENT: Final = "fashion-florence-client/0.1"
#: Header the service reads to shorten its deadline: work the client gave up on is not run.
TIMEOUT_HEADER: Final = "X-Request-Timeout-Ms"


class ServiceCallError(Exception):
    """A call that did not produce a result. ``code`` is the service's stable problem code,
    or a client-side one: ``connection_failed``, ``invalid_input``, ``unexpected_response``."""

    def __init__(
        self,
        code: str,
        detail: str,
        *,
        status: int | None = None,
        request_id: str | None = None,
        retry_after_s: float | None = None,
        attempts: int = 1,
    ) -> None:
        super().__init__(f"{code}: {detail}" if status is None else f"{status} {code}: {detail}")
        self.code = code
        self.detail = detail
        self.status = status
        self.request_id = request_id
        self.retry_after_s = retry_after_s
        self.attempts = attempts


class RequestRejectedError(ServiceCallError):
    """4xx: this request is wrong (bad image, too large, not allowed); never retried."""


class AuthenticationError(RequestRejectedError):
    """401: no API key, or a wrong one."""


class ServerError(ServiceCallError):
    """A 5xx other than 503/504, e.g. 502 ``invalid_model_output`` or ``url_fetch_failed``."""


class ServiceUnavailableError(ServiceCallError):
    """503/504 (``queue_full``, ``draining``, ``not_ready``, ``deadline_exceeded``, ...) still
    answered after every retry."""


class ConnectionFailedError(ServiceCallError):
    """No HTTP answer at all (refused, reset, timed out), after every retry."""


class InvalidInputError(ServiceCallError):
    """The input could not be read locally (a missing or unreadable file); nothing was sent."""


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 4  # the first try included
    backoff_base_s: float = 0.25
    backoff_max_s: float = 8.0
    #: Past this a server's Retry-After is not waited for: the error is raised instead.
    max_retry_after_s: float = 30.0

    def delay_s(self, attempt: int, retry_after_s: float | None, rng: random.Random) -> float:
        """Seconds before retry number ``attempt`` (1-based): full-jitter exponential
        backoff, added on top of Retry-After so a fleet of clients does not come back
        in the same instant the server named."""
        backoff = rng.uniform(
            0.0, min(self.backoff_max_s, self.backoff_base_s * 2 ** (attempt - 1))
        )
        return backoff if retry_after_s is None else retry_after_s + backoff


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a Retry-After header: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _request_parts(image: ImageInput) -> dict[str, Any]:
    if isinstance(image, bytes):
        return {"files": {"image": ("image", image, "application/octet-stream")}}
    if isinstance(image, str) and image[:8].lower().startswith(("http://", "https://")):
        return {"json": {"url": image}}
    path = Path(image)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InvalidInputError("invalid_input", f"cannot read {path}: {exc.strerror}") from exc
    return {"files": {"image": (path.name, data, "application/octet-stream")}}


def _error_for(response: httpx.Response, attempts: int) -> ServiceCallError:
    status = response.status_code
    code, detail = "unexpected_response", response.text[:200] or response.reason_phrase
    if response.headers.get("content-type", "").startswith("application/problem+json"):
        try:
            problem = Problem.model_validate_json(response.content)
            code, detail = problem.code, problem.detail
        except ValidationError:
            pass
    kind: type[ServiceCallError] = ServerError
    if status == 401:
        kind = AuthenticationError
    elif 400 <= status < 500:
        kind = RequestRejectedError
    elif status in RETRY_STATUSES:
        kind = ServiceUnavailableError
    return kind(
        code, detail, status=status, attempts=attempts,
        request_id=response.headers.get("x-request-id"),
        retry_after_s=parse_retry_after(response.headers.get("retry-after")),
    )  # fmt: skip


class _Base:
    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None,
        timeout_s: float,
        retry: RetryPolicy,
        rng: random.Random | None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.retry = retry
        self._rng = rng or random.Random()
        self._headers = {"User-Agent": USER_AGENT, TIMEOUT_HEADER: str(int(timeout_s * 1000))}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._timeout = httpx.Timeout(timeout_s, connect=min(5.0, timeout_s))

    def __repr__(self) -> str:  # never the API key
        return f"{type(self).__name__}({self.base_url!r})"

    def _params(self, min_tag_confidence: float | None) -> dict[str, float]:
        return {} if min_tag_confidence is None else {"min_tag_confidence": min_tag_confidence}

    def _next_delay(self, error: ServiceCallError, attempt: int) -> float | None:
        """Seconds to wait before trying again, or None to give up with ``error``."""
        retryable = isinstance(error, ConnectionFailedError | ServiceUnavailableError)
        if not retryable or attempt >= self.retry.max_attempts:
            return None
        if error.retry_after_s is not None and error.retry_after_s > self.retry.max_retry_after_s:
            return None
        return self.retry.delay_s(attempt, error.retry_after_s, self._rng)

    @staticmethod
    def _transport_error(exc: httpx.TransportError, attempts: int) -> ConnectionFailedError:
        detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        return ConnectionFailedError("connection_failed", detail, attempts=attempts)

    @staticmethod
    def _result(response: httpx.Response, attempts: int) -> ExtractResponse:
        if response.status_code != 200:
            raise _error_for(response, attempts)
        try:
            return ExtractResponse.model_validate_json(response.content)
        except ValidationError as exc:
            raise ServerError(
                "unexpected_response", f"not an extraction result: {exc.error_count()} errors",
                status=200, attempts=attempts,
            ) from exc  # fmt: skip


class Client(_Base):
    """Blocking client; thread-safe, so ``extract_many`` fans out on threads."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        *,
        api_key: str | None = None,
        timeout_s: float = 60.0,
        retry: RetryPolicy | None = None,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__(base_url, api_key=api_key, timeout_s=timeout_s, retry=retry or RetryPolicy(), rng=rng)  # fmt: skip
        self._sleep = sleep
        self._http = httpx.Client(
            base_url=self.base_url,
            headers=self._headers,
            timeout=self._timeout,
            transport=transport,
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def model(self) -> ModelResponse:
        response = self._http.get("/v1/model")
        if response.status_code != 200:
            raise _error_for(response, 1)
        return ModelResponse.model_validate_json(response.content)

    def extract(
        self, image: ImageInput, *, min_tag_confidence: float | None = None
    ) -> ExtractResponse:
        parts = _request_parts(image)
        params = self._params(min_tag_confidence)
        attempt = 0
        while True:
            attempt += 1
            try:
                response = self._http.post("/v1/extract", params=params, **parts)
                return self._result(response, attempt)
            except httpx.TransportError as exc:
                error: ServiceCallError = self._transport_error(exc, attempt)
            except ServiceCallError as exc:
                error = exc
            delay = self._next_delay(error, attempt)
            if delay is None:
                raise error
            self._sleep(delay)

    def extract_many(
        self, images: Sequence[ImageInput], *, concurrency: int = 4, **options: Any
    ) -> list[ExtractResponse | ServiceCallError]:
        """One result or error per image, in input order; at most ``concurrency`` in flight."""

        def one(image: ImageInput) -> ExtractResponse | ServiceCallError:
            try:
                return self.extract(image, **options)
            except ServiceCallError as exc:
                return exc

        with ThreadPoolExecutor(max(1, concurrency), thread_name_prefix="ff-client") as pool:
            return list(pool.map(one, images))


class AsyncClient(_Base):
    """asyncio client; ``iter_extract`` streams results as they complete (catalogue jobs)."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        *,
        api_key: str | None = None,
        timeout_s: float = 60.0,
        retry: RetryPolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__(base_url, api_key=api_key, timeout_s=timeout_s, retry=retry or RetryPolicy(), rng=rng)  # fmt: skip
        self._sleep = sleep
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            headers=self._headers,
            timeout=self._timeout,
            transport=transport,
        )

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def model(self) -> ModelResponse:
        response = await self._http.get("/v1/model")
        if response.status_code != 200:
            raise _error_for(response, 1)
        return ModelResponse.model_validate_json(response.content)

    async def extract(
        self, image: ImageInput, *, min_tag_confidence: float | None = None
    ) -> ExtractResponse:
        # Reading a file off the loop: a catalogue job reads hundreds concurrently.
        parts = await asyncio.to_thread(_request_parts, image)
        params = self._params(min_tag_confidence)
        attempt = 0
        while True:
            attempt += 1
            try:
                response = await self._http.post("/v1/extract", params=params, **parts)
                return self._result(response, attempt)
            except httpx.TransportError as exc:
                error: ServiceCallError = self._transport_error(exc, attempt)
            except ServiceCallError as exc:
                error = exc
            delay = self._next_delay(error, attempt)
            if delay is None:
                raise error
            await self._sleep(delay)

    async def iter_extract(
        self, images: Iterable[ImageInput], *, concurrency: int = 4, **options: Any
    ) -> AsyncIterator[tuple[int, ExtractResponse | ServiceCallError]]:
        """(input index, result or error) in completion order; at most ``concurrency``
        requests in flight, and the input is consumed lazily."""
        pending: set[asyncio.Task[tuple[int, ExtractResponse | ServiceCallError]]] = set()
        source = enumerate(images)

        async def one(
            index: int, image: ImageInput
        ) -> tuple[int, ExtractResponse | ServiceCallError]:
            try:
                return index, await self.extract(image, **options)
            except ServiceCallError as exc:
                return index, exc

        try:
            while True:
                for index, image in source:
                    pending.add(asyncio.create_task(one(index, image)))
                    if len(pending) >= max(1, concurrency):
                        break
                if not pending:
                    return
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    yield task.result()
        finally:
            for task in pending:  # the consumer stopped early (or was cancelled)
                task.cancel()

    async def extract_many(
        self, images: Sequence[ImageInput], *, concurrency: int = 4, **options: Any
    ) -> list[ExtractResponse | ServiceCallError]:
        """One result or error per image, in input order."""
        results: list[ExtractResponse | ServiceCallError | None] = [None] * len(images)
        async for index, result in self.iter_extract(images, concurrency=concurrency, **options):
            results[index] = result
        return [r for r in results if r is not None]
