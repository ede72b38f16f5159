"""Prometheus metrics of a real ``danemilter run`` behind a real Postfix, scraped over
HTTP after real decisions over the DNSSEC bed."""

from __future__ import annotations

import smtplib
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.dnsbed import DnssecTestBed
from tests.support.mailstack import mail_stack
from tests.support.milterproc import MilterProcess
from tests.support.ports import free_port
from tests.support.postfix import PrivatePostfix, wait_for
from tests.support.probe_world import Host, Pki, Server, Site, World, retry_port, spki_sha256

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]


@dataclass
class Stack:
    milter: MilterProcess
    postfix: PrivatePostfix
    port: int

    def scrape(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as r:
            assert r.status == 200
            text = r.read().decode()
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(text) for s in family.samples}


@pytest.fixture(scope="module")
def stack(dns_bed: DnssecTestBed) -> Iterator[Stack]:
    port = free_port()
    with mail_stack(
            # The default timeouts: a loaded machine must not turn a verdict into tempfail.
            f"resolver: {{address: 127.0.0.1, port: {dns_bed.resolver_port}}}\n"
            "resolver_check: {mode: refuse, signed_name: test.}\n"
            f"metrics: {{listen: 127.0.0.1:{port}}}\n"
            "policy:\n  default: {dane: try}\n  domains:\n"
            "    .insecure.test: {dane: require, on_fail: defer}\n"
            "    ta.secure.test: {dane: try, probe: cached}\n", log_level="info") as mail:
        yield Stack(mail.milter, mail.postfix, port)


def _labels(**labels: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(labels.items()))


def test_counters_after_real_decisions(stack: Stack) -> None:
    before = stack.scrape()
    assert before[("danemilter_resolver_validating", ())] == 1
    assert before[("danemilter_resolver_checks_total", _labels(state="validating"))] >= 1
    for rcpts in (["a@ee.secure.test", "b@plain.insecure.test", "c@ta.secure.test"],
                  ["d@ee.secure.test", "e@nowhere.secure.test"]):
        stack.postfix.submit(rcpts, "Subject: metrics\n\nhello\n")
    after = stack.scrape()

    def grew(name: str, **labels: str) -> float:
        key = (name, _labels(**labels))
        return after.get(key, 0) - before.get(key, 0)

    seen = {k[1]: v for k, v in after.items() if k[0] == "danemilter_decisions_total"}
    assert grew("danemilter_decisions_total", action="accept", status="dane") == 3, seen

    assert grew("danemilter_decisions_total", action="accept", status="dane") == 3
    assert grew("danemilter_decisions_total", action="defer", status="none") == 1
    # DESIGN.md: a nonexistent domain is refused where the rule refuses; try only tags.
    assert grew("danemilter_decisions_total", action="tag", status="nxdomain") == 1, seen
    # Four domains missed the LRU once each (cold); ee.secure.test hit it the second time.
    assert grew("danemilter_cache_lookups_total", layer="lru", result="hit") >= 1
    assert grew("danemilter_cache_lookups_total", layer="backend", result="miss") == 4
    assert grew("danemilter_lookup_seconds_count") == 4
    assert grew("danemilter_lookup_seconds_bucket", le="+Inf") == 4
    assert after[("danemilter_lookup_seconds_sum", ())] > 0
    # ta.secure.test's rule uses cached probes: nothing there yet, one probe-cache miss.
    assert grew("danemilter_cache_lookups_total", layer="probe", result="miss") == 1


def test_open_connections_and_protocol_errors(stack: Stack) -> None:
    before = stack.scrape()
    with smtplib.SMTP("127.0.0.1", stack.postfix.port, timeout=20) as client:
        client.ehlo("client.test")
        client.mail("alice@client.test")
        client.rcpt("f@ee.secure.test")  # smtpd has its milter connection open now
        assert stack.scrape()[("danemilter_milter_connections_open", ())] >= 1
    wait_for(lambda: stack.scrape()[("danemilter_milter_connections_open", ())] == 0, 10,
             "the milter connection closed with the SMTP session")
    # A peer that no real MTA imitates: a packet length past limits.max_packet.
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as bad:
        bad.connect(str(stack.milter.socket))
        bad.sendall(b"\xff\xff\xff\xffO")
        bad.settimeout(5)
        assert bad.recv(1) == b""  # closed on us
    after = stack.scrape()
    assert (after[("danemilter_milter_protocol_errors_total", ())]
            - before[("danemilter_milter_protocol_errors_total", ())]) == 1


