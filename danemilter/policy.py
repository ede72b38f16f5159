"""From a domain's DANE status and the matching policy rule to a decision (pure code).

SMTP replies follow DESIGN.md "Milter behaviour" (RFC 3463 / RFC 7505 codes):

* lookups failed: MX 451 4.4.3, TLSA or address 450 4.7.5 (``on_error`` decides
  whether to defer at all);
* DANE required but absent: 450 4.7.4 (defer) or 550 5.7.4 (reject);
* the MX certificate matches no TLSA record, or fails PKIX where an enforce-mode
  MTA-STS policy names the host, or its staple is revoked or invalid (probe):
  450 4.7.5 / 550 5.7.5; OCSP required but no valid staple: 450 4.7.4 / 550 5.7.4;
* the domain cannot receive mail at all: 556 5.1.10 (null MX), 550 5.1.2 (NXDOMAIN).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import date
from enum import StrEnum
from typing import Protocol

from danemilter.config.model import (
    DaneMode,
    ErrorAction,
    FailAction,
    OcspMode,
    Policy,
    ProbeMode,
    ProbeSettings,
    Rule,
    Settings,
    TlsRequirement,
)
from danemilter.deadline import Deadline
from danemilter.judge import OcspState, PkixVerdict
from danemilter.mtasts import StsPolicy, StsState, StsStatus
from danemilter.probe_result import DomainProbe, OcspRequest, ProbeResult
from danemilter.status import DomainState, DomainStatus, HostState

log = logging.getLogger(__name__)


class Action(StrEnum):
    ACCEPT = "accept"
    TAG = "tag"
    DEFER = "defer"
    REJECT = "reject"
    HOLD = "hold"


@dataclass(frozen=True, slots=True)
class Reply:
    code: int
    xcode: str
    text: str


@dataclass(frozen=True, slots=True)
class Decision:
    domain: str
    action: Action
    status: str
    usage: int
    ocsp: str
    reply: Reply | None
    reason: str
    # The MTA-STS state, when the rule needed it (a domain DANE does not decide).
    sts: str | None = None

    @property
    def refuses_recipient(self) -> bool:
        return self.action in (Action.DEFER, Action.REJECT)

    def header_value(self) -> str:
        sts = "" if self.sts is None else f"; sts={self.sts}"
        return (f"{self.domain}; status={self.status}; usage={self.usage}; "
                f"ocsp={self.ocsp}{sts}; action={self.action}")


_LACKING = frozenset({DomainState.NONE, DomainState.PARTIAL, DomainState.UNUSABLE_TLSA})
# Worst first: the header shows the worst staple any probed address presented.
_OCSP_SEVERITY = (OcspState.REVOKED, OcspState.INVALID, OcspState.STALE, OcspState.ABSENT,
                  OcspState.GOOD, OcspState.NOT_REQUESTED)


_NEVER_EXEMPT = frozenset({DomainState.NXDOMAIN.value, DomainState.NULLMX.value})


def exempt(decision: Decision, policy: Policy, today: date) -> tuple[Decision, str | None]:
    """A refusal turned into a tag while a ``policy.exceptions`` entry for the domain
    is in force, and what to log about it (None: nothing to say).

    A domain that cannot receive mail at all (null MX, nonexistent) is never exempted:
    there is nothing to wait for. An expired entry changes nothing and says so.
    """
    if decision.action in (Action.ACCEPT, Action.TAG) or decision.status in _NEVER_EXEMPT:
        return decision, None
    found = policy.exemption_for(decision.domain)
    if found is None:
        return decision, None
    key, exemption = found
    if not exemption.active(today):
        return decision, (f"policy.exceptions entry {key} expired on {exemption.until}: "
                          f"not applied to {decision.domain}")
    why = f"exempted by policy.exceptions {key} until {exemption.until} ({exemption.reason})"
    return (replace(decision, action=Action.TAG, reply=None,
                    reason=f"{why}: {decision.reason}"),
            f"{decision.domain}: would {decision.action}, {why}")


def apply_exceptions(decision: Decision, policy: Policy, today: date, tag: str) -> Decision:
    """:func:`exempt`, logged as every front end must: each use at info, an expired entry
    (then ignored) as a warning; ``tag`` starts the line (the queue ID, or the socket)."""
    outcome, note = exempt(decision, policy, today)
    if note is not None:
        log.log(logging.INFO if outcome is not decision else logging.WARNING, "%s: %s",
                tag, note)
    return outcome


def ocsp_summary(probes: Sequence[ProbeResult]) -> str | None:
    """The worst OCSP state among completed probes; None when no probe reached TLS."""
    seen = {p.ocsp for p in probes if p.failed_at is None}
    return next((state for state in _OCSP_SEVERITY if state in seen), None)


def staple_request(rule: Rule) -> OcspRequest:
    """Which probes ask for a staple: all of them where the rule enforces OCSP, else
    only where Exim would (``auto``: usage bitfield 0 or 4, where a staple can be checked)."""
    return (OcspRequest.ALWAYS if rule.ocsp in (OcspMode.REQUIRE, OcspMode.STRICT)
            else OcspRequest.AUTO)


_PROBED_STATES = frozenset({DomainState.DANE, DomainState.PARTIAL, DomainState.NONE,
                            DomainState.UNUSABLE_TLSA})


def wants_probe(status: DomainStatus, rule: Rule, sts: StsStatus | None = None) -> bool:
    """Whether a probe can change this decision: DANE hosts can mismatch, the MX hosts
    of an enforce-mode MTA-STS policy can fail PKIX (RFC 8461 §4.2), and OCSP rules look
    at every host's staple. Domains without deliverable hosts are not probed."""
    if rule.probe is ProbeMode.OFF or status.status not in _PROBED_STATES:
        return False
    if status.status in (DomainState.DANE, DomainState.PARTIAL):
        return True
    if sts is not None and sts.enforced:
        return True
    return rule.ocsp is not OcspMode.OFF


