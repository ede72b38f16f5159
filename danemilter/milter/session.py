"""One MTA connection's policy logic, the same behind every milter transport.

A transport (our asyncio server, or libmilter through pymilter) turns protocol events
into calls here and the answers back into protocol responses; it holds no policy of its
own. RCPT is decided here, one recipient at a time, under one deadline made here; end
of message gets the header edits. This is the one place where an exception in the
decision becomes the configured ``on_error`` verdict.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Awaitable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from danemilter.config.model import (
    ApplyTo,
    DaneMode,
    ErrorAction,
    FailAction,
    ProbeSettings,
    Rule,
    Settings,
)
from danemilter.deadline import Deadline
from danemilter.metrics import METRICS
from danemilter.mtasts import StsStatus
from danemilter.names import delivery_destination
from danemilter.policy import (
    Action,
    Decision,
    Reply,
    apply_exceptions,
    decide,
    decide_domain,
    wants_probe,
    wants_sts,
)
from danemilter.probe_result import DomainProbe
from danemilter.status import DomainStatus

log = logging.getLogger(__name__)

NOQUEUE = "NOQUEUE"
_HEADER_WIDTH = 78
INTERNAL_ERROR = Reply(451, "4.3.0", "Temporary local problem in the DANE policy check, "
                       "try again later")


class DecisionService(Protocol):
    """What a session asks of the service layer (danemilter.service.Service)."""

    def cached_status(self, domain: str) -> DomainStatus | None:
        """A fresh status from memory, without I/O; None when it takes a lookup."""

    async def status(self, domain: str, deadline: Deadline) -> DomainStatus:
        """The domain's status by ``deadline`` (a ``tempfail`` status when not)."""

    async def probe(self, status: DomainStatus, rule: Rule, settings: ProbeSettings,
                    deadline: Deadline) -> DomainProbe | None:
        """TLS probe results for ``status`` under ``rule`` by ``deadline`` (None: none)."""

    def cached_sts(self, domain: str) -> StsStatus | None:
        """A recent MTA-STS verdict from memory; None when it takes a lookup."""

    async def sts(self, domain: str, deadline: Deadline) -> StsStatus:
        """The domain's MTA-STS side by ``deadline`` (``tempfail`` when not known)."""


@dataclass(frozen=True, slots=True)
class Runtime:
    """The settings of the moment and the service that answers under them."""

    settings: Settings
    service: DecisionService


class RuntimeRef:
    """The current Runtime; a reload swaps it whole, connections keep the settings they
    started with (lookups go to the current service)."""

    # No lock: reading or rebinding one attribute is atomic in CPython, so libmilter's
    # threads see the old Runtime or the new one, never a mix (a reload swaps it whole).

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime

    def get(self) -> Runtime:
        return self._runtime

    def set(self, runtime: Runtime) -> None:
        self._runtime = runtime


@dataclass(frozen=True, slots=True)
class HeaderEdit:
    """Change the ``index``-th header ``name`` (1-based; empty value deletes), or insert
    one at ``index`` when ``insert``."""

    insert: bool
    index: int
    name: str
    value: str


@dataclass(frozen=True, slots=True)
class MessageEdits:
    """What end of message does: header edits and a quarantine reason, or (after an
    internal error under ``on_error: tempfail``) a reply refusing the message."""

    headers: tuple[HeaderEdit, ...]
    quarantine: str | None
    reply: Reply | None = None


NO_EDITS = MessageEdits((), None)


def fold_header(name: str, value: str) -> str:
    """Fold before the space of a "; " separator so no line exceeds 78 characters.

    RFC 5322 §2.2.3: folding inserts a line break before existing white space, so
    unfolding (removing the line breaks) gives back exactly ``value``.
    """
    parts = value.split("; ")
    lines: list[str] = []
    current = parts[0]
    used = len(name) + 2
    for part in parts[1:]:
        if used + len(current) + 2 + len(part) > _HEADER_WIDTH:
            lines.append(current + ";")
            current, used = " " + part, 0
        else:
            current += "; " + part
    lines.append(current)
    return "\n".join(lines)


def _verdict(decision: Decision) -> str:
    return (f"domain={decision.domain} status={decision.status} usage={decision.usage} "
            f"ocsp={decision.ocsp} action={decision.action}")


RcptAnswer = Reply | None  # None: go on (the recipient is accepted)


