"""Concurrent questions for the same thing share one answer: the service's in-flight map."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Hashable
from typing import Any, TypeVar

from danemilter.deadline import Deadline

T = TypeVar("T")


class Coalescer:
    """One task per key while it runs; every caller asking meanwhile waits for it.

    A caller whose deadline passes gets ``None`` while the task goes on for the others
    (it is shielded); the task itself is bounded by the work it runs (which takes the
    deadline of the caller that started it).
    """

    def __init__(self) -> None:
        self._running: dict[Hashable, asyncio.Task[Any]] = {}

    def __len__(self) -> int:
        return len(self._running)

    async def join(self, key: Hashable, deadline: Deadline,
                   start: Callable[[], Coroutine[Any, Any, T]]) -> T | None:
        task: asyncio.Task[T] | None = self._running.get(key)
        if task is None:
            task = asyncio.ensure_future(start())
            self._running[key] = task
            task.add_done_callback(lambda _: self._running.pop(key, None))
        try:
            return await asyncio.wait_for(asyncio.shield(task), deadline.remaining())
        except TimeoutError:
            return None

    async def aclose(self) -> None:
        tasks = list(self._running.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
