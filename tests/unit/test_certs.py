"""The X.509 helpers (danemilter.certs): reading, signatures by key type, issuer search,
AIA OCSP URLs, must-staple, and the raw SPKI / subjectPublicKey bytes.

Every certificate is generated here with cryptography, per signature scheme: RSA
PKCS#1 v1.5, RSA-PSS, ECDSA P-256, Ed25519 and Ed448. Bad input must give
CertificateError (or a plain False for "does not verify"), never another exception.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, padding, rsa
from cryptography.x509.oid import AuthorityInformationAccessOID, NameOID

from danemilter import certs
from danemilter.errors import CertificateError
from tests.support import pki

NOW = datetime.now(UTC)
_PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.DIGEST_LENGTH)

Key = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey \
    | ed448.Ed448PrivateKey


@dataclass(frozen=True)
class Scheme:
    name: str
    make_key: Callable[[], Key]
    digest: hashes.HashAlgorithm | None
    sign_options: dict[str, Any]


def _rsa() -> Key:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


SCHEMES = [
    Scheme("rsa-pkcs1", _rsa, hashes.SHA256(), {}),
    Scheme("rsa-pss", _rsa, hashes.SHA256(), {"rsa_padding": _PSS}),
    Scheme("ecdsa-p256", lambda: ec.generate_private_key(ec.SECP256R1()), hashes.SHA256(), {}),
    Scheme("ed25519", ed25519.Ed25519PrivateKey.generate, None, {}),
    Scheme("ed448", ed448.Ed448PrivateKey.generate, None, {}),
]
SCHEME_IDS = [scheme.name for scheme in SCHEMES]


@dataclass(frozen=True)
class Pair:
    """An issuer and a leaf it signed with one scheme."""

    ca: x509.Certificate
    ca_key: Key
    leaf: x509.Certificate


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _build(subject: str, issuer: str, public: Key, signer: Key, scheme: Scheme,
           extensions: tuple[x509.ExtensionType, ...] = ()) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject)).issuer_name(_name(issuer))
        .public_key(public.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=30))
    )
    for extension in extensions:
        builder = builder.add_extension(extension, critical=False)
    return builder.sign(signer, scheme.digest, **scheme.sign_options)


def _pair(scheme: Scheme, ca_name: str = "Certs Test CA") -> Pair:
    ca_key = scheme.make_key()
    ca = _build(ca_name, ca_name, ca_key, ca_key, scheme)
    leaf = _build("mx.example.test", ca_name, scheme.make_key(), ca_key, scheme)
    return Pair(ca, ca_key, leaf)


@pytest.fixture(scope="module", params=SCHEMES, ids=SCHEME_IDS)
def pair(request: pytest.FixtureRequest) -> Pair:
    scheme: Scheme = request.param
    return _pair(scheme)


@pytest.fixture(scope="module")
def chain() -> pki.Issued:
    return pki.make_leaf(pki.make_ca("Chain CA"), ["mx.example.test"])


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


# --------------------------------------------------------------------------- signatures


def test_issued_by_and_signed_by_key_per_scheme(pair: Pair) -> None:
    assert certs.issued_by(pair.leaf, pair.ca)
    assert certs.signed_by_key(pair.leaf, pair.ca.public_key())
    # The leaf's own key did not sign it; nor did the CA sign itself with the leaf's key.
    assert not certs.signed_by_key(pair.leaf, pair.leaf.public_key())
    assert not certs.issued_by(pair.ca, pair.leaf)


@pytest.mark.parametrize("other", SCHEMES, ids=SCHEME_IDS)
def test_a_key_of_another_scheme_does_not_verify(pair: Pair, other: Scheme) -> None:
    stranger = other.make_key().public_key()
    assert not certs.signed_by_key(pair.leaf, stranger)


def test_verify_signature_true_and_false(pair: Pair) -> None:
    leaf = pair.leaf
    args = (leaf.signature_algorithm_parameters, leaf.signature_hash_algorithm)
    key = pair.ca.public_key()
    assert certs.verify_signature(key, leaf.signature, leaf.tbs_certificate_bytes, *args)
    assert not certs.verify_signature(key, leaf.signature, leaf.tbs_certificate_bytes + b"x",
                                      *args)
    flipped = bytes([leaf.signature[0] ^ 1]) + leaf.signature[1:]
    assert not certs.verify_signature(key, flipped, leaf.tbs_certificate_bytes, *args)


_RSA_PUBLIC = _rsa().public_key()
_EC_PUBLIC = ec.generate_private_key(ec.SECP256R1()).public_key()
_ED_PUBLIC = ed25519.Ed25519PrivateKey.generate().public_key()
_DSA_PUBLIC = dsa.generate_private_key(2048).public_key()


@pytest.mark.parametrize(
    ("key", "params", "digest"),
    [
        (_RSA_PUBLIC, ec.ECDSA(hashes.SHA256()), hashes.SHA256()),
        (_RSA_PUBLIC, None, hashes.SHA256()),
        (_RSA_PUBLIC, padding.PKCS1v15(), None),
        (_EC_PUBLIC, padding.PKCS1v15(), hashes.SHA256()),
        (_EC_PUBLIC, None, None),
        (_ED_PUBLIC, padding.PKCS1v15(), hashes.SHA256()),
        (_ED_PUBLIC, ec.ECDSA(hashes.SHA256()), None),
        (_DSA_PUBLIC, None, hashes.SHA256()),
        (_DSA_PUBLIC, padding.PKCS1v15(), hashes.SHA256()),
    ],
    ids=["rsa-ecdsa", "rsa-eddsa", "rsa-no-digest", "ec-pkcs1", "ec-eddsa", "ed-pkcs1",
         "ed-ecdsa", "dsa", "dsa-pkcs1"],
)
def test_wrong_key_type_is_unsupported_signature(key: Any, params: Any, digest: Any) -> None:
    with pytest.raises(certs.UnsupportedSignature):
        certs.verify_signature(key, b"\x30\x00", b"data", params, digest)
    assert issubclass(certs.UnsupportedSignature, CertificateError)


def test_signature_that_is_not_even_der_does_not_verify() -> None:
    pair = _pair(SCHEMES[2])
    assert not certs.verify_signature(pair.ca.public_key(), b"\x00\x01garbage", b"data",
                                      ec.ECDSA(hashes.SHA256()), None)


# --------------------------------------------------------------------------- reading


def test_reads_pem_chain_der_and_first_certificate(chain: pki.Issued, pair: Pair) -> None:
    pem = b"subject=junk OpenSSL prints\n" + _pem(pair.leaf) + chain.key_pem() + _pem(pair.ca)
    assert certs.load_certificates(pem, "chain") == [pair.leaf, pair.ca]
    assert certs.load_certificates(pem, "chain", der=False) == [pair.leaf, pair.ca]
    assert certs.load_certificate(pem, "chain") == pair.leaf
    assert certs.load_certificates(_der(pair.leaf), "der") == [pair.leaf]
    assert certs.load_certificate(_der(pair.ca), "der") == pair.ca
    assert certs.load_der_certificate(_der(pair.leaf), "der") == pair.leaf


def _bad_inputs() -> list[tuple[str, bytes, bool, str]]:
    issued = pki.make_leaf(pki.make_ca("Bad Input CA"), ["mx.example.test"])
    der = _der(issued.cert)
    pem = _pem(issued.cert)
    return [
        ("empty", b"", True, "not a parseable X.509 certificate"),
        ("garbage-der", b"\x00\xffnot a certificate\n", True,
         "not a parseable X.509 certificate"),
        ("garbage-pem-only", b"\x00\xffnot a certificate\n", False, "no PEM certificate found"),
        ("der-when-pem-only", der, False, "no PEM certificate found"),
        ("truncated-der", der[: len(der) // 2], True, "not a parseable X.509 certificate"),
        ("trailing-garbage-der", der + b"\x00", True, "not a parseable X.509 certificate"),
        ("broken-pem", b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
         True, "not a valid PEM certificate chain"),
        ("bad-base64-pem", b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
         True, "not a valid PEM certificate chain"),
        ("truncated-pem", pem[: len(pem) // 2], True, "not a valid PEM certificate chain"),
        ("key-only-pem", issued.key_pem(), True, "not a valid PEM certificate chain"),
        ("second-block-broken", pem + pem[: len(pem) - 40] + b"\n-----END CERTIFICATE-----\n",
         True, "not a valid PEM certificate chain"),
    ]


BAD_INPUTS = _bad_inputs()


@pytest.mark.parametrize(("data", "der", "message"), [case[1:] for case in BAD_INPUTS],
                         ids=[case[0] for case in BAD_INPUTS])
def test_bad_input_is_certificate_error(data: bytes, der: bool, message: str) -> None:
    with pytest.raises(CertificateError) as caught:
        certs.load_certificates(data, "input.pem", der=der)
    assert str(caught.value).startswith("input.pem: ")
    assert message in str(caught.value)
    if der:
        with pytest.raises(CertificateError):
            certs.load_certificate(data, "input.pem")


@pytest.mark.parametrize("data", [b"", b"\x30", b"\x30\x82\xff\xff", b"junk"],
                         ids=["empty", "tag-only", "huge-length", "junk"])
def test_load_der_certificate_bad_input(data: bytes) -> None:
    with pytest.raises(CertificateError):
        certs.load_der_certificate(data, "record")


# --------------------------------------------------------------------------- issuers


def test_find_issuer_by_name_and_signature(pair: Pair) -> None:
    # Same name as the issuer, another key: the name matches, the signature does not.
    impostor = _pair(SCHEMES[2], ca_name="Certs Test CA").ca
    unrelated = _pair(SCHEMES[3], ca_name="Someone Else").ca
    assert certs.find_issuer(pair.leaf, [impostor, unrelated, pair.ca]) == pair.ca
    assert certs.find_issuer(pair.leaf, [pair.ca, impostor]) == pair.ca
    assert certs.find_issuer(pair.leaf, [impostor, unrelated]) is None
    assert certs.find_issuer(pair.leaf, []) is None
    assert certs.find_issuer(pair.leaf, [pair.leaf]) is None


# --------------------------------------------------------------------------- extensions


def _aia(*entries: tuple[x509.ObjectIdentifier, str]) -> x509.AuthorityInformationAccess:
    return x509.AuthorityInformationAccess([
        x509.AccessDescription(method, x509.UniformResourceIdentifier(url))
        for method, url in entries
    ])


_OCSP = AuthorityInformationAccessOID.OCSP
_CA_ISSUERS = AuthorityInformationAccessOID.CA_ISSUERS
_STATUS_REQUEST = x509.TLSFeatureType.status_request


@pytest.mark.parametrize(
    ("extensions", "urls", "stapled"),
    [
        ((), [], False),
        ((_aia((_OCSP, "http://ocsp.example.test/")),), ["http://ocsp.example.test/"], False),
        ((_aia((_CA_ISSUERS, "http://ca.example.test/ca.der"),
               (_OCSP, "http://one.example.test/"), (_OCSP, "http://two.example.test/")),),
         ["http://one.example.test/", "http://two.example.test/"], False),
        ((_aia((_CA_ISSUERS, "http://ca.example.test/ca.der")),), [], False),
        ((x509.TLSFeature([_STATUS_REQUEST]),), [], True),
        ((x509.TLSFeature([x509.TLSFeatureType.status_request_v2]),), [], False),
        ((_aia((_OCSP, "http://ocsp.example.test/")), x509.TLSFeature([_STATUS_REQUEST])),
         ["http://ocsp.example.test/"], True),
    ],
    ids=["none", "one-url", "two-urls-after-ca-issuers", "ca-issuers-only", "must-staple",
         "status-request-v2-only", "url-and-must-staple"],
)
def test_ocsp_urls_and_must_staple(extensions: tuple[x509.ExtensionType, ...],
                                   urls: list[str], stapled: bool) -> None:
    scheme = SCHEMES[2]
    key = scheme.make_key()
    cert = _build("mx.example.test", "mx.example.test", key, key, scheme, extensions)
    assert certs.ocsp_urls(cert) == urls
    assert certs.ocsp_url(cert) == (urls[0] if urls else None)
    assert certs.must_staple(cert) is stapled


# --------------------------------------------------------------------------- raw key bytes


def test_spki_der_is_the_encoded_subject_public_key_info(pair: Pair) -> None:
    for cert in (pair.ca, pair.leaf):
        expected = cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        assert certs.spki_der(cert) == expected


def test_public_key_bits_is_the_bit_string_value(pair: Pair) -> None:
    key = pair.ca.public_key()
    bits = certs.public_key_bits(pair.ca)
    if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        assert bits == key.public_bytes(serialization.Encoding.Raw,
                                        serialization.PublicFormat.Raw)
    elif isinstance(key, ec.EllipticCurvePublicKey):
        assert bits == key.public_bytes(serialization.Encoding.X962,
                                        serialization.PublicFormat.UncompressedPoint)
    else:
        assert isinstance(key, rsa.RSAPublicKey)
        assert bits == key.public_bytes(serialization.Encoding.DER,
                                        serialization.PublicFormat.PKCS1)


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"", "truncated DER"),
        (b"\x30", "truncated DER"),
        (b"\x1f\x01\x00", "multi-byte DER tags"),
        (b"\x30\x80\x00\x00", "indefinite"),
        (b"\x30\x85\x00\x00\x00\x00\x01\x00", "oversized"),
        (b"\x30\x81\x05\x00\x00\x00\x00\x00", "non-minimal"),
        (b"\x30\x82\x00\x80" + b"\x00" * 0x80, "non-minimal"),
        (b"\x30\x82\x01", "truncated DER length"),
        (b"\x30\x05\x00", "truncated DER content"),
    ],
    ids=["empty", "tag-only", "multi-byte-tag", "indefinite", "oversized-length",
         "non-minimal-short", "non-minimal-leading-zero", "truncated-length",
         "truncated-content"],
)
def test_read_tlv_refuses_anything_but_minimal_der(data: bytes, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        certs.read_tlv(data, 0)


def test_read_tlv_and_children_walk_a_sequence() -> None:
    data = b"\x30\x06\x02\x01\x05\x04\x01\xff"
    outer = certs.read_tlv(data, 0)
    assert (outer.tag, outer.start, outer.content, outer.end) == (0x30, 0, 2, 8)
    assert [(item.tag, data[item.content:item.end]) for item in certs.children(data, outer)] \
        == [(0x02, b"\x05"), (0x04, b"\xff")]
