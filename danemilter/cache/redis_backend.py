"""Redis backend for fleets: every key expires in Redis at the entry's own expiry.

* Keys are ``<key_prefix><key>``; a value is the expiry (8-byte big-endian double,
  UNIX time) followed by the entry, written with ``SET key value PXAT expiry``.
  ``purge`` removes only keys under the prefix (SCAN + UNLINK), never the database.
* Redis unreachable (refused, timed out, loading): the operation goes to an
  in-process MemoryBackend instead, logged once per outage; Redis is tried again
  after a back-off (doubling from ``retry_initial`` to ``retry_max`` seconds). When
  it answers again the fallback is emptied (its entries may have been purged in
  Redis meanwhile) and that is logged too. Entries carry their expiry wherever
  they live, so no answer outlives its lifetime.
* Redis bounds its own memory (``maxmemory`` with ``volatile-ttl``): ``max_entries``
  and ``max_bytes`` (``cache.memory_max_bytes``) bound only the fallback.
"""

from __future__ import annotations

import logging
import re
import struct
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit, urlunsplit

import redis
import redis.exceptions
from redis.backoff import NoBackoff
from redis.retry import Retry

from danemilter.cache.memory import MemoryBackend

log = logging.getLogger(__name__)

T = TypeVar("T")

_EXPIRY = struct.Struct("!d")
_GLOB_SPECIAL = re.compile(r"([*?\[\]\\])")
_UNLINK_BATCH = 500
_UNREACHABLE = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)


def redact(url: str) -> str:
    """The URL without its password, for logs and stats."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


class RedisBackend:
    name = "redis"

    def __init__(self, url: str, key_prefix: str, max_entries: int, *, max_bytes: int = 0,
                 timeout: float = 0.5, retry_initial: float = 1.0, retry_max: float = 60.0,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self.url = redact(url)
        self.key_prefix = key_prefix
        self._clock = clock
        self._wall = wall
        self._retry_initial = retry_initial
        self._retry_max = retry_max
        self._backoff = retry_initial
        # No retries inside redis-py: one attempt, then the fallback answers.
        self._client = redis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0), retry_on_error=[])
        # Bounded like the memory backend: an outage must not grow the process unbounded.
        self._fallback = MemoryBackend(max_entries, max_bytes)
        self._lock = threading.Lock()
        self._down = False
        self._retry_at = 0.0
        self.outages = 0
        self.errors = 0

    @property
    def fallback(self) -> bool:
        """True while Redis is considered unreachable and the in-process map answers."""
        return self._down

    def _key(self, key: str) -> str:
        return self.key_prefix + key

    def _call(self, what: str, operation: Callable[[redis.Redis], T],
              fallback: Callable[[MemoryBackend], T]) -> T:
        with self._lock:
            if self._down and self._clock() < self._retry_at:
                return fallback(self._fallback)
        try:
            result = operation(self._client)
        except _UNREACHABLE as exc:
            self._went_down(exc)
            return fallback(self._fallback)
        except redis.exceptions.RedisError as exc:
            self.errors += 1
            log.warning("redis %s at %s failed: %s", what, self.url, exc)
            return fallback(self._fallback)
        self._came_back()
        return result

    def _went_down(self, exc: BaseException) -> None:
        with self._lock:
            if not self._down:
                self._down = True
                self.outages += 1
                self._backoff = self._retry_initial
                log.warning("redis at %s is unreachable (%s): caching in this process "
                            "until it is back", self.url, exc)
            else:
                self._backoff = min(self._backoff * 2, self._retry_max)
                log.debug("redis at %s still unreachable: %s", self.url, exc)
            self._retry_at = self._clock() + self._backoff

    def _came_back(self) -> None:
        if not self._down:
            return
        with self._lock:
            if self._down:
                self._down = False
                self._fallback.purge()
                log.warning("redis at %s answers again", self.url)

    def ping(self) -> bool:
        """Whether Redis answers now; a quiet probe that changes no state and logs nothing."""
        try:
            return bool(self._client.ping())
        except (*_UNREACHABLE, redis.exceptions.RedisError):
            return False

    def get(self, key: str) -> tuple[bytes, float] | None:
        def read(client: redis.Redis) -> tuple[bytes, float] | None:
            data = cast("bytes | None", client.get(self._key(key)))
            if data is None:
                return None
            if len(data) < _EXPIRY.size:
                return (b"", 0.0)  # not ours: an expired, undecodable entry
            (expires_at,) = _EXPIRY.unpack_from(data)
            return bytes(data[_EXPIRY.size:]), float(expires_at)

        return self._call("read", read, lambda memory: memory.get(key))

    def put(self, key: str, value: bytes, expires_at: float) -> None:
        def write(client: redis.Redis) -> None:
            expires_ms = int(expires_at * 1000)
            if expires_ms <= int(self._wall() * 1000):
                client.unlink(self._key(key))
                return
            client.set(self._key(key), _EXPIRY.pack(expires_at) + value, pxat=expires_ms)

        self._call("write", write, lambda memory: memory.put(key, value, expires_at))

    def delete(self, key: str) -> bool:
        def remove(client: redis.Redis) -> bool:
            removed = bool(client.unlink(self._key(key)))
            return self._fallback.delete(key) or removed

        return self._call("delete", remove, lambda memory: memory.delete(key))

    def _keys(self, client: redis.Redis) -> list[bytes]:
        pattern = _GLOB_SPECIAL.sub(r"\\\1", self.key_prefix) + "*"
        return list(cast("list[bytes]", client.scan_iter(match=pattern, count=1000)))

    def purge(self) -> int:
        def remove_all(client: redis.Redis) -> int:
            keys = self._keys(client)
            removed = 0
            for start in range(0, len(keys), _UNLINK_BATCH):
                removed += int(client.unlink(*keys[start:start + _UNLINK_BATCH]))
            return removed + self._fallback.purge()

        return self._call("purge", remove_all, lambda memory: memory.purge())

    def stats(self) -> dict[str, Any]:
        entries = self._call("count", lambda client: len(self._keys(client)),
                             lambda _: None)
        return {"backend": self.name, "url": self.url, "key_prefix": self.key_prefix,
                "connected": not self._down, "entries": entries,
                "fallback": self._down, "fallback_entries": len(self._fallback),
                "fallback_bytes": self._fallback.bytes,
                "outages": self.outages, "errors": self.errors}

    def close(self) -> None:
        try:
            self._client.close()
        except (*_UNREACHABLE, redis.exceptions.RedisError):
            pass
        self._fallback.close()
