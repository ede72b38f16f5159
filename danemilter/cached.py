"""CachedEvaluator: the DomainEvaluator behind the shared status cache.

* A fresh entry in the in-process LRU answers at once, without I/O or a thread hop.
* Otherwise one task per domain (concurrent callers share it) asks the backend in a
  worker thread (SQLite and Redis block), and on a miss evaluates the domain and
  stores the result for its lifetime (cache.lifetime).
* A hit within ``refresh_ahead`` of its expiry starts one background evaluation, so
  a domain that is still being asked for is renewed before it expires. A refresh
  that ends in a transient failure (tempfail, a failed host) does not replace the
  entry it was renewing: that entry stays valid to its own expiry, no longer.
* Cache trouble never reaches the caller: a failing cache read is a miss, a failing
  write is logged.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from danemilter.cache import StatusCache, is_transient
from danemilter.coalesce import Coalescer
from danemilter.dane import DomainEvaluator, DomainStatus, deadline_tempfail
from danemilter.deadline import Deadline

log = logging.getLogger(__name__)


class CachedEvaluator:
    def __init__(self, evaluator: DomainEvaluator, cache: StatusCache, *,
                 clock: Callable[[], float] = time.time,
                 coalescer: Coalescer | None = None) -> None:
        self.evaluator = evaluator
        self.cache = cache
        self._clock = clock
        self._inflight = coalescer or Coalescer()
        self._refreshing: dict[str, asyncio.Task[None]] = {}
        self.evaluations = 0
        self.refreshes = 0

    async def evaluate(self, domain: str, deadline: Deadline | float) -> DomainStatus:
        """Status of ``domain`` (canonical form) by ``deadline`` (or within that many
        seconds); never raises for DNS or cache trouble (a timeout is a ``tempfail``)."""
        if not isinstance(deadline, Deadline):
            deadline = Deadline.after(deadline)
        now = self._clock()
        status = self.cache.peek(domain, now)
        if status is not None:
            self._refresh_if_due(domain, now, deadline.seconds)
            return status
        # Callers joining an evaluation already under way wait for it within their own
        # deadline; it runs under the deadline of the caller that started it.
        answer = await self._inflight.join(("status", domain), deadline,
                                           lambda: self._miss(domain, deadline))
        return deadline_tempfail(domain, deadline) if answer is None else answer

    async def evaluate_fresh(self, domain: str, deadline: Deadline) -> DomainStatus:
        """Evaluate ``domain`` whatever the cache holds, and store the result."""
        self.evaluations += 1
        status = await self.evaluator.evaluate(domain, deadline)
        await self._store(status)
        return status

    async def _miss(self, domain: str, deadline: Deadline) -> DomainStatus:
        try:
            entry = await asyncio.to_thread(self.cache.lookup, domain, self._clock())
        except Exception:
            log.exception("cache lookup for %s failed; evaluating it", domain)
            entry = None
        if entry is not None:
            self._refresh_if_due(domain, self._clock(), deadline.seconds)
            return entry.status
        return await self.evaluate_fresh(domain, deadline)

    async def _store(self, status: DomainStatus) -> None:
        try:
            await asyncio.to_thread(self.cache.put, status, self._clock())
        except Exception:
            log.exception("storing %s in the cache failed", status.domain)

    def _refresh_if_due(self, domain: str, now: float, deadline: float) -> None:
        if domain in self._refreshing or not self.cache.needs_refresh(domain, now):
            return
        task = asyncio.ensure_future(self._refresh(domain, deadline))
        self._refreshing[domain] = task
        task.add_done_callback(lambda _: self._refreshing.pop(domain, None))

    async def _refresh(self, domain: str, deadline: float) -> None:
        try:
            self.refreshes += 1
            status = await self.evaluator.evaluate(domain, deadline)
            if is_transient(status) and self.cache.peek(domain, self._clock()) is not None:
                log.info("refresh of %s failed (%s); keeping the cached status to its expiry",
                         domain, status.reason)
                return
            await self._store(status)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("background refresh of %s failed", domain)

    async def aclose(self) -> None:
        """Cancel background refreshes (the cache itself belongs to the caller)."""
        tasks = list(self._refreshing.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
