"""TLSA records (RFC 6698, RFC 7218 names) and chain matching with SMTP semantics (RFC 7672).

Pure code: takes certificates, records, names and ``now``; performs no I/O.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import IntEnum
from typing import TypeVar

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, SignatureAlgorithmOID

from danemilter.certs import (
    children,
    issued_by,
    name_problem,
    read_tlv,
    signed_by_key,
    spki_der,
)
from danemilter.errors import CertificateError, InputError

_ExtensionT = TypeVar("_ExtensionT", bound=x509.ExtensionType)


class Usage(IntEnum):
    PKIX_TA = 0
    PKIX_EE = 1
    DANE_TA = 2
    DANE_EE = 3


class Selector(IntEnum):
    CERT = 0
    SPKI = 1


class MatchingType(IntEnum):
    FULL = 0
    SHA2_256 = 1
    SHA2_512 = 2


_DIGEST_LENGTH = {MatchingType.SHA2_256: 32, MatchingType.SHA2_512: 64}


@dataclass(frozen=True, slots=True)
class TLSARecord:
    """One TLSA record as published; any field values a zone may hold are representable.

    Whether the record can be used for SMTP is a property (``usable``), not a
    construction error: RFC 7672 §2.2 distinguishes "all records unusable"
    from "no records" and both must be reportable.
    """

    usage: int
    selector: int
    mtype: int
    data: bytes

    def __post_init__(self) -> None:
        for field, value in (("usage", self.usage), ("selector", self.selector),
                             ("matching type", self.mtype)):
            if not 0 <= value <= 255:
                raise InputError(f"TLSA {field} {value} out of range 0-255")
        if not self.data:
            raise InputError("TLSA record has empty certificate association data")

    @classmethod
    def from_text(cls, text: str) -> TLSARecord:
        """Parse presentation form ``"U S M HEX"`` (hex may contain spaces)."""
        fields = text.split()
        if len(fields) < 4:
            raise InputError(f"TLSA record needs 'usage selector mtype hex': {text!r}")
        try:
            usage, selector, mtype = (int(f, 10) for f in fields[:3])
        except ValueError:
            raise InputError(f"TLSA usage, selector and mtype must be numbers: {text!r}") from None
        try:
            data = bytes.fromhex("".join(fields[3:]))
        except ValueError:
            raise InputError(f"TLSA association data is not hex: {text!r}") from None
        return cls(usage, selector, mtype, data)

    def to_text(self) -> str:
        return f"{self.usage} {self.selector} {self.mtype} {self.data.hex()}"

    @property
    def usable(self) -> bool:
        """Usable for SMTP per RFC 7672 §3.1: DANE-TA/DANE-EE, known selector and digest.

        Full(0) data must also be what the selector says, a whole certificate with a
        usable key or a SubjectPublicKeyInfo: a truncated one, one with trailing bytes or
        an invalid EC point can never match (RFC 6698 §2.1.3 defines the field as that
        structure), and OpenSSL, so Postfix, drops it as unusable. A domain whose only
        records are damaged is then "all records unusable" (mandatory unauthenticated
        TLS, RFC 7672 §2.2), not a mismatch.
        """
        if self.usage not in (Usage.DANE_TA, Usage.DANE_EE):
            return False
        if self.selector not in (Selector.CERT, Selector.SPKI):
            return False
        if self.mtype == MatchingType.FULL:
            return _parse_full(self) is not None
        expected = _DIGEST_LENGTH.get(MatchingType(self.mtype)) if self.mtype in (1, 2) else None
        return expected is not None and len(self.data) == expected


def association_data(der: bytes, mtype: int) -> bytes:
    """Hash selected DER content as matching type ``mtype`` prescribes."""
    if mtype == MatchingType.FULL:
        return der
    if mtype == MatchingType.SHA2_256:
        return hashlib.sha256(der).digest()
    if mtype == MatchingType.SHA2_512:
        return hashlib.sha512(der).digest()
    raise InputError(f"unsupported TLSA matching type {mtype}")


# --- Chain matching (RFC 7672 §3, RFC 7671 §5 and §9) ---------------------------------------

_NO_MATCH = "no TLSA record matches the certificate chain"
_SEQUENCE_TAG = 0x30


@dataclass(frozen=True, slots=True)
class MatchResult:
    """Verdict of matching one chain against one TLSA RRset.

    ``depth`` is the chain position of the certificate (or would-be position of the
    record-supplied trust anchor) that a usable record matched, also when a later check
    (signature path, validity, name) failed: it tells an operator which record was in play.
    """

    verified: bool
    depth: int | None
    usable_records: int
    reason: str


def match_chain(
    chain: Sequence[x509.Certificate],
    records: Iterable[TLSARecord],
    names: Sequence[str],
    now: datetime,
) -> MatchResult:
    """Match a server chain (leaf first, as presented) against TLSA records for SMTP.

    DANE-EE(3) is a bare key or certificate pin: no names, no dates, no chain.
    DANE-TA(2) names a trust anchor; the leaf must chain to it by verified signatures,
    be within its validity period at ``now`` and carry one of ``names``.
    """
    all_records = list(records)
    usable = [record for record in all_records if record.usable]
    count = len(usable)
    if not usable:
        suffix = f" ({len(all_records)} unusable)" if all_records else ""
        return MatchResult(False, None, 0, f"no usable TLSA records{suffix}")
    if not chain:
        return MatchResult(False, None, count, "the server presented no certificate")
    active = _strongest_digests(usable)
    leaf = chain[0]
    for record in active:
        if record.usage == Usage.DANE_EE and _matches(leaf, record):
            return MatchResult(True, 0, count, f"matched DANE-EE {_rdata(record)} at depth 0")
    anchors = [record for record in active if record.usage == Usage.DANE_TA]
    if not anchors:
        return MatchResult(False, None, count, _NO_MATCH)
    return _match_dane_ta(chain, anchors, names, _as_utc(now), count)


def generate(
    cert: x509.Certificate, usage: int = 3, selector: int = 1, mtype: int = 1
) -> TLSARecord:
    """The TLSA record that pins ``cert`` with the given parameters."""
    if selector not in (Selector.CERT, Selector.SPKI):
        raise InputError(f"unsupported TLSA selector {selector}")
    selected = _selected(cert, selector)
    if selected is None:
        raise CertificateError("cannot extract the certificate's SubjectPublicKeyInfo")
    return TLSARecord(usage, selector, mtype, association_data(selected, mtype))


def _strongest_digests(records: list[TLSARecord]) -> list[TLSARecord]:
    """Digest algorithm agility, RFC 7671 §9.

    Per (usage, selector) only the strongest digest present counts: a publisher adding
    SHA2-512 records next to SHA2-256 ones is saying SHA2-256 may no longer be trusted,
    so a certificate matching only the weaker digest must not authenticate. Full(0) is
    not a digest and is never pruned (the RFC's example: with "3 1 0", "3 1 1" and
    "3 1 2" present, a key matching "3 1 0" or "3 1 2" is accepted, one matching only
    "3 1 1" is not). Malformed records were dropped before this (``usable``), so a
    wrong-length SHA2-512 record cannot hide a good SHA2-256 one.
    """
    strongest: dict[tuple[int, int], int] = {}
    for record in records:
        if record.mtype != MatchingType.FULL:
            key = (record.usage, record.selector)
            strongest[key] = max(strongest.get(key, record.mtype), record.mtype)
    return [
        record
        for record in records
        if record.mtype in (MatchingType.FULL, strongest.get((record.usage, record.selector)))
    ]


def _match_dane_ta(
    chain: Sequence[x509.Certificate],
    anchors: list[TLSARecord],
    names: Sequence[str],
    now: datetime,
    count: int,
) -> MatchResult:
    """DANE-TA as OpenSSL's X509_verify_cert does it, which is what Postfix delivers by.

    RFC 7671 §5.2 leaves path construction to the implementation; where we built every
    path through cross-signed alternatives, OpenSSL builds one (``_build_path``) and
    Postfix then refuses what we accepted. The records are tried in OpenSSL's order
    (``_openssl_order``) so that the depth reported never depends on record order.
    """
    ordered = _openssl_order(anchors)
    path, trusted = _build_path(chain, ordered, now)
    if trusted is None:
        return _untrusted(chain, ordered, count)
    depth, record, bare = trusted
    problem = _chain_problem(path, bare) or name_problem(path[0], names)
    if problem is not None:
        return MatchResult(False, depth, count, problem)
    failure = _signature_problem(path, bare, now)
    if failure is not None:
        problem, bad_signature = failure
        # An anchor that only the record supplies, and that signed nothing presented, has
        # no place in this chain to report.
        placed = bare or not bad_signature or any(_same_cert(path[depth], c) for c in chain)
        return MatchResult(False, depth if placed else None, count, problem)
    return MatchResult(True, depth, count, f"matched DANE-TA {_rdata(record)} at depth {depth}")


def _openssl_order(records: list[TLSARecord]) -> list[TLSARecord]:
    """OpenSSL keeps TLSA records sorted by usage, selector, then digest strength, all
    descending (ssl/ssl_lib.c dane_tlsa_add); the first that matches is the one in play."""
    return sorted(records, key=lambda r: (-r.usage, -r.selector, -_DIGEST_ORDER[r.mtype]))


_DIGEST_ORDER: dict[int, int] = {MatchingType.FULL: 0, MatchingType.SHA2_256: 1,
                                 MatchingType.SHA2_512: 2}
_NO_PATH = "no chain of valid signatures"


def _build_path(
    chain: Sequence[x509.Certificate], records: list[TLSARecord], now: datetime
) -> tuple[list[x509.Certificate], tuple[int, TLSARecord, bool] | None]:
    """OpenSSL's build_chain for DANE: one path, no backtracking.

    From the leaf, each step takes the first candidate that names the certificate's
    issuer, agrees with its authority key identifier and has the key type of its
    signature (preferring one within its validity dates); signatures are checked only
    once the path is complete. Candidates are the certificates of ``2 0 0`` records, then
    those presented. The path ends at a self-signed certificate, when no candidate is
    left, or at the first certificate above the leaf that a DANE-TA record matches; the
    leaf itself is never a DANE-TA match (a self-signed server certificate belongs in a
    DANE-EE record, RFC 7671 §5.1-5.2). Without such a match, the top of the path may
    still be signed by a ``2 1 0`` record's bare key.

    Returns the path and, when trusted, (anchor depth, record, whether a bare key).
    """
    untrusted = [a.cert for a in map(_record_anchor, records) if a and a.cert is not None]
    untrusted += chain
    path = [chain[0]]
    while not _self_signed(path[-1]):
        issuer = _next_issuer(path, untrusted, now)
        if issuer is None:
            break
        untrusted = [c for c in untrusted if c is not issuer]
        path.append(issuer)
        record = next((r for r in records if _matches(issuer, r)), None)
        if record is not None:
            return path, (len(path) - 1, record, False)
    top = path[-1]
    for anchor in map(_record_anchor, records):
        if anchor is not None and anchor.cert is None and anchor.key is not None \
                and signed_by_key(top, anchor.key):
            return path, (len(path) - 1, anchor.record, True)
    return path, None


def _next_issuer(path: list[x509.Certificate], candidates: list[x509.Certificate],
                 now: datetime) -> x509.Certificate | None:
    """OpenSSL's find_issuer: the first likely issuer in date, else the one expiring last."""
    current = path[-1]
    fallback: x509.Certificate | None = None
    for candidate in candidates:
        if not _likely_issued(candidate, current):
            continue
        if any(_same_cert(candidate, c) for c in path) and not (
                len(path) == 1 and current.subject == current.issuer):
            continue
        if _validity_problem(candidate, now, "") is None:
            return candidate
        if fallback is None or candidate.not_valid_after_utc > fallback.not_valid_after_utc:
            fallback = candidate
    return fallback