class _Memo:
    """What one connection has already worked out for a domain under its settings: the
    MTA sends recipient after recipient of the same few domains, and the warm path
    must cost next to nothing (docs/benchmarks.md). Valid for one Runtime's settings."""

    __slots__ = ("_decisions", "_locals", "_rules", "_settings")

    _LIMIT = 256  # distinct domains one connection may make us remember

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._rules: dict[str, Rule] = {}
        self._locals: dict[str, bool] = {}
        self._decisions: dict[str, tuple[DomainStatus, Rule, StsStatus | None, Decision]] = {}

    def is_local(self, domain: str) -> bool:
        known = self._locals.get(domain)
        if known is None:
            known = self._settings.skips(domain)
            if len(self._locals) < self._LIMIT:
                self._locals[domain] = known
        return known

    def rule(self, domain: str) -> Rule:
        rule = self._rules.get(domain)
        if rule is None:
            rule = self._settings.policy.rule_for(domain)
            if len(self._rules) < self._LIMIT:
                self._rules[domain] = rule
        return rule

    def decision(self, status: DomainStatus, rule: Rule, sts: StsStatus | None) -> Decision:
        """decide(), or the same answer it gave for these very values (by identity: the
        cache hands out one status object until it changes)."""
        known = self._decisions.get(status.domain)
        if known is not None and known[0] is status and known[1] is rule and known[2] is sts:
            return known[3]
        decision = decide(status, rule, self._settings.on_error, sts=sts)
        if len(self._decisions) < self._LIMIT or status.domain in self._decisions:
            self._decisions[status.domain] = (status, rule, sts, decision)
        return decision


