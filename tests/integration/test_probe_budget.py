"""An inline probe ends within what is left of the recipient's deadline, in total, and
probes run in one pool for the whole process (issue 11).

The MX addresses are real sockets on loopback that accept and never say a word (a
server that stalls before its banner): every probe of them can only end by a deadline.
"""

from __future__ import annotations

import asyncio
import select
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from danemilter.config.model import (
    CacheSettings,
    DaneMode,
    ProbeMode,
    ProbeSettings,
    ResolverSettings,
    Rule,
)
from danemilter.deadline import Deadline
from danemilter.probe_result import DomainProbe
from danemilter.service import Service
from danemilter.status import DomainState, DomainStatus, HostState, HostStatus
from danemilter.tlsa import TLSARecord
from tests.support.ports import free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

# Slack for the loop, the thread pool and a loaded 2-core machine.
SLACK = 0.35


class SilentServers:
    """Listeners on 127.0.7.1..N, one port, that accept and never send anything; counts
    the connections open at once."""

    def __init__(self, count: int) -> None:
        self.port = free_port()
        self.addresses = [f"127.0.7.{n}" for n in range(1, count + 1)]
        self.listeners = []
        for address in self.addresses:
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((address, self.port))
            listener.listen(128)
            listener.setblocking(False)
            self.listeners.append(listener)
        self.accepted: list[socket.socket] = []
        self.lock = threading.Lock()
        self.most_at_once = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select(self.listeners, [], [], 0.01)
            for listener in ready:
                try:
                    conn, _ = listener.accept()
                except OSError:
                    continue
                with self.lock:
                    self.accepted.append(conn)
            with self.lock:
                self._count_open()

    def _count_open(self) -> None:
        still = []
        for conn in self.accepted:
            conn.setblocking(False)
            try:
                closed = conn.recv(1, socket.MSG_PEEK) == b""
            except BlockingIOError:
                closed = False
            except OSError:
                closed = True
            if closed:
                conn.close()
            else:
                still.append(conn)
        self.accepted = still
        self.most_at_once = max(self.most_at_once, len(still))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for sock in self.listeners + self.accepted:
            sock.close()


@pytest.fixture
def silent() -> Iterator[SilentServers]:
    servers = SilentServers(40)
    try:
        yield servers
    finally:
        servers.close()


def dane_status(domain: str, addresses: list[str]) -> DomainStatus:
    record = TLSARecord(3, 1, 1, bytes(32))
    host = HostStatus(f"mx.{domain}", 10, tuple(addresses), True, HostState.DANE,
                      f"mx.{domain}", (record,), "usable secure TLSA", 300)
    return DomainStatus(domain, DomainState.DANE, 8, True, (host,), "test", 300)


def probe(statuses: list[DomainStatus], port: int, concurrency: int, budget: float
          ) -> tuple[list[DomainProbe | None], float]:
    rule = Rule(DaneMode.REQUIRE, probe=ProbeMode.INLINE)
    settings = ProbeSettings(port=port, timeout=10, concurrency=concurrency,
                             allow_private=True, cache_ttl=0)

    async def run() -> tuple[list[DomainProbe | None], float]:
        service = Service(ResolverSettings(), CacheSettings(backend="memory"))
        try:
            started = time.monotonic()
            deadline = Deadline.after(budget)
            results = await asyncio.gather(*(service.probe(s, rule, settings, deadline)
                                             for s in statuses))
            return list(results), time.monotonic() - started
        finally:
            await service.aclose()

    return asyncio.run(run())


@pytest.mark.parametrize("concurrency", [1, 4, 16, 64])
def test_many_silent_addresses_end_within_the_budget(silent: SilentServers,
                                                     concurrency: int) -> None:
    budget = 0.5
    (result,), elapsed = probe([dane_status("silent.test", silent.addresses)], silent.port,
                               concurrency, budget)
    assert elapsed < budget + SLACK, f"{elapsed:.3f} s for a {budget} s budget"
    assert result is not None
    (host_results,) = result.probes
    assert len(host_results) == len(silent.addresses)
    # Nothing verified, nothing judged a mismatch: a probe that never got a banner says
    # nothing about the certificate, so the DNS verdict stands.
    assert all(r.dane == "failed" and r.failed_at is not None for r in host_results)
    assert result.status.status is DomainState.DANE


def test_the_pool_bounds_probes_for_the_whole_process(silent: SilentServers) -> None:
    # Two domains probed at once, 20 addresses each, under a limit of 3 for the process.
    first = dane_status("one.test", silent.addresses[:20])
    second = dane_status("two.test", silent.addresses[20:])
    results, elapsed = probe([first, second], silent.port, 3, 1.0)
    assert elapsed < 1.0 + SLACK
    assert all(r is not None for r in results)
    assert 1 <= silent.most_at_once <= 3, silent.most_at_once
