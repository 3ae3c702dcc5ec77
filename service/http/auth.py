"""Optional bearer API keys for ``/v1/*``.

Keys are hashed (sha256) once at start and only digests are kept; a presented key is
hashed and compared against every digest in constant time, so neither the keys nor which
one matched leak through timing or logs. Several keys at once allow rotation.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Final

from fastapi import Request

from fashion_florence_client.problems import ErrorCode
from service.errors import ServiceError
from service.settings import Settings

CHALLENGE: Final = 'Bearer realm="fashion-florence"'


class ApiKeyVerifier:
    def __init__(self, digests: set[bytes]) -> None:
        self._digests = frozenset(digests)

    @classmethod
    def from_settings(cls, settings: Settings) -> ApiKeyVerifier:
        digests = {_digest(key.get_secret_value()) for key in settings.api_keys}
        digests |= {bytes.fromhex(hex_digest) for hex_digest in settings.api_key_sha256}
        return cls(digests)

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def verify(self, presented: str) -> bool:
        candidate = _digest(presented)
        matched = False
        for digest in self._digests:  # no early exit: time does not depend on which key
            matched |= hmac.compare_digest(candidate, digest)
        return matched


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


async def require_api_key(request: Request) -> None:
    """FastAPI dependency: 401 unless auth is off or a configured key is presented."""
    verifier: ApiKeyVerifier = request.app.state.api_keys
    if not verifier.enabled:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not verifier.verify(token.strip()):
        raise ServiceError(
            ErrorCode.UNAUTHORIZED,
            "send Authorization: Bearer <api key>",
            headers={"WWW-Authenticate": CHALLENGE},
        )
