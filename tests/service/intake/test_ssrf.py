"""SSRF defences end to end: a fake resolver answers, a recording connection layer dials.

Where the fake resolver answers a public or private address, :class:`RecordingBackend`
records that address and connects to a local server on 127.0.0.1 instead (or nowhere), so
the assertions are on what the fetcher *would* have dialled. Loopback stays blocked here
(``allow_loopback`` is off) except where a test says otherwise.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from urllib.parse import quote

import httpcore
import pytest

from fashion_florence_client.problems import ErrorCode
from service.errors import ServiceError
from service.intake import ImageFetcher
from service.intake.pinning import PinnedNetworkBackend, pinned
from tests.service.intake.netfakes import CAP, FakeResolver, LocalServer, RecordingBackend
from tests.service.intake.netfakes import local_server as start_local_server

PUBLIC = "93.184.216.34"
PUBLIC_2 = "93.184.216.35"
PUBLIC_V6 = "2606:2800:220:1:248:1893:25c8:1946"
GENERIC = "The image URL could not be fetched."


_OPEN: list[ImageFetcher] = []


@pytest.fixture(autouse=True)
async def _close_fetchers() -> AsyncIterator[None]:
    yield
    while _OPEN:
        await _OPEN.pop().aclose()


@pytest.fixture
def server() -> Iterator[LocalServer]:
    with start_local_server(b"\xff\xd8\xff image bytes") as state:
        yield state


class Rig:
    """A fetcher wired to a fake resolver and a recording backend, plus failure reasons."""

    def __init__(
        self,
        answers: Mapping[str, Sequence[Sequence[str]]],
        backend: RecordingBackend,
        **overrides: object,
    ) -> None:
        self.resolver = FakeResolver(answers)
        self.backend = backend
        self.reasons: list[str] = []
        params: dict[str, object] = {
            "max_bytes": CAP,
            "connect_timeout_s": 1.0,
            "read_timeout_s": 1.0,
            "total_timeout_s": 2.0,
            "resolver": self.resolver,
            "network_backend": backend,
            "on_failure": self.reasons.append,
        } | overrides
        self.fetcher = ImageFetcher(**params)  # type: ignore[arg-type]
        _OPEN.append(self.fetcher)

    async def fetch(self, url: str) -> bytes:
        async with asyncio.timeout(3.0):
            return await self.fetcher.fetch(url)

    async def error(self, url: str, code: ErrorCode = ErrorCode.URL_FETCH_FAILED) -> ServiceError:
        with pytest.raises(ServiceError) as info:
            await self.fetch(url)
        assert info.value.code is code, info.value.detail
        return info.value


def rig(
    server: LocalServer | None, answers: Mapping[str, Sequence[Sequence[str]]], **kw: object
) -> Rig:
    return Rig(answers, RecordingBackend(server.port if server else None), **kw)


# --- public controls: the pinned address is dialled, the name is kept ---------------------


async def test_public_name_is_dialled_at_its_checked_address(server: LocalServer) -> None:
    r = rig(server, {"cdn.example.com": [[PUBLIC]]})
    assert await r.fetch("http://cdn.example.com/ok.jpg") == server.payload
    assert r.backend.dials == [(PUBLIC, 80)]
    assert r.resolver.calls == ["cdn.example.com"]
    assert server.headers[0]["host"] == "cdn.example.com"  # the name, not the IP


@pytest.mark.parametrize(
    ("answer", "dialled"),
    [
        (PUBLIC_V6, PUBLIC_V6),
        (f"::ffff:{PUBLIC}", PUBLIC),  # mapped: the IPv4 address itself is dialled
        ("64:ff9b::5db8:d822", "64:ff9b::5db8:d822"),  # NAT64 of 93.184.216.34
        ("2002:5db8:d822::1", "2002:5db8:d822::1"),  # 6to4 of 93.184.216.34
    ],
)
async def test_public_ipv6_forms_pass(server: LocalServer, answer: str, dialled: str) -> None:
    r = rig(server, {"cdn.example.com": [[answer]]})
    assert await r.fetch("http://cdn.example.com:8080/ok.jpg") == server.payload
    assert r.backend.dials == [(dialled, 8080)]


async def test_https_keeps_the_name_for_sni_and_dials_the_ip() -> None:
    r = rig(None, {"secure.example.com": [[PUBLIC]]})
    await r.error("https://secure.example.com/a.jpg")
    assert r.backend.dials == [(PUBLIC, 443)]
    assert r.backend.tls_names == ["secure.example.com"]


async def test_next_checked_address_is_tried_when_one_refuses(server: LocalServer) -> None:
    r = Rig({"cdn.example.com": [[PUBLIC, PUBLIC_2]]}, RecordingBackend(server.port, {PUBLIC}))
    assert await r.fetch("http://cdn.example.com/ok.jpg") == server.payload
    assert r.backend.dials == [(PUBLIC, 80), (PUBLIC_2, 80)]


async def test_host_spelling_is_normalized_before_resolving(server: LocalServer) -> None:
    r = rig(server, {"cdn.example.com": [[PUBLIC]], "xn--bcher-kva.example": [[PUBLIC_2]]})
    assert await r.fetch("http://CDN.Example.COM./ok.jpg") == server.payload
    assert await r.fetch("http://bücher.example/ok.jpg") == server.payload
    assert r.resolver.calls == ["cdn.example.com", "xn--bcher-kva.example"]
    assert [h["host"] for h in server.headers] == ["cdn.example.com", "xn--bcher-kva.example"]


# --- refused: blocked answers, rebinding, redirects ---------------------------------------


async def test_dns_rebinding_never_reaches_loopback(server: LocalServer) -> None:
    # First answer public, every later one loopback. One fetch resolves once; a redirect
    # back to the same name is a new hop, resolved and checked again, and refused.
    r = rig(server, {"cdn.example.com": [[PUBLIC], ["127.0.0.1"]]})
    assert await r.fetch("http://cdn.example.com/ok.jpg") == server.payload
    assert r.resolver.calls == ["cdn.example.com"]
    await r.error("http://cdn.example.com/redirect")
    assert r.backend.dials == [(PUBLIC, 80)]  # never 127.0.0.1
    assert r.reasons == ["blocked_address"]


async def test_rebinding_inside_one_fetch_is_refused_at_the_next_hop(server: LocalServer) -> None:
    r = rig(server, {"cdn.example.com": [[PUBLIC], ["127.0.0.1"]]})
    await r.error("http://cdn.example.com/redirect")
    assert r.resolver.calls == ["cdn.example.com", "cdn.example.com"]
    assert r.backend.dials == [(PUBLIC, 80)]
    assert server.paths == ["/redirect"]


@pytest.mark.parametrize(
    "answer",
    [
        [PUBLIC, "10.0.0.5"],
        ["10.0.0.5", PUBLIC],
        [PUBLIC, "::1"],
        [PUBLIC_V6, "fd00::1"],
        [PUBLIC, "::ffff:169.254.169.254"],
        [PUBLIC, "not-an-address"],
    ],
)
async def test_mixed_answer_is_refused_whole(answer: list[str]) -> None:
    r = rig(None, {"mixed.example.com": [answer]})
    assert (await r.error("http://mixed.example.com/a.jpg")).detail == GENERIC
    assert r.backend.dials == []
    assert r.reasons == ["blocked_address"]


@pytest.mark.parametrize(
    "location",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://[::ffff:169.254.169.254]/latest/meta-data/",
        "http://[fd00:ec2::254]/latest/meta-data/",
        "http://metadata.internal/computeMetadata/v1/",
    ],
)
async def test_redirect_to_cloud_metadata_is_refused(server: LocalServer, location: str) -> None:
    r = rig(server, {"cdn.example.com": [[PUBLIC]], "metadata.internal": [["169.254.169.254"]]})
    await r.error(f"http://cdn.example.com/redirect-to?u={quote(location, safe='')}")
    assert r.backend.dials == [(PUBLIC, 80)]
    assert len(server.paths) == 1


async def test_redirect_chain_over_the_limit_is_refused(server: LocalServer) -> None:
    r = rig(server, {"cdn.example.com": [[PUBLIC]]}, max_redirects=2)
    assert await r.fetch("http://cdn.example.com/hops/2") == server.payload
    r.backend.dials.clear()
    await r.error("http://cdn.example.com/hops/3")
    assert len(r.backend.dials) == 3  # three hops fetched, the fourth never requested
    assert r.reasons == ["too_many_redirects"]


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://10.1.2.3/",
        "http://100.64.0.1/",
        "http://0.0.0.0/",
        "http://255.255.255.255/",
        "http://[::]/",
        "http://[::1]/",
        "http://[fd00::1]/",
        "http://[fe80::1]/",
        "http://[::ffff:7f00:1]/",
        "http://[::ffff:10.0.0.1]/",
        "http://[::10.0.0.1]/",
        "http://[64:ff9b::a9fe:a9fe]/",
        "http://[2002:a9fe:a9fe::1]/",
        "http://[ff02::1]/",
    ],
)
async def test_blocked_literal_addresses_are_never_dialled(url: str) -> None:
    r = rig(None, {})
    assert (await r.error(url)).detail == GENERIC
    assert r.backend.dials == []
    assert r.resolver.calls == []


@pytest.mark.parametrize(
    "url",
    [
        "http://2130706433/",
        "http://0x7f.1/",
        "http://0x7f000001/",
        "http://0177.0.0.1/",
        "http://127.1/",
        "http://127.0.0.1.1/",
        "http://[fe80::1%25eth0]/",
        "http://a..example.com/",
        "http://.example.com/",
        "http://example.com../",
        "http://ex%20ample.com/",
        "http://\uff11\uff12\uff17.\uff10.\uff10.\uff11/",  # full-width digits
    ],
)
async def test_odd_host_spellings_are_refused_by_the_url_alone(url: str) -> None:
    r = rig(None, {})
    await r.error(url, ErrorCode.URL_NOT_ALLOWED)
    assert r.resolver.calls == []
    assert r.backend.dials == []


async def test_trailing_dot_localhost_is_normalized_then_blocked() -> None:
    r = rig(None, {"localhost": [["127.0.0.1", "::1"]]})
    await r.error("http://localhost./")
    assert r.resolver.calls == ["localhost"]
    assert r.backend.dials == []


# --- one public answer, the real reason in logs and metrics ------------------------------


async def _slow_resolve(host: str, port: int) -> Sequence[str]:
    await asyncio.sleep(5)
    return [PUBLIC]


async def test_failures_look_alike_to_the_caller_but_not_in_the_log(
    server: LocalServer, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    answers = {"blocked.example": [["10.9.8.7"]], "refused.example": [[PUBLIC]]}
    r = Rig(answers, RecordingBackend(closed), connect_timeout_s=0.2)
    caplog.set_level(logging.INFO, logger="service.intake.fetch")
    details = {
        (await r.error("http://blocked.example/a.jpg?sig=s3cr3t")).detail,
        (await r.error("http://missing.example/")).detail,
        (await r.error("http://refused.example/")).detail,
    }
    r.resolver.resolve = _slow_resolve  # type: ignore[method-assign]
    details.add((await r.error("http://slow.example/")).detail)
    assert details == {GENERIC}
    assert r.reasons == ["blocked_address", "unresolvable", "connect_failed", "timeout"]
    assert "10.9.8.7" in caplog.text  # the operator sees what was blocked
    assert "private" in caplog.text
    assert "s3cr3t" not in caplog.text  # signed URLs' credentials stay out of the log


# --- allowlist -----------------------------------------------------------------------------


async def test_allowlist_admits_exact_hosts_and_subdomains_only(server: LocalServer) -> None:
    answers = {h: [[PUBLIC]] for h in ("cdn.example.com", "a.img.example.org", "evil.example")}
    r = rig(server, answers, allowed_hosts=("cdn.example.com", "*.img.example.org"))
    assert await r.fetch("http://cdn.example.com/ok.jpg") == server.payload
    assert await r.fetch("http://a.img.example.org/ok.jpg") == server.payload
    for url in ("http://evil.example/", "http://img.example.org/", "http://example.com/"):
        await r.error(url, ErrorCode.URL_NOT_ALLOWED)
    assert r.resolver.calls == ["cdn.example.com", "a.img.example.org"]
    # A redirect off the allowlist is the upstream's doing: a fetch failure.
    await r.error("http://cdn.example.com/redirect-to?u=http%3A%2F%2Fevil.example%2F")
    assert r.reasons[-1] == "bad_redirect"


# --- the pinning layer itself -----------------------------------------------------------


async def test_pinned_backend_refuses_a_host_without_a_pin() -> None:
    inner = RecordingBackend(None)
    backend = PinnedNetworkBackend(inner)
    with pytest.raises(httpcore.ConnectError, match="no checked address"):
        await backend.connect_tcp("cdn.example.com", 80)
    with pinned("other.example.com", [PUBLIC]), pytest.raises(httpcore.ConnectError):
        await backend.connect_tcp("cdn.example.com", 80)
    with pytest.raises(httpcore.ConnectError):
        await backend.connect_unix_socket("/var/run/docker.sock")
    assert inner.dials == []
    with pinned("cdn.example.com", [PUBLIC]):
        await backend.connect_tcp("cdn.example.com", 80)
    assert inner.dials == [(PUBLIC, 80)]


async def test_concurrent_fetches_keep_their_own_pins(server: LocalServer) -> None:
    # Four at once: the test server's listen backlog is five.
    answers = {f"h{i}.example.com": [[f"93.184.216.{i}"]] for i in range(1, 5)}
    r = rig(server, answers)
    await asyncio.gather(*(r.fetch(f"http://{host}/ok.jpg") for host in answers))
    assert sorted(r.backend.dials) == sorted((f"93.184.216.{i}", 80) for i in range(1, 5))
