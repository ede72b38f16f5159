"""The shared cache of domain statuses (DESIGN.md "cache"; issue 4).

One interface (:class:`CacheBackend`) with three backends, ``memory``, ``sqlite`` (the
default; one file shared by the milter and the helper) and ``redis`` (for fleets), and
a :class:`StatusCache` that puts a bounded in-process LRU in front of whichever is
configured. Lifetimes come from DNS (:func:`lifetime`).
"""

from __future__ import annotations

from danemilter.cache.backend import CacheBackend
from danemilter.cache.codec import CodecError, decode, encode
from danemilter.cache.lifetime import is_transient, lifetime
from danemilter.cache.memory import MemoryBackend
from danemilter.cache.probes import ProbeCache, fingerprint, probe_key, probe_lifetime
from danemilter.cache.redis_backend import RedisBackend
from danemilter.cache.settings import BackendName, CacheSettings, parse_cache_section
from danemilter.cache.sqlite import SQLiteBackend
from danemilter.cache.status import CachedStatus, StatusCache, status_key

__all__ = [
    "BackendName",
    "CacheBackend",
    "CacheSettings",
    "CachedStatus",
    "CodecError",
    "MemoryBackend",
    "ProbeCache",
    "RedisBackend",
    "SQLiteBackend",
    "StatusCache",
    "decode",
    "encode",
    "fingerprint",
    "is_transient",
    "lifetime",
    "open_backend",
    "open_cache",
    "parse_cache_section",
    "probe_key",
    "probe_lifetime",
    "status_key",
]


def open_backend(settings: CacheSettings) -> CacheBackend:
    """The configured backend. Never raises for an unusable file or an unreachable Redis:
    those degrade to in-process caching (see each backend)."""
    if settings.backend == BackendName.MEMORY:
        return MemoryBackend(settings.max_entries, settings.memory_max_bytes)
    if settings.backend == BackendName.REDIS:
        return RedisBackend(settings.url, settings.key_prefix, settings.max_entries,
                            max_bytes=settings.memory_max_bytes)
    return SQLiteBackend(settings.path, settings.max_entries,
                         max_bytes=settings.memory_max_bytes)


def open_cache(settings: CacheSettings) -> StatusCache:
    return StatusCache(open_backend(settings), settings)
