"""A safety net for the intake tests: no socket may dial beyond loopback, no name reach DNS.

The fetcher under test is built to dial whatever address it is handed, so a mistake in a
test (a real resolver, a fake that forgot to fake the connection) would send packets to a
real host. Every ``connect`` here is checked first, and the system resolver is limited to
``localhost``: such a mistake fails the test instead of leaving the machine.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence
from typing import Any

import pytest

from service.intake.pinning import SystemResolver

_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex
_real_resolve = SystemResolver.resolve


def _require_loopback(address: Any) -> None:
    if isinstance(address, tuple):
        host = str(address[0]).split("%", 1)[0]
        if not ipaddress.ip_address(host).is_loopback:
            raise AssertionError(f"a test tried to connect to {address!r}, beyond loopback")


def _guarded_connect(self: socket.socket, address: Any) -> None:
    _require_loopback(address)
    _real_connect(self, address)


def _guarded_connect_ex(self: socket.socket, address: Any) -> int:
    _require_loopback(address)
    return _real_connect_ex(self, address)


async def _guarded_resolve(self: SystemResolver, host: str, port: int) -> Sequence[str]:
    if host != "localhost":
        raise AssertionError(f"a test used the system resolver for {host!r}")
    return await _real_resolve(self, host, port)


@pytest.fixture(autouse=True)
def _loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket.socket, "connect", _guarded_connect)
    monkeypatch.setattr(socket.socket, "connect_ex", _guarded_connect_ex)
    monkeypatch.setattr(SystemResolver, "resolve", _guarded_resolve)
