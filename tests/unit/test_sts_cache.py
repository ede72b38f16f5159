"""StsCache: MTA-STS policies in the shared backend (``sts:DOMAIN``), kept for their
max_age (RFC 8461 §5.1), stale when fetched in the reader's future (issue 16), and a
corrupt entry a miss, deleted unless the reader only inspects."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from danemilter.cache.backend import CLOCK_SKEW, CacheBackend
from danemilter.cache.memory import MemoryBackend
from danemilter.cache.sqlite import SQLiteBackend
from danemilter.cache.sts import StsCache, sts_key
from danemilter.mtasts import MAX_AGE_LIMIT, CachedPolicy, StsMode, StsPolicy

pytestmark = pytest.mark.timeout(20)

NOW = 1_700_000_000.0
DAY = 86_400
ENFORCE = StsPolicy(StsMode.ENFORCE, DAY, ("mx1.example.net", "*.example.net"))


@pytest.fixture(params=["memory", "sqlite"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[CacheBackend]:
    made: CacheBackend = (MemoryBackend(100) if request.param == "memory"
                          else SQLiteBackend(tmp_path / "cache.sqlite3", 100))
    yield made
    made.close()


def test_a_stored_policy_is_read_back_until_its_max_age(backend: CacheBackend) -> None:
    cached = CachedPolicy(ENFORCE, "20240101T000000", NOW)
    StsCache(backend, 10).store("example.net", cached)
    # Another process sharing the backend reads it.
    reader = StsCache(backend, 10)
    assert reader.policy("example.net", NOW) == cached
    assert reader.policy("example.net", NOW + DAY - 1) == cached
    assert reader.policy("example.net", NOW + DAY) is None
    assert reader.policy("other.example", NOW) is None
    stored = backend.get(sts_key("example.net"))
    assert stored is not None and stored[1] == NOW + DAY


def test_a_policy_with_max_age_0_is_never_read(backend: CacheBackend) -> None:
    cache = StsCache(backend, 10)
    cache.store("example.net", CachedPolicy(StsPolicy(StsMode.NONE, 0, ()), "1", NOW))
    assert cache.policy("example.net", NOW) is None


# A step back larger than the skew of a fleet: the entry's age is unknown, so it is stale
# even though its expiry is ahead and within a year of the stepped clock.
@pytest.mark.parametrize("step", [CLOCK_SKEW + 1, 3600.0, DAY - 1.0])
def test_a_policy_fetched_before_a_step_back_is_stale(
        backend: CacheBackend, step: float, caplog: pytest.LogCaptureFixture) -> None:
    cache = StsCache(backend, 10)
    cache.store("example.net", CachedPolicy(ENFORCE, "1", NOW))
    with caplog.at_level(logging.INFO, logger="danemilter.cache"):
        assert cache.policy("example.net", NOW - step) is None
    stale = [r for r in caplog.records if "in the future" in r.getMessage()]
    assert len(stale) == 1 and stale[0].levelno == logging.INFO
    assert "example.net" in stale[0].getMessage()
    # Stale, not corrupt: the entry stays for readers whose clock was not stepped.
    assert backend.get(sts_key("example.net")) is not None
    assert cache.policy("example.net", NOW + 10) is not None


def test_the_skew_of_a_fleet_is_allowed(backend: CacheBackend) -> None:
    cache = StsCache(backend, 10)
    cached = CachedPolicy(ENFORCE, "1", NOW)
    cache.store("example.net", cached)
    assert cache.policy("example.net", NOW - CLOCK_SKEW) == cached


def test_an_expiry_beyond_a_year_is_not_believed(backend: CacheBackend) -> None:
    # Written by a clock more than a year ahead: no policy lives that long (§3.2).
    backend.put(sts_key("example.net"), json.dumps(
        {"policy": ENFORCE.to_text(), "id": "1", "fetched_at": NOW}).encode(),
        NOW + MAX_AGE_LIMIT + DAY)
    assert StsCache(backend, 10).policy("example.net", NOW) is None


CORRUPT = [
    b"\xff not json",
    b"[1, 2]",
    b'{"policy": "version: STSv1\\n", "id": "1", "fetched_at": 1}',
    b'{"policy": 5, "id": "1", "fetched_at": 1}',
    b'{"id": "1", "fetched_at": 1}',
    b'{"policy": "version: STSv1\\nmode: none\\nmax_age: 5\\n", "id": "1"}',
    b'{"policy": "version: STSv1\\nmode: none\\nmax_age: 5\\n", "id": "1", '
    b'"fetched_at": "NaN"}',
]


@pytest.mark.parametrize("value", CORRUPT)
def test_a_corrupt_entry_is_a_miss_and_deleted(backend: CacheBackend, value: bytes,
                                               caplog: pytest.LogCaptureFixture) -> None:
    backend.put(sts_key("example.net"), value, NOW + 60)
    with caplog.at_level(logging.WARNING, logger="danemilter.cache.sts"):
        assert StsCache(backend, 10).policy("example.net", NOW) is None
    assert "dropping a corrupt cached MTA-STS policy of example.net" in caplog.text
    assert backend.get(sts_key("example.net")) is None


@pytest.mark.parametrize("value", CORRUPT)
def test_an_inspecting_reader_leaves_a_corrupt_entry(backend: CacheBackend, value: bytes,
                                                     caplog: pytest.LogCaptureFixture
                                                     ) -> None:
    backend.put(sts_key("example.net"), value, NOW + 60)
    with caplog.at_level(logging.WARNING, logger="danemilter.cache.sts"):
        assert StsCache(backend, 10, inspect=True).policy("example.net", NOW) is None
    assert "leaving a corrupt cached MTA-STS policy of example.net" in caplog.text
    assert backend.get(sts_key("example.net")) == (value, NOW + 60)
