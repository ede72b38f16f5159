"""Logging that never blocks the daemon, and costs a callback almost nothing.

The event loop (or a libmilter thread) only appends the raw record to a deque; one
writer thread wakes every ``interval`` seconds, formats everything that came and hands
it to the real handlers (stderr, journald). Measured before (bench/throughput.py with
py-spy, docs/benchmarks.md): a QueueHandler formatted each record in the caller and
woke the writer through a condition variable for every record, which took 13-14 % of
the daemon's CPU per message and put lock hand-overs into the RCPT tail.

A record waits at most ``interval`` before it is written; at exit everything left is
written. A stream handler gets the whole batch in one write: one write per record made
the writer thread take and give back the GIL for every record (strace on the warm
throughput bench: ~1 write and ~2.7 futex calls per message, the futex time the largest
system-call cost of the daemon).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
from collections.abc import Sequence
from typing import Any

_INTERVAL = 0.05
# Records formatted and written together, at most (bounds the writer's one string).
_BATCH = 512


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


def _write_batch(handler: logging.StreamHandler[Any], records: list[logging.LogRecord]
                 ) -> None:
    """StreamHandler.emit for many records: formatted apart, written and flushed once."""
    lines = []
    for record in records:
        if handler.filter(record):
            try:
                lines.append(handler.format(record) + handler.terminator)
            except Exception:
                handler.handleError(record)  # a bad record must not lose the batch
    if not lines:
        return
    with handler.lock or contextlib.nullcontext():
        try:
            handler.stream.write("".join(lines))
            handler.flush()
        except Exception:
            handler.handleError(records[-1])


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
        # The daemon's format names neither: spare a getpid() and the thread lookups
        # in every record the loop makes.
        logging.logProcesses = logging.logMultiprocessing = logging.logThreads = False
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
            batch = [pending.popleft() for _ in range(min(len(pending), _BATCH))]
            for handler in self._handlers:
                wanted = [r for r in batch if r.levelno >= handler.level]
                if not wanted:
                    continue
                if type(handler) is logging.StreamHandler:
                    _write_batch(handler, wanted)
                else:  # journald, files with rotation...: their own emit, per record
                    for record in wanted:
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
