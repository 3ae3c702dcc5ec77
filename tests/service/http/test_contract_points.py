"""The published contract says what the server does, point by point: for each probe, the spec
(its request schema, checked with jsonschema) and the server (the real app) agree on
whether it is acceptable. Plus every documented code and header is in the spec."""

from __future__ import annotations

import math
from typing import Any

import httpx
import jsonschema  # type: ignore[import-untyped]
import pytest
from openapi_spec_validator import validate as validate_openapi
from pydantic import ValidationError

from fashion_florence_client.problems import ERROR_CATALOGUE, ErrorCode
from fashion_florence_client.schema import AttributeConfidence
from service.http.app import create_app
from tests.service.http.conftest import RED, assert_problem, make_settings, serve

EXTRACT, BATCH = "/v1/extract", "/v1/extract/batch"
MULTIPART, JSON = "multipart/form-data", "application/json"
FILE = "<file bytes>"  # a file part, as the request schema sees it (a string)


def spec_of(**overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = create_app(make_settings(**overrides)).openapi()
    return spec


def spec_accepts(spec: dict[str, Any], path: str, media_type: str, instance: Any) -> bool:
    """Whether ``instance`` is a valid body of ``path`` in ``media_type`` per the spec."""
    body = spec["paths"][path]["post"]["requestBody"]["content"][media_type]["schema"]
    schema = {**body, "components": spec["components"]}  # so that $refs resolve
    return bool(jsonschema.Draft202012Validator(schema).is_valid(instance))


def operations(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (path, method, operation)
        for path, item in spec["paths"].items()
        for method, operation in item.items()
    ]


async def problem_code(response: httpx.Response) -> str:
    code: str = response.json()["code"]
    return code


def test_the_spec_is_valid_openapi() -> None:
    validate_openapi(spec_of())
    validate_openapi(spec_of(api_keys=["k"]))


# 1. Batch URL patterns: a bad URL is a per-item error in a batch (the request is valid, the
# spec puts no pattern on the items); the single endpoint refuses it (the spec's pattern).
@pytest.mark.parametrize("url", ["ftp://example.com/a.jpg", "", "not a url"])
async def test_bad_urls_are_batch_items_errors_and_single_refusals(url: str) -> None:
    spec = spec_of()
    assert spec_accepts(spec, BATCH, JSON, {"urls": [url]})
    assert not spec_accepts(spec, EXTRACT, JSON, {"url": url})
    async with serve() as s:
        batch = await s.client.post(BATCH, json={"urls": [url, url]})
        assert batch.status_code == 200, batch.text
        assert [r["error"]["code"] for r in batch.json()["results"]] == ["url_not_allowed"] * 2
        single = await s.client.post(EXTRACT, json={"url": url})
        assert single.status_code == 400
        # An empty string fails the body's own validation before the URL policy sees it.
        assert await problem_code(single) in ("url_not_allowed", "invalid_request")


# 2. The batch multipart array: at least one image, at most FF_MAX_BATCH_ITEMS.
async def test_batch_image_array_bounds_match_the_server() -> None:
    spec = spec_of(max_batch_items=3)
    assert not spec_accepts(spec, BATCH, MULTIPART, {"image": []})
    assert spec_accepts(spec, BATCH, MULTIPART, {"image": [FILE] * 3})
    assert not spec_accepts(spec, BATCH, MULTIPART, {"image": [FILE] * 4})
    assert not spec_accepts(spec, BATCH, JSON, {"urls": ["http://a/"] * 4})
    async with serve(make_settings(max_batch_items=3)) as s:
        # An empty array is a multipart body with no parts at all.
        empty = await s.client.post(
            BATCH, content=b"--b--\r\n", headers={"content-type": "multipart/form-data; boundary=b"}
        )
        assert_problem(empty, 400, "invalid_request")
        three = [("image", ("a.jpg", RED, "image/jpeg"))] * 3
        assert (await s.client.post(BATCH, files=three)).status_code == 200
        four = [("image", ("a.jpg", RED, "image/jpeg"))] * 4
        assert_problem(await s.client.post(BATCH, files=four), 413, "too_many_items")


# 3. Extra form fields: the spec allows none, and the server refuses any (not only a ninth).
@pytest.mark.parametrize("path", [EXTRACT, BATCH])
@pytest.mark.parametrize("extra", [1, 9])
async def test_extra_form_fields_are_refused(path: str, extra: int) -> None:
    image = [FILE] if path == BATCH else FILE
    fields = {f"x{i}": "1" for i in range(extra)}
    assert spec_accepts(spec_of(), path, MULTIPART, {"image": image})
    assert not spec_accepts(spec_of(), path, MULTIPART, {"image": image} | fields)
    async with serve() as s:
        response = await s.client.post(path, files={"image": ("a.jpg", RED)}, data=fields)
        body = assert_problem(response, 400, "invalid_request")
        # Past 8 the multipart parser stops first (its own message); below, the field is named.
        assert "x0" in body["detail"] if extra < 8 else "Too many fields" in body["detail"]


# 4a. The bearer scheme is declared, and required exactly where the server requires it.
async def test_bearer_scheme_matches_the_server() -> None:
    for keys, required in (([], False), (["k"], True)):
        spec = spec_of(api_keys=keys)
        scheme = spec["components"]["securitySchemes"]["bearerAuth"]
        assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
        for path, _, operation in operations(spec):
            expected: list[dict[str, list[str]]] | None = (
                [{"bearerAuth": []}] if required and path.startswith("/v1/") else None
            )
            assert operation.get("security") == expected, path
    async with serve(make_settings(api_keys=["k"])) as s:
        refused = await s.client.get("/v1/model")
        assert_problem(refused, 401, "unauthorized")
        assert refused.headers["www-authenticate"].startswith("Bearer")
        allowed = await s.client.get("/v1/model", headers={"authorization": "Bearer k"})
        assert allowed.status_code == 200
        assert (await s.client.get("/healthz")).status_code == 200


# 4b. Every documented header is declared: X-Request-ID on every response, Retry-After on
# every 503, WWW-Authenticate on every 401.
def test_documented_headers_are_in_the_spec() -> None:
    for path, method, operation in operations(spec_of()):
        for status, response in operation["responses"].items():
            headers = response.get("headers", {})
            where = f"{method} {path} {status}"
            assert headers["X-Request-ID"]["required"] is True, where
            if status == "503":
                assert headers["Retry-After"]["required"] is True, where
            if status == "401":
                assert headers["WWW-Authenticate"]["required"] is True, where


def test_every_error_code_is_in_the_spec() -> None:
    spec = spec_of()
    code_schema = spec["components"]["schemas"]["Problem"]["properties"]["code"]
    for code, catalogued in ERROR_CATALOGUE.items():
        assert code.value in code_schema["examples"]
        assert f"`{code.value}` ({catalogued.status})" in code_schema["description"]
    # Each documented problem response names the codes its status can carry.
    for path, method, operation in operations(spec):
        for status, response in operation["responses"].items():
            if "application/problem+json" not in response.get("content", {}):
                continue
            for code, catalogued in ERROR_CATALOGUE.items():
                if str(catalogued.status) == status:
                    assert f"`{code.value}`" in response["description"], (method, path, code)


async def test_every_503_carries_retry_after_and_every_answer_its_id() -> None:
    def loader(settings: Any) -> Any:
        raise RuntimeError("the weights are missing")

    async with serve(loader=loader) as s:  # a failed load: every model route answers 503
        for response in (
            await s.client.get("/v1/model"),
            await s.client.post(EXTRACT, files={"image": ("a.jpg", RED)}),
            await s.client.get("/readyz"),
        ):
            assert response.status_code == 503
            assert int(response.headers["retry-after"]) >= 1
            assert response.headers["x-request-id"]


async def test_an_unexpected_error_still_carries_the_request_id() -> None:
    app = create_app(make_settings())

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("a bug")

    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        response = await client.get("/boom", headers={"x-request-id": "trace-1"})
    assert_problem(response, 500, "internal_error")
    assert response.headers["x-request-id"] == "trace-1"


# 4c. Tag confidences are probabilities, in the spec and in the shared type.
def test_tag_confidences_are_bounded() -> None:
    properties = spec_of()["components"]["schemas"]["AttributeConfidence"]["properties"]
    for name in ("style_tags", "occasion_tags"):
        items = properties[name] if name == "style_tags" else properties[name]["anyOf"][0]
        assert (items["items"]["minimum"], items["items"]["maximum"]) == (0.0, 1.0), name
    fields = {"category": 1.0, "primary_color": 1.0, "material": 1.0, "occasion_tags": None}
    with pytest.raises(ValidationError):
        AttributeConfidence.model_validate(fields | {"style_tags": [1.5]})
    with pytest.raises(ValidationError):
        AttributeConfidence.model_validate(fields | {"style_tags": [], "occasion_tags": [-0.1]})


# 4d. The image must be a file part: the spec says so, the server refuses a text field.
@pytest.mark.parametrize("path", [EXTRACT, BATCH])
async def test_image_must_be_a_file_part(path: str) -> None:
    content = spec_of()["paths"][path]["post"]["requestBody"]["content"][MULTIPART]
    assert content["encoding"]["image"]["contentType"] == "application/octet-stream"
    image = content["schema"]["properties"]["image"]
    file_schema = image.get("items", image)
    assert file_schema["format"] == "binary"
    assert "file part" in file_schema["description"]
    async with serve() as s:
        # No filename: a text field, whatever its bytes.
        response = await s.client.post(path, files={"image": (None, b"\xff\xd8 not a file")})
        body = assert_problem(response, 400, "invalid_request")
        assert "file upload" in body["detail"]


# 5. A non-finite min_tag_confidence is refused as such, not as "greater than 1".
@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "-inf"])
async def test_non_finite_min_tag_confidence(value: str) -> None:
    assert not math.isfinite(float(value))
    async with serve() as s:
        response = await s.client.post(
            f"{EXTRACT}?min_tag_confidence={value}", files={"image": ("a.jpg", RED)}
        )
        body = assert_problem(response, 400, "invalid_request")
        assert "finite number" in body["detail"]
        assert "less than" not in body["detail"]
        assert "greater than" not in body["detail"]


# 6. Both body variants of both endpoints are in the spec (test_contract fuzzes each alone).
def test_both_body_variants_are_documented() -> None:
    spec = spec_of()
    for path in (EXTRACT, BATCH):
        assert set(spec["paths"][path]["post"]["requestBody"]["content"]) == {MULTIPART, JSON}
    assert ErrorCode.URL_NOT_ALLOWED in ERROR_CATALOGUE
