"""The resolver self-check: does the configured resolver validate DNSSEC?

danemilter trusts the AD bit (DESIGN.md "DANE semantics"): a resolver that does not
validate never sets it, so every domain would silently be ``none``; one that does not
answer makes every recipient wait out the resolver timeout. The check asks two questions:

* a signed name (default: the root zone's SOA) must come back NOERROR with AD;
* optionally, a deliberately bogus name must come back SERVFAIL (a validating resolver
  refuses data whose signatures fail; RFC 4035 §5.5). Off by default: no public bogus
  name is guaranteed to stay bogus.

:func:`verdict` judges the answers (pure); :func:`check_resolver` asks them;
:class:`ResolverMonitor` repeats the check for the daemon and reports each outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

import dns.rcode
import dns.rdatatype

from danemilter.config.model import ResolverCheckMode, ResolverCheckSettings, ResolverSettings
from danemilter.resolver import Answer, Resolver

log = logging.getLogger(__name__)

# While the resolver fails, it is checked (and the failure logged) this often.
FAILING_INTERVAL = 60.0


class ResolverState(StrEnum):
    VALIDATING = "validating"
    NO_ANSWER = "no-answer"            # timeout, refused connection, garbled reply
    FAILED = "failed"                  # answered the signed name with an error (SERVFAIL...)
    NOT_VALIDATING = "not-validating"  # answered the signed name without the AD bit
    ACCEPTS_BOGUS = "accepts-bogus"    # answered the bogus name instead of SERVFAIL


@dataclass(frozen=True, slots=True)
class ResolverCheck:
    resolver: str  # "ADDRESS:PORT"
    state: ResolverState
    reason: str

    @property
    def passed(self) -> bool:
        return self.state is ResolverState.VALIDATING

    def line(self) -> str:
        return f"resolver {self.resolver}: {self.state}: {self.reason}"


def _question(name: str, rdtype: str) -> str:
    return f"{name} {rdtype}"


def verdict(resolver: str, check: ResolverCheckSettings, signed: Answer,
            bogus: Answer | None) -> ResolverCheck:
    """The check's outcome from the answers to its questions (pure)."""
    asked = _question(check.signed_name, check.signed_type)
    if signed.rcode is None:
        return ResolverCheck(resolver, ResolverState.NO_ANSWER, f"{asked}: {signed.reason}")
    if signed.rcode not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
        return ResolverCheck(resolver, ResolverState.FAILED, f"{asked}: {signed.reason}")
    if not signed.secure:
        return ResolverCheck(resolver, ResolverState.NOT_VALIDATING,
                             f"{asked} came back without the AD bit: the resolver does not "
                             "validate DNSSEC (or does not trust the zone's signatures)")
    if bogus is None:
        return ResolverCheck(resolver, ResolverState.VALIDATING, f"{asked} is validated (AD)")
    broken = _question(check.bogus_name or "", check.bogus_type)
    if bogus.rcode is None:
        return ResolverCheck(resolver, ResolverState.NO_ANSWER, f"{broken}: {bogus.reason}")
    if bogus.rcode != dns.rcode.SERVFAIL:
        return ResolverCheck(resolver, ResolverState.ACCEPTS_BOGUS,
                             f"{broken}, a bogus name, was answered "
                             f"{dns.rcode.to_text(bogus.rcode)} instead of SERVFAIL")
    return ResolverCheck(resolver, ResolverState.VALIDATING,
                         f"{asked} is validated (AD) and {broken} refused (SERVFAIL)")


def _where(settings: ResolverSettings) -> str:
    host = f"[{settings.address}]" if ":" in settings.address else settings.address
    return f"{host}:{settings.port}"


async def check_resolver(settings: ResolverSettings, check: ResolverCheckSettings,
                         resolver: Resolver | None = None) -> ResolverCheck:
    """Ask the check's questions (each within the resolver's timeout) and judge them."""
    resolver = resolver or Resolver(settings)
    signed_q = resolver.query(check.signed_name, dns.rdatatype.from_text(check.signed_type))
    if check.bogus_name is None:
        signed = await signed_q
        bogus = None
    else:
        bogus_q = resolver.query(check.bogus_name, dns.rdatatype.from_text(check.bogus_type))
        signed, bogus = await asyncio.gather(signed_q, bogus_q)
    return verdict(_where(settings), check, signed, bogus)


Report = Callable[[ResolverCheck], None]


class ResolverMonitor:
    """Checks one resolver every ``interval`` seconds (every minute while it fails) and
    hands each outcome to ``report``; :meth:`replace` swaps in new settings (a reload)."""

    def __init__(self, settings: ResolverSettings, check: ResolverCheckSettings,
                 report: Report, last: ResolverCheck | None = None) -> None:
        self.settings = settings
        self.check = check
        self.report = report
        self.last = last
        self._resolver = Resolver(settings)
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    async def run_once(self) -> ResolverCheck:
        started = time.monotonic()
        result = await check_resolver(self.settings, self.check, self._resolver)
        log.debug("resolver check took %.3f s: %s", time.monotonic() - started, result.line())
        self.last = result
        self.report(result)
        return result

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._loop())

    def replace(self, settings: ResolverSettings, check: ResolverCheckSettings,
                result: ResolverCheck | None) -> None:
        if settings != self.settings:
            self._resolver = Resolver(settings)
        self.settings, self.check, self.last = settings, check, result
        self._wake.set()  # the next check waits a full interval from now

    async def _loop(self) -> None:
        while True:
            wait: float | None = self.check.interval
            if self.check.mode is ResolverCheckMode.OFF:
                wait = None  # until a reload turns the check on
            elif self.last is not None and not self.last.passed:
                wait = FAILING_INTERVAL
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)
                continue  # replaced: wait again under the new settings
            try:
                await self.run_once()
            except Exception:  # the monitor must outlive anything one check does
                log.exception("resolver check failed")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
