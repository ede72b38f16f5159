"""Evaluation mechanics over real DNSSEC: parallel MX hosts, coalescing, the deadline.

A relay in front of the test bed's unbound holds every answer for DELAY seconds, so
the wall time of an evaluation counts its sequential resolver round trips.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from danemilter.dane import DomainEvaluator, DomainState
from danemilter.resolver import Resolver, ResolverSettings
from tests.support.dnsbed import DnssecTestBed

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

DELAY = 0.15


class DelayingRelay:
    """UDP relay on a fresh loopback port: forwards to unbound, answers DELAY s later."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream = ("127.0.0.1", upstream_port)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.sock.settimeout(0.1)
        self.queries = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._answering: list[threading.Thread] = []

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                wire, client = self.sock.recvfrom(65535)
            except TimeoutError:
                continue
            self.queries += 1
            answer = threading.Thread(target=self._answer, args=(wire, client), daemon=True)
            self._answering.append(answer)
            answer.start()

    def _answer(self, wire: bytes, client: tuple[str, int]) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as up:
            up.settimeout(5)
            up.sendto(wire, self.upstream)
            reply, _ = up.recvfrom(65535)
        if self._stop.wait(DELAY):
            return  # shutting down: nobody waits for this answer any more
        self.sock.sendto(reply, client)

    def __enter__(self) -> DelayingRelay:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        for answer in self._answering:  # none may send on the socket once it is closed
            answer.join()
        self.sock.close()


@pytest.fixture
def relay(dns_bed: DnssecTestBed) -> Iterator[DelayingRelay]:
    with DelayingRelay(dns_bed.resolver_port) as relay:
        yield relay


def evaluate(port: int, domains: list[str], deadline: float = 10.0
             ) -> tuple[list[DomainState], float, int]:
    resolver = Resolver(ResolverSettings("127.0.0.1", port, timeout=5))
    evaluator = DomainEvaluator(resolver)

    async def run() -> list[DomainState]:
        statuses = await asyncio.gather(*(evaluator.evaluate(d, deadline) for d in domains))
        return [s.status for s in statuses]

    started = time.monotonic()
    states = asyncio.run(run())
    return states, time.monotonic() - started, resolver.queries_sent


def test_mx_hosts_are_looked_up_in_parallel(relay: DelayingRelay) -> None:
    # both.secure.test: two MX hosts, 1 MX + 2 x (A, AAAA, TLSA) = 7 queries.
    states, elapsed, sent = evaluate(relay.port, ["both.secure.test"])
    assert states == [DomainState.DANE]
    assert sent == 7
    # Two dependency levels (MX, then everything per host at once): ~2 delays, not 7.
    assert 2 * DELAY <= elapsed < 3.5 * DELAY, f"{elapsed:.3f} s"


def test_concurrent_evaluations_of_one_domain_share_the_lookups(relay: DelayingRelay) -> None:
    states, elapsed, sent = evaluate(relay.port, ["both.secure.test"] * 25)
    assert states == [DomainState.DANE] * 25
    assert sent == 7
    assert relay.queries == 7
    assert elapsed < 3.5 * DELAY


def test_a_cname_adds_exactly_one_level(relay: DelayingRelay) -> None:
    # The expanded name's TLSA can only be asked once the address answer names it.
    states, elapsed, _ = evaluate(relay.port, ["cname-exp.secure.test"])
    assert states == [DomainState.DANE]
    assert 3 * DELAY <= elapsed < 4.5 * DELAY, f"{elapsed:.3f} s"


def test_the_deadline_bounds_the_whole_evaluation(relay: DelayingRelay) -> None:
    states, elapsed, _ = evaluate(relay.port, ["both.secure.test"], deadline=1.5 * DELAY)
    assert states == [DomainState.TEMPFAIL]
    assert 1.5 * DELAY <= elapsed < 1.5 * DELAY + 0.2, f"{elapsed:.3f} s"
