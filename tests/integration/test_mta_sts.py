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
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from danemilter.config.model import (
    CacheSettings,
    DaneMode,
    FailAction,
    MtaStsSettings,
    ProbeMode,
    ProbeSettings,
    ResolverSettings,
    Rule,
    Settings,
    TlsRequirement,
)
from danemilter.deadline import Deadline
from danemilter.judge import PkixVerdict
from danemilter.mtasts import CachedPolicy, StsMode, StsPolicy, StsState, StsStatus
from danemilter.policy import Decision
from danemilter.probe import probe_host
from danemilter.service import Service
from danemilter.status import HostState, HostStatus
from tests.support.dnsbed import DnssecTestBed, Zone
from tests.support.milterproc import MilterProcess
from tests.support.pki import make_ca, make_leaf
from tests.support.ports import free_port
from tests.support.postfix import PrivatePostfix, SmtpSink
from tests.support.socketmap import SocketmapClient
from tests.support.sts_server import Served, StsServer
from tests.support.tlsserver import SmtpTlsServer

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
    # Enforce-mode domains whose MX hosts really answer (MX_SERVERS): their certificates
    # are judged by PKIX under probe rules (RFC 8461 §4.2).
    *sts_domain("good.pkix", "v=STSv1; id=pg1", "127.0.0.73"),
    *sts_domain("name.pkix", "v=STSv1; id=pn1", "127.0.0.74"),
    *sts_domain("untrusted.pkix", "v=STSv1; id=pu1", "127.0.0.75"),
    *sts_domain("expired.pkix", "v=STSv1; id=px1", "127.0.0.76"),
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
    **{host(f"{label}.pkix"): Served(policy("enforce", f"mx.{label}.pkix.sts.test"))
       for label in ("good", "name", "untrusted", "expired")},
}
# label -> (MX address, what its certificate is wrong about; None: nothing)
MX_SERVERS = {"good": ("127.0.0.73", None), "name": ("127.0.0.74", "name"),
              "untrusted": ("127.0.0.75", "issuer"), "expired": ("127.0.0.76", "dates")}


@dataclass
class World:
    bed: DnssecTestBed
    server: StsServer
    smtp_port: int

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
    smtp_port = free_port()
    stranger = make_ca("a CA nobody trusts")
    now = datetime.now(UTC)
    mx_servers = []
    try:
        for label, (address, wrong) in MX_SERVERS.items():
            name = f"mx.{label}.pkix.sts.test"
            leaf = make_leaf(stranger if wrong == "issuer" else server.ca,
                             ["mx.someone-else.test" if wrong == "name" else name],
                             *((now - timedelta(days=40), now - timedelta(days=1))
                               if wrong == "dates" else ()))
            mx = SmtpTlsServer(address, smtp_port, chain=[leaf.cert], key=leaf.key, name=name)
            mx.start()
            mx_servers.append(mx)
        yield World(bed, server, smtp_port)
    finally:
        for mx in mx_servers:
            mx.stop()
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


def test_a_policy_near_its_expiry_is_fetched_again_in_the_background(
        world: World, tmp_path: Path) -> None:
    settings = cached(tmp_path, "refresh")
    service = world.service(settings)
    # Same TXT id, a day's max_age with ten minutes left: the recipient gets the cached
    # policy at once, and the refresh replaces it (the server now says enforce).
    old = CachedPolicy(StsPolicy(StsMode.TESTING, 86400, ("mx.enforce.sts.test",)), "e1",
                       time.time() - 86400 + 600)
    service.sts_cache.store("enforce.sts.test", old)
    before = len(world.server.requests)

    async def run() -> tuple[StsStatus, StsStatus | None, CachedPolicy | None]:
        try:
            first = await service.sts("enforce.sts.test", Deadline.after(8))
            await asyncio.gather(*service.sts_refreshing.values())
            return (first, service.cached_sts("enforce.sts.test"),
                    service.sts_cache.policy("enforce.sts.test", time.time()))
        finally:
            await service.aclose()

    first, after, stored = asyncio.run(run())
    assert first.state is StsState.TESTING and "unchanged" in first.reason
    assert len(world.server.requests) == before + 1
    assert after is not None and after.state is StsState.ENFORCE, after
    assert "refreshed" in after.reason
    assert stored is not None and stored.policy.mode is StsMode.ENFORCE
    assert stored.expires_at > time.time() + 86000


