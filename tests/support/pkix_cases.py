"""Random PKIX cases for the MTA-STS differential suite: a DANE case, a trust store, EKUs.

Each case starts as a random DANE case (tests/support/dane_cases.py: self-signed leaf or
a root with 0-2 intermediates, cross-signing, expired / not-yet-valid / CA:FALSE
certificates, exact / wildcard / partial-label wildcard / CN-only / too-deep / other names,
what the server sends), drawn from ``random.Random(seed)`` exactly as the DANE suites
draw theirs. What only PKIX cares about is drawn from a second generator derived from the
seed, so the DANE part of case N is the same whatever the PKIX part does:

* the trust store: the case's root, the root that cross-signs, both, an unrelated root
  (with the root's own name now and then: same issuer name, other key), or the leaf itself
  (a self-signed leaf is its own anchor; any other leaf is not, without partial chains);
* a leaf re-issued with EKU clientAuth only, or with no EKU at all (any purpose);
* an intermediate re-issued with EKU clientAuth only (serverAuth excluded for the path).

Re-issuing keeps subject, key, validity and every other extension, so what the leaf's
signature covers still verifies under the re-issued issuer.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from tests.support import dane_cases, pki
from tests.support.dane_cases import DaneCase, KeyPool, Node

DAY = timedelta(days=1)


@dataclass(frozen=True)
class PkixCase:
    number: int
    name: str
    chain: tuple[x509.Certificate, ...]  # what the server sends, leaf first
    leaf_key: pki.PrivateKey
    trust: tuple[x509.Certificate, ...]  # the client's whole trust store
    kinds: tuple[str, ...] = field(default=())
    partial_wildcard: bool = False
    expected: str | None = None  # a class case's verdict: verified|name-mismatch|untrusted

    def trust_pem(self) -> bytes:
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in self.trust)


def reissued(cert: x509.Certificate, signer: pki.PrivateKey,
             usages: Sequence[x509.ObjectIdentifier] | None) -> x509.Certificate:
    """``cert`` again, signed by ``signer``, with EKU ``usages`` (None: no EKU)."""
    builder = (
        x509.CertificateBuilder()
        .subject_name(cert.subject)
        .issuer_name(cert.issuer)
        .public_key(cert.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(cert.not_valid_before_utc)
        .not_valid_after(cert.not_valid_after_utc)
    )
    for extension in cert.extensions:
        if not isinstance(extension.value, x509.ExtendedKeyUsage):
            builder = builder.add_extension(extension.value, extension.critical)
    if usages is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(usages)), critical=False)
    return builder.sign(signer, hashes.SHA256())


def _issuer(nodes: dict[str, Node], role: str) -> Node:
    """The node that signed ``role`` on the case's own path (never the cross copy)."""
    cert = nodes[role].cert
    if cert.issuer == cert.subject and role in ("leaf", "root"):
        return nodes[role]
    return next(node for other, node in nodes.items()
                if other not in ("leaf", "cross", role) and node.cert.subject == cert.issuer)


class PkixCases:
    """Cases for one seed: ``case(n)`` for n = 0, 1, ... in order."""

    def __init__(self, seed: int, now: datetime) -> None:
        self.rng = random.Random(seed)  # the DANE part, as dane_cases draws it
        self.pick = random.Random(f"pkix-{seed}")  # the PKIX part: never from self.rng
        self.pool = KeyPool(self.rng, rsa_keys=3, ec_keys=8)
        self.now = now

    def case(self, number: int) -> PkixCase:
        base = dane_cases.make_case(number, self.rng, self.pool, self.now)
        kinds = list(base.kinds)
        nodes = dict(base.nodes)
        chain = list(base.chain)
        roll = self.pick.random()
        if roll < 0.08:
            chain = self._reissue(nodes, chain, "leaf", [ExtendedKeyUsageOID.CLIENT_AUTH])
            kinds.append("eku-client-only-leaf")
        elif roll < 0.13:
            chain = self._reissue(nodes, chain, "leaf", None)
            kinds.append("eku-absent-leaf")
        middle = sorted(role for role in nodes if role.startswith("intermediate"))
        if middle and self.pick.random() < 0.12:
            role = self.pick.choice(middle)
            chain = self._reissue(nodes, chain, role, [ExtendedKeyUsageOID.CLIENT_AUTH])
            kinds.append(f"eku-client-only-{role}")
        trust, how = self._trust(base, nodes, number)
        kinds.append(f"trust-{how}")
        return PkixCase(number, base.name, tuple(chain), nodes["leaf"].key, tuple(trust),
                        tuple(kinds), base.partial_wildcard)

    def _reissue(self, nodes: dict[str, Node], chain: list[x509.Certificate], role: str,
                 usages: Sequence[x509.ObjectIdentifier] | None) -> list[x509.Certificate]:
        old = nodes[role]
        new = Node(reissued(old.cert, _issuer(nodes, role).key, usages), old.key, role)
        nodes[role] = new
        return [new.cert if cert == old.cert else cert for cert in chain]

    def _trust(self, base: DaneCase, nodes: dict[str, Node],
               number: int) -> tuple[list[x509.Certificate], str]:
        roots = base.roots
        if not roots:  # a self-signed leaf
            options = {"leaf": 75, "unrelated-root": 25}
        else:
            options = {"root": 55, "unrelated-root": 15, "leaf": 5}
            if len(roots) > 1:  # cross-signed: the other root's path is the interesting one
                options |= {"root": 35, "other-root": 25, "both-roots": 15}
        how = self.pick.choices(list(options), weights=list(options.values()))[0]
        if how == "leaf":
            return [nodes["leaf"].cert], how
        if how == "root":
            return [roots[0]], how
        if how == "other-root":
            return [roots[1]], how
        if how == "both-roots":
            return roots, how
        same_name = bool(roots) and self.pick.random() < 0.5
        # A key of the case's own PKI would make the "unrelated" root a copy of its root.
        strangers = [k for k in self.pool.keys if all(k is not n.key for n in nodes.values())]
        stranger = pki.make_ca(f"Root {number}" if same_name else f"Unrelated Root {number}",
                               key=self.pick.choice(strangers))
        return [stranger.cert], how + ("-same-name" if same_name else "")