def _untrusted(chain: Sequence[x509.Certificate], records: list[TLSARecord],
               count: int) -> MatchResult:
    # Say which record was in play when a presented certificate matches one, though no
    # path reached it: that is the operator's clue (a missing or misordered intermediate).
    for depth, cert in enumerate(chain[1:], start=1):
        record = next((r for r in records if _matches(cert, r)), None)
        if record is not None:
            return MatchResult(
                False, depth, count,
                f"DANE-TA {_rdata(record)} matches the certificate at depth {depth}, "
                f"but {_NO_PATH} leads from the leaf to it",
            )
    record = next((r for r in records if _matches(chain[0], r)), None)
    if record is not None:
        return MatchResult(
            False, None, count,
            f"DANE-TA {_rdata(record)} matches the leaf certificate, which cannot be its "
            "own trust anchor (publish it as DANE-EE 3)",
        )
    return MatchResult(False, None, count, _NO_MATCH)


def _chain_problem(path: list[x509.Certificate], bare: bool) -> str | None:
    """OpenSSL's check_chain for the SSL server purpose (RFC 5280 §4.2.1.3, §4.2.1.9).

    Every certificate above the leaf must be a CA, the DANE-TA anchor included when it is
    a certificate (its authority comes from the record, but it is still used as an
    issuer); only the top may be a CA by keyUsage or as a v1 root, without
    basicConstraints. Path length constraints and unknown critical extensions apply too.
    """
    non_self_issued = 0
    for index, cert in enumerate(path):
        what = _what(cert, index, index == len(path) - 1 and not bare)
        if _unknown_critical(cert):
            return f"{what} has an unknown critical extension"
        if _eku_excludes_server(cert):
            return f"{what} has an extendedKeyUsage without serverAuth"
        if index == 0:
            if not _leaf_key_usage_ok(cert):
                return f"{what} has a keyUsage that does not allow a TLS server key"
            continue
        kind = _ca_kind(cert)
        if kind == _NOT_CA or (index < len(path) - 1 and kind != _CA_BY_CONSTRAINTS):
            return f"{what} is not a CA certificate"
        limit = _path_length(cert)
        if index > 1 and limit is not None and non_self_issued > limit:
            return f"{what} allows only {limit} intermediate certificates below it"
        if cert.subject != cert.issuer:
            non_self_issued += 1
    return None


