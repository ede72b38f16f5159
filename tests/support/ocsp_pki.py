"""A small test PKI for OCSP: CA, leaf, delegated responders, and signed responses.

Everything is generated at test time relative to a given ``now`` (normally the real
clock); nothing is hard-coded. Keys are EC P-256 by default (fast); RSA and Ed25519
are available for signature-algorithm coverage.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

KeyKind = Literal["ec", "rsa", "ed25519"]
PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey

DAY = timedelta(days=1)
HOUR = timedelta(hours=1)


def utcnow() -> datetime:
    # Certificates and responses carry whole seconds.
    return datetime.now(UTC).replace(microsecond=0)


def make_key(kind: KeyKind = "ec") -> PrivateKey:
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    return ec.generate_private_key(ec.SECP256R1())


def _hash_for(key: PrivateKey) -> hashes.SHA256 | None:
    return None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()


@dataclass(frozen=True)
class Party:
    """A certificate with its private key."""

    cert: x509.Certificate
    key: PrivateKey

    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def key_pem(self) -> bytes:
        return self.key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())

    def write(self, directory: Path, name: str) -> tuple[Path, Path]:
        cert_path = directory / f"{name}.pem"
        key_path = directory / f"{name}.key"
        cert_path.write_bytes(self.pem())
        key_path.write_bytes(self.key_pem())
        return cert_path, key_path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_ca(now: datetime, name: str = "Test OCSP CA", *, kind: KeyKind = "ec",
            not_before: datetime | None = None, not_after: datetime | None = None) -> Party:
    key = make_key(kind)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(name)).issuer_name(_name(name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or now - 30 * DAY)
        .not_valid_after(not_after or now + 3650 * DAY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, _hash_for(key))
    )
    return Party(cert, key)


def issue(ca: Party, now: datetime, name: str, *, kind: KeyKind = "ec",
          serial: int | None = None, not_before: datetime | None = None,
          not_after: datetime | None = None, ocsp_signing: bool = False,
          ocsp_url: str | None = None) -> Party:
    """A certificate issued by ``ca``: a leaf, or a delegated responder (``ocsp_signing``)."""
    key = make_key(kind)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(name)).issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(serial if serial is not None else x509.random_serial_number())
        .not_valid_before(not_before or now - 10 * DAY)
        .not_valid_after(not_after or now + 365 * DAY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    )
    if ocsp_signing:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.OCSP_SIGNING]), critical=False)
    else:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    if ocsp_url is not None:
        builder = builder.add_extension(x509.AuthorityInformationAccess([
            x509.AccessDescription(x509.oid.AuthorityInformationAccessOID.OCSP,
                                   x509.UniformResourceIdentifier(ocsp_url)),
        ]), critical=False)
    return Party(builder.sign(ca.key, _hash_for(ca.key)), key)


@dataclass(frozen=True)
class SingleSpec:
    """One SingleResponse to put in a response."""

    cert: x509.Certificate
    issuer: x509.Certificate
    status: ocsp.OCSPCertStatus = ocsp.OCSPCertStatus.GOOD
    this_update: datetime | None = None
    next_update: datetime | None = None
    revocation_time: datetime | None = None
    revocation_reason: x509.ReasonFlags | None = None
    hash_algorithm: hashes.HashAlgorithm = field(default_factory=hashes.SHA1)


def build_response(
    single: SingleSpec,
    signer: Party,
    *,
    by_key: bool = False,
    include: tuple[x509.Certificate, ...] = (),
    extensions: tuple[tuple[x509.ExtensionType, bool], ...] = (),
    signature_hash: hashes.HashAlgorithm | None = None,
) -> bytes:
    """A signed DER OCSPResponse with one SingleResponse. producedAt is the real clock.

    The signature hash defaults to SHA-256 (none for Ed25519 signers).
    """
    revoked = single.status == ocsp.OCSPCertStatus.REVOKED
    builder = ocsp.OCSPResponseBuilder().add_response(
        cert=single.cert, issuer=single.issuer, algorithm=single.hash_algorithm,
        cert_status=single.status,
        this_update=single.this_update or utcnow() - HOUR,
        next_update=single.next_update,
        revocation_time=(single.revocation_time or utcnow() - DAY) if revoked else None,
        revocation_reason=single.revocation_reason if revoked else None,
    ).responder_id(
        ocsp.OCSPResponderEncoding.HASH if by_key else ocsp.OCSPResponderEncoding.NAME,
        signer.cert,
    )
    if include:
        builder = builder.certificates(list(include))
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical)
    if isinstance(signer.key, ed25519.Ed25519PrivateKey):
        signature_hash = None
    elif signature_hash is None:
        signature_hash = hashes.SHA256()
    response = builder.sign(signer.key, signature_hash)
    return response.public_bytes(serialization.Encoding.DER)


def corrupt_signature(response_der: bytes) -> bytes:
    """The same response with the last byte of its signature flipped."""
    signature = ocsp.load_der_ocsp_response(response_der).signature
    index = response_der.rindex(signature) + len(signature) - 1
    return response_der[:index] + bytes([response_der[index] ^ 0x01]) + response_der[index + 1:]
