"""The lean load client (bench.rawhttp) and its closed/open loops, against real loopback
servers: a tiny asyncio HTTP server written here (to script its misbehaviour) and the
bench's own bare FastAPI server. Bounded by request counts and time limits."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from bench.baselines import spawn_bare
from bench.load import closed_loop, open_loop, payloads, photo_payloads
from bench.rawhttp import RawConnection, encode_upload

pytestmark = pytest.mark.load

Reply = Callable[[int], bytes]


def _ok(index: int) -> bytes:
    body = json.dumps({"n": index}).encode()
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


@asynccontextmanager
async def scripted_server(reply: Reply, *, close_after: int | None = None) -> AsyncIterator[str]:
    """Answers every request with ``reply(n)``; closes each connection after
    ``close_after`` answers (how a server that limits keep-alive behaves)."""
    count = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal count
        served = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length")
                )
                await reader.readexactly(length)
                count += 1
                served += 1
                writer.write(reply(count))
                await writer.drain()
                if close_after is not None and served >= close_after:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        yield f"http://127.0.0.1:{port}"


def test_the_raw_client_refuses_anything_but_loopback() -> None:
    with pytest.raises(ValueError, match="loopback"):
        RawConnection("http://10.0.0.1:8000")


def test_an_upload_is_a_well_formed_multipart_request() -> None:
    request = encode_upload("127.0.0.1:9", b"\xff\xd8jpeg")
    head, body = request.split(b"\r\n\r\n", 1)
    assert head.startswith(b"POST /v1/extract HTTP/1.1\r\nHost: 127.0.0.1:9\r\n")
    assert f"Content-Length: {len(body)}".encode() in head
    assert b'name="image"' in body
    assert b"\xff\xd8jpeg" in body


async def test_a_connection_the_server_closed_is_reopened_once() -> None:
    async with scripted_server(_ok, close_after=1) as base:
        connection = RawConnection(base)
        request = encode_upload(connection.authority, b"x")
        answers = [await connection.send(request) for _ in range(3)]
        await connection.close()
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert [a.json()["n"] for a in answers] == [1, 2, 3]


async def test_a_response_without_length_is_a_transport_error_not_a_hang() -> None:
    async with scripted_server(lambda _n: b"HTTP/1.1 200 OK\r\n\r\nbody") as base:
        tally = await closed_loop(base, [b"x"], 2, 4, 10.0, request_timeout_s=5.0)
    assert tally.sent == 4
    assert tally.transport_errors == 4
    assert tally.answered == 0


async def test_closed_loop_accounts_for_every_request() -> None:
    def alternate(n: int) -> bytes:
        if n % 2:
            return _ok(n)
        body = b'{"code": "queue_full"}'
        return b"HTTP/1.1 503 Busy\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)

    async with scripted_server(alternate) as base:
        tally = await closed_loop(base, [b"a", b"b"], 3, 30, 10.0)
    assert tally.sent == tally.answered == 30
    assert tally.by_status[200] == tally.by_status[503] == 15
    assert tally.by_code == {"queue_full": 15}
    assert len(tally.latencies_ok) == 15


async def test_open_loop_keeps_its_schedule_and_answers_all() -> None:
    async with scripted_server(_ok) as base:
        tally = await open_loop(base, [b"a"], rate=200.0, requests=100, limit_s=10.0)
    assert tally.sent == tally.answered == 100
    assert 0.45 <= tally.wall_s < 5.0  # 100 requests at 200/s start over ~0.5 s


def test_closed_loop_against_real_uvicorn() -> None:
    with spawn_bare() as handle:
        tally = asyncio.run(closed_loop(handle.base_url, payloads(4), 4, 40, 20.0))
    assert tally.sent == tally.by_status[200] == 40
    assert tally.transport_errors == 0


def test_photo_payloads_take_the_class_folders_in_turn(tmp_path: Path) -> None:
    for folder, names in {"b": ["1", "2", "3"], "a": ["1"], "c": ["1", "2"]}.items():
        (tmp_path / folder).mkdir()
        for name in names:
            (tmp_path / folder / f"{name}.jpg").write_bytes(f"{folder}{name}".encode())
    (tmp_path / "notes.txt").write_text("not a class folder")

    assert photo_payloads(tmp_path, 5) == [b"a1", b"b1", b"c1", b"b2", b"c2"]
    assert len(photo_payloads(tmp_path, 64)) == 6


def test_photo_payloads_refuse_a_folder_without_photos(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no photos"):
        photo_payloads(tmp_path, 4)
