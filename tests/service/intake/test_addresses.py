"""AddressPolicy: every blocked range, sampled by hypothesis, bare and wrapped in IPv6."""

from __future__ import annotations

from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.intake.addresses import BLOCKED_V4, BLOCKED_V6, AddressPolicy, embedded_ipv4

POLICY = AddressPolicy()
RELAXED = AddressPolicy(allow_loopback=True)
EXAMPLES = settings(max_examples=150, deadline=None)

# The list, spelled out: each must be inside some blocked range.
REQUIRED_V4 = [
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
    "172.16.0.0/12", "192.0.0.0/24", "192.168.0.0/16", "198.18.0.0/15", "224.0.0.0/4",
    "240.0.0.0/4", "255.255.255.255/32",
]  # fmt: skip
REQUIRED_V6 = ["::/128", "::1/128", "fc00::/7", "fe80::/10", "ff00::/8"]


def in_network(network: IPv4Network | IPv6Network) -> st.SearchStrategy[int]:
    return st.integers(int(network.network_address), int(network.broadcast_address))


blocked_v4 = st.sampled_from([net for net, _ in BLOCKED_V4]).flatmap(
    lambda net: in_network(net).map(IPv4Address)
)
blocked_v6 = st.sampled_from([net for net, _ in BLOCKED_V6]).flatmap(
    lambda net: in_network(net).map(IPv6Address)
)
public_v4 = (
    st.integers(0, 2**32 - 1)
    .map(IPv4Address)
    .filter(lambda ip: not any(ip in net for net, _ in BLOCKED_V4))
)

# Every way an IPv6 address can carry an IPv4 one.
WRAPPERS: dict[str, Callable[[IPv4Address], IPv6Address]] = {
    "mapped": lambda v4: IPv6Address(0xFFFF_0000_0000 | int(v4)),
    "compatible": lambda v4: IPv6Address(int(v4)),
    "translated": lambda v4: IPv6Address((0xFFFF << 48) | int(v4)),
    "nat64": lambda v4: IPv6Address((0x64FF9B << 96) | int(v4)),
    "6to4": lambda v4: IPv6Address((0x2002 << 112) | (int(v4) << 80) | 1),
    "teredo-server": lambda v4: IPv6Address((0x2001_0000 << 96) | (int(v4) << 64)),
    "teredo-client": lambda v4: IPv6Address((0x2001_0000 << 96) | (int(v4) ^ 0xFFFF_FFFF)),
}


def test_the_required_ranges_are_covered() -> None:
    v4 = [net for net, _ in BLOCKED_V4]
    v6 = [net for net, _ in BLOCKED_V6]
    for spec in REQUIRED_V4:
        assert any(IPv4Network(spec).subnet_of(net) for net in v4), spec
    for spec in REQUIRED_V6:
        assert any(IPv6Network(spec).subnet_of(net) for net in v6), spec


@EXAMPLES
@given(blocked_v4)
def test_every_blocked_ipv4_is_refused(ip: IPv4Address) -> None:
    assert POLICY.verdict(ip).blocked is not None


@EXAMPLES
@given(blocked_v6)
def test_every_blocked_ipv6_is_refused(ip: IPv6Address) -> None:
    assert POLICY.verdict(ip).blocked is not None


@EXAMPLES
@given(blocked_v4, st.sampled_from(sorted(WRAPPERS)))
def test_blocked_ipv4_wrapped_in_ipv6_is_refused(ip: IPv4Address, wrapper: str) -> None:
    wrapped = WRAPPERS[wrapper](ip)
    assert ip in embedded_ipv4(wrapped)
    assert POLICY.verdict(wrapped).blocked is not None, wrapped
    assert RELAXED.verdict(wrapped).blocked is not None or (
        wrapper == "mapped" and ip in IPv4Network("127.0.0.0/8")
    )


@EXAMPLES
@given(public_v4)
def test_public_ipv4_passes_bare_mapped_and_through_nat64_or_6to4(ip: IPv4Address) -> None:
    assert POLICY.verdict(ip).blocked is None
    mapped = POLICY.verdict(WRAPPERS["mapped"](ip))
    assert (mapped.blocked, mapped.dial) == (None, str(ip))  # dialled as IPv4
    for wrapper in ("nat64", "6to4"):
        assert POLICY.verdict(WRAPPERS[wrapper](ip)).blocked is None, wrapper
    # Deprecated or special-purpose carriers stay blocked whatever they carry.
    for wrapper in ("compatible", "translated", "teredo-server", "teredo-client"):
        assert POLICY.verdict(WRAPPERS[wrapper](ip)).blocked is not None, wrapper


@EXAMPLES
@given(st.integers(0, 2**32 - 1).map(IPv4Address))
def test_nothing_python_calls_non_global_gets_through(ip: IPv4Address) -> None:
    # A one-way cross-check: our list is stricter than the standard library's view.
    if not ip.is_global or ip.is_multicast:
        assert POLICY.verdict(ip).blocked is not None


@EXAMPLES
@given(st.integers(0, 2**128 - 1).map(IPv6Address))
def test_ipv6_outside_global_unicast_is_refused(ip: IPv6Address) -> None:
    if not IPv6Network("2000::/3").supernet_of(IPv6Network(ip)) and ip.ipv4_mapped is None:
        nat64 = IPv6Network("64:ff9b::/96")
        if not nat64.supernet_of(IPv6Network(ip)):
            assert POLICY.verdict(ip).blocked is not None, ip


@pytest.mark.parametrize(
    "address",
    ["8.8.8.8", "1.1.1.1", "93.184.216.34", "2606:4700:4700::1111", "2a00:1450:4001::200e"],
)
def test_public_controls_pass(address: str) -> None:
    ip = IPv4Address(address) if "." in address else IPv6Address(address)
    assert POLICY.verdict(ip).blocked is None


def test_loopback_relaxation_covers_loopback_only() -> None:
    for text in ("127.0.0.1", "127.255.0.9"):
        assert RELAXED.verdict(IPv4Address(text)).blocked is None
    assert RELAXED.verdict(IPv6Address("::1")).blocked is None
    assert RELAXED.verdict(IPv6Address("::ffff:127.0.0.1")).dial == "127.0.0.1"
    for text in ("10.0.0.1", "169.254.169.254", "0.0.0.0"):
        assert RELAXED.verdict(IPv4Address(text)).blocked is not None
    for text in ("::", "fe80::1", "::127.0.0.1", "2002:7f00:1::"):
        assert RELAXED.verdict(IPv6Address(text)).blocked is not None


def test_one_blocked_address_refuses_the_whole_answer() -> None:
    good, bad = IPv4Address("93.184.216.34"), IPv4Address("10.0.0.1")
    assert POLICY.check_all([good, good]) == (["93.184.216.34"], None)
    dial, refusal = POLICY.check_all([good, bad])
    assert dial == []
    assert refusal is not None
    assert "10.0.0.1" in refusal
    assert "private" in refusal
