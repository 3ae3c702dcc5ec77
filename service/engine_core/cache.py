"""The result cache: the same image bytes on the same model give the same answer.

Catalogue jobs resend the same photos (reruns, the same product image under several
SKUs); a hit answers from memory and never reaches decode, the queue or the engine. The
key is the sha256 of the image bytes plus the model revision, so a new model never serves
an old model's answer. Settings that change the output (decoding) are fixed for the life
of the process, as is the cache. Bounded by entries and by bytes; least recently used
entries go first. Only successes are stored: errors are cheap to repeat and some
(``deadline_exceeded``, ``queue_full``) say nothing about the image.

It lives in the engine core, so a hit in one API server is a hit in all of them: the API
server hashes the bytes (:func:`service.intake.digest.content_digest`) and asks the core
before it decodes anything. Used from the event loop only (no locks).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Final, Generic, TypeVar

from service.telemetry.metrics import CacheMetrics

V = TypeVar("V")

#: Per-entry bookkeeping on top of the value's own estimate: key, OrderedDict node, object
#: headers. An estimate, so the byte bound is approximate but never ignored.
ENTRY_OVERHEAD_BYTES: Final = 256


@dataclass(frozen=True, slots=True)
class CacheKey:
    digest: str  # sha256 hex of the image bytes
    revision: str  # model revision


class ResultCache(Generic[V]):
    """LRU bounded by ``max_entries`` and ``max_bytes`` (as estimated by the caller)."""

    def __init__(self, max_entries: int, max_bytes: int, metrics: CacheMetrics | None = None):
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._metrics = metrics
        self._entries: OrderedDict[CacheKey, tuple[V, int]] = OrderedDict()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def __contains__(self, key: CacheKey) -> bool:
        """Look without counting a hit or a miss, and without refreshing recency."""
        return key in self._entries

    def get(self, key: CacheKey) -> V | None:
        entry = self._entries.get(key)
        if entry is None:
            if self._metrics is not None:
                self._metrics.misses.inc()
            return None
        self._entries.move_to_end(key)
        if self._metrics is not None:
            self._metrics.hits.inc()
        return entry[0]

    def put(self, key: CacheKey, value: V, size_bytes: int) -> None:
        cost = size_bytes + ENTRY_OVERHEAD_BYTES
        if cost > self.max_bytes:
            return  # would evict everything and still not fit
        old = self._entries.pop(key, None)
        if old is not None:
            self._bytes -= old[1]
        self._entries[key] = (value, cost)
        self._bytes += cost
        while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
            _, (_, evicted_cost) = self._entries.popitem(last=False)
            self._bytes -= evicted_cost
            if self._metrics is not None:
                self._metrics.evictions.inc()
        if self._metrics is not None:
            self._metrics.entries.set(len(self._entries))
            self._metrics.size_bytes.set(self._bytes)