_STS_UNNEEDED = frozenset({DomainState.DANE, DomainState.DANE_MISMATCH, DomainState.NXDOMAIN,
                           DomainState.NULLMX, DomainState.TEMPFAIL,
                           DomainState.RESOLVER_NOT_VALIDATING})


def wants_sts(status: DomainStatus, rule: Rule) -> bool:
    """Whether the decision needs the domain's MTA-STS side: the rule requires
    authenticated TLS and DANE has not decided (RFC 8461 §2: DANE first)."""
    return rule.tls is TlsRequirement.AUTHENTICATED and status.status not in _STS_UNNEEDED


class Lookups(Protocol):
    """The lookups a decision needs (danemilter.service.Service provides them)."""

    async def status(self, domain: str, deadline: Deadline) -> DomainStatus: ...

    async def probe(self, status: DomainStatus, rule: Rule, settings: ProbeSettings,
                    deadline: Deadline) -> DomainProbe | None: ...

    async def sts(self, domain: str, deadline: Deadline) -> StsStatus: ...


async def decide_domain(lookups: Lookups, domain: str, rule: Rule, settings: Settings,
                        deadline: Deadline
                        ) -> tuple[Decision, DomainStatus, StsStatus | None]:
    """The one decision path for a recipient domain, whichever front end asks (the
    milter's RCPT, Exim's line on the policy socket): its status, then MTA-STS where DANE
    does not decide (RFC 8461 §2), then probes where they can change the verdict (the
    policy says whether its MX certificates must pass PKIX), all under one ``deadline``.
    Returns the status and MTA-STS side it was made from."""
    status = await lookups.status(domain, deadline)
    sts = await lookups.sts(domain, deadline) if wants_sts(status, rule) else None
    probes = None
    if wants_probe(status, rule, sts):
        probe = await lookups.probe(status, rule, settings.probe, deadline)
        if probe is not None:
            status = probe.status
            probes = probe.probes
            if not wants_sts(status, rule):
                sts = None  # a probe showed a DANE mismatch: DANE decides after all
    return decide(status, rule, settings.on_error, probes, sts), status, sts


def _ocsp_state(rule: Rule, status: DomainStatus, probes: Sequence[ProbeResult]) -> str:
    if rule.ocsp is OcspMode.OFF:
        return "off"
    summary = ocsp_summary(probes) if probes else None
    if summary is not None:
        return summary
    # Exim requests a staple only where it can be checked: no DANE or DANE-TA only.
    if rule.ocsp is OcspMode.AUTO and status.usage not in (0, 4):
        return OcspState.NOT_REQUESTED
    return "unknown"  # no probe has reached these MX hosts


