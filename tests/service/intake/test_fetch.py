"""ImageFetcher against a real HTTP server on 127.0.0.1: redirects, size and time limits.

The loopback block is relaxed here (``allow_loopback=True``, the test-only setting) so the
fetcher may dial the local server; test_ssrf.py covers the address checks themselves.
"""

from __future__ import annotations

import asyncio
import io
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from PIL import Image

from fashion_florence_client.problems import ErrorCode
from service.errors import ServiceError
from service.intake import ImageFetcher, decode_image, fetcher_from_settings
from service.settings import Settings
from tests.service.intake.netfakes import CAP, LocalServer, local_server

REPO_ROOT = Path(__file__).resolve().parents[3]
DRESS_DIR = REPO_ROOT.parent / "shared" / "data" / "clothing-small" / "test" / "dress"
TEST_DEADLINE_S = 2.0  # hard bound on every fetch in this file


def jpeg_payload() -> bytes:
    photos = sorted(DRESS_DIR.glob("*.jpg"))
    if photos:
        return photos[0].read_bytes()
    buf = io.BytesIO()  # no shared data here: still a real JPEG of a photo's few KB
    Image.effect_noise((128, 96), 40).convert("RGB").save(buf, "JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture
def server() -> Iterator[LocalServer]:
    with local_server(jpeg_payload()) as state:
        yield state


@pytest.fixture
def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def make_fetcher(**overrides: object) -> ImageFetcher:
    params: dict[str, object] = {
        "max_bytes": CAP,
        "connect_timeout_s": 1.0,
        "read_timeout_s": 1.0,
        "total_timeout_s": 1.5,
        "allow_loopback": True,
    } | overrides
    return ImageFetcher(**params)  # type: ignore[arg-type]


async def fetch(url: str, **overrides: object) -> bytes:
    async with make_fetcher(**overrides) as fetcher:
        async with asyncio.timeout(TEST_DEADLINE_S):
            return await fetcher.fetch(url)


async def fetch_error(url: str, code: ErrorCode, **overrides: object) -> ServiceError:
    with pytest.raises(ServiceError) as info:
        await fetch(url, **overrides)
    assert info.value.code is code, info.value.detail
    return info.value


# --- success ------------------------------------------------------------------------------


async def test_fetches_image_bytes(server: LocalServer) -> None:
    data = await fetch(server.url("/ok.jpg"))
    assert data == server.payload
    image = decode_image(data, max_image_bytes=CAP, max_image_pixels=40_000_000)
    assert image.mode == "RGB"
    sent = server.headers[0]
    assert sent["accept-encoding"] == "identity"
    assert sent["host"] == f"127.0.0.1:{server.port}"
    assert "authorization" not in sent
    assert "cookie" not in sent


async def test_content_type_is_not_trusted(server: LocalServer) -> None:
    # Served as text/html: the fetcher hands the bytes on; decoding judges them.
    assert await fetch(server.url("/as-text")) == server.payload


async def test_localhost_name_resolves_through_the_checks(server: LocalServer) -> None:
    assert await fetch(server.url("/ok.jpg", host="localhost")) == server.payload
    await fetch_error(
        server.url("/ok.jpg", host="localhost"), ErrorCode.URL_FETCH_FAILED, allow_loopback=False
    )


async def test_follows_a_relative_redirect(server: LocalServer) -> None:
    assert await fetch(server.url("/redirect")) == server.payload
    assert server.paths == ["/redirect", "/ok.jpg"]


async def test_redirect_count_is_capped_exactly(server: LocalServer) -> None:
    assert await fetch(server.url("/hops/3"), max_redirects=3) == server.payload
    server.paths.clear()
    error = await fetch_error(server.url("/hops/4"), ErrorCode.URL_FETCH_FAILED, max_redirects=3)
    assert "redirect" in error.detail.lower()
    assert server.paths == ["/hops/4", "/hops/3", "/hops/2", "/hops/1"]  # then it stops


async def test_body_exactly_at_the_cap_is_accepted(server: LocalServer) -> None:
    size = len(server.payload)
    assert await fetch(server.url("/ok.jpg"), max_bytes=size) == server.payload
    await fetch_error(server.url("/ok.jpg"), ErrorCode.IMAGE_TOO_LARGE, max_bytes=size - 1)


async def test_proxy_environment_is_ignored(
    server: LocalServer, closed_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    dead_proxy = f"http://127.0.0.1:{closed_port}"
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "all_proxy"):
        monkeypatch.setenv(name, dead_proxy)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    assert await fetch(server.url("/ok.jpg")) == server.payload


# --- refused URLs -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "ftp://127.0.0.1/ok.jpg",
        "file:///etc/passwd",
        "gopher://127.0.0.1:70/",
        "http:///ok.jpg",
        "https://",
        "/ok.jpg",
        "127.0.0.1/ok.jpg",
        "http://user:pw@127.0.0.1/",
        "http://user@127.0.0.1/",
        "http://[::1/",
        "http://127.0.0.1:99999/",
    ],
)
async def test_disallowed_urls_are_refused_without_a_request(url: str) -> None:
    await fetch_error(url, ErrorCode.URL_NOT_ALLOWED)


