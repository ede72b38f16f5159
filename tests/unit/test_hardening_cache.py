"""Issue 16 items 4 and 5: the in-process cache is bounded by size, its lifetimes run on
the monotonic clock, and a backend entry further ahead than max_ttl is stale."""

from __future__ import annotations

import pytest

from danemilter.cache.backend import read_fresh
from danemilter.cache.lru import ExpiringLru
from danemilter.cache.memory import MemoryBackend

pytestmark = pytest.mark.timeout(10)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_lru_keeps_at_most_max_bytes() -> None:
    lru: ExpiringLru[str] = ExpiringLru(100, lambda _: 1e12, max_bytes=1000)
    for i in range(10):
        lru.put(f"k{i}", "v", size=300)
    assert lru.bytes <= 1000 and len(lru) == 3
    assert lru.get("k9", 0) == "v" and lru.get("k0", 0) is None
    lru.put("huge", "v", size=1001)  # bigger than the whole bound: not kept
    assert lru.get("huge", 0) is None and len(lru) == 3
    lru.put("k9", "w", size=100)  # replacing counts the new size only
    assert lru.bytes == 700
    lru.discard()
    assert lru.bytes == 0


def test_a_wall_clock_stepped_back_does_not_stretch_a_lifetime() -> None:
    mono = Clock()
    lru: ExpiringLru[float] = ExpiringLru(10, lambda expires: expires, clock=mono)
    wall = 1_700_000_000.0
    lru.put("d", wall + 60, now=wall)
    assert lru.get("d", wall + 30) is not None
    mono.now += 61
    # The wall clock went back a day meanwhile: by it the entry has a day to live.
    assert lru.get("d", wall - 86_400 + 61) is None


def test_a_wall_clock_stepped_forward_ends_a_lifetime_early() -> None:
    lru: ExpiringLru[float] = ExpiringLru(10, lambda expires: expires, clock=Clock())
    lru.put("d", 160.0, now=100.0)
    assert lru.get("d", 200.0) is None


def test_a_backend_entry_beyond_max_ttl_is_stale() -> None:
    backend = MemoryBackend(10)
    now = 1_700_000_000.0
    backend.put("fine", b"x", now + 3600)
    backend.put("ahead", b"x", now + 86_400 + 3600)  # written a day "in the future"
    assert read_fresh(backend, "fine", now, 86_400) is not None
    assert read_fresh(backend, "ahead", now, 86_400) is None
    assert read_fresh(backend, "fine", now + 3600, 86_400) is None


def test_the_memory_backend_keeps_at_most_max_bytes() -> None:
    backend = MemoryBackend(1000, max_bytes=1000)
    for i in range(20):
        backend.put(f"k{i}", b"x" * 100, 1e12)
    assert backend.bytes <= 1000 and len(backend) == 10
    assert backend.get("k19") is not None and backend.get("k0") is None
