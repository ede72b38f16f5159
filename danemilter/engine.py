"""A blocking front to the asyncio verification core, for libmilter's worker threads.

libmilter runs one OS thread per SMTP connection; the core is asyncio so that MX
hosts are looked up in parallel and concurrent questions coalesce. One event
loop in a daemon thread serves every milter thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from danemilter.dane import DomainEvaluator, DomainState, DomainStatus
from danemilter.resolver import Resolver, ResolverSettings

T = TypeVar("T")

# Time the blocking caller allows beyond the evaluation's own deadline, so that the
# evaluation's tempfail verdict, not the caller's timeout, is what normally arrives.
_GRACE = 0.5


class Engine:
    def __init__(self, resolver: ResolverSettings) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="danemilter-dns",
                                        daemon=True)
        self._thread.start()
        self.evaluator = DomainEvaluator(Resolver(resolver))

    def _submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def domain_status(self, domain: str, deadline: float) -> DomainStatus:
        """Evaluate ``domain`` (canonical form); returns within ``deadline`` plus a little."""
        future = self._submit(self.evaluator.evaluate(domain, deadline))
        try:
            return future.result(deadline + _GRACE)
        except concurrent.futures.TimeoutError:
            future.cancel()
            return DomainStatus(domain, DomainState.TEMPFAIL, 0, False, (),
                                f"no verdict within {deadline:g} s", 0)

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
