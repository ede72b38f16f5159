"""OCSP responses (RFC 6960): verification for a certificate, and staple bookkeeping.

Pure code: takes DER bytes, certificates and ``now``; performs no I/O (fetching is
``danemilter.ocsp_fetch``). Hostile input never raises out of :func:`verify_response`:
anything that does not parse is an ``invalid`` verdict naming the rule that failed.

The rules are DESIGN.md "OCSP semantics". Choices made here:

* ``nextUpdate`` is required. A response without it is ``invalid`` (reason
  ``no-next-update``) unless the caller passes ``max_age``: then the proof is taken to
  live until ``thisUpdate + max_age``. ``max_age`` also caps responses that do carry a
  ``nextUpdate`` (reason ``too-old``), as BoringSSL and ``openssl ocsp -status_age`` do.
* The "life of the proof" is ``[thisUpdate, end]`` where ``end`` is ``nextUpdate`` (or
  ``thisUpdate + max_age``, whichever is sooner). A delegated signer's certificate must
  cover all of it, and ``producedAt``.
* Several SingleResponses for our CertID: the strictest wins (revoked, then a
  date-invalid one, then unknown, then good), so a responder cannot hide a revocation
  behind a second "good" entry.
* SHA-1 signatures are accepted: the response is signed by the responder over its own
  data; rejecting SHA-1 would reject most of the deployed responders this tool meets.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID, SignatureAlgorithmOID

from danemilter.certs import (
    SignatureParams,
    Tlv,
    UnsupportedSignature,
    children,
    issued_by,
    public_key_bits,
    read_tlv,
    verify_signature,
)
from danemilter.errors import CertificateError, InputError

logger = logging.getLogger(__name__)


class CheckStatus(StrEnum):
    """What ``danemilter ocsp check`` reports (its JSON ``status``)."""

    GOOD = "good"
    REVOKED = "revoked"
    UNKNOWN = "unknown"
    INVALID = "invalid"


DEFAULT_SKEW = timedelta(minutes=5)

# Extensions whose meaning we know and which cannot turn a status into a different
# one, so a critical flag on them is harmless. Anything else critical is refused
# (RFC 5280 §4.2 semantics, carried to OCSP by RFC 6960 §4.4).
_KNOWN_RESPONSE_EXTENSIONS = frozenset({
    "1.3.6.1.5.5.7.48.1.2",  # nonce (RFC 6960 §4.4.1)
    "1.3.6.1.5.5.7.48.1.9",  # extended revoked definition (RFC 6960 §4.4.8)
})
_KNOWN_SINGLE_EXTENSIONS = frozenset({
    "1.3.6.1.5.5.7.48.1.3",  # CRL references (RFC 6960 §4.4.2)
    "1.3.6.1.5.5.7.48.1.6",  # archive cutoff (RFC 6960 §4.4.4)
    "2.5.29.21",  # CRL reason code
    "2.5.29.24",  # invalidity date
    "1.3.6.1.4.1.11129.2.4.5",  # signed certificate timestamps (RFC 6962 §3.3)
})

_RSA_OIDS = frozenset({
    SignatureAlgorithmOID.RSA_WITH_SHA1, SignatureAlgorithmOID.RSA_WITH_SHA224,
    SignatureAlgorithmOID.RSA_WITH_SHA256, SignatureAlgorithmOID.RSA_WITH_SHA384,
    SignatureAlgorithmOID.RSA_WITH_SHA512,
})
_ECDSA_OIDS = frozenset({
    SignatureAlgorithmOID.ECDSA_WITH_SHA1, SignatureAlgorithmOID.ECDSA_WITH_SHA224,
    SignatureAlgorithmOID.ECDSA_WITH_SHA256, SignatureAlgorithmOID.ECDSA_WITH_SHA384,
    SignatureAlgorithmOID.ECDSA_WITH_SHA512,
})

_STATUS_NAMES: dict[ocsp.OCSPCertStatus, CheckStatus] = {
    ocsp.OCSPCertStatus.GOOD: CheckStatus.GOOD,
    ocsp.OCSPCertStatus.REVOKED: CheckStatus.REVOKED,
    ocsp.OCSPCertStatus.UNKNOWN: CheckStatus.UNKNOWN,
}
# The strictest matching SingleResponse decides (see the module docstring).
_SEVERITY = {CheckStatus.GOOD: 0, CheckStatus.UNKNOWN: 1, CheckStatus.INVALID: 2,
             CheckStatus.REVOKED: 3}

# Responder statuses that mean "ask again later" rather than "your request is refused".
TEMPORARY_RESPONDER_STATUSES = frozenset({"TRY_LATER", "INTERNAL_ERROR"})


@dataclass(frozen=True, slots=True)
class OCSPVerdict:
    """What a response proves about one certificate.

    ``reason`` is ``"ok"`` when the response verified (whatever the status it
    carries) and otherwise names the rule that failed; ``detail`` says it in words.
    ``expires`` is the end of the proof's life (see the module docstring).
    """

    status: CheckStatus
    reason: str
    detail: str = ""
    this_update: datetime | None = None
    next_update: datetime | None = None
    expires: datetime | None = None
    produced_at: datetime | None = None
    revocation_time: datetime | None = None
    revocation_reason: str | None = None
    responder_status: str | None = None
    signer: str | None = None
    signer_delegated: bool = False
    signer_not_after: datetime | None = None
    signer_der: bytes | None = None
    signer_included: bool = False

    @property
    def good(self) -> bool:
        return self.status == CheckStatus.GOOD

    def remaining(self, now: datetime) -> timedelta | None:
        """Life left in the proof at ``now``; None for a response that proves nothing."""
        if self.status == CheckStatus.INVALID or self.expires is None:
            return None
        return self.expires - now

    def to_dict(self) -> dict[str, object]:
        """The JSON shape of ``danemilter ocsp check --json``."""

        def iso(value: datetime | None) -> str | None:
            return value.isoformat().replace("+00:00", "Z") if value is not None else None

        return {
            "status": self.status,
            "reason": self.reason,
            "detail": self.detail,
            "this_update": iso(self.this_update),
            "next_update": iso(self.next_update),
            "expires": iso(self.expires),
            "produced_at": iso(self.produced_at),
            "revocation_time": iso(self.revocation_time),
            "revocation_reason": self.revocation_reason,
            "responder_status": self.responder_status,
            "signer": self.signer,
            "signer_delegated": self.signer_delegated,
            "signer_not_after": iso(self.signer_not_after),
        }


class _Refused(Exception):
    """Internal: a rule failed; carries the verdict's reason and detail."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


