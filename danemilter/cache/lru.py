"""A bounded, thread-safe LRU of entries that expire: the in-process front of a cache."""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

V = TypeVar("V")


class ExpiringLru(Generic[V]):
    """At most ``limit`` entries (0: keeps nothing) and ``max_bytes`` of them (0: no
    bound; sizes are what ``put`` is told); ``expires_at`` says when one lapses.

    A lapsed entry is dropped when it is next asked for, so nothing is answered past
    its lifetime; the least recently used entry makes room for a new one. Lifetimes
    are kept on the monotonic ``clock`` as well as against the caller's wall-clock
    ``now``: an entry lapses at whichever comes first, so a wall clock stepped back
    (a day, say) cannot stretch what the process believes.
    """

    def __init__(self, limit: int, expires_at: Callable[[V], float], *, max_bytes: int = 0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.max_bytes = max_bytes
        self._expires_at = expires_at
        self._clock = clock
        # key -> (entry, size, monotonic deadline)
        self._entries: OrderedDict[str, tuple[V, int, float]] = OrderedDict()
        self._lock = threading.Lock()
        self.bytes = 0
        self.hits = 0
        self.evictions = 0

    def get(self, key: str, now: float) -> V | None:
        with self._lock:
            held = self._entries.get(key)
            if held is None:
                return None
            entry, _, lapses = held
            if now >= self._expires_at(entry) or self._clock() >= lapses:
                self._drop(key)
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return entry

    def peek(self, key: str) -> V | None:
        """The entry, lapsed or not, without touching its recency."""
        with self._lock:
            held = self._entries.get(key)
            return None if held is None else held[0]

    def put(self, key: str, entry: V, *, now: float | None = None, size: int = 0) -> None:
        """Keep ``entry``; ``now`` (the wall clock its expiry is reckoned against) starts
        its monotonic lifetime, ``size`` counts against ``max_bytes``."""
        if self.limit <= 0 or (self.max_bytes and size > self.max_bytes):
            return
        lapses = math.inf
        if now is not None:
            lapses = self._clock() + max(0.0, self._expires_at(entry) - now)
        with self._lock:
            if key in self._entries:
                self._drop(key)
            self._entries[key] = (entry, size, lapses)
            self.bytes += size
            while len(self._entries) > self.limit or (self.max_bytes
                                                      and self.bytes > self.max_bytes):
                oldest = next(iter(self._entries))
                self._drop(oldest)
                self.evictions += 1

    def _drop(self, key: str) -> None:
        _, size, _ = self._entries.pop(key)
        self.bytes -= size

    def discard(self, key: str | None = None) -> None:
        """Forget ``key`` (every entry when None)."""
        with self._lock:
            if key is None:
                self._entries.clear()
                self.bytes = 0
            elif key in self._entries:
                self._drop(key)

    def __len__(self) -> int:
        return len(self._entries)
