"""A real HTTP file server on 127.0.0.1 for URL-fetching tests (never another address)."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@contextmanager
def serve_files(files: Mapping[str, bytes], content_type: str = "image/jpeg") -> Iterator[str]:
    """Serve ``files`` (path -> bytes) and 404 elsewhere; yields the base URL."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            self.close_connection = True
            payload = files.get(self.path)
            self.send_response(404 if payload is None else 200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload or b"")))
            self.end_headers()
            if payload is not None:
                self.wfile.write(payload)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=2)
