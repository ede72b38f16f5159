"""A domain's DANE status and its MX hosts' (RFC 7672 §2.1-2.3): values and the pure
rules that derive the domain's state from its hosts'. The DNS side is danemilter.dane."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from danemilter.tlsa import TLSARecord


class HostState(StrEnum):
    DANE = "dane"
    UNUSABLE = "unusable"
    NONE = "none"
    FAILED = "failed"


class DomainState(StrEnum):
    DANE = "dane"
    PARTIAL = "partial"
    NONE = "none"
    UNUSABLE_TLSA = "unusable-tlsa"
    TEMPFAIL = "tempfail"
    NULLMX = "nullmx"
    NXDOMAIN = "nxdomain"
    DANE_MISMATCH = "dane-mismatch"
    # The resolver failed its self-check under ``resolver_check: degrade``: its AD bits
    # mean nothing, so no domain is looked up or judged (danemilter.resolver_check).
    RESOLVER_NOT_VALIDATING = "resolver-not-validating"


@dataclass(frozen=True, slots=True)
class HostStatus:
    name: str
    preference: int
    addresses: tuple[str, ...]
    address_secure: bool
    tlsa_state: HostState
    tlsa_base: str | None
    records: tuple[TLSARecord, ...]
    reason: str
    ttl: int

    @property
    def usable_records(self) -> tuple[TLSARecord, ...]:
        return tuple(r for r in self.records if r.usable)

    @property
    def deliverable(self) -> bool:
        """Whether an MTA may use this host at all (RFC 7672 §2.2: not after a failure)."""
        return self.tlsa_state is not HostState.FAILED and bool(self.addresses)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "preference": self.preference,
            "addresses": list(self.addresses),
            "address_secure": self.address_secure,
            "tlsa_state": str(self.tlsa_state),
            "tlsa_base": self.tlsa_base,
            "records": [r.to_text() for r in self.records],
            "reason": self.reason,
        }


@dataclass(frozen=True, slots=True)
class DomainStatus:
    domain: str
    status: DomainState
    usage: int
    mx_secure: bool
    hosts: tuple[HostStatus, ...]
    reason: str
    ttl: int
    # The next-hop domain's CNAME expansion, when a secure MX lookup followed a CNAME:
    # a DANE-TA certificate may name it (RFC 7672 §3.2.3).
    canonical: str | None = None

    def to_json(self) -> dict[str, Any]:
        document: dict[str, Any] = {
            "domain": self.domain,
            "status": str(self.status),
            "usage": self.usage,
            "mx_secure": self.mx_secure,
            "reason": self.reason,
            "hosts": [h.to_json() for h in self.hosts],
        }
        if self.canonical is not None:
            document["canonical"] = self.canonical
        return document


def not_validating(domain: str, reason: str) -> DomainStatus:
    """The status of every domain while the resolver fails its self-check."""
    return DomainStatus(domain, DomainState.RESOLVER_NOT_VALIDATING, 0, False, (), reason, 0)


def usage_bits(hosts: tuple[HostStatus, ...]) -> int:
    """Exim's ``$tls_out_tlsa_usage``: bit n set for each usable usage n on DANE hosts."""
    bits = 0
    for host in hosts:
        if host.tlsa_state is HostState.DANE:
            for record in host.usable_records:
                bits |= 1 << record.usage
    return bits


def domain_state(hosts: tuple[HostStatus, ...]) -> tuple[DomainState, str]:
    """The domain status from its hosts' states (pure; the rule in the module docstring)."""
    candidates = [h for h in hosts if h.deliverable]
    if not candidates:
        failed = [h for h in hosts if h.tlsa_state is HostState.FAILED]
        if failed:
            return DomainState.TEMPFAIL, f"no usable MX host: {failed[0].reason}"
        return DomainState.NONE, "no MX host has an address"
    dane = [h for h in candidates if h.tlsa_state is HostState.DANE]
    if len(dane) == len(candidates):
        return DomainState.DANE, "every usable MX host has usable secure TLSA records"
    if dane:
        return DomainState.PARTIAL, (
            f"{len(dane)} of {len(candidates)} usable MX hosts have usable secure TLSA records"
        )
    if all(h.tlsa_state is HostState.UNUSABLE for h in candidates):
        return DomainState.UNUSABLE_TLSA, "TLSA records are secure but none is usable for SMTP"
    return DomainState.NONE, "no MX host has secure TLSA records"
