"""The one interface every cache backend implements (memory, SQLite, Redis).

Keys are short strings (``status:<domain>``); values are opaque bytes. ``get`` returns
the value with its absolute expiry (UNIX time) and may return an expired entry: the
caller compares the expiry with its own ``now``, so one clock decides freshness.
No method raises for backend trouble: a failed read is a miss, a failed write is
dropped (and logged).
"""

from __future__ import annotations

import logging
import math
from typing import Any, Protocol

from danemilter.cache.codec import OtherVersionError

log = logging.getLogger(__name__)

# Hosts sharing a cache keep their clocks within this of each other; an entry written
# further ahead than that was written before the reader's clock was stepped back.
CLOCK_SKEW = 60.0


class CacheBackend(Protocol):
    name: str

    def get(self, key: str) -> tuple[bytes, float] | None: ...

    def put(self, key: str, value: bytes, expires_at: float) -> None: ...

    def delete(self, key: str) -> bool:
        """Remove ``key``; True when it was there."""
        ...

    def purge(self) -> int:
        """Remove every entry of this cache; the number removed."""
        ...

    def stats(self) -> dict[str, Any]: ...

    def close(self) -> None: ...


def read_fresh(backend: CacheBackend, key: str, now: float, max_ttl: float = math.inf
               ) -> tuple[bytes, float] | None:
    """The value at ``key`` and its expiry, unless absent, expired by ``now``, with an
    expiry that is not a time, or one further ahead than ``max_ttl``: no entry is ever
    stored for longer, so such an entry was written under a clock that has since been
    stepped back (or by another host's wrong clock), and how old it is is unknown."""
    found = backend.get(key)
    if found is None:
        return None
    expires_at = found[1]
    if not math.isfinite(expires_at) or not now < expires_at <= now + max_ttl:
        return None
    return found


def written_ahead(stored_at: float, now: float, what: str | None = None) -> bool:
    """Whether an entry written at ``stored_at`` comes from ``now``'s future (logged at
    info as stale, naming ``what``, when given).

    A clock stepped back by less than ``max_ttl`` leaves every expiry within
    ``read_fresh``'s bound, yet the entry's age is unknown (after a step of a day, one
    with a minute to live would be believed for the day): such an entry is stale.
    """
    ahead = stored_at > now + CLOCK_SKEW
    if ahead and what is not None:
        # Once per entry and reader: the fresh lookup that follows replaces it.
        log.info("%s was written %.0f s in the future (the clock stepped back?): stale",
                 what, stored_at - now)
    return ahead


def drop_unread(backend: CacheBackend, key: str, problem: Exception, what: str, *,
                inspect: bool) -> None:
    """An entry that does not decode: deleted (it would only be read again), unless the
    reader is only looking (``cache show`` changes nothing). An entry of another format
    version is expected after an upgrade, so that is said at info, corruption warned of."""
    other_version = isinstance(problem, OtherVersionError)
    level = logging.INFO if other_version else logging.WARNING
    kind = "{} a {} in another format: %s" if other_version else "{} a corrupt {}: %s"
    if inspect:
        log.log(level, kind.format("leaving", what), problem)
        return
    log.log(level, kind.format("dropping", what), problem)
    backend.delete(key)
