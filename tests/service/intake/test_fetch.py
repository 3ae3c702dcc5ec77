"""ImageFetcher against a real HTTP server on 127.0.0.1 (nothing leaves the loopback)."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import io
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from PIL import Image

from service.errors import ErrorCode, ServiceError
from service.intake import ImageFetcher, decode_image, fetcher_from_settings
from service.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[3]
DRESS_DIR = REPO_ROOT.parent / "shared" / "data" / "clothing-small" / "test" / "dress"

CAP = 1024 * 1024  # max_bytes of the fetchers under test
TEST_DEADLINE_S = 2.0  # hard bound on every fetch in this file


def jpeg_payload() -> bytes:
    photos = sorted(DRESS_DIR.glob("*.jpg"))
    if photos:
        return photos[0].read_bytes()
    buf = io.BytesIO()  # no shared data here: still a real JPEG, from Pillow's encoder
    Image.new("RGB", (64, 48), (120, 40, 200)).save(buf, "JPEG")
    return buf.getvalue()


@dataclass
class LocalServer:
    port: int
    payload: bytes
    paths: list[str] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


def make_handler(state: LocalServer, stop: threading.Event) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            self.close_connection = True
            state.paths.append(self.path)
            state.headers.append({k.lower(): v for k, v in self.headers.items()})
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self.route()  # a client giving up mid-body is expected in these tests

        def head(self, status: int, **headers: str | int) -> None:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name.replace("_", "-"), str(value))
            self.send_header("Connection", "close")
            self.end_headers()

        def body(self, data: bytes, content_type: str = "image/jpeg") -> None:
            self.head(200, Content_Type=content_type, Content_Length=len(data))
            self.wfile.write(data)

        def route(self) -> None:
            path = self.path
            if path == "/ok.jpg":
                self.body(state.payload)
            elif path == "/redirect":
                self.head(302, Location="/ok.jpg", Content_Length=0)
            elif path == "/loop":
                self.head(301, Location="/loop", Content_Length=0)
            elif path.startswith("/hops/"):
                left = int(path.removeprefix("/hops/"))  # redirects still to come
                if left == 0:
                    self.body(state.payload)
                else:
                    self.head(307, Location=f"/hops/{left - 1}", Content_Length=0)
            elif path == "/redirect-ftp":
                self.head(302, Location="ftp://127.0.0.1/ok.jpg", Content_Length=0)
            elif path == "/redirect-userinfo":
                location = f"http://user:pw@127.0.0.1:{state.port}/ok.jpg"
                self.head(302, Location=location, Content_Length=0)
            elif path == "/big":
                # Declares too much, then sends nothing: only an up-front check ends this fast.
                self.head(200, Content_Type="image/jpeg", Content_Length=CAP * 10)
                stop.wait(3)
            elif path == "/big-chunked":
                self.head(200, Content_Type="image/jpeg", Transfer_Encoding="chunked")
                chunk = b"\xff" * 16384
                for _ in range(64 * CAP // len(chunk)):  # 64x the cap unless the client stops
                    if stop.is_set():
                        return
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.write(b"0\r\n\r\n")
            elif path == "/slow":
                self.head(200, Content_Type="image/jpeg", Content_Length=1000)
                for _ in range(1000):
                    self.wfile.write(b"\xff")
                    self.wfile.flush()
                    if stop.wait(0.2):
                        return
            elif path == "/stall":
                self.head(200, Content_Type="image/jpeg", Content_Length=10)
                stop.wait(3)
            elif path == "/gzip":
                data = gzip.compress(state.payload)
                self.head(200, Content_Encoding="gzip", Content_Length=len(data))
                self.wfile.write(data)
            else:
                self.head(int(path.strip("/")) if path.strip("/").isdigit() else 404)

    return Handler


@pytest.fixture
def server() -> Iterator[LocalServer]:
    stop = threading.Event()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    state = LocalServer(port=httpd.server_address[1], payload=jpeg_payload())
    httpd.RequestHandlerClass = make_handler(state, stop)
    thread = threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield state
    finally:
        stop.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=2)


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
    assert "authorization" not in sent
    assert "cookie" not in sent


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
        "http:///ok.jpg",
        "https://",
        "/ok.jpg",
        "127.0.0.1/ok.jpg",
        "http://user:pw@127.0.0.1/",
        "http://user@127.0.0.1/",
        "http://[::1/",
    ],
)
async def test_disallowed_urls_are_refused_without_a_request(url: str) -> None:
    await fetch_error(url, ErrorCode.URL_NOT_ALLOWED)


@pytest.mark.parametrize("path", ["/redirect-ftp", "/redirect-userinfo"])
async def test_every_redirect_hop_is_validated(server: LocalServer, path: str) -> None:
    await fetch_error(server.url(path), ErrorCode.URL_NOT_ALLOWED)
    assert server.paths == [path]


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


async def test_closed_port_fails(closed_port: int) -> None:
    await fetch_error(f"http://127.0.0.1:{closed_port}/ok.jpg", ErrorCode.URL_FETCH_FAILED)


async def test_content_encoding_is_refused(server: LocalServer) -> None:
    error = await fetch_error(server.url("/gzip"), ErrorCode.URL_FETCH_FAILED)
    assert "gzip" in error.detail


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
        server.url("/slow"), ErrorCode.URL_FETCH_TIMEOUT, read_timeout_s=1.0, total_timeout_s=0.5
    )
    elapsed = time.monotonic() - started
    assert 0.45 <= elapsed < 1.0, elapsed  # the 1 s read timeout never fires on its own
    assert "0.5" in error.detail


async def test_stalled_body_hits_the_read_timeout(server: LocalServer) -> None:
    started = time.monotonic()
    error = await fetch_error(
        server.url("/stall"), ErrorCode.URL_FETCH_TIMEOUT, read_timeout_s=0.3, total_timeout_s=1.5
    )
    assert time.monotonic() - started < 1.0
    assert "reading" in error.detail


# --- transport seam: failures a loopback server cannot produce on demand -----------------------


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (httpx.ConnectTimeout("connect timed out"), ErrorCode.URL_FETCH_TIMEOUT),
        (httpx.PoolTimeout("pool timed out"), ErrorCode.URL_FETCH_TIMEOUT),
        (httpx.ConnectError("tls handshake failed"), ErrorCode.URL_FETCH_FAILED),
        (httpx.RemoteProtocolError("peer closed"), ErrorCode.URL_FETCH_FAILED),
    ],
)
async def test_transport_errors_map_to_service_errors(exc: Exception, code: ErrorCode) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc

    await fetch_error("https://images.invalid/a.jpg", code, transport=httpx.MockTransport(handler))


async def test_malformed_redirect_location_fails() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(302, headers={"Location": "http://[::1/"})

    transport = httpx.MockTransport(handler)
    await fetch_error(
        "https://images.invalid/a.jpg", ErrorCode.URL_FETCH_FAILED, transport=transport
    )


# --- construction -----------------------------------------------------------------------------


async def test_fetcher_from_settings_uses_the_limits_in_seconds(server: LocalServer) -> None:
    settings = Settings(
        max_image_bytes=2048,
        fetch_connect_timeout_ms=200.0,
        fetch_read_timeout_ms=1000.0,
        fetch_total_timeout_ms=500.0,
    )
    async with fetcher_from_settings(settings) as fetcher:
        assert fetcher.max_bytes == 2048
        assert fetcher.total_timeout_s == pytest.approx(0.5)
        with pytest.raises(ServiceError) as too_big:
            await fetcher.fetch(server.url("/ok.jpg"))
        assert too_big.value.code is ErrorCode.IMAGE_TOO_LARGE
        started = time.monotonic()
        with pytest.raises(ServiceError) as slow:
            await fetcher.fetch(server.url("/slow"))
        assert slow.value.code is ErrorCode.URL_FETCH_TIMEOUT
        assert time.monotonic() - started < 1.0


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
