"""The server's error: a stable code (``fashion_florence_client.problems``, shared with
clients) with a detail and headers, raised anywhere below the routes and rendered by the
HTTP layer as problem+json."""

from __future__ import annotations

from collections.abc import Mapping

from fashion_florence_client.problems import ERROR_CATALOGUE, PROBLEM_TYPE_BASE, ErrorCode


class ServiceError(Exception):
    """An error with a stable code; raised anywhere below the routes, rendered by the API."""

    def __init__(
        self,
        code: ErrorCode,
        detail: str,
        *,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.headers = dict(headers or {})

    @property
    def status(self) -> int:
        return ERROR_CATALOGUE[self.code].status

    def problem(self, instance: str | None = None) -> dict[str, object]:
        return problem_body(self.code, self.detail, instance=instance)


def problem_body(code: ErrorCode, detail: str, *, instance: str | None = None) -> dict[str, object]:
    spec = ERROR_CATALOGUE[code]
    body: dict[str, object] = {
        "type": PROBLEM_TYPE_BASE + code.value,
        "title": spec.title,
        "status": spec.status,
        "detail": detail,
        "code": code.value,
    }
    if instance is not None:
        body["instance"] = instance
    return body