def _ocsp_problem(rule: Rule, probes: Sequence[ProbeResult]) -> tuple[bool, str] | None:
    """(bad staple?, why) when the rule enforces OCSP and a probe falls short.

    ``require`` enforces only for certificates that carry an OCSP URL or must-staple
    (many CAs no longer run OCSP); ``strict`` for every certificate. A probe that never
    reached TLS, or did not ask for a staple, says nothing about OCSP.
    """
    if rule.ocsp not in (OcspMode.REQUIRE, OcspMode.STRICT) or not probes:
        return None
    done = [p for p in probes if p.failed_at is None]
    for probe in done:
        if probe.ocsp in (OcspState.REVOKED, OcspState.INVALID):
            return True, f"MX address {probe.address} stapled a {probe.ocsp} OCSP response"
    for probe in done:
        applies = rule.ocsp is OcspMode.STRICT or probe.ocsp_url or probe.must_staple
        if applies and probe.ocsp in (OcspState.ABSENT, OcspState.STALE):
            return False, f"MX address {probe.address} stapled no valid OCSP response"
    return None


def sts_named_hosts(status: DomainStatus, policy: StsPolicy) -> tuple[bool, frozenset[int]]:
    """MTA-STS's share of a domain's MX hosts: whether it governs any (deliverable, not
    covered by DANE), and the indices in ``status.hosts`` of those the policy names
    (§4.1); only those are delivered to, so only their certificates matter (§4.2)."""
    governed = [i for i, h in enumerate(status.hosts)
                if h.deliverable and h.tlsa_state is not HostState.DANE]
    return bool(governed), frozenset(i for i in governed
                                     if policy.matches(status.hosts[i].name))


class _StsShort(StrEnum):
    """How MTA-STS falls short of authenticated TLS for a domain without DANE."""

    TRANSIENT = "transient"      # no verdict yet: defer (or on_error)
    LACKING = "lacking"          # no enforce-mode policy naming an MX host: 4.7.4
    CERTIFICATE = "certificate"  # a named MX host's certificate fails PKIX: 4.7.5


def _sts_problem(status: DomainStatus, sts: StsStatus | None,
                 probes: Sequence[Sequence[ProbeResult]] | None
                 ) -> tuple[_StsShort, str] | None:
    """Why MTA-STS does not give a domain without DANE authenticated TLS, if it does not:
    no enforce-mode policy (§5: ``testing`` never refuses, so never satisfies either), no
    MX host that DANE does not cover matching the policy (§4.1), or (probes) one that
    matches but presents a chain invalid under PKIX for its name (§4.2). As with a DANE
    mismatch, one such host is enough: delivery to it fails whenever it is chosen. A
    probe that reached no TLS proves nothing either way."""
    if sts is None or sts.state is StsState.TEMPFAIL:
        return _StsShort.TRANSIENT, sts.reason if sts is not None else "MTA-STS not looked up"
    if not sts.enforced or sts.policy is None:
        return (_StsShort.LACKING,
                f"no usable DANE records (status {status.status}) and MTA-STS is {sts.state}")
    governed, named = sts_named_hosts(status, sts.policy)
    if governed and not named:
        return _StsShort.LACKING, (f"no MX host matches the MTA-STS policy "
                                   f"(mx: {', '.join(sts.policy.mx)})")
    for index in sorted(named):
        for result in probes[index] if probes is not None and index < len(probes) else ():
            if result.pkix is PkixVerdict.FAILED:
                return _StsShort.CERTIFICATE, (
                    f"MX host {status.hosts[index].name} [{result.address}] fails the "
                    f"MTA-STS certificate check: {result.pkix_reason}")
    return None


