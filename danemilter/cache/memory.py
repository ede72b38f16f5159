"""In-process backend: a bounded LRU map. Also the fallback of the other backends."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any


class MemoryBackend:
    """At most ``max_entries`` entries of at most ``max_bytes`` in all (0: no bound);
    the least recently used one goes first."""

    name = "memory"

    def __init__(self, max_entries: int, max_bytes: int = 0) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.bytes = 0
        self._entries: OrderedDict[str, tuple[bytes, float]] = OrderedDict()
        self._lock = threading.Lock()
        self.evictions = 0

    def get(self, key: str) -> tuple[bytes, float] | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
            return entry

    def put(self, key: str, value: bytes, expires_at: float) -> None:
        if self.max_bytes and len(value) > self.max_bytes:
            return
        with self._lock:
            self._pop(key)
            self._entries[key] = (bytes(value), expires_at)
            self.bytes += len(value)
            while len(self._entries) > self.max_entries or (self.max_bytes
                                                            and self.bytes > self.max_bytes):
                self._pop(next(iter(self._entries)))
                self.evictions += 1

    def _pop(self, key: str) -> bool:
        entry = self._entries.pop(key, None)
        if entry is None:
            return False
        self.bytes -= len(entry[0])
        return True

    def delete(self, key: str) -> bool:
        with self._lock:
            return self._pop(key)

    def purge(self) -> int:
        with self._lock:
            count = len(self._entries)
            self._entries.clear()
            self.bytes = 0
            return count

    def __len__(self) -> int:
        return len(self._entries)

    def stats(self) -> dict[str, Any]:
        return {"backend": self.name, "entries": len(self._entries),
                "max_entries": self.max_entries, "bytes": self.bytes,
                "max_bytes": self.max_bytes, "evictions": self.evictions}

    def close(self) -> None:
        self.purge()
