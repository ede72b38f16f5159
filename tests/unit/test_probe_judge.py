"""Pure parts of the probe: judging chains and staples, address policy, domain verdict.

Expectations come from RFC 7672 (§3.1 usable records, §3.2.3 reference identifiers),
DESIGN.md ("DANE semantics" 4, "OCSP semantics": Exim's staple-request default, the
signer-lifetime rule) and RFC 6890 / RFC 4193 / RFC 3927 for the address table.
"""

from __future__ import annotations

import socket
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509 import ocsp

from danemilter.certs import must_staple, ocsp_url
from danemilter.commands.verify import nagios_verdict
from danemilter.dane import DomainState, DomainStatus, HostState, HostStatus
from danemilter.judge import (
    find_issuer,
    judge,
    judge_dane,
    judge_staple,
    reference_names,
    usage_bits,
    wants_staple,
)
from danemilter.probe import (
    DomainProbe,
    ProbeResult,
    _Failure,
    _Session,
    domain_verdict,
    private_address_reason,
)
from danemilter.tlsa import TLSARecord
from tests.support import ocsp_pki, pki
from tests.support.probe_world import cert_sha256, spki_sha256

pytestmark = pytest.mark.timeout(30)

NOW = datetime.now(UTC)


# ------------------------------------------------------------- address policy
@pytest.mark.parametrize(("address", "kind"), [
    ("127.0.0.1", "loopback"),
    ("127.1.2.3", "loopback"),
    ("::1", "loopback"),
    ("10.1.2.3", "private"),
    ("172.16.0.1", "private"),
    ("172.31.255.254", "private"),
    ("192.168.1.1", "private"),
    ("fd00::1", "private"),  # ULA, RFC 4193
    ("169.254.1.1", "link-local"),
    ("fe80::1", "link-local"),
    ("fe80::1%eth0", "link-local"),
    ("224.0.0.1", "multicast"),
    ("ff02::1", "multicast"),
    ("0.0.0.0", "unspecified"),
    ("::", "unspecified"),
    ("240.0.0.1", "private"),  # reserved 240/4 (Python files it under private too)
    ("100.64.0.1", "not globally routable"),  # CGNAT, RFC 6598
    ("192.0.2.1", "private"),  # TEST-NET-1 documentation range
    ("::ffff:10.0.0.1", "private"),  # IPv4-mapped
    ("::ffff:127.0.0.1", "loopback"),
    ("2002:7f00:1::1", "loopback"),  # 6to4 around 127.0.0.1
    ("not an address", "not an IP address"),
])
def test_blocked_addresses(address: str, kind: str) -> None:
    assert private_address_reason(address) == kind


@pytest.mark.parametrize("address", ["8.8.8.8", "193.0.14.129", "2001:4860:4860::8888",
                                     "2a00:1450:4001:80b::200e", "::ffff:8.8.8.8"])
def test_public_addresses_may_be_probed(address: str) -> None:
    assert private_address_reason(address) is None


# ------------------------------------------------------------ names and policy
def test_reference_names_secure_mx_includes_next_hop_domain() -> None:
    assert reference_names("example.test", True, "mx.example.test", "mx.example.test") == (
        "mx.example.test", "example.test")


def test_reference_names_insecure_mx_only_the_host() -> None:
    assert reference_names("example.test", False, "mx.example.test", "mx.example.test") == (
        "mx.example.test",)


def test_reference_names_cname_expanded_base_first_then_original_host() -> None:
    assert reference_names("example.test", True, "mx.example.test", "srv1.hosting.test") == (
        "srv1.hosting.test", "mx.example.test", "example.test")


def test_reference_names_the_next_hop_domains_cname_expansion_only_when_secure() -> None:
    assert reference_names("alias.test", True, "mx.target.test", "mx.target.test",
                           "target.test") == ("mx.target.test", "alias.test", "target.test")
    assert reference_names("alias.test", False, "mx.target.test", "mx.target.test",
                           "target.test") == ("mx.target.test",)


def _r(text: str) -> TLSARecord:
    return TLSARecord.from_text(text)


EE = _r("3 1 1 " + "aa" * 32)
TA = _r("2 0 1 " + "bb" * 32)
PKIX = _r("1 1 1 " + "cc" * 32)


