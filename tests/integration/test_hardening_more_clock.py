"""Issue 16 item 5, end to end: a wall clock stepped back a day does not stretch what a
running ``danemilter run`` believes.

The daemon runs under libfaketime (Debian's ``faketime``) with its wall clock read from
a file and the monotonic clock left alone, as an NTP step or an operator's ``date -s``
leaves it. Its resolver is a counting relay in front of the bed's unbound, so every DNS
query the daemon makes is seen. A ``dane`` status is cached; the wall clock goes back
one day; the daemon must ask DNS again once the entry's lifetime (on the monotonic
clock) has passed, not a day later. The shared SQLite cache is part of the path: after
the in-process entry lapses, the backend's entry (written "a day in the future" as the
stepped clock sees it) must not be believed either.
"""

from __future__ import annotations

import glob
import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import dns.exception
import dns.message
import pytest

from danemilter.milter import protocol as p
from tests.support.dnsbed import DnssecTestBed
from tests.support.dnsrelay import DnsRelay
from tests.support.milterproc import MilterProcess
from tests.support.mtaclient import MtaClient
from tests.support.ports import free_port
from tests.support.postfix import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

DOMAIN = "ee.secure.test"
CONTINUE = p.Response(b"c", b"")
DAY = 86_400
# unbound's cache-max-ttl in the bed is 10 s, so the daemon's TTLs are at most that;
# min_ttl 5 keeps its lifetime about the DNS one instead of the 60 s default.
LIFETIME_BOUND = 10


def _libfaketime() -> str:
    found = glob.glob("/usr/lib/*/faketime/libfaketime.so.1")
    assert found, "libfaketime missing: scripts/install-system-deps installs faketime"
    return found[0]


class CountingRelay(DnsRelay):
    """The relay, counting the UDP questions asked for names at or below ``DOMAIN``."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        super().__init__("127.0.0.1", upstream, port=free_port())
        self.asked = 0
        self._count_lock = threading.Lock()

    def _udp_one(self, query: bytes, client: tuple[str, int]) -> None:
        try:
            name = dns.message.from_wire(query).question[0].name.to_text().lower()
        except (dns.exception.DNSException, IndexError):
            name = ""  # not a question of ours: passed on uncounted
        if name.rstrip(".").endswith(DOMAIN):
            with self._count_lock:
                self.asked += 1
        super()._udp_one(query, client)


class SteppedMilter(MilterProcess):
    """``danemilter run`` whose wall clock is ``clock_file``'s offset (libfaketime)."""

    def __init__(self, config: str, resolver_port: int) -> None:
        self.resolver_port = resolver_port
        super().__init__(config)
        self.clock_file = self.root / "clock"
        self.step("+0")

    def write_config(self, text: str) -> None:
        self.config_path.write_text(
            f"listen: {self.listen}\nsocket_mode: \"0666\"\nlog_level: debug\n"
            "resolver_check: off\n"
            f"resolver: {{address: 127.0.0.1, port: {self.resolver_port}, timeout: 3}}\n"
            f"cache: {{backend: sqlite, path: {self.cache_path}, min_ttl: 5, "
            "refresh_ahead: 0}\n" + text)

    def step(self, offset: str) -> None:
        tmp = self.clock_file.with_suffix(".tmp")
        tmp.write_text(offset + "\n")
        os.replace(tmp, self.clock_file)

    def start(self) -> None:
        env = {**os.environ, "LD_PRELOAD": _libfaketime(),
               "FAKETIME_TIMESTAMP_FILE": str(self.clock_file),
               # Read the file on every call: the step takes effect at once.
               "FAKETIME_NO_CACHE": "1",
               # A clock step moves CLOCK_REALTIME only.
               "FAKETIME_DONT_FAKE_MONOTONIC": "1"}
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "danemilter", "run", "--config", str(self.config_path)],
                stdout=log, stderr=log, env=env)
        wait_for(self._accepting, 20, "the milter socket")


@pytest.fixture
def stepped(dns_bed: DnssecTestBed) -> Iterator[tuple[SteppedMilter, CountingRelay]]:
    relay = CountingRelay((dns_bed.resolver_address, dns_bed.resolver_port))
    relay.start()
    milter = SteppedMilter("policy:\n  default: {dane: require, on_fail: defer}\n",
                           relay.port)
    try:
        milter.start()
        yield milter, relay
    finally:
        milter.stop()
        relay.stop()


def _accepted(milter: MilterProcess) -> bool:
    """One RCPT to DOMAIN in a fresh milter session: True when it is accepted."""
    with MtaClient(milter.listen, timeout=10) as mta:
        mta.negotiate()
        mta.send(p.Connect("client.test", "4", 25, "192.0.2.1"),
                 p.Mail("<a@client.test>", ()), p.Rcpt(f"<u@{DOMAIN}>", ()))
        (answer,) = mta.read()
        mta.send(p.Quit())
    return answer == CONTINUE


def _stored_expiry(milter: MilterProcess) -> float:
    with sqlite3.connect(f"file:{milter.cache_path}?mode=ro", uri=True) as conn:
        row = conn.execute("SELECT expires_at FROM entries WHERE key = ?",
                           (f"status:{DOMAIN}",)).fetchone()
    assert row is not None
    return float(row[0])


def test_a_clock_stepped_back_a_day_does_not_keep_a_status_for_the_day(
        stepped: tuple[SteppedMilter, CountingRelay]) -> None:
    milter, relay = stepped
    assert _accepted(milter), milter.log()[-3000:]
    looked_up = time.monotonic()
    first = relay.asked
    assert first > 0, "the daemon did not ask the relay"
    assert _accepted(milter)
    assert relay.asked == first, "a fresh status was not taken from the cache"
    assert abs(_stored_expiry(milter) - time.time()) <= LIFETIME_BOUND + 1

    milter.step(f"-{DAY}")
    # Until the lifetime has passed, believing the cached status is right; after it,
    # the daemon must ask DNS again (the stepped wall clock alone would say it has a
    # day left, in the process and in the SQLite file alike).
    wait_for(lambda: _accepted(milter) and relay.asked > first, LIFETIME_BOUND + 15,
             f"a new DNS lookup of {DOMAIN} after the clock step", interval=0.25)
    requeried_after = time.monotonic() - looked_up
    print(f"first lookup: {first} queries; asked again {requeried_after:.1f} s after it, "
          f"with the wall clock a day back")
    assert requeried_after <= LIFETIME_BOUND + 2, requeried_after
    # The daemon saw the step: what it stored after it expires "a day ago".
    assert _stored_expiry(milter) < time.time() - DAY + LIFETIME_BOUND + 1
    # And the new entry is believed as usual under the stepped clock.
    again = relay.asked
    assert _accepted(milter)
    assert relay.asked == again
    assert "Traceback" not in milter.log()
