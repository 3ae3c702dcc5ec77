"""What a URL itself says: scheme, credentials, host spelling, port, and the allowlist.

httpx parses permissively (``http://2130706433/``, ``http://0x7f.1/``, a ``%`` in a host,
port 99999 all pass), and the system resolver then reads numeric spellings the way
``inet_aton`` does, so ``127.1`` becomes 127.0.0.1. Here every host ends up in exactly one
canonical form or is refused:

- an IPv4 literal in canonical dotted-quad form (``127.0.0.1``), parsed to an address;
- an IPv6 literal without a zone id, parsed to an address;
- a DNS name in its ASCII (IDNA) form, lower case, one trailing dot removed.

Anything numeric-looking that is not canonical dotted-quad (``127.1``, ``2130706433``,
``0x7f.1``, ``0177.0.0.1``) is refused rather than guessed at: no real image host is
spelled like that, and a guess that differs from the resolver's is an SSRF bypass.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

import httpx

from service.intake.addresses import IPAddress, parse_ip

__all__ = ["HostAllowlist", "Target", "UrlRefusedError", "parse_target"]

_SCHEMES: Final = {"http": 80, "https": 443}
_MAX_URL_CHARS: Final = 8192
_MAX_HOST_CHARS: Final = 253
_LABEL: Final = re.compile(r"^[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?$")
_NUMERIC_LABEL: Final = re.compile(r"^(?:[0-9]+|0x[0-9a-f]*)$")
_CANONICAL_OCTET: Final = re.compile(r"^(?:0|[1-9][0-9]{0,2})$")


class UrlRefusedError(ValueError):
    """The URL itself is not acceptable; the message says why (safe to show the caller)."""


@dataclass(frozen=True, slots=True)
class Target:
    """A checked URL: ``host`` is the ASCII form used for DNS, pinning and ``Host``."""

    url: httpx.URL
    host: str
    port: int
    ip: IPAddress | None  # set when the host is an IP literal (nothing to resolve)


def parse_target(url: str | httpx.URL) -> Target:
    """``url`` checked and normalized, or :class:`UrlRefusedError`."""
    if isinstance(url, str) and len(url) > _MAX_URL_CHARS:
        raise UrlRefusedError(f"The URL is longer than {_MAX_URL_CHARS} characters.")
    try:
        parsed = url if isinstance(url, httpx.URL) else httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError) as exc:
        raise UrlRefusedError(f"The URL is malformed ({exc}).") from None
    default_port = _SCHEMES.get(parsed.scheme)
    if default_port is None:
        shown = parsed.scheme or "(none)"
        raise UrlRefusedError(f"The URL scheme {shown!r} is not allowed; use http or https.")
    if parsed.userinfo:
        raise UrlRefusedError("URLs with credentials (user:password@) are not allowed.")
    raw_host = parsed.raw_host.decode("ascii", errors="replace")
    if not raw_host:
        raise UrlRefusedError("The URL has no host.")
    port = parsed.port if parsed.port is not None else default_port
    if not 1 <= port <= 65535:
        raise UrlRefusedError(f"The URL port {port} is out of range.")
    host, ip = _canonical_host(raw_host)
    if host != raw_host:
        parsed = parsed.copy_with(host=host)
    return Target(url=parsed, host=host, port=port, ip=ip)


def _canonical_host(raw: str) -> tuple[str, IPAddress | None]:
    if ":" in raw:  # httpx strips the brackets of an IPv6 literal
        ip = parse_ip(raw)
        if ip is None or "%" in raw:
            raise UrlRefusedError(f"The URL host {raw!r} is not a plain IPv6 address.")
        return str(ip), ip
    host = raw.lower()
    if host.endswith("."):
        host = host[:-1]  # "localhost." is "localhost": one trailing dot is the root
    labels = host.split(".")
    if len(host) > _MAX_HOST_CHARS or not all(_LABEL.match(label) for label in labels):
        raise UrlRefusedError(f"The URL host {raw!r} is not a valid host name.")
    if len(labels) == 4 and all(_CANONICAL_OCTET.match(label) for label in labels):
        ip = parse_ip(host)
        if ip is not None:
            return host, ip
    if _NUMERIC_LABEL.match(labels[-1]) or _inet_aton_accepts(host):
        raise UrlRefusedError(
            f"The URL host {raw!r} is a non-canonical IP address; write it as a.b.c.d."
        )
    return host, None


def _inet_aton_accepts(host: str) -> bool:
    # The resolver's own reading is the reference for "numeric": if it would turn this
    # into an address, it is one, whatever it looks like.
    try:
        socket.inet_aton(host)
    except OSError:
        return False
    return True


class HostAllowlist:
    """Exact hosts and ``*.suffix`` patterns (subdomains only); empty allows every host."""

    def __init__(self, patterns: Iterable[str] = ()) -> None:
        exact: set[str] = set()
        suffixes: list[str] = []
        for pattern in patterns:
            normalized = pattern.strip().lower().removesuffix(".")
            if normalized.startswith("*."):
                suffixes.append(normalized[1:])  # keeps the dot: ".example.com"
            elif normalized:
                exact.add(normalized)
        self._exact = frozenset(exact)
        self._suffixes = tuple(suffixes)

    @property
    def active(self) -> bool:
        return bool(self._exact or self._suffixes)

    def allows(self, host: str) -> bool:
        if not self.active or host in self._exact:
            return True
        return any(host.endswith(suffix) for suffix in self._suffixes)
