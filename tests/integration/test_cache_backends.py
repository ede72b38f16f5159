"""The status cache against real storage: SQLite files, a real redis-server, real processes.

Freshness is judged with an injected clock. Redis also expires keys by its own clock,
so the injected clock starts at the real time and moves forward from there.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import statistics
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from danemilter.cache import (
    CacheBackend,
    CacheSettings,
    MemoryBackend,
    RedisBackend,
    SQLiteBackend,
    StatusCache,
    open_cache,
    status_key,
)
from danemilter.cached import CachedEvaluator
from danemilter.dane import DomainEvaluator, DomainState, DomainStatus, HostState, HostStatus
from danemilter.resolver import Resolver, ResolverSettings
from danemilter.tlsa import TLSARecord
from tests.support.dnsbed import DnssecTestBed
from tests.support.redisd import RedisServer

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

EE = TLSARecord.from_text("3 1 1 " + "ab" * 32)


def dane_status(domain: str, ttl: int = 300, state: DomainState = DomainState.DANE,
                failed_host: bool = False) -> DomainStatus:
    hosts = [HostStatus(f"mx.{domain}", 10, ("192.0.2.1",), True, HostState.DANE,
                        f"mx.{domain}", (EE,), "usable secure TLSA", ttl)]
    if failed_host:
        hosts.append(HostStatus(f"mx2.{domain}", 20, (), False, HostState.FAILED, None, (),
                                "TLSA lookup failed: SERVFAIL", 0))
    if state not in (DomainState.DANE, DomainState.PARTIAL):
        hosts = []
    return DomainStatus(domain, state, 8 if hosts else 0, True, tuple(hosts),
                        f"{state} for the test", ttl)


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


# --- backends under test ----------------------------------------------------------


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.kill()


Opener = Callable[[], CacheBackend]


@pytest.fixture(params=["memory", "sqlite", "redis"])
def opener(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opener]:
    """Opens the backend again on the same storage (a second process would do the same)."""
    opened: list[CacheBackend] = []
    if request.param == "memory":
        shared = MemoryBackend(1000)

        def open_backend() -> CacheBackend:
            return shared
    elif request.param == "sqlite":
        path = tmp_path / "cache.sqlite3"

        def open_backend() -> CacheBackend:
            backend = SQLiteBackend(path, 1000)
            opened.append(backend)
            return backend
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        prefix = f"test-{uuid.uuid4().hex[:8]}:"

        def open_backend() -> CacheBackend:
            backend = RedisBackend(server.url, prefix, 1000)
            opened.append(backend)
            return backend
    yield open_backend
    for backend in opened:
        backend.close()


SETTINGS = CacheSettings(backend="memory")


def test_ttl_expiry_with_injected_clock(opener: Opener) -> None:
    now = time.time()
    writer = StatusCache(opener(), SETTINGS)
    status = dane_status("expiry.example", ttl=300)
    entry = writer.put(status, now)
    assert entry is not None and entry.expires_at == now + 300

    reader = StatusCache(opener(), SETTINGS)  # an empty LRU: answers come from the backend
    assert reader.get("expiry.example", now + 299) == status
    assert reader.backend_hits == 1
    assert writer.get("expiry.example", now + 299) == status
    assert writer.local_hits == 1
    # At the expiry instant neither the LRU nor the backend answers any more.
    assert writer.get("expiry.example", now + 300) is None
    assert StatusCache(opener(), SETTINGS).get("expiry.example", now + 300) is None

    short = dane_status("short.example", ttl=5)  # raised to min_ttl (60)
    writer.put(short, now)
    assert StatusCache(opener(), SETTINGS).get("short.example", now + 59.9) == short
    assert StatusCache(opener(), SETTINGS).get("short.example", now + 60) is None


@pytest.mark.parametrize(("status", "seconds"), [
    (dane_status("nx.example", ttl=10_800, state=DomainState.NXDOMAIN), 3600),
    (dane_status("nullmx.example", ttl=86_400, state=DomainState.NULLMX), 3600),
    (dane_status("nx-short.example", ttl=600, state=DomainState.NXDOMAIN), 600),
    (dane_status("tempfail.example", ttl=0, state=DomainState.TEMPFAIL), 30),
    (dane_status("bogus-host.example", ttl=3000, failed_host=True), 30),
], ids=["nxdomain-capped", "nullmx-capped", "nxdomain-ttl", "tempfail", "failed-host"])
def test_negative_and_tempfail_lifetimes(opener: Opener, status: DomainStatus,
                                         seconds: int) -> None:
    now = time.time()
    StatusCache(opener(), SETTINGS).put(status, now)
    fresh = StatusCache(opener(), SETTINGS).lookup(status.domain, now + seconds - 1)
    assert fresh is not None and fresh.status == status
    assert fresh.expires_at - fresh.stored_at == pytest.approx(seconds)
    assert StatusCache(opener(), SETTINGS).get(status.domain, now + seconds) is None


def test_uncacheable_status_is_not_stored(opener: Opener) -> None:
    now = time.time()
    cache = StatusCache(opener(), CacheSettings(backend="memory", tempfail_ttl=0))
    assert cache.put(dane_status("t.example", ttl=0, state=DomainState.TEMPFAIL), now) is None
    assert opener().get(status_key("t.example")) is None


def test_purge_one_and_all(opener: Opener) -> None:
    now = time.time()
    cache = StatusCache(opener(), SETTINGS)
    for name in ("a.example", "b.example", "c.example"):
        cache.put(dane_status(name), now)
    assert cache.purge("b.example") == 1
    assert cache.purge("b.example") == 0
    assert cache.get("b.example", now) is None
    assert StatusCache(opener(), SETTINGS).get("a.example", now) is not None
    assert cache.purge() == 2
    assert cache.get("a.example", now) is None
    assert StatusCache(opener(), SETTINGS).get("c.example", now) is None


def test_corrupt_entry_is_a_miss_and_is_removed(opener: Opener,
                                                caplog: pytest.LogCaptureFixture) -> None:
    now = time.time()
    backend = opener()
    backend.put(status_key("garbage.example"), b"\x00not json at all", now + 600)
    other = dane_status("other.example")
    StatusCache(backend, SETTINGS).put(other, now)
    # An entry whose content names another domain is as wrong as garbage.
    value, expires_at = backend.get(status_key("other.example")) or (b"", 0.0)
    backend.put(status_key("swapped.example"), value, expires_at)
    cache = StatusCache(opener(), SETTINGS)
    with caplog.at_level(logging.WARNING):
        assert cache.get("garbage.example", now) is None
        assert cache.get("swapped.example", now) is None
    assert cache.corrupt == 2
    assert backend.get(status_key("garbage.example")) is None
    assert "corrupt cache entry" in caplog.text


def test_redis_keys_expire_in_redis_at_the_entry_expiry(redis_server: RedisServer) -> None:
    backend = RedisBackend(redis_server.url, "pxat:", 100)
    try:
        now = time.time()
        StatusCache(backend, SETTINGS).put(
            dane_status("nx.example", ttl=10_800, state=DomainState.NXDOMAIN), now)
        client = redis_server.client()
        pttl = client.pttl("pxat:status:nx.example")
        assert 3_590_000 < pttl <= 3_600_000  # the capped negative lifetime, in Redis itself
        assert client.keys("status:*") == []  # nothing outside the prefix
        client.close()
    finally:
        backend.close()


# --- two OS processes on one SQLite file -----------------------------------------------


def _sqlite_writer(path: str, worker: int, count: int, start: multiprocessing.synchronize.Event,
                   results: multiprocessing.Queue[tuple[int, int, int]]) -> None:
    backend = SQLiteBackend(path, 100_000, busy_timeout=10.0)
    cache = StatusCache(backend, CacheSettings(backend="sqlite", path=path))
    start.wait()
    now = time.time()
    for i in range(count):
        cache.put(dane_status(f"w{worker}-{i}.example", ttl=600 + i), now)
        cache.put(dane_status("shared.example", ttl=600 + worker), now)  # both write one key
    results.put((worker, backend.errors, backend.recoveries))
    backend.close()


@pytest.mark.timeout(120)
def test_two_processes_write_one_sqlite_file_at_once(tmp_path: Path) -> None:
    path = str(tmp_path / "shared.sqlite3")
    SQLiteBackend(path, 100_000).close()  # create it, as the milter would at start
    context = multiprocessing.get_context("spawn")
    start = context.Event()
    results: multiprocessing.Queue[tuple[int, int, int]] = context.Queue()
    count = 300
    workers = [context.Process(target=_sqlite_writer, args=(path, n, count, start, results))
               for n in range(2)]
    for process in workers:
        process.start()
    reader = SQLiteBackend(path, 100_000)
    try:
        start.set()
        seen = 0
        # Read while they write: WAL readers never block and never see half an entry.
        while any(p.is_alive() for p in workers):
            found = reader.get(status_key("shared.example"))
            if found is not None:
                seen += 1
                assert StatusCache(reader, SETTINGS).get("shared.example", time.time())
        for process in workers:
            process.join(timeout=60)
            assert process.exitcode == 0
        outcomes = sorted(results.get(timeout=10) for _ in workers)
        assert outcomes == [(0, 0, 0), (1, 0, 0)]  # no failed write, no recovery
        assert len(reader) == 2 * count + 1
        cache = StatusCache(reader, SETTINGS)
        now = time.time()
        for worker in range(2):
            for i in range(count):
                name = f"w{worker}-{i}.example"
                assert cache.get(name, now) == dane_status(name, ttl=600 + i)
        assert reader.errors == 0
    finally:
        reader.close()


# --- Redis killed and restarted -------------------------------------------------------


def test_redis_killed_and_restarted_mid_run(caplog: pytest.LogCaptureFixture) -> None:
    server = RedisServer()
    server.start()
    clock = Clock()
    backend = RedisBackend(server.url, "outage:", 100, retry_initial=5, retry_max=20,
                           clock=clock)
    cache = StatusCache(backend, CacheSettings(backend="redis", lru_entries=0))
    now = time.time()
    try:
        before = dane_status("before.example")
        cache.put(before, now)
        assert server.client().exists("outage:status:before.example") == 1

        server.kill()
        with caplog.at_level(logging.WARNING, logger="danemilter.cache.redis_backend"):
            assert cache.get("before.example", now) is None  # a miss, never an exception
            assert backend.fallback
            during = dane_status("during.example")
            cache.put(during, now)
            for _ in range(5):
                assert cache.get("during.example", now) == during  # the in-process fallback
            clock.advance(6)  # the back-off passed: one more attempt fails, quietly
            assert cache.get("during.example", now) == during
            # The fallback honours lifetimes too: no stale answer past its expiry.
            cache.put(dane_status("retry.example", ttl=0, state=DomainState.TEMPFAIL), now)
            assert cache.get("retry.example", now + 29) is not None
            assert cache.get("retry.example", now + 30) is None
            server.start()  # same port; the back-off (now 10 s) has not passed
            assert cache.get("during.example", now) == during
            assert backend.fallback
            clock.advance(11)
            after = dane_status("after.example")
            cache.put(after, now)  # this write reconnects
            assert not backend.fallback
        unreachable = [r for r in caplog.records if "unreachable" in r.getMessage()]
        assert len(unreachable) == 1, [r.getMessage() for r in caplog.records]
        assert sum("answers again" in r.getMessage() for r in caplog.records) == 1
        assert backend.outages == 1
        assert server.client().exists("outage:status:after.example") == 1
        assert cache.get("after.example", now) == after
        # The server restarted empty and the fallback was dropped on reconnection.
        assert cache.get("before.example", now) is None
        assert cache.get("during.example", now) is None
    finally:
        backend.close()
        server.kill()


def test_redis_unreachable_from_the_start_never_raises(caplog: pytest.LogCaptureFixture) -> None:
    server = RedisServer()  # never started: connection refused
    backend = RedisBackend(server.url, "none:", 10)
    cache = StatusCache(backend, CacheSettings(backend="redis", lru_entries=0))
    now = time.time()
    with caplog.at_level(logging.WARNING):
        assert cache.get("x.example", now) is None
        cache.put(dane_status("x.example"), now)
        assert cache.get("x.example", now) is not None
        assert cache.purge() == 1
        assert backend.stats()["connected"] is False
    assert backend.ping() is False
    backend.close()


# --- corrupt and unusable SQLite files ------------------------------------------------


def test_corrupt_sqlite_file_is_moved_aside(tmp_path: Path,
                                            caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "cache.sqlite3"
    now = time.time()
    backend = SQLiteBackend(path, 100)
    StatusCache(backend, SETTINGS).put(dane_status("a.example"), now)
    backend.close()
    garbage = b"\xde\xad\xbe\xef garbage " * 400
    with path.open("r+b") as handle:
        handle.write(garbage)
    with caplog.at_level(logging.WARNING, logger="danemilter.cache.sqlite"):
        backend = SQLiteBackend(path, 100, clock=lambda: 1_700_000_000.0)
    try:
        assert not backend.fallback
        assert backend.moved_aside == [tmp_path / "cache.sqlite3.corrupt-1700000000.000000"]
        assert backend.moved_aside[0].read_bytes().startswith(garbage)
        cache = StatusCache(backend, SETTINGS)
        assert cache.get("a.example", now) is None
        cache.put(dane_status("b.example"), now)
        assert StatusCache(backend, SETTINGS).get("b.example", now) is not None
        assert "moved the unusable cache file" in caplog.text
    finally:
        backend.close()


def test_sqlite_damaged_pages_are_detected(tmp_path: Path,
                                           caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "cache.sqlite3"
    now = time.time()
    backend = SQLiteBackend(path, 10_000)
    cache = StatusCache(backend, CacheSettings(backend="sqlite", lru_entries=0))
    for i in range(300):
        cache.put(dane_status(f"d{i}.example"), now)
    backend.close()  # the last connection checkpoints: every entry is in the main file
    size = path.stat().st_size
    assert size > 16 * 4096
    with path.open("r+b") as handle:  # keep the header page, smash every other one
        handle.seek(4096)
        handle.write(b"\x00\xff\x13" * ((size - 4096) // 3))
    with caplog.at_level(logging.WARNING, logger="danemilter.cache.sqlite"):
        backend = SQLiteBackend(path, 10_000)
        cache = StatusCache(backend, CacheSettings(backend="sqlite", lru_entries=0))
        try:
            for i in range(300):  # never an exception, and never a wrong answer
                got = cache.get(f"d{i}.example", now)
                assert got is None or got == dane_status(f"d{i}.example")
            cache.put(dane_status("after.example"), now)
            assert cache.get("after.example", now) == dane_status("after.example")
            assert len(backend.moved_aside) == 1 and backend.moved_aside[0].exists()
            assert not backend.fallback
        finally:
            backend.close()
    assert "corrupt" in caplog.text or "cannot be used" in caplog.text


def test_sqlite_file_replaced_by_another_process_is_followed(tmp_path: Path) -> None:
    path = tmp_path / "cache.sqlite3"
    now = time.time()
    milter = SQLiteBackend(path, 100)
    StatusCache(milter, SETTINGS).put(dane_status("old.example"), now)
    # Move everything from the WAL into the main file, then smash its header.
    milter._run("checkpoint", lambda c: c.execute("PRAGMA wal_checkpoint(TRUNCATE)"), None)
    with path.open("r+b") as handle:
        handle.write(b"garbage!" * 512)
    helper = SQLiteBackend(path, 100)  # finds the file corrupt and starts a fresh one
    try:
        assert len(helper.moved_aside) == 1
        StatusCache(helper, SETTINGS).put(dane_status("new.example"), now)
        reader = StatusCache(milter, CacheSettings(backend="sqlite", lru_entries=0))
        assert reader.get("new.example", now) == dane_status("new.example")
        assert reader.get("old.example", now) is None
        assert not milter.fallback and milter.moved_aside == []
    finally:
        milter.close()
        helper.close()


def test_sqlite_path_that_is_a_directory_is_moved_aside(tmp_path: Path) -> None:
    path = tmp_path / "cache.sqlite3"
    path.mkdir()
    backend = SQLiteBackend(path, 10)
    try:
        assert not backend.fallback and path.is_file()
        assert backend.moved_aside[0].is_dir()
    finally:
        backend.close()


def test_sqlite_in_a_missing_directory_falls_back_to_memory(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR):
        backend = SQLiteBackend(tmp_path / "missing" / "cache.sqlite3", 10)
    cache = StatusCache(backend, CacheSettings(backend="sqlite", lru_entries=0))
    now = time.time()
    assert backend.fallback
    cache.put(dane_status("a.example"), now)
    assert cache.get("a.example", now) == dane_status("a.example")
    assert "caching in this process only" in caplog.text
    backend.close()


# --- size limits ----------------------------------------------------------------------


def test_sqlite_evicts_soonest_expiring_at_the_limit(tmp_path: Path) -> None:
    path = tmp_path / "cache.sqlite3"
    backend = SQLiteBackend(path, 50)
    cache = StatusCache(backend, CacheSettings(backend="sqlite", lru_entries=0, min_ttl=0))
    now = time.time()
    try:
        for i in range(80):
            cache.put(dane_status(f"d{i}.example", ttl=1000 + i), now)
            assert len(backend) <= 50
        assert len(backend) == 50
        assert backend.evictions == 30
        kept = {i for i in range(80) if cache.get(f"d{i}.example", now) is not None}
        assert kept == set(range(30, 80))
        cache.put(dane_status("d79.example", ttl=2000), now)  # an update is not a new entry
        assert len(backend) == 50
        # A second opener (another process) sees and keeps the same bound.
        other = SQLiteBackend(path, 50)
        StatusCache(other, CacheSettings(backend="sqlite", min_ttl=0)).put(
            dane_status("late.example", ttl=5000), now)
        assert len(other) == 50
        other.close()
    finally:
        backend.close()


def test_memory_backend_evicts_least_recently_used() -> None:
    backend = MemoryBackend(3)
    for key in ("a", "b", "c"):
        backend.put(key, key.encode(), 10.0)
    assert backend.get("a") == (b"a", 10.0)  # a is now the most recently used
    backend.put("d", b"d", 10.0)
    assert backend.get("b") is None
    assert {k for k in "acd" if backend.get(k)} == {"a", "c", "d"}
    assert len(backend) == 3 and backend.evictions == 1


def test_in_process_lru_stays_bounded(tmp_path: Path) -> None:
    cache = StatusCache(SQLiteBackend(tmp_path / "c.sqlite3", 1000),
                        CacheSettings(backend="sqlite", lru_entries=10))
    now = time.time()
    for i in range(100):
        cache.put(dane_status(f"d{i}.example"), now)
        cache.get(f"d{i}.example", now)
    stats = cache.stats()
    assert stats["lru_entries"] == 10 and stats["lru_evictions"] == 90
    assert stats["backend"]["entries"] == 100
    assert cache.get("d0.example", now) is not None  # evicted from the LRU, still shared
    cache.close()


def test_warm_hit_latency(tmp_path: Path) -> None:
    cache = StatusCache(SQLiteBackend(tmp_path / "c.sqlite3", 1000),
                        CacheSettings(backend="sqlite"))
    now = time.time()
    status = dane_status("warm.example")
    cache.put(status, now)
    samples = []
    for _ in range(20_000):
        started = time.perf_counter_ns()
        found = cache.get("warm.example", now)
        samples.append(time.perf_counter_ns() - started)
        assert found is status
    assert statistics.median(samples) < 50_000  # ns; typically ~1 µs
    cache.close()


# --- CachedEvaluator ------------------------------------------------------------------


class ScriptedEvaluator(DomainEvaluator):
    """Answers from a script; counts evaluations; can hold them until released."""

    def __init__(self) -> None:
        super().__init__(Resolver(ResolverSettings()))
        self.answers: dict[str, DomainStatus] = {}
        self.calls: list[str] = []
        self.release = asyncio.Event()
        self.release.set()

    async def evaluate(self, domain: str, deadline: float) -> DomainStatus:
        self.calls.append(domain)
        await self.release.wait()
        return self.answers[domain]


def _cached(clock: Clock, **settings: object) -> tuple[ScriptedEvaluator, CachedEvaluator]:
    scripted = ScriptedEvaluator()
    options: dict[str, object] = {"backend": "memory", **settings}
    cache = open_cache(CacheSettings(**options))  # type: ignore[arg-type]
    return scripted, CachedEvaluator(scripted, cache, clock=clock)


def test_concurrent_misses_coalesce_into_one_evaluation() -> None:
    async def run() -> None:
        clock = Clock()
        scripted, cached = _cached(clock)
        scripted.answers["c.example"] = dane_status("c.example")
        scripted.release.clear()
        waiters = [asyncio.ensure_future(cached.evaluate("c.example", 5)) for _ in range(20)]
        while not scripted.calls:
            await asyncio.sleep(0)
        scripted.release.set()
        results = await asyncio.gather(*waiters)
        assert scripted.calls == ["c.example"]
        assert all(r == dane_status("c.example") for r in results)
        assert await cached.evaluate("c.example", 5) == results[0]
        assert scripted.calls == ["c.example"]  # the warm hit evaluated nothing
    asyncio.run(run())


def test_refresh_ahead_renews_a_domain_still_asked_for() -> None:
    async def run() -> None:
        clock = Clock()
        scripted, cached = _cached(clock, min_ttl=0, refresh_ahead=0.1)
        first = dane_status("r.example", ttl=1000)
        scripted.answers["r.example"] = first
        assert await cached.evaluate("r.example", 5) == first
        clock.advance(500)
        assert await cached.evaluate("r.example", 5) == first
        assert len(scripted.calls) == 1  # half-way: no refresh yet
        clock.advance(450)  # 50 s left of 1000: inside the last 10 %
        renewed = dane_status("r.example", ttl=999)
        scripted.answers["r.example"] = renewed
        assert await cached.evaluate("r.example", 5) == first  # answered at once, from cache
        await asyncio.gather(*cached._refreshing.values())
        assert len(scripted.calls) == 2
        clock.advance(100)  # past the first entry's expiry, within the renewed one's
        assert await cached.evaluate("r.example", 5) == renewed
        assert len(scripted.calls) == 2
    asyncio.run(run())


def test_failed_refresh_keeps_the_entry_only_to_its_expiry() -> None:
    async def run() -> None:
        clock = Clock()
        scripted, cached = _cached(clock, min_ttl=0, refresh_ahead=0.5)
        good = dane_status("f.example", ttl=100)
        scripted.answers["f.example"] = good
        await cached.evaluate("f.example", 5)
        clock.advance(60)
        scripted.answers["f.example"] = dane_status("f.example", ttl=0,
                                                    state=DomainState.TEMPFAIL)
        assert await cached.evaluate("f.example", 5) == good
        await asyncio.gather(*cached._refreshing.values())
        assert await cached.evaluate("f.example", 5) == good  # the bogus refresh did not win
        assert len(scripted.calls) == 2
        clock.advance(40)  # the good entry's expiry: now the tempfail answers
        assert (await cached.evaluate("f.example", 5)).status is DomainState.TEMPFAIL
        assert len(scripted.calls) == 3
    asyncio.run(run())


def test_cache_miss_respects_the_deadline() -> None:
    async def run() -> None:
        scripted, cached = _cached(Clock())
        scripted.answers["slow.example"] = dane_status("slow.example")
        scripted.release.clear()  # the evaluation never finishes on its own
        started = time.monotonic()
        status = await cached.evaluate("slow.example", 0.2)
        assert status.status is DomainState.TEMPFAIL
        assert time.monotonic() - started < 2
        scripted.release.set()
    asyncio.run(run())


@pytest.mark.timeout(120)
def test_cached_evaluator_answers_with_the_resolver_stopped(dns_bed: DnssecTestBed,
                                                            tmp_path: Path) -> None:
    settings = CacheSettings(path=str(tmp_path / "cache.sqlite3"))

    def evaluator() -> CachedEvaluator:
        resolver = Resolver(ResolverSettings(dns_bed.resolver_address, dns_bed.resolver_port,
                                             timeout=1.0))
        return CachedEvaluator(DomainEvaluator(resolver), open_cache(settings))

    async def run() -> None:
        milter = evaluator()
        first = await milter.evaluate("ee.secure.test", 5)
        assert first.status is DomainState.DANE and first.usage == 8
        dns_bed.stop_resolver()
        try:
            assert await milter.evaluate("ee.secure.test", 5) == first
            helper = evaluator()  # another process: an empty LRU, the same SQLite file
            assert await helper.evaluate("ee.secure.test", 5) == first
            assert helper.evaluations == 0
            cold = await helper.evaluate("ta.secure.test", 3)
            assert cold.status is DomainState.TEMPFAIL
        finally:
            dns_bed.start_resolver()
        milter.cache.close()

    asyncio.run(run())
    assert os.path.exists(settings.path)
