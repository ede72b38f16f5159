"""Resident memory of the milter process with 100,000 cached domains, and after a soak.

A real ``danemilter run`` behind a private Postfix is filled through SMTP: client
threads send RCPTs for distinct domains under a wildcard MX (``wN.wild.bench.test``,
two DANE hosts each), so every RCPT is one cold evaluation and one cache entry. The
RSS (VmRSS in /proc) is read:

* baseline: after start-up and a few RCPTs (every import, thread and pool in place);
* after the fill: 100,000 domains cached, for each backend measured: ``sqlite`` (the
  default: the entries live in the file, the in-process LRU keeps ``lru_entries``
  = 10,000) and ``memory`` (all ``max_entries`` = 100,000 entries in the process);
* during the soak (sqlite, the default), sampled every few seconds while client
  threads keep sending RCPTs, half to new domains (every one a miss, an insert and,
  with the backend full, an eviction) and half to recently used ones (LRU hits), and
  smtp-source keeps sending whole messages (header and end-of-message callbacks).

``min_ttl`` is raised to 300 s (``--min-ttl``) so that every filled entry is still
fresh when the RSS is read after the fill (unbound's test set-up caps DNS TTLs at 10 s);
during a long soak the filled entries then expire and get asked again, so expiry and
refresh-ahead run too. "No growth": the RSS at the end of the soak is within 5 % of
the RSS at its start (plus the fitted slope over the second half is printed).

Last, ``--reloads`` SIGHUPs that each change the cache settings (``min_ttl``), with the
most recent 10,000 domains asked for again after each: memory must stay bounded by the
cache size across reloads too.

    python bench/memory_soak.py [--domains 100000] [--soak 600] [--reloads 3]
                                [--backends sqlite]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import smtplib
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from common import Figure, bench_zone, print_report, rss_bytes, wild_domains

from danemilter.cache import CacheSettings, SQLiteBackend, StatusCache
from tests.support.dnsbed import DnssecTestBed
from tests.support.milterproc import MilterProcess
from tests.support.postfix import PrivatePostfix, SmtpSink

_RSET_EVERY = 500  # below smtpd_recipient_limit (1000)
_CLIENTS = 8
LRU_ENTRIES = 10_000
_TARGET_MB = 80.0
_GROWTH_LIMIT = 1.05


class TunedMilter(MilterProcess):
    """MilterProcess with a cache section of our choosing (its header fixes the cache)."""

    def __init__(self, cache: str) -> None:
        self.cache_section = cache
        super().__init__("", log_level="info")

    def write_config(self, text: str) -> None:
        header = (f"listen: {self.listen}\nsocket_mode: \"0666\"\n"
                  f"log_level: {self.log_level}\ncache: {self.cache_section}\n")
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(header + text)
        os.replace(tmp, self.config_path)

    def rss(self) -> int:
        assert self.process is not None
        return rss_bytes(self.process.pid)


def send_rcpts(port: int, domains: Sequence[str], clients: int,
               stop: threading.Event | None = None) -> int:
    """RCPT each domain once over ``clients`` parallel SMTP sessions; every reply must be 250."""
    errors: list[str] = []
    done = [0] * clients

    def client(index: int) -> None:
        mine = domains[index::clients]
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=60) as smtp:
                smtp.ehlo("bench.client")
                for n, domain in enumerate(mine):
                    if stop is not None and stop.is_set():
                        return
                    if n % _RSET_EVERY == 0:
                        smtp.rset()
                        smtp.mail("bench@client.test")
                    code, reply = smtp.rcpt(f"r@{domain}")
                    if code != 250:
                        errors.append(f"{domain}: {code} {reply!r}")
                        return
                    done[index] += 1
        except (OSError, smtplib.SMTPException) as exc:
            errors.append(f"client {index}: {exc}")

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise SystemExit(f"RCPT failed: {errors[:3]}")
    return sum(done)


def mb(value: float) -> str:
    return f"{value / 2**20:.1f} MB"


def slope_mb_per_min(samples: Sequence[tuple[float, int]]) -> float:
    """Least-squares slope of RSS over time, in MB per minute."""
    if len(samples) < 2:
        return 0.0
    xs = [t for t, _ in samples]
    ys = [r / 2**20 for _, r in samples]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mx) ** 2 for x in xs)
    if var == 0:
        return 0.0
    return 60 * sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var


class World:
    def __init__(self, backend: str, domains: int, min_ttl: int) -> None:
        self.bed = DnssecTestBed([bench_zone(0)])
        self.sink = SmtpSink()
        self.backend = backend
        self.min_ttl = min_ttl
        self.milter = TunedMilter("")
        self.domains = domains
        self.milter.cache_section = self.cache_section(min_ttl)
        self.postfix: PrivatePostfix | None = None

    def cache_section(self, min_ttl: int) -> str:
        path = f"path: {self.milter.cache_path}, " if self.backend == "sqlite" else ""
        return (f"{{backend: {self.backend}, {path}max_entries: {max(self.domains, 1)}, "
                f"lru_entries: {LRU_ENTRIES}, min_ttl: {min_ttl}}}")

    def threads(self) -> int:
        assert self.milter.process is not None
        return len(list(Path(f"/proc/{self.milter.process.pid}/task").iterdir()))

    def policy(self) -> str:
        return (f"resolver: {{address: 127.0.0.1, port: {self.bed.resolver_port}, "
                "timeout: 2}\npolicy:\n  default: {dane: try}\n")

    def start(self) -> None:
        self.bed.start()
        self.sink.start()
        self.milter.write_config(self.policy())
        self.milter.start()
        self.postfix = PrivatePostfix(self.milter.postfix_address, self.sink.port)
        self.postfix.start()

    def stop(self) -> None:
        if self.postfix is not None:
            self.postfix.stop()
        self.milter.stop()
        self.sink.stop()
        self.bed.stop()


def prefill(world: World, count: int) -> float:
    """Write ``count`` entries into the milter's SQLite file; seconds taken.

    Evaluating 100,000 cold domains through SMTP runs at ~200/s here (8 minutes), so the
    file is filled directly, through the same StatusCache code the milter uses, with
    the status the milter itself computed for one wildcard domain under each name (the
    real statuses differ only in the name: every wildcard domain has the same MX hosts).
    """
    path = world.milter.cache_path
    settings = CacheSettings(path=str(path), max_entries=count, min_ttl=world.min_ttl)
    cache = StatusCache(SQLiteBackend(path, count), settings)
    try:
        sample = cache.get(wild_domains(1, start=10_000_000)[0], time.time())
        if sample is None:
            raise SystemExit("the milter did not cache its first evaluation")
        started = time.perf_counter()
        now = time.time()
        for domain in wild_domains(count):
            cache.put(dataclasses.replace(sample, domain=domain), now)
        return time.perf_counter() - started
    finally:
        cache.close()


def fill(world: World, count: int, report: Callable[[str], None]) -> tuple[int, int, float]:
    """(baseline RSS, RSS with ``count`` domains cached, fill seconds)."""
    assert world.postfix is not None
    port = world.postfix.port
    send_rcpts(port, wild_domains(20, start=10_000_000), 4)  # start-up work, not cached data
    baseline = world.milter.rss()
    started = time.perf_counter()
    if world.backend == "sqlite":
        written = prefill(world, count)
        report(f"{world.backend}: {count} entries written to the file in {written:.0f} s")
    # Every domain once through Postfix and the milter: a read from the file (or, for
    # the memory backend, a cold evaluation) and an entry in the in-process LRU.
    send_rcpts(port, wild_domains(count), _CLIENTS)
    seconds = time.perf_counter() - started
    filled = world.milter.rss()
    report(f"{world.backend}: {count} domains cached and asked for in {seconds:.0f} s; "
           f"RSS {mb(baseline)} -> {mb(filled)}")
    return baseline, filled, seconds


def soak(world: World, count: int, seconds: float, report: Callable[[str], None]
         ) -> list[tuple[float, int]]:
    assert world.postfix is not None
    port = world.postfix.port
    stop = threading.Event()
    samples: list[tuple[float, int]] = []
    fresh = iter(range(count, 10_000_000))
    failures: list[str] = []

    def new_domains() -> None:
        # Endless distinct domains: each a miss, an insert and (cache full) an eviction.
        while not stop.is_set():
            batch = wild_domains(400, start=next(fresh))
            for _ in range(399):
                next(fresh)
            send_rcpts(port, batch, 2, stop)

    def recent_domains() -> None:
        # Domains asked a moment ago, over and over: LRU hits and, near expiry, refreshes.
        start = 0
        while not stop.is_set():
            send_rcpts(port, wild_domains(400, start=start), 2, stop)
            start = (start + 400) % count

    def messages() -> None:
        while not stop.is_set():
            done = subprocess.run(["smtp-source", "-s", "2", "-m", "50", "-r", "2", "-t",
                                   "rcpt@w1.wild.bench.test", f"127.0.0.1:{port}"],
                                  capture_output=True, text=True, check=False)
            if done.returncode != 0:
                failures.append(done.stderr[-300:])
                return

    def guarded(work: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                work()
            except BaseException as exc:  # a worker's failure must end the soak, visibly
                failures.append(repr(exc))
                stop.set()
        return run

    workers = [threading.Thread(target=guarded(w)) for w in (new_domains, recent_domains,
                                                              messages)]
    started = time.monotonic()
    for worker in workers:
        worker.start()
    interval = max(min(seconds / 60, 10.0), 0.5)
    while True:
        elapsed = time.monotonic() - started
        samples.append((elapsed, world.milter.rss()))
        if elapsed >= seconds or stop.is_set():
            break
        # Sampling period, not a readiness wait: the soak runs for a fixed time.
        stop.wait(min(interval, seconds - elapsed))
    stop.set()
    for worker in workers:
        worker.join(timeout=120)
    if failures:
        raise SystemExit(f"soak load failed: {failures[:2]}")
    report(f"soak {seconds:.0f} s: RSS {mb(samples[0][1])} at start, "
           f"{mb(max(r for _, r in samples))} max, {mb(samples[-1][1])} at end; "
           f"{len(samples)} samples")
    return samples


def reloads(world: World, count: int, times: int, report: Callable[[str], None]
            ) -> list[int]:
    """RSS after each of ``times`` reloads (SIGHUP) that change the cache settings.

    Such a reload gives the milter a new Engine, whose LRU fills again as domains are
    asked for; the RSS shows whether the replaced engine's memory is given back. After
    each reload the most recently cached ``lru_entries`` domains are asked for again.
    """
    assert world.postfix is not None
    recent = wild_domains(min(LRU_ENTRIES, count), start=max(count - LRU_ENTRIES, 0))
    report(f"before the reloads: RSS {mb(world.milter.rss())}, {world.threads()} threads")
    sizes = []
    for n in range(times):
        # min_ttl is the one setting changed: it changes no verdict, only the lifetime.
        world.milter.cache_section = world.cache_section(world.min_ttl + 1 + n)
        world.milter.reload(config=world.policy())
        send_rcpts(world.postfix.port, recent, _CLIENTS)
        sizes.append(world.milter.rss())
        report(f"after reload {n + 1} (cache settings changed) and {len(recent)} domains "
               f"asked again: RSS {mb(sizes[-1])}, {world.threads()} threads")
    return sizes


def measure(count: int, soak_seconds: float, backends: Sequence[str], min_ttl: int,
            reload_times: int = 0) -> tuple[list[Figure], list[str]]:
    figures: list[Figure] = []
    lines: list[str] = [f"Milter RSS with {count} cached domains (lru_entries 10000, "
                        f"max_entries {count}, min_ttl {min_ttl})"]
    for backend in backends:
        world = World(backend, count, min_ttl)
        try:
            world.start()
            baseline, filled, fill_seconds = fill(world, count, lines.append)
            if fill_seconds > min_ttl:
                lines.append(f"  note: the fill took longer than min_ttl ({min_ttl} s): "
                             "the first entries had expired when the RSS was read")
            figures.append(Figure("5 memory", f"RSS, {count} domains cached ({backend})",
                                  mb(filled), f"{mb(baseline)} (started)", filled / baseline,
                                  f"<= {_TARGET_MB:.0f} MB", filled / 2**20 <= _TARGET_MB,
                                  "RSS filled / RSS just started"))
            if backend == backends[0] and soak_seconds > 0:
                samples = soak(world, count, soak_seconds, lines.append)
                start, end = samples[0][1], samples[-1][1]
                half = [s for s in samples if s[0] >= soak_seconds / 2]
                slope = slope_mb_per_min(half)
                lines.append(f"  slope over the second half: {slope:+.2f} MB/min")
                lines.append("  samples (s, MB): " + ", ".join(
                    f"{t:.0f}:{r / 2**20:.1f}" for t, r in samples[:: max(len(samples) // 12, 1)]))
                figures.append(Figure("5 memory", f"RSS after a {soak_seconds:.0f} s soak "
                                      f"({backend}; {slope:+.2f} MB/min in 2nd half)", mb(end),
                                      f"{mb(start)} (soak start)", end / start,
                                      f"<= {_GROWTH_LIMIT:.2f} (no growth)",
                                      end / start <= _GROWTH_LIMIT))
            if backend == backends[0] and reload_times > 0:
                before = world.milter.rss()
                sizes = reloads(world, count, reload_times, lines.append)
                figures.append(Figure("5 memory", f"RSS after {reload_times} reloads that "
                                      f"change the cache settings ({backend})", mb(sizes[-1]),
                                      f"{mb(before)} (before them)", sizes[-1] / before,
                                      f"<= {_GROWTH_LIMIT:.2f} (bounded by the cache size)",
                                      sizes[-1] / before <= _GROWTH_LIMIT))
            stats = subprocess.run(
                [sys.executable, "-m", "danemilter", "cache", "stats",
                 "--config", str(world.milter.config_path)],
                capture_output=True, text=True, check=False)
            if backend == "sqlite" and stats.returncode == 0:
                lines.append("  danemilter cache stats: " + " ".join(stats.stdout.split())[:300])
        finally:
            world.stop()
    return figures, lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--domains", type=int, default=100_000)
    parser.add_argument("--soak", type=float, default=600, help="soak seconds (0: none)")
    parser.add_argument("--backends", default="sqlite",
                        help="comma-separated; memory fills by cold evaluation (slow)")
    parser.add_argument("--min-ttl", type=int, default=300)
    parser.add_argument("--reloads", type=int, default=3,
                        help="reloads changing the cache settings after the soak (0: none)")
    args = parser.parse_args(argv)
    figures, lines = measure(args.domains, args.soak, args.backends.split(","), args.min_ttl,
                             args.reloads)
    print_report(figures, lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
