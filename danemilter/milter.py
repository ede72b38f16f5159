"""The pymilter front end: RCPT → per-recipient decision; end of message → headers.

Transport costs (shared/notes/milter-performance.md) shape this class: only the
callbacks it needs are negotiated (connect, MAIL, RCPT, header, EOM), every
callback that need not answer is ``@noreply``, and each stage asks only for the
macros it reads.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import wraps
from typing import Any, ClassVar, TypeVar

import Milter

from danemilter.config import ApplyTo, DaneMode, ErrorAction, ProbeMode, ProbeSettings, Settings
from danemilter.dane import DomainStatus
from danemilter.errors import InputError
from danemilter.names import domain_of_address
from danemilter.policy import Action, Decision, decide, staple_request, wants_probe
from danemilter.probe import DomainProbe, OcspRequest

log = logging.getLogger(__name__)

_NOQUEUE = "NOQUEUE"
_HEADER_WIDTH = 78


DomainProbeFn = Callable[[DomainStatus, ProbeMode, OcspRequest, ProbeSettings, float],
                         DomainProbe | None]


def _no_probes(status: DomainStatus, mode: ProbeMode, ocsp: OcspRequest,
               settings: ProbeSettings, budget: float) -> DomainProbe | None:
    return None


@dataclass(frozen=True, slots=True)
class Runtime:
    """What a connection needs: the settings of the moment and the ways to ask for a
    domain's status and for its MX hosts' TLS probe results."""

    settings: Settings
    domain_status: Callable[[str, float], DomainStatus]
    domain_probe: DomainProbeFn = _no_probes


class RuntimeRef:
    """The current Runtime; a reload swaps it whole, connections keep the one they started with."""

    def __init__(self, runtime: Runtime) -> None:
        self._lock = threading.Lock()
        self._runtime = runtime

    def get(self) -> Runtime:
        with self._lock:
            return self._runtime

    def set(self, runtime: Runtime) -> None:
        with self._lock:
            self._runtime = runtime


F = TypeVar("F", bound=Callable[..., int])


def guarded(callback: F) -> F:
    """The one place an exception inside a callback becomes a verdict (``on_error``)."""

    @wraps(callback)
    def wrapper(self: DaneMilter, *args: Any) -> int:
        try:
            return callback(self, *args)
        except Exception:
            log.exception("%s: internal error in %s; applying on_error=%s",
                          self.queue_id(), callback.__name__, self.runtime.settings.on_error)
            if self.runtime.settings.on_error is ErrorAction.ACCEPT:
                return Milter.CONTINUE
            self.setreply("451", "4.3.0", "Temporary local problem in the DANE policy "
                          "check, try again later")
            return Milter.TEMPFAIL

    return wrapper  # type: ignore[return-value]


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


class DaneMilter(Milter.Base):
    """One instance per SMTP connection (libmilter calls the factory on connect)."""

    runtime_ref: ClassVar[RuntimeRef]

    def __init__(self) -> None:
        self.runtime = self.runtime_ref.get()
        self.client: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None
        self._reset_message()

    def _reset_message(self) -> None:
        self.authenticated = False
        self.decisions: dict[str, Decision] = {}
        self.accepted: dict[str, list[str]] = {}
        self.hold_reasons: list[str] = []
        self.forged_headers = 0
        self._queue_id: str | None = None

    def queue_id(self) -> str:
        if self._queue_id is None:
            value = self.getsymval("i")
            if value:
                self._queue_id = str(value)
        return self._queue_id or _NOQUEUE

    def setsymlist(self, stage: int, *macros: str) -> None:
        """Ask the MTA for only these macros at ``stage`` (called from negotiate).

        pymilter 1.0.5's own version hands bytes to its C module, which wants str on
        Python 3: the TypeError made negotiate() give up on every option, so no stage
        was skipped and no reply saved. Without SETSYMLIST from the MTA (old Sendmail)
        the MTA's default macros are fine: nothing to do.
        """
        if not self._actions & Milter.SETSYMLIST:
            return
        names = " ".join(macros).split()
        if len(names) > 5:
            raise ValueError("an MTA takes at most 5 macros per stage")
        self._ctx.setsymlist(stage, " ".join(names))

    # --- callbacks ------------------------------------------------------------

    @Milter.noreply
    @guarded
    def connect(self, hostname: str, family: int, hostaddr: Any) -> int:
        # The runtime is fixed per connection: a reload applies from the next one.
        self.runtime = self.runtime_ref.get()
        # libmilter passes (address, port[, ...]) for inet families; a bare string otherwise.
        address = hostaddr[0] if isinstance(hostaddr, tuple) and hostaddr else hostaddr
        try:
            self.client = ipaddress.ip_address(str(address).split("%")[0])
        except ValueError:
            self.client = None  # unix-socket or unknown clients match no network
        return Milter.CONTINUE

    @Milter.noreply
    @Milter.symlist("{auth_authen}")
    @guarded
    def envfrom(self, mailfrom: str, *params: str) -> int:
        self._reset_message()
        self.authenticated = bool(self.getsymval("{auth_authen}"))
        return Milter.CONTINUE

    @Milter.symlist("i")
    @guarded
    def envrcpt(self, recipient: str, *params: str) -> int:
        started = time.monotonic()
        settings = self.runtime.settings
        if not self._applies(settings):
            return Milter.CONTINUE
        try:
            domain = domain_of_address(recipient)
        except InputError as exc:
            # Not ours to judge (address literal, local part only): the MTA decides.
            log.info("%s: not checking %s: %s", self.queue_id(), recipient, exc)
            return Milter.CONTINUE
        if settings.skips(domain):
            return Milter.CONTINUE
        rule = settings.policy.rule_for(domain)
        if rule.dane is DaneMode.OFF:
            return Milter.CONTINUE
        # The policy is this connection's; lookups go to the current engine, so that
        # an engine replaced by a reload can be closed while old connections go on.
        engine = self.runtime_ref.get()
        status = engine.domain_status(domain, settings.deadline)
        probes = None
        if wants_probe(status, rule):
            budget = settings.deadline - (time.monotonic() - started)
            probe = engine.domain_probe(status, rule.probe, staple_request(rule),
                                        settings.probe, budget)
            if probe is not None:
                status = probe.status
                probes = [result for host in probe.probes for result in host]
        decision = decide(status, rule, settings.on_error, probes)
        return self._apply(recipient, decision)

    @Milter.noreply
    @guarded
    def header(self, name: str, value: str) -> int:
        if name.lower() == self.runtime.settings.header.lower():
            self.forged_headers += 1
        return Milter.CONTINUE

    @Milter.symlist("i")
    @guarded
    def eom(self) -> int:
        settings = self.runtime.settings
        if settings.report_only:
            return Milter.CONTINUE
        # Delete from the last to the first so that the indices stay valid.
        for index in range(self.forged_headers, 0, -1):
            self.chgheader(settings.header, index, "")
        if self.forged_headers:
            log.info("%s: removed %d %s header(s) supplied by the client",
                     self.queue_id(), self.forged_headers, settings.header)
        for decision in reversed(self.decisions.values()):
            self.addheader(settings.header, fold_header(settings.header,
                                                        decision.header_value()), 1)
        if self.decisions:
            log.info("%s: %s", self.queue_id(), "; ".join(
                f"rcpt={','.join(self.accepted[domain])} {_verdict(decision)}"
                for domain, decision in self.decisions.items()))
        if self.hold_reasons:
            self.quarantine("; ".join(self.hold_reasons))
            log.info("%s: message held: %s", self.queue_id(), "; ".join(self.hold_reasons))
        return Milter.CONTINUE

    def abort(self) -> int:
        self._reset_message()
        return Milter.CONTINUE

    # --- helpers --------------------------------------------------------------

    def _applies(self, settings: Settings) -> bool:
        if settings.apply_to is ApplyTo.AUTHENTICATED:
            return self.authenticated
        if settings.apply_to is ApplyTo.NETWORKS:
            return self.client is not None and any(self.client in net
                                                   for net in settings.networks)
        return True

    def _apply(self, recipient: str, decision: Decision) -> int:
        queue_id = self.queue_id()
        settings = self.runtime.settings
        if settings.report_only:
            log.info("%s: report-only: rcpt=%s %s (%s)", queue_id, recipient,
                     _verdict(decision), decision.reason)
            return Milter.CONTINUE
        if decision.reply is not None and decision.refuses_recipient:
            log.info("%s: rcpt=%s %s (%s)", queue_id, recipient, _verdict(decision),
                     decision.reason)
            reply = decision.reply
            self.setreply(str(reply.code), reply.xcode, reply.text)
            return Milter.TEMPFAIL if reply.code < 500 else Milter.REJECT
        # Accepted recipients are logged in one line per message at its end (with the
        # queue ID, which Postfix assigns only after the first accepted recipient): a
        # line per recipient cost a measurable share of the MTA's throughput.
        log.debug("%s: rcpt=%s %s (%s)", queue_id, recipient, _verdict(decision),
                  decision.reason)
        self.accepted.setdefault(decision.domain, []).append(recipient)
        # One header per domain: the first accepted recipient's decision stands.
        self.decisions.setdefault(decision.domain, decision)
        if decision.action is Action.HOLD:
            self.hold_reasons.append(f"DANE policy for {decision.domain}: "
                                     f"status={decision.status}")
        return Milter.CONTINUE
