"""Probe results in the milter's decisions and in the shared cache, end to end.

A private Postfix asks ``danemilter run``; the recipient domains' MX hosts are real
STARTTLS servers (tests/support/probe_world.py) behind the DNSSEC test bed. Rules with
``probe: inline`` probe at RCPT time; ``probe: cached`` rules use only what is in the
shared cache, which ``danemilter verify --config`` (the same file, the same SQLite
cache) fills. ``verify`` itself reads the cache, and ``--fresh`` ignores it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import count
from typing import Any

import pytest

from danemilter.cli import main
from tests.support.milterproc import MilterProcess
from tests.support.postfix import PrivatePostfix, SmtpSink
from tests.support.probe_world import Host, Pki, Server, Site, World, retry_port, spki_sha256

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

ZONE = "pdec.test"
HEADER = "X-DANE-Status"
_ids = count(1)


def _sites() -> list[Site]:
    p = Pki()

    def ee_site(label: str, *, matching: bool) -> Site:
        cert = p.ee([f"mx.{label}.{ZONE}"])
        other = p.ee(["someone-else.example"])
        digest = spki_sha256(cert.cert if matching else other.cert)
        return Site(label, [Host(f"mx.{label}", Server([cert.cert], cert.key),
                                 (f"3 1 1 {digest}",))])

    revoked_leaf = p.ta_leaf([f"mx.revoked.{ZONE}"], ocsp_url="http://ocsp.pdec.test/")
    revoked = Site("revoked", [Host("mx.revoked", Server(
        [revoked_leaf.cert, p.ca.cert], revoked_leaf.key,
        staple=p.staple(revoked_leaf.cert, "revoked")), (p.ta_record(),))])
    # DANE-TA whose certificate names only the next-hop domain's CNAME target: it is
    # reached as alias.pdec.test (ALIAS_RECORDS), whose secure MX lookup follows a CNAME.
    target_leaf = p.ta_leaf([f"target.{ZONE}"])
    target = Site("target", [Host("mx.target", Server([target_leaf.cert, p.ca.cert],
                                                       target_leaf.key), (p.ta_record(),))])
    return [ee_site("good", matching=True), ee_site("mismatch", matching=False),
            ee_site("later", matching=False), ee_site("flaky", matching=True), revoked,
            target, ee_site("busy", matching=False)]


ALIAS_RECORDS = ("alias CNAME target",)


@dataclass
class Stack:
    world: World
    milter: MilterProcess
    postfix: PrivatePostfix
    sink: SmtpSink

    def server(self, label: str) -> Any:
        site = next(s for s in self.world.sites if s.label == label)
        return self.world.servers[site.hosts[0].address]

    def verify(self, *args: str, capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
        code = main(["verify", *args, "--json", "--timeout", "3",
                     "--config", str(self.milter.config_path)])
        out = capsys.readouterr().out
        assert code == 0, out
        return json.loads(out)  # type: ignore[no-any-return]


def _policy(world: World) -> str:
    assert world.bed is not None
    return (f"resolver: {{address: 127.0.0.1, port: {world.bed.resolver_port}, timeout: 1}}\n"
            f"deadline: 8\n"
            f"probe: {{port: {world.port}, timeout: 3, allow_private: true, cache_ttl: 600}}\n"
            f"policy:\n"
            f"  default: {{dane: try, probe: inline, on_fail: defer}}\n"
            f"  domains:\n"
            f"    later.{ZONE}: {{probe: cached}}\n"
            f"    revoked.{ZONE}: {{ocsp: require}}\n")


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    for world in retry_port(lambda: World(_sites(), zone=ZONE, network="127.0.6",
                                             extra_records=ALIAS_RECORDS)):
        sink = SmtpSink()
        sink.start()
        milter = MilterProcess(_policy(world))
        milter.start()
        postfix = PrivatePostfix(milter.postfix_address, sink.port)
        try:
            postfix.start()
            yield Stack(world, milter, postfix, sink)
        finally:
            postfix.stop()
            code = milter.stop()
            sink.stop()
        assert code == 0, "the milter must exit cleanly on SIGTERM"


def message(marker: str) -> str:
    return (f"Message-ID: {marker}\nFrom: alice@client.test\nTo: x@{ZONE}\n"
            f"Subject: probe decisions\n\nhello\n")


def new_marker() -> str:
    return f"<p{next(_ids)}.{time.monotonic_ns()}@client.test>"


def test_inline_probes_defer_a_mismatch_and_a_revoked_staple(stack: Stack) -> None:
    marker = new_marker()
    sub = stack.postfix.submit([f"a@good.{ZONE}", f"b@mismatch.{ZONE}", f"c@revoked.{ZONE}",
                                f"d@mismatch.{ZONE}"], message(marker))
    got = [(r.code, r.text) for r in sub.replies]
    assert got[0][0] == 250
    assert got[1][0] == 450
    assert got[1][1].startswith("4.7.5")
    assert f"mismatch.{ZONE}" in got[1][1] and "TLSA" in got[1][1]
    assert got[2][0] == 450
    assert got[2][1].startswith("4.7.5")
    assert "revoked OCSP response" in got[2][1]
    assert got[3][0] == 450
    delivered = stack.sink.wait_for_message(marker)
    assert delivered.get_all(HEADER) == [f"good.{ZONE}; status=dane; usage=8; ocsp=off; "
                                         "action=accept"]
    # The second recipient of the mismatching domain was answered from the cached probe.
    assert stack.server("mismatch").connections == 1
    assert stack.server("revoked").staple_requests == 1


def test_cached_rule_uses_what_verify_left_in_the_shared_cache(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    before = stack.postfix.submit([f"a@later.{ZONE}"], message(new_marker()))
    assert [r.code for r in before.replies] == [250], "no probe result yet: DNS says dane"
    assert stack.server("later").connections == 0, "a cached rule never probes"

    [report] = stack.verify(f"later.{ZONE}", capsys=capsys)
    assert report["status"] == "dane-mismatch"
    assert stack.server("later").connections == 1

    after = stack.postfix.submit([f"a@later.{ZONE}"], message(new_marker()))
    [reply] = after.replies
    assert (reply.code, reply.text[:5]) == (450, "4.7.5")
    assert stack.server("later").connections == 1

    # What the milter decided on is what `cache show` shows.
    assert main(["cache", "show", f"later.{ZONE}", "--json", "--config",
                 str(stack.milter.config_path)]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["status"]["status"] == "dane"  # the DNS status; the probe adds the mismatch
    probes = shown["probes"]
    assert (probes["port"], probes["ocsp"], probes["current"]) == (stack.world.port, "auto", True)
    assert [p["dane"] for host in probes["hosts"] for p in host] == ["mismatch"]
    assert main(["cache", "show", f"later.{ZONE}", "--config",
                 str(stack.milter.config_path)]) == 0
    text = capsys.readouterr().out
    assert f"TLS probes, port {stack.world.port}, staples auto, PKIX trust system: cached" \
        in text
    assert "DANE MISMATCH" in text


def test_verify_reads_the_cache_and_fresh_ignores_it(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    domain = f"flaky.{ZONE}"
    [first] = stack.verify(domain, capsys=capsys)
    assert first["hosts"][0]["probes"][0]["dane"] == "verified"
    server = stack.server("flaky")
    assert server.connections == 1
    server.stop()

    [cached] = stack.verify(domain, capsys=capsys)
    assert cached["hosts"][0]["probes"][0]["dane"] == "verified"

    [fresh] = stack.verify(domain, "--fresh", capsys=capsys)
    probe = fresh["hosts"][0]["probes"][0]
    assert (probe["dane"], probe["failed_at"]) == ("failed", "connect")
    # What --fresh learned replaced the entry (for the short failure lifetime).
    [again] = stack.verify(domain, capsys=capsys)
    assert again["hosts"][0]["probes"][0]["failed_at"] == "connect"


def test_verify_with_another_resolver_bypasses_the_cache(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    # Another resolver's answers are not the milter's: a dead one gives tempfail although
    # the shared cache holds this domain from the earlier tests.
    code = main(["verify", f"good.{ZONE}", "--json", "--timeout", "3", "--config",
                 str(stack.milter.config_path), "--resolver", "127.0.0.2:1"])
    out = capsys.readouterr().out
    assert code == 0
    [report] = json.loads(out)
    assert report["status"] == "tempfail"


def test_dane_ta_name_may_be_the_next_hop_domains_cname_target(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    # RFC 7672 §3.2.3: with a secure MX lookup, the next-hop domain and its CNAME
    # expansion are both reference identifiers.
    [report] = stack.verify(f"alias.{ZONE}", "--no-cache", capsys=capsys)
    assert (report["status"], report["canonical"]) == ("dane", f"target.{ZONE}")
    probe = report["hosts"][0]["probes"][0]
    assert (probe["dane"], probe["depth"]) == ("verified", 1), probe["reason"]
    sub = stack.postfix.submit([f"a@alias.{ZONE}"], message(new_marker()))
    assert [r.code for r in sub.replies] == [250]


def test_concurrent_sessions_share_one_probe(stack: Stack) -> None:
    def submit(n: int) -> int:
        sub = stack.postfix.submit([f"r{n}@busy.{ZONE}"], message(new_marker()))
        return sub.replies[0].code

    with ThreadPoolExecutor(max_workers=6) as pool:
        codes = list(pool.map(submit, range(6)))
    assert codes == [450] * 6
    assert stack.server("busy").connections == 1