@pytest.mark.parametrize(
    "location",
    ["ftp://127.0.0.1/ok.jpg", "http://user:pw@127.0.0.1/ok.jpg", "http://127.1/ok.jpg"],
)
async def test_every_redirect_hop_is_validated(server: LocalServer, location: str) -> None:
    # The caller's URL was fine; what the upstream answered is a fetch failure.
    error = await fetch_error(
        server.url(f"/redirect-to?u={quote(location, safe='')}"), ErrorCode.URL_FETCH_FAILED
    )
    assert location not in error.detail
    assert len(server.paths) == 1


# --- upstream failures ----------------------------------------------------------------------


async def test_redirect_loop_fails(server: LocalServer) -> None:
    await fetch_error(server.url("/loop"), ErrorCode.URL_FETCH_FAILED)
    assert server.paths == ["/loop"] * 4


@pytest.mark.parametrize("status", [404, 500, 304])
async def test_non_2xx_fails_with_the_status_in_the_detail(
    server: LocalServer, status: int
) -> None:
    error = await fetch_error(server.url(f"/{status}"), ErrorCode.URL_FETCH_FAILED)
    assert str(status) in error.detail


async def test_closed_port_fails_with_the_generic_detail(closed_port: int) -> None:
    error = await fetch_error(f"http://127.0.0.1:{closed_port}/ok.jpg", ErrorCode.URL_FETCH_FAILED)
    assert error.detail == "The image URL could not be fetched."


@pytest.mark.parametrize("path", ["/gzip", "/bad-length"])
async def test_bad_framing_is_refused(server: LocalServer, path: str) -> None:
    await fetch_error(server.url(path), ErrorCode.URL_FETCH_FAILED)


# --- size and time limits ---------------------------------------------------------------------


async def test_declared_length_over_the_cap_fails_up_front(server: LocalServer) -> None:
    started = time.monotonic()
    await fetch_error(server.url("/big"), ErrorCode.IMAGE_TOO_LARGE, read_timeout_s=1.5)
    assert time.monotonic() - started < 0.5  # did not wait for the (never sent) body


async def test_chunked_body_is_cut_at_the_cap(server: LocalServer) -> None:
    started = time.monotonic()
    error = await fetch_error(server.url("/big-chunked"), ErrorCode.IMAGE_TOO_LARGE)
    assert str(CAP) in error.detail
    assert time.monotonic() - started < 1.0


async def test_trickling_server_hits_the_total_deadline(server: LocalServer) -> None:
    started = time.monotonic()
    error = await fetch_error(
        server.url("/slow"), ErrorCode.URL_FETCH_FAILED, read_timeout_s=1.0, total_timeout_s=0.5
    )
    elapsed = time.monotonic() - started
    assert 0.45 <= elapsed < 1.0, elapsed  # the 1 s read timeout never fires on its own
    assert error.detail == "The image URL could not be fetched."  # same as blocked/refused


async def test_stalled_body_hits_the_read_timeout(server: LocalServer) -> None:
    reasons: list[str] = []
    started = time.monotonic()
    await fetch_error(
        server.url("/stall"),
        ErrorCode.URL_FETCH_FAILED,
        read_timeout_s=0.3,
        total_timeout_s=1.5,
        on_failure=reasons.append,
    )
    assert time.monotonic() - started < 1.0
    assert reasons == ["timeout"]


# --- construction -----------------------------------------------------------------------------


async def test_fetcher_from_settings_uses_the_limits_in_seconds(server: LocalServer) -> None:
    settings = Settings(
        max_image_bytes=2048,
        fetch_connect_timeout_ms=200.0,
        fetch_read_timeout_ms=1000.0,
        fetch_total_timeout_ms=500.0,
        fetch_max_redirects=1,
        url_allow_loopback_for_tests=True,
    )
    reasons: list[str] = []
    async with fetcher_from_settings(settings, on_failure=reasons.append) as fetcher:
        assert fetcher.max_bytes == 2048
        assert fetcher.total_timeout_s == pytest.approx(0.5)
        assert fetcher.max_redirects == 1
        with pytest.raises(ServiceError) as too_big:
            await fetcher.fetch(server.url("/ok.jpg"))
        assert too_big.value.code is ErrorCode.IMAGE_TOO_LARGE
        started = time.monotonic()
        with pytest.raises(ServiceError) as slow:
            await fetcher.fetch(server.url("/slow"))
        assert slow.value.code is ErrorCode.URL_FETCH_FAILED
        assert time.monotonic() - started < 1.0
    assert reasons == ["too_large", "timeout"]


async def test_settings_keep_loopback_blocked_by_default(server: LocalServer) -> None:
    async with fetcher_from_settings(Settings()) as fetcher:
        with pytest.raises(ServiceError) as info:
            await fetcher.fetch(server.url("/ok.jpg"))
    assert info.value.code is ErrorCode.URL_FETCH_FAILED
    assert server.paths == []


async def test_aclose_closes_the_client(server: LocalServer) -> None:
    fetcher = make_fetcher()
    await fetcher.aclose()
    with pytest.raises(RuntimeError, match="closed"):  # a programming error, not a 5xx
        await fetcher.fetch(server.url("/ok.jpg"))
    assert server.paths == []


@pytest.mark.parametrize(
    "overrides",
    [{"max_bytes": 0}, {"total_timeout_s": 0.0}, {"max_redirects": -1}],
)
def test_invalid_construction_is_rejected(overrides: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="must"):
        make_fetcher(**overrides)
