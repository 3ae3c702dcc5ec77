"""Network doubles for the fetcher tests: nothing here sends a packet beyond loopback.

- :class:`FakeResolver` answers names from a table (one answer per call, so a test can make
  the second answer differ from the first, as DNS rebinding does).
- :class:`RecordingBackend` is the connection layer under the pinning: it records the
  address the fetcher asked to dial and then connects to a local server on 127.0.0.1
  instead (or to nothing), whatever address that was.
- :class:`LocalServer` is a real HTTP server on 127.0.0.1 with routes for each test.
"""

from __future__ import annotations

import contextlib
import ssl
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import httpcore

CAP = 1024 * 1024  # max_bytes of the fetchers under test


class FakeResolver:
    """``answers[host]`` is a list of answers, used in turn (the last one repeats)."""

    def __init__(self, answers: Mapping[str, Sequence[Sequence[str]]]) -> None:
        self._answers = {host: [list(a) for a in seq] for host, seq in answers.items()}
        self.calls: list[str] = []

    async def resolve(self, host: str, port: int) -> Sequence[str]:
        self.calls.append(host)
        answers = self._answers.get(host)
        if not answers:
            raise OSError(f"fake resolver: {host} does not exist")
        return answers.pop(0) if len(answers) > 1 else answers[0]


class _DeadStream(httpcore.AsyncNetworkStream):
    """A connection that goes nowhere: TLS records the server name, I/O fails."""

    def __init__(self, backend: RecordingBackend) -> None:
        self._backend = backend

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:  # noqa: ASYNC109
        raise httpcore.ReadError("fake connection: nothing to read")

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:  # noqa: ASYNC109
        self._backend.sent.append(buffer)
        raise httpcore.WriteError("fake connection: not sent anywhere")

    async def aclose(self) -> None:
        pass

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> httpcore.AsyncNetworkStream:
        self._backend.tls_names.append(server_hostname)
        raise httpcore.ConnectError("fake connection: no TLS peer")


class RecordingBackend(httpcore.AsyncNetworkBackend):
    """Records each ``(address, port)`` dialled; connects to ``serve_port`` on loopback."""

    def __init__(self, serve_port: int | None = None, refuse: Iterable[str] = ()) -> None:
        self.serve_port = serve_port
        self.refuse = frozenset(refuse)  # addresses whose dial fails as "connection refused"
        self.dials: list[tuple[str, int]] = []
        self.tls_names: list[str | None] = []
        self.sent: list[bytes] = []
        self._real = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        self.dials.append((host, port))
        if host in self.refuse:
            raise httpcore.ConnectError(f"fake: {host} refused the connection")
        if self.serve_port is None:
            return _DeadStream(self)
        return await self._real.connect_tcp("127.0.0.1", self.serve_port, timeout=timeout)

    async def sleep(self, seconds: float) -> None:
        await self._real.sleep(seconds)


@dataclass
class LocalServer:
    port: int
    payload: bytes
    paths: list[str] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"


def _handler(state: LocalServer, stop: threading.Event) -> type[BaseHTTPRequestHandler]:
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

        def body(self, data: bytes) -> None:
            self.head(200, Content_Type="image/jpeg", Content_Length=len(data))
            self.wfile.write(data)

        def route(self) -> None:
            split = urlsplit(self.path)
            path = split.path
            if path == "/ok.jpg":
                self.body(state.payload)
            elif path == "/as-text":  # an image served as text/html: the bytes decide
                self.head(200, Content_Type="text/html", Content_Length=len(state.payload))
                self.wfile.write(state.payload)
            elif path == "/redirect":
                self.head(302, Location="/ok.jpg", Content_Length=0)
            elif path == "/redirect-to":  # Location taken from ?u=
                self.head(302, Location=parse_qs(split.query)["u"][0], Content_Length=0)
            elif path == "/loop":
                self.head(301, Location="/loop", Content_Length=0)
            elif path.startswith("/hops/"):
                left = int(path.removeprefix("/hops/"))  # redirects still to come
                if left == 0:
                    self.body(state.payload)
                else:
                    self.head(307, Location=f"/hops/{left - 1}", Content_Length=0)
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
            elif path == "/slow":  # one byte every 0.2 s: no read timeout ever fires
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
                self.head(200, Content_Encoding="gzip", Content_Length=4)
                self.wfile.write(b"\x1f\x8b\x08\x00")
            elif path == "/bad-length":
                self.head(200, Content_Length="12abc")
            else:
                status = path.strip("/")
                self.head(int(status) if status.isdigit() else 404, Content_Length=0)

    return Handler


@contextlib.contextmanager
def local_server(payload: bytes) -> Iterator[LocalServer]:
    """A :class:`LocalServer` on 127.0.0.1 for the duration of the block."""
    stop = threading.Event()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    state = LocalServer(port=httpd.server_address[1], payload=payload)
    httpd.RequestHandlerClass = _handler(state, stop)
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
