"""A blocking front to the asyncio verification core, for libmilter's worker threads.

libmilter runs one OS thread per SMTP connection; the core is asyncio so that MX
hosts are looked up in parallel and concurrent questions coalesce. One event
loop in a daemon thread serves every milter thread. A warm cache hit never
leaves the calling thread: it costs a dictionary lookup, not a thread hop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

from danemilter.cache import CacheSettings, ProbeCache, StatusCache, open_cache
from danemilter.cached import CachedEvaluator
from danemilter.config import ProbeMode, ProbeSettings
from danemilter.dane import DomainEvaluator, DomainState, DomainStatus
from danemilter.probe import DomainProbe, OcspRequest
from danemilter.prober import Prober
from danemilter.resolver import Resolver, ResolverSettings

T = TypeVar("T")

# Time the blocking caller allows beyond the evaluation's own deadline, so that the
# evaluation's tempfail verdict, not the caller's timeout, is what normally arrives.
_GRACE = 0.5


class Engine:
    def __init__(self, resolver: ResolverSettings, cache: CacheSettings) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="danemilter-dns",
                                        daemon=True)
        self._thread.start()
        self._close_lock = threading.Lock()
        self._closed = False
        self.cache: StatusCache = open_cache(cache)
        self.evaluator = CachedEvaluator(DomainEvaluator(Resolver(resolver)), self.cache)
        self.prober = Prober(ProbeCache(self.cache.backend, cache))

    def _submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def domain_status(self, domain: str, deadline: float) -> DomainStatus:
        """Evaluate ``domain`` (canonical form); returns within ``deadline`` plus a little."""
        now = time.time()
        warm = self.cache.peek(domain, now)
        if warm is not None and not self.cache.needs_refresh(domain, now):
            return warm
        future = self._submit(self.evaluator.evaluate(domain, deadline))
        try:
            return future.result(deadline + _GRACE)
        except concurrent.futures.TimeoutError:
            future.cancel()
            return DomainStatus(domain, DomainState.TEMPFAIL, 0, False, (),
                                f"no verdict within {deadline:g} s", 0)

    def domain_probe(self, status: DomainStatus, mode: ProbeMode, ocsp: OcspRequest,
                     settings: ProbeSettings, budget: float) -> DomainProbe | None:
        """TLS probe results for ``status`` (see danemilter.prober); runs in the calling
        milter thread, since a probe is blocking socket and OpenSSL work."""
        return self.prober.domain_probe(status, mode, ocsp, settings, budget)

    def retire(self) -> None:
        """Replaced by a reload: new lookups go elsewhere, so the in-process copies go
        now (a lookup still running here pays a backend read); close() follows later."""
        self.cache.forget_local()
        self.prober.cache.forget()

    def close(self) -> None:
        """Stop the loop thread and its workers and close the cache; once only."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        # Shutting down regardless: background refreshes get a moment to cancel.
        with contextlib.suppress(concurrent.futures.TimeoutError, RuntimeError):
            self._submit(self.evaluator.aclose()).result(5)
        with contextlib.suppress(concurrent.futures.TimeoutError, RuntimeError):
            self._submit(self._loop.shutdown_default_executor()).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        if not self._thread.is_alive():
            self._loop.close()
        self.cache.close()
