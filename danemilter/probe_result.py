"""What TLS probes of MX hosts found, and the pure judgements made from it.

The probing itself (sockets, SMTP, OpenSSL) is danemilter.probe; these values and rules
are shared with the cache codec, the policy and the front ends without loading it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from danemilter.judge import DaneVerdict, OcspState, PkixVerdict, wants_staple
from danemilter.status import DomainState, DomainStatus, HostState, HostStatus

# The trust label of PKIX verdicts judged against the system's store (no mta_sts.ca_file).
SYSTEM_TRUST = "system"


class OcspRequest(StrEnum):
    """Which probes ask for a staple: ``auto`` where Exim would (a staple can be checked)."""

    AUTO = "auto"
    ALWAYS = "always"
    NEVER = "never"


class Stage(StrEnum):
    """The step of a probe that failed."""

    NOT_PROBED = "not-probed"
    CONNECT = "connect"
    BANNER = "banner"
    EHLO = "ehlo"
    STARTTLS = "starttls"
    HANDSHAKE = "handshake"


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """What one STARTTLS probe of one address found (the ``probes`` JSON objects).

    ``failed_at`` names the step that went wrong (``None`` when a handshake completed).
    ``dane``: ``verified``/``mismatch`` for a DANE host whose chain was judged,
    ``failed`` for a DANE host whose chain could not be obtained, ``not-applicable``
    for a host without usable TLSA records. ``pkix``: whether a host without DANE
    presented a chain valid under PKIX for its name (RFC 8461 §4.2, what an MTA-STS
    sender requires), ``not-checked`` for DANE hosts and where no handshake completed.
    """

    address: str
    port: int
    starttls: bool
    tls_version: str | None
    dane: DaneVerdict
    depth: int | None
    ocsp: OcspState
    reason: str
    ocsp_reason: str = ""
    ocsp_url: str | None = None
    must_staple: bool = False
    failed_at: Stage | None = None
    seconds: float = 0.0
    pkix: PkixVerdict = PkixVerdict.NOT_CHECKED
    pkix_reason: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "port": self.port,
            "starttls": self.starttls,
            "tls_version": self.tls_version,
            "dane": self.dane,
            "depth": self.depth,
            "ocsp": self.ocsp,
            "reason": self.reason,
            "ocsp_reason": self.ocsp_reason,
            "ocsp_url": self.ocsp_url,
            "must_staple": self.must_staple,
            "failed_at": self.failed_at,
            "seconds": round(self.seconds, 3),
            "pkix": self.pkix,
            "pkix_reason": self.pkix_reason,
        }


@dataclass(frozen=True, slots=True)
class DomainProbe:
    """A domain's DNS status (``dane-mismatch`` when a probe showed one) and its probes.

    ``probes[i]`` belongs to ``status.hosts[i]``; hosts that were not probed (failed
    lookups, no addresses) have an empty tuple.
    """

    status: DomainStatus
    probes: tuple[tuple[ProbeResult, ...], ...]

    def to_json(self) -> dict[str, Any]:
        document = self.status.to_json()
        for host, probes in zip(document["hosts"], self.probes, strict=True):
            host["probes"] = [p.to_json() for p in probes]
        return document


def private_address_reason(address: str) -> str | None:
    """Why ``address`` must not be probed without ``allow_private``; None when it may be.

    IPv4-mapped and 6to4/Teredo-embedded IPv4 addresses are judged by the IPv4 address
    they carry, so ``::ffff:10.0.0.1`` is as private as ``10.0.0.1``.
    """
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return "not an IP address"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:  # the connection goes to the IPv4 address
            return private_address_reason(str(ip.ipv4_mapped))
        embedded = ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if embedded is not None:
            inner = private_address_reason(str(embedded))
            if inner is not None:
                return inner
    checks = (
        ("unspecified", ip.is_unspecified),
        ("loopback", ip.is_loopback),
        ("link-local", ip.is_link_local),
        ("multicast", ip.is_multicast),
        ("private", ip.is_private),
        ("reserved", ip.is_reserved),
        ("not globally routable", not ip.is_global),
    )
    for kind, hit in checks:
        if hit:
            return kind
    return None


def dane_relevant(host: HostStatus) -> bool:
    """Whether a host is probed at all: it would be used for delivery (RFC 7672 §2.2)."""
    return host.deliverable


def domain_verdict(status: DomainStatus,
                   probes: Sequence[Sequence[ProbeResult]]) -> DomainStatus:
    """``dane-mismatch`` when a DANE host's certificate matches none of its TLSA records.

    Delivery to that host would fail (RFC 7672 §2.2: authenticated TLS is required),
    so the domain is reported as broken even when other hosts verify.
    """
    if status.status not in (DomainState.DANE, DomainState.PARTIAL):
        return status
    for host, results in zip(status.hosts, probes, strict=True):
        if host.tlsa_state is not HostState.DANE:
            continue
        for result in results:
            if result.dane == "mismatch":
                return replace(
                    status,
                    status=DomainState.DANE_MISMATCH,
                    reason=f"{host.name} [{result.address}] presents a certificate that "
                           f"matches none of its TLSA records: {result.reason}",
                )
    return status


def staple_wanted(host: HostStatus, policy: OcspRequest) -> bool:
    if policy == "always":
        return True
    if policy == "never":
        return False
    records = host.records if host.tlsa_state is HostState.DANE else ()
    return wants_staple(records)