def test_a_failed_refresh_keeps_the_cached_policy(world: World, tmp_path: Path) -> None:
    settings = cached(tmp_path, "refresh-down")
    service = world.service(settings)
    old = CachedPolicy(StsPolicy(StsMode.ENFORCE, 86400, ("mx.down.sts.test",)), "d1",
                       time.time() - 86400 + 600)
    service.sts_cache.store("down.sts.test", old)   # its HTTPS server does not answer

    async def run() -> tuple[StsStatus, CachedPolicy | None]:
        try:
            answer = await service.sts("down.sts.test", Deadline.after(8))
            await asyncio.gather(*service.sts_refreshing.values())
            return answer, service.sts_cache.policy("down.sts.test", time.time())
        finally:
            await service.aclose()

    answer, stored = asyncio.run(run())
    assert answer.state is StsState.ENFORCE and "cached policy" in answer.reason
    assert stored == old


# --- through a real Postfix ---------------------------------------------------------


@pytest.fixture(scope="module")
def daemon(world: World) -> Iterator[MilterProcess]:
    resolver, sts = world.settings()
    milter = MilterProcess(
        f"resolver: {{address: 127.0.0.1, port: {resolver.port}, timeout: 1}}\n"
        f"resolver_check: off\ndeadline: 8\n"
        f"mta_sts: {{port: {sts.port}, ca_file: {sts.ca_file}}}\n"
        f"probe: {{port: {world.smtp_port}, allow_private: true, timeout: 5}}\n"
        "policy:\n  default: {dane: try, tls: authenticated, on_fail: defer}\n"
        "  domains:\n"
        "    .pkix.sts.test: {dane: try, tls: authenticated, probe: inline, on_fail: defer}\n")
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


def test_pkix_failures_defer_through_postfix(postfix_stack: tuple[PrivatePostfix, SmtpSink]
                                             ) -> None:
    postfix, sink = postfix_stack
    marker = f"<pkix.{time.monotonic_ns()}@client.test>"
    recipients = ["a@good.pkix.sts.test", "b@name.pkix.sts.test", "c@untrusted.pkix.sts.test"]
    message = (f"Message-ID: {marker}\nFrom: alice@client.test\nTo: x@sts.test\n"
               "Subject: pkix\n\nhello\n")
    codes = [(r.code, r.text) for r in postfix.submit(recipients, message).replies]
    assert codes[0][0] == 250, codes
    for (code, text), domain in zip(codes[1:], ("name.pkix.sts.test",
                                                "untrusted.pkix.sts.test"), strict=True):
        assert code == 450, codes
        assert text.startswith("4.7.5") and domain in text and "PKIX" in text, text
    delivered = sink.wait_for_message(marker)
    headers = [str(h).replace("\r\n", "").replace("\n", "") for h in delivered.get_all(HEADER)]
    assert headers == ["good.pkix.sts.test; status=none; usage=0; ocsp=off; sts=enforce; "
                       "action=accept"], headers


