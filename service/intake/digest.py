"""The content digest of an image's bytes: the result cache's key (with the model revision)."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Final

#: Hashing runs on the loop below this size (~0.1 ms); above it, on a thread, so one large
#: image does not stall every other request (hashlib releases the GIL).
HASH_ON_LOOP_MAX_BYTES: Final = 512 * 1024


async def content_digest(data: bytes) -> str:
    if len(data) <= HASH_ON_LOOP_MAX_BYTES:
        return hashlib.sha256(data).hexdigest()
    return await asyncio.to_thread(lambda: hashlib.sha256(data).hexdigest())