def _signature_problem(path: list[x509.Certificate], bare: bool,
                       now: datetime) -> tuple[str, bool] | None:
    """OpenSSL's internal_verify: signatures and dates from the anchor down to the leaf.

    A self-signed anchor's own dates are checked too (OpenSSL: "in addition to RFC 5280,
    do also for trusted (root) cert"); an anchor that is an intermediate only lends its
    key, so its dates are not (RFC 5280 §6.1.1 trust anchor information carries none).
    A bare key has no dates; the certificate it signed is checked. The flag says whether
    a signature (rather than a date) failed.
    """
    top = len(path) - 1
    first = top if bare or _likely_issued(path[top], path[top]) else top - 1
    for index in range(first, -1, -1):
        cert = path[index]
        what = _what(cert, index, index == top and not bare)
        if index < top and not issued_by(cert, path[index + 1]):
            return (f"the signature of {what} does not verify with the key of "
                    f"{_subject(path[index + 1])}: {_NO_PATH} leads to the DANE-TA anchor",
                    True)
        problem = _validity_problem(cert, now, what)
        if problem is not None:
            return problem, False
    return None


def _what(cert: x509.Certificate, index: int, anchor: bool) -> str:
    if index == 0:
        return "leaf certificate"
    role = "DANE-TA anchor" if anchor else "intermediate certificate"
    return f"{role} {_subject(cert)} at depth {index}"


