"""Python client for the Fashion Florence API, sync and async, on httpx.

    from fashion_florence_client import Client
    with Client("http://florence:8000", api_key=KEY) as client:
        result = client.extract("shirt.jpg")           # bytes, a local path, or an http(s) URL
        print(result.attributes.category)

Results are the wire types the service itself answers with
(:mod:`fashion_florence_client.protocol`), so client and server cannot drift. Failures
raise one hierarchy, :class:`~fashion_florence_client.exceptions.ServiceCallError`,
carrying the problem+json ``code``: branch on it, as on the server's. 503 and 504 answers
and network errors are retried with exponential backoff and jitter, never sooner than the
server's ``Retry-After`` (:mod:`fashion_florence_client.retry` decides; the two clients
here only send and sleep); a 4xx is the caller's to fix and is never retried. Importing
this does not import torch: the package depends on httpx and pydantic only.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Final

import httpx
from pydantic import ValidationError

from fashion_florence_client.exceptions import InvalidInputError, ServerError, ServiceCallError
from fashion_florence_client.protocol import (
    PRIORITY_HEADER,
    ExtractResponse,
    ModelResponse,
    Priority,
)
from fashion_florence_client.retry import Attempts, RetryPolicy, Wait, error_for

#: Bytes are an image; a string starting with http(s):// is a URL; anything else a path.
ImageInput = bytes | str | os.PathLike[str]
USER_AGENT: Final = "fashion-florence-client/0.1"
#: Header the service reads to shorten its deadline: work the client gave up on is not run.
TIMEOUT_HEADER: Final = "X-Request-Timeout-Ms"
#: What one attempt produced: an answer, or the network failure that stood in for one.
Answer = httpx.Response | httpx.TransportError


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


def _extract_result(response: httpx.Response, attempts: int) -> ExtractResponse:
    if response.status_code != 200:
        raise error_for(response, attempts)
    try:
        return ExtractResponse.model_validate_json(response.content)
    except ValidationError as exc:
        raise ServerError(
            "unexpected_response", f"not an extraction result: {exc.error_count()} errors",
            status=200, attempts=attempts,
        ) from exc  # fmt: skip


def _model_result(response: httpx.Response) -> ModelResponse:
    if response.status_code != 200:
        raise error_for(response, 1)
    return ModelResponse.model_validate_json(response.content)


class _Base:
    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None,
        timeout_s: float,
        retry: RetryPolicy,
        rng: random.Random | None,
        priority: Priority | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.retry = retry
        self._rng = rng or random.Random()
        self._headers = {"User-Agent": USER_AGENT, TIMEOUT_HEADER: str(int(timeout_s * 1000))}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        if priority is not None:  # else each endpoint's default class
            self._headers[PRIORITY_HEADER] = Priority(priority).value
        self._timeout = httpx.Timeout(timeout_s, connect=min(5.0, timeout_s))

    def __repr__(self) -> str:  # never the API key
        return f"{type(self).__name__}({self.base_url!r})"

    def _params(self, min_tag_confidence: float | None) -> dict[str, float]:
        return {} if min_tag_confidence is None else {"min_tag_confidence": min_tag_confidence}

    def _extract_attempts(self) -> Attempts[ExtractResponse]:
        return Attempts(self.retry, self._rng, _extract_result)


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
        priority: Priority | None = None,
    ) -> None:
        super().__init__(base_url, api_key=api_key, timeout_s=timeout_s, retry=retry or RetryPolicy(), rng=rng, priority=priority)  # fmt: skip
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
        """The served model's manifest, device and dtype; one attempt, never retried."""
        return _model_result(self._http.get("/v1/model"))

    def extract(
        self, image: ImageInput, *, min_tag_confidence: float | None = None
    ) -> ExtractResponse:
        parts = _request_parts(image)
        params = self._params(min_tag_confidence)
        attempts = self._extract_attempts()
        while True:
            answer: Answer
            try:
                answer = self._http.post("/v1/extract", params=params, **parts)
            except httpx.TransportError as exc:
                answer = exc
            step = attempts.settle(answer)
            if not isinstance(step, Wait):
                return step
            self._sleep(step.seconds)

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
        priority: Priority | None = None,
    ) -> None:
        super().__init__(base_url, api_key=api_key, timeout_s=timeout_s, retry=retry or RetryPolicy(), rng=rng, priority=priority)  # fmt: skip
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
        """The served model's manifest, device and dtype; one attempt, never retried."""
        return _model_result(await self._http.get("/v1/model"))

    async def extract(
        self, image: ImageInput, *, min_tag_confidence: float | None = None
    ) -> ExtractResponse:
        # Reading a file off the loop: a catalogue job reads hundreds concurrently.
        parts = await asyncio.to_thread(_request_parts, image)
        params = self._params(min_tag_confidence)
        attempts = self._extract_attempts()
        while True:
            answer: Answer
            try:
                answer = await self._http.post("/v1/extract", params=params, **parts)
            except httpx.TransportError as exc:
                answer = exc
            step = attempts.settle(answer)
            if not isinstance(step, Wait):
                return step
            await self._sleep(step.seconds)

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
