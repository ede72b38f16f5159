"""Logging that never blocks the daemon, and costs a callback almost nothing.

The event loop (or a libmilter thread) only appends the raw record to a deque; one
writer thread wakes every ``interval`` seconds, formats everything that came and hands
it to the real handlers (stderr, journald). Measured before (bench/throughput.py with
py-spy, docs/benchmarks.md): a QueueHandler formatted each record in the caller and
woke the writer through a condition variable for every record, which took 13-14 % of
the daemon's CPU per message and put lock hand-overs into the RCPT tail.

A record waits at most ``interval`` before it is written; at exit everything left is
written.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Sequence

_INTERVAL = 0.05


class _Collecting(logging.Handler):
    """Appends records (deque.append is atomic: no lock, no wake-up)."""

    def __init__(self, pending: collections.deque[logging.LogRecord]) -> None:
        super().__init__()
        self._pending = pending

    def emit(self, record: logging.LogRecord) -> None:
        self._pending.append(record)

    def handle(self, record: logging.LogRecord) -> bool:
        # Handler.handle takes the handler's lock around emit: not needed for an append.
        if self.filter(record):
            self._pending.append(record)
            return True
        return False


class BatchingWriter:
    """Moves the root logger's handlers behind a deque drained by one thread."""

    def __init__(self, handlers: Sequence[logging.Handler], interval: float = _INTERVAL
                 ) -> None:
        self._handlers = list(handlers)
        self._pending: collections.deque[logging.LogRecord] = collections.deque()
        self.collector = _Collecting(self._pending)
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="log-writer", daemon=True)

    @classmethod
    def install(cls, fmt: str, interval: float = _INTERVAL) -> BatchingWriter:
        root = logging.getLogger()
        writers = [h for h in root.handlers if not isinstance(h, _Collecting)]
        for handler in writers:
            handler.setFormatter(logging.Formatter(fmt))
            root.removeHandler(handler)
        writer = cls(writers, interval)
        root.addHandler(writer.collector)
        writer._thread.start()
        return writer

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._drain()
        self._drain()

    def _drain(self) -> None:
        pending = self._pending
        while pending:
            record = pending.popleft()
            for handler in self._handlers:
                if record.levelno >= handler.level:
                    handler.handle(record)

    def stop(self) -> None:
        """Write what is still queued, then put the handlers back on the root logger."""
        root = logging.getLogger()
        root.removeHandler(self.collector)
        self._stop.set()
        self._thread.join(timeout=5)
        self._drain()
        for handler in self._handlers:
            root.addHandler(handler)
