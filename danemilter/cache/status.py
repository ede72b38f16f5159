"""StatusCache: a bounded in-process LRU in front of a shared backend.

A warm hit is a dictionary lookup under a lock (no I/O, no decoding); a miss in the
LRU asks the backend and decodes its entry. Freshness is always judged against the
caller's ``now`` and the entry's own expiry, in the LRU and in the backend alike, so
nothing is answered past its lifetime. A corrupt backend entry is a miss (and is
removed), never an exception.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from danemilter.cache.backend import CacheBackend, drop_unread, read_fresh, written_ahead
from danemilter.cache.codec import CodecError, OtherVersionError, decode, encode
from danemilter.cache.lifetime import is_transient, lifetime
from danemilter.cache.lru import ExpiringLru
from danemilter.cache.settings import CacheSettings
from danemilter.status import DomainStatus

log = logging.getLogger(__name__)

STATUS_PREFIX = "status:"


def status_key(domain: str) -> str:
    return STATUS_PREFIX + domain


@dataclass(frozen=True, slots=True)
class CachedStatus:
    status: DomainStatus
    stored_at: float
    expires_at: float

    @property
    def lifetime(self) -> float:
        return self.expires_at - self.stored_at

    def remaining(self, now: float) -> float:
        return self.expires_at - now

    def fresh(self, now: float) -> bool:
        return now < self.expires_at


class StatusCache:
    def __init__(self, backend: CacheBackend, settings: CacheSettings, *,
                 inspect: bool = False) -> None:
        self.backend = backend
        self.settings = settings
        # Only looking (``cache show``): a corrupt entry is reported, not deleted.
        self.inspect = inspect
        self._front: ExpiringLru[CachedStatus] = ExpiringLru(
            settings.lru_entries, lambda entry: entry.expires_at,
            max_bytes=settings.memory_max_bytes)
        self.backend_hits = 0
        self.misses = 0
        self.stores = 0
        self.corrupt = 0

    @property
    def local_hits(self) -> int:
        return self._front.hits

    def peek(self, domain: str, now: float) -> DomainStatus | None:
        """A fresh status from the in-process LRU only (no I/O), or None."""
        entry = self._front.get(domain, now)
        return None if entry is None else entry.status

    def peek_settled(self, domain: str, now: float) -> DomainStatus | None:
        """:meth:`peek`, but None also when the entry is due for a refresh ahead of its
        expiry (the warm RCPT path: one LRU access, the transient check only when due)."""
        entry = self._front.get(domain, now)
        if entry is None:
            return None
        ahead = self.settings.refresh_ahead
        if (ahead > 0 and entry.remaining(now) <= ahead * entry.lifetime
                and not is_transient(entry.status)):
            return None
        return entry.status

    # --- through to the backend -------------------------------------------------

    def lookup(self, domain: str, now: float) -> CachedStatus | None:
        """The fresh cached entry for ``domain`` (LRU first, then the backend), or None."""
        entry = self._front.get(domain, now)
        if entry is not None:
            return entry
        found = self._backend_get(domain, now)
        if found is None:
            self.misses += 1
            return None
        entry, size = found
        self.backend_hits += 1
        self._front.put(domain, entry, now=now, size=size)
        return entry

    def _backend_get(self, domain: str, now: float) -> tuple[CachedStatus, int] | None:
        key = status_key(domain)
        found = read_fresh(self.backend, key, now, self.settings.max_ttl)
        if found is None:
            return None
        value, expires_at = found
        try:
            decoded = decode(value)
            if decoded.status.domain != domain:
                raise CodecError(f"entry is for {decoded.status.domain!r}")
        except CodecError as exc:
            self.corrupt += not isinstance(exc, OtherVersionError)
            drop_unread(self.backend, key, exc, f"cache entry for {domain}",
                        inspect=self.inspect)
            return None
        if written_ahead(decoded.stored_at, now, f"cached status of {domain}"):
            return None
        return CachedStatus(decoded.status, min(decoded.stored_at, now), expires_at), len(value)

    def get(self, domain: str, now: float) -> DomainStatus | None:
        entry = self.lookup(domain, now)
        return None if entry is None else entry.status

    def put(self, status: DomainStatus, now: float) -> CachedStatus | None:
        """Cache ``status`` for its lifetime (see cache.lifetime); None when not cacheable."""
        seconds = lifetime(status, self.settings)
        if seconds <= 0:
            return None
        entry = CachedStatus(status, now, now + seconds)
        value = encode(status, now)
        self._front.put(status.domain, entry, now=now, size=len(value))
        self.backend.put(status_key(status.domain), value, entry.expires_at)
        self.stores += 1
        return entry

    def needs_refresh(self, domain: str, now: float) -> bool:
        """True when a fresh entry is within ``refresh_ahead`` of its lifetime from expiry.

        Callers ask only for domains that are being asked for, so only those are
        refreshed. Transient entries (tempfail, failed hosts) are never refreshed
        ahead: they are short and a retry after them is a plain miss.
        """
        ahead = self.settings.refresh_ahead
        if ahead <= 0:
            return False
        entry = self._front.peek(domain)
        if entry is None or not entry.fresh(now) or is_transient(entry.status):
            return False
        return entry.remaining(now) <= ahead * entry.lifetime

    def forget_local(self) -> None:
        """Empty the in-process LRU only; the backend keeps every entry."""
        self._front.discard()

    def purge(self, domain: str | None = None) -> int:
        """Forget ``domain`` (or everything); the number of backend entries removed."""
        self._front.discard(domain)
        if domain is None:
            return self.backend.purge()
        return int(self.backend.delete(status_key(domain)))

    def stats(self) -> dict[str, Any]:
        return {
            "lru_entries": len(self._front),
            "lru_max_entries": self.settings.lru_entries,
            "lru_evictions": self._front.evictions,
            "lru_bytes": self._front.bytes,
            "lru_max_bytes": self.settings.memory_max_bytes,
            "local_hits": self.local_hits,
            "backend_hits": self.backend_hits,
            "misses": self.misses,
            "stores": self.stores,
            "corrupt": self.corrupt,
            "backend": self.backend.stats(),
        }

    def close(self) -> None:
        self._front.discard()
        self.backend.close()