@pytest.mark.parametrize(("records", "wanted"), [
    ((), True),  # no DANE: bitfield 0
    ((TA,), True),  # DANE-TA only: 4
    ((EE,), False),  # DANE-EE: 8
    ((EE, TA), False),  # 12
    ((PKIX,), True),  # unusable records do not count: 0
    ((PKIX, TA), True),
])
def test_staple_requested_only_where_exim_would(records: tuple[TLSARecord, ...],
                                                wanted: bool) -> None:
    assert wants_staple(records) is wanted


# ------------------------------------------------------------------- DANE
@pytest.fixture(scope="module")
def ca() -> pki.Issued:
    return pki.make_ca("Judge test CA")


def test_dane_not_applicable_without_usable_records() -> None:
    leaf = pki.make_leaf(None, ["mx.a.test"])
    assert judge_dane([leaf.cert], [PKIX], ["mx.a.test"], NOW)[0] == "not-applicable"


def test_damaged_full_record_makes_dane_not_apply() -> None:
    # A "3 0 0" whose certificate is cut short can match nothing: unusable, as OpenSSL and
    # so Postfix treat it ("all TLSA records unusable": TLS without authentication), not a
    # mismatch that would defer the mail.
    leaf = pki.make_leaf(None, ["mx.a.test"])
    damaged = TLSARecord(3, 0, 0, leaf.cert.public_bytes(serialization.Encoding.DER)[:-3])
    assert judge_dane([leaf.cert], [damaged], ["mx.a.test"], NOW)[0] == "not-applicable"
    assert usage_bits([damaged]) == 0


def test_dane_failed_without_a_chain() -> None:
    assert judge_dane([], [EE], ["mx.a.test"], NOW) == (
        "failed", None, "the server presented no certificate")


def test_dane_ee_verified_ignores_names_and_dates() -> None:
    leaf = pki.make_leaf(None, ["elsewhere.test"], NOW - timedelta(days=60),
                         NOW - timedelta(days=30))
    verdict, depth, _ = judge_dane([leaf.cert], [_r(f"3 1 1 {spki_sha256(leaf.cert)}")],
                                   ["mx.a.test"], NOW)
    assert (verdict, depth) == ("verified", 0)


def test_dane_ta_name_mismatch(ca: pki.Issued) -> None:
    leaf = pki.make_leaf(ca, ["elsewhere.test"])
    verdict, depth, reason = judge_dane([leaf.cert, ca.cert],
                                        [_r(f"2 0 1 {cert_sha256(ca.cert)}")],
                                        ["mx.a.test"], NOW)
    assert (verdict, depth) == ("mismatch", 1)
    assert "name mismatch" in reason


def test_dane_mismatch_for_another_key() -> None:
    leaf, other = pki.make_leaf(None, ["mx.a.test"]), pki.make_leaf(None, ["mx.a.test"])
    verdict, depth, _ = judge_dane([leaf.cert], [_r(f"3 1 1 {spki_sha256(other.cert)}")],
                                   ["mx.a.test"], NOW)
    assert (verdict, depth) == ("mismatch", None)


# ------------------------------------------------------------------- OCSP
@pytest.fixture(scope="module")
def ocsp_setup(ca: pki.Issued) -> tuple[pki.Issued, pki.Issued, ocsp_pki.Party]:
    leaf = pki.make_leaf(ca, ["mx.a.test"], ocsp_url="http://ocsp.a.test/")
    return ca, leaf, ocsp_pki.Party(ca.cert, ca.key)


def _good(leaf: x509.Certificate, ca: x509.Certificate, signer: ocsp_pki.Party) -> bytes:
    spec = ocsp_pki.SingleSpec(leaf, ca, next_update=ocsp_pki.utcnow() + ocsp_pki.DAY)
    return ocsp_pki.build_response(spec, signer)


def test_staple_not_requested_and_absent(ocsp_setup: tuple[pki.Issued, pki.Issued,
                                                           ocsp_pki.Party]) -> None:
    ca, leaf, _ = ocsp_setup
    assert judge_staple(None, [leaf.cert, ca.cert], [], NOW)[0] == "not-requested"
    assert judge_staple(b"", [leaf.cert, ca.cert], [], NOW)[0] == "absent"


