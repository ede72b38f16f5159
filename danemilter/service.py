"""The one decision path every front end asks: statuses and probes, cached, coalesced,
bounded by the caller's deadline.

* A domain's status: a fresh in-process entry answers at once (no I/O, no await);
  otherwise the cached evaluator (shared cache, then DNS) within the deadline.
* Probes (``probe: cached | inline`` rules): results in the shared cache, else, for
  ``inline``, every address probed in the process's probe pool, all of them together
  bounded by what is left of the recipient's deadline.
* One in-flight map (:class:`Coalescer`) joins concurrent questions, for statuses and
  probes alike; cache trouble never reaches the caller.

Everything here runs on one asyncio loop: the daemon's (asyncio transport) or a loop
thread of its own (libmilter transport, see :class:`LoopThread`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import ssl
import threading
import time
from collections.abc import Coroutine, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

from danemilter.cache import ProbeCache, StatusCache, open_cache
from danemilter.cache.sts import StsCache
from danemilter.cached import CachedEvaluator
from danemilter.coalesce import Coalescer
from danemilter.config.model import (
    CacheSettings,
    MtaStsSettings,
    ProbeMode,
    ProbeSettings,
    ResolverSettings,
    Rule,
    Settings,
)
from danemilter.dane import DomainEvaluator
from danemilter.deadline import Deadline
from danemilter.files import file_version
from danemilter.metrics import METRICS
from danemilter.mtasts import (
    CachedPolicy,
    StsState,
    StsStatus,
    needs_fetch,
    refresh_due,
    without_fetch,
)
from danemilter.mtasts_fetch import Discovery, FetchResult, discover, fetch_policy, tls_context
from danemilter.policy import Decision, decide_domain, staple_request
from danemilter.probe import probe_domains, probe_within, trust_label
from danemilter.probe_result import DomainProbe, OcspRequest
from danemilter.resolver import Resolver
from danemilter.status import DomainStatus, not_validating

log = logging.getLogger(__name__)

T = TypeVar("T")

# Below this, a TLS handshake cannot complete anyway; answer from the DNS status alone.
MIN_PROBE_BUDGET = 0.2
# Probes end this long before the recipient's deadline, so that their results (partial
# ones included) are judged and stored before the waiting recipient gives up.
PROBE_MARGIN = 0.05
# How long a domain's MTA-STS verdict is reused before its TXT record is asked again.
_STS_VERDICT_LIFETIME = 300.0
_STS_RETRY = 30.0


class Service:
    def __init__(self, resolver: ResolverSettings, cache: CacheSettings,
                 mta_sts: MtaStsSettings | None = None) -> None:
        self.cache: StatusCache = open_cache(cache)
        self.inflight = Coalescer()
        self.resolver = Resolver(resolver)
        self.evaluator = CachedEvaluator(DomainEvaluator(self.resolver), self.cache,
                                         coalescer=self.inflight)
        self.probe_cache = ProbeCache(self.cache.backend, cache)
        self.sts_settings = mta_sts or MtaStsSettings()
        self.sts_cache = StsCache(self.cache.backend, cache.lru_entries)
        self._sts_tls: tuple[object, ssl.SSLContext] | None = None
        # Background fetches of policies near their expiry, one per domain.
        self.sts_refreshing: dict[str, asyncio.Task[None]] = {}
        # Set while the resolver fails its self-check under resolver_check: degrade
        # (why, in one line); every status is then resolver-not-validating.
        self.degraded: str | None = None
        self.probe_hits = 0
        self.probe_misses = 0

    def cached_status(self, domain: str) -> DomainStatus | None:
        if self.degraded is not None:
            return not_validating(domain, self.degraded)
        # None when due for a refresh too: the evaluator then renews it in the background.
        return self.cache.peek_settled(domain, time.time())

    async def status(self, domain: str, deadline: Deadline, *, fresh: bool = False
                     ) -> DomainStatus:
        """``fresh``: evaluate even when the cache has an answer (and store the new one)."""
        if self.degraded is not None:
            return not_validating(domain, self.degraded)
        started = time.monotonic()
        try:
            if fresh:
                return await self.evaluator.evaluate_fresh(domain, deadline)
            return await self.evaluator.evaluate(domain, deadline)
        finally:
            METRICS.lookup_seconds.observe(time.monotonic() - started)

    async def decision(self, domain: str, rule: Rule, settings: Settings,
                       deadline: Deadline) -> tuple[Decision, DomainStatus, StsStatus | None]:
        """policy.decide_domain with this service's lookups (for front ends that hold a
        Service, such as the policy socket)."""
        return await decide_domain(self, domain, rule, settings, deadline)

    def cached_sts(self, domain: str) -> StsStatus | None:
        return self.sts_cache.verdict(domain, time.time())

    async def sts(self, domain: str, deadline: Deadline) -> StsStatus:
        """The domain's MTA-STS side (RFC 8461) by ``deadline``: asked only for domains
        that DANE does not already decide (§2)."""
        held = self.sts_cache.verdict(domain, time.time())
        if held is not None:
            return held
        sts_deadline = deadline.sooner(self.sts_settings.timeout)
        answer = await self.inflight.join(("sts", domain), sts_deadline,
                                          lambda: self._sts(domain, sts_deadline))
        if answer is None:
            return StsStatus(domain, StsState.TEMPFAIL, None, None,
                             "no MTA-STS verdict within the deadline")
        return answer

    async def _sts(self, domain: str, deadline: Deadline) -> StsStatus:
        txt = await discover(self.resolver, domain, deadline)
        try:
            cached = await asyncio.to_thread(self.sts_cache.policy, domain, time.time())
        except Exception:
            log.exception("reading the cached MTA-STS policy of %s failed", domain)
            cached = None
        now = time.time()
        if txt.discovery is Discovery.FOUND and txt.id is not None \
                and needs_fetch(txt.id, cached, now):
            fetched = await self._fetch(domain, txt.id, deadline)
            if fetched.policy is not None:
                status = StsStatus.of(domain, fetched.policy, txt.id, fetched.reason)
            else:
                log.info("MTA-STS policy of %s not fetched: %s", domain, fetched.reason)
                status = without_fetch(domain, False, fetched.reason, cached, now,
                                       transient=fetched.transient)
        elif txt.discovery is Discovery.FOUND and txt.id is not None and cached is not None:
            status = StsStatus.of(domain, cached.policy, cached.id,
                                  f"cached policy, TXT id {cached.id} unchanged")
            if refresh_due(cached, now):
                self._refresh_sts(domain, txt.id, cached)
        else:
            status = without_fetch(domain, txt.discovery is Discovery.ABSENT, txt.reason,
                                   cached, now, transient=txt.discovery is Discovery.TEMPFAIL)
        # A TXT id change must be seen soon; a failure is retried sooner still.
        hold = _STS_RETRY if status.state is StsState.TEMPFAIL else _STS_VERDICT_LIFETIME
        self.sts_cache.keep_verdict(status, time.time() + hold)
        return status

    async def _fetch(self, domain: str, txt_id: str, deadline: Deadline) -> FetchResult:
        """The policy from the domain's HTTPS server, stored under ``txt_id`` when valid."""
        version = file_version(self.sts_settings.ca_file)
        if self._sts_tls is None or self._sts_tls[0] != version:
            # Rebuilt when the CA file is rewritten: new roots count without a restart.
            try:
                self._sts_tls = (version, tls_context(self.sts_settings.ca_file))
            except (OSError, ssl.SSLError) as exc:  # removed or damaged since the load
                log.error("MTA-STS: trust store %s unusable: %s",
                          self.sts_settings.ca_file or "of the system", exc)
                return FetchResult(None, f"trust store unusable: {exc}", transient=True)
        fetched = await fetch_policy(self.resolver, domain, deadline,
                                     context=self._sts_tls[1], port=self.sts_settings.port)
        if fetched.policy is not None:
            fresh = CachedPolicy(fetched.policy, txt_id, time.time())
            try:
                await asyncio.to_thread(self.sts_cache.store, domain, fresh)
            except Exception:
                log.exception("storing the MTA-STS policy of %s failed", domain)
        return fetched

    def _refresh_sts(self, domain: str, txt_id: str, cached: CachedPolicy) -> None:
        """Fetch a policy near its expiry again, without a recipient waiting for it; a
        failure keeps the cached one in force until its expiry (§5.1)."""
        if domain in self.sts_refreshing:
            return

        async def refresh() -> None:
            try:
                fetched = await self._fetch(domain, txt_id,
                                            Deadline.after(self.sts_settings.timeout))
            except Exception:
                log.exception("refreshing the MTA-STS policy of %s failed", domain)
                return
            if fetched.policy is None:
                log.info("refreshing the MTA-STS policy of %s failed (%s); the cached one "
                         "stays in force until it expires in %.0f s", domain, fetched.reason,
                         cached.expires_at - time.time())
                return
            self.sts_cache.keep_verdict(
                StsStatus.of(domain, fetched.policy, txt_id, f"refreshed: {fetched.reason}"),
                time.time() + _STS_VERDICT_LIFETIME)

        task = asyncio.ensure_future(refresh())
        self.sts_refreshing[domain] = task
        task.add_done_callback(lambda _: self.sts_refreshing.pop(domain, None))

    async def probe(self, status: DomainStatus, rule: Rule, settings: ProbeSettings,
                    deadline: Deadline) -> DomainProbe | None:
        if rule.probe is ProbeMode.OFF:
            return None
        ocsp = staple_request(rule)
        try:
            cached = await asyncio.to_thread(self._cached_probe, status, settings.port, ocsp)
        except Exception:
            log.exception("reading the cached probe of %s failed", status.domain)
            cached = None
        if cached is not None:
            self.probe_hits += 1
            return cached
        self.probe_misses += 1
        if rule.probe is ProbeMode.CACHED:
            return None
        if deadline.remaining() < MIN_PROBE_BUDGET:
            log.info("no time left to probe %s (%.3f s)", status.domain, deadline.remaining())
            return None
        return await self.inflight.join(("probe", status.domain, ocsp), deadline,
                                        lambda: self._probe(status, ocsp, settings, deadline))

    def _cached_probe(self, status: DomainStatus, port: int, ocsp: OcspRequest
                      ) -> DomainProbe | None:
        # In a worker thread: the trust label stats (and after a change reads) the CA file.
        return self.probe_cache.get(status, port, ocsp, time.time(),
                                    trust=trust_label(self.sts_settings.ca_file))

    async def _probe(self, status: DomainStatus, ocsp: OcspRequest, settings: ProbeSettings,
                     deadline: Deadline) -> DomainProbe:
        # Named before probing: a CA file rewritten meanwhile leaves this entry a miss,
        # never a verdict from the old roots under the new file's name.
        trust = await asyncio.to_thread(trust_label, self.sts_settings.ca_file)
        started = time.monotonic()
        probe = await probe_within(status, deadline=deadline.earlier(PROBE_MARGIN),
                                   port=settings.port,
                                   timeout=settings.timeout, now=datetime.now(UTC),
                                   helo=settings.helo, allow_private=settings.allow_private,
                                   concurrency=settings.concurrency, ocsp=ocsp,
                                   ca_file=self.sts_settings.ca_file)
        METRICS.probe_seconds.observe(time.monotonic() - started)
        for host in probe.probes:
            for result in host:
                METRICS.probe_outcomes[str(result.dane)] += 1
        await self._store_probe(status, probe, settings, ocsp, trust)
        return probe

    async def probe_each(self, statuses: Sequence[DomainStatus], ocsp: OcspRequest,
                         settings: ProbeSettings, *, fresh: bool = False
                         ) -> list[DomainProbe]:
        """Probes of every domain for a report (``danemilter verify``): each probe bounded
        by ``settings.timeout`` rather than by a recipient's deadline, in the process's
        pool; cached results where fresh (unless ``fresh``), new ones stored."""
        found: dict[int, DomainProbe] = {}
        trust = await asyncio.to_thread(trust_label, self.sts_settings.ca_file)
        if not fresh:
            now = time.time()
            for index, status in enumerate(statuses):
                hit = await asyncio.to_thread(self.probe_cache.get, status, settings.port,
                                              ocsp, now, trust=trust)
                if hit is not None:
                    found[index] = hit
        missing = [i for i in range(len(statuses)) if i not in found]
        probed = await asyncio.to_thread(
            probe_domains, [statuses[i] for i in missing], port=settings.port,
            timeout=settings.timeout, now=datetime.now(UTC), helo=settings.helo,
            allow_private=settings.allow_private, concurrency=settings.concurrency,
            ocsp=ocsp, ca_file=self.sts_settings.ca_file)
        for index, probe in zip(missing, probed, strict=True):
            found[index] = probe
            await self._store_probe(statuses[index], probe, settings, ocsp, trust)
        return [found[i] for i in range(len(statuses))]

    async def _store_probe(self, status: DomainStatus, probe: DomainProbe,
                           settings: ProbeSettings, ocsp: OcspRequest, trust: str) -> None:
        try:
            await asyncio.to_thread(self.probe_cache.put, status, probe, settings.port, ocsp,
                                    ttl=settings.cache_ttl, now=time.time(), trust=trust)
        except Exception:
            log.exception("storing the probe of %s in the cache failed", status.domain)

    def retire(self) -> None:
        """Replaced by a reload: new lookups go elsewhere, so the in-process copies go
        now (a lookup still running here pays a backend read); close follows later."""
        self.cache.forget_local()
        self.probe_cache.forget()

    async def aclose(self) -> None:
        refreshes = list(self.sts_refreshing.values())
        for task in refreshes:
            task.cancel()
        await asyncio.gather(*refreshes, return_exceptions=True)
        await self.evaluator.aclose()
        await self.inflight.aclose()
        self.cache.close()  # quick, and no executor thread may outlive the service


