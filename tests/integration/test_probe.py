"""`danemilter verify` probing real STARTTLS servers behind the DNSSEC test bed.

Every site below is a domain whose MX host points at a loopback address where a small
pyOpenSSL STARTTLS server presents a chain made at test time; the TLSA records in the
signed zone are computed from those certificates. Expectations come from RFC 7672 /
RFC 7671 and DESIGN.md ("DANE semantics" 4, "OCSP semantics"):

* DANE-EE ignores names and dates; DANE-TA needs a signature path to the anchor (sent or
  carried whole by a ``2 0 0`` record), a valid leaf and a matching name;
* a staple is requested only where usage is 0 or 4 (here: the DANE-TA sites); a
  delegated responder must be valid for the whole life of the proof;
* a DANE host whose certificate matches no record makes the domain ``dane-mismatch``.

Postfix's posttls-finger (through a DNS relay on port 53 inside a private mount
namespace, see tests/support/posttlsfinger.py) is asked about the same domains; its
DANE verdict must agree with ours on every site where it reaches TLS.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from danemilter.cli import main
from danemilter.dane import HostState, HostStatus
from danemilter.probe import probe_host
from danemilter.tlsa import TLSARecord
from tests.support.posttlsfinger import PosttlsFinger, start_relay
from tests.support.probe_world import Host, Pki, Server, Site, World, retry_port, spki_sha256

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

PROBE_TIMEOUT = 3.0


def _sites() -> list[Site]:
    p = Pki()
    sites: list[Site] = []

    def add(label: str, hosts: list[Host], **expect: Any) -> None:
        sites.append(Site(label, hosts, expect))

    def mx(label: str) -> str:
        return f"mx.{label}.probe.test"

    # DANE-EE: self-signed leaf, SPKI digest. A staple is offered but must not be asked for.
    ee = p.ee([mx("ee")])
    add("ee", [Host("mx.ee", Server([ee.cert], ee.key, staple=b"never requested"),
                    (f"3 1 1 {spki_sha256(ee.cert)}",))],
        status="dane", dane="verified", depth=0, ocsp="not-requested", finger="verified")
    # DANE-TA with the anchor sent in the chain.
    leaf = p.ta_leaf([mx("ta-sent")])
    add("ta-sent", [Host("mx.ta-sent", Server([leaf.cert, p.ca.cert], leaf.key),
                         (p.ta_record(),))],
        status="dane", dane="verified", depth=1, ocsp="absent", finger="verified")
    # DANE-TA, anchor not sent: the record carries the whole CA certificate.
    leaf = p.ta_leaf([mx("ta-full")])
    add("ta-full", [Host("mx.ta-full", Server([leaf.cert], leaf.key), (p.ta_full_record(),))],
        status="dane", dane="verified", depth=1, ocsp="absent", finger="verified")
    # DANE-TA, name mismatch.
    leaf = p.ta_leaf(["somewhere.example.net"])
    add("ta-name", [Host("mx.ta-name", Server([leaf.cert, p.ca.cert], leaf.key),
                         (p.ta_record(),))],
        status="dane-mismatch", dane="mismatch", depth=1, ocsp="absent", finger="untrusted",
        reason="name mismatch")
    # Expired leaf: DANE-EE passes, DANE-TA fails.
    ee = p.ee([mx("ee-expired")], expired=True)
    add("ee-expired", [Host("mx.ee-expired", Server([ee.cert], ee.key),
                            (f"3 1 1 {spki_sha256(ee.cert)}",))],
        status="dane", dane="verified", depth=0, ocsp="not-requested", finger="verified")
    leaf = p.ta_leaf([mx("ta-expired")], expired=True)
    add("ta-expired", [Host("mx.ta-expired", Server([leaf.cert, p.ca.cert], leaf.key),
                            (p.ta_record(),))],
        status="dane-mismatch", dane="mismatch", depth=1, ocsp="absent", finger="untrusted",
        reason="expired")
    # TLSA for another key.
    ee, other = p.ee([mx("mismatch")]), p.ee(["other"])
    add("mismatch", [Host("mx.mismatch", Server([ee.cert], ee.key),
                          (f"3 1 1 {spki_sha256(other.cert)}",))],
        status="dane-mismatch", dane="mismatch", depth=None, ocsp="not-requested",
        finger="untrusted")
    # Failures before a chain: no STARTTLS, refused, silent, stalled after STARTTLS.
    ee = p.ee([mx("nostarttls")])
    record = (f"3 1 1 {spki_sha256(ee.cert)}",)
    add("nostarttls", [Host("mx.nostarttls", Server([ee.cert], ee.key, starttls=False), record)],
        status="dane", dane="failed", failed_at="ehlo", starttls=False, finger="no-tls",
        reason="STARTTLS not offered")
    add("refused", [Host("mx.refused", Server(listen=False), record)],
        status="dane", dane="failed", failed_at="connect", starttls=False, finger="no-tls",
        reason="refused")
    add("silent", [Host("mx.silent", Server(silent=True, starttls=False), record)],
        status="dane", dane="failed", failed_at="banner", starttls=False, reason="timed out")
    add("stall", [Host("mx.stall", Server([ee.cert], ee.key, stall_tls=True), record)],
        status="dane", dane="failed", failed_at="handshake", starttls=True,
        reason="timed out")
    # OCSP staples under DANE-TA (usage 4: requested). The leaf names an OCSP responder.
    for kind, state, reason in (
        ("good", "good", "good"),
        ("revoked", "revoked", "revoked"),
        ("stale", "stale", "expired"),
        ("delegated-short", "invalid", "signer-validity"),
        ("badsig", "invalid", "bad-signature"),
        (None, "absent", "no OCSP response"),
    ):
        label = f"ocsp-{kind or 'absent'}"
        leaf = p.ta_leaf([mx(label)], ocsp_url="http://ocsp.probe.test/")
        staple = p.staple(leaf.cert, kind) if kind else None
        add(label, [Host(f"mx.{label}", Server([leaf.cert, p.ca.cert], leaf.key, staple=staple),
                         (p.ta_record(),))],
            status="dane", dane="verified", depth=1, ocsp=state, ocsp_reason=reason,
            ocsp_url="http://ocsp.probe.test/", finger="verified")
    # Two hosts: MX 10 verifies, MX 20 presents a certificate matching no record.
    good, bad = p.ee([mx("two")]), p.ee([mx("two")])
    add("two", [
        Host("mx1.two", Server([good.cert], good.key), (f"3 1 1 {spki_sha256(good.cert)}",)),
        Host("mx2.two", Server([bad.cert], bad.key), (f"3 1 1 {spki_sha256(good.cert)}",),
             preference=20),
    ], status="dane-mismatch")
    return sites


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    yield from retry_port(lambda: World(_sites()))


def _verify(capsys: pytest.CaptureFixture[str], world: World, domains: list[str],
            *extra: str) -> tuple[int, str]:
    capsys.readouterr()
    rc = main(["verify", *domains, "--resolver", world.resolver, "--port", str(world.port),
               "--timeout", str(PROBE_TIMEOUT), *extra])
    out, _ = capsys.readouterr()
    return rc, out


@pytest.fixture(scope="module")
def verified(world: World) -> dict[str, Any]:
    """One `verify --json --allow-private` over every site, as a real operator runs it."""
    import contextlib
    import io

    buffer = io.StringIO()
    began = time.monotonic()
    with contextlib.redirect_stdout(buffer):
        rc = main(["verify", *(world.domain(s) for s in world.sites), "--json",
                   "--allow-private", "--resolver", world.resolver, "--port", str(world.port),
                   "--timeout", str(PROBE_TIMEOUT)])
    elapsed = time.monotonic() - began
    document = json.loads(buffer.getvalue())
    return {"rc": rc, "elapsed": elapsed, "by_domain": {d["domain"]: d for d in document}}


SITE_LABELS = [s.label for s in _sites()]


def _site(world: World, label: str) -> Site:
    return next(s for s in world.sites if s.label == label)


@pytest.mark.parametrize("label", [x for x in SITE_LABELS if x != "two"])
def test_verdict_per_site(world: World, verified: dict[str, Any], label: str) -> None:
    site = _site(world, label)
    expect = site.expect
    result = verified["by_domain"][world.domain(site)]
    assert verified["rc"] == 0
    assert result["status"] == expect["status"], result
    (host,) = result["hosts"]
    (probe,) = host["probes"]
    context = json.dumps(probe, indent=1)
    assert probe["address"] == site.hosts[0].address
    assert probe["dane"] == expect["dane"], context
    for key in ("depth", "ocsp", "failed_at", "starttls", "ocsp_url"):
        if key in expect:
            assert probe[key] == expect[key], f"{key}: {context}"
    if expect.get("failed_at") is None:
        assert probe["starttls"] is True and probe["tls_version"] in ("TLSv1.2", "TLSv1.3")
    if "reason" in expect:
        assert expect["reason"] in probe["reason"], context
    if expect.get("ocsp_reason"):
        assert expect["ocsp_reason"] in probe["ocsp_reason"], context


def test_dane_mismatch_on_one_of_two_hosts(world: World, verified: dict[str, Any]) -> None:
    result = verified["by_domain"][world.domain(_site(world, "two"))]
    assert result["status"] == "dane-mismatch"
    assert "mx2.two.probe.test" in result["reason"]
    first, second = result["hosts"]
    assert [p["dane"] for p in first["probes"]] == ["verified"]
    assert [p["dane"] for p in second["probes"]] == ["mismatch"]


def test_probes_run_in_parallel(verified: dict[str, Any]) -> None:
    # Two sites each cost a full PROBE_TIMEOUT (silent, stall); serial would be >= 2x.
    assert verified["elapsed"] < 2 * PROBE_TIMEOUT, verified["elapsed"]


def test_sni_is_the_tlsa_base_and_staples_only_requested_for_dane_ta(
    world: World, verified: dict[str, Any]
) -> None:
    assert verified["rc"] == 0
    for site in world.sites:
        for host in site.hosts:
            server = world.servers.get(host.address)
            if server is None or not server.server_names:
                continue
            assert set(server.server_names) == {world.fqdn(host)}, site.label
    assert world.servers[_site(world, "ee").hosts[0].address].staple_requests == 0
    assert world.servers[_site(world, "ocsp-good").hosts[0].address].staple_requests >= 1


def _probe(world: World, label: str, timeout: float) -> tuple[Any, float]:
    site = _site(world, label)
    host = site.hosts[0]
    status = HostStatus(world.fqdn(host), 10, (host.address,), True, HostState.DANE,
                        world.fqdn(host), tuple(TLSARecord.from_text(t) for t in host.tlsa),
                        "test", 60)
    began = time.monotonic()
    result = probe_host(status, host.address, port=world.port, names=[world.fqdn(host)],
                        request_staple=True, timeout=timeout, now=datetime.now(UTC),
                        helo="probe.client.test", allow_private=True)
    return result, time.monotonic() - began


@pytest.mark.timeout(20)
@pytest.mark.parametrize(("label", "stage"), [("silent", "banner"), ("stall", "handshake")])
def test_unresponsive_server_times_out_within_bound(world: World, label: str,
                                                    stage: str) -> None:
    result, elapsed = _probe(world, label, 1.0)
    assert result.failed_at == stage
    assert result.dane == "failed"
    assert 0.9 <= elapsed < 2.0, elapsed


def test_private_addresses_not_probed_without_allow_private(
    capsys: pytest.CaptureFixture[str], world: World
) -> None:
    site = _site(world, "ee")
    server = world.servers[site.hosts[0].address]
    before = server.connections
    rc, out = _verify(capsys, world, [world.domain(site)], "--json")
    assert rc == 0
    (probe,) = json.loads(out)[0]["hosts"][0]["probes"]
    assert probe["reason"].startswith("not probed: private address")
    assert probe["failed_at"] == "not-probed"
    assert server.connections == before


@pytest.mark.parametrize(("labels", "code"), [
    (["ee"], 0),
    (["ee", "ocsp-good"], 0),
    (["ocsp-stale"], 1),
    (["ocsp-absent"], 1),
    (["ocsp-revoked"], 2),
    (["mismatch"], 2),
    (["ee", "refused"], 2),
])
def test_nagios_codes(capsys: pytest.CaptureFixture[str], world: World, labels: list[str],
                      code: int) -> None:
    domains = [world.domain(_site(world, label)) for label in labels]
    rc, out = _verify(capsys, world, domains, "--nagios", "--allow-private")
    assert rc == code, out
    assert out.startswith(("DANE OK", "DANE WARNING", "DANE CRITICAL")[code])
    assert len(out.strip().splitlines()) == 1
    for domain in domains:
        assert domain in out


def test_human_output_explains_each_probe(capsys: pytest.CaptureFixture[str],
                                          world: World) -> None:
    domains = [world.domain(_site(world, label)) for label in ("ee", "ta-name", "nostarttls")]
    rc, out = _verify(capsys, world, domains, "--allow-private")
    assert rc == 0
    address = _site(world, "ee").hosts[0].address
    assert f"[{address}]:{world.port}: DANE verified at depth 0 over TLSv1." in out
    assert "DANE MISMATCH (matched depth 1)" in out and "name mismatch" in out
    assert "DANE check failed (ehlo): STARTTLS not offered" in out
    assert "ta-name.probe.test: dane-mismatch" in out


@pytest.fixture(scope="module")
def finger(world: World, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PosttlsFinger]:
    assert world.bed is not None
    relay = start_relay((world.bed.resolver_address, world.bed.resolver_port))
    try:
        yield PosttlsFinger(Path(tmp_path_factory.mktemp("posttls-finger")), relay.listen)
    finally:
        relay.stop()


_FINGER_SITES = [s.label for s in _sites() if "finger" in s.expect]


@pytest.mark.parametrize("label", _FINGER_SITES)
def test_posttls_finger_agrees(world: World, verified: dict[str, Any], finger: PosttlsFinger,
                               label: str) -> None:
    site = _site(world, label)
    ours = verified["by_domain"][world.domain(site)]["hosts"][0]["probes"][0]["dane"]
    theirs = finger.run(f"{world.domain(site)}:{world.port}", timeout=3)
    mapping = {"verified": "verified", "mismatch": "untrusted", "failed": "no-tls"}
    assert theirs.verdict == site.expect["finger"], theirs.output
    assert mapping[ours] == theirs.verdict, theirs.output