def test_policy_socket_queries_are_counted(stack: Stack) -> None:
    before = stack.scrape().get(("danemilter_policy_queries_total",
                                 _labels(protocol="socketmap")), 0)
    query = b"dane ee.secure.test"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(10)
        client.connect(str(stack.milter.root / "policy.sock"))  # beside the milter's
        client.sendall(b"%d:%s," % (len(query), query))
        assert client.recv(100).endswith(b":OK dane-only,")
    after = stack.scrape()[("danemilter_policy_queries_total", _labels(protocol="socketmap"))]
    assert after - before == 1


def test_many_warm_decisions_are_all_counted(stack: Stack) -> None:
    # Warm-cache decisions (no await on the RCPT path) are counted one by one.
    stack.postfix.submit(["g@ee.secure.test"], "Subject: warm\n\nhello\n")
    rcpts = [f"u{i}@ee.secure.test" for i in range(50)]
    began = time.monotonic()
    stack.postfix.submit(rcpts, "Subject: warm\n\nhello\n")
    assert time.monotonic() - began < 5
    assert stack.scrape()[("danemilter_decisions_total",
                           _labels(action="accept", status="dane"))] >= 51


PROBE_ZONE = "pmet.test"


def _probe_sites() -> list[Site]:
    p = Pki()

    def ee_site(label: str, *, matching: bool) -> Site:
        cert = p.ee([f"mx.{label}.{PROBE_ZONE}"])
        other = p.ee(["someone-else.example"])
        digest = spki_sha256(cert.cert if matching else other.cert)
        return Site(label, [Host(f"mx.{label}", Server([cert.cert], cert.key),
                                 (f"3 1 1 {digest}",))])

    return [ee_site("good", matching=True), ee_site("mismatch", matching=False)]


def test_inline_probes_are_timed_and_counted_by_outcome() -> None:
    for world in retry_port(lambda: World(_probe_sites(), zone=PROBE_ZONE,
                                          network="127.0.9")):
        assert world.bed is not None
        port = free_port()
        with mail_stack(
                f"resolver: {{address: 127.0.0.1, port: {world.bed.resolver_port}, "
                "timeout: 1}\nresolver_check: {signed_name: test.}\ndeadline: 8\n"
                f"metrics: {{listen: 127.0.0.1:{port}}}\n"
                f"probe: {{port: {world.port}, timeout: 3, allow_private: true}}\n"
                "policy:\n  default: {dane: try, probe: inline, on_fail: defer}\n",
                log_level="info") as mail:
            sub = mail.postfix.submit([f"a@good.{PROBE_ZONE}", f"b@mismatch.{PROBE_ZONE}"],
                                      "Subject: probes\n\nhello\n")
            assert [r.code for r in sub.replies] == [250, 450]
            got = Stack(mail.milter, mail.postfix, port).scrape()
    assert got[("danemilter_probes_total", _labels(outcome="verified"))] == 1
    assert got[("danemilter_probes_total", _labels(outcome="mismatch"))] == 1
    assert got[("danemilter_probe_seconds_count", ())] == 2
    assert 0 < got[("danemilter_probe_seconds_sum", ())] < 8
    assert got[("danemilter_decisions_total",
                _labels(action="defer", status="dane-mismatch"))] == 1
    assert got[("danemilter_cache_lookups_total", _labels(layer="probe", result="miss"))] == 2


def test_a_port_in_use_is_a_one_line_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        config = tmp_path / "danemilter.yaml"
        config.write_text(f"listen: inet:{free_port()}@127.0.0.1\nresolver_check: off\n"
                          f"metrics: {{listen: 127.0.0.1:{port}}}\n")
        result = subprocess.run([sys.executable, "-m", "danemilter", "run", "--config",
                                 str(config)], capture_output=True, text=True, timeout=30,
                                check=False)
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert f"metrics: cannot listen on 127.0.0.1:{port}" in line
