"""Random DANE cases for the differential suite: chains, names and TLSA sets from a seed.

Every case is generated at test time, relative to the real clock, from
``random.Random(seed)``: a small PKI (self-signed leaf, or a root with 0-2 intermediates
below it, and sometimes a second root cross-signing the root or an intermediate), the
chain a server would send (whole, without its root, missing a certificate, shuffled, with
cross certificates), a reference name the leaf does or does not carry (exact, wildcard,
partial-label wildcard, CN only), and 1-4 TLSA records over every usage, selector and
matching type with right, wrong and damaged data. ``kind`` tags say what went into a
case, so that a run can print its case mix.
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

Key = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
DAY = timedelta(days=1)
DER = serialization.Encoding.DER


class KeyPool:
    """RSA-2048 and EC (P-256, P-384) keys made once per run: RSA generation is the slow
    part of building hundreds of chains. A case draws distinct keys from it."""

    def __init__(self, rng: random.Random, rsa_keys: int = 6, ec_keys: int = 10) -> None:
        self.keys: list[Key] = [rsa.generate_private_key(65537, 2048) for _ in range(rsa_keys)]
        self.keys += [ec.generate_private_key(ec.SECP384R1() if i % 3 == 0 else ec.SECP256R1())
                      for i in range(ec_keys)]
        self._rng = rng

    def draw(self, count: int) -> list[Key]:
        return self._rng.sample(self.keys, count)


@dataclass
class Node:
    """One certificate of the case's PKI with its key."""

    cert: x509.Certificate
    key: Key
    role: str


@dataclass
class DaneCase:
    number: int
    chain: list[x509.Certificate]
    leaf_key_pem: bytes
    records: list[str]
    name: str
    partial_wildcard: bool
    kinds: list[str] = field(default_factory=list)
    # The case's PKI by role ("leaf", "root", "intermediate1", "other-root", "cross"):
    # what a trust store or a re-issued certificate is made from.
    nodes: dict[str, Node] = field(default_factory=dict)

    @property
    def roots(self) -> list[x509.Certificate]:
        """The case's root, then the root that cross-signs, when there are any."""
        return [self.nodes[role].cert for role in ("root", "other-root") if role in self.nodes]

    def openssl_records(self) -> list[str]:
        """The records an SMTP client uses at all: PKIX-TA/PKIX-EE dropped (RFC 7672 §3.1.3)."""
        return [r for r in self.records if int(r.split()[0]) in (2, 3)]

    def chain_pem(self) -> bytes:
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in self.chain)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


