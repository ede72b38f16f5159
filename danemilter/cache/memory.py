"""In-process backend: a bounded LRU map. Also the fallback of the other backends."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any


class MemoryBackend:
    """At most ``max_entries`` entries; the least recently used one goes first."""

    name = "memory"

    def __init__(self, max_entries: int) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.max_entries = max_entries
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
        with self._lock:
            self._entries[key] = (bytes(value), expires_at)
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
                self.evictions += 1

    def delete(self, key: str) -> bool:
        with self._lock:
            return self._entries.pop(key, None) is not None

    def purge(self) -> int:
        with self._lock:
            count = len(self._entries)
            self._entries.clear()
            return count

    def __len__(self) -> int:
        return len(self._entries)

    def stats(self) -> dict[str, Any]:
        return {"backend": self.name, "entries": len(self._entries),
                "max_entries": self.max_entries, "evictions": self.evictions}

    def close(self) -> None:
        self.purge()
