"""MTA-STS (RFC 8461) end to end: TXT records in a DNSSEC-signed test zone, policies from a
real HTTPS server on loopback (test CA, per-name certificates), the service's cache, and
the milter inside a real Postfix under a rule that requires authenticated TLS.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from danemilter.config.model import CacheSettings, MtaStsSettings, ResolverSettings
from danemilter.deadline import Deadline
from danemilter.mtasts import CachedPolicy, StsMode, StsPolicy, StsState, StsStatus
from danemilter.service import Service
from tests.support.dnsbed import DnssecTestBed, Zone
from tests.support.milterproc import MilterProcess
from tests.support.postfix import PrivatePostfix, SmtpSink
from tests.support.socketmap import SocketmapClient
from tests.support.sts_server import Served, StsServer

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

HEADER = "X-DANE-Status"


def policy(mode: str, *mx: str, max_age: int = 86400) -> bytes:
    lines = ["version: STSv1", f"mode: {mode}", *(f"mx: {m}" for m in mx),
             f"max_age: {max_age}"]
    return ("\r\n".join(lines) + "\r\n").encode()


def sts_domain(label: str, txt: str | None, mx_address: str,
               policy_host: str = "127.0.0.1") -> tuple[str, ...]:
    records = [f"{label} MX 10 mx.{label}", f"mx.{label} A {mx_address}",
               f"mta-sts.{label} A {policy_host}"]
    if txt is not None:
        records.append(f'_mta-sts.{label} TXT "{txt}"')
    return tuple(records)


DANE_DIGEST = hashlib.sha256(b"dane-sts").hexdigest()
ZONE = Zone("sts.test", records=(
    *sts_domain("enforce", "v=STSv1; id=e1", "127.0.0.61"),
    *sts_domain("testing", "v=STSv1; id=t1", "127.0.0.62"),
    *sts_domain("none", "v=STSv1; id=n1", "127.0.0.63"),
    *sts_domain("ctype", "v=STSv1; id=c1", "127.0.0.64"),
    *sts_domain("big", "v=STSv1; id=b1", "127.0.0.65"),
    *sts_domain("redirect", "v=STSv1; id=r1", "127.0.0.66"),
    *sts_domain("wrongname", "v=STSv1; id=w1", "127.0.0.67"),
    *sts_domain("nomatch", "v=STSv1; id=m1", "127.0.0.68"),
    *sts_domain("down", "v=STSv1; id=d1", "127.0.0.69", policy_host="127.0.0.99"),
    *sts_domain("absent", None, "127.0.0.70"),
    *sts_domain("twotxt", "v=STSv1; id=x1", "127.0.0.71"),
    '_mta-sts.twotxt TXT "v=STSv1; id=x2"',
    *sts_domain("dane-sts", "v=STSv1; id=ds1", "127.0.0.72"),
    f"_25._tcp.mx.dane-sts TLSA 3 1 1 {DANE_DIGEST}",
))


def host(label: str) -> str:
    return f"mta-sts.{label}.sts.test"


ANSWERS = {
    host("enforce"): Served(policy("enforce", "mx.enforce.sts.test")),
    host("testing"): Served(policy("testing", "mx.testing.sts.test")),
    host("none"): Served(policy("none")),
    host("ctype"): Served(policy("enforce", "*.ctype.sts.test"), content_type="text/html"),
    host("big"): Served(policy("enforce", "mx.big.sts.test") + b"x: " + b"y" * 70_000),
    host("redirect"): Served(status=301, location="https://elsewhere.test/"),
    host("wrongname"): Served(policy("enforce", "mx.wrongname.sts.test")),
    host("nomatch"): Served(policy("enforce", "*.elsewhere.test")),
    host("twotxt"): Served(policy("enforce", "mx.twotxt.sts.test")),
    host("dane-sts"): Served(policy("enforce", "*.elsewhere.test")),
}


@dataclass
class World:
    bed: DnssecTestBed
    server: StsServer

    def settings(self) -> tuple[ResolverSettings, MtaStsSettings]:
        return (ResolverSettings("127.0.0.1", self.bed.resolver_port, 1.0),
                MtaStsSettings(port=self.server.port, ca_file=str(self.server.ca_file),
                               timeout=5))

    def service(self, cache: CacheSettings | None = None) -> Service:
        resolver, sts = self.settings()
        return Service(resolver, cache or CacheSettings(backend="memory"), sts)


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    bed = DnssecTestBed([ZONE])
    bed.start()
    server = StsServer(ANSWERS, wrong_cert=frozenset({host("wrongname")}))
    server.start()
    try:
        yield World(bed, server)
    finally:
        server.stop()
        bed.stop()


def ask(service: Service, *domains: str) -> list[StsStatus]:
    async def run() -> list[StsStatus]:
        try:
            return list(await asyncio.gather(*(service.sts(d, Deadline.after(8))
                                               for d in domains)))
        finally:
            await service.aclose()
    return asyncio.run(run())


@pytest.mark.parametrize(
    ("label", "state", "reason"),
    [
        ("enforce", StsState.ENFORCE, "mode enforce"),
        ("testing", StsState.TESTING, "mode testing"),
        ("none", StsState.NONE, "mode none"),
        ("ctype", StsState.INVALID, "not text/plain"),
        ("big", StsState.INVALID, "larger than 65536"),
        ("redirect", StsState.INVALID, "redirect (not followed)"),
        ("wrongname", StsState.INVALID, "certificate not valid"),
        ("down", StsState.TEMPFAIL, "127.0.0.99"),
        ("absent", StsState.ABSENT, "no MTA-STS TXT record"),
        ("twotxt", StsState.INVALID, "2 TXT records"),
    ],
)
def test_discovery_and_fetch(world: World, label: str, state: StsState, reason: str) -> None:
    (status,) = ask(world.service(), f"{label}.sts.test")
    assert status.state is state, status
    assert reason in status.reason


def test_policy_content(world: World) -> None:
    (status,) = ask(world.service(), "enforce.sts.test")
    assert status.policy == StsPolicy(StsMode.ENFORCE, 86400, ("mx.enforce.sts.test",))
    assert status.id == "e1"


def cached(tmp_path: Path, label: str) -> CacheSettings:
    return CacheSettings(backend="sqlite", path=str(tmp_path / f"{label}.sqlite3"))


def test_a_fetched_policy_is_kept_and_not_fetched_again_for_the_same_id(
        world: World, tmp_path: Path) -> None:
    settings = cached(tmp_path, "same-id")
    before = len(world.server.requests)
    ask(world.service(settings), "testing.sts.test")
    assert len(world.server.requests) == before + 1
    (again,) = ask(world.service(settings), "testing.sts.test")  # a new daemon, same cache
    assert again.state is StsState.TESTING
    assert "unchanged" in again.reason
    assert len(world.server.requests) == before + 1


def seed(world: World, settings: CacheSettings, domain: str, policy_id: str,
         mode: StsMode = StsMode.ENFORCE) -> None:
    service = world.service(settings)
    service.sts_cache.store(domain, CachedPolicy(StsPolicy(mode, 86400, (f"mx.{domain}",)),
                                                 policy_id, time.time()))
    asyncio.run(service.aclose())


def test_a_new_txt_id_fetches_the_policy_again(world: World, tmp_path: Path) -> None:
    settings = cached(tmp_path, "id-change")
    seed(world, settings, "enforce.sts.test", "old", StsMode.TESTING)
    before = len(world.server.requests)
    (status,) = ask(world.service(settings), "enforce.sts.test")
    assert status.state is StsState.ENFORCE and status.id == "e1"
    assert len(world.server.requests) == before + 1


def test_a_cached_policy_outlives_its_txt_record_and_its_server(world: World,
                                                                tmp_path: Path) -> None:
    settings = cached(tmp_path, "outlive")
    seed(world, settings, "absent.sts.test", "gone")   # TXT record since removed
    seed(world, settings, "down.sts.test", "d0")       # new id, but the server is down
    absent, down = ask(world.service(settings), "absent.sts.test", "down.sts.test")
    assert absent.state is StsState.ENFORCE and "cached policy" in absent.reason
    assert down.state is StsState.ENFORCE and "cached policy" in down.reason


# --- through a real Postfix ---------------------------------------------------------


@pytest.fixture(scope="module")
def daemon(world: World) -> Iterator[MilterProcess]:
    resolver, sts = world.settings()
    milter = MilterProcess(
        f"resolver: {{address: 127.0.0.1, port: {resolver.port}, timeout: 1}}\n"
        f"resolver_check: off\ndeadline: 8\n"
        f"mta_sts: {{port: {sts.port}, ca_file: {sts.ca_file}}}\n"
        "policy:\n  default: {dane: try, tls: authenticated, on_fail: defer}\n")
    milter.start()
    try:
        yield milter
    finally:
        milter.stop()


@pytest.fixture(scope="module")
def postfix_stack(daemon: MilterProcess) -> Iterator[tuple[PrivatePostfix, SmtpSink]]:
    sink = SmtpSink()
    sink.start()
    postfix = PrivatePostfix(daemon.postfix_address, sink.port)
    try:
        postfix.start()
        yield postfix, sink
    finally:
        postfix.stop()
        sink.stop()


@pytest.mark.parametrize(
    ("label", "answer"),
    [
        ("enforce", "OK secure match=mx.enforce.sts.test servername=hostname"),
        ("dane-sts", "OK dane-only"),    # DANE decides alone
        ("testing", "OK dane-only"),     # the rule promised authenticated TLS: no weaker
        ("absent", "OK dane-only"),
        ("down", "TEMP"),
    ],
)
def test_delivery_policy_for_mta_sts_domains(daemon: MilterProcess, label: str,
                                             answer: str) -> None:
    with SocketmapClient(daemon.root / "policy.sock") as client:
        got = client.query(f"{label}.sts.test")
    assert got.startswith(answer), got


def test_authenticated_rule_through_postfix(postfix_stack: tuple[PrivatePostfix, SmtpSink]
                                            ) -> None:
    postfix, sink = postfix_stack
    marker = f"<sts.{time.monotonic_ns()}@client.test>"
    recipients = ["a@dane-sts.sts.test", "b@enforce.sts.test", "c@testing.sts.test",
                  "d@absent.sts.test", "e@nomatch.sts.test"]
    message = (f"Message-ID: {marker}\nFrom: alice@client.test\nTo: x@sts.test\n"
               "Subject: sts\n\nhello\n")
    sub = postfix.submit(recipients, message)
    codes = [(r.code, r.text) for r in sub.replies]
    # DANE decides alone for a DANE domain, even though its MTA-STS policy names no MX
    # of it (RFC 8461 §2); an enforce policy matching the MX satisfies the rule.
    assert codes[0][0] == 250 and codes[1][0] == 250, codes
    for (code, text), domain, why in ((codes[2], "testing.sts.test", "MTA-STS is testing"),
                                      (codes[3], "absent.sts.test", "MTA-STS is absent"),
                                      (codes[4], "nomatch.sts.test", "no MX host matches")):
        assert code == 450, codes
        assert text.startswith("4.7.4") and domain in text and why in text, text
    delivered = sink.wait_for_message(marker)
    # Unfolding (RFC 5322 §2.2.3) gives back the value the milter folded.
    headers = sorted(str(h).replace("\r\n", "").replace("\n", "")
                     for h in delivered.get_all(HEADER))
    assert headers == [
        "dane-sts.sts.test; status=dane; usage=8; ocsp=off; action=accept",
        "enforce.sts.test; status=none; usage=0; ocsp=off; sts=enforce; action=accept",
    ], headers


def test_verify_json_shows_the_mta_sts_verdict_of_every_fixture(world: World,
                                                                tmp_path: Path) -> None:
    resolver, sts = world.settings()
    config = tmp_path / "danemilter.yaml"
    config.write_text(f"resolver: {{address: 127.0.0.1, port: {resolver.port}}}\n"
                      f"mta_sts: {{port: {sts.port}, ca_file: {sts.ca_file}}}\n")
    expected = {"enforce": "enforce", "testing": "testing", "none": "none",
                "ctype": "invalid", "wrongname": "invalid", "down": "tempfail",
                "absent": "absent", "dane-sts": None}
    result = subprocess.run(
        [sys.executable, "-m", "danemilter", "verify", "--dns-only", "--json", "--no-cache",
         "--config", str(config), *(f"{label}.sts.test" for label in expected)],
        capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    got = {doc["domain"].split(".")[0]: (doc["sts"] or {}).get("state")
           for doc in json.loads(result.stdout)}
    assert got == expected


def test_cache_purge_forgets_a_domains_mta_sts_policy(world: World, tmp_path: Path) -> None:
    settings = cached(tmp_path, "purge")
    seed(world, settings, "enforce.sts.test", "e1")
    config = tmp_path / "danemilter.yaml"
    config.write_text(f"cache: {{backend: sqlite, path: {settings.path}}}\n")
    result = subprocess.run([sys.executable, "-m", "danemilter", "cache", "purge",
                             "enforce.sts.test", "--config", str(config)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    service = world.service(settings)
    try:
        assert service.sts_cache.policy("enforce.sts.test", time.time()) is None
    finally:
        asyncio.run(service.aclose())
