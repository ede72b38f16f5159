"""Random OCSP responses for the differential suite, and ``openssl ocsp``'s verdict on them.

Each case is generated at test time from ``random.Random(seed)`` relative to the real
clock (``openssl ocsp`` checks dates against it): signer direct or delegated (with or
without the OCSPSigning EKU, valid or not now, valid or not for the whole life of the
proof, issued by the CA or by a stranger), responder ID by name or key, every status,
thisUpdate/nextUpdate in and out of range and within the skew allowance, nextUpdate
absent, a CertID for another certificate, a damaged signature, an unknown critical
extension, several SingleResponses (others' and a second one of ours), ``--max-age``.
Dates keep at least a minute from every boundary, so the seconds between building a case
and judging it never decide it. ``kinds`` tag what went into a case.

cryptography's builder puts one SingleResponse in a response; :func:`_merge` re-signs
the tbsResponseData of one response with the SingleResponses of several.
"""

from __future__ import annotations

import random
import re
import subprocess
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509 import ocsp

from danemilter.certs import Tlv, children, read_tlv
from tests.support import ocsp_pki
from tests.support.ocsp_pki import DAY, HOUR, Party, SingleSpec

MINUTE = timedelta(minutes=1)
GOOD, REVOKED, UNKNOWN = (ocsp.OCSPCertStatus.GOOD, ocsp.OCSPCertStatus.REVOKED,
                          ocsp.OCSPCertStatus.UNKNOWN)
_UNKNOWN_EXTENSION = x509.ObjectIdentifier("1.3.6.1.4.1.55555.1.2")


@dataclass
class OcspCase:
    number: int
    response: bytes
    leaf: Party
    ca: Party
    max_age: timedelta | None
    kinds: list[str] = field(default_factory=list)
    # What a stricter verdict of ours may rest on (docs/conformance.md), by reason code.
    stricter: set[str] = field(default_factory=set)


class World:
    """The CAs of a run (RSA and EC) and a stranger CA, made once."""

    def __init__(self, now: datetime) -> None:
        self.now = now
        self.cas = [ocsp_pki.make_ca(now, "Differential OCSP EC CA"),
                    ocsp_pki.make_ca(now, "Differential OCSP RSA CA", kind="rsa")]
        self.stranger = ocsp_pki.make_ca(now, "Stranger CA")


def _der(tag: int, content: bytes) -> bytes:
    size = len(content)
    if size < 0x80:
        return bytes([tag, size]) + content
    octets = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(octets)]) + octets + content


def _raw(data: bytes, item: Tlv) -> bytes:
    return data[item.start:item.end]


def _basic(response: bytes) -> tuple[bytes, list[Tlv]]:
    """The BasicOCSPResponse DER inside an OCSPResponse, and its top-level fields."""
    outer = read_tlv(response, 0)
    _status, wrapper = children(response, outer)
    sequence = children(response, wrapper)[0]
    _oid, octets = children(response, sequence)
    basic = response[octets.content:octets.end]
    return basic, children(basic, read_tlv(basic, 0))


def _merge(responses: Sequence[bytes], signer: Party) -> bytes:
    """The first response with the SingleResponses of all of them, in order, re-signed."""
    basic, (tbs, algorithm, _signature, *certs) = _basic(responses[0])
    fields = children(basic, tbs)
    singles = b""
    for response in responses:
        other, other_fields = _basic(response)
        other_tbs = children(other, other_fields[0])
        listed = next(f for f in other_tbs if f.tag == 0x30 and other[f.content] == 0x30)
        singles += other[listed.content:listed.end]
    rebuilt = b""
    for item in fields:
        if item.tag == 0x30 and basic[item.content] == 0x30:  # responses: SEQUENCE OF
            rebuilt += _der(0x30, singles)
        else:
            rebuilt += _raw(basic, item)
    tbs_der = _der(0x30, rebuilt)
    key = signer.key
    if isinstance(key, rsa.RSAPrivateKey):
        signature = key.sign(tbs_der, padding.PKCS1v15(), hashes.SHA256())
    elif isinstance(key, ec.EllipticCurvePrivateKey):
        signature = key.sign(tbs_der, ec.ECDSA(hashes.SHA256()))
    else:
        signature = key.sign(tbs_der)
    basic_der = _der(0x30, tbs_der + _raw(basic, algorithm) + _der(0x03, b"\x00" + signature)
                     + b"".join(_raw(basic, c) for c in certs))
    body = _der(0x30, _der(0x06, bytes.fromhex("2b0601050507300101")) + _der(0x04, basic_der))
    return _der(0x30, _der(0x0A, b"\x00") + _der(0xA0, body))


