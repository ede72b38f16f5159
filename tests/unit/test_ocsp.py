"""danemilter.ocsp: every rule of DESIGN.md "OCSP semantics", table-driven.

Responses are built at test time with cryptography's OCSPResponseBuilder from a PKI
generated relative to the real clock (tests/support/ocsp_pki.py).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import stat
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp as x509_ocsp

from danemilter.certs import ocsp_urls, public_key_bits
from danemilter.cli import main
from danemilter.commands.ocsp import parse_duration
from danemilter.errors import UsageError
from danemilter.ocsp import CheckStatus as Status
from danemilter.ocsp import (
    OCSPVerdict,
    choose_staple,
    verify_response,
    with_certificate,
)
from danemilter.ocsp_fetch import build_request, write_atomically
from tests.support.ocsp_pki import (
    DAY,
    HOUR,
    Party,
    SingleSpec,
    build_response,
    corrupt_signature,
    issue,
    make_ca,
    utcnow,
)

GOOD = x509_ocsp.OCSPCertStatus.GOOD
REVOKED = x509_ocsp.OCSPCertStatus.REVOKED
UNKNOWN = x509_ocsp.OCSPCertStatus.UNKNOWN


@dataclass(frozen=True)
class PKI:
    now: datetime
    ca: Party
    leaf: Party
    other_leaf: Party
    responder: Party  # delegated, OCSPSigning EKU, valid for a year
    responder_no_eku: Party
    responder_short: Party  # delegated, expires in 2 days
    responder_late: Party  # delegated, valid only from now on
    impostor_ca: Party  # same name as ca, different key
    impostor_responder: Party  # OCSPSigning EKU, issued by impostor_ca
    rsa_ca: Party
    rsa_leaf: Party
    ed_ca: Party
    ed_leaf: Party


@pytest.fixture(scope="module")
def pki() -> PKI:
    now = utcnow()
    ca = make_ca(now)
    impostor = make_ca(now)  # same default name "Test OCSP CA"
    rsa_ca = make_ca(now, "Test RSA CA", kind="rsa")
    ed_ca = make_ca(now, "Test Ed25519 CA", kind="ed25519")
    return PKI(
        now=now,
        ca=ca,
        leaf=issue(ca, now, "mx.example.test", serial=0x1234),
        other_leaf=issue(ca, now, "mx2.example.test", serial=0x1235),
        responder=issue(ca, now, "Test OCSP Responder", ocsp_signing=True),
        responder_no_eku=issue(ca, now, "Test OCSP Responder"),
        responder_short=issue(ca, now, "Test OCSP Responder", ocsp_signing=True,
                              not_after=now + 2 * DAY),
        responder_late=issue(ca, now, "Test OCSP Responder", ocsp_signing=True,
                             not_before=now - timedelta(minutes=10)),
        impostor_ca=impostor,
        impostor_responder=issue(impostor, now, "Test OCSP Responder", ocsp_signing=True),
        rsa_ca=rsa_ca,
        rsa_leaf=issue(rsa_ca, now, "rsa.example.test"),
        ed_ca=ed_ca,
        ed_leaf=issue(ed_ca, now, "ed.example.test"),
    )


def single(p: PKI, **changes: Any) -> SingleSpec:
    spec = SingleSpec(p.leaf.cert, p.ca.cert, this_update=p.now - HOUR,
                      next_update=p.now + 3 * DAY)
    return replace(spec, **changes)


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[PKI], bytes]
    status: str
    reason: str
    kwargs: Callable[[PKI], dict[str, Any]] = lambda p: {}
    cert: Callable[[PKI], tuple[x509.Certificate, x509.Certificate]] = (
        lambda p: (p.leaf.cert, p.ca.cert))


def _no_next_update(p: PKI) -> bytes:
    return build_response(single(p, next_update=None), p.ca)


CASES = [
    Case("good, signed by the issuer, responder by name",
         lambda p: build_response(single(p), p.ca), "good", "ok"),
    Case("good, responder by key hash",
         lambda p: build_response(single(p), p.ca, by_key=True), "good", "ok"),
    Case("good, SHA-256 CertID",
         lambda p: build_response(single(p, hash_algorithm=hashes.SHA256()), p.ca),
         "good", "ok"),
    Case("good, SHA-384 CertID, SHA-512 signature",
         lambda p: build_response(single(p, hash_algorithm=hashes.SHA384()), p.ca,
                                  signature_hash=hashes.SHA512()), "good", "ok"),
    Case("good, delegated responder included",
         lambda p: build_response(single(p), p.responder, include=(p.responder.cert,)),
         "good", "ok"),
    Case("good, delegated responder by key hash",
         lambda p: build_response(single(p), p.responder, by_key=True,
                                  include=(p.responder.cert,)), "good", "ok"),
    Case("good, delegated responder given out of band",
         lambda p: build_response(single(p), p.responder), "good", "ok",
         kwargs=lambda p: {"extra_certs": [p.responder.cert]}),
    Case("good, RSA PKCS#1 v1.5",
         lambda p: build_response(SingleSpec(p.rsa_leaf.cert, p.rsa_ca.cert,
                                             next_update=p.now + DAY), p.rsa_ca),
         "good", "ok", cert=lambda p: (p.rsa_leaf.cert, p.rsa_ca.cert)),
    Case("good, Ed25519",
         lambda p: build_response(SingleSpec(p.ed_leaf.cert, p.ed_ca.cert,
                                             next_update=p.now + DAY), p.ed_ca),
         "good", "ok", cert=lambda p: (p.ed_leaf.cert, p.ed_ca.cert)),
    Case("revoked",
         lambda p: build_response(single(p, status=REVOKED,
                                         revocation_reason=x509.ReasonFlags.key_compromise),
                                  p.ca), "revoked", "ok"),
    Case("unknown", lambda p: build_response(single(p, status=UNKNOWN), p.ca),
         "unknown", "ok"),
    Case("stale: nextUpdate passed",
         lambda p: build_response(single(p, this_update=p.now - 3 * DAY,
                                         next_update=p.now - DAY), p.ca),
         "invalid", "expired"),
    Case("nextUpdate passed, but within the clock skew",
         lambda p: build_response(single(p, this_update=p.now - 3 * DAY,
                                         next_update=p.now - timedelta(minutes=2)), p.ca),
         "good", "ok"),
    Case("future: thisUpdate ahead of the clock",
         lambda p: build_response(single(p, this_update=p.now + HOUR), p.ca),
         "invalid", "not-yet-valid"),
    Case("thisUpdate ahead, but within the clock skew",
         lambda p: build_response(single(p, this_update=p.now + timedelta(minutes=2)), p.ca),
         "good", "ok"),
    Case("no nextUpdate", _no_next_update, "invalid", "no-next-update"),
    Case("no nextUpdate, max_age allows it", _no_next_update, "good", "ok",
         kwargs=lambda p: {"max_age": 7 * DAY}),
    Case("no nextUpdate, older than max_age", _no_next_update, "invalid", "too-old",
         kwargs=lambda p: {"max_age": timedelta(minutes=30)}),
    Case("nextUpdate present, older than max_age",
         lambda p: build_response(single(p), p.ca), "invalid", "too-old",
         kwargs=lambda p: {"max_age": timedelta(minutes=30)}),
    # max_age is "refuse any response older than this": the clock-skew allowance is for the
    # responder's clock and does not stretch our own bound (issue 12).
    Case("older than max_age by less than the clock skew",
         lambda p: build_response(single(p), p.ca), "invalid", "too-old",
         kwargs=lambda p: {"max_age": HOUR - timedelta(minutes=2)}),
    Case("no nextUpdate, older than max_age by less than the clock skew", _no_next_update,
         "invalid", "too-old", kwargs=lambda p: {"max_age": HOUR - timedelta(minutes=2)}),
    Case("just within max_age", lambda p: build_response(single(p), p.ca), "good", "ok",
         kwargs=lambda p: {"max_age": HOUR + timedelta(minutes=2)}),
    Case("wrong CertID: response for another certificate",
         lambda p: build_response(single(p, cert=p.other_leaf.cert), p.ca),
         "invalid", "no-matching-response"),
    Case("wrong CertID: same serial, another issuer",
         lambda p: build_response(SingleSpec(p.leaf.cert, p.rsa_ca.cert,
                                             next_update=p.now + DAY), p.rsa_ca),
         "invalid", "no-matching-response"),
    Case("bad signature",
         lambda p: corrupt_signature(build_response(single(p), p.ca)),
         "invalid", "bad-signature"),
    Case("signed by another key under the issuer's name",
         lambda p: build_response(single(p), p.impostor_ca), "invalid", "bad-signature"),
    Case("delegated signer without the OCSPSigning EKU",
         lambda p: build_response(single(p), p.responder_no_eku,
                                  include=(p.responder_no_eku.cert,)),
         "invalid", "signer-not-authorized"),
    Case("delegated signer expiring before nextUpdate",
         lambda p: build_response(single(p), p.responder_short,
                                  include=(p.responder_short.cert,)),
         "invalid", "signer-validity"),
    Case("delegated signer expiring before the max_age end of a proof without nextUpdate",
         lambda p: build_response(single(p, next_update=None), p.responder_short,
                                  include=(p.responder_short.cert,)),
         "invalid", "signer-validity", kwargs=lambda p: {"max_age": 7 * DAY}),
    Case("delegated signer outliving nextUpdate",
         lambda p: build_response(single(p, next_update=p.now + DAY), p.responder_short,
                                  include=(p.responder_short.cert,)), "good", "ok"),
    Case("delegated signer not yet valid at thisUpdate",
         lambda p: build_response(single(p), p.responder_late,
                                  include=(p.responder_late.cert,)),
         "invalid", "signer-validity"),
    Case("delegated signer not issued by the issuer (same issuer name, other key)",
         lambda p: build_response(single(p), p.impostor_responder,
                                  include=(p.impostor_responder.cert,)),
         "invalid", "signer-not-issued-by-issuer"),
    Case("delegated signer missing from the response",
         lambda p: build_response(single(p), p.responder), "invalid", "signer-not-found"),
    Case("unknown critical response extension",
         lambda p: build_response(single(p), p.ca, extensions=((x509.UnrecognizedExtension(
             x509.ObjectIdentifier("1.2.3.4"), b"\x05\x00"), True),)),
         "invalid", "critical-extension"),
    Case("unknown non-critical response extension",
         lambda p: build_response(single(p), p.ca, extensions=((x509.UnrecognizedExtension(
             x509.ObjectIdentifier("1.2.3.4"), b"\x05\x00"), False),)),
         "good", "ok"),
    Case("critical nonce (a known extension)",
         lambda p: build_response(single(p), p.ca,
                                  extensions=((x509.OCSPNonce(b"0123456789abcdef"), True),)),
         "good", "ok"),
    Case("responder error",
         lambda p: x509_ocsp.OCSPResponseBuilder.build_unsuccessful(
             x509_ocsp.OCSPResponseStatus.TRY_LATER).public_bytes(serialization.Encoding.DER),
         "invalid", "responder-error"),
    Case("truncated DER",
         lambda p: build_response(single(p), p.ca)[:-10], "invalid", "malformed"),
    Case("garbage", lambda p: b"<html>not OCSP</html>", "invalid", "malformed"),
    Case("empty", lambda p: b"", "invalid", "malformed"),
]


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_verify_response(case: Case, pki: PKI) -> None:
    cert, issuer = case.cert(pki)
    verdict = verify_response(case.build(pki), cert, issuer, pki.now, **case.kwargs(pki))
    assert (verdict.status, verdict.reason) == (case.status, case.reason), verdict.detail
    assert verdict.detail


def test_verdict_carries_the_details(pki: PKI) -> None:
    der = build_response(single(pki, status=REVOKED, revocation_time=pki.now - 2 * DAY,
                                revocation_reason=x509.ReasonFlags.key_compromise),
                         pki.responder, include=(pki.responder.cert,))
    verdict = verify_response(der, pki.leaf.cert, pki.ca.cert, pki.now)
    assert verdict.revocation_time == pki.now - 2 * DAY
    assert verdict.revocation_reason == "key_compromise"
    assert verdict.this_update == pki.now - HOUR
    assert verdict.next_update == verdict.expires == pki.now + 3 * DAY
    assert verdict.signer_delegated and verdict.signer_included
    assert verdict.signer_not_after == pki.responder.cert.not_valid_after_utc
    assert "Test OCSP Responder" in (verdict.signer or "")
    json.dumps(verdict.to_dict())


def test_produced_at_outside_the_certificate_validity(pki: PKI) -> None:
    # producedAt is the real clock; make certificates whose validity excludes it.
    expired = issue(pki.ca, pki.now, "old.example.test", not_before=pki.now - 10 * DAY,
                    not_after=pki.now - DAY)
    future = issue(pki.ca, pki.now, "new.example.test", not_before=pki.now + DAY,
                   not_after=pki.now + 10 * DAY)
    for leaf in (expired, future):
        der = build_response(single(pki, cert=leaf.cert), pki.ca)
        verdict = verify_response(der, leaf.cert, pki.ca.cert, pki.now)
        assert (verdict.status, verdict.reason) == ("invalid", "produced-at-outside-validity")


# Several SingleResponses in one response: cryptography's builder makes only one, so
# BoringSSL's multiple_response*, other_response cases cover this (conformance suite).


def test_hostile_bytes_never_raise(pki: PKI) -> None:
    der = build_response(single(pki), pki.responder, include=(pki.responder.cert,))
    for length in range(len(der)):
        verdict = verify_response(der[:length], pki.leaf.cert, pki.ca.cert, pki.now)
        assert verdict.status == "invalid"
    rng = random.Random(6)
    for _ in range(300):
        mutated = bytearray(der)
        for _ in range(rng.randint(1, 4)):
            mutated[rng.randrange(len(mutated))] = rng.randrange(256)
        verdict = verify_response(bytes(mutated), pki.leaf.cert, pki.ca.cert, pki.now)
        assert verdict.status in ("good", "invalid")
        assert verdict.reason


def test_key_hash_excludes_the_unused_bits_octet(pki: PKI) -> None:
    request = x509_ocsp.load_der_ocsp_request(build_request(pki.leaf.cert, pki.ca.cert))
    assert request.issuer_key_hash == hashlib.sha1(public_key_bits(pki.ca.cert)).digest()
    assert isinstance(request.hash_algorithm, hashes.SHA1)
    assert request.serial_number == pki.leaf.cert.serial_number
    assert not list(request.extensions)  # no nonce: cacheable


# ----------------------------------------------------------------- with_certificate


def test_with_certificate_adds_the_omitted_signer(pki: PKI) -> None:
    der = build_response(single(pki), pki.responder)
    assert verify_response(der, pki.leaf.cert, pki.ca.cert, pki.now).reason == (
        "signer-not-found")
    edited = with_certificate(der, pki.responder.cert)
    response = x509_ocsp.load_der_ocsp_response(edited)
    assert response.certificates == [pki.responder.cert]
    assert response.tbs_response_bytes == x509_ocsp.load_der_ocsp_response(
        der).tbs_response_bytes
    verdict = verify_response(edited, pki.leaf.cert, pki.ca.cert, pki.now)
    assert (verdict.status, verdict.signer_included) == ("good", True)
    assert with_certificate(edited, pki.responder.cert) == edited  # idempotent


def test_with_certificate_appends_to_existing_certs(pki: PKI) -> None:
    der = build_response(single(pki), pki.responder, include=(pki.ca.cert,))
    edited = with_certificate(der, pki.responder.cert)
    response = x509_ocsp.load_der_ocsp_response(edited)
    assert response.certificates == [pki.ca.cert, pki.responder.cert]
    assert verify_response(edited, pki.leaf.cert, pki.ca.cert, pki.now).good


def test_with_certificate_handles_long_lengths(pki: PKI) -> None:
    # An RSA responder pushes the certs and the whole response past 256 bytes of
    # length (two-octet DER lengths) and the outer structures past 1 KiB.
    rsa_responder = issue(pki.rsa_ca, pki.now, "RSA Responder", kind="rsa", ocsp_signing=True)
    der = build_response(SingleSpec(pki.rsa_leaf.cert, pki.rsa_ca.cert,
                                    next_update=pki.now + DAY), rsa_responder)
    edited = with_certificate(with_certificate(der, rsa_responder.cert), pki.rsa_ca.cert)
    assert len(edited) > 1500
    verdict = verify_response(edited, pki.rsa_leaf.cert, pki.rsa_ca.cert, pki.now)
    assert verdict.good and verdict.signer_included


def test_with_certificate_refuses_non_responses(pki: PKI) -> None:
    with pytest.raises(ValueError, match=r"DER|SEQUENCE|unpack|expected"):
        with_certificate(b"\x30\x03\x0a\x01\x00", pki.responder.cert)


# ----------------------------------------------------------------- choose_staple


def _verdict(now: datetime, status: Status = "good", *, age: timedelta = HOUR,
             life: timedelta = 3 * DAY, signer_life: timedelta = 365 * DAY) -> OCSPVerdict:
    this_update = now - age
    return OCSPVerdict(status=status, reason="ok" if status != "invalid" else "expired",
                       detail="test", this_update=this_update, expires=now + life,
                       next_update=now + life, signer_not_after=now + signer_life)


@pytest.mark.parametrize(("current", "new", "action", "why"), [
    (None, {}, "replace", "no current"),
    ({"status": "invalid"}, {}, "replace", "current staple is invalid"),
    ({}, {"status": "revoked"}, "refuse", "new response is revoked"),
    ({}, {"status": "unknown"}, "refuse", "new response is unknown"),
    ({}, {"status": "invalid"}, "refuse", "new response is invalid (expired)"),
    (None, {"life": timedelta(minutes=30)}, "refuse", "less than the minimum"),
    ({"life": timedelta(minutes=30)}, {"life": timedelta(minutes=60)}, "refuse",
     "less than the minimum"),
    ({}, {"age": timedelta(minutes=10), "life": 4 * DAY}, "replace", "fresh"),
    ({}, {"age": 2 * HOUR, "life": 4 * DAY}, "keep", "older"),
    ({}, {"age": timedelta(minutes=10), "life": 2 * DAY}, "keep", "expires before"),
    ({}, {"age": timedelta(minutes=10), "life": 4 * DAY, "signer_life": 30 * DAY}, "keep",
     "signer certificate expires before"),
    ({"life": timedelta(minutes=30)},
     {"age": timedelta(minutes=10), "life": 4 * DAY, "signer_life": 30 * DAY}, "replace",
     "current staple expires in"),
])
def test_choose_staple(current: dict[str, Any] | None, new: dict[str, Any],
                       action: str, why: str) -> None:
    now = utcnow()
    choice = choose_staple(None if current is None else _verdict(now, **current),
                           _verdict(now, **new), now, timedelta(hours=2))
    assert choice.action == action
    assert why in choice.why


def test_choose_staple_keeps_an_identical_response() -> None:
    now = utcnow()
    choice = choose_staple(_verdict(now), _verdict(now), now, timedelta(hours=2),
                           identical=True)
    assert choice.action == "keep" and "again" in choice.why


# ----------------------------------------------------------------- the check command


def _files(tmp_path: Path, pki: PKI, der: bytes, *, pem: bool) -> list[str]:
    if pem:
        body = base64.encodebytes(der).decode()
        (tmp_path / "resp.pem").write_text(
            f"-----BEGIN OCSP RESPONSE-----\n{body}-----END OCSP RESPONSE-----\n")
        (tmp_path / "cert.pem").write_bytes(pki.leaf.pem())
        (tmp_path / "ca.pem").write_bytes(pki.ca.pem())
        return ["--response", str(tmp_path / "resp.pem"), "--cert", str(tmp_path / "cert.pem"),
                "--issuer", str(tmp_path / "ca.pem")]
    (tmp_path / "resp.der").write_bytes(der)
    (tmp_path / "cert.der").write_bytes(pki.leaf.cert.public_bytes(serialization.Encoding.DER))
    (tmp_path / "ca.der").write_bytes(pki.ca.cert.public_bytes(serialization.Encoding.DER))
    return ["--response", str(tmp_path / "resp.der"), "--cert", str(tmp_path / "cert.der"),
            "--issuer", str(tmp_path / "ca.der")]


@pytest.mark.parametrize("pem", [True, False], ids=["pem", "der"])
@pytest.mark.parametrize(("status", "code"), [(GOOD, 0), (REVOKED, 1), (UNKNOWN, 1)])
def test_check_command(pki: PKI, tmp_path: Path, capsys: pytest.CaptureFixture[str], *,
                       pem: bool, status: x509_ocsp.OCSPCertStatus, code: int) -> None:
    der = build_response(single(pki, status=status), pki.ca)
    assert main(["ocsp", "check", *_files(tmp_path, pki, der, pem=pem), "--json"]) == code
    document = json.loads(capsys.readouterr().out)
    assert document["status"] == status.name.lower()
    assert document["reason"] == "ok"


def test_check_command_at_and_text(pki: PKI, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    der = build_response(single(pki), pki.ca)
    later = int((pki.now + 4 * DAY).timestamp())
    assert main(["ocsp", "check", *_files(tmp_path, pki, der, pem=False),
                 "--at", str(later)]) == 1
    assert capsys.readouterr().out.startswith("invalid (expired): ")
    assert main(["ocsp", "check", *_files(tmp_path, pki, der, pem=False)]) == 0
    assert capsys.readouterr().out.startswith("good: ")


@pytest.mark.parametrize("breakage", ["missing response", "pem without block",
                                      "garbage cert", "bad --at"])
def test_check_command_input_errors(pki: PKI, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str], breakage: str) -> None:
    args = _files(tmp_path, pki, build_response(single(pki), pki.ca), pem=False)
    if breakage == "missing response":
        args[1] = str(tmp_path / "nonexistent")
    elif breakage == "pem without block":
        args[1] = str(tmp_path / "cert.der")
        (tmp_path / "cert.der").write_bytes(pki.leaf.pem())
    elif breakage == "garbage cert":
        (tmp_path / "cert.der").write_bytes(b"\x30\x03junk")
    else:
        args += ["--at", "yesterday"]
    assert main(["ocsp", "check", *args]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("danemilter: ") and err.count("\n") == 1


# ----------------------------------------------------------------- small pieces


@pytest.mark.parametrize(("text", "seconds"), [
    ("3600", 3600), ("90s", 90), ("15m", 900), ("2h", 7200), ("7d", 604800),
    ("1w", 604800), ("1h30m", 5400),
])
def test_parse_duration(text: str, seconds: int) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "h", "1x", "-5m", "1.5h"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(UsageError):
        parse_duration(text)


def test_ocsp_urls(pki: PKI) -> None:
    leaf = issue(pki.ca, pki.now, "aia.example.test", ocsp_url="http://ocsp.example.test/")
    assert ocsp_urls(leaf.cert) == ["http://ocsp.example.test/"]
    assert ocsp_urls(pki.leaf.cert) == []


def test_write_atomically_keeps_mode_and_replaces(tmp_path: Path) -> None:
    target = tmp_path / "staple.der"
    write_atomically(target, b"first")
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    os.chmod(target, 0o640)
    write_atomically(target, b"second")
    assert target.read_bytes() == b"second"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["staple.der"]  # no temp left
