"""How a call's answers become a result, a wait, or the error it finally raises; no I/O.

The sync and async clients differ only in how they send a request and how they sleep.
Everything else about a call (counting attempts, turning an HTTP answer or a network
failure into a typed :class:`ServiceCallError`, which of those are worth another try, how
long to wait, when a server's ``Retry-After`` is too long to honour) is decided here once,
by :class:`Attempts`, which both clients' loops drive.
"""

from __future__ import annotations

import email.utils
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC
from typing import Final, Generic, TypeVar

import httpx
from pydantic import ValidationError

from fashion_florence_client.exceptions import (
    AuthenticationError,
    ConnectionFailedError,
    RequestRejectedError,
    ServerError,
    ServiceCallError,
    ServiceUnavailableError,
)
from fashion_florence_client.problems import PROBLEM_CONTENT_TYPE, Problem

#: Answers that say "not now" rather than "not this": extraction is a pure function of
#: the image, so sending the same request again is safe.
RETRY_STATUSES: Final = frozenset({503, 504})

T = TypeVar("T")


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

    def next_delay(self, error: ServiceCallError, attempt: int, rng: random.Random) -> float | None:
        """Seconds to wait after ``error`` on attempt ``attempt``, or None to give up with
        it. Only "not now" failures are retried; a 4xx is the caller's to fix."""
        retryable = isinstance(error, ConnectionFailedError | ServiceUnavailableError)
        if not retryable or attempt >= self.max_attempts:
            return None
        if error.retry_after_s is not None and error.retry_after_s > self.max_retry_after_s:
            return None
        return self.delay_s(attempt, error.retry_after_s, rng)


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


def error_for(response: httpx.Response, attempts: int) -> ServiceCallError:
    """The typed error for a non-success answer, with the problem's ``code`` when the body
    is problem+json (a proxy in between may answer with something else)."""
    status = response.status_code
    code, detail = "unexpected_response", response.text[:200] or response.reason_phrase
    if response.headers.get("content-type", "").startswith(PROBLEM_CONTENT_TYPE):
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


def connection_failed(exc: httpx.TransportError, attempts: int) -> ConnectionFailedError:
    detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return ConnectionFailedError("connection_failed", detail, attempts=attempts)


@dataclass(frozen=True, slots=True)
class Wait:
    """Sleep this long, then send the same request again."""

    seconds: float


class Attempts(Generic[T]):
    """One call's attempt loop as a state machine. A client sends, hands over what came
    back, and either returns the result or sleeps as told and sends again::

        attempts = Attempts(policy, rng, parse)
        while True:
            step = attempts.settle(<the response, or the TransportError sending raised>)
            if not isinstance(step, Wait):
                return step
            sleep(step.seconds)

    ``parse`` turns an answer into the result or raises its :class:`ServiceCallError`; it
    gets the attempt count so the error it raises can carry it.
    """

    def __init__(
        self,
        policy: RetryPolicy,
        rng: random.Random,
        parse: Callable[[httpx.Response, int], T],
    ) -> None:
        self.policy = policy
        self.count = 0
        self._rng = rng
        self._parse = parse

    def settle(self, answer: httpx.Response | httpx.TransportError) -> T | Wait:
        """The result, or how long to wait before the next attempt; raises the call's
        final error when there is to be no next attempt."""
        self.count += 1
        if isinstance(answer, httpx.TransportError):
            error: ServiceCallError = connection_failed(answer, self.count)
        else:
            try:
                return self._parse(answer, self.count)
            except ServiceCallError as exc:
                error = exc
        delay = self.policy.next_delay(error, self.count, self._rng)
        if delay is None:
            raise error
        return Wait(delay)
