"""Cold evaluation: wall time, resolver queries per domain, parallel MX hosts, coalescing.

A relay in front of the test bed's unbound counts every query danemilter sends (and
can hold each answer for D ms). All sets of domains are disjoint, so unbound's cache
is cold for each of them too.

* 1,000 distinct fixture domains (two MX hosts each, DANE-EE): evaluated one after
  another and 20 at a time (as 20 SMTP sessions would), through CachedEvaluator as
  the milter does. Baseline: the same seven questions per domain asked one after
  another with dnspython's blocking ``dns.query.udp``, the way a naive checker would.
* Parallel MX hosts: behind a relay that delays every answer by D ms, one domain with
  N MX hosts. Baseline: one query through the same relay (≈ D). Evaluating the MX
  hosts one after another would take (1 + N) D or more; in parallel it is 2 D.
* Coalescing: many concurrent evaluations of one domain through the milter's service
  (each from its own thread, as libmilter's connection threads call it) → one set
  of queries; and domains that share their MX hosts, concurrently and one after
  another.

    python bench/cold_eval.py [--domains 1000] [--concurrency 20] [--delay-ms 50]
                              [--wide 8] [--same 50] [--shared 20]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import socket
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection

import dns.message
import dns.query
from common import (
    Figure,
    bench_domains,
    bench_zone,
    ms,
    print_report,
    shared_domains,
    wide_domain,
)

from danemilter.cache import CacheSettings, MemoryBackend, StatusCache
from danemilter.cached import CachedEvaluator
from danemilter.dane import DomainEvaluator, DomainState, DomainStatus
from danemilter.deadline import Deadline
from danemilter.resolver import Resolver, ResolverSettings
from danemilter.service import LoopThread
from tests.support.dnsbed import DnssecTestBed


class CountingRelay:
    """UDP relay to unbound on a fresh loopback port: counts questions, may delay answers.

    It runs in a process of its own (forked before any thread exists): in the
    benchmark's process it would compete for the GIL with the evaluations it times.
    One asyncio loop and one upstream socket; query IDs are rewritten so that
    concurrent clients never collide upstream.
    """

    def __init__(self, upstream_port: int, delay: float = 0.0) -> None:
        self.upstream = ("127.0.0.1", upstream_port)
        self.delay = delay
        self.port = 0
        self._control, self._child_end = multiprocessing.get_context("fork").Pipe()
        self._process = multiprocessing.get_context("fork").Process(
            target=_relay_process, args=(self.upstream, delay, self._child_end), daemon=True)

    def _ask(self, command: str) -> tuple[int, int]:
        self._control.send(command)
        answer: tuple[int, int] = self._control.recv()
        return answer

    @property
    def queries(self) -> int:
        return self._ask("count")[0]

    @property
    def truncated(self) -> int:
        return self._ask("count")[1]

    def reset(self) -> None:
        self._ask("reset")

    def __enter__(self) -> CountingRelay:
        self._process.start()
        # The child answers with its port once it is bound: readiness, not a sleep.
        if not self._control.poll(10):
            raise RuntimeError("the relay process did not start")
        self.port = self._control.recv()
        return self

    def __exit__(self, *exc: object) -> None:
        self._control.send("stop")
        self._process.join(timeout=5)
        if self._process.is_alive():
            self._process.kill()


def _relay_process(upstream: tuple[str, int], delay: float, control: Connection) -> None:
    loop = asyncio.new_event_loop()
    pending: dict[int, tuple[bytes, tuple[str, int]]] = {}
    state = {"next_id": 0, "queries": 0, "truncated": 0}

    class Down(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
            state["queries"] += 1
            new_id = state["next_id"]
            while new_id in pending:
                new_id = (new_id + 1) & 0xFFFF
            state["next_id"] = (new_id + 1) & 0xFFFF
            pending[new_id] = (data[:2], addr)
            up.sendto(new_id.to_bytes(2, "big") + data[2:])

    class Up(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
            found = pending.pop(int.from_bytes(data[:2], "big"), None)
            if found is None:
                return
            old_id, client = found
            if data[2] & 0x02:  # TC: the client retries over TCP, which is not relayed
                state["truncated"] += 1
            answer = old_id + data[2:]
            if delay > 0:
                loop.call_later(delay, down.sendto, answer, client)
            else:
                down.sendto(answer, client)

    async def open_endpoints() -> tuple[asyncio.DatagramTransport, asyncio.DatagramTransport]:
        down, _ = await loop.create_datagram_endpoint(Down, local_addr=("127.0.0.1", 0))
        up, _ = await loop.create_datagram_endpoint(Up, remote_addr=upstream)
        return down, up

    def on_command() -> None:
        command = control.recv()
        if command == "stop":
            loop.stop()
            return
        if command == "reset":
            state["queries"] = state["truncated"] = 0
        control.send((state["queries"], state["truncated"]))

    down, up = loop.run_until_complete(open_endpoints())
    loop.add_reader(control.fileno(), on_command)
    control.send(down.get_extra_info("sockname")[1])
    loop.run_forever()


def naive_sequential(port: int, domains: Sequence[str]) -> float:
    """The baseline: the same 7 questions per domain, one blocking query at a time."""
    started = time.perf_counter()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for domain in domains:
            mx = ask(sock, port, domain, "MX")
            hosts = [r.exchange.to_text() for rrset in mx.answer if rrset.rdtype == 15
                     for r in rrset]
            for host in hosts:
                for name, rdtype in ((host, "A"), (host, "AAAA"), (f"_25._tcp.{host}", "TLSA")):
                    ask(sock, port, name, rdtype)
    return time.perf_counter() - started


def ask(sock: socket.socket, port: int, name: str, rdtype: str) -> dns.message.Message:
    request = dns.message.make_query(name, rdtype, want_dnssec=True, use_edns=0, payload=1232)
    return dns.query.udp(request, "127.0.0.1", port=port, timeout=5, sock=sock)


def cached_evaluator(port: int) -> CachedEvaluator:
    resolver = Resolver(ResolverSettings("127.0.0.1", port, timeout=5))
    cache = StatusCache(MemoryBackend(100_000), CacheSettings(backend="memory"))
    return CachedEvaluator(DomainEvaluator(resolver), cache)


def evaluate_all(port: int, domains: Sequence[str], concurrency: int) -> float:
    """Wall time to evaluate ``domains`` with at most ``concurrency`` in flight."""

    async def run() -> float:
        cached = cached_evaluator(port)
        queue = list(domains)
        bad: list[str] = []

        async def worker() -> None:
            while queue:
                domain = queue.pop()
                status = await cached.evaluate(domain, 10)
                if status.status is not DomainState.DANE:
                    bad.append(f"{domain}: {status.status} {status.reason}")

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
        if bad:
            raise SystemExit(f"not DANE: {bad[:3]}")
        return elapsed

    return asyncio.run(run())


def measure(count: int, concurrency: int, delay_ms: float, wide: int, *, same: int,
            shared: int) -> tuple[list[Figure], list[str]]:
    domains = bench_domains(3 * count + 1)
    naive_set, serial_set, parallel_set = (domains[i * count : (i + 1) * count]
                                           for i in range(3))
    bed = DnssecTestBed([bench_zone(len(domains), shared=shared, wide_hosts=wide)])
    figures: list[Figure] = []
    lines: list[str] = []
    bed.start()
    try:
        with CountingRelay(bed.resolver_port) as relay:
            naive = naive_sequential(relay.port, naive_set)
            naive_queries = relay.queries
            relay.reset()
            serial = evaluate_all(relay.port, serial_set, 1)
            serial_queries = relay.queries
            relay.reset()
            parallel = evaluate_all(relay.port, parallel_set, concurrency)
            parallel_queries = relay.queries
            truncated = relay.truncated
        lines.append(f"Cold evaluation of {count} distinct domains (2 MX hosts, DANE-EE), "
                     "through a counting relay in front of unbound")
        lines.append(f"{'how':<44} {'wall':>10} {'per domain':>11} {'queries/domain':>15}")
        for how, seconds, queries in (
                ("naive: 7 blocking queries one by one", naive, naive_queries),
                ("danemilter, one domain after another", serial, serial_queries),
                (f"danemilter, {concurrency} domains at a time", parallel, parallel_queries)):
            lines.append(f"{how:<44} {seconds:>9.2f}s {ms(seconds / count):>11} "
                         f"{queries / count:>15.2f}")
        if truncated:
            lines.append(f"({truncated} truncated answers: those queries were retried over "
                         "TCP past the relay and are not counted)")
        figures += [
            Figure("3 cold eval", f"{count} domains one by one: wall time",
                   f"{serial:.2f} s", f"{naive:.2f} s (naive)", serial / naive),
            Figure("3 cold eval", f"{count} domains, {concurrency} at a time: wall time",
                   f"{parallel:.2f} s", f"{naive:.2f} s (naive)", parallel / naive),
            Figure("3 cold eval", "resolver queries per domain",
                   f"{serial_queries / count:.2f}", f"{naive_queries / count:.2f} (naive)",
                   serial_queries / naive_queries, "1 MX + 3 per host = 7",
                   serial_queries == naive_queries == 7 * count),
        ]

        delay = delay_ms / 1000
        with CountingRelay(bed.resolver_port, delay) as relay:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                started = time.perf_counter()
                ask(sock, relay.port, f"{WIDE_PROBE}.{wide_domain()}", "A")
                one = time.perf_counter() - started
            relay.reset()
            started = time.perf_counter()
            asyncio.run(cached_evaluator(relay.port).evaluate(wide_domain(), 10))
            wide_seconds = time.perf_counter() - started
            wide_queries = relay.queries
            lines.append(f"\nParallel MX hosts: relay delays every answer {delay_ms:g} ms; "
                         f"one query took {ms(one)}; a domain with {wide} MX hosts took "
                         f"{ms(wide_seconds)} ({wide_queries} queries; one host after "
                         f"another would be >= {(1 + wide) * delay_ms:g} ms)")
            figures.append(Figure("3 cold eval", f"{wide} MX hosts behind a {delay_ms:g} ms "
                                  "relay", ms(wide_seconds), f"{ms(one)} (one query)",
                                  wide_seconds / one, "2-3 round trips",
                                  wide_seconds / one <= 3.0,
                                  "wall time / one round trip"))

            relay.reset()
            engine = LoopThread(ResolverSettings("127.0.0.1", relay.port, timeout=5),
                                CacheSettings(backend="memory"))
            target = bench_domains(1, start=3 * count)[0]

            def ask_service(domain: str) -> DomainStatus:
                return engine.call(engine.service.status(domain, Deadline.after(10)), 11)

            try:
                with ThreadPoolExecutor(same) as pool:
                    started = time.perf_counter()
                    statuses = list(pool.map(ask_service, [target] * same))
                    same_seconds = time.perf_counter() - started
            finally:
                engine.close()
            if any(s.status is not DomainState.DANE for s in statuses):
                raise SystemExit(f"coalescing run: {statuses[0]}")
            same_queries = relay.queries
            lines.append(f"Coalescing: {same} threads asking the milter's service for one cold "
                         f"domain at once: {same_queries} queries, {ms(same_seconds)}")
            figures.append(Figure("3 cold eval", f"{same} concurrent asks for one domain: "
                                  "queries", str(same_queries), "7 (one evaluation)",
                                  same_queries / 7, "one set of queries (7)",
                                  same_queries == 7))

            names = shared_domains(shared)
            relay.reset()
            cached = cached_evaluator(relay.port)

            async def together() -> None:
                await asyncio.gather(*(cached.evaluate(d, 10) for d in names))

            asyncio.run(together())
            concurrent_queries = relay.queries
            relay.reset()
            cached = cached_evaluator(relay.port)

            async def one_by_one() -> None:
                for d in names:
                    await cached.evaluate(d, 10)

            asyncio.run(one_by_one())
            serial_shared = relay.queries
            alone = 7 * shared
            lines.append(f"Shared MX hosts: {shared} domains naming the same 2 MX hosts: "
                         f"{concurrent_queries} queries evaluated concurrently, "
                         f"{serial_shared} one after another ({alone} if nothing were "
                         "shared; danemilter keeps no per-host cache across evaluations, "
                         "unbound's cache answers the repeats)")
            figures.append(Figure("3 cold eval", f"{shared} domains sharing 2 MX hosts, "
                                  "concurrently: queries", str(concurrent_queries),
                                  f"{alone} (unshared)", concurrent_queries / alone,
                                  f"{shared} MX + 6", concurrent_queries == shared + 6))
    finally:
        bed.stop()
    return figures, lines


# A name below the wide domain that does not exist: the baseline query must not warm
# unbound's cache for anything the evaluation asks.
WIDE_PROBE = "baseline-probe"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--domains", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--delay-ms", type=float, default=50)
    parser.add_argument("--wide", type=int, default=8)
    parser.add_argument("--same", type=int, default=50)
    parser.add_argument("--shared", type=int, default=20)
    args = parser.parse_args(argv)
    figures, lines = measure(args.domains, args.concurrency, args.delay_ms, args.wide,
                             same=args.same, shared=args.shared)
    print_report(figures, lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