def _signer(rng: random.Random, world: World, ca: Party, now: datetime,
            life_end: datetime, this_update: datetime, case: OcspCase,
            include: list[x509.Certificate]) -> Party:
    if rng.random() < 0.45:
        case.kinds.append("signer-direct")
        if rng.random() < 0.3:
            include.append(ca.cert)
        return ca
    eku = rng.random() < 0.8
    case.kinds.append("signer-delegated" + ("" if eku else "-without-ocspsigning-eku"))
    roll = rng.random()
    if roll < 0.55:
        case.kinds.append("signer-valid-for-the-proof")
        not_before, not_after = this_update - DAY, life_end + 10 * DAY
    elif roll < 0.70:
        case.kinds.append("signer-expires-before-nextupdate")
        not_before, not_after = this_update - DAY, now + 10 * MINUTE
        case.stricter.add("signer-validity")
    elif roll < 0.80:
        case.kinds.append("signer-born-after-thisupdate")
        not_before, not_after = now - 10 * MINUTE, life_end + 10 * DAY
        if not_before > this_update:
            case.stricter.add("signer-validity")
    elif roll < 0.92:
        case.kinds.append("signer-expired-now")
        not_before, not_after = this_update - 10 * DAY, now - HOUR
    else:
        case.kinds.append("signer-not-yet-valid-now")
        not_before, not_after = now + HOUR, life_end + 10 * DAY
    issuer = ca
    if rng.random() < 0.07:
        case.kinds.append("signer-issued-by-stranger")
        issuer = world.stranger
    signer = ocsp_pki.issue(issuer, now, f"responder {case.number}", ocsp_signing=eku,
                            not_before=not_before, not_after=not_after)
    if rng.random() < 0.95:
        include.append(signer.cert)
    else:
        case.kinds.append("signer-not-included")
    return signer


def make_case(number: int, rng: random.Random, world: World, now: datetime) -> OcspCase:
    ca = rng.choice(world.cas)
    leaf = ocsp_pki.issue(ca, now, f"leaf {number}", not_before=now - 30 * DAY,
                          not_after=now + 300 * DAY)
    case = OcspCase(number, b"", leaf, ca, None)
    status = rng.choice([GOOD, GOOD, REVOKED, UNKNOWN])
    case.kinds.append(f"status-{status.name.lower()}")
    this_update, next_update = _dates(rng, now, case)
    life_end = next_update or this_update + 7 * DAY
    include: list[x509.Certificate] = []
    signer = _signer(rng, world, ca, now, life_end, this_update, case, include)
    spec = SingleSpec(leaf.cert, ca.cert, status=status, this_update=this_update,
                      next_update=next_update, revocation_time=now - 2 * DAY,
                      revocation_reason=x509.ReasonFlags.key_compromise)
    if rng.random() < 0.07:
        case.kinds.append("certid-other-certificate")
        other = ocsp_pki.issue(ca, now, f"other {number}")
        spec = replace(spec, cert=other.cert)
    extensions: tuple[tuple[x509.ExtensionType, bool], ...] = ()
    if rng.random() < 0.06:
        case.kinds.append("critical-unknown-extension")
        extensions = ((x509.UnrecognizedExtension(_UNKNOWN_EXTENSION, b"\x05\x00"), True),)
        case.stricter.add("critical-extension")
    by_key = rng.random() < 0.5
    case.kinds.append("responder-by-key" if by_key else "responder-by-name")

    def build(single: SingleSpec) -> bytes:
        return ocsp_pki.build_response(single, signer, by_key=by_key, include=tuple(include),
                                       extensions=extensions)

    response = build(spec)
    if rng.random() < 0.15:
        response = _several(rng, ca, now, spec, response, build, signer, case)
    if rng.random() < 0.07:
        case.kinds.append("damaged-signature")
        response = ocsp_pki.corrupt_signature(response)
    if next_update is None and "max-age" not in case.kinds:
        case.stricter.add("no-next-update")
    if rng.random() < 0.2:
        case.max_age = _max_age(rng, now, this_update, case)
    case.response = response
    return case


