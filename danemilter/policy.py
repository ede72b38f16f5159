"""From a domain's DANE status and the matching policy rule to a decision (pure code).

SMTP replies follow DESIGN.md "Milter behaviour" (RFC 3463 / RFC 7505 codes):

* lookups failed: MX 451 4.4.3, TLSA or address 450 4.7.5 (``on_error`` decides
  whether to defer at all);
* DANE required but absent: 450 4.7.4 (defer) or 550 5.7.4 (reject);
* the MX certificate matches no TLSA record (probe): 450 4.7.5 / 550 5.7.5;
* the domain cannot receive mail at all: 556 5.1.10 (null MX), 550 5.1.2 (NXDOMAIN).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from danemilter.config import DaneMode, ErrorAction, FailAction, OcspMode, Rule
from danemilter.dane import DomainState, DomainStatus


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


def _ocsp_state(rule: Rule, status: DomainStatus) -> str:
    if rule.ocsp is OcspMode.OFF:
        return "off"
    # Exim requests a staple only where it can be checked: no DANE or DANE-TA only.
    if rule.ocsp is OcspMode.AUTO and status.usage not in (0, 4):
        return "not-requested"
    # Staples are only known once the probe has connected to the MX hosts.
    return "unknown"


def decide(status: DomainStatus, rule: Rule, on_error: ErrorAction) -> Decision:
    """The verdict for one recipient of ``status.domain`` under ``rule``."""
    domain = status.domain
    ocsp = _ocsp_state(rule, status)

    def make(action: Action, reply: Reply | None, reason: str) -> Decision:
        if reply is not None and rule.reply is not None:
            reply = Reply(reply.code, reply.xcode, rule.reply)
        return Decision(domain, action, str(status.status), status.usage, ocsp, reply, reason)

    state = status.status
    if state is DomainState.NXDOMAIN:
        return make(Action.REJECT, Reply(550, "5.1.2", f"Recipient domain {domain} does not "
                                         "exist"), status.reason)
    if state is DomainState.NULLMX:
        return make(Action.REJECT, Reply(556, "5.1.10", f"Recipient domain {domain} does not "
                                         "accept mail (null MX)"), status.reason)
    if rule.dane is DaneMode.TRY or state is DomainState.DANE:
        return make(Action.ACCEPT, None, status.reason)

    if state is DomainState.TEMPFAIL:
        if on_error is ErrorAction.ACCEPT:
            return make(Action.ACCEPT, None, status.reason)
        if not status.hosts:
            reply = Reply(451, "4.4.3", f"DNS lookup for {domain} failed, try again later")
        else:
            reply = Reply(450, "4.7.5", f"DNSSEC lookup of the MX hosts of {domain} failed, "
                          "try again later")
        return make(Action.DEFER, reply, status.reason)

    if state is DomainState.DANE_MISMATCH:
        soft = Reply(450, "4.7.5", f"TLS certificate of an MX host of {domain} matches none "
                     "of its TLSA records")
        hard = Reply(550, "5.7.5", soft.text)
    elif state in _LACKING:
        soft = Reply(450, "4.7.4", f"Recipient domain {domain} cannot be reached with DANE "
                     f"(status {state}) and policy requires it")
        hard = Reply(550, "5.7.4", soft.text)
    else:  # pragma: no cover - every DomainState is handled above
        raise AssertionError(f"unhandled domain state {state}")

    if rule.on_fail is FailAction.DEFER:
        return make(Action.DEFER, soft, status.reason)
    if rule.on_fail is FailAction.REJECT:
        return make(Action.REJECT, hard, status.reason)
    if rule.on_fail is FailAction.HOLD:
        return make(Action.HOLD, None, status.reason)
    return make(Action.TAG, None, status.reason)
