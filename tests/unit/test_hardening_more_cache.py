"""Issue 16 item 5, what the first pass left: a backend entry written before the wall
clock was stepped back is stale even when its expiry is within max_ttl, and the
in-process fallbacks of the SQLite and Redis backends are bounded in bytes."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from danemilter.cache import open_backend
from danemilter.cache.backend import CLOCK_SKEW, written_ahead
from danemilter.cache.memory import MemoryBackend
from danemilter.cache.redis_backend import RedisBackend
from danemilter.cache.settings import BackendName, CacheSettings
from danemilter.cache.sqlite import SQLiteBackend
from danemilter.cache.status import StatusCache
from danemilter.status import DomainState, DomainStatus
from tests.support.ports import free_port

pytestmark = pytest.mark.timeout(20)

SEED = int(os.environ.get("DANEMILTER_SEED") or random.SystemRandom().getrandbits(32))
DAY = 86_400.0
NOW = 1_700_000_000.0


def _status(domain: str) -> DomainStatus:
    return DomainStatus(domain=domain, status=DomainState.NONE, usage=0, mx_secure=True,
                        hosts=(), reason="no TLSA", ttl=3600)


def test_written_ahead_allows_the_skew_of_a_fleet_and_no_more() -> None:
    assert not written_ahead(NOW, NOW)
    assert not written_ahead(NOW + CLOCK_SKEW, NOW)
    assert written_ahead(NOW + CLOCK_SKEW + 1, NOW)


# A step is seen when it is larger than the entry's age (plus the skew): here the entry
# is read just after its lifetime of an hour.
@pytest.mark.parametrize("step", [DAY, 3 * 3600.0, 3600 + 2 * CLOCK_SKEW])
def test_an_entry_stored_before_a_step_back_is_stale(step: float) -> None:
    settings = CacheSettings(backend=BackendName.MEMORY, max_ttl=int(DAY), min_ttl=60,
                             negative_max_ttl=3600)
    backend = MemoryBackend(100)
    writer = StatusCache(backend, settings)
    entry = writer.put(_status("d.test"), NOW)
    assert entry is not None and entry.lifetime == 3600
    # Another process (or this one after its LRU entry lapsed) reads the shared entry
    # once its lifetime has passed, under a clock stepped back by ``step``: by that
    # clock the expiry still lies ahead, within max_ttl.
    reader = StatusCache(backend, settings)
    later = NOW + entry.lifetime + 1 - step
    assert now_within_bounds(entry.expires_at, later, settings.max_ttl)
    assert reader.lookup("d.test", later) is None
    # An ordinary reader is unaffected, up to the skew of a fleet.
    assert StatusCache(backend, settings).lookup("d.test", NOW + 10) is not None
    assert StatusCache(backend, settings).lookup("d.test", NOW - CLOCK_SKEW) is not None


def test_a_status_written_ahead_is_logged_once_at_info_like_policies_are(
        caplog: pytest.LogCaptureFixture) -> None:
    # Statuses, probes and policies share written_ahead and its one line (test_sts_cache
    # and test_probe_cache read the others through the same function).
    settings = CacheSettings(backend=BackendName.MEMORY, max_ttl=int(DAY), min_ttl=60)
    backend = MemoryBackend(100)
    StatusCache(backend, settings).put(_status("d.test"), NOW)
    with caplog.at_level("DEBUG", logger="danemilter.cache"):
        assert StatusCache(backend, settings).lookup("d.test", NOW - DAY / 2) is None
    (line,) = [r for r in caplog.records if "in the future" in r.getMessage()]
    assert line.levelname == "INFO"
    assert line.getMessage().startswith("cached status of d.test was written 43200 s")


def now_within_bounds(expires_at: float, now: float, max_ttl: float) -> bool:
    """What read_fresh alone checks: the expiry is ahead and not beyond max_ttl."""
    return now < expires_at <= now + max_ttl


def _fill(backend: SQLiteBackend | RedisBackend, rng: random.Random) -> None:
    for i in range(200):
        backend.put(f"k{i}", rng.randbytes(rng.randint(1, 400)), NOW + 3600)


def test_the_sqlite_fallback_is_bounded_in_bytes(tmp_path: Path) -> None:
    print(f"seed {SEED}")
    settings = CacheSettings(backend=BackendName.SQLITE,
                             path=str(tmp_path / "missing" / "cache.sqlite3"),
                             memory_max_bytes=4096)
    backend = open_backend(settings)
    assert isinstance(backend, SQLiteBackend) and backend.fallback
    _fill(backend, random.Random(SEED))
    stats = backend.stats()
    assert 0 < stats["fallback_bytes"] <= 4096, stats
    assert backend.get("k199") is not None  # the newest stays
    backend.close()


def test_the_redis_fallback_is_bounded_in_bytes() -> None:
    print(f"seed {SEED}")
    settings = CacheSettings(backend=BackendName.REDIS,
                             url=f"redis://127.0.0.1:{free_port()}/0", memory_max_bytes=4096)
    backend = open_backend(settings)
    assert isinstance(backend, RedisBackend)
    _fill(backend, random.Random(SEED))
    stats = backend.stats()
    assert stats["fallback"] and 0 < stats["fallback_bytes"] <= 4096, stats
    assert backend.get("k199") is not None
    backend.close()
