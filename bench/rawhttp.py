"""A lean keep-alive HTTP/1.1 client for the load generator, on asyncio streams.

Why not httpx: on a 2-core machine the load generator shares the cores with the server
it measures, and httpx spends several hundred microseconds of Python per request, which
the server then loses. Here a request is one pre-encoded byte string per payload (headers
and multipart body built once) and a response is a status line, headers and a
Content-Length body: a few tens of microseconds. It speaks only to 127.0.0.1 servers
that answer with Content-Length (uvicorn does) or a chunked body (Ray Serve's proxy
does), which is all the benchmarks need.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

_BOUNDARY = uuid.UUID(int=0x5EED).hex


@dataclass(frozen=True, slots=True)
class RawResponse:
    status_code: int
    content: bytes
    retry_after: str | None = None  # the Retry-After header, where the server sent one

    def json(self) -> Any:
        return json.loads(self.content)


def encode_upload(host: str, payload: bytes, path: str = "/v1/extract") -> bytes:
    """One complete ``POST path`` request with ``payload`` as the multipart field ``image``."""
    return encode_uploads(host, [payload], path)


def encode_uploads(
    host: str,
    payloads: Sequence[bytes],
    path: str = "/v1/extract/batch",
    headers: Mapping[str, str] | None = None,
) -> bytes:
    """One complete ``POST path`` request with each payload as a multipart field ``image``
    (repeated, as ``/v1/extract/batch`` takes them) and any extra ``headers``."""
    part_head = (
        f'--{_BOUNDARY}\r\nContent-Disposition: form-data; name="image"; filename="g.jpg"\r\n'
        f"Content-Type: image/jpeg\r\n\r\n"
    ).encode()
    body = (
        b"".join(part_head + payload + b"\r\n" for payload in payloads)
        + f"--{_BOUNDARY}--\r\n".encode()
    )
    extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: ff-bench\r\n{extra}"
        f"Content-Type: multipart/form-data; boundary={_BOUNDARY}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


class RawConnection:
    """One persistent connection; one request at a time (closed-loop clients own one)."""

    def __init__(self, base_url: str) -> None:
        parts = urlsplit(base_url)
        if parts.hostname not in {"127.0.0.1", "::1", "localhost"}:
            raise ValueError(f"the raw client only speaks to loopback, not {parts.hostname!r}")
        self.host = parts.hostname
        self.port = parts.port or 80
        self.authority = parts.netloc
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def send(self, request: bytes) -> RawResponse:
        """Send one pre-encoded request and read its response. A connection the server
        closed is reopened once; anything else is raised as ConnectionError/OSError."""
        for attempt in (1, 2):
            if self._writer is None:
                self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
            assert self._reader is not None
            assert self._writer is not None
            try:
                self._writer.write(request)
                await self._writer.drain()
                return await self._read_response(self._reader)
            except (ConnectionError, asyncio.IncompleteReadError):
                await self.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def _read_response(self, reader: asyncio.StreamReader) -> RawResponse:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        length = None
        closing = chunked = False
        retry_after = None
        for line in lines[1:]:
            name, _, value = line.partition(":")
            key = name.strip().lower()
            if key == "content-length":
                length = int(value)
            elif key == "connection" and value.strip().lower() == "close":
                closing = True
            elif key == "transfer-encoding" and value.strip().lower() == "chunked":
                chunked = True
            elif key == "retry-after":
                retry_after = value.strip()
        if chunked:
            content = await read_chunked(reader)
        elif length is None:
            raise ConnectionError("response without Content-Length")
        else:
            content = await reader.readexactly(length)
        if closing:
            await self.close()
        return RawResponse(status, content, retry_after)

    async def close(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


async def read_chunked(reader: asyncio.StreamReader) -> bytes:
    """A chunked body (Ray Serve's proxy streams its answers), trailers skipped."""
    parts: list[bytes] = []
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";", 1)[0], 16)
        if size == 0:
            while await reader.readuntil(b"\r\n") != b"\r\n":
                pass  # trailer fields, if any, up to the empty line
            return b"".join(parts)
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)  # the CRLF after each chunk
