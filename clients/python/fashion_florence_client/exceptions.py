"""What a failed call raises: one hierarchy, rooted at :class:`ServiceCallError`.

The subclass says what the caller can do about it (fix the request, retry later, check the
network); ``code`` says exactly what happened, as the service's stable problem code, so
callers branch on it as the server's own tests do.
"""

from __future__ import annotations


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