def class_cases(first: int) -> list[PkixCase]:
    """One fixed case per class, numbered from ``first``, each with the verdict RFC 8461
    §4.2 and Postfix's ``secure`` level give it; names are ``mxN.example9.test`` (random
    cases use example1-8)."""
    made: list[PkixCase] = []

    def name() -> str:
        return f"mx{first + len(made)}.example9.test"

    def add(kind: str, expected: str, chain: Sequence[pki.Issued],
            trust: Sequence[x509.Certificate], partial: bool = False) -> None:
        made.append(PkixCase(first + len(made), name(), tuple(c.cert for c in chain),
                             chain[0].key, tuple(trust), (f"class-{kind}",), partial,
                             expected))

    def narrowed(issued: pki.Issued, signer: pki.Issued) -> pki.Issued:
        return pki.Issued(reissued(issued.cert, signer.key, [ExtendedKeyUsageOID.CLIENT_AUTH]),
                          issued.key)

    now = dane_cases.now()
    root = pki.make_ca("Class Root")
    issuer = pki.make_ca("Class Issuer", issuer=root)
    stranger = pki.make_ca("Class Root")  # the same name, another key
    add("good-chain", "verified", [pki.make_leaf(issuer, [name()]), issuer], [root.cert])
    add("expired-leaf", "untrusted",
        [pki.make_leaf(issuer, [name()], now - 40 * DAY, now - DAY), issuer], [root.cert])
    add("untrusted-root", "untrusted", [pki.make_leaf(issuer, [name()]), issuer, root],
        [stranger.cert])
    add("name-mismatch", "name-mismatch",
        [pki.make_leaf(issuer, ["mail.example9.test"]), issuer], [root.cert])
    add("wildcard-match", "verified", [pki.make_leaf(issuer, ["*.example9.test"]), issuer],
        [root.cert])
    add("missing-intermediate", "untrusted", [pki.make_leaf(issuer, [name()])], [root.cert])
    add("partial-label-wildcard", "name-mismatch",
        [pki.make_leaf(issuer, ["mx*.example9.test"]), issuer], [root.cert], partial=True)
    add("cn-only-no-san", "verified", [pki.make_leaf(issuer, [], cn=name()), issuer],
        [root.cert])
    add("cn-ignored-beside-san", "name-mismatch",
        [pki.make_leaf(issuer, ["mail.example9.test"], cn=name()), issuer], [root.cert])
    add("wildcard-too-deep", "name-mismatch", [pki.make_leaf(issuer, ["*.test"]), issuer],
        [root.cert])
    own = pki.make_leaf(None, [name()])
    add("self-signed-leaf-trusted", "verified", [own], [own.cert])
    add("eku-client-only-leaf", "untrusted",
        [narrowed(pki.make_leaf(issuer, [name()]), issuer), issuer], [root.cert])
    narrow = narrowed(issuer, root)
    add("eku-client-only-intermediate", "untrusted", [pki.make_leaf(narrow, [name()]), narrow],
        [root.cert])
    return made
