"""MTA-STS policies in the shared cache (``sts:DOMAIN``), kept for their max_age.

RFC 8461 §5.1: a fetched policy stays valid for ``max_age`` whatever later happens to
its TXT record or HTTPS server, so it lives in the backend (shared with ``verify`` and
other milters), not only in memory. The per-domain verdict (TXT looked up, policy
chosen) is kept in memory for a short while only, so that a TXT id change is seen soon.
"""

from __future__ import annotations

import json
import logging
import math

from danemilter.cache.backend import CacheBackend, drop_unread, read_fresh, written_ahead
from danemilter.cache.lru import ExpiringLru
from danemilter.mtasts import MAX_AGE_LIMIT, CachedPolicy, StsError, StsStatus, parse_policy

log = logging.getLogger(__name__)

STS_PREFIX = "sts:"


def sts_key(domain: str) -> str:
    return STS_PREFIX + domain


class StsCache:
    def __init__(self, backend: CacheBackend, lru_entries: int, *,
                 inspect: bool = False) -> None:
        self.backend = backend
        # Only looking (``cache show``): a corrupt entry is reported, not deleted.
        self.inspect = inspect
        self._verdicts: ExpiringLru[tuple[StsStatus, float]] = ExpiringLru(
            lru_entries, lambda held: held[1])

    def verdict(self, domain: str, now: float) -> StsStatus | None:
        held = self._verdicts.get(domain, now)
        return None if held is None else held[0]

    def keep_verdict(self, status: StsStatus, until: float) -> None:
        self._verdicts.put(status.domain, (status, until))

    def policy(self, domain: str, now: float) -> CachedPolicy | None:
        """The fresh cached policy of ``domain``, or None. A corrupt entry is a miss and
        is deleted, unless the cache only inspects (``danemilter cache show``: looking
        must change nothing, and the entry is evidence)."""
        key = sts_key(domain)
        # No policy lives longer than a year (§3.2), whatever the clock did since.
        found = read_fresh(self.backend, key, now, MAX_AGE_LIMIT)
        if found is None:
            return None
        try:
            cached = _decode(found[0])
        except (ValueError, KeyError, TypeError, StsError) as exc:
            drop_unread(self.backend, key, exc, f"cached MTA-STS policy of {domain}",
                        inspect=self.inspect)
            return None
        if written_ahead(cached.fetched_at, now, f"cached MTA-STS policy of {domain}"):
            # Its age, hence whether its max_age has passed, is unknown (issue 16).
            return None
        return cached

    def store(self, domain: str, cached: CachedPolicy) -> None:
        value = json.dumps({"policy": cached.policy.to_text(), "id": cached.id,
                            "fetched_at": cached.fetched_at}).encode()
        self.backend.put(sts_key(domain), value, cached.expires_at)

    def forget(self, domain: str | None = None) -> None:
        self._verdicts.discard(domain)


def _decode(value: bytes) -> CachedPolicy:
    document = json.loads(value)
    text, fetched_at = document["policy"], float(document["fetched_at"])
    if not isinstance(text, str):
        raise TypeError(f"policy is a {type(text).__name__}, not text")
    if not math.isfinite(fetched_at):
        raise ValueError(f"fetched_at {fetched_at} is not a time")
    return CachedPolicy(parse_policy(text), str(document["id"]), fetched_at)