class EventLoopThread:
    """An event loop on a thread of its own, for callers in other threads: they block on
    :meth:`call` while the loop does the I/O. :meth:`close` runs :meth:`_aclose` on the
    loop first."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()
        self._closed = False
        self._close_lock = threading.Lock()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise

    async def _aclose(self) -> None:
        """What runs on the loop before it stops."""

    def close(self) -> None:
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        with contextlib.suppress(concurrent.futures.TimeoutError, RuntimeError):
            self.call(self._aclose(), timeout=5)
        with contextlib.suppress(concurrent.futures.TimeoutError, RuntimeError):
            self.call(self.loop.shutdown_default_executor(), timeout=5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)
        if not self._thread.is_alive():
            self.loop.close()


class LoopThread(EventLoopThread):
    """A service on an event loop of its own, for callers in other threads (libmilter's
    worker threads): they block on :meth:`call` while the loop does the I/O."""

    def __init__(self, resolver: ResolverSettings, cache: CacheSettings,
                 mta_sts: MtaStsSettings | None = None) -> None:
        super().__init__("danemilter-loop")

        async def make() -> Service:
            return Service(resolver, cache, mta_sts)

        self.service = self.call(make(), timeout=30)

    async def _aclose(self) -> None:
        await self.service.aclose()
