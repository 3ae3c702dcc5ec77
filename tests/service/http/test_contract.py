"""Contract fuzzing of the OpenAPI with schemathesis, every check on, against real uvicorn on
127.0.0.1 and a fast fake backend: positive and negative cases of every operation, and of
each body variant (multipart and JSON) of both extract endpoints separately."""

from __future__ import annotations

import copy
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
import schemathesis.specs.openapi.schemas  # loaded here, at collection: see below
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import CHECKS, load_all_checks

from fashion_florence_client.problems import ErrorCode
from tests.service.http.contract_server import run_server

pytestmark = [pytest.mark.slow, pytest.mark.load]

# schemathesis' OpenAPI loader imports its modules lazily, and pytest rewrites them (it is
# a plugin), which means ``ast.parse``. In CPython 3.11 the AST constructor's recursion
# guard is not per thread, so a parse here racing one in the uvicorn thread (3.11's
# traceback module parses source lines to format a traceback) can fail with "AST
# constructor recursion depth mismatch"; it did once. Imported above, they load at
# collection, before any thread starts.

#: Refusals that depend on what OpenAPI cannot express: an image's bytes (format, decoding,
#: pixel limits) and where a well-formed http(s) URL points (host allowlist, odd spellings).
#: Schema-valid data may get these and nothing else below 500 (401 needs a key we never send).
CONTENT_REFUSALS = {
    ErrorCode.UNSUPPORTED_IMAGE_FORMAT.value,
    ErrorCode.INVALID_IMAGE.value,
    ErrorCode.IMAGE_TOO_LARGE.value,
    ErrorCode.URL_NOT_ALLOWED.value,
}

#: The default statuses for schema-invalid data, plus 413: a batch over ``maxItems``
#: (FF_MAX_BATCH_ITEMS) is refused with too_many_items, the documented answer.
_CONFIG = schemathesis.Config.from_str(
    """
[checks.negative_data_rejection]
expected-statuses = ["400", "401", "404", "405", "406", "413", "415", "422", "5xx"]
"""
)

BODY_VARIANTS = [
    (path, media_type)
    for path in ("/v1/extract", "/v1/extract/batch")
    for media_type in ("multipart/form-data", "application/json")
]
POSITIVE = schemathesis.GenerationMode.POSITIVE
MAX_EXAMPLES = 12  # per operation, variant and mode: the file stays well under a minute


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    with run_server() as url:
        yield url


@pytest.fixture(scope="module")
def spec(base_url: str) -> dict[str, Any]:
    document: dict[str, Any] = httpx.get(f"{base_url}/openapi.json", timeout=10).json()
    return document


@pytest.fixture(scope="module")
def schema(spec: dict[str, Any]) -> Any:
    return schemathesis.openapi.from_dict(spec, config=_CONFIG)


def one_variant(spec: dict[str, Any], path: str, media_type: str) -> Any:
    """The spec with only ``media_type`` left in ``path``'s request body: schemathesis then
    generates that variant alone (its ``media_type`` argument only labels a given body)."""
    document = copy.deepcopy(spec)
    content = document["paths"][path]["post"]["requestBody"]["content"]
    document["paths"][path]["post"]["requestBody"]["content"] = {media_type: content[media_type]}
    return schemathesis.openapi.from_dict(document, config=_CONFIG)[path]["POST"]


def _all_checks() -> list[Any]:
    """Every check schemathesis has (``--checks all``), except positive_data_acceptance,
    which :func:`_check_positive` replaces with one that knows :data:`CONTENT_REFUSALS`."""
    load_all_checks()
    return [
        check
        for check in CHECKS.get_all()
        if check is not schemathesis.checks.positive_data_acceptance
    ]


def _check_positive(case: Any, response: Any) -> None:
    if not case.meta.generation.mode.is_positive or response.status_code < 400:
        return
    if response.status_code >= 500 or response.status_code == 401:
        return  # 5xx: not_a_server_error judges those; 401 is never sent without keys
    code = response.json().get("code")
    assert code in CONTENT_REFUSALS, (
        f"schema-valid data refused with {response.status_code} {code}: "
        f"{response.text[:300]}\n{case.as_curl_command()}"
    )


def _check_problem(response: Any) -> None:
    """Every error is a problem document with a stable code, whatever the input."""
    if response.status_code < 400:
        return
    content_type = response.headers["content-type"]  # schemathesis: a list per header
    assert content_type[0].startswith("application/problem+json")
    assert {"type", "title", "status", "detail", "code"} <= set(response.json())


def fuzz(operation: Any, base_url: str, mode: schemathesis.GenerationMode) -> Counter[int]:
    """Run one operation's generated cases with every check; returns the statuses seen."""
    statuses: Counter[int] = Counter()
    checks = _all_checks()

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def check(case: Any) -> None:
        response = case.call(base_url=base_url, timeout=10)
        statuses[response.status_code] += 1
        case.validate_response(response, checks=checks)
        _check_problem(response)
        _check_positive(case, response)

    check()
    return statuses


@pytest.mark.parametrize("mode", list(schemathesis.GenerationMode), ids=str)
@pytest.mark.parametrize(("path", "media_type"), BODY_VARIANTS)
def test_body_variant_contract(
    spec: dict[str, Any], base_url: str, path: str, media_type: str, mode: Any
) -> None:
    """Each body variant on its own: a mixed run can starve one (it once sent the batch
    endpoint only empty multipart arrays, never JSON)."""
    operation = one_variant(spec, path, media_type)
    started = time.perf_counter()
    statuses = fuzz(operation, base_url, mode)
    print(
        f"\n{path} {media_type} {mode}: {dict(statuses)} in {time.perf_counter() - started:.1f} s"
    )
    assert sum(statuses.values()) >= MAX_EXAMPLES // 2, statuses
    if mode.is_positive and path.endswith("/batch"):
        # The batch answers every schema-valid body: a bad item is that item's error.
        assert set(statuses) == {200}, statuses


def test_other_operations_contract(schema: Any, base_url: str) -> None:
    operations = [
        result.ok() for result in schema.get_all_operations()
    ]  # an Err would raise, which fails the test as it should
    paths = {op.path for op in operations}
    assert paths >= {"/v1/extract", "/v1/extract/batch", "/v1/model", "/healthz", "/readyz"}
    for operation in operations:
        if operation.path.startswith("/v1/extract"):
            continue  # test_body_variant_contract
        # Without parameters or a body there is nothing to make invalid.
        has_inputs = any(True for _ in operation.iter_parameters()) or bool(operation.body)
        modes = list(schemathesis.GenerationMode) if has_inputs else [POSITIVE]
        for mode in modes:
            statuses = fuzz(operation, base_url, mode)
            print(f"\n{operation.label} {mode}: {dict(statuses)}")
            assert statuses, operation.label
