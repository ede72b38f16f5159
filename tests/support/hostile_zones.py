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
# Every name below many.dane.test has the same 1,000 MX hosts (a wildcard MX RRset).
MANY_MX_DOMAINS = tuple(f"{c}.many.dane.test" for c in "abcd")
MANY_MX_HOSTS = 1000
HOSTS_ZONE = "mxhosts.test"
# Twelve DANE hosts, all of one preference: more than resolver.max_mx_hosts (10).
SPLIT_DOMAIN = "split.dane.test"
# An MX target of 253 characters (255 octets): "_25._tcp." before it is too long.
LONG_TARGET_DOMAIN = "long.dane.test"
LONG_TARGET = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 50]) + ".plain.test"


def _digest(label: str) -> str:
    return hashlib.sha256(label.encode()).hexdigest()


def zones(many_mx: int = MANY_MX_HOSTS) -> tuple[Zone, ...]:
    assert len(LONG_TARGET) == 253
    # The hosts live in a zone of their own: an answer carrying a thousand signed
    # address records as additional data is more RRSIGs than unbound validates.
    many = [f"*.many MX {10 + i // 10} mx{i}.{HOSTS_ZONE}." for i in range(many_mx)]
    hosts = []
    for i in range(many_mx):
        hosts += [f"mx{i} A 127.0.1.{i % 250 + 1}",
                  f"_25._tcp.mx{i} TLSA 3 1 1 {_digest(f'many{i}')}"]
    split = [f"split MX 10 mx{i}.{HOSTS_ZONE}." for i in range(min(12, many_mx))]
    return (
        Zone("dane.test", records=(
            "d MX 10 mx.d",
            "mx.d A 127.0.0.61",
            f"_25._tcp.mx.d TLSA 3 1 1 {_digest('dane')}",
            f"long MX 10 {LONG_TARGET}.",
            *many,
            *split,
        )),
        Zone(HOSTS_ZONE, records=tuple(hosts) or ("@ TXT empty",)),
        Zone("plain.test", signed=False, records=(
            "p MX 10 mx.p",
            "mx.p A 127.0.0.62",
            "*.wild MX 10 mx.p",
            f"{LONG_TARGET}. A 127.0.0.63",
        )),
    )
