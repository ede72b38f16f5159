"""A bounded, thread-safe LRU of entries that expire: the in-process front of a cache."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

V = TypeVar("V")


class ExpiringLru(Generic[V]):
    """At most ``limit`` entries (0: keeps nothing); ``expires_at`` says when one lapses.

    A lapsed entry is dropped when it is next asked for, so nothing is answered past
    its lifetime; the least recently used entry makes room for a new one.
    """

    def __init__(self, limit: int, expires_at: Callable[[V], float]) -> None:
        self.limit = limit
        self._expires_at = expires_at
        self._entries: OrderedDict[str, V] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.evictions = 0

    def get(self, key: str, now: float) -> V | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if now >= self._expires_at(entry):
                del self._entries[key]
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return entry

    def peek(self, key: str) -> V | None:
        """The entry, lapsed or not, without touching its recency."""
        with self._lock:
            return self._entries.get(key)

    def put(self, key: str, entry: V) -> None:
        if self.limit <= 0:
            return
        with self._lock:
            self._entries[key] = entry
            self._entries.move_to_end(key)
            while len(self._entries) > self.limit:
                self._entries.popitem(last=False)
                self.evictions += 1

    def discard(self, key: str | None = None) -> None:
        """Forget ``key`` (every entry when None)."""
        with self._lock:
            if key is None:
                self._entries.clear()
            else:
                self._entries.pop(key, None)

    def __len__(self) -> int:
        return len(self._entries)