def test_staple_good_revoked_stale(ocsp_setup: tuple[pki.Issued, pki.Issued,
                                                     ocsp_pki.Party]) -> None:
    ca, leaf, signer = ocsp_setup
    chain = [leaf.cert, ca.cert]
    assert judge_staple(_good(leaf.cert, ca.cert, signer), chain, [], NOW)[0] == "good"
    revoked = ocsp_pki.build_response(ocsp_pki.SingleSpec(
        leaf.cert, ca.cert, status=ocsp.OCSPCertStatus.REVOKED,
        next_update=ocsp_pki.utcnow() + ocsp_pki.DAY), signer)
    assert judge_staple(revoked, chain, [], NOW)[0] == "revoked"
    stale = ocsp_pki.build_response(ocsp_pki.SingleSpec(
        leaf.cert, ca.cert, this_update=ocsp_pki.utcnow() - 10 * ocsp_pki.DAY,
        next_update=ocsp_pki.utcnow() - ocsp_pki.DAY), signer)
    assert judge_staple(stale, chain, [], datetime.now(UTC))[0] == "stale"


def test_staple_invalid_cases(ocsp_setup: tuple[pki.Issued, pki.Issued,
                                                ocsp_pki.Party]) -> None:
    ca, leaf, signer = ocsp_setup
    chain = [leaf.cert, ca.cert]
    now = ocsp_pki.utcnow()
    responder = ocsp_pki.issue(signer, now, "short responder", ocsp_signing=True,
                               not_after=now + ocsp_pki.DAY)
    short = ocsp_pki.build_response(ocsp_pki.SingleSpec(
        leaf.cert, ca.cert, next_update=now + 3 * ocsp_pki.DAY), responder,
        include=(responder.cert,))
    state, reason = judge_staple(short, chain, [], datetime.now(UTC))
    assert (state, reason.split(":")[0]) == ("invalid", "signer-validity")
    bad = ocsp_pki.corrupt_signature(_good(leaf.cert, ca.cert, signer))
    assert judge_staple(bad, chain, [], NOW)[0] == "invalid"
    unknown = ocsp_pki.build_response(ocsp_pki.SingleSpec(
        leaf.cert, ca.cert, status=ocsp.OCSPCertStatus.UNKNOWN,
        next_update=now + ocsp_pki.DAY), signer)
    assert judge_staple(unknown, chain, [], NOW)[0] == "invalid"
    assert judge_staple(b"\x30\x03garbage", chain, [], NOW)[0] == "invalid"


def test_staple_issuer_from_full_dane_ta_record_when_not_sent(
    ocsp_setup: tuple[pki.Issued, pki.Issued, ocsp_pki.Party]
) -> None:
    ca, leaf, signer = ocsp_setup
    from cryptography.hazmat.primitives.serialization import Encoding

    full = _r(f"2 0 0 {ca.cert.public_bytes(Encoding.DER).hex()}")
    assert find_issuer([leaf.cert], [full]) == ca.cert
    assert find_issuer([leaf.cert], []) is None
    staple = _good(leaf.cert, ca.cert, signer)
    assert judge_staple(staple, [leaf.cert], [full], NOW)[0] == "good"
    assert judge_staple(staple, [leaf.cert], [], NOW)[0] == "invalid"


def test_issuer_found_out_of_order(ocsp_setup: tuple[pki.Issued, pki.Issued,
                                                     ocsp_pki.Party]) -> None:
    ca, leaf, _ = ocsp_setup
    stranger = pki.make_ca("Unrelated CA")
    assert find_issuer([leaf.cert, stranger.cert, ca.cert]) == ca.cert


def test_leaf_flags(ocsp_setup: tuple[pki.Issued, pki.Issued, ocsp_pki.Party]) -> None:
    ca, leaf, _ = ocsp_setup
    assert ocsp_url(leaf.cert) == "http://ocsp.a.test/"
    assert not must_staple(leaf.cert)
    plain = pki.make_leaf(None, ["mx.a.test"])
    assert ocsp_url(plain.cert) is None
    builder = (x509.CertificateBuilder().subject_name(plain.cert.subject)
               .issuer_name(ca.cert.subject).public_key(plain.key.public_key())
               .serial_number(1).not_valid_before(NOW - timedelta(hours=1))
               .not_valid_after(NOW + timedelta(days=1))
               .add_extension(x509.TLSFeature([x509.TLSFeatureType.status_request]), False))
    from cryptography.hazmat.primitives import hashes

    stapled = builder.sign(ca.key, hashes.SHA256())  # type: ignore[arg-type]
    assert must_staple(stapled)


