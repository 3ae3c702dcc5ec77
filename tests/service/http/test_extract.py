"""``/v1/extract`` and ``/v1/extract/batch`` over ASGI with a FakeBackend (no model, no torch)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from tests.fakes import FakeBackend
from tests.loopback import serve_files
from tests.service.http.conftest import (
    BAD,
    BAD_RED_ABOVE,
    BLUE,
    RED,
    assert_problem,
    make_settings,
    serve,
)

HEX_ID = re.compile(r"^[0-9a-f]{32}$")


def image_files(*images: bytes) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("image", (f"{i}.jpg", data, "image/jpeg")) for i, data in enumerate(images)]


# --- success ------------------------------------------------------------------------------


async def test_extract_real_photo(real_photo: bytes) -> None:
    backend = FakeBackend(bad_red_above=BAD_RED_ABOVE, batch_delay_s=0.02)
    async with serve(backend=backend) as s:
        response = await s.client.post("/v1/extract", files=image_files(real_photo))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"request_id", "model", "attributes", "confidence", "timing_ms"}
    assert body["request_id"] == response.headers["x-request-id"]
    assert body["model"] == {"name": "fake", "revision": "0"}
    attributes = body["attributes"]
    assert attributes["category"] == "top"
    assert attributes["primary_color"] in {"red", "blue"}
    timing = body["timing_ms"]
    assert set(timing) == {"queue", "inference", "total"}
    assert timing["queue"] >= 0
    assert timing["inference"] >= 20.0  # the fake's batch_delay_s is inside the batch
    assert timing["total"] >= timing["queue"] + timing["inference"] - 0.01
    assert backend.batches == [1]


@pytest.mark.parametrize(("dispatch", "waits"), [("idle", False), ("wait", True)])
async def test_batch_dispatch_policy(dispatch: str, waits: bool) -> None:
    """A lone image: "idle" hands it to the free engine at once; "wait" holds it to fill."""
    settings = make_settings(batch_dispatch=dispatch, max_wait_ms=400.0)
    async with serve(settings) as s:
        response = await s.client.post("/v1/extract", files=image_files(RED))
    assert response.status_code == 200, response.text
    queue_ms = response.json()["timing_ms"]["queue"]
    if waits:
        assert queue_ms >= 350.0
    else:
        assert queue_ms < 200.0


async def test_request_id_is_echoed_when_sent() -> None:
    async with serve() as s:
        response = await s.client.post(
            "/v1/extract", files=image_files(RED), headers={"X-Request-ID": "client-42.a:b"}
        )
    assert response.status_code == 200
    assert response.headers["x-request-id"] == "client-42.a:b"
    assert response.json()["request_id"] == "client-42.a:b"


async def test_request_id_is_generated_when_missing() -> None:
    async with serve() as s:
        first = await s.client.post("/v1/extract", files=image_files(RED))
        second = await s.client.post("/v1/extract", files=image_files(RED))
    for response in (first, second):
        assert response.status_code == 200
        assert HEX_ID.match(response.headers["x-request-id"])
        assert response.json()["request_id"] == response.headers["x-request-id"]
    assert first.headers["x-request-id"] != second.headers["x-request-id"]


@pytest.mark.parametrize("sent", ["x" * 300, "has spaces in it", "semi;colon", ""])
async def test_invalid_request_id_is_replaced(sent: str) -> None:
    async with serve() as s:
        response = await s.client.post(
            "/v1/extract", files=image_files(RED), headers={"X-Request-ID": sent}
        )
    assert response.status_code == 200
    minted = response.headers["x-request-id"]
    assert minted != sent
    assert HEX_ID.match(minted)
    assert response.json()["request_id"] == minted


async def test_request_id_is_on_error_responses_too() -> None:
    async with serve() as s:
        response = await s.client.post(
            "/v1/extract",
            content=b"hi",
            headers={"content-type": "text/plain", "x-request-id": "e-1"},
        )
    assert_problem(response, 415, "unsupported_media_type")
    assert response.headers["x-request-id"] == "e-1"


async def test_batch_results_come_back_in_input_order() -> None:
    async with serve() as s:
        response = await s.client.post("/v1/extract/batch", files=image_files(RED, BLUE, RED))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["request_id"] == response.headers["x-request-id"]
    assert body["model"] == {"name": "fake", "revision": "0"}
    colors = [item["attributes"]["primary_color"] for item in body["results"]]
    assert colors == ["red", "blue", "red"]


async def test_bad_item_fails_alone_in_a_batch() -> None:
    async with serve() as s:
        response = await s.client.post("/v1/extract/batch", files=image_files(RED, BAD, BLUE))
    assert response.status_code == 200, response.text
    first, middle, last = response.json()["results"]
    assert first == {"attributes": first["attributes"], "confidence": None}  # fake: no scores
    assert first["attributes"]["primary_color"] == "red"
    assert set(middle) == {"error"}
    assert middle["error"]["code"] == "invalid_model_output"
    assert middle["error"]["detail"]
    assert last["attributes"]["primary_color"] == "blue"


async def test_bad_image_alone_is_a_502_problem() -> None:
    async with serve() as s:
        response = await s.client.post("/v1/extract", files=image_files(BAD))
    assert_problem(response, 502, "invalid_model_output")


# --- request errors -----------------------------------------------------------------------


@pytest.mark.parametrize("count", [3, 5, 12])
async def test_too_many_batch_images_is_413(count: int) -> None:
    async with serve(make_settings(max_batch_items=2)) as s:
        ok = await s.client.post("/v1/extract/batch", files=image_files(RED, BLUE))
        response = await s.client.post("/v1/extract/batch", files=image_files(*[RED] * count))
    assert ok.status_code == 200
    assert_problem(response, 413, "too_many_items")
    assert s.backend is not None
    assert sum(s.backend.batches) == 2  # the refused request cost no model time


async def test_too_many_batch_urls_is_413() -> None:
    async with serve(make_settings(max_batch_items=2)) as s:
        urls = [f"http://127.0.0.1:9/{i}.jpg" for i in range(3)]
        response = await s.client.post("/v1/extract/batch", json={"urls": urls})
    assert_problem(response, 413, "too_many_items")


LIMIT = 4096  # max_body_bytes of the body-limit tests


async def test_body_over_limit_by_content_length_is_413() -> None:
    async with serve(make_settings(max_body_bytes=LIMIT, max_image_bytes=LIMIT)) as s:
        response = await s.client.post("/v1/extract", files=image_files(RED + b"\0" * (LIMIT * 2)))
    assert int(response.request.headers["content-length"]) > LIMIT
    assert_problem(response, 413, "payload_too_large")
    assert "x-request-id" in response.headers
    assert s.backend is not None
    assert s.backend.batches == []


@pytest.mark.parametrize("path", ["/v1/extract", "/v1/extract/batch"])
async def test_streamed_body_over_limit_is_413(path: str) -> None:
    # A valid multipart body, sent in chunks without Content-Length (chunked upload).
    encoded = httpx.Request("POST", "http://x/", files=image_files(RED + b"\0" * (LIMIT * 16)))
    payload = encoded.read()
    chunk = 512
    total_chunks = -(-len(payload) // chunk)
    sent = 0

    async def stream() -> AsyncIterator[bytes]:
        nonlocal sent
        for start in range(0, len(payload), chunk):
            sent += 1
            yield payload[start : start + chunk]

    async with serve(make_settings(max_body_bytes=LIMIT, max_image_bytes=LIMIT)) as s:
        response = await s.client.post(
            path, content=stream(), headers={"content-type": encoded.headers["content-type"]}
        )
    assert "content-length" not in response.request.headers
    assert_problem(response, 413, "payload_too_large")
    assert sent < total_chunks  # refused while streaming, not after reading everything
    assert s.backend is not None
    assert s.backend.batches == []


async def test_body_just_under_limit_is_accepted() -> None:
    # Guards the 413 tests above against a limit that refuses everything.
    async with serve(make_settings(max_body_bytes=LIMIT, max_image_bytes=LIMIT)) as s:
        response = await s.client.post("/v1/extract", files=image_files(RED))
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("path", ["/v1/extract", "/v1/extract/batch"])
async def test_wrong_content_type_is_415(path: str) -> None:
    async with serve() as s:
        response = await s.client.post(path, content=RED, headers={"content-type": "text/plain"})
    assert_problem(response, 415, "unsupported_media_type")


@pytest.mark.parametrize("path", ["/v1/extract", "/v1/extract/batch"])
async def test_multipart_without_image_field_is_400(path: str) -> None:
    async with serve() as s:
        response = await s.client.post(path, files=[("picture", ("a.jpg", RED, "image/jpeg"))])
    assert_problem(response, 400, "invalid_request")


async def test_image_field_that_is_not_a_file_is_400() -> None:
    async with serve() as s:
        # A file under another name forces multipart; "image" itself is a plain text field.
        response = await s.client.post(
            "/v1/extract",
            data={"image": "not a file"},
            files=[("other", ("a.jpg", RED, "image/jpeg"))],
        )
    assert response.request.headers["content-type"].startswith("multipart/form-data")
    assert_problem(response, 400, "invalid_request")


async def test_single_extract_with_two_images_is_400() -> None:
    async with serve() as s:
        response = await s.client.post("/v1/extract", files=image_files(RED, BLUE))
    assert_problem(response, 400, "invalid_request")


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/extract", b"{}"),
        ("/v1/extract", b'{"uri": "http://example.com/a.jpg"}'),
        ("/v1/extract", b'{"url": ""}'),
        ("/v1/extract", b"{not json"),
        ("/v1/extract/batch", b"{}"),
        ("/v1/extract/batch", b'{"urls": []}'),
    ],
)
async def test_bad_json_is_400(path: str, body: bytes) -> None:
    async with serve() as s:
        response = await s.client.post(
            path, content=body, headers={"content-type": "application/json"}
        )
    assert_problem(response, 400, "invalid_request")


@pytest.mark.parametrize(
    ("data", "status", "code"),
    [
        (b"\xff\xd8\xff\xe0" + b"\x00\x10JFIF" + b"garbage" * 64, 422, "invalid_image"),
        (RED[: len(RED) // 3], 422, "invalid_image"),
        (b"this is plain text, not an image" * 4, 415, "unsupported_image_format"),
        (b"", 422, "invalid_image"),
    ],
    ids=["corrupt-jpeg", "truncated-jpeg", "not-an-image", "empty"],
)
async def test_undecodable_image(data: bytes, status: int, code: str) -> None:
    async with serve() as s:
        single = await s.client.post("/v1/extract", files=image_files(data))
        batch = await s.client.post("/v1/extract/batch", files=image_files(RED, data))
    assert_problem(single, status, code)
    assert batch.status_code == 200
    good, bad = batch.json()["results"]
    assert good["attributes"]["primary_color"] == "red"
    assert bad["error"]["code"] == code


async def test_queue_full_is_503_with_retry_after_and_nothing_is_lost() -> None:
    backend = FakeBackend(bad_red_above=BAD_RED_ABOVE, batch_delay_s=0.15)
    settings = make_settings(queue_size=1, max_batch_size=1, max_wait_ms=0.0)
    async with serve(settings, backend) as s:
        responses = await asyncio.gather(
            *(s.client.post("/v1/extract", files=image_files(RED)) for _ in range(6))
        )
    statuses = sorted(r.status_code for r in responses)
    assert set(statuses) <= {200, 503}, statuses
    full = [r for r in responses if r.status_code == 503]
    assert full, statuses
    for response in full:
        assert_problem(response, 503, "queue_full")
        assert int(response.headers["retry-after"]) >= 1
    served = [r for r in responses if r.status_code == 200]
    assert served, statuses  # at least the first one in got through
    for response in served:
        assert response.json()["attributes"]["primary_color"] == "red"
    # Every accepted image ran exactly once, one per batch; refused ones never reached it.
    assert backend.batches == [1] * len(served)


# --- URLs, fetched from a real HTTP server on the loopback --------------------------------


# The image host is a local server: the fetcher blocks loopback unless told (tests only).
LOOPBACK_OK = make_settings(url_allow_loopback_for_tests=True)


@pytest.fixture
def image_server(real_photo: bytes) -> Iterator[str]:
    """``{base}/photo.jpg`` serves the real photo; every other path is a 404."""
    with serve_files({"/photo.jpg": real_photo}) as base:
        yield base


async def test_extract_from_url(image_server: str) -> None:
    async with serve(LOOPBACK_OK) as s:
        response = await s.client.post("/v1/extract", json={"url": f"{image_server}/photo.jpg"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == {"name": "fake", "revision": "0"}
    assert body["attributes"]["category"] == "top"
    assert body["request_id"] == response.headers["x-request-id"]


async def test_extract_from_missing_url_is_502(image_server: str) -> None:
    async with serve(LOOPBACK_OK) as s:
        response = await s.client.post("/v1/extract", json={"url": f"{image_server}/gone.jpg"})
    body = assert_problem(response, 502, "url_fetch_failed")
    assert "404" in body["detail"]


async def test_extract_from_disallowed_url_is_400() -> None:
    async with serve() as s:
        response = await s.client.post("/v1/extract", json={"url": "file:///etc/passwd"})
    assert_problem(response, 400, "url_not_allowed")


async def test_url_batch_gives_per_item_results_in_order(image_server: str) -> None:
    urls = [f"{image_server}/photo.jpg", f"{image_server}/missing.jpg", f"{image_server}/photo.jpg"]
    async with serve(LOOPBACK_OK) as s:
        response = await s.client.post("/v1/extract/batch", json={"urls": urls})
    assert response.status_code == 200, response.text
    first, second, third = response.json()["results"]
    assert first["attributes"]["category"] == "top"
    assert second["error"]["code"] == "url_fetch_failed"
    assert "404" in second["error"]["detail"]
    assert third == first
