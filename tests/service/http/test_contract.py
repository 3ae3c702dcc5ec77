"""Contract fuzzing of the OpenAPI with schemathesis, against real uvicorn on 127.0.0.1
and a fast fake backend: no server errors, and responses match the documented schemas."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
import schemathesis.specs.openapi.schemas  # loaded here, at collection: see below
import uvicorn
from hypothesis import HealthCheck, given, settings

from service.http.app import create_app
from tests.fakes import FakeBackend
from tests.served import free_port
from tests.service.http.conftest import make_settings

pytestmark = [pytest.mark.slow, pytest.mark.load]

# schemathesis' OpenAPI loader imports its modules lazily, and pytest rewrites them (it is
# a plugin), which means ``ast.parse``. In CPython 3.11 the AST constructor's recursion
# guard is not per thread, so a parse here racing one in the uvicorn thread (3.11's
# traceback module parses source lines to format a traceback) can fail with "AST
# constructor recursion depth mismatch"; it did once. Imported above, they load at
# collection, before any thread starts.


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    port = free_port()
    # Generated URLs must never leave the machine (not even as a DNS query): only the
    # loopback host is allowed, and every other host is refused before any resolution.
    settings = make_settings(
        host="127.0.0.1",
        port=port,
        url_allowed_hosts=("127.0.0.1",),
        url_allow_loopback_for_tests=True,
    )
    app = create_app(settings, FakeBackend())
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.05)
    else:
        pytest.fail("contract-test server did not start")
    try:
        yield base
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def fuzz(operation: Any, base_url: str, failures: list[str]) -> int:
    """Run one operation's generated cases; returns how many calls were made."""
    calls = 0

    @given(case=operation.as_strategy())
    @settings(
        max_examples=25, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck)
    )
    def check(case: Any) -> None:
        nonlocal calls
        calls += 1
        response = case.call(base_url=base_url, timeout=10)
        if response.status_code >= 500 and response.status_code not in (502, 503, 504):
            failures.append(f"{operation.label}: {response.status_code} {response.text[:200]}")
        if response.status_code >= 400:
            # Every error is a problem document with a stable code, whatever the input.
            content_type = response.headers["content-type"]  # schemathesis: a list per header
            assert content_type[0].startswith("application/problem+json")
            assert {"type", "title", "status", "detail", "code"} <= set(response.json())
        # Schema-valid is not the same as acceptable here: random bytes are a valid upload
        # and a well-formed URL need not resolve, so positive-data acceptance is not checked.
        excluded = [
            schemathesis.checks.not_a_server_error,
            schemathesis.checks.positive_data_acceptance,
        ]
        case.validate_response(response, excluded_checks=excluded)

    check()
    return calls


def test_api_contract(base_url: str) -> None:
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]  # type: ignore[union-attr]  # an Err would raise, which fails the test as it should
    assert {op.path for op in operations} >= {"/v1/extract", "/v1/extract/batch", "/healthz"}
    failures: list[str] = []
    calls = sum(fuzz(operation, base_url, failures) for operation in operations)
    print(
        f"\ncontract fuzzing: {len(operations)} operations, {calls} calls, {len(failures)} server errors"
    )
    assert not failures, failures
