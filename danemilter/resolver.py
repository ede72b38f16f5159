"""DNS answers with their DNSSEC state, from one validating resolver.

Trust comes from the AD bit of a validating resolver reached over loopback, as
Postfix does with ``smtp_dns_support_level = dnssec``: this module never
validates signatures itself, it reports what the resolver vouched for.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum

import dns.asyncquery
import dns.edns
import dns.exception
import dns.flags
import dns.immutable
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset
from dns.rdtypes.ANY.TLSA import TLSA

from danemilter.config.model import ResolverSettings
from danemilter.errors import InputError

__all__ = ["Answer", "Resolver", "ResolverSettings", "Security", "interpret"]

log = logging.getLogger(__name__)

# RFC 8914 §4: extended DNS error codes 6-12 all report a DNSSEC validation failure.
_EDE_DNSSEC_FAILURE = range(6, 13)
_MAX_CNAME_CHAIN = 16
# RFC 9715 / DNS flag day 2020: a payload that avoids IP fragmentation.
_EDNS_PAYLOAD = 1232


@dns.immutable.immutable
class _TLSAAsPublished(TLSA):
    """TLSA rdata kept as published, without dnspython's digest-length check.

    dnspython (2.9) refuses a whole DNS message when one TLSA record's data length
    does not fit its matching type. RFC 7672 §3.1 makes such a record merely
    unusable: the RRset is still secure, and a good record beside it still counts.
    Refusing the message would turn one bad record into a failed lookup (tempfail).
    ``TLSARecord.usable`` makes the judgement instead.
    """

    _cert_length_by_mtype = {}  # noqa: RUF012 - read-only override of dnspython's table


# dnspython has no public switch for this; its rdata class table is the hook.
dns.rdata._rdata_classes[(dns.rdataclass.ANY, dns.rdatatype.TLSA)] = _TLSAAsPublished
dns.rdata._rdata_classes[(dns.rdataclass.IN, dns.rdatatype.TLSA)] = _TLSAAsPublished


class Security(StrEnum):
    """DNSSEC state of an answer (RFC 4035 §4.3 terms)."""

    SECURE = "secure"
    INSECURE = "insecure"
    BOGUS = "bogus"
    INDETERMINATE = "indeterminate"


@dataclass(frozen=True, slots=True)
class Answer:
    """One lookup's outcome. Failures are values, not exceptions: RFC 7672 acts on them."""

    qname: str
    rdtype: dns.rdatatype.RdataType
    security: Security
    rcode: dns.rcode.Rcode | None
    canonical_name: str
    records: tuple[dns.rdata.Rdata, ...] = ()
    ttl: int = 0
    reason: str = ""
    extended_errors: tuple[int, ...] = field(default=())

    @property
    def failed(self) -> bool:
        return self.security in (Security.BOGUS, Security.INDETERMINATE)

    @property
    def secure(self) -> bool:
        return self.security is Security.SECURE

    @property
    def nxdomain(self) -> bool:
        return not self.failed and self.rcode == dns.rcode.NXDOMAIN

    @property
    def expanded(self) -> bool:
        """True when the answer was reached through a CNAME chain."""
        return self.canonical_name != self.qname


def _text(name: dns.name.Name) -> str:
    return name.to_text(omit_final_dot=True).lower()


def _negative_ttl(response: dns.message.Message) -> int:
    # RFC 2308 §5: the lifetime of a negative answer is min(SOA TTL, SOA MINIMUM).
    for rrset in response.authority:
        if rrset.rdtype == dns.rdatatype.SOA and len(rrset) > 0:
            soa = rrset[0]
            return int(min(rrset.ttl, soa.minimum))
    return 0


def interpret(
    qname: dns.name.Name, rdtype: dns.rdatatype.RdataType, response: dns.message.Message
) -> Answer:
    """Turn a resolver's response into an Answer (pure; no I/O)."""
    name_text = _text(qname)
    rcode = response.rcode()
    ede = tuple(
        int(opt.code)
        for opt in response.options
        if isinstance(opt, dns.edns.EDEOption)
    )
    if rcode == dns.rcode.SERVFAIL:
        dnssec_failure = [code for code in ede if code in _EDE_DNSSEC_FAILURE]
        # A validating resolver answers SERVFAIL for bogus data; without EDE we
        # cannot tell it from an upstream outage, and both make the data unusable.
        reason = (
            f"DNSSEC validation failed (extended DNS error {dnssec_failure[0]})"
            if dnssec_failure
            else "resolver answered SERVFAIL"
        )
        return Answer(name_text, rdtype, Security.BOGUS, rcode, name_text,
                      reason=reason, extended_errors=ede)
    if rcode not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
        return Answer(name_text, rdtype, Security.INDETERMINATE, rcode, name_text,
                      reason=f"resolver answered {dns.rcode.to_text(rcode)}",
                      extended_errors=ede)
    security = Security.SECURE if response.flags & dns.flags.AD else Security.INSECURE

    name = qname
    ttls: list[int] = []
    for _ in range(_MAX_CNAME_CHAIN):
        rrset = _find(response, name, rdtype)
        if rrset is not None:
            ttls.append(rrset.ttl)
            return Answer(name_text, rdtype, security, rcode, _text(name),
                          records=tuple(rrset), ttl=min(ttls), extended_errors=ede)
        cname = _find(response, name, dns.rdatatype.CNAME)
        if cname is None or len(cname) == 0:
            break
        ttls.append(cname.ttl)
        name = cname[0].target
    else:
        return Answer(name_text, rdtype, Security.INDETERMINATE, rcode, _text(name),
                      reason="CNAME chain too long", extended_errors=ede)
    negative = _negative_ttl(response)
    return Answer(name_text, rdtype, security, rcode, _text(name),
                  ttl=min([*ttls, negative]), extended_errors=ede)


