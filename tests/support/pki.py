"""A throw-away PKI for tests, built at test time relative to the real clock.

``make_ca`` gives a root (or, with ``issuer``, an intermediate), ``make_leaf`` a server
certificate. Both return an :class:`Issued` holding certificate and private key, with PEM
helpers for TLS servers, OCSP responders and CLI input files.
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from ipaddress import ip_address
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

KeyKind = Literal["ec", "rsa", "ed25519"]
PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey

# Backdating absorbs clock skew between the test and the code under test.
_BACKDATE = timedelta(hours=1)
_LIFETIME = timedelta(days=30)


@dataclass(frozen=True, slots=True)
class Issued:
    cert: x509.Certificate
    key: PrivateKey

    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


def make_key(kind: KeyKind = "ec") -> PrivateKey:
    if kind == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(f"unknown key kind {kind!r}")


def make_ca(
    name: str,
    *,
    issuer: Issued | None = None,
    kind: KeyKind = "ec",
    key: PrivateKey | None = None,
    ca: bool = True,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
) -> Issued:
    """A self-signed root, or an intermediate signed by ``issuer``.

    ``ca=False`` builds the mistake of a non-CA certificate used as an issuer.
    """
    key = key or make_key(kind)
    subject = _name(name)
    builder = _builder(subject, key, issuer, not_before, not_after).add_extension(
        x509.BasicConstraints(ca=ca, path_length=None), critical=True
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
    return _sign(builder, key, issuer)


def make_leaf(
    ca: Issued | None,
    names: Sequence[str],
    not_before: datetime | None = None,
    not_after: datetime | None = None,
    *,
    cn: str | None = None,
    kind: KeyKind = "ec",
    ocsp_url: str | None = None,
    ip_addresses: Sequence[str] = (),
) -> Issued:
    """A server certificate for ``names`` (SAN dNSNames; none given means no SAN
    extension unless ``ip_addresses``), signed by ``ca`` or self-signed when ``ca`` is None.
    """
    key = make_key(kind)
    subject = _name(cn) if cn is not None else x509.Name([])
    builder = _builder(subject, key, ca, not_before, not_after).add_extension(
        x509.BasicConstraints(ca=False, path_length=None), critical=True
    ).add_extension(
        x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
    )
    general_names: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
    general_names += [x509.IPAddress(ip_address(a)) for a in ip_addresses]
    if general_names:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(general_names), critical=False
        )
    if ocsp_url is not None:
        builder = builder.add_extension(
            x509.AuthorityInformationAccess([
                x509.AccessDescription(
                    x509.oid.AuthorityInformationAccessOID.OCSP,
                    x509.UniformResourceIdentifier(ocsp_url),
                )
            ]),
            critical=False,
        )
    return _sign(builder, key, ca)


def chain_pem(*issued: Issued) -> bytes:
    return b"".join(item.pem() for item in issued)


def server_context(directory: Path, label: str, chain: Sequence[Issued]) -> ssl.SSLContext:
    """A TLS server context presenting ``chain`` (leaf first), by way of PEM files named
    ``label`` in ``directory`` (ssl loads certificates only from files)."""
    cert, key = directory / f"{label}.pem", directory / f"{label}.key"
    cert.write_bytes(chain_pem(*chain))
    key.write_bytes(chain[0].key_pem())
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return context


def _builder(
    subject: x509.Name,
    key: PrivateKey,
    issuer: Issued | None,
    not_before: datetime | None,
    not_after: datetime | None,
) -> x509.CertificateBuilder:
    now = datetime.now(UTC)
    start = not_before or now - _BACKDATE
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.cert.subject if issuer is not None else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(not_after or start + _LIFETIME)
    )


def _sign(builder: x509.CertificateBuilder, key: PrivateKey, issuer: Issued | None) -> Issued:
    signer: CertificateIssuerPrivateKeyTypes = issuer.key if issuer is not None else key
    algorithm = None if isinstance(signer, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return Issued(builder.sign(signer, algorithm), key)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])

