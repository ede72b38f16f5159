"""From a domain's DANE status and the matching policy rule to a decision (pure code).

SMTP replies follow DESIGN.md "Milter behaviour" (RFC 3463 / RFC 7505 codes):

* lookups failed: MX 451 4.4.3, TLSA or address 450 4.7.5 (``on_error`` decides
  whether to defer at all);
* DANE required but absent: 450 4.7.4 (defer) or 550 5.7.4 (reject);
* the MX certificate matches no TLSA record, or its staple is revoked or invalid
  (probe): 450 4.7.5 / 550 5.7.5; OCSP required but no valid staple: 450 4.7.4 / 550 5.7.4;
* the domain cannot receive mail at all: 556 5.1.10 (null MX), 550 5.1.2 (NXDOMAIN).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from danemilter.config.model import DaneMode, ErrorAction, FailAction, OcspMode, ProbeMode, Rule
from danemilter.judge import OcspState
from danemilter.probe_result import OcspRequest, ProbeResult
from danemilter.status import DomainState, DomainStatus


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

    @property
    def refuses_recipient(self) -> bool:
        return self.action in (Action.DEFER, Action.REJECT)

    def header_value(self) -> str:
        return (f"{self.domain}; status={self.status}; usage={self.usage}; "
                f"ocsp={self.ocsp}; action={self.action}")


_LACKING = frozenset({DomainState.NONE, DomainState.PARTIAL, DomainState.UNUSABLE_TLSA})
# Worst first: the header shows the worst staple any probed address presented.
_OCSP_SEVERITY = (OcspState.REVOKED, OcspState.INVALID, OcspState.STALE, OcspState.ABSENT,
                  OcspState.GOOD, OcspState.NOT_REQUESTED)


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


def wants_probe(status: DomainStatus, rule: Rule) -> bool:
    """Whether a probe can change this decision: DANE hosts can mismatch, and OCSP
    rules look at every host's staple. Domains without deliverable hosts are not probed."""
    if rule.probe is ProbeMode.OFF or status.status not in _PROBED_STATES:
        return False
    if status.status in (DomainState.DANE, DomainState.PARTIAL):
        return True
    return rule.ocsp is not OcspMode.OFF


def _ocsp_state(rule: Rule, status: DomainStatus, probes: Sequence[ProbeResult] | None) -> str:
    if rule.ocsp is OcspMode.OFF:
        return "off"
    summary = ocsp_summary(probes) if probes else None
    if summary is not None:
        return summary
    # Exim requests a staple only where it can be checked: no DANE or DANE-TA only.
    if rule.ocsp is OcspMode.AUTO and status.usage not in (0, 4):
        return OcspState.NOT_REQUESTED
    return "unknown"  # no probe has reached these MX hosts


def _ocsp_problem(rule: Rule, probes: Sequence[ProbeResult] | None) -> tuple[bool, str] | None:
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


def decide(status: DomainStatus, rule: Rule, on_error: ErrorAction,
           probes: Sequence[ProbeResult] | None = None) -> Decision:
    """The verdict for one recipient of ``status.domain`` under ``rule``.

    ``probes``: TLS probe results for the domain's MX addresses, when the rule uses them
    (``status`` is then the probe's, ``dane-mismatch`` when a certificate matched none
    of its TLSA records).
    """
    domain = status.domain
    ocsp = _ocsp_state(rule, status, probes)

    def make(action: Action, reply: Reply | None, reason: str) -> Decision:
        if reply is not None and rule.reply is not None:
            reply = Reply(reply.code, reply.xcode, rule.reply)
        return Decision(domain, action, str(status.status), status.usage, ocsp, reply, reason)

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
    if state is DomainState.NXDOMAIN:
        return make(Action.REJECT, Reply(550, "5.1.2", f"Recipient domain {domain} does not "
                                         "exist"), status.reason)
    if state is DomainState.NULLMX:
        return make(Action.REJECT, Reply(556, "5.1.10", f"Recipient domain {domain} does not "
                                         "accept mail (null MX)"), status.reason)

    if state is DomainState.DANE_MISMATCH:
        # Under "try" too: published usable TLSA records make authenticated TLS
        # mandatory (RFC 7672 §2.2), so delivery to that host would fail either way.
        return fail(Reply(450, "4.7.5", f"TLS certificate of an MX host of {domain} "
                          "matches none of its TLSA records"), status.reason)

    if rule.dane is DaneMode.REQUIRE and state is not DomainState.DANE:
        if state is DomainState.TEMPFAIL:
            if on_error is ErrorAction.ACCEPT:
                return make(Action.ACCEPT, None, status.reason)
            if not status.hosts:
                reply = Reply(451, "4.4.3", f"DNS lookup for {domain} failed, try again later")
            else:
                reply = Reply(450, "4.7.5", f"DNSSEC lookup of the MX hosts of {domain} "
                              "failed, try again later")
            return make(Action.DEFER, reply, status.reason)
        if state in _LACKING:
            return fail(Reply(450, "4.7.4", f"Recipient domain {domain} cannot be reached "
                              f"with DANE (status {state}) and policy requires it"),
                        status.reason)
        raise AssertionError(f"unhandled domain state {state}")  # pragma: no cover

    problem = _ocsp_problem(rule, probes)
    if problem is not None:
        bad, why = problem
        if bad:
            reply = Reply(450, "4.7.5", f"OCSP check of an MX host of {domain} failed: {why}")
        else:
            reply = Reply(450, "4.7.4", f"Recipient domain {domain} lacks the OCSP staple "
                          f"policy requires: {why}")
        return fail(reply, why)
    return make(Action.ACCEPT, None, status.reason)
