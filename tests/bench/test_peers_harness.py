"""The harness pieces the peers need, on real sockets and processes (cheap: < 2 s): a
chunked answer (Ray Serve's proxy) read by the lean client, a server stopped with its
workers, the count file every peer's model appends to."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

import pytest

from bench.peers.__main__ import summarize
from bench.peers.model import COUNT_FILE_ENV, CountRecord, read_counts, record_batch
from bench.peers.servers import descendants
from bench.rawhttp import RawConnection, encode_upload
from bench.servers import free_port, spawn


async def _chunked_server(port: int, body_parts: list[bytes]) -> asyncio.Server:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length")
        )
        await reader.readexactly(length)
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in body_parts)
        writer.write(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n"
        )
        await writer.drain()
        writer.close()

    return await asyncio.start_server(answer, "127.0.0.1", port)


def test_the_lean_client_reads_a_chunked_answer() -> None:
    async def scenario() -> bytes:
        port = free_port()
        server = await _chunked_server(port, [b'{"attributes":', b' {"a": 1}}'])
        async with server:
            connection = RawConnection(f"http://127.0.0.1:{port}")
            response = await connection.send(encode_upload(f"127.0.0.1:{port}", b"\xff\xd8\xff"))
            await connection.close()
        assert response.status_code == 200
        return response.content

    assert asyncio.run(scenario()) == b'{"attributes": {"a": 1}}'


def test_a_group_server_is_stopped_with_its_workers(tmp_path: Path) -> None:
    port = free_port()
    # A server that starts a worker process, as LitServe, BentoML and Ray do.
    script = (
        "import http.server, subprocess, sys\n"
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        f"http.server.HTTPServer(('127.0.0.1', {port}), http.server.SimpleHTTPRequestHandler)"
        ".serve_forever()\n"
    )
    handle = spawn([sys.executable, "-c", script], {}, port, ready_path="/", cwd=tmp_path,
                   timeout_s=30, group=True)  # fmt: skip
    deadline = time.monotonic() + 10
    while len(descendants(handle.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    family = descendants(handle.pid)
    assert len(family) == 2, family
    handle.stop(timeout_s=10)
    time.sleep(0.2)
    for pid in family:
        assert not Path(f"/proc/{pid}").exists() or _is_zombie(pid), f"{pid} outlived the stop"


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_the_count_file_adds_up_batches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "counts"
    monkeypatch.setenv(COUNT_FILE_ENV, str(path))
    record_batch(16, 15, 0.25)
    record_batch(3, 3, 0.05)
    assert read_counts(path) == [CountRecord(16, 15, 0.25), CountRecord(3, 3, 0.05)]
    monkeypatch.delenv(COUNT_FILE_ENV)
    record_batch(1, 1, 0.01)  # unset: nothing counted
    assert len(read_counts(path)) == 2
    assert os.path.getsize(path) > 0


def _closed(server: str, valid_per_s: float) -> dict[str, object]:
    point = {"concurrency": 32, "img_s": valid_per_s, "valid_per_s": valid_per_s, "p99_ms": 1.0}
    return {"round": 0, "server": server, "closed": [point]}


def test_the_users_part_alone_compares_ours_measured_beside_the_peers() -> None:
    users = [_closed("ours", 60.0), _closed("litserve", 20.0), _closed("paper-demo", 3.0)]

    summary = summarize([], users, 32)

    assert summary["vs_users"] == pytest.approx(3.0)
    assert summary["vs_paper_demo"] == pytest.approx(20.0)
    assert "ours" not in summary["users"]
    assert summary["vs_same_engine"] is None


def test_no_valid_answer_from_any_peer_is_an_infinite_ratio_not_a_missing_one() -> None:
    users = [_closed("ours", 60.0), _closed("litserve", 0.0), _closed("bentoml", 0.0)]

    assert summarize([], users, 32)["vs_users"] == float("inf")
    assert summarize([], [_closed("ours", 0.0), _closed("litserve", 0.0)], 32)["vs_users"] is None