def _several(rng: random.Random, ca: Party, now: datetime, spec: SingleSpec, response: bytes,
             build: object, signer: Party, case: OcspCase) -> bytes:
    assert callable(build)
    others = [build(replace(spec, cert=ocsp_pki.issue(ca, now, f"neighbour {i}").cert,
                            status=rng.choice([GOOD, REVOKED])))
              for i in range(rng.randint(1, 2))]
    if rng.random() < 0.3:
        # A second SingleResponse for our own certificate with another status: ours takes
        # the strictest, openssl ocsp the first (docs/conformance.md).
        second = replace(spec, status=REVOKED if spec.status != REVOKED else GOOD)
        others.append(build(second))
        case.kinds.append("several-singles-two-of-ours")
        case.stricter.add("strictest-single")
    else:
        case.kinds.append("several-singles")
    parts = [response, *others]
    rng.shuffle(parts)
    return _merge(parts, signer)


def _dates(rng: random.Random, now: datetime, case: OcspCase
           ) -> tuple[datetime, datetime | None]:
    roll = rng.random()
    if roll < 0.08:
        case.kinds.append("thisupdate-future")
        this_update = now + HOUR
    elif roll < 0.14:
        case.kinds.append("thisupdate-ahead-within-skew")
        this_update = now + 2 * MINUTE
    else:
        this_update = now - timedelta(seconds=rng.randrange(120, 3 * 86400))
    roll = rng.random()
    if roll < 0.15:
        case.kinds.append("nextupdate-absent")
        return this_update, None
    if roll < 0.25:
        case.kinds.append("nextupdate-past")
        return min(this_update, now - 2 * HOUR) - DAY, now - HOUR
    if roll < 0.32 and this_update < now - 10 * MINUTE:
        case.kinds.append("nextupdate-past-within-skew")
        return this_update, now - 2 * MINUTE
    return this_update, max(this_update, now) + timedelta(seconds=rng.randrange(3600, 7 * 86400))


def _max_age(rng: random.Random, now: datetime, this_update: datetime,
             case: OcspCase) -> timedelta:
    age = now - this_update
    case.kinds.append("max-age")
    case.stricter.discard("no-next-update")
    if age <= 3 * MINUTE:
        return 10 * DAY
    roll = rng.random()
    if roll < 0.4:
        case.kinds.append("max-age-exceeded")
        return max(MINUTE, age - max(MINUTE, age / 2))
    if roll < 0.6:
        # Older than max-age by less than the 5-minute clock-skew allowance (issue 12).
        case.kinds.append("max-age-exceeded-within-skew")
        return age - 2 * MINUTE
    return age + 2 * HOUR


@dataclass(frozen=True, slots=True)
class OpenSSLOcsp:
    status: str  # good | revoked | unknown | invalid
    detail: str


_STATUS = re.compile(r"^(?:leaf\.pem: )?(good|revoked|unknown)$", re.M)


def openssl_verdict(case: OcspCase, directory: Path) -> OpenSSLOcsp:
    """``openssl ocsp -respin`` with the CA as trust anchor and issuer (``-verify_other``
    lets it find a directly signing CA that the response does not include)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "response.der").write_bytes(case.response)
    (directory / "leaf.pem").write_bytes(case.leaf.pem())
    (directory / "ca.pem").write_bytes(case.ca.pem())
    argv = ["openssl", "ocsp", "-respin", "response.der", "-issuer", "ca.pem",
            "-cert", "leaf.pem", "-CAfile", "ca.pem", "-verify_other", "ca.pem"]
    if case.max_age is not None:
        argv += ["-status_age", str(int(case.max_age.total_seconds()))]
    done = subprocess.run(argv, cwd=directory, capture_output=True, text=True, timeout=30,
                          check=False)
    output = done.stdout + done.stderr
    if "Response verify OK" not in output:
        return OpenSSLOcsp("invalid", "Response Verify Failure")
    if "No Status found" in output:
        return OpenSSLOcsp("invalid", "No Status found")
    if "Status times invalid" in output:
        return OpenSSLOcsp("invalid", "Status times invalid")
    found = _STATUS.search(done.stdout)
    if found is None:
        raise RuntimeError(f"openssl ocsp said nothing usable: {output}")
    return OpenSSLOcsp(found.group(1), "Response verify OK")


def case_mix(cases: Sequence[OcspCase]) -> Counter[str]:
    mix: Counter[str] = Counter()
    for case in cases:
        mix.update(set(case.kinds))
    return mix