# --------------------------------------------------------------------------- DER
# The strict DER reader (danemilter.certs) is needed here: cryptography does not expose
# per-SingleResponse extensions (nor parses the SCT extension leniently), and
# re-encoding the certs field of a signed response needs the raw pieces.

_SEQUENCE = 0x30
_DER = Encoding.DER


def _der_length(length: int) -> bytes:
    if length < 0x80:
        return bytes([length])
    raw = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def _der(tag: int, content: bytes) -> bytes:
    return bytes([tag]) + _der_length(len(content)) + content


def _der_oid(data: bytes, tlv: Tlv) -> str:
    if tlv.tag != 0x06 or tlv.end == tlv.content:
        raise ValueError("expected an OBJECT IDENTIFIER")
    raw = data[tlv.content:tlv.end]
    arcs: list[int] = []
    value = 0
    for byte in raw:
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            arcs.append(value)
            value = 0
    if raw[-1] & 0x80:
        raise ValueError("truncated OBJECT IDENTIFIER")
    first = min(arcs[0] // 40, 2)
    return ".".join(str(arc) for arc in [first, arcs[0] - 40 * first, *arcs[1:]])


@dataclass(frozen=True, slots=True)
class _BasicLayout:
    """Where the pieces of a successful OCSPResponse sit in its DER."""

    status_tlv: bytes  # the responseStatus ENUMERATED, encoded
    response_type: bytes  # the responseType OID, encoded
    tbs: bytes  # tbsResponseData, encoded
    signature_algorithm: bytes
    signature: bytes
    certs: tuple[bytes, ...]  # each an encoded Certificate
    response_extensions: tuple[tuple[str, bool], ...]
    single_extensions: tuple[tuple[tuple[str, bool], ...], ...]


def _extensions(data: bytes, wrapper: Tlv) -> tuple[tuple[str, bool], ...]:
    """(oid, critical) for an EXPLICIT-tagged ``Extensions``."""
    (sequence,) = children(data, wrapper)
    result = []
    for ext in children(data, sequence):
        parts = children(data, ext)
        if ext.tag != _SEQUENCE or not 2 <= len(parts) <= 3:
            raise ValueError("malformed Extension")
        critical = False
        if len(parts) == 3:
            if parts[1].tag != 0x01 or parts[1].end - parts[1].content != 1:
                raise ValueError("malformed Extension critical flag")
            critical = data[parts[1].content] != 0
        result.append((_der_oid(data, parts[0]), critical))
    return tuple(result)


def _layout(der: bytes) -> _BasicLayout:
    outer = read_tlv(der, 0)
    if outer.tag != _SEQUENCE or outer.end != len(der):
        raise ValueError("OCSPResponse is not one SEQUENCE")
    status, bytes_wrapper = children(der, outer)
    (response_bytes,) = children(der, bytes_wrapper)
    response_type, octets = children(der, response_bytes)
    if octets.tag != 0x04:
        raise ValueError("ResponseBytes.response is not an OCTET STRING")
    basic = read_tlv(der, octets.content, octets.end)
    if basic.end != octets.end:
        raise ValueError("trailing data after BasicOCSPResponse")
    fields = children(der, basic)
    if len(fields) not in (3, 4):
        raise ValueError("malformed BasicOCSPResponse")
    tbs, signature_algorithm, signature = fields[:3]
    certs: tuple[bytes, ...] = ()
    if len(fields) == 4:
        if fields[3].tag != 0xA0:
            raise ValueError("malformed BasicOCSPResponse certs")
        (cert_list,) = children(der, fields[3])
        certs = tuple(der[c.start:c.end] for c in children(der, cert_list))

    response_extensions: tuple[tuple[str, bool], ...] = ()
    singles: list[tuple[tuple[str, bool], ...]] = []
    tbs_fields = children(der, tbs)
    index = 1 if tbs_fields and tbs_fields[0].tag == 0xA0 else 0  # skip [0] version
    if len(tbs_fields) < index + 3 or tbs_fields[index + 2].tag != _SEQUENCE:
        raise ValueError("malformed ResponseData")
    responses = tbs_fields[index + 2]  # after responderID and producedAt
    for extra in tbs_fields[index + 3:]:
        if extra.tag == 0xA1:
            response_extensions = _extensions(der, extra)
    for single in children(der, responses):
        single_extensions: tuple[tuple[str, bool], ...] = ()
        for part in children(der, single)[3:]:  # after certID, certStatus, thisUpdate
            if part.tag == 0xA1:
                single_extensions = _extensions(der, part)
        singles.append(single_extensions)
    return _BasicLayout(
        status_tlv=der[status.start:status.end],
        response_type=der[response_type.start:response_type.end],
        tbs=der[tbs.start:tbs.end],
        signature_algorithm=der[signature_algorithm.start:signature_algorithm.end],
        signature=der[signature.start:signature.end],
        certs=certs,
        response_extensions=response_extensions,
        single_extensions=tuple(singles),
    )


def with_certificate(response_der: bytes, certificate: x509.Certificate) -> bytes:
    """Return the response with ``certificate`` appended to the BasicOCSPResponse certs.

    The certs field lies outside ``tbsResponseData``, so the signature stays valid.
    A certificate already present is not added twice. Raises ValueError for a
    response that is not a well-formed successful basic response.
    """
    layout = _layout(response_der)
    cert_der = certificate.public_bytes(_DER)
    if cert_der in layout.certs:
        return response_der
    certs = _der(0xA0, _der(_SEQUENCE, b"".join((*layout.certs, cert_der))))
    basic = _der(_SEQUENCE, layout.tbs + layout.signature_algorithm + layout.signature + certs)
    response_bytes = _der(_SEQUENCE, layout.response_type + _der(0x04, basic))
    return _der(_SEQUENCE, layout.status_tlv + _der(0xA0, response_bytes))


# ----------------------------------------------------------------- inputs

_PEM_BLOCK = re.compile(
    rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n(.*?)-----END \1-----", re.DOTALL
)


def _pem_blocks(data: bytes, label: bytes) -> list[bytes]:
    """Decoded PEM blocks with ``label``; cryptography has no PEM reader for OCSP."""
    blocks = []
    for match in _PEM_BLOCK.finditer(data):
        if match.group(1) == label:
            try:
                blocks.append(base64.b64decode(b"".join(match.group(2).split()), validate=True))
            except (binascii.Error, ValueError) as exc:
                raise InputError(f"bad base64 in PEM {label.decode()} block") from exc
    return blocks


def response_der_from_file(data: bytes) -> bytes:
    """The DER OCSPResponse in a file: raw DER, or the first ``OCSP RESPONSE`` PEM block.

    Raises InputError only for a PEM file without such a block; DER garbage is passed
    through so the verifier can call it invalid.
    """
    if b"-----BEGIN " in data:
        blocks = _pem_blocks(data, b"OCSP RESPONSE")
        if not blocks:
            raise InputError("no OCSP RESPONSE PEM block in the file")
        return blocks[0]
    return data


# ----------------------------------------------------------------- helpers


def _describe(cert: x509.Certificate) -> str:
    return f"{cert.subject.rfc4514_string()} (serial {cert.serial_number:x})"


def _has_ocsp_signing(cert: x509.Certificate) -> bool:
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return False
    return ExtendedKeyUsageOID.OCSP_SIGNING in eku


def _check_signature(response: ocsp.OCSPResponse, signer: x509.Certificate) -> None:
    oid = response.signature_algorithm_oid
    key = signer.public_key()
    try:
        # The OID, not the key, says what was signed how: a key of the right type is
        # required too, so an Ed448 key cannot pass for an Ed25519 signature.
        params: SignatureParams
        digest: hashes.HashAlgorithm | None = None
        if oid in _RSA_OIDS and isinstance(key, rsa.RSAPublicKey):
            params = padding.PKCS1v15()
            digest = response.signature_hash_algorithm
        elif oid in _ECDSA_OIDS and isinstance(key, ec.EllipticCurvePublicKey):
            algorithm = response.signature_hash_algorithm
            assert algorithm is not None  # every OID in _ECDSA_OIDS names a hash
            params = ec.ECDSA(algorithm)
        elif ((oid == SignatureAlgorithmOID.ED25519
               and isinstance(key, ed25519.Ed25519PublicKey))
              or (oid == SignatureAlgorithmOID.ED448 and isinstance(key, ed448.Ed448PublicKey))):
            params = None
        else:
            raise UnsupportedSignature("no scheme for this algorithm and key")
        verified = verify_signature(key, response.signature, response.tbs_response_bytes,
                                    params, digest)
    except UnsupportedSignature as exc:
        raise _Refused("unsupported-signature",
                       f"signature algorithm {oid.dotted_string} with a "
                       f"{type(key).__name__} signer key is not supported") from exc
    except CertificateError as exc:
        raise _Refused("unsupported-signature", str(exc)) from exc
    except (UnsupportedAlgorithm, ValueError) as exc:
        raise _Refused("unsupported-signature", f"cannot verify the signature: {exc}") from exc
    if not verified:
        raise _Refused("bad-signature", "the response signature does not verify")


def _matches(single: ocsp.OCSPSingleResponse, cert: x509.Certificate,
             issuer: x509.Certificate, key_bits: bytes) -> bool:
    try:
        algorithm = single.hash_algorithm
    except UnsupportedAlgorithm:
        return False  # a CertID we cannot compute cannot be ours
    if single.serial_number != cert.serial_number:
        return False
    name_hash = hashes.Hash(algorithm)
    name_hash.update(issuer.subject.public_bytes())
    key_hash = hashes.Hash(algorithm)
    key_hash.update(key_bits)
    return (single.issuer_name_hash == name_hash.finalize()
            and single.issuer_key_hash == key_hash.finalize())


@dataclass(frozen=True, slots=True)
class _Signer:
    cert: x509.Certificate
    delegated: bool
    included: bool


def _find_signer(response: ocsp.OCSPResponse, issuer: x509.Certificate,
                 extra_certs: Sequence[x509.Certificate]) -> _Signer:
    """Identify and authorise the signer, and check the signature with it."""
    included = list(response.certificates)
    pool = [(c, True) for c in included] + [(c, False) for c in extra_certs
                                              if c not in included]
    name = response.responder_name
    key_hash = response.responder_key_hash

    def is_named(candidate: x509.Certificate) -> bool:
        if name is not None:
            return candidate.subject == name
        return key_hash is not None and (
            hashlib.sha1(public_key_bits(candidate)).digest() == key_hash)

    if is_named(issuer):
        _check_signature(response, issuer)
        return _Signer(issuer, delegated=False, included=issuer in included)

    candidates = [(c, inc) for c, inc in pool if is_named(c)]
    if not candidates:
        who = name.rfc4514_string() if name is not None else f"key {key_hash!r:.60}"
        raise _Refused("signer-not-found",
                       f"responder {who} is neither the issuer nor a certificate in the response")
    failure: _Refused | None = None
    for candidate, inc in candidates:
        try:
            if not issued_by(candidate, issuer):
                raise _Refused("signer-not-issued-by-issuer",
                               f"delegated responder {_describe(candidate)} is not issued by "
                               f"{issuer.subject.rfc4514_string()}")
            if not _has_ocsp_signing(candidate):
                raise _Refused("signer-not-authorized",
                               f"delegated responder {_describe(candidate)} lacks the "
                               "OCSPSigning extended key usage")
            _check_signature(response, candidate)
            return _Signer(candidate, delegated=True, included=inc)
        except _Refused as refused:
            failure = failure or refused
    assert failure is not None
    raise failure


# ----------------------------------------------------------------- verification


def verify_response(
    response_der: bytes,
    cert: x509.Certificate,
    issuer: x509.Certificate,
    now: datetime,
    *,
    skew: timedelta = DEFAULT_SKEW,
    max_age: timedelta | None = None,
    extra_certs: Iterable[x509.Certificate] = (),
) -> OCSPVerdict:
    """Verify ``response_der`` for ``cert`` issued by ``issuer`` at ``now`` (aware, UTC).

    ``extra_certs`` are candidate delegated-signer certificates known out of band
    (the responder may omit its own certificate); they get no more trust than the
    response's own certs.
    """
    try:
        return _verify(response_der, cert, issuer, now, skew=skew, max_age=max_age,
                       extra_certs=tuple(extra_certs))
    except _Refused as refused:
        return OCSPVerdict(CheckStatus.INVALID, refused.reason, refused.detail)
    except (ValueError, UnsupportedAlgorithm, CertificateError) as exc:
        # cryptography parses parts of a response (and of the certificates inside it)
        # lazily; _force_parse surfaces the parts we use, this is the net for the rest
        # (certs.public_key_bits turns an unreadable key into CertificateError).
        logger.debug("late parse failure: %s", exc)
        return OCSPVerdict(CheckStatus.INVALID, "malformed",
                           f"the response does not parse: {exc}")


def _verify(
    der: bytes,
    cert: x509.Certificate,
    issuer: x509.Certificate,
    now: datetime,
    *,
    skew: timedelta,
    max_age: timedelta | None,
    extra_certs: tuple[x509.Certificate, ...],
) -> OCSPVerdict:
    try:
        response = ocsp.load_der_ocsp_response(der)
    except ValueError as exc:
        raise _Refused("malformed", f"the response does not parse: {exc}") from exc
    if response.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
        name = response.response_status.name
        return OCSPVerdict(CheckStatus.INVALID, "responder-error",
                           f"the responder answered {name} instead of a status",
                           responder_status=name)
    try:
        layout = _layout(der)
        singles = list(response.responses)
        produced_at = response.produced_at_utc
        _force_parse(response, singles)
    except ValueError as exc:
        raise _Refused("malformed", f"the response does not parse: {exc}") from exc
    if len(singles) != len(layout.single_extensions):
        raise _Refused("malformed", "inconsistent SingleResponse count")

    key_bits = public_key_bits(issuer)
    matching = [index for index, single in enumerate(singles)
                if _matches(single, cert, issuer, key_bits)]
    if not matching:
        raise _Refused("no-matching-response",
                       f"no SingleResponse for serial {cert.serial_number:x} issued by "
                       f"{issuer.subject.rfc4514_string()} ({len(singles)} in the response)")

    signer = _find_signer(response, issuer, extra_certs)

    for oid, critical in layout.response_extensions:
        if critical and oid not in _KNOWN_RESPONSE_EXTENSIONS:
            raise _Refused("critical-extension", f"unknown critical response extension {oid}")
    for index in matching:
        for oid, critical in layout.single_extensions[index]:
            if critical and oid not in _KNOWN_SINGLE_EXTENSIONS:
                raise _Refused("critical-extension",
                               f"unknown critical SingleResponse extension {oid}")

    if not cert.not_valid_before_utc <= produced_at <= cert.not_valid_after_utc:
        raise _Refused("produced-at-outside-validity",
                       f"producedAt {produced_at:%Y-%m-%dT%H:%M:%SZ} is outside the "
                       "certificate's validity")

    chosen: tuple[int, OCSPVerdict] | None = None
    for index in matching:
        verdict = _judge_single(singles[index], now, skew, max_age)
        if chosen is None or _SEVERITY[verdict.status] > chosen[0]:
            chosen = (_SEVERITY[verdict.status], verdict)
    assert chosen is not None
    verdict = chosen[1]
    if verdict.status == CheckStatus.INVALID:
        raise _Refused(verdict.reason, verdict.detail)
    assert verdict.this_update is not None and verdict.expires is not None

    signer_cert = signer.cert
    if signer.delegated:
        # Exim's fetch script kept proofs whose signer expired first: clients then
        # reject the staple before its nextUpdate. The signer must cover the whole life.
        start = min(verdict.this_update, produced_at)
        if not (signer_cert.not_valid_before_utc <= start
                and verdict.expires <= signer_cert.not_valid_after_utc):
            raise _Refused(
                "signer-validity",
                f"delegated responder {_describe(signer_cert)} is valid "
                f"{signer_cert.not_valid_before_utc:%Y-%m-%dT%H:%M:%SZ} to "
                f"{signer_cert.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}, not for the whole "
                f"life of the proof ({start:%Y-%m-%dT%H:%M:%SZ} to "
                f"{verdict.expires:%Y-%m-%dT%H:%M:%SZ})")

    return OCSPVerdict(
        status=verdict.status,
        reason="ok",
        detail=verdict.detail,
        this_update=verdict.this_update,
        next_update=verdict.next_update,
        expires=verdict.expires,
        produced_at=produced_at,
        revocation_time=verdict.revocation_time,
        revocation_reason=verdict.revocation_reason,
        responder_status="SUCCESSFUL",
        signer=("delegated responder " if signer.delegated else "issuer ")
        + _describe(signer_cert),
        signer_delegated=signer.delegated,
        signer_not_after=signer_cert.not_valid_after_utc,
        signer_der=signer_cert.public_bytes(_DER),
        signer_included=signer.included,
    )


_LAZY_RESPONSE_FIELDS = ("responder_name", "responder_key_hash", "certificates", "signature",
                         "signature_algorithm_oid", "tbs_response_bytes")
_LAZY_SINGLE_FIELDS = ("serial_number", "issuer_name_hash", "issuer_key_hash",
                       "certificate_status", "this_update_utc", "next_update_utc",
                       "revocation_time_utc", "revocation_reason")


def _force_parse(response: ocsp.OCSPResponse, singles: list[ocsp.OCSPSingleResponse]) -> None:
    """Touch every lazily parsed field we use, so that parse errors surface here."""
    for name in _LAZY_RESPONSE_FIELDS:
        getattr(response, name)
    for single in singles:
        for name in _LAZY_SINGLE_FIELDS:
            getattr(single, name)


def _judge_single(single: ocsp.OCSPSingleResponse, now: datetime, skew: timedelta,
                  max_age: timedelta | None) -> OCSPVerdict:
    this_update = single.this_update_utc
    next_update = single.next_update_utc

    def invalid(reason: str, detail: str) -> OCSPVerdict:
        return OCSPVerdict(CheckStatus.INVALID, reason, detail, this_update=this_update,
                           next_update=next_update)

    if this_update > now + skew:
        return invalid("not-yet-valid",
                       f"thisUpdate {this_update:%Y-%m-%dT%H:%M:%SZ} is in the future")
    # (end of the proof, latest moment it is still accepted, reason once past it)
    limits: list[tuple[datetime, datetime, str]] = []
    if next_update is not None:
        if next_update < this_update:
            return invalid("malformed", "nextUpdate is before thisUpdate")
        limits.append((next_update, next_update + skew, "expired"))
    if max_age is not None:
        # max_age is "refuse any response older than this": our own bound on thisUpdate,
        # measured on our own clock, so no skew allowance extends it (openssl ocsp
        # -status_age works the same way; the allowance is for the responder's clock).
        limits.append((this_update + max_age, this_update + max_age, "too-old"))
    if not limits:
        return invalid("no-next-update",
                       "the response has no nextUpdate, so it could be replayed forever")
    expires = min(end for end, _, _ in limits)
    for end, latest, why in sorted(limits):
        if now > latest:
            return invalid(why, f"the response expired at {end:%Y-%m-%dT%H:%M:%SZ}"
                           + (" (nextUpdate)" if why == "expired" else " (maximum age)"))

    status = _STATUS_NAMES[single.certificate_status]
    revocation_time = revocation_reason = None
    detail = f"the responder says {status}"
    if status == CheckStatus.REVOKED:
        revocation_time = single.revocation_time_utc
        reason_flag = single.revocation_reason
        revocation_reason = reason_flag.name if reason_flag is not None else None
        if revocation_time is not None:
            detail += f" since {revocation_time:%Y-%m-%dT%H:%M:%SZ}"
        if revocation_reason is not None:
            detail += f" ({revocation_reason})"
    return OCSPVerdict(status, "ok", detail, this_update=this_update, next_update=next_update,
                       expires=expires, revocation_time=revocation_time,
                       revocation_reason=revocation_reason)


# ----------------------------------------------------------------- staple choice


class StapleAction(StrEnum):
    REPLACE = "replace"
    KEEP = "keep"  # the new response is usable but not better than the current one
    REFUSE = "refuse"  # the new response is not a usable proof


@dataclass(frozen=True, slots=True)
class StapleChoice:
    action: StapleAction
    why: str

    @property
    def replace(self) -> bool:
        return self.action == StapleAction.REPLACE


def choose_staple(current: OCSPVerdict | None, new: OCSPVerdict, now: datetime,
                  min_remaining: timedelta, *, identical: bool = False) -> StapleChoice:
    """Decide whether a freshly fetched response should replace the current staple.

    The new one must be good with at least ``min_remaining`` of life. It then replaces
    a current staple that is missing, not good, or itself due for renewal (less than
    ``min_remaining`` left); otherwise only if it is not worse: not older, not
    shorter-lived, and not signed by a certificate that expires sooner.
    """
    if not new.good:
        what = (new.status if new.status != CheckStatus.INVALID
                else f"invalid ({new.reason})")
        return StapleChoice(StapleAction.REFUSE, f"the new response is {what}: {new.detail}")
    new_left = new.remaining(now)
    assert new_left is not None and new.expires is not None and new.this_update is not None
    if new_left < min_remaining:
        return StapleChoice(StapleAction.REFUSE, f"the new response expires in {new_left}, "
                                                 f"less than the minimum {min_remaining}")
    if current is None:
        return StapleChoice(StapleAction.REPLACE, "no current staple")
    if not current.good:
        return StapleChoice(StapleAction.REPLACE,
                            f"the current staple is {current.status} ({current.reason})")
    current_left = current.remaining(now)
    assert current_left is not None and current.expires is not None
    if current_left < min_remaining:
        # Renewal beats the "not worse" rules: a staple about to lapse helps nobody.
        return StapleChoice(StapleAction.REPLACE,
                            f"the current staple expires in {current_left}")
    if identical:
        return StapleChoice(StapleAction.KEEP, "the responder returned the current staple again")
    assert current.this_update is not None
    if new.this_update < current.this_update:
        return StapleChoice(StapleAction.KEEP, "the new response is older than the current staple")
    if new.expires < current.expires:
        return StapleChoice(StapleAction.KEEP, "the new response expires before the current staple")
    if (new.signer_not_after is not None and current.signer_not_after is not None
            and new.signer_not_after < current.signer_not_after):
        return StapleChoice(StapleAction.KEEP, "the new response's signer certificate "
                                               "expires before the current staple's")
    return StapleChoice(StapleAction.REPLACE, "the new response is at least as fresh")