def test_judge_combines_both(ocsp_setup: tuple[pki.Issued, pki.Issued,
                                               ocsp_pki.Party]) -> None:
    ca, leaf, signer = ocsp_setup
    verdict = judge([leaf.cert, ca.cert], [_r(f"2 0 1 {cert_sha256(ca.cert)}")],
                    ["mx.a.test"], _good(leaf.cert, ca.cert, signer), NOW)
    assert (verdict.dane, verdict.depth, verdict.ocsp) == ("verified", 1, "good")
    assert verdict.ocsp_url == "http://ocsp.a.test/"


# ------------------------------------------------------------ domain verdict
def _host(name: str, state: HostState, records: tuple[TLSARecord, ...]) -> HostStatus:
    return HostStatus(name, 10, ("192.0.2.1",), True, state, name if records else None,
                      records, "test", 60)


def _probe(dane: str, **kw: object) -> ProbeResult:
    fields: dict[str, object] = {
        "address": "192.0.2.1", "port": 25, "starttls": True, "tls_version": "TLSv1.3",
        "dane": dane, "depth": 0, "ocsp": "not-requested", "reason": "why",
    }
    fields.update(kw)
    return ProbeResult(**fields)  # type: ignore[arg-type]


DANE_STATUS = DomainStatus("a.test", DomainState.DANE, 8, True,
                           (_host("mx1.a.test", HostState.DANE, (EE,)),
                            _host("mx2.a.test", HostState.DANE, (EE,))), "ok", 60)


def test_domain_mismatch_when_any_dane_host_mismatches() -> None:
    status = domain_verdict(DANE_STATUS, [[_probe("verified")], [_probe("mismatch")]])
    assert status.status is DomainState.DANE_MISMATCH
    assert "mx2.a.test [192.0.2.1]" in status.reason


def test_domain_unchanged_for_failures_and_verified() -> None:
    probes = [[_probe("verified")], [_probe("failed", failed_at="connect")]]
    assert domain_verdict(DANE_STATUS, probes) is DANE_STATUS


def test_domain_without_dane_is_never_mismatch() -> None:
    status = replace(DANE_STATUS, status=DomainState.NONE)
    assert domain_verdict(status, [[_probe("mismatch")], []]) is status


@pytest.mark.parametrize(("probes", "code"), [
    ([[_probe("verified")], [_probe("verified")]], 0),
    ([[_probe("verified", ocsp="good")], [_probe("verified", ocsp="absent")]], 0),
    ([[_probe("verified", ocsp="absent", ocsp_url="http://x/")], [_probe("verified")]], 1),
    ([[_probe("verified", ocsp="stale", ocsp_url="http://x/")], [_probe("verified")]], 1),
    ([[_probe("verified", ocsp="absent", must_staple=True)], [_probe("verified")]], 2),
    ([[_probe("verified", ocsp="revoked")], [_probe("verified")]], 2),
    ([[_probe("verified", ocsp="invalid")], [_probe("verified")]], 2),
    ([[_probe("verified")], [_probe("failed", failed_at="connect")]], 2),
    ([[_probe("verified")], [_probe("mismatch")]], 2),
])
def test_nagios_mapping(probes: list[list[ProbeResult]], code: int) -> None:
    status = domain_verdict(DANE_STATUS, probes)
    probed = DomainProbe(status, tuple(tuple(p) for p in probes))
    assert nagios_verdict(probed)[0] == code


def test_nagios_partial_is_warning() -> None:
    status = replace(DANE_STATUS, status=DomainState.PARTIAL)
    probed = DomainProbe(status, ((_probe("verified"),), (_probe("verified"),)))
    assert nagios_verdict(probed)[0] == 1


# ------------------------------------------------------------ SMTP replies
def _session(data: bytes) -> _Session:
    ours, theirs = socket.socketpair()
    theirs.sendall(data)
    theirs.close()
    return _Session(ours, time.monotonic() + 2)


def test_multiline_reply() -> None:
    session = _session(b"250-mx.a.test\r\n250-PIPELINING\r\n250 STARTTLS\r\n220 next")
    assert session.reply("ehlo", "EHLO") == (250, ["mx.a.test", "PIPELINING", "STARTTLS"])
    assert session.buffer == b"220 next"


@pytest.mark.parametrize(("data", "words"), [
    (b"hello\r\n", "malformed"),
    (b"250-a\r\n220 b\r\n", "inconsistent"),
    (b"250-a\r\n", "closed"),
    (b"2" * 70000, "too long"),
])
def test_bad_replies(data: bytes, words: str) -> None:
    with pytest.raises(_Failure) as caught:
        _session(data).reply("ehlo", "the EHLO reply")
    assert words in caught.value.reason