def decide(status: DomainStatus, rule: Rule, on_error: ErrorAction,
           probes: Sequence[Sequence[ProbeResult]] | None = None,
           sts: StsStatus | None = None) -> Decision:
    """The verdict for one recipient of ``status.domain`` under ``rule``.

    ``probes``: TLS probe results for the domain's MX addresses when the rule uses them,
    ``probes[i]`` those of ``status.hosts[i]`` (``status`` is then the probe's,
    ``dane-mismatch`` when a certificate matched none of its TLSA records).
    """
    domain = status.domain
    probed = [result for host in probes for result in host] if probes is not None else []
    ocsp = _ocsp_state(rule, status, probed)

    def make(action: Action, reply: Reply | None, reason: str) -> Decision:
        if reply is not None and rule.reply is not None:
            reply = Reply(reply.code, reply.xcode, rule.reply)
        return Decision(domain, action, str(status.status), status.usage, ocsp, reply, reason,
                        None if sts is None else str(sts.state))

    def lookup_failed() -> Decision:
        if on_error is ErrorAction.ACCEPT:
            return make(Action.ACCEPT, None, status.reason)
        if not status.hosts:
            reply = Reply(451, "4.4.3", f"DNS lookup for {domain} failed, try again later")
        else:
            reply = Reply(450, "4.7.5", f"DNSSEC lookup of the MX hosts of {domain} "
                          "failed, try again later")
        return make(Action.DEFER, reply, status.reason)

    def fail(soft: Reply, reason: str) -> Decision:
        if rule.on_fail is FailAction.DEFER:
            return make(Action.DEFER, soft, reason)
        if rule.on_fail is FailAction.REJECT:
            hard = Reply(5 * 100 + soft.code % 100, "5" + soft.xcode[1:], soft.text)
            return make(Action.REJECT, hard, reason)
        if rule.on_fail is FailAction.HOLD:
            return make(Action.HOLD, None, reason)
        return make(Action.TAG, None, reason)

    state = status.status
    if state in (DomainState.NXDOMAIN, DomainState.NULLMX):
        if not rule.refuses_undeliverable:
            return make(Action.TAG, None, status.reason)
        if state is DomainState.NULLMX:
            return make(Action.REJECT, Reply(556, "5.1.10", f"Recipient domain {domain} does "
                                             "not accept mail (null MX)"), status.reason)
        if not status.mx_secure:
            # A forged NXDOMAIN must not bounce mail: only a DNSSEC-proven one is final
            # (Postfix's unknown_address_reject_code is 450 by default, too).
            return make(Action.DEFER, Reply(450, "4.1.2", f"Recipient domain {domain} not "
                                            "found (not DNSSEC-proven), try again later"),
                        status.reason)
        return make(Action.REJECT, Reply(550, "5.1.2", f"Recipient domain {domain} does not "
                                         "exist"), status.reason)

    if state is DomainState.RESOLVER_NOT_VALIDATING:
        # Tagged, never refused: the resolver's fault is not the domain's, and a
        # degraded daemon must not turn it into deferrals (resolver_check: degrade).
        return make(Action.TAG, None, status.reason)

    if state is DomainState.DANE_MISMATCH:
        # Under "try" too: published usable TLSA records make authenticated TLS
        # mandatory (RFC 7672 §2.2), so delivery to that host would fail either way.
        return fail(Reply(450, "4.7.5", f"TLS certificate of an MX host of {domain} "
                          "matches none of its TLSA records"), status.reason)

    if rule.dane is DaneMode.REQUIRE and state is not DomainState.DANE:
        if state is DomainState.TEMPFAIL:
            return lookup_failed()
        if state in _LACKING:
            return fail(Reply(450, "4.7.4", f"Recipient domain {domain} cannot be reached "
                              f"with DANE (status {state}) and policy requires it"),
                        status.reason)
        raise AssertionError(f"unhandled domain state {state}")  # pragma: no cover

    if rule.tls is TlsRequirement.AUTHENTICATED and state is not DomainState.DANE:
        if state is DomainState.TEMPFAIL:
            return lookup_failed()
        sts_problem = _sts_problem(status, sts, probes)
        if sts_problem is not None:
            short, why = sts_problem
            if short is _StsShort.LACKING:
                return fail(Reply(450, "4.7.4", f"Recipient domain {domain} cannot be "
                                  f"reached with authenticated TLS: {why}"), why)
            if short is _StsShort.CERTIFICATE:
                return fail(Reply(450, "4.7.5", f"TLS certificate of an MX host of {domain} "
                                  "fails the MTA-STS (PKIX) check"), why)
            if on_error is ErrorAction.ACCEPT:
                return make(Action.ACCEPT, None, why)
            return make(Action.DEFER, Reply(450, "4.7.5", f"MTA-STS policy of {domain} "
                                            "could not be fetched, try again later"), why)

    problem = _ocsp_problem(rule, probed)
    if problem is not None:
        bad, why = problem
        if bad:
            reply = Reply(450, "4.7.5", f"OCSP check of an MX host of {domain} failed: {why}")
        else:
            reply = Reply(450, "4.7.4", f"Recipient domain {domain} lacks the OCSP staple "
                          f"policy requires: {why}")
        return fail(reply, why)
    return make(Action.ACCEPT, None, status.reason)
