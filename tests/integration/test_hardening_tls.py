"""Issue 16 item 3: a TLS handshake that trickles is bounded by the probe's deadline.

A real STARTTLS server sends its genuine handshake one octet per second (well over a
thousand octets). A probe, ``danemilter verify --timeout``, and a RCPT under an
``inline`` probe rule must each end by their deadline, not by the server's pace.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from danemilter.probe import probe_host
from danemilter.status import HostState, HostStatus
from tests.support.dnsbed import DnssecTestBed
from tests.support.hostile_zones import DANE_DOMAIN, zones
from tests.support.milterproc import MilterProcess
from tests.support.pki import make_ca, make_leaf
from tests.support.ports import free_port
from tests.support.postfix import PrivatePostfix, SmtpSink
from tests.support.trickle import TricklingTlsServer

pytestmark = [pytest.mark.integration]

MX_ADDRESS = "127.0.0.61"  # mx.d.dane.test in hostile_zones


@pytest.fixture(scope="module")
def trickle() -> Iterator[TricklingTlsServer]:
    leaf = make_leaf(make_ca("Trickle CA"), ["mx.d.dane.test"])
    with TricklingTlsServer(MX_ADDRESS, free_port(MX_ADDRESS), leaf=leaf.cert,
                            key=leaf.key) as server:
        yield server


@pytest.fixture(scope="module")
def bed() -> Iterator[DnssecTestBed]:
    with DnssecTestBed(zones(many_mx=0)) as running:
        yield running


@pytest.mark.timeout(30)
def test_a_probe_ends_by_its_timeout(trickle: TricklingTlsServer) -> None:
    host = HostStatus("mx.d.dane.test", 10, (MX_ADDRESS,), True, HostState.NONE, None, (),
                      "test", 60)
    began = time.monotonic()
    result = probe_host(host, MX_ADDRESS, port=trickle.port, names=["mx.d.dane.test"],
                        request_staple=True, timeout=2.0, now=datetime.now(UTC),
                        helo="probe.client.test", allow_private=True)
    elapsed = time.monotonic() - began
    assert result.failed_at == "handshake", result
    assert "timed out" in result.reason
    assert elapsed < 2.5, elapsed


def _verify(bed: DnssecTestBed, port: int, *extra: str) -> tuple[float, str]:
    began = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "danemilter", "verify", DANE_DOMAIN, "--no-cache",
         "--resolver", f"127.0.0.1:{bed.resolver_port}", "--port", str(port),
         "--allow-private", "--timeout", "5", "--json", *extra],
        check=False, capture_output=True, text=True, timeout=35)
    assert "Traceback" not in done.stderr, done.stderr
    return time.monotonic() - began, done.stdout


@pytest.mark.timeout(60)
def test_verify_timeout_bounds_the_handshake(trickle: TricklingTlsServer,
                                             bed: DnssecTestBed) -> None:
    # --timeout bounds the DNS part and each probe: the probe may add 5 s, no more.
    dns_only, _ = _verify(bed, trickle.port, "--dns-only")
    elapsed, out = _verify(bed, trickle.port)
    assert elapsed - dns_only < 6.0, (elapsed, dns_only, out)
    assert "timed out in the TLS handshake" in out, out


@pytest.mark.timeout(60)
def test_rcpt_is_answered_by_its_deadline(trickle: TricklingTlsServer,
                                          bed: DnssecTestBed) -> None:
    sink = SmtpSink()
    sink.start()
    milter = MilterProcess(
        f"resolver: {{address: 127.0.0.1, port: {bed.resolver_port}, timeout: 1}}\n"
        f"deadline: 3\nprobe: {{port: {trickle.port}, allow_private: true, timeout: 20}}\n"
        "policy:\n  default: {dane: require, probe: inline, on_fail: defer}\n")
    postfix = PrivatePostfix(milter.postfix_address, sink.port)
    try:
        milter.start()
        postfix.start()
        began = time.monotonic()
        sub = postfix.submit([f"u@{DANE_DOMAIN}"], "Subject: x\n\nhello\n")
        elapsed = time.monotonic() - began
        assert elapsed < 4.5, (elapsed, sub.replies)
        # A probe that never completes is no evidence against the TLSA records: the
        # DNS status decides (dane), within the deadline.
        assert [r.code for r in sub.replies] == [250], sub.replies
        assert trickle.handshakes_started > 0
    finally:
        postfix.stop()
        milter.stop()
        sink.stop()