@dataclass(frozen=True, slots=True)
class _RecordAnchor:
    """A DANE-TA trust anchor carried in the record itself (``2 0 0`` or ``2 1 0``).

    ``key`` is None for a key OpenSSL decodes but cryptography will not load (an RSA key
    with an even exponent, say): such a key signs nothing, yet its record is usable.
    """

    record: TLSARecord
    key: PublicKeyTypes | None
    cert: x509.Certificate | None


def _record_anchor(record: TLSARecord) -> _RecordAnchor | None:
    if record.usage != Usage.DANE_TA or record.mtype != MatchingType.FULL:
        return None
    return _parse_full(record)


def _parse_full(record: TLSARecord) -> _RecordAnchor | None:
    """A Full(0) record's certificate or SubjectPublicKeyInfo, as OpenSSL's d2i_X509 /
    d2i_PUBKEY must accept it (the whole input, with a decodable key); None when damaged."""
    data = record.data
    try:
        if record.selector == Selector.CERT:
            cert = x509.load_der_x509_certificate(data)
            if cert.public_bytes(serialization.Encoding.DER) != data:
                return None  # trailing bytes
            spki = spki_der(cert)
            return _RecordAnchor(record, _public_key(spki), cert) \
                if spki is not None and _decodable_key(spki) else None
        if record.selector == Selector.SPKI and _decodable_key(data):
            return _RecordAnchor(record, _public_key(data), None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return None
    return None


def _public_key(spki: bytes) -> PublicKeyTypes | None:
    try:
        return serialization.load_der_public_key(spki)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return None


_RSA_ENCRYPTION = bytes.fromhex("06092a864886f70d010101")
_INTEGER, _BIT_STRING = 0x02, 0x03


def _decodable_key(spki: bytes) -> bool:
    """Whether OpenSSL's d2i_PUBKEY takes these bytes: what cryptography loads, and RSA
    keys it refuses on arithmetic grounds (OpenSSL decodes n and e without judging them)."""
    if _public_key(spki) is not None:
        return True
    try:
        outer = read_tlv(spki, 0)
        if outer.tag != _SEQUENCE_TAG or outer.end != len(spki):
            return False
        algorithm, key_bits = children(spki, outer)
        oid = children(spki, algorithm)[0]
        if spki[oid.start:oid.end] != _RSA_ENCRYPTION or key_bits.tag != _BIT_STRING \
                or spki[key_bits.content] != 0:
            return False
        numbers = read_tlv(spki, key_bits.content + 1, key_bits.end)
        if numbers.tag != _SEQUENCE_TAG or numbers.end != key_bits.end:
            return False
        parts = children(spki, numbers)
    except (ValueError, IndexError):
        return False
    return len(parts) == 2 and all(p.tag == _INTEGER for p in parts)


# --- OpenSSL's certificate predicates (crypto/x509/v3_purp.c, x509_vfy.c) -------------------

_NOT_CA = 0
_CA_BY_CONSTRAINTS = 1
_SERVER_EKUS = frozenset({
    ExtendedKeyUsageOID.SERVER_AUTH.dotted_string,
    "2.16.840.1.113730.4.1",   # Netscape Server Gated Crypto
    "1.3.6.1.4.1.311.10.3.3",  # Microsoft Server Gated Crypto
})
_S = SignatureAlgorithmOID
_KEY_FOR_SIGNATURE: dict[x509.ObjectIdentifier, type] = {
    **dict.fromkeys((_S.RSA_WITH_SHA1, _S.RSA_WITH_SHA224, _S.RSA_WITH_SHA256,
                     _S.RSA_WITH_SHA384, _S.RSA_WITH_SHA512, _S.RSASSA_PSS,
                     _S.RSA_WITH_SHA3_224, _S.RSA_WITH_SHA3_256, _S.RSA_WITH_SHA3_384,
                     _S.RSA_WITH_SHA3_512, _S.RSA_WITH_MD5), rsa.RSAPublicKey),
    **dict.fromkeys((_S.ECDSA_WITH_SHA1, _S.ECDSA_WITH_SHA224, _S.ECDSA_WITH_SHA256,
                     _S.ECDSA_WITH_SHA384, _S.ECDSA_WITH_SHA512, _S.ECDSA_WITH_SHA3_224,
                     _S.ECDSA_WITH_SHA3_256, _S.ECDSA_WITH_SHA3_384, _S.ECDSA_WITH_SHA3_512),
                    ec.EllipticCurvePublicKey),
    **dict.fromkeys((_S.DSA_WITH_SHA1, _S.DSA_WITH_SHA224, _S.DSA_WITH_SHA256),
                    dsa.DSAPublicKey),
    _S.ED25519: ed25519.Ed25519PublicKey,
    _S.ED448: ed448.Ed448PublicKey,
}


def _extension(cert: x509.Certificate, kind: type[_ExtensionT]) -> _ExtensionT | None:
    try:
        return cert.extensions.get_extension_for_class(kind).value
    except (x509.ExtensionNotFound, ValueError):
        return None


def _likely_issued(issuer: x509.Certificate, cert: x509.Certificate) -> bool:
    """ossl_x509_likely_issued: issuer name, authority key identifier and key type agree."""
    try:
        if issuer.subject != cert.issuer:
            return False
    except ValueError:
        return False
    akid = _extension(cert, x509.AuthorityKeyIdentifier)
    if akid is not None:
        skid = _extension(issuer, x509.SubjectKeyIdentifier)
        if akid.key_identifier is not None and skid is not None \
                and akid.key_identifier != skid.digest:
            return False
        if akid.authority_cert_serial_number is not None \
                and akid.authority_cert_serial_number != issuer.serial_number:
            return False
    return _key_fits_signature(issuer, cert)


def _key_fits_signature(issuer: x509.Certificate, cert: x509.Certificate) -> bool:
    """OpenSSL's check_sig_alg_match: the issuer's key type is the signature's."""
    try:
        key = issuer.public_key()
        wanted = _KEY_FOR_SIGNATURE.get(cert.signature_algorithm_oid)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return False
    return wanted is not None and isinstance(key, wanted)


def _self_signed(cert: x509.Certificate) -> bool:
    """OpenSSL's EXFLAG_SS: self-issued with matching key identifiers (no signature check)."""
    return _likely_issued(cert, cert)


def _same_cert(one: x509.Certificate, other: x509.Certificate) -> bool:
    return one is other or one == other


def _ca_kind(cert: x509.Certificate) -> int:
    """X509_check_ca: 1 by basicConstraints; 3, 4 or 5 (v1 root, keyUsage, Netscape type)
    only without basicConstraints; 0 not a CA."""
    usage = _extension(cert, x509.KeyUsage)
    if usage is not None and not usage.key_cert_sign:
        return _NOT_CA
    constraints = _extension(cert, x509.BasicConstraints)
    if constraints is not None:
        return _CA_BY_CONSTRAINTS if constraints.ca else _NOT_CA
    if cert.version == x509.Version.v1 and _self_signed(cert):
        return 3
    if usage is not None:
        return 4
    return _NOT_CA


def _path_length(cert: x509.Certificate) -> int | None:
    constraints = _extension(cert, x509.BasicConstraints)
    return constraints.path_length if constraints is not None and constraints.ca else None


def _eku_excludes_server(cert: x509.Certificate) -> bool:
    usages = _extension(cert, x509.ExtendedKeyUsage)
    return usages is not None and not any(u.dotted_string in _SERVER_EKUS for u in usages)


def _leaf_key_usage_ok(cert: x509.Certificate) -> bool:
    usage = _extension(cert, x509.KeyUsage)
    return usage is None or usage.digital_signature or usage.key_encipherment \
        or usage.key_agreement


def _unknown_critical(cert: x509.Certificate) -> bool:
    try:
        return any(e.critical and isinstance(e.value, x509.UnrecognizedExtension)
                   for e in cert.extensions)
    except ValueError:
        return True  # unparsable extensions: OpenSSL refuses the certificate too



def _validity_problem(cert: x509.Certificate, now: datetime, what: str) -> str | None:
    if now < cert.not_valid_before_utc:
        return f"{what} is not yet valid (notBefore {_stamp(cert.not_valid_before_utc)})"
    if now > cert.not_valid_after_utc:
        return f"{what} expired (notAfter {_stamp(cert.not_valid_after_utc)})"
    return None


def _matches(cert: x509.Certificate, record: TLSARecord) -> bool:
    selected = _selected(cert, record.selector)
    return selected is not None and association_data(selected, record.mtype) == record.data


def _selected(cert: x509.Certificate, selector: int) -> bytes | None:
    if selector == Selector.CERT:
        return cert.public_bytes(serialization.Encoding.DER)
    if selector == Selector.SPKI:
        return spki_der(cert)
    return None


def _rdata(record: TLSARecord) -> str:
    return f"{record.usage} {record.selector} {record.mtype}"


def _subject(cert: x509.Certificate) -> str:
    try:
        return cert.subject.rfc4514_string() or "(empty subject)"
    except ValueError:
        return "(unprintable subject)"


def _stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def _as_utc(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)
