"""Which IP addresses the fetcher may dial: everything globally routable, nothing else.

The ranges are listed explicitly instead of relying on ``ipaddress``'s ``is_private`` /
``is_global``: those properties changed between Python releases and, before 3.13, answer
wrongly for IPv4 addresses wrapped in IPv6 (``::ffff:127.0.0.1`` was "global"). Every IPv6
form that carries an IPv4 address (mapped, compatible, SIIT-translated, 6to4, NAT64, Teredo)
is unwrapped and the IPv4 inside is checked against the IPv4 list as well.

IPv6 is additionally held to an allow rule: only global unicast ``2000::/3`` (and NAT64
``64:ff9b::/96`` carrying a public IPv4, which is how IPv6-only clusters reach IPv4 hosts)
can be dialled, so a future special-purpose range outside ``2000::/3`` is blocked by default.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address
from typing import Final

__all__ = [
    "BLOCKED_V4",
    "BLOCKED_V6",
    "AddressPolicy",
    "IPAddress",
    "Verdict",
    "embedded_ipv4",
    "parse_ip",
]

IPAddress = IPv4Address | IPv6Address


def _v4(*specs: tuple[str, str]) -> tuple[tuple[IPv4Network, str], ...]:
    return tuple((IPv4Network(net), label) for net, label in specs)


def _v6(*specs: tuple[str, str]) -> tuple[tuple[IPv6Network, str], ...]:
    return tuple((IPv6Network(net), label) for net, label in specs)


#: IPv4 ranges that are never dialled, with the reason logged when one is hit.
BLOCKED_V4: Final = _v4(
    ("0.0.0.0/8", "this-network"),
    ("10.0.0.0/8", "private"),
    ("100.64.0.0/10", "carrier-grade-nat"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local/cloud-metadata"),
    ("172.16.0.0/12", "private"),
    ("192.0.0.0/24", "ietf-protocol-assignments"),
    ("192.0.2.0/24", "documentation"),
    ("192.88.99.0/24", "6to4-relay-anycast"),
    ("192.168.0.0/16", "private"),
    ("198.18.0.0/15", "benchmarking"),
    ("198.51.100.0/24", "documentation"),
    ("203.0.113.0/24", "documentation"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved"),
    ("255.255.255.255/32", "broadcast"),  # inside 240/4; listed so the intent is explicit
)

#: IPv6 ranges that are never dialled. Most lie outside 2000::/3 and would be refused by
#: the allow rule anyway; they are listed so the log names the range and tests cover each.
#: IPv4-mapped ``::ffff:0:0/96`` is not here: it is judged as the IPv4 address it carries.
BLOCKED_V6: Final = _v6(
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("::/96", "ipv4-compatible"),
    ("::ffff:0:0:0/96", "ipv4-translated"),
    ("64:ff9b:1::/48", "local-nat64"),
    ("100::/64", "discard-only"),
    ("2001::/23", "ietf-special-purpose"),  # includes Teredo 2001::/32
    ("2001:db8::/32", "documentation"),
    ("3fff::/20", "documentation"),
    ("fc00::/7", "unique-local"),
    ("fe80::/10", "link-local"),
    ("fec0::/10", "site-local"),
    ("ff00::/8", "multicast"),
)

_LOOPBACK_V4: Final = IPv4Network("127.0.0.0/8")
_LOOPBACK_V6: Final = IPv6Address("::1")
_GLOBAL_UNICAST_V6: Final = IPv6Network("2000::/3")
_NAT64: Final = IPv6Network("64:ff9b::/96")
_COMPATIBLE: Final = IPv6Network("::/96")
_TRANSLATED: Final = IPv6Network("::ffff:0:0:0/96")
_LOW32: Final = 0xFFFF_FFFF


def parse_ip(text: str) -> IPAddress | None:
    """``text`` as an IP address, or ``None``. Zone ids (``fe80::1%eth0``) are kept."""
    try:
        return ip_address(text)
    except ValueError:
        return None


def embedded_ipv4(ip: IPv6Address) -> list[IPv4Address]:
    """Every IPv4 address that ``ip`` carries, by each IPv6 embedding that applies."""
    found: list[IPv4Address] = []
    if ip.ipv4_mapped is not None:
        found.append(ip.ipv4_mapped)
    if ip in _COMPATIBLE or ip in _TRANSLATED or ip in _NAT64:
        found.append(IPv4Address(int(ip) & _LOW32))
    if ip.sixtofour is not None:
        found.append(ip.sixtofour)
    if ip.teredo is not None:
        found.extend(ip.teredo)  # (server, client); the client is stored inverted
    return found


@dataclass(frozen=True, slots=True)
class Verdict:
    """``blocked`` is the range label when refused, else ``None``; ``dial`` is what to dial."""

    blocked: str | None
    dial: str


def _v4_block(ip: IPv4Address) -> str | None:
    for network, label in BLOCKED_V4:
        if ip in network:
            return label
    return None


@dataclass(frozen=True, slots=True)
class AddressPolicy:
    """Decides per address. ``allow_loopback`` exists only so tests can use local servers."""

    allow_loopback: bool = False

    def verdict(self, ip: IPAddress) -> Verdict:
        if isinstance(ip, IPv4Address):
            return Verdict(self._v4(ip), str(ip))
        mapped = ip.ipv4_mapped
        if mapped is not None:
            # The kernel dials the IPv4 address itself for a mapped one; dial it directly.
            return Verdict(self._v4(mapped), str(mapped))
        return Verdict(self._v6(ip), str(ip))

    def _v4(self, ip: IPv4Address) -> str | None:
        if self.allow_loopback and ip in _LOOPBACK_V4:
            return None
        return _v4_block(ip)

    def _v6(self, ip: IPv6Address) -> str | None:
        if self.allow_loopback and ip == _LOOPBACK_V6:
            return None
        for network, label in BLOCKED_V6:
            if ip in network:
                return label
        for inner in embedded_ipv4(ip):
            inner_label = _v4_block(inner)  # never relaxed: only plain loopback forms are
            if inner_label is not None:
                return f"{inner_label} (IPv4 {inner} embedded)"
        if ip in _NAT64:
            return None  # its IPv4 passed above: the NAT64 gateway reaches a public host
        if ip not in _GLOBAL_UNICAST_V6:
            return "not-global-unicast"
        return None

    def check_all(self, addresses: Iterable[IPAddress]) -> tuple[list[str], str | None]:
        """The addresses to dial, or the first refusal as ``"<address>: <range>"``.

        Any one blocked address refuses the whole answer: a mixed public/private DNS
        answer is how an attacker would try to get a private address dialled later.
        """
        dial: list[str] = []
        for ip in addresses:
            verdict = self.verdict(ip)
            if verdict.blocked is not None:
                return [], f"{ip}: {verdict.blocked}"
            if verdict.dial not in dial:
                dial.append(verdict.dial)
        return dial, None