class Session:
    """The state of one MTA connection: its client, the message under way, decisions."""

    def __init__(self, ref: RuntimeRef) -> None:
        self._ref = ref
        self.runtime = ref.get()
        self._memo = _Memo(self.runtime.settings)
        self.client: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None
        self.queue_id = NOQUEUE
        self._reset_message()

    def _reset_message(self) -> None:
        self.authenticated = False
        self.decisions: dict[str, Decision] = {}
        self.accepted: dict[str, list[str]] = {}
        self.hold_reasons: list[str] = []
        self.forged_headers = 0

    def note_queue_id(self, value: str | None) -> None:
        if value:
            self.queue_id = value

    # --- events -------------------------------------------------------------------

    def connect(self, address: str | None) -> None:
        # The settings are fixed per connection: a reload applies from the next one.
        self.runtime = self._ref.get()
        self._memo = _Memo(self.runtime.settings)
        self.queue_id = NOQUEUE
        try:
            self.client = ipaddress.ip_address((address or "").split("%")[0])
        except ValueError:
            self.client = None  # unix-socket or unknown clients match no network
        self._reset_message()

    def mail(self, authenticated: bool) -> None:
        self._reset_message()
        self.queue_id = NOQUEUE
        self.authenticated = authenticated

    def rcpt(self, recipient: str) -> RcptAnswer | Coroutine[Any, Any, RcptAnswer]:
        """The answer now when no lookup is needed (skipped, or a warm cache), else an
        awaitable of it, bounded by the recipient's deadline."""
        try:
            settings = self.runtime.settings
            if not self._applies(settings):
                return None
            # Judged by the domain the MTA delivers to after its own rewriting (percent
            # hack, bang path, quoted local part, local domains): never by the text.
            memo = self._memo
            destination = delivery_destination(recipient, memo.is_local)
            domain = destination.domain
            if domain is None:
                if destination.local:
                    return None
                return self._unknown_destination(recipient, destination.reason)
            rule = memo.rule(domain)
            if rule.dane is DaneMode.OFF:
                return None
            service = self._ref.get().service
            status = service.cached_status(domain)
            if status is not None:
                needs_sts = wants_sts(status, rule)
                sts = service.cached_sts(domain) if needs_sts else None
                if (sts is not None or not needs_sts) and not wants_probe(status, rule, sts):
                    return self._apply(recipient, memo.decision(status, rule, sts))
            # The one place a recipient's deadline is made: the lookup, the probe and
            # the transport's wait all share it.
            deadline = Deadline.after(settings.deadline)
            return self._guarded(self._rcpt_lookup(recipient, domain, rule, deadline, service))
        except Exception:
            log.exception("%s: internal error at RCPT", self.queue_id)
            return self.on_error_answer()

    async def _rcpt_lookup(self, recipient: str, domain: str, rule: Rule, deadline: Deadline,
                           service: DecisionService) -> RcptAnswer:
        decision, _, _ = await decide_domain(service, domain, rule, self.runtime.settings,
                                             deadline)
        return self._apply(recipient, decision)

    async def _guarded(self, answer: Awaitable[RcptAnswer]) -> RcptAnswer:
        try:
            return await answer
        except Exception:
            log.exception("%s: internal error at RCPT", self.queue_id)
            return self.on_error_answer()

    def header(self, name: str) -> None:
        if name.lower() == self.runtime.settings.header.lower():
            self.forged_headers += 1

    def end_of_message(self) -> MessageEdits:
        try:
            return self._edits()
        except Exception:
            log.exception("%s: internal error at end of message", self.queue_id)
            return MessageEdits((), None, self.on_error_answer())
        finally:
            self._reset_message()

    def abort(self) -> None:
        self._reset_message()

    # --- helpers --------------------------------------------------------------------

    def _edits(self) -> MessageEdits:
        settings = self.runtime.settings
        if settings.report_only:
            return NO_EDITS
        edits: list[HeaderEdit] = []
        # Delete from the last to the first so that the indices stay valid.
        edits.extend(HeaderEdit(False, index, settings.header, "")
                     for index in range(self.forged_headers, 0, -1))
        if self.forged_headers:
            log.info("%s: removed %d %s header(s) supplied by the client",
                     self.queue_id, self.forged_headers, settings.header)
        edits.extend(HeaderEdit(True, 1, settings.header,
                                fold_header(settings.header, decision.header_value()))
                     for decision in reversed(self.decisions.values()))
        if self.decisions:
            log.info("%s: %s", self.queue_id, "; ".join(
                f"rcpt={','.join(self.accepted[domain])} {_verdict(decision)}"
                for domain, decision in self.decisions.items()))
        held = None
        if self.hold_reasons:
            held = "; ".join(self.hold_reasons)
            log.info("%s: message held: %s", self.queue_id, held)
        return MessageEdits(tuple(edits), held)

    def on_error_answer(self) -> RcptAnswer:
        """The one place an internal error becomes a verdict: ``on_error``."""
        if self.runtime.settings.on_error is ErrorAction.ACCEPT:
            return None
        return INTERNAL_ERROR

    def _applies(self, settings: Settings) -> bool:
        if settings.apply_to is ApplyTo.AUTHENTICATED:
            return self.authenticated
        if settings.apply_to is ApplyTo.NETWORKS:
            return self.client is not None and any(self.client in net
                                                   for net in settings.networks)
        return True

    def _unknown_destination(self, recipient: str, why: str) -> RcptAnswer:
        """A recipient whose delivery domain cannot be known here, judged by the default
        rule: where it requires DANE, ``on_fail`` applies (fail closed), since the
        MTA may deliver it anywhere."""
        settings = self.runtime.settings
        rule = settings.policy.default
        if rule.dane is not DaneMode.REQUIRE:
            log.info("%s: not checking %s: %s", self.queue_id, recipient, why)
            return None
        text = (f"Cannot tell which domain this recipient is delivered to ({why}) "
                "and policy requires DANE")
        log.info("%s: rcpt=%s undetermined destination (%s) action=%s", self.queue_id,
                 recipient, why, "report-only" if settings.report_only else rule.on_fail)
        if settings.report_only:
            return None
        if rule.on_fail is FailAction.DEFER:
            return Reply(450, "4.7.4", rule.reply or text)
        if rule.on_fail is FailAction.REJECT:
            return Reply(550, "5.7.4", rule.reply or text)
        if rule.on_fail is FailAction.HOLD:
            self.hold_reasons.append(f"DANE policy for {recipient}: {why}")
        return None

    def _apply(self, recipient: str, decision: Decision) -> RcptAnswer:
        settings = self.runtime.settings
        if settings.policy.exceptions:
            decision = apply_exceptions(decision, settings.policy, datetime.now(UTC).date(),
                                        self.queue_id)
        METRICS.decisions[(decision.action, decision.status)] += 1  # no lock: one loop
        if settings.report_only:
            log.info("%s: report-only: rcpt=%s %s (%s)", self.queue_id, recipient,
                     _verdict(decision), decision.reason)
            return None
        if decision.reply is not None and decision.refuses_recipient:
            log.info("%s: rcpt=%s %s (%s)", self.queue_id, recipient, _verdict(decision),
                     decision.reason)
            return decision.reply
        # Accepted recipients are logged in one line per message at its end (with the
        # queue ID, which Postfix assigns only after the first accepted recipient): a
        # line per recipient cost a measurable share of the MTA's throughput.
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s: rcpt=%s %s (%s)", self.queue_id, recipient, _verdict(decision),
                      decision.reason)
        self.accepted.setdefault(decision.domain, []).append(recipient)
        # One header per domain: the first accepted recipient's decision stands.
        self.decisions.setdefault(decision.domain, decision)
        if decision.action is Action.HOLD:
            self.hold_reasons.append(f"DANE policy for {decision.domain}: "
                                     f"status={decision.status}")
        return None