class _Builder:
    def __init__(self, rng: random.Random, now: datetime, kinds: list[str]) -> None:
        self.rng = rng
        self.now = now
        self.kinds = kinds

    def dates(self, role: str) -> tuple[datetime, datetime]:
        roll = self.rng.random()
        if roll < 0.08:
            self.kinds.append(f"expired-{role}")
            return self.now - 40 * DAY, self.now - DAY
        if roll < 0.14:
            self.kinds.append(f"not-yet-valid-{role}")
            return self.now + DAY, self.now + 40 * DAY
        return self.now - 2 * DAY, self.now + 60 * DAY

    def issue(self, subject: x509.Name, key: Key, issuer: Node | None, *, ca: bool,
              role: str, names: Sequence[str] = (), dates: tuple[datetime, datetime] | None
              = None) -> Node:
        start, end = dates or self.dates(role)
        signer_key = issuer.key if issuer is not None else key
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer.cert.subject if issuer is not None else subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                signer_key.public_key()), critical=False)
        )
        if ca:
            roll = self.rng.random()
            if roll < 0.1:
                self.kinds.append(f"ca-false-{role}")
                builder = builder.add_extension(x509.BasicConstraints(ca=False,
                                                                      path_length=None), True)
            else:
                builder = builder.add_extension(x509.BasicConstraints(ca=True,
                                                                      path_length=None), True)
                builder = builder.add_extension(x509.KeyUsage(
                    digital_signature=False, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=True,
                    crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        else:
            builder = builder.add_extension(x509.BasicConstraints(ca=False, path_length=None),
                                            critical=True)
            builder = builder.add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            if names:
                builder = builder.add_extension(
                    x509.SubjectAlternativeName([x509.DNSName(n) for n in names]),
                    critical=False)
        return Node(builder.sign(signer_key, hashes.SHA256()), key, role)


def _leaf_names(rng: random.Random, name: str, kinds: list[str]) -> tuple[list[str], str | None,
                                                                           bool]:
    """(SAN dNSNames, subject CN, partial wildcard) for a leaf meant for ``name``."""
    first, _, parent = name.partition(".")
    roll = rng.random()
    if roll < 0.45:
        kinds.append("name-exact")
        return [f"other.{parent}", name], None, False
    if roll < 0.60:
        kinds.append("name-wildcard")
        return [f"*.{parent}"], None, False
    if roll < 0.68:
        kinds.append("name-partial-wildcard")
        return [f"{first[:2]}*.{parent}"], None, True
    if roll < 0.76:
        kinds.append("name-cn-only")
        return [], name, False
    if roll < 0.82:
        kinds.append("name-wildcard-too-deep")
        return [f"*.{parent.partition('.')[2]}"], None, False
    kinds.append("name-other")
    return [f"mail.{parent}"], name if rng.random() < 0.3 else None, False


def _damaged(rng: random.Random, data: bytes, kinds: list[str]) -> bytes:
    how = rng.choice(["truncated", "trailing", "bad-point", "garbage"])
    kinds.append(f"damaged-{how}")
    if how == "truncated":
        return data[:rng.randrange(1, len(data) - 1)]
    if how == "trailing":
        return data + bytes([rng.randrange(256)])
    if how == "bad-point":
        # Flip a bit near the end: for an EC key, the point leaves the curve; for RSA, the
        # certificate's signature (or the key's modulus) changes and the data stays parseable.
        spot = len(data) - 1 - rng.randrange(4)
        return data[:spot] + bytes([data[spot] ^ 0x01]) + data[spot + 1:]
    return rng.randbytes(rng.randrange(8, 64))


def _selected(cert: x509.Certificate, selector: int) -> bytes:
    if selector == 0:
        return cert.public_bytes(DER)
    return cert.public_key().public_bytes(DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _digest(data: bytes, mtype: int) -> bytes:
    if mtype == 1:
        return hashlib.sha256(data).digest()
    if mtype == 2:
        return hashlib.sha512(data).digest()
    return data


def _record(rng: random.Random, nodes: dict[str, Node], kinds: list[str]) -> str:
    usage = rng.choices([3, 2, 0, 1], weights=[35, 50, 8, 7])[0]
    selector, mtype = rng.randrange(2), rng.choice([0, 1, 1, 2])
    if rng.random() < 0.03:
        selector, mtype = rng.choice([(2, 1), (1, 3), (0, 255)])
        kinds.append("unknown-parameter")
    if usage in (1, 3):
        target = nodes["leaf"] if rng.random() < 0.85 else rng.choice(list(nodes.values()))
    else:
        issuers = [n for n in nodes.values() if n.role != "leaf"]
        target = rng.choice(issuers) if issuers and rng.random() < 0.9 else nodes["leaf"]
    kinds.append(f"usage-{usage}-on-{target.role}")
    data = _digest(_selected(target.cert, min(selector, 1)), mtype if mtype < 3 else 1)
    roll = rng.random()
    if roll < 0.12:
        kinds.append("data-wrong")
        data = rng.randbytes(len(data))
    elif roll < 0.24 and mtype == 0:
        data = _damaged(rng, data, kinds)
    elif roll < 0.27 and mtype in (1, 2):
        kinds.append("data-wrong-length")
        data = data[:-1]
    return f"{usage} {selector} {mtype} {data.hex()}"


def make_case(number: int, rng: random.Random, pool: KeyPool, now: datetime,
              name: str | None = None) -> DaneCase:
    """Case ``number``; ``name`` is the reference name (TLSA base domain), random if None."""
    kinds: list[str] = []
    build = _Builder(rng, now, kinds)
    name = name or f"mx{number}.example{rng.randrange(1, 9)}.test"
    names, cn, partial = _leaf_names(rng, name, kinds)
    keys = pool.draw(6)
    leaf_subject = _name(cn) if cn is not None else x509.Name([])
    levels = rng.choices([0, 1, 2, 3], weights=[12, 30, 40, 18])[0]
    nodes: dict[str, Node] = {}
    if levels == 0:
        kinds.append("self-signed-leaf")
        subject = leaf_subject if cn is not None else _name(f"self {number}")
        leaf = build.issue(subject, keys[0], None, ca=False, role="leaf", names=names)
        nodes["leaf"] = leaf
        presented = [leaf.cert]
    else:
        kinds.append(f"levels-{levels}")
        root = build.issue(_name(f"Root {number}"), keys[1], None, ca=True, role="root")
        nodes["root"] = root
        path = [root]
        for level in range(1, levels):
            node = build.issue(_name(f"Issuer {number}.{level}"), keys[1 + level], path[-1],
                               ca=True, role=f"intermediate{level}")
            nodes[node.role] = node
            path.append(node)
        leaf = build.issue(leaf_subject, keys[0], path[-1], ca=False, role="leaf", names=names)
        nodes["leaf"] = leaf
        presented = [leaf.cert, *(node.cert for node in reversed(path))]
        if rng.random() < 0.3:
            presented = _cross_sign(rng, build, nodes, path, keys[5], number, presented)
        presented = _present(rng, presented, kinds)
    records = [_record(rng, nodes, kinds) for _ in range(rng.randint(1, 4))]
    leaf_pem = nodes["leaf"].key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())
    return DaneCase(number, presented, leaf_pem, records, name, partial, kinds, nodes)


def _cross_sign(rng: random.Random, build: _Builder, nodes: dict[str, Node],
                path: list[Node], other_key: Key, number: int,
                presented: list[x509.Certificate]) -> list[x509.Certificate]:
    """A second root issues a copy (same name, same key) of the root or an intermediate."""
    other = build.issue(_name(f"Other Root {number}"), other_key, None, ca=True,
                        role="other-root", dates=(build.now - 2 * DAY, build.now + 60 * DAY))
    nodes["other-root"] = other
    original = rng.choice(path)
    copy = build.issue(original.cert.subject, original.key, other, ca=True,
                       role="cross", dates=(build.now - 2 * DAY, build.now + 60 * DAY))
    nodes["cross"] = copy
    build.kinds.append(f"cross-signed-{original.role}")
    spot = presented.index(original.cert)
    if rng.random() < 0.5:
        presented = [*presented[:spot], copy.cert, *presented[spot:]]  # cross copy first
    else:
        presented = [*presented[:spot + 1], copy.cert, *presented[spot + 1:]]
    if rng.random() < 0.6:
        presented.append(other.cert)
    return presented


def _present(rng: random.Random, chain: list[x509.Certificate],
             kinds: list[str]) -> list[x509.Certificate]:
    """What the server sends: the leaf first, then 0-3 of the rest, as servers get it wrong."""
    leaf, rest = chain[0], chain[1:]
    roll = rng.random()
    if roll < 0.35:
        kinds.append("sent-whole")
    elif roll < 0.65 and rest:
        kinds.append("sent-without-top")
        rest = rest[:-1]
    elif roll < 0.78 and len(rest) > 1:
        kinds.append("sent-missing-one")
        del rest[rng.randrange(len(rest))]
    elif roll < 0.9 and len(rest) > 1:
        kinds.append("sent-shuffled")
        rng.shuffle(rest)
    else:
        kinds.append("sent-whole")
    return [leaf, *rest[:3]]


def ee_record(cert: x509.Certificate) -> str:
    """The ``3 1 1`` record that pins ``cert``."""
    return f"3 1 1 {_digest(_selected(cert, 1), 1).hex()}"


def case_mix(cases: Sequence[DaneCase]) -> Counter[str]:
    mix: Counter[str] = Counter()
    for case in cases:
        mix.update(set(case.kinds))
    return mix


def now() -> datetime:
    return datetime.now(UTC)