def test_verify_json_shows_the_mta_sts_verdict_of_every_fixture(world: World,
                                                                tmp_path: Path) -> None:
    expected = {"enforce": "enforce", "testing": "testing", "none": "none",
                "ctype": "invalid", "big": "invalid", "redirect": "invalid",
                "wrongname": "invalid", "nomatch": "enforce", "down": "tempfail",
                "absent": "absent", "twotxt": "invalid", "dane-sts": None,
                **{f"{label}.pkix": "enforce" for label in MX_SERVERS}}
    # Every domain of the zone, so that a fixture added without a verdict here fails.
    assert {f"{label}.sts.test" for label in expected} == {
        record.split()[0] + ".sts.test" for record in ZONE.records if " MX " in record}
    result = verify(world, tmp_path, "--dns-only", "--json",
                    *(f"{label}.sts.test" for label in expected))
    assert result.returncode == 0, result.stderr
    got = {doc["domain"].removesuffix(".sts.test"): (doc["sts"] or {}).get("state")
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


# --- the MX certificates of enforce-mode domains (RFC 8461 §4.2) --------------------


PROBING = Rule(DaneMode.TRY, tls=TlsRequirement.AUTHENTICATED, probe=ProbeMode.INLINE,
               on_fail=FailAction.REJECT)


def decide_for(world: World, *domains: str) -> list[Decision]:
    resolver, sts = world.settings()
    settings = Settings(resolver=resolver, mta_sts=sts,
                        probe=ProbeSettings(port=world.smtp_port, allow_private=True,
                                            timeout=5))
    service = world.service()

    async def run() -> list[Decision]:
        try:
            return [(await service.decision(d, PROBING, settings, Deadline.after(8)))[0]
                    for d in domains]
        finally:
            await service.aclose()
    return asyncio.run(run())


@pytest.mark.parametrize(
    ("label", "reply", "why"),
    [
        ("good", None, ""),
        ("name", (550, "5.7.5"), "name mismatch: certificate names mx.someone-else.test do "
                                 "not match mx.name.pkix.sts.test"),
        ("untrusted", (550, "5.7.5"), "unable to get local issuer certificate"),
        ("expired", (550, "5.7.5"), "certificate has expired"),
    ],
)
def test_enforce_mode_mx_certificates_are_judged_by_pkix(world: World, label: str,
                                                         reply: tuple[int, str] | None,
                                                         why: str) -> None:
    (decision,) = decide_for(world, f"{label}.pkix.sts.test")
    got = None if decision.reply is None else (decision.reply.code, decision.reply.xcode)
    assert got == reply, decision
    assert decision.sts == "enforce"
    if reply is None:
        assert decision.action == "accept", decision
    else:
        assert f"MX host mx.{label}.pkix.sts.test [{MX_SERVERS[label][0]}] fails the " \
               "MTA-STS certificate check" in decision.reason
        assert why in decision.reason, decision.reason


def test_verify_json_shows_each_probes_pkix_verdict(world: World, tmp_path: Path) -> None:
    result = verify(world, tmp_path, "--json", *(f"{label}.pkix.sts.test" for label in MX_SERVERS))
    assert result.returncode == 0, result.stderr
    got = {doc["domain"].split(".")[0]: (doc["sts"]["state"],
                                         doc["hosts"][0]["probes"][0]["pkix"])
           for doc in json.loads(result.stdout)}
    assert got == {"good": ("enforce", "verified"), "name": ("enforce", "failed"),
                   "untrusted": ("enforce", "failed"), "expired": ("enforce", "failed")}


def verify(world: World, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    resolver, sts = world.settings()
    config = tmp_path / "danemilter.yaml"
    config.write_text(f"resolver: {{address: 127.0.0.1, port: {resolver.port}}}\n"
                      f"mta_sts: {{port: {sts.port}, ca_file: {sts.ca_file}}}\n"
                      f"probe: {{port: {world.smtp_port}, allow_private: true}}\n")
    return subprocess.run([sys.executable, "-m", "danemilter", "verify", "--no-cache",
                           "--config", str(config), *args],
                          capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.parametrize(
    ("domain", "code", "line"),
    [
        ("good.pkix.sts.test", 2, "DANE CRITICAL - good.pkix.sts.test=none sts=enforce"),
        ("name.pkix.sts.test", 2, "DANE CRITICAL - name.pkix.sts.test=none sts=enforce "
         "(mx.name.pkix.sts.test [127.0.0.74] MTA-STS certificate check failed: name "
         "mismatch"),
        ("ctype.sts.test", 2, "DANE CRITICAL - ctype.sts.test=none sts=invalid (MTA-STS "
         "invalid: mta-sts.ctype.sts.test: policy served as 'text/html'"),
        ("dane-sts.sts.test", 2, "DANE CRITICAL - dane-sts.sts.test=dane ("),
    ],
)
def test_verify_nagios_reports_mta_sts(world: World, tmp_path: Path, domain: str, code: int,
                                       line: str) -> None:
    result = verify(world, tmp_path, "--nagios", domain)
    assert (result.returncode, result.stdout.startswith(line)) == (code, True), result.stdout
    assert result.stdout.count("\n") == 1


def test_verify_text_shows_the_pkix_verdict(world: World, tmp_path: Path) -> None:
    result = verify(world, tmp_path, "good.pkix.sts.test", "untrusted.pkix.sts.test")
    assert result.returncode == 0, result.stderr
    assert "[127.0.0.73]:" in result.stdout and "; PKIX verified;" in result.stdout
    assert "[127.0.0.75]:" in result.stdout
    assert "PKIX FAILED (unable to get local issuer certificate" in result.stdout
    assert "  MTA-STS: enforce: " in result.stdout


def test_new_roots_in_the_same_ca_file_count_at_once(world: World, tmp_path: Path) -> None:
    ca_file = tmp_path / "roots.pem"
    ca_file.write_bytes(make_ca("some other root").pem())
    name = "mx.good.pkix.sts.test"
    host = HostStatus(name, 10, ("127.0.0.73",), True, HostState.NONE, None, (), "none", 300)

    def pkix() -> tuple[PkixVerdict, str]:
        result = probe_host(host, "127.0.0.73", port=world.smtp_port, names=(name,),
                            request_staple=False, timeout=5, now=datetime.now(UTC),
                            helo="client.test", allow_private=True, ca_file=str(ca_file))
        return result.pkix, result.pkix_reason

    assert pkix()[0] is PkixVerdict.FAILED
    # The operator adds the right root to the file the configuration names.
    ca_file.write_bytes(ca_file.read_bytes() + world.server.ca_file.read_bytes())
    assert pkix() == (PkixVerdict.VERIFIED, f"chain valid under PKIX for {name}")


def test_a_cached_probe_is_not_used_once_its_ca_file_is_rewritten(world: World,
                                                                 tmp_path: Path) -> None:
    # The probe cache outlives a CA-file edit (probe.cache_ttl): a verdict judged under
    # the old roots must be a miss. Here the operator withdraws a root the MX chains to.
    ca_file = tmp_path / "roots.pem"
    ca_file.write_bytes(world.server.ca_file.read_bytes())
    resolver, sts = world.settings()
    sts = MtaStsSettings(port=sts.port, ca_file=str(ca_file), timeout=5)
    probing = ProbeSettings(port=world.smtp_port, allow_private=True, timeout=5,
                            cache_ttl=3600)
    settings = Settings(resolver=resolver, mta_sts=sts, probe=probing)
    service = Service(resolver, cached(tmp_path, "rewritten-ca"), sts)

    async def decide() -> Decision:
        return (await service.decision("good.pkix.sts.test", PROBING, settings,
                                       Deadline.after(8)))[0]

    async def run() -> tuple[Decision, Decision, Decision]:
        try:
            before = await decide()
            again = await decide()  # the same roots: the cached probe
            ca_file.write_bytes(make_ca("some other root").pem())
            return before, again, await decide()  # the policy itself stays cached
        finally:
            await service.aclose()

    before, again, after = asyncio.run(run())
    assert before.reply is None and again.reply is None, (before, again)
    assert (service.probe_hits, service.probe_misses) == (1, 2)
    assert after.reply is not None and "unable to get local issuer" in after.reason, after


def test_new_roots_count_for_policy_fetches_without_a_restart(world: World,
                                                              tmp_path: Path) -> None:
    ca_file = tmp_path / "roots.pem"
    ca_file.write_bytes(make_ca("some other root").pem())
    resolver, sts = world.settings()
    service = Service(resolver, CacheSettings(backend="memory"),
                      MtaStsSettings(port=sts.port, ca_file=str(ca_file), timeout=5))

    async def run() -> tuple[StsStatus, StsStatus]:
        try:
            before = await service.sts("enforce.sts.test", Deadline.after(8))
            ca_file.write_bytes(ca_file.read_bytes() + world.server.ca_file.read_bytes())
            service.sts_cache.forget("enforce.sts.test")  # the verdict's 5 minutes are up
            return before, await service.sts("enforce.sts.test", Deadline.after(8))
        finally:
            await service.aclose()

    before, after = asyncio.run(run())
    assert before.state is StsState.INVALID and "certificate not valid" in before.reason
    assert after.state is StsState.ENFORCE, after


def test_a_ca_file_removed_since_the_load_is_a_tempfail_not_an_error(
        world: World, tmp_path: Path) -> None:
    ca_file = tmp_path / "roots.pem"
    ca_file.write_bytes(world.server.ca_file.read_bytes())
    resolver, sts = world.settings()
    service = Service(resolver, CacheSettings(backend="memory"),
                      MtaStsSettings(port=sts.port, ca_file=str(ca_file), timeout=5))
    ca_file.unlink()  # the operator's clean-up, after the policy was loaded
    (status,) = ask(service, "enforce.sts.test")
    assert status.state is StsState.TEMPFAIL, status
    assert "trust store unusable" in status.reason