def _find(
    response: dns.message.Message, name: dns.name.Name, rdtype: dns.rdatatype.RdataType
) -> dns.rrset.RRset | None:
    for rrset in response.answer:
        if rrset.rdtype == rdtype and rrset.rdclass == dns.rdataclass.IN and rrset.name == name:
            return rrset
    return None


Transport = Callable[[dns.message.Message, float], Awaitable[dns.message.Message]]


class Resolver:
    """Asks one validating resolver; concurrent identical questions share one query.

    At most ``settings.max_queries`` queries are outstanding at once (each holds a
    socket): a domain with a thousand MX hosts, or many such domains at once, must not
    take every file descriptor of the process from the other lookups. A query that
    cannot start within its budget fails like one that got no answer.
    """

    def __init__(self, settings: ResolverSettings) -> None:
        self.settings = settings
        self.queries_sent = 0
        self.outstanding = 0
        self.most_outstanding = 0
        self._slots = asyncio.Semaphore(settings.max_queries)
        self._inflight: dict[tuple[dns.name.Name, int], asyncio.Future[Answer]] = {}
        if not settings.is_loopback:
            log.warning(
                "resolver %s is not on loopback: its AD bit can be forged on the path; "
                "run a validating resolver on this host",
                settings.address,
            )

    async def query(
        self, name: str, rdtype: dns.rdatatype.RdataType, timeout: float | None = None
    ) -> Answer:
        try:
            qname = dns.name.from_text(name)
        except dns.exception.DNSException as exc:
            raise InputError(f"invalid DNS name {name!r}: {exc}") from None
        key = (qname, int(rdtype))
        pending = self._inflight.get(key)
        if pending is None:
            pending = asyncio.ensure_future(self._ask(qname, rdtype, timeout))
            self._inflight[key] = pending
            pending.add_done_callback(lambda _: self._inflight.pop(key, None))
        # Shield: one waiter giving up must not cancel the query for the others.
        return await asyncio.shield(pending)

    async def _ask(
        self, qname: dns.name.Name, rdtype: dns.rdatatype.RdataType, timeout: float | None
    ) -> Answer:
        budget = self.settings.timeout if timeout is None else min(timeout, self.settings.timeout)
        name_text = _text(qname)
        request = dns.message.make_query(
            qname, rdtype, want_dnssec=True, use_edns=0, payload=_EDNS_PAYLOAD
        )
        # RFC 6840 §5.7: setting AD in the query asks for the AD bit in the reply.
        request.flags |= dns.flags.AD
        loop = asyncio.get_running_loop()
        started = loop.time()
        where, port = self.settings.address, self.settings.port
        try:
            await asyncio.wait_for(self._slots.acquire(), budget)
        except TimeoutError:
            return Answer(name_text, rdtype, Security.INDETERMINATE, None, name_text,
                          reason=f"{self.settings.max_queries} queries already outstanding "
                          f"for {budget:g} s (resolver.max_queries)")
        self.outstanding += 1
        self.most_outstanding = max(self.most_outstanding, self.outstanding)
        try:
            remaining = max(budget - (loop.time() - started), 0.01)
            self.queries_sent += 1
            response = await dns.asyncquery.udp(request, where, timeout=remaining, port=port)
            if response.flags & dns.flags.TC:
                remaining = max(budget - (loop.time() - started), 0.1)
                self.queries_sent += 1
                response = await dns.asyncquery.tcp(request, where, timeout=remaining, port=port)
        except dns.exception.Timeout:
            return Answer(name_text, rdtype, Security.INDETERMINATE, None, name_text,
                          reason=f"no answer from resolver {where}:{port} within {budget:g} s")
        except (dns.exception.DNSException, OSError, ValueError, EOFError) as exc:
            # A garbled or hostile reply is a failed lookup, never a crash.
            return Answer(name_text, rdtype, Security.INDETERMINATE, None, name_text,
                          reason=f"bad answer from resolver {where}:{port}: {exc}")
        finally:
            self.outstanding -= 1
            self._slots.release()
        return interpret(qname, rdtype, response)
