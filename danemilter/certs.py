"""X.509 helpers shared by TLSA matching, OCSP verification, probe judgement and OCSP fetch.

Pure code: takes bytes and certificates; performs no I/O. What cannot be parsed or
checked is a :class:`~danemilter.errors.CertificateError`, never a cryptography or
``ValueError`` leaking to callers; "does not verify" is a ``False``, not an error.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import AuthorityInformationAccessOID, NameOID

from danemilter.errors import CertificateError

# What ``signature_algorithm_parameters`` gives for the schemes we check; Ed25519 and
# Ed448 have no parameters (None).
SignatureParams = padding.PKCS1v15 | padding.PSS | ec.ECDSA | None

# RFC 7633: the TLS Feature extension; value 5 is status_request (OCSP must-staple).
_TLS_FEATURE_STATUS_REQUEST = 5
_SEQUENCE = 0x30
_VERSION_TAG = 0xA0
_SPKI_FIELD = 5  # serial, signature, issuer, validity, subject, subjectPublicKeyInfo
# Errors cryptography raises for keys, algorithms or encodings it cannot handle.
_CRYPTO_ERRORS = (ValueError, TypeError, UnsupportedAlgorithm)


class UnsupportedSignature(CertificateError):
    """The key cannot check a signature of this kind (wrong key type for the scheme)."""


# --------------------------------------------------------------------------- reading


def load_certificates(data: bytes, what: str, *, der: bool = True) -> list[x509.Certificate]:
    """Every certificate in PEM ``data`` (in order), or the one certificate of DER ``data``.

    ``der=False`` is for inputs documented as PEM (``tlsa verify --chain``), where a DER
    file is more likely a mistake than a certificate. ``what`` names the input in errors.
    """
    if b"-----BEGIN" not in data:
        if not der:
            raise CertificateError(f"{what}: no PEM certificate found")
        return [load_der_certificate(data, what)]
    try:
        # Other PEM blocks (a private key, say) are skipped; only certificates count.
        return x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise CertificateError(f"{what}: not a valid PEM certificate chain ({exc})") from None


def load_certificate(data: bytes, what: str) -> x509.Certificate:
    """The first certificate in a PEM or DER file."""
    return load_certificates(data, what)[0]


def load_der_certificate(der: bytes, what: str) -> x509.Certificate:
    try:
        return x509.load_der_x509_certificate(der)
    except ValueError as exc:
        raise CertificateError(f"{what}: not a parseable X.509 certificate ({exc})") from None


# --------------------------------------------------------------------------- DER


@dataclass(frozen=True, slots=True)
class Tlv:
    """One DER element: where its tag, content and end sit in the buffer."""

    tag: int
    start: int  # offset of the tag byte
    content: int  # offset of the first content byte
    end: int  # offset just past the content


def read_tlv(data: bytes, pos: int, limit: int | None = None) -> Tlv:
    """The DER element at ``pos``; ValueError for anything but minimal, definite DER."""
    limit = len(data) if limit is None else limit
    if pos + 2 > limit:
        raise ValueError("truncated DER")
    tag = data[pos]
    if tag & 0x1F == 0x1F:
        raise ValueError("multi-byte DER tags are not used by X.509 or OCSP")
    first = data[pos + 1]
    offset = pos + 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if count == 0 or count > 4:
            raise ValueError("indefinite or oversized DER length")
        if offset + count > limit:
            raise ValueError("truncated DER length")
        length = int.from_bytes(data[offset:offset + count], "big")
        if length < 0x80 or data[offset] == 0:
            raise ValueError("non-minimal DER length")
        offset += count
    if offset + length > limit:
        raise ValueError("truncated DER content")
    return Tlv(tag, pos, offset, offset + length)


def children(data: bytes, parent: Tlv) -> list[Tlv]:
    items = []
    pos = parent.content
    while pos < parent.end:
        item = read_tlv(data, pos, parent.end)
        items.append(item)
        pos = item.end
    return items


def spki_der(cert: x509.Certificate) -> bytes | None:
    """The SubjectPublicKeyInfo exactly as encoded in the certificate; None if unreadable.

    Re-encoding ``cert.public_key()`` would fail for key types cryptography does not
    support and could differ from the published bytes (a compressed EC point, say),
    so the field is cut out of the TBSCertificate instead.
    """
    tbs = cert.tbs_certificate_bytes
    try:
        outer = read_tlv(tbs, 0)
        if outer.tag != _SEQUENCE:
            return None
        fields: list[Tlv] = []
        position = outer.content
        while position < outer.end and len(fields) <= _SPKI_FIELD + 1:
            field = read_tlv(tbs, position, outer.end)
            fields.append(field)
            position = field.end
    except ValueError:
        return None
    if fields and fields[0].tag == _VERSION_TAG:
        del fields[0]
    if len(fields) <= _SPKI_FIELD or fields[_SPKI_FIELD].tag != _SEQUENCE:
        return None
    spki = fields[_SPKI_FIELD]
    return tbs[spki.start:spki.end]


def public_key_bits(cert: x509.Certificate) -> bytes:
    """The subjectPublicKey BIT STRING value without its unused-bits octet.

    That is what OCSP's CertID.issuerKeyHash and ResponderID byKey hash (RFC 6960
    erratum 6166). CertificateError when the key cannot be read (its message is
    cryptography's, so that callers can phrase the context).
    """
    try:
        spki = cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
        _algorithm, bit_string = children(spki, read_tlv(spki, 0))
    except _CRYPTO_ERRORS as exc:
        raise CertificateError(str(exc)) from exc
    return spki[bit_string.content + 1:bit_string.end]


# --------------------------------------------------------------------------- signatures


def verify_signature(key: PublicKeyTypes, signature: bytes, data: bytes,
                     params: SignatureParams, digest: hashes.HashAlgorithm | None) -> bool:
    """Whether ``signature`` over ``data`` verifies with ``key``.

    RSA takes PKCS#1 v1.5 or PSS ``params`` and a ``digest``; EC takes ECDSA ``params``
    (which carry the digest); Ed25519 and Ed448 take neither. A key that cannot check
    such a signature is UnsupportedSignature; one cryptography cannot use at all is
    CertificateError.
    """
    try:
        if isinstance(key, rsa.RSAPublicKey):
            if not isinstance(params, padding.PKCS1v15 | padding.PSS) or digest is None:
                raise UnsupportedSignature(f"{_scheme(params)} with an RSA key")
            key.verify(signature, data, params, digest)
        elif isinstance(key, ec.EllipticCurvePublicKey):
            if not isinstance(params, ec.ECDSA):
                raise UnsupportedSignature(f"{_scheme(params)} with an EC key")
            key.verify(signature, data, params)
        elif isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
            if params is not None:
                raise UnsupportedSignature(f"{_scheme(params)} with an EdDSA key")
            key.verify(signature, data)
        else:
            raise UnsupportedSignature(f"a {type(key).__name__} key")
    except InvalidSignature:
        return False
    except _CRYPTO_ERRORS as exc:
        raise CertificateError(f"cannot verify the signature: {exc}") from None
    return True


def _scheme(params: SignatureParams) -> str:
    return "an EdDSA signature" if params is None else f"a {type(params).__name__} signature"


def signed_by_key(cert: x509.Certificate, key: PublicKeyTypes) -> bool:
    """Whether ``key`` signed ``cert``; for a bare key (a DANE-TA ``2 1 0`` record) there
    is no issuer certificate to hand to ``verify_directly_issued_by``, nor a name to compare.
    Unsupported schemes and unreadable certificates do not verify."""
    try:
        return verify_signature(key, cert.signature, cert.tbs_certificate_bytes,
                                cert.signature_algorithm_parameters,
                                cert.signature_hash_algorithm)
    except (CertificateError, *_CRYPTO_ERRORS):
        return False


def issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """Whether ``issuer``'s subject names ``cert``'s issuer and its key signed ``cert``."""
    try:
        cert.verify_directly_issued_by(issuer)
    except (InvalidSignature, *_CRYPTO_ERRORS):
        return False
    return True


def find_issuer(cert: x509.Certificate,
                candidates: Iterable[x509.Certificate]) -> x509.Certificate | None:
    """The first candidate that issued ``cert`` (name match, then signature check).

    Presented chains may come in any order or with extras (cross certificates), so
    position says nothing; the name test first keeps signature checks to plausible ones.
    """
    for candidate in candidates:
        if _same_name(candidate, cert) and issued_by(cert, candidate):
            return candidate
    return None


def _same_name(candidate: x509.Certificate, cert: x509.Certificate) -> bool:
    try:
        return candidate.subject == cert.issuer
    except ValueError:
        return False


# --------------------------------------------------------------------------- extensions


def ocsp_urls(cert: x509.Certificate) -> list[str]:
    """The OCSP responder URLs in the certificate's Authority Information Access.

    An unparsable extension names no responder rather than failing the caller.
    """
    try:
        aia = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    except (x509.ExtensionNotFound, ValueError):
        return []
    return [
        str(description.access_location.value)
        for description in aia
        if description.access_method == AuthorityInformationAccessOID.OCSP
        and isinstance(description.access_location, x509.UniformResourceIdentifier)
    ]


def ocsp_url(cert: x509.Certificate) -> str | None:
    """The first OCSP responder URL in the certificate's AIA extension, if any."""
    urls = ocsp_urls(cert)
    return urls[0] if urls else None


def must_staple(cert: x509.Certificate) -> bool:
    """RFC 7633 TLS Feature ``status_request``: the certificate demands a staple."""
    try:
        feature = cert.extensions.get_extension_for_class(x509.TLSFeature).value
    except (x509.ExtensionNotFound, ValueError):
        return False
    return any(int(f.value) == _TLS_FEATURE_STATUS_REQUEST for f in feature)


def name_problem(leaf: x509.Certificate, names: Sequence[str], *,
                 subject_cn: bool = True) -> str | None:
    """Why the leaf is valid for none of ``names`` (RFC 6125 as OpenSSL's X509_check_host
    with Postfix's flags does it), or None when it is valid for one. ``subject_cn``: the
    subject CNs count when there is no DNS-ID (RFC 6125 §6.4.4); MTA-STS says no."""
    presented = presented_names(leaf, subject_cn=subject_cn)
    if any(name_matches(p, r) for p in presented for r in names):
        return None
    shown = ", ".join(presented) if presented else "(none)"
    wanted = ", ".join(names) if names else "(none given)"
    return f"name mismatch: certificate names {shown} do not match {wanted}"


def presented_names(cert: x509.Certificate, *, subject_cn: bool = True) -> list[str]:
    """DNS-IDs, or (``subject_cn``) the subject CNs when there are none (RFC 6125 §6.4.4)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns_names = san.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        dns_names = []
    except ValueError:
        return []  # unparsable extensions: claim nothing rather than guess
    if dns_names or not subject_cn:
        return dns_names
    return [
        attribute.value
        for attribute in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        if isinstance(attribute.value, str)
    ]


def name_matches(presented: str, reference: str) -> bool:
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
