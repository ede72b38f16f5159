"""Warm-hit latency of the status cache per backend, and cold vs warm decision time.

Usage:
    python3 bench/cache_bench.py [--samples 20000] [--cold 100]

"lru hit": a fresh entry in the in-process LRU (what the milter pays for a warm domain).
"backend hit": the LRU is empty, so the entry is read from the backend and decoded (a
domain another process cached, or one pushed out of the LRU). Ratios are against the
LRU hit of the same run. Starts its own redis-server on loopback; with --cold > 0 also
a DNSSEC test bed (nsd + unbound) to time a cold evaluation against a warm cached one.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from common import bench_domains, bench_zone, quantile

from danemilter.cache import (
    CacheBackend,
    CacheSettings,
    MemoryBackend,
    RedisBackend,
    SQLiteBackend,
    StatusCache,
    open_cache,
)
from danemilter.cached import CachedEvaluator
from danemilter.dane import DomainEvaluator, DomainState, DomainStatus, HostState, HostStatus
from danemilter.resolver import Resolver, ResolverSettings
from danemilter.tlsa import TLSARecord
from tests.support.dnsbed import DnssecTestBed
from tests.support.redisd import RedisServer

DOMAINS = 1000


def sample_status(domain: str) -> DomainStatus:
    """A typical DANE domain: two MX hosts, each with a DANE-EE and a DANE-TA record."""
    records = (TLSARecord.from_text("3 1 1 " + "ab" * 32),
               TLSARecord.from_text("2 0 1 " + "cd" * 32))
    hosts = tuple(
        HostStatus(f"mx{n}.{domain}", 10 * n, (f"192.0.2.{n}", f"2001:db8::{n}"), True,
                   HostState.DANE, f"mx{n}.{domain}", records,
                   f"usable secure TLSA at _25._tcp.mx{n}.{domain}", 3600)
        for n in (1, 2))
    return DomainStatus(domain, DomainState.DANE, 12, True, hosts,
                        "every usable MX host has usable secure TLSA records", 3600)


def timed(call: Callable[[], object], samples: int) -> list[float]:
    times = []
    for _ in range(samples):
        started = time.perf_counter_ns()
        call()
        times.append((time.perf_counter_ns() - started) / 1000)
    return times


def warm_hits(backend: CacheBackend, samples: int) -> tuple[list[float], list[float]]:
    now = time.time()
    names = [f"d{i}.bench.test" for i in range(DOMAINS)]
    with_lru = StatusCache(backend, CacheSettings(backend="memory"))
    for name in names:
        with_lru.put(sample_status(name), now)
    without_lru = StatusCache(backend, CacheSettings(backend="memory", lru_entries=0))
    target = names[DOMAINS // 2]
    assert with_lru.get(target, now) is not None and without_lru.get(target, now) is not None
    lru = timed(lambda: with_lru.get(target, now), samples)
    through = timed(lambda: without_lru.get(target, now), samples)
    return lru, through


def cold_vs_warm(count: int) -> tuple[list[float], list[float]]:
    domains = bench_domains(count)
    bed = DnssecTestBed([bench_zone(count)])
    bed.start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            settings = CacheSettings(path=str(Path(tmp) / "cache.sqlite3"))

            async def run() -> tuple[list[float], list[float]]:
                resolver = Resolver(ResolverSettings(bed.resolver_address, bed.resolver_port))
                cached = CachedEvaluator(DomainEvaluator(resolver), open_cache(settings))
                cold, warm = [], []
                for domain in domains:
                    started = time.perf_counter_ns()
                    status = await cached.evaluate(domain, 5)
                    cold.append((time.perf_counter_ns() - started) / 1000)
                    assert status.status is DomainState.DANE, status
                for domain in domains:
                    started = time.perf_counter_ns()
                    await cached.evaluate(domain, 5)
                    warm.append((time.perf_counter_ns() - started) / 1000)
                cached.cache.close()
                return cold, warm

            return asyncio.run(run())
    finally:
        bed.stop()


def us(value: float) -> str:
    return f"{value:,.1f} µs" if value < 10_000 else f"{value / 1000:,.2f} ms"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=20_000)
    parser.add_argument("--cold", type=int, default=100,
                        help="domains for cold vs warm decisions (0 skips the DNS test bed)")
    args = parser.parse_args(argv)
    server = RedisServer()
    server.start()
    rows: list[tuple[str, str, list[float], float]] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            backends: list[CacheBackend] = [
                MemoryBackend(10_000),
                SQLiteBackend(Path(tmp) / "cache.sqlite3", 10_000),
                RedisBackend(server.url, "bench:", 10_000),
            ]
            for backend in backends:
                lru, through = warm_hits(backend, args.samples)
                base = quantile(lru, 0.5)
                rows.append((backend.name, "lru hit", lru, base))
                rows.append((backend.name, "backend hit", through, base))
                backend.close()
    finally:
        server.kill()
    print(f"Warm-hit latency, {args.samples} lookups each, {DOMAINS} cached domains "
          "(two MX hosts, two TLSA records each)")
    print(f"{'backend':<8} {'path':<12} {'p50':>12} {'p99':>12} {'p50 / lru p50':>14}")
    for name, path, samples, base in rows:
        p50, p99 = quantile(samples, 0.5), quantile(samples, 0.99)
        print(f"{name:<8} {path:<12} {us(p50):>12} {us(p99):>12} {p50 / base:>13.1f}x")
    if args.cold > 0:
        cold, warm = cold_vs_warm(args.cold)
        print(f"\nDecision time through CachedEvaluator (sqlite), {args.cold} domains, "
              "unbound + nsd on loopback")
        print(f"{'cache':<6} {'p50':>12} {'p99':>12}")
        for name, samples in (("cold", cold), ("warm", warm)):
            print(f"{name:<6} {us(quantile(samples, 0.5)):>12} {us(quantile(samples, 0.99)):>12}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
