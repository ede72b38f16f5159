"""Probe results for the milter: from the shared cache, or probed now within a budget.

``cached`` rules read only what ``danemilter verify`` or earlier inline probes left in
the cache. ``inline`` rules probe on a miss, bounded by what is left of the recipient's
deadline; recipients of one domain arriving together share one probe (the first
caller probes, the others wait for its result within their own budgets).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from datetime import UTC, datetime

from danemilter.cache.probes import ProbeCache
from danemilter.config import ProbeMode, ProbeSettings
from danemilter.dane import DomainStatus
from danemilter.probe import DomainProbe, OcspRequest, probe_domain

log = logging.getLogger(__name__)

# Below this, a TLS handshake cannot complete anyway; answer from the DNS status alone.
MIN_PROBE_BUDGET = 0.2


class Prober:
    def __init__(self, cache: ProbeCache, *, clock: Callable[[], float] = time.time) -> None:
        self.cache = cache
        self._clock = clock
        self._lock = threading.Lock()
        self._inflight: dict[tuple[str, OcspRequest], Future[DomainProbe]] = {}

    def domain_probe(self, status: DomainStatus, mode: ProbeMode, ocsp: OcspRequest,
                     settings: ProbeSettings, budget: float) -> DomainProbe | None:
        """Probe results for ``status`` (None when there are none to be had in time)."""
        if mode is ProbeMode.OFF:
            return None
        cached = self.cache.get(status, settings.port, ocsp, self._clock())
        if cached is not None or mode is ProbeMode.CACHED:
            return cached
        if budget < MIN_PROBE_BUDGET:
            log.info("no time left to probe %s (%.3f s)", status.domain, budget)
            return None
        key = (status.domain, ocsp)
        with self._lock:
            shared = self._inflight.get(key)
            if shared is None:
                mine: Future[DomainProbe] = Future()
                self._inflight[key] = mine
        if shared is not None:
            try:
                return shared.result(budget)
            except TimeoutError:
                return None
        try:
            probe = self._probe(status, ocsp, settings, budget)
        except BaseException as exc:
            mine.set_exception(exc)
            raise
        else:
            mine.set_result(probe)
            return probe
        finally:
            with self._lock:
                del self._inflight[key]

    def _probe(self, status: DomainStatus, ocsp: OcspRequest, settings: ProbeSettings,
               budget: float) -> DomainProbe:
        probe = probe_domain(status, port=settings.port, timeout=min(settings.timeout, budget),
                             now=datetime.now(UTC), helo=settings.helo,
                             allow_private=settings.allow_private,
                             concurrency=settings.concurrency, ocsp=ocsp)
        try:
            self.cache.put(status, probe, settings.port, ocsp, ttl=settings.cache_ttl,
                           now=self._clock())
        except Exception:
            log.exception("storing the probe of %s in the cache failed", status.domain)
        return probe
