"""TLSA records (RFC 6698, RFC 7218 names) and chain matching with SMTP semantics (RFC 7672).

Pure code: takes certificates, records, names and ``now``; performs no I/O.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import IntEnum

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.x509.oid import NameOID

from danemilter.certs import issued_by, load_der_certificate, signed_by_key, spki_der
from danemilter.errors import CertificateError, InputError


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
        """Usable for SMTP per RFC 7672 §3.1: DANE-TA/DANE-EE, known selector and digest."""
        if self.usage not in (Usage.DANE_TA, Usage.DANE_EE):
            return False
        if self.selector not in (Selector.CERT, Selector.SPKI):
            return False
        if self.mtype == MatchingType.FULL:
            return True
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
# Bound the issuer search: a hostile server may send many certificates that all sign each
# other (one name, one key), which would make the paths through them factorial in number.
_SIGNATURE_BUDGET = 64
_PATH_STEP_BUDGET = 256


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


@dataclass(frozen=True, slots=True)
class _RecordAnchor:
    """A DANE-TA trust anchor carried in the record itself (``2 0 0`` or ``2 1 0``)."""

    record: TLSARecord
    key: PublicKeyTypes
    cert: x509.Certificate | None


@dataclass(frozen=True, slots=True)
class _TrustPath:
    """Signatures verified from the leaf up to a DANE-TA anchor."""

    record: TLSARecord
    depth: int
    intermediates: tuple[int, ...]


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
    finder = _PathFinder(chain, anchors)
    failure: MatchResult | None = None
    for path in finder.paths():
        problem = _intermediate_problem(chain, path.intermediates, now)
        if problem is None:
            return _check_leaf(chain[0], path, names, now, count)
        failure = failure or MatchResult(False, path.depth, count, problem)
    if failure is not None:
        return failure
    if finder.in_chain:
        depth = min(finder.in_chain)
        return MatchResult(
            False, depth, count,
            f"DANE-TA {_rdata(finder.in_chain[depth])} matches the certificate at depth "
            f"{depth}, but no chain of valid signatures leads from the leaf to it",
        )
    if finder.leaf_record is not None:
        return MatchResult(
            False, None, count,
            f"DANE-TA {_rdata(finder.leaf_record)} matches the leaf certificate, which is "
            "not self-signed and so cannot be its own trust anchor (publish it as DANE-EE 3)",
        )
    return MatchResult(False, None, count, _NO_MATCH)


def _check_leaf(
    leaf: x509.Certificate, path: _TrustPath, names: Sequence[str], now: datetime, count: int
) -> MatchResult:
    problem = _validity_problem(leaf, now, "leaf certificate") or _name_problem(leaf, names)
    if problem is not None:
        return MatchResult(False, path.depth, count, problem)
    return MatchResult(True, path.depth, count,
                       f"matched DANE-TA {_rdata(path.record)} at depth {path.depth}")


class _PathFinder:
    """Finds signature paths from the leaf to DANE-TA anchors, nearest anchor first.

    Anchors are presented certificates matching a record (depth >= 1; the leaf only when
    self-signed, since a DANE-TA record designates an issuer and a self-signed server
    certificate is its own issuer) and anchors carried whole by ``2 0 0`` / ``2 1 0``
    records. Presented certificates may arrive out of order or with extras (cross
    certificates), so issuers are looked up by subject and signature, not by position.
    """

    def __init__(self, chain: Sequence[x509.Certificate], records: list[TLSARecord]) -> None:
        self._chain = chain
        self._signatures = _SIGNATURE_BUDGET
        self._steps = _PATH_STEP_BUDGET
        self._issued: dict[tuple[int, int], bool] = {}
        self._anchored: dict[tuple[int, int], bool] = {}
        self.in_chain: dict[int, TLSARecord] = {}
        self.leaf_record: TLSARecord | None = None
        for index, cert in enumerate(chain):
            record = next((r for r in records if _matches(cert, r)), None)
            if record is None:
                continue
            if index == 0 and not self._issued_by(0, 0):
                self.leaf_record = record
            else:
                self.in_chain[index] = record
        # A record matching a presented certificate anchors there; as a bare key it
        # would also "sign" the certificate below and be reported one position too low.
        presented = {*self.in_chain.values(), self.leaf_record}
        self._external = [
            anchor
            for anchor in map(_record_anchor, records)
            if anchor is not None and anchor.record not in presented
        ]

    def paths(self) -> Iterator[_TrustPath]:
        yield from self._walk([0])

    def _walk(self, path: list[int]) -> Iterator[_TrustPath]:
        if self._steps <= 0:
            return
        self._steps -= 1
        current = path[-1]
        if current in self.in_chain:
            yield _TrustPath(self.in_chain[current], current, tuple(path[1:-1]))
        for number, anchor in enumerate(self._external):
            if self._signed_by_external(current, number):
                yield _TrustPath(anchor.record, self._anchor_depth(anchor, current),
                                 tuple(path[1:]))
        for index in range(len(self._chain)):
            if index not in path and self._issued_by(current, index):
                yield from self._walk([*path, index])

    def _issued_by(self, child: int, issuer: int) -> bool:
        key = (child, issuer)
        if key not in self._issued:
            if self._chain[child].issuer != self._chain[issuer].subject:
                self._issued[key] = False
            elif not self._spend_signature():
                return False
            else:
                self._issued[key] = issued_by(self._chain[child], self._chain[issuer])
        return self._issued[key]

    def _signed_by_external(self, child: int, number: int) -> bool:
        key = (child, number)
        if key not in self._anchored:
            if not self._spend_signature():
                return False
            self._anchored[key] = _signed_by_anchor(self._chain[child], self._external[number])
        return self._anchored[key]

    def _spend_signature(self) -> bool:
        if self._signatures <= 0:
            return False
        self._signatures -= 1
        return True

    def _anchor_depth(self, anchor: _RecordAnchor, signed: int) -> int:
        if anchor.cert is None:
            # A bare key has no certificate to place: report the certificate it signed.
            return signed
        spki = spki_der(anchor.cert)
        for index, cert in enumerate(self._chain):
            if spki is not None and cert.subject == anchor.cert.subject \
                    and spki_der(cert) == spki:
                return index  # the anchor stands in for this presented certificate
        return signed + 1


def _record_anchor(record: TLSARecord) -> _RecordAnchor | None:
    if record.mtype != MatchingType.FULL:
        return None
    try:
        if record.selector == Selector.CERT:
            cert = load_der_certificate(record.data, "DANE-TA record")
            return _RecordAnchor(record, cert.public_key(), cert)
        return _RecordAnchor(record, serialization.load_der_public_key(record.data), None)
    except (CertificateError, ValueError, TypeError, UnsupportedAlgorithm):
        return None


def _signed_by_anchor(cert: x509.Certificate, anchor: _RecordAnchor) -> bool:
    if anchor.cert is not None:
        return issued_by(cert, anchor.cert)
    return signed_by_key(cert, anchor.key)


def _intermediate_problem(
    chain: Sequence[x509.Certificate], intermediates: tuple[int, ...], now: datetime
) -> str | None:
    """RFC 5280 checks on the certificates between leaf and anchor.

    The anchor itself is exempt: its authority comes from the DNSSEC-signed record,
    as a trust anchor's does from a trust store (RFC 5280 §6.1).
    """
    for index in intermediates:
        cert = chain[index]
        what = f"intermediate certificate {_subject(cert)} at depth {index}"
        if not _is_ca(cert):
            return f"{what} is not a CA certificate"
        problem = _validity_problem(cert, now, what)
        if problem is not None:
            return problem
    return None


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        extensions = cert.extensions
        if not extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
            return False
    except (x509.ExtensionNotFound, ValueError):
        return False
    try:
        return extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    except x509.ExtensionNotFound:
        return True  # without keyUsage every use is allowed


def _validity_problem(cert: x509.Certificate, now: datetime, what: str) -> str | None:
    if now < cert.not_valid_before_utc:
        return f"{what} is not yet valid (notBefore {_stamp(cert.not_valid_before_utc)})"
    if now > cert.not_valid_after_utc:
        return f"{what} expired (notAfter {_stamp(cert.not_valid_after_utc)})"
    return None


def _name_problem(leaf: x509.Certificate, names: Sequence[str]) -> str | None:
    presented = _presented_names(leaf)
    if any(_name_matches(p, r) for p in presented for r in names):
        return None
    shown = ", ".join(presented) if presented else "(none)"
    wanted = ", ".join(names) if names else "(none given)"
    return f"name mismatch: certificate names {shown} do not match {wanted}"


def _presented_names(cert: x509.Certificate) -> list[str]:
    """DNS-IDs, or the subject CNs when there are none (RFC 6125 §6.4.4)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns_names = san.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        dns_names = []
    except ValueError:
        return []  # unparsable extensions: claim nothing rather than guess
    if dns_names:
        return dns_names
    return [
        attribute.value
        for attribute in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        if isinstance(attribute.value, str)
    ]


def _name_matches(presented: str, reference: str) -> bool:
    """RFC 6125 §6.4.3, restricted to a whole leftmost ``*`` label matching one label."""
    presented = presented.lower().removesuffix(".")
    reference = reference.lower().removesuffix(".")
    if not presented or not reference:
        return False
    if "*" not in presented:
        return presented == reference
    wild, _, rest = presented.partition(".")
    # A wildcard needs at least two labels after it: "*.com" would cover a whole TLD.
    if wild != "*" or "*" in rest or rest.count(".") < 1:
        return False
    first, dot, reference_rest = reference.partition(".")
    return bool(first) and bool(dot) and reference_rest == rest


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
