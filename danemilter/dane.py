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

import dns.name
import dns.rdatatype
from dns.rdtypes.ANY.MX import MX
from dns.rdtypes.ANY.TLSA import TLSA

from danemilter.deadline import Deadline
from danemilter.errors import InputError
from danemilter.resolver import Answer, Resolver, Security
from danemilter.status import (
    DomainState,
    DomainStatus,
    HostState,
    HostStatus,
    domain_state,
    usage_bits,
)
from danemilter.tlsa import TLSARecord

__all__ = ["DomainEvaluator", "DomainState", "DomainStatus", "HostState", "HostStatus",
           "deadline_tempfail", "domain_state", "usage_bits"]

log = logging.getLogger(__name__)

_TLSA_PREFIX = "_25._tcp."


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
    if not answer.records and answer.reason:
        return HostState.NONE, (), answer.reason
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
    """Evaluates domains with a shared resolver. Identical DNS questions asked at once
    share one query (the resolver's doing); whole evaluations are coalesced by the
    service layer above, not here."""

    def __init__(self, resolver: Resolver) -> None:
        self.resolver = resolver

    async def evaluate(self, domain: str, deadline: Deadline | float) -> DomainStatus:
        """Status of ``domain`` (canonical A-label form) by ``deadline`` (or within that
        many seconds).

        Never raises for DNS trouble: a timeout or failure is a ``tempfail`` status.
        """
        if not isinstance(deadline, Deadline):
            deadline = Deadline.after(deadline)
        try:
            return await asyncio.wait_for(self._evaluate(domain, deadline),
                                          deadline.remaining())
        except TimeoutError:
            return deadline_tempfail(domain, deadline)

    async def _evaluate(self, domain: str, deadline: Deadline) -> DomainStatus:
        mx = await self.resolver.query(domain, dns.rdatatype.MX, deadline.remaining())
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
        chosen, left_out = _most_preferred(unique, self.resolver.settings.max_mx_hosts)
        hosts = tuple(
            await asyncio.gather(
                *(self._evaluate_host(name, pref, deadline) for name, pref in chosen)
            )
        )
        state, reason = domain_state(hosts)
        if left_out and state is DomainState.DANE:
            # The MTA picks at random among hosts of one preference: one it may pick
            # was not looked at, so "every host is DANE" cannot be said.
            state = DomainState.PARTIAL
            reason = (f"{left_out} more MX hosts at preference {chosen[-1][1]} than "
                      f"resolver.max_mx_hosts ({len(chosen)}) were not evaluated")
        ttl = min([mx.ttl, *(h.ttl for h in hosts)])
        canonical = mx.canonical_name if mx.secure and mx.expanded else None
        return DomainStatus(domain, state, usage_bits(hosts), mx.secure, hosts, reason, ttl,
                            canonical)

    async def _evaluate_host(self, host: str, preference: int, deadline: Deadline
                             ) -> HostStatus:
        query = self.resolver.query
        budget = deadline.remaining()
        # The original name's TLSA is asked alongside the addresses, so a host
        # costs one round trip unless a CNAME makes the expanded name matter.
        a, aaaa, tlsa_original = await asyncio.gather(
            query(host, dns.rdatatype.A, budget),
            query(host, dns.rdatatype.AAAA, budget),
            query(_TLSA_PREFIX + host, dns.rdatatype.TLSA, budget) if _tlsa_name_fits(host)
            else _no_tlsa_name(host),
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
        if address_secure and len(expanded) == 1 and _tlsa_name_fits(next(iter(expanded))):
            base = expanded.pop()
            tlsa_expanded = await query(_TLSA_PREFIX + base, dns.rdatatype.TLSA,
                                        deadline.remaining())
            ttl = min(ttl, tlsa_expanded.ttl)
            state, records, reason = _tlsa_verdict(tlsa_expanded)
            if state is not HostState.NONE:
                return HostStatus(host, preference, addresses, address_secure, state,
                                  base, records, reason, ttl)

        state, records, reason = _tlsa_verdict(tlsa_original)
        return HostStatus(host, preference, addresses, address_secure, state,
                          host if records else None, records, reason, ttl)


def _most_preferred(hosts: dict[str, int], limit: int) -> tuple[list[tuple[str, int]], int]:
    """The ``limit`` most preferred hosts (Postfix's ``smtp_mx_address_limit`` keeps the
    head of the list the same way: hosts past it are never used), and how many hosts
    of the last chosen preference were left out (0 when the cut falls between two
    preferences)."""
    ordered = sorted(hosts.items(), key=lambda item: item[1])
    chosen, rest = ordered[:limit], ordered[limit:]
    if not rest:
        return chosen, 0
    return chosen, sum(1 for _, pref in rest if pref == chosen[-1][1])


async def _no_tlsa_name(host: str) -> Answer:
    """The answer for a TLSA owner name that cannot exist: no records, as if denied."""
    name = _TLSA_PREFIX + host
    return Answer(name, dns.rdatatype.TLSA, Security.INSECURE, None, name,
                  reason=f"{name} is longer than 255 octets: no TLSA record can exist")


def _tlsa_name_fits(host: str) -> bool:
    """Whether ``_25._tcp.<host>`` is a DNS name at all (255 octets at most)."""
    try:
        dns.name.from_text(_TLSA_PREFIX + host)
    except dns.name.NameTooLong:
        return False
    return True


def deadline_tempfail(domain: str, deadline: Deadline) -> DomainStatus:
    return _tempfail(domain, f"evaluation exceeded its deadline of {deadline.seconds:g} s")


def _tempfail(domain: str, reason: str, mx_secure: bool = False) -> DomainStatus:
    return DomainStatus(domain, DomainState.TEMPFAIL, 0, mx_secure, (), reason, 0)
