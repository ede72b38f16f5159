"""Zones for the hardening tests (issue 16): a DANE domain, a domain without DANE, a
wildcard that answers for any label (underscores included), and a domain with more MX
hosts than any MTA would use."""

from __future__ import annotations

import hashlib

from tests.support.dnsbed import Zone

DANE_DOMAIN = "d.dane.test"
PLAIN_DOMAIN = "p.plain.test"
# Any name below it has an MX (the wildcard), e.g. "_x.wild.plain.test".
WILDCARD_PARENT = "wild.plain.test"
MANY_MX_DOMAIN = "many.dane.test"
MANY_MX_HOSTS = 1000


def _digest(label: str) -> str:
    return hashlib.sha256(label.encode()).hexdigest()


def zones(many_mx: int = MANY_MX_HOSTS) -> tuple[Zone, ...]:
    many = []
    for i in range(many_mx):
        many += [f"many MX {10 + i // 10} mx{i}.many", f"mx{i}.many A 127.0.1.{i % 250 + 1}",
                 f"_25._tcp.mx{i}.many TLSA 3 1 1 {_digest(f'many{i}')}"]
    return (
        Zone("dane.test", records=(
            "d MX 10 mx.d",
            "mx.d A 127.0.0.61",
            f"_25._tcp.mx.d TLSA 3 1 1 {_digest('dane')}",
            *many,
        )),
        Zone("plain.test", signed=False, records=(
            "p MX 10 mx.p",
            "mx.p A 127.0.0.62",
            "*.wild MX 10 mx.p",
        )),
    )
