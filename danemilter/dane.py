"""RFC 7672 domain evaluation: MX hosts, their TLSA records, and the domain's DANE status.

Rules (RFC 7672 §2.1-2.3, DESIGN.md "DANE semantics"):

* MX lookup bogus or failed → ``tempfail``; NXDOMAIN → ``nxdomain``; a lone
  "0 ." MX → ``nullmx`` (RFC 7505); no MX → implicit MX, the domain itself.
* Per host: A, AAAA and TLSA at ``_25._tcp.<host>`` are asked in parallel.
  When the address answer came through a CNAME chain that is secure end to end,
  TLSA at the expanded name is preferred and the original name is the fallback
  (RFC 7672 §2.2.2, RFC 7671 §7). A host whose address or TLSA lookup failed is
  ``failed``: it must not be used for delivery (RFC 7672 §2.2).
* An insecure MX RRset does not stop DANE for a host whose TLSA RRset is
  secure (RFC 7672 §2.2.1, Postfix's default).
* Domain: failed hosts and hosts without addresses are left out; of the rest,
  all DANE → ``dane``; some → ``partial``; all secure-but-unusable →
  ``unusable-tlsa``; otherwise ``none``. No usable host and at least one failed
  → ``tempfail``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import dns.name
import dns.rdatatype
from dns.rdtypes.ANY.MX import MX
from dns.rdtypes.ANY.TLSA import TLSA

from danemilter.errors import InputError
from danemilter.resolver import Answer, Resolver
from danemilter.tlsa import TLSARecord

log = logging.getLogger(__name__)

_TLSA_PREFIX = "_25._tcp."


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


def _tlsa_records(answer: Answer) -> tuple[TLSARecord, ...]:
    records = []
    for rdata in answer.records:
        if not isinstance(rdata, TLSA):
            continue
        try:
            records.append(TLSARecord(rdata.usage, rdata.selector, rdata.mtype, bytes(rdata.cert)))
        except InputError as exc:
            log.info("ignoring malformed TLSA record at %s: %s", answer.canonical_name, exc)
    return tuple(records)


def _tlsa_verdict(answer: Answer) -> tuple[HostState, tuple[TLSARecord, ...], str]:
    """Host state from one TLSA answer, before any fallback to another base name."""
    if answer.failed:
        return HostState.FAILED, (), f"TLSA lookup for {answer.qname} failed: {answer.reason}"
    if not answer.records:
        how = "securely denied" if answer.secure else "absent (insecure)"
        return HostState.NONE, (), f"TLSA at {answer.qname} {how}"
    if not answer.secure:
        # Insecure records are no evidence of anything (RFC 7672 §2.2.3): not reported.
        return HostState.NONE, (), f"TLSA at {answer.qname} is insecure: DANE does not apply"
    records = _tlsa_records(answer)
    if any(r.usable for r in records):
        return HostState.DANE, records, f"usable secure TLSA at {answer.qname}"
    return HostState.UNUSABLE, records, f"secure TLSA at {answer.qname} has no usable record"


class DomainEvaluator:
    """Evaluates domains with a shared resolver; concurrent requests for a domain share work."""

    def __init__(self, resolver: Resolver) -> None:
        self.resolver = resolver
        self._inflight: dict[str, asyncio.Task[DomainStatus]] = {}

    async def evaluate(self, domain: str, deadline: float) -> DomainStatus:
        """Status of ``domain`` (canonical A-label form) within ``deadline`` seconds.

        Never raises for DNS trouble: a timeout or failure is a ``tempfail`` status.
        """
        return await shared_evaluation(self._inflight, domain, deadline,
                                       lambda: self._evaluate_within(domain, deadline))

    async def _evaluate_within(self, domain: str, deadline: float) -> DomainStatus:
        try:
            return await asyncio.wait_for(self._evaluate(domain, deadline), deadline)
        except TimeoutError:
            return deadline_tempfail(domain, deadline)

    async def _evaluate(self, domain: str, deadline: float) -> DomainStatus:
        mx = await self.resolver.query(domain, dns.rdatatype.MX, deadline)
        if mx.failed:
            return _tempfail(domain, f"MX lookup failed: {mx.reason}", mx_secure=False)
        if mx.nxdomain:
            return DomainStatus(domain, DomainState.NXDOMAIN, 0, mx.secure, (),
                                "domain does not exist", mx.ttl)
        exchanges = sorted(
            (rdata.preference, rdata.exchange) for rdata in mx.records if isinstance(rdata, MX)
        )
        if exchanges and all(name == dns.name.root for _, name in exchanges):
            return DomainStatus(domain, DomainState.NULLMX, 0, mx.secure, (),
                                "domain accepts no mail (null MX)", mx.ttl)
        # RFC 7505 §3: a null MX beside real ones is a configuration error; ignore it.
        targets = [(pref, name.to_text(omit_final_dot=True).lower())
                   for pref, name in exchanges if name != dns.name.root]
        if not targets:
            # RFC 5321 §5.1: no MX means the domain itself is the implicit MX.
            targets = [(0, domain)]
        unique: dict[str, int] = {}
        for pref, name in targets:
            unique.setdefault(name, pref)
        hosts = tuple(
            await asyncio.gather(
                *(self._evaluate_host(name, pref, deadline) for name, pref in unique.items())
            )
        )
        state, reason = domain_state(hosts)
        ttl = min([mx.ttl, *(h.ttl for h in hosts)])
        canonical = mx.canonical_name if mx.secure and mx.expanded else None
        return DomainStatus(domain, state, usage_bits(hosts), mx.secure, hosts, reason, ttl,
                            canonical)

    async def _evaluate_host(self, host: str, preference: int, deadline: float) -> HostStatus:
        query = self.resolver.query
        # The original name's TLSA is asked alongside the addresses, so a host
        # costs one round trip unless a CNAME makes the expanded name matter.
        a, aaaa, tlsa_original = await asyncio.gather(
            query(host, dns.rdatatype.A, deadline),
            query(host, dns.rdatatype.AAAA, deadline),
            query(_TLSA_PREFIX + host, dns.rdatatype.TLSA, deadline),
        )
        address_answers = (a, aaaa)
        failed = [ans for ans in address_answers if ans.failed]
        addresses = tuple(
            rdata.to_text() for ans in address_answers if not ans.failed for rdata in ans.records
        )
        address_secure = all(ans.secure for ans in address_answers)
        ttl = min(a.ttl, aaaa.ttl, tlsa_original.ttl)
        if failed:
            return HostStatus(host, preference, addresses, False, HostState.FAILED, None, (),
                              f"address lookup for {host} failed: {failed[0].reason}", ttl)
        if not addresses:
            return HostStatus(host, preference, (), address_secure, HostState.NONE, None, (),
                              f"{host} has no address records", ttl)

        expanded = {ans.canonical_name for ans in address_answers if ans.records}
        expanded.discard(host)
        if address_secure and len(expanded) == 1:
            base = expanded.pop()
            tlsa_expanded = await query(_TLSA_PREFIX + base, dns.rdatatype.TLSA, deadline)
            ttl = min(ttl, tlsa_expanded.ttl)
            state, records, reason = _tlsa_verdict(tlsa_expanded)
            if state is not HostState.NONE:
                return HostStatus(host, preference, addresses, address_secure, state,
                                  base, records, reason, ttl)

        state, records, reason = _tlsa_verdict(tlsa_original)
        return HostStatus(host, preference, addresses, address_secure, state,
                          host if records else None, records, reason, ttl)


async def shared_evaluation(
    inflight: dict[str, asyncio.Task[DomainStatus]], domain: str, deadline: float,
    start: Callable[[], Coroutine[Any, Any, DomainStatus]],
) -> DomainStatus:
    """Join the evaluation of ``domain`` already in ``inflight``, or begin one with
    ``start``; a caller whose ``deadline`` passes gets ``tempfail`` while the shared
    evaluation goes on for the others."""
    task = inflight.get(domain)
    if task is None:
        task = asyncio.ensure_future(start())
        inflight[domain] = task
        task.add_done_callback(lambda _: inflight.pop(domain, None))
    try:
        return await asyncio.wait_for(asyncio.shield(task), deadline)
    except TimeoutError:
        return deadline_tempfail(domain, deadline)


def deadline_tempfail(domain: str, deadline: float) -> DomainStatus:
    return _tempfail(domain, f"evaluation exceeded its deadline of {deadline:g} s")


def _tempfail(domain: str, reason: str, mx_secure: bool = False) -> DomainStatus:
    return DomainStatus(domain, DomainState.TEMPFAIL, 0, mx_secure, (), reason, 0)
